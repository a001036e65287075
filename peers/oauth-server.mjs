// A real OAuth 2.0 authorization server for phg's demo and integration tests:
// panva's oidc-provider (certified), configured for SMART Backend Services
// (client_credentials + private_key_jwt with RS384/ES384), token introspection (for the gate)
// and open RFC 7591 dynamic client registration.
//
// Usage: node oauth-server.mjs [--port 0] [--clients clients.json] [--ttl 300]
//                              [--scopes "system/Patient.cu ..."] [--ready-file path]
// Environment fallbacks: OAUTH_PORT, OAUTH_CLIENTS, OAUTH_TTL, OAUTH_SCOPES, OAUTH_READY_FILE.
// Binds 127.0.0.1 only. With --port 0 the OS picks the port; when listening it prints
// "READY <port>" on stdout and, with --ready-file, writes {"port", "issuer"} to that file.
//
// clients.json: a JSON array of client metadata, e.g.
//   {"client_id": "...", "grant_types": ["client_credentials"], "response_types": [], "redirect_uris": [],
//    "token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [<public JWK>]}}
//   {"client_id": "gate", "client_secret": "...", "token_endpoint_auth_method": "client_secret_basic", ...}
// Missing grant_types/response_types/redirect_uris default to the client_credentials-only shape.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';
import { announceReady, exitWithParent } from './lifecycle.mjs';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.OAUTH_PORT ?? '0' },
    clients: { type: 'string', default: process.env.OAUTH_CLIENTS ?? '' },
    ttl: { type: 'string', default: process.env.OAUTH_TTL ?? '300' },
    scopes: { type: 'string', default: process.env.OAUTH_SCOPES ?? '' },
    'ready-file': { type: 'string', default: process.env.OAUTH_READY_FILE ?? '' },
  },
});

// SMART v1 and v2 system scopes phg uses (any other well-formed scope is accepted too:
// oidc-provider only restricts listed scopes against a client's own `scope` metadata).
const RESOURCE_TYPES = ['Patient', 'Device', 'Observation', 'DeviceMetric', 'Bundle', 'Provenance', '*'];
const DEFAULT_SCOPES = [];
for (const t of RESOURCE_TYPES) {
  for (const s of ['read', 'write', '*', 'c', 'cu', 'cru', 'cruds', 'rs', 'r', 's', 'u', 'd', 'cud']) {
    DEFAULT_SCOPES.push(`system/${t}.${s}`);
  }
}
const scopes = args.scopes.trim() ? args.scopes.trim().split(/\s+/) : DEFAULT_SCOPES;

const ttl = Number(args.ttl);
if (!Number.isFinite(ttl) || ttl <= 0) {
  console.error(`invalid --ttl ${args.ttl}`);
  process.exit(2);
}

const MAX_ASSERTION_LIFETIME = 300; // SMART: exp no more than 5 minutes in the future
const CLOCK_TOLERANCE = 5;

function loadClients(path) {
  if (!path) return [];
  const list = JSON.parse(readFileSync(path, 'utf8'));
  if (!Array.isArray(list)) throw new Error(`${path}: expected a JSON array of clients`);
  return list.map((c) => ({
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    ...c,
  }));
}

const clients = loadClients(args.clients);

function smartAssertionRules(ctx, claims, header, client) {
  // oidc-provider already checks iss, exp presence, jti presence + replay, aud, signature, kid match.
  if (claims.sub !== client.clientId) {
    throw new errors.InvalidClientAuth('sub (JWT subject) must be the client_id');
  }
  if (header.typ !== 'JWT') {
    throw new errors.InvalidClientAuth('client assertion header typ must be "JWT"');
  }
  if (!header.kid) {
    throw new errors.InvalidClientAuth('client assertion header must carry a kid');
  }
  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.exp !== 'number' || claims.exp > now + MAX_ASSERTION_LIFETIME + CLOCK_TOLERANCE) {
    throw new errors.InvalidClientAuth('client assertion exp must be no more than 5 minutes in the future');
  }
  if (ctx.oidc.route === 'token') {
    // SMART: aud is the token endpoint URL (oidc-provider alone also accepts the issuer).
    const tokenEndpoint = ctx.oidc.urlFor('token');
    const auds = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (!auds.includes(tokenEndpoint)) {
      throw new errors.InvalidClientAuth(`audience (aud) must be the token endpoint url ${tokenEndpoint}`);
    }
  }
}

// Bind first (port 0 -> the OS picks), then build the provider with the final issuer.
let handler = (req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = createServer((req, res) => handler(req, res));
server.listen(Number(args.port), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  const provider = new Provider(issuer, {
    clients,
    scopes,
    clockTolerance: CLOCK_TOLERANCE,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // Only confidential clients (the gate) may introspect; any token of this server.
        allowedPolicy: async (ctx, client) => client.clientAuthMethod !== 'none',
      },
      revocation: { enabled: true },
      registration: { enabled: true, initialAccessToken: false },
      registrationManagement: { enabled: true },
    },
    enabledJWA: {
      clientAuthSigningAlgValues: [
        'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'Ed25519', 'EdDSA', 'HS256',
      ],
    },
    clientDefaults: {
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'private_key_jwt',
    },
    ttl: {
      ClientCredentials: ttl,
    },
    assertJwtClientAuthClaimsAndHeader: async (ctx, claims, header, client) => {
      smartAssertionRules(ctx, claims, header, client);
    },
    async findAccount() {
      return undefined; // no end users: backend services only
    },
  });

  const logError = (event) => (ctx, err) => {
    const client = ctx?.oidc?.client?.clientId ?? ctx?.oidc?.params?.client_id ?? '-';
    console.error(`${event}: client=${client} ${err.error ?? err.name}: ${err.error_description ?? err.message}`
      + (err.error_detail ? ` (detail: ${err.error_detail})` : '')
      + (err.cause ? ` (cause: ${err.cause.message ?? err.cause})` : ''));
  };
  for (const event of ['grant.error', 'introspection.error', 'registration_create.error', 'revocation.error']) {
    provider.on(event, logError(event));
  }
  provider.on('server_error', (ctx, err) => console.error('server_error:', err));
  provider.on('grant.success', (ctx) => {
    console.error(`grant.success: client=${ctx.oidc.client?.clientId}`);
  });

  handler = provider.callback();
  announceReady(args['ready-file'], { port, issuer });
});

exitWithParent(server);
