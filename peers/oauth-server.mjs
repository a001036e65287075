// A real OAuth 2.0 authorization server for phg's demo and integration tests:
// panva's oidc-provider (certified), configured for SMART Backend Services
// (client_credentials + private_key_jwt with RS384/ES384), token introspection (for the gate)
// and open RFC 7591 dynamic client registration; and for SMART App Launch (EHR and standalone launch):
// authorization_code with PKCE (S256, required of every client), the `launch` and `aud` request
// parameters and the `patient` launch context in the token answer. The clinician is already signed in
// (--user, the fhirUser claim) and grants what the app asks: no login or consent page.
//
// Usage: node oauth-server.mjs [--port 0] [--clients clients.json] [--ttl 300]
//                              [--scopes "system/Patient.cu ..."] [--ready-file path]
//                              [--launches launches.json] [--pick-patient ID] [--user Practitioner/ID]
// Environment fallbacks: OAUTH_PORT, OAUTH_CLIENTS, OAUTH_TTL, OAUTH_SCOPES, OAUTH_READY_FILE,
// OAUTH_LAUNCHES, OAUTH_PICK_PATIENT, OAUTH_USER.
// launches.json: {"<launch value the EHR gave the app>": "<Patient id>"} (EHR launch); --pick-patient is
// the patient the clinician picks in a standalone launch (scope launch/patient).
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
    launches: { type: 'string', default: process.env.OAUTH_LAUNCHES ?? '' },
    'pick-patient': { type: 'string', default: process.env.OAUTH_PICK_PATIENT ?? '' },
    user: { type: 'string', default: process.env.OAUTH_USER ?? 'Practitioner/phg-test-clinician' },
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
// SMART App Launch: the launch scopes and the patient/ and user/ read scopes a viewing app asks for.
const LAUNCH_SCOPES = ['launch', 'launch/patient', 'fhirUser', 'openid', 'offline_access'];
for (const t of RESOURCE_TYPES) {
  for (const s of ['read', 'rs', 'r', 's']) LAUNCH_SCOPES.push(`patient/${t}.${s}`, `user/${t}.${s}`);
}
const scopes = [...new Set([...(args.scopes.trim() ? args.scopes.trim().split(/\s+/) : DEFAULT_SCOPES),
  ...LAUNCH_SCOPES])];
const launches = args.launches ? JSON.parse(readFileSync(args.launches, 'utf8')) : {};
const grantPatients = new Map(); // grant id -> the Patient id of its launch context

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

// The launch context of an authorization request: the patient its `launch` stands for (EHR launch), or
// the one the clinician picks (standalone launch, scope launch/patient). undefined: no patient context.
function launchPatient(params) {
  const requested = String(params.scope ?? '').split(' ');
  if (params.launch) return Object.hasOwn(launches, params.launch) ? launches[params.launch] : null;
  if (requested.includes('launch/patient')) return args['pick-patient'] || null;
  return undefined;
}

// The signed-in clinician approves the request as asked: a grant for every requested scope.
async function approve(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  const { params, prompt } = details;
  const patient = launchPatient(params);
  if (patient === null) {
    await provider.interactionFinished(req, res, {
      error: 'invalid_request', error_description: 'unknown launch, or no patient to pick',
    });
    return;
  }
  if (prompt.name === 'login') {
    await provider.interactionFinished(req, res, { login: { accountId: args.user } }, { mergeWithLastSubmission: false });
    return;
  }
  const grant = new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
  grant.addOIDCScope(String(params.scope ?? ''));
  const grantId = await grant.save();
  if (patient !== undefined) grantPatients.set(grantId, patient);
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
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
    extraParams: ['launch', 'aud'],
    pkce: { required: () => true }, // SMART App Launch 2.x: every app uses PKCE S256
    conformIdTokenClaims: false, // fhirUser in the id_token (SMART "Scopes for requesting identity data")
    claims: { openid: ['sub'], fhirUser: ['fhirUser'] },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    extraTokenClaims: async (ctx, token) => (grantPatients.has(token.grantId)
      ? { patient: grantPatients.get(token.grantId) } : undefined),
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
    async findAccount(ctx, id) {
      // The one signed-in clinician (SMART launches); backend services have no end user.
      return id === args.user ? { accountId: id, claims: async () => ({ sub: id, fhirUser: id }) } : undefined;
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

  // SMART App Launch: the token answer carries the launch's `patient` next to the access token.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.oidc?.route === 'token' && ctx.status === 200 && ctx.body?.access_token) {
      const grantId = ctx.oidc.entities.AuthorizationCode?.grantId ?? ctx.oidc.entities.RefreshToken?.grantId;
      if (grantPatients.has(grantId)) ctx.body = { ...ctx.body, patient: grantPatients.get(grantId) };
    }
  });
  const callback = provider.callback();
  handler = (req, res) => (req.url.startsWith('/interaction/')
    ? approve(provider, req, res).catch((err) => {
      console.error('interaction:', err.message);
      res.statusCode = 400;
      res.end(err.message);
    })
    : callback(req, res));
  announceReady(args['ready-file'], { port, issuer });
});

exitWithParent(server);
