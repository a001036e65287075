// The SMART gate: what a real EHR's FHIR endpoint looks like to a backend client, put in front of a
// FHIR server that checks no tokens (sekmet-fhir, Medplum's router), so that auth is enforced end to end.
//
//  - GET {base}/.well-known/smart-configuration: the SMART discovery document (endpoints taken from the
//    authorization server's /.well-known/openid-configuration).
//  - GET {base}/metadata: the upstream CapabilityStatement, served without auth, with the (deprecated)
//    oauth-uris security extension added; a minimal one is made up when the upstream has none.
//  - everything else under {base} needs "Authorization: Bearer <token>", checked with the authorization
//    server's introspection endpoint (RFC 7662: active, not expired) and against the token's SMART
//    scopes (v1 read/write/*, v2 cruds; every transaction/batch entry checked on its own). 401 with
//    WWW-Authenticate + OperationOutcome when the token is missing/invalid/expired, 403 when the scope
//    does not cover the request. Valid requests are forwarded and the answer relayed, with the upstream
//    base URL rewritten to the gate's in the body and in Location/Content-Location.
//
// Node without dependencies (node:http + fetch), so the gate shares no code with phg.
// Usage: node gate.mjs --upstream http://127.0.0.1:P/fhir --issuer http://127.0.0.1:Q --client-id gate
//                      [--port 0] [--ready-file path] [--discovery both|well-known|capability|none]
//                      [--scopes-supported "..."] [--no-scope-check]
// The introspection client's secret comes from the environment: GATE_CLIENT_SECRET.
// Binds 127.0.0.1 only; prints "READY <port>" and writes {"port", "base_url"} to --ready-file.
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { announceReady, exitWithParent } from './lifecycle.mjs';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.GATE_PORT ?? '0' },
    upstream: { type: 'string', default: process.env.GATE_UPSTREAM ?? '' },
    issuer: { type: 'string', default: process.env.GATE_ISSUER ?? '' },
    'client-id': { type: 'string', default: process.env.GATE_CLIENT_ID ?? 'gate' },
    'ready-file': { type: 'string', default: process.env.GATE_READY_FILE ?? '' },
    discovery: { type: 'string', default: process.env.GATE_DISCOVERY ?? 'both' },
    'scopes-supported': { type: 'string', default: process.env.GATE_SCOPES_SUPPORTED ?? '' },
    'no-scope-check': { type: 'boolean', default: false },
  },
});
const clientSecret = process.env.GATE_CLIENT_SECRET ?? '';
if (!args.upstream || !args.issuer || !clientSecret) {
  console.error('gate: --upstream, --issuer and GATE_CLIENT_SECRET are required');
  process.exit(2);
}
if (!['both', 'well-known', 'capability', 'none'].includes(args.discovery)) {
  console.error(`gate: bad --discovery ${args.discovery}`);
  process.exit(2);
}
const upstream = args.upstream.replace(/\/+$/, '');
const issuer = args.issuer.replace(/\/+$/, '');
const PREFIX = '/fhir';
const REALM = 'phg-test-gate';

// ---------------------------------------------------------------- authorization server discovery
async function discoverAuthServer() {
  const url = `${issuer}/.well-known/openid-configuration`;
  const deadline = Date.now() + 30_000;
  let lastError;
  while (Date.now() < deadline) {
    try {
      const r = await fetch(url);
      if (r.ok) return await r.json();
      lastError = new Error(`${url}: HTTP ${r.status}`);
    } catch (e) {
      lastError = e;
    }
    await new Promise((ok) => setTimeout(ok, 200));
  }
  throw lastError;
}

// ---------------------------------------------------------------- FHIR helpers
function outcome(severity, code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics }] };
}

function send(res, status, body, headers = {}) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, {
    'content-type': typeof body === 'string' ? 'text/plain' : 'application/fhir+json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function unauthorized(res, error, description) {
  // RFC 6750 3: no error code when the request carried no credentials at all.
  const challenge = error
    ? `Bearer realm="${REALM}", error="${error}", error_description="${description}"`
    : `Bearer realm="${REALM}"`;
  send(res, 401, outcome('error', error ? 'security' : 'login', description), { 'www-authenticate': challenge });
}

// ---------------------------------------------------------------- token check (RFC 7662) with a tiny cache
const cache = new Map(); // token -> { info, until (ms) }
let as; // authorization server metadata

async function introspect(token) {
  const now = Date.now();
  const hit = cache.get(token);
  if (hit && hit.until > now) return hit.info;
  if (cache.size > 1000) cache.clear();
  const basic = Buffer.from(
    `${encodeURIComponent(args['client-id'])}:${encodeURIComponent(clientSecret)}`,
  ).toString('base64');
  const r = await fetch(as.introspection_endpoint, {
    method: 'POST',
    headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
    body: new URLSearchParams({ token }).toString(),
  });
  if (!r.ok) throw new Error(`introspection answered HTTP ${r.status}: ${await r.text()}`);
  const info = await r.json();
  if (info.active === true && typeof info.exp === 'number') {
    cache.set(token, { info, until: Math.min(info.exp * 1000, now + 5_000) });
  }
  return info;
}

// ---------------------------------------------------------------- SMART scopes
// Returns [{type, perms:Set}] for the system/ scopes of a token (user/ and patient/ give nothing here).
function parseScopes(scope) {
  const grants = [];
  for (const s of (scope ?? '').split(/\s+/)) {
    const m = /^system\/([A-Za-z]+|\*)\.([a-z*]+)(\?.*)?$/.exec(s);
    if (!m) continue;
    const [, type, what] = m;
    let perms;
    if (what === 'read') perms = 'rs';
    else if (what === 'write') perms = 'cud';
    else if (what === '*') perms = 'cruds';
    else if (/^c?r?u?d?s?$/.test(what)) perms = what; // v2: an in-order subset of cruds
    else continue;
    grants.push({ type, perms: new Set(perms) });
  }
  return grants;
}

// What a request needs: a list of [resourceType, permission letter].
function needs(method, path, body) {
  const [pathPart] = path.split('?');
  const segs = pathPart.split('/').filter(Boolean);
  if (segs.length === 0) {
    if (method === 'POST' && body && body.resourceType === 'Bundle' && ['transaction', 'batch'].includes(body.type)) {
      const out = [];
      for (const entry of body.entry ?? []) {
        const req = entry.request ?? {};
        if (req.method && typeof req.url === 'string') {
          const url = req.url.startsWith('http') ? new URL(req.url).pathname.replace(/^.*?\/fhir/, '') : req.url;
          out.push(...needs(req.method.toUpperCase(), url.startsWith('/') ? url : `/${url}`, entry.resource));
        }
      }
      return out;
    }
    return [];
  }
  const type = segs[0];
  if (!/^[A-Z][A-Za-z]+$/.test(type)) return []; // system operations ($export ...): an active token is enough
  const sub = segs[1];
  if (sub?.startsWith('$') || segs[2]?.startsWith('$')) return []; // operations: active token is enough
  switch (method) {
    case 'GET':
    case 'HEAD':
      return [[type, segs.length === 1 || sub === '_history' ? 's' : 'r']];
    case 'POST':
      return [[type, sub === '_search' ? 's' : 'c']];
    case 'PUT':
    case 'PATCH':
      return [[type, 'u']];
    case 'DELETE':
      return [[type, 'd']];
    default:
      return [];
  }
}

function missingScope(grants, required) {
  for (const [type, perm] of required) {
    if (!grants.some((g) => (g.type === '*' || g.type === type) && g.perms.has(perm))) {
      return `${type}.${perm}`;
    }
  }
  return null;
}

// ---------------------------------------------------------------- documents served by the gate
function smartConfiguration() {
  const doc = {
    issuer: as.issuer,
    token_endpoint: as.token_endpoint,
    grant_types_supported: ['client_credentials'],
    token_endpoint_auth_methods_supported: ['private_key_jwt', 'client_secret_basic'],
    token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
    scopes_supported: args['scopes-supported'].trim()
      ? args['scopes-supported'].trim().split(/\s+/)
      : (as.scopes_supported ?? []).filter((s) => s.startsWith('system/')),
    capabilities: ['client-confidential-asymmetric', 'permission-v2', 'permission-v1'],
    code_challenge_methods_supported: ['S256'],
  };
  if (as.registration_endpoint) doc.registration_endpoint = as.registration_endpoint;
  if (as.authorization_endpoint) doc.authorization_endpoint = as.authorization_endpoint; // SMART App Launch
  if (as.introspection_endpoint) doc.introspection_endpoint = as.introspection_endpoint;
  if (as.revocation_endpoint) doc.revocation_endpoint = as.revocation_endpoint;
  return doc;
}

function securityElement() {
  const uris = [{ url: 'token', valueUri: as.token_endpoint }];
  if (as.registration_endpoint) uris.push({ url: 'register', valueUri: as.registration_endpoint });
  if (as.introspection_endpoint) uris.push({ url: 'introspect', valueUri: as.introspection_endpoint });
  if (as.revocation_endpoint) uris.push({ url: 'revoke', valueUri: as.revocation_endpoint });
  return {
    extension: [{ url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris', extension: uris }],
    service: [{
      coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }],
    }],
  };
}

function withSecurity(capability) {
  if (args.discovery !== 'both' && args.discovery !== 'capability') return capability;
  capability.rest = capability.rest?.length ? capability.rest : [{ mode: 'server' }];
  capability.rest[0].security = securityElement();
  return capability;
}

// ---------------------------------------------------------------- proxy
const FORWARD_REQUEST = ['content-type', 'accept', 'prefer', 'if-none-exist', 'if-match', 'if-none-match',
  'if-modified-since', 'x-request-id'];
const RELAY_RESPONSE = ['content-type', 'location', 'content-location', 'etag', 'last-modified', 'retry-after',
  'x-request-id'];

let gateBase; // http://127.0.0.1:PORT/fhir
const rewrite = (text) => text.split(upstream).join(gateBase);

async function forward(req, res, rest, search, body) {
  const headers = {};
  for (const h of FORWARD_REQUEST) if (req.headers[h] !== undefined) headers[h] = req.headers[h];
  let r;
  try {
    r = await fetch(`${upstream}${rest}${search}`, {
      method: req.method,
      headers,
      body: ['GET', 'HEAD'].includes(req.method) || body.length === 0 ? undefined : body,
      redirect: 'manual',
    });
  } catch (e) {
    send(res, 502, outcome('error', 'transient', `gate: upstream FHIR server unreachable: ${e.cause?.message ?? e.message}`));
    return null;
  }
  const out = {};
  for (const h of RELAY_RESPONSE) {
    const v = r.headers.get(h);
    if (v !== null) out[h] = h === 'location' || h === 'content-location' ? rewrite(v) : v;
  }
  const text = rewrite(await r.text());
  return { status: r.status, headers: out, text };
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://gate');
  if (url.pathname !== PREFIX && !url.pathname.startsWith(`${PREFIX}/`)) {
    send(res, 404, outcome('error', 'not-found', `gate: only ${PREFIX} is served here`));
    return;
  }
  const rest = url.pathname.slice(PREFIX.length); // '' or '/...'
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const body = Buffer.concat(chunks);

  if (rest === '/.well-known/smart-configuration' && req.method === 'GET') {
    if (args.discovery === 'both' || args.discovery === 'well-known') {
      const text = JSON.stringify(smartConfiguration());
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    } else {
      send(res, 404, outcome('error', 'not-found', 'no SMART configuration here'));
    }
    return;
  }

  if (rest === '/metadata' && req.method === 'GET') {
    const up = await forward(req, res, rest, url.search, body);
    if (!up) return;
    let cap;
    try {
      cap = up.status === 200 ? JSON.parse(up.text) : null;
    } catch {
      cap = null;
    }
    if (!cap || cap.resourceType !== 'CapabilityStatement') {
      cap = { resourceType: 'CapabilityStatement', status: 'active', date: new Date().toISOString(),
        kind: 'instance', fhirVersion: '4.0.1', format: ['json'], implementation: { description: 'phg test gate', url: gateBase },
        rest: [{ mode: 'server' }] };
    }
    send(res, 200, withSecurity(cap));
    return;
  }

  const auth = req.headers.authorization ?? '';
  const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
  if (!m) {
    unauthorized(res, null, 'gate: a bearer token is required');
    return;
  }
  let info;
  try {
    info = await introspect(m[1]);
  } catch (e) {
    console.error(`gate: introspection failed: ${e.message}`);
    send(res, 503, outcome('error', 'transient', 'gate: authorization server unavailable'), { 'retry-after': '1' });
    return;
  }
  if (info.active !== true) {
    unauthorized(res, 'invalid_token', 'token is not active (unknown, revoked or expired)');
    return;
  }
  if (typeof info.exp === 'number' && info.exp * 1000 <= Date.now()) {
    unauthorized(res, 'invalid_token', 'token has expired');
    return;
  }

  if (!args['no-scope-check']) {
    let parsed = null;
    if (req.method === 'POST' && rest.split('?')[0].replace(/\/+$/, '') === '' && body.length) {
      try {
        parsed = JSON.parse(body.toString('utf8'));
      } catch {
        parsed = null; // let the FHIR server reject it
      }
    }
    const missing = missingScope(parseScopes(info.scope), needs(req.method, rest || '/', parsed));
    if (missing) {
      send(res, 403, outcome('error', 'forbidden', `token scope does not cover ${missing}`), {
        'www-authenticate': `Bearer realm="${REALM}", error="insufficient_scope", error_description="needs ${missing}"`,
      });
      return;
    }
  }

  const up = await forward(req, res, rest, url.search, body);
  if (!up) return;
  res.writeHead(up.status, { ...up.headers, 'content-length': Buffer.byteLength(up.text) });
  res.end(req.method === 'HEAD' ? undefined : up.text);
}

// ---------------------------------------------------------------- start
as = await discoverAuthServer();
if (!as.introspection_endpoint) {
  console.error('gate: the authorization server has no introspection endpoint');
  process.exit(2);
}
const server = createServer((req, res) => {
  handle(req, res).catch((e) => {
    console.error('gate: internal error', e);
    if (!res.headersSent) send(res, 500, outcome('fatal', 'exception', `gate: ${e.message}`));
    else res.destroy();
  });
});
server.keepAliveTimeout = 30_000;
server.listen(Number(args.port), '127.0.0.1', () => {
  const { port } = server.address();
  gateBase = `http://127.0.0.1:${port}${PREFIX}`;
  announceReady(args['ready-file'], { port, base_url: gateBase });
});
exitWithParent(server);
