"""`phg doctor`: check each link of the delivery chain and say which step fails, what the server
answered, and what to do, in words a person can act on. Secrets are never printed.

Every configured destination is checked in its own terms (phg.config.Config.destinations):

FHIR, in the order a request meets them:
  config        base_url and the [auth] table parse; credentials / keys load
  tls           the FHIR server is reachable over TLS (CA bundle, client certificate, proxy);
                GET /metadata (FHIR version, transaction support)
  discovery     the SMART configuration (token endpoint), unless token_url is set
  registration  the RFC 7592 client configuration is still valid (when phg register stored one)
  token         the token endpoint issues a token
  scope         the granted scope covers creating Patient, Device and Observation
  write         the server accepts the token and an empty transaction Bundle (writes nothing)
  envelope      the server's encryption key loads ([auth] encrypt_to)
MLLP:
  connect       a connection (TLS when configured: CA bundle, client certificate) is made
  test          with send_test, one test message (MSH-11 = T) is sent and its ACK read
HL7 over HTTP, SOAP:
  connect       the URL answers (TLS when https), and does not refuse who we are (401/403)
C3-PRO (nothing is sent to /encfhir: every envelope the server takes is a new message):
  config        the server's public key loads (DER or PEM certificate, or public key)
  registration  client_id and client_secret are stored (phg register --destination NAME)
  token         <root>/oauth issues a token
  journal       the record of what was delivered opens; posts whose answer was lost are counted
Then the queue ([queue] engine):
  outbox        SQLite: the queue file opens, and its file system has room
  queue         JetStream: the servers answer (credentials, TLS), the server version (a warning below
                2.10.14, issue 15), phg's streams (replicas, size, a leader each) and each
                destination's consumer (a warning when no worker has leased from it yet); opening the
                queue creates its streams when missing, as every phg process does
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from phg.config import C3proSettings, Config, FhirSettings, HttpHl7Settings, MllpSettings, TlsSettings
from phg.errors import PhgError
from phg.terminal import printable
from phg.transport import redact_url, require_secure_url

Echo = Callable[[str], None]

REQUIRED = (("Patient", "c"), ("Device", "c"), ("Observation", "c"))
LOW_SPACE = 32 * 2**20  # bytes free on the outbox's file system below which doctor warns


class Checks:
    """Prints each result as a line through ``echo`` and keeps it as data in ``results`` (one dict per
    check: destination, step, status ok|fail|warn, what, fix), for `phg doctor --json`."""

    def __init__(self, echo: Echo):
        self.echo = echo
        self.ok = True
        self.failed_step: str | None = None
        self.destination: str | None = None  # the destination being checked; None for the outbox
        self.results: list[dict[str, str | None]] = []

    def _keep(self, status: str, what: str, step: str, fix: str | None = None) -> None:
        self.results.append({"destination": self.destination, "step": step or None, "status": status,
                             "what": printable(what), "fix": fix and printable(fix)})

    def good(self, what: str, step: str = "") -> None:
        self._keep("ok", what, step)
        self.echo(f"  ok    {_tag(step)}{what}")

    def bad(self, what: str, fix: str, step: str = "") -> None:
        self.ok = False
        self.failed_step = self.failed_step or step or None
        self._keep("fail", what, step, fix)
        self.echo(f"  FAIL  {_tag(step)}{what}\n        -> {fix}")

    def warn(self, what: str, step: str = "") -> None:
        self._keep("warn", what, step)
        self.echo(f"  warn  {_tag(step)}{what}")


def _tag(step: str) -> str:
    return f"[{step}] " if step else ""


async def run_checks(config: Config, echo: Echo, *, send_test: bool = False,
                     results: list[dict[str, str | None]] | None = None) -> bool:
    """Check every configured destination, then the outbox, printing through ``echo`` without
    control characters (lines quote servers). `send_test`: MLLP destinations get one test message.
    `results`, when given, receives every check as data (Checks.results)."""
    def printed(line: str) -> None:
        echo(printable(line))

    checks = Checks(printed)
    if results is not None:
        checks.results = results
    printed(f"config: {config.source}")
    for destination in config.destinations:
        checks.destination = destination.name
        printed(f"destination {destination.name} ({destination.type}):")
        await CHECKS[destination.type](checks, destination, config, send_test)
    checks.destination = None
    _outbox(checks, config)
    if checks.failed_step:
        printed(f"first failing step: {checks.failed_step}")
    return checks.ok


async def _fhir(checks: Checks, fhir: FhirSettings, config: Config, send_test: bool) -> bool:
    if not fhir.base_url:
        checks.bad("no FHIR base URL", "set [fhir] base_url, PHG_FHIR_BASE_URL or --fhir-base", "config")
        return False
    section = "[fhir]" if fhir.name == "fhir" else f"[destinations.{fhir.name}]"
    auth_table = "[auth]" if fhir.name == "fhir" else f"[destinations.{fhir.name}.auth]"
    try:
        require_secure_url(fhir.base_url, f"{section} base_url", allow_insecure_http=fhir.allow_insecure_http)
        checks.good(f"FHIR base {redact_url(fhir.base_url)}", "config")
    except PhgError as exc:
        checks.bad(str(exc), f"set {section} base_url to the EHR's https FHIR base", "config")
        return False

    from phg.auth import build_auth
    from phg.delivery.tls import httpx_options

    settings = fhir.auth
    try:
        kwargs = httpx_options(settings.tls, settings.proxy)
    except PhgError as exc:
        checks.bad(str(exc), f"fix the {auth_table} table of the config file", "config")
        return False
    async with httpx.AsyncClient(timeout=15.0, **kwargs) as client:
        try:
            auth = build_auth(settings, client)
        except PhgError as exc:
            checks.bad(str(exc), f"fix {auth_table} as the line above says (phg keys generate and phg register "
                       "write its key and client)", "config")
            return False
        _describe_auth(checks, settings, auth)
        try:
            if not await _tls_and_capabilities(checks, client, fhir.base_url, settings, section):
                return False
            if auth is not None and not await _token(checks, settings, auth, client):
                return False
            await _empty_transaction(checks, client, fhir.base_url, auth)
            await _envelope(checks, settings, client, auth_table)
        finally:
            if auth is not None:
                await auth.aclose()  # type: ignore[attr-defined]
    return checks.ok


async def _mllp(checks: Checks, settings: MllpSettings, config: Config, send_test: bool) -> None:
    """Connect (TLS when configured); with send_test, one test message (MSH-11 = T: HL7 v2.6
    section 2.14.9.11, processing ID "T" = training/test) and its ACK."""
    from phg.delivery.mllp import MllpExchange
    from phg.delivery.outcome import Delivered

    try:
        exchange = MllpExchange(settings)
    except PhgError as exc:
        checks.bad(str(exc), "fix the destination's table", "config")
        return
    try:
        try:
            await exchange.connect()
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            checks.bad(f"cannot connect to {exchange.where}: {type(exc).__name__}: {exc}",
                       "check host, port, TLS settings (ca_file, client_cert) and that the receiver runs", "connect")
            return
        checks.good(f"connected to {exchange.where}" + (" over TLS" if exchange.ssl else ""), "connect")
        if send_test:
            control_id, message = _test_message(config)
            result = await exchange(message, control_id)
            if isinstance(result, Delivered):
                checks.good(f"test message {control_id} (MSH-11 = T) acknowledged", "test")
            else:
                checks.bad(f"test message {control_id}: {getattr(result, 'reason', result)}",
                           "see the receiver's answer above", "test")
    finally:
        await exchange.aclose()


def _test_message(config: Config) -> tuple[str, str]:
    """One PCD-01 message of a body temperature of the gateway itself, marked as a test: MSH-11
    processing ID "T" (HL7 v2.6 section 2.14.9.11, table 0103: training), so that a receiver does
    not file it. MSH-n is field n - 1 of the MSH segment split on "|"."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from phg.hl7v2.pcd01 import render_batch
    from phg.model import Device, Metric, PatientRef, Reading

    patient = config.patient or PatientRef("urn:oid:1.2.3.4.5", "phg-doctor")
    reading = Reading(Device(system_id=config.gateway.system_id, model="phg doctor"), patient,
                      (Metric(150364, datetime.now(UTC), Decimal("36.6"), "Cel"),))  # MDC_TEMP_BODY
    [rendered] = render_batch([reading], config.gateway)
    assert not isinstance(rendered, Exception)
    control_id, message = rendered
    msh, *rest = message.split("\r")
    fields = msh.split("|")
    fields[10] = "T"
    return control_id, "\r".join(["|".join(fields), *rest])


async def _http(checks: Checks, settings: HttpHl7Settings, config: Config, send_test: bool) -> None:
    """Reachability (TLS when https) and whether the endpoint refuses who we are: an empty POST."""
    from phg.delivery.tls import httpx_options

    try:
        require_secure_url(settings.url, f"[destinations.{settings.name}] url",
                           allow_insecure_http=settings.allow_insecure_http)
        options = httpx_options(settings.tls_settings)
    except PhgError as exc:
        checks.bad(str(exc), "fix the destination's table", "config")
        return
    async with httpx.AsyncClient(timeout=min(settings.timeout, 15.0), **options) as client:
        try:
            response = await client.post(settings.url, content=b"", headers=dict(settings.headers))
        except httpx.TransportError as exc:
            checks.bad(f"cannot connect to {redact_url(settings.url)}: {type(exc).__name__}: {exc}",
                       "check the URL, TLS settings (ca_file, client_cert) and that the receiver runs", "connect")
            return
    if response.status_code in (401, 403):
        checks.bad(f"{redact_url(settings.url)} answered HTTP {response.status_code}: it refuses who we are",
                   "check the client certificate, headers or WS-Security credentials", "connect")
        return
    checks.good(f"{redact_url(settings.url)} answers (HTTP {response.status_code} to an empty request)", "connect")


async def _c3pro(checks: Checks, settings: C3proSettings, config: Config, send_test: bool) -> None:
    """The server's key loads, phg is registered, the token endpoint issues a token; nothing is sent
    to /encfhir (every envelope the server takes is a new message: C3-PRO has no test mode)."""
    from phg.delivery.c3pro import Journal, c3pro_auth, load_public_key
    from phg.delivery.tls import httpx_options

    section = f"[destinations.{settings.name}]"
    try:
        key = load_public_key(settings.public_key, f"{section} public_key")
    except PhgError as exc:
        checks.bad(str(exc), "use the DER or PEM certificate (or public key) the C3-PRO deployment hands out", "config")
        return
    checks.good(f"C3-PRO root {redact_url(settings.base_url)}, public key {settings.public_key} (RSA {key.key_size} bits), "
                f"key_id {settings.key_id!r}, version {settings.version!r}", "config")
    if not settings.client_id or not settings.client_secret:
        checks.bad(f"{section} is not registered (no client_id and client_secret)",
                   f"run phg register --destination {settings.name} (needs the Antispam token)", "registration")
        return
    checks.good(f"registered as client_id {settings.client_id!r}", "registration")
    async with httpx.AsyncClient(timeout=min(settings.timeout, 15.0), **httpx_options(TlsSettings())) as client:
        auth = c3pro_auth(settings, client)
        try:
            token = await auth.token()  # type: ignore[attr-defined]
        except PhgError as exc:
            checks.bad(str(exc), f"check the registration (phg register --destination {settings.name} --force)",
                       "token")
            return
        finally:
            await auth.aclose()  # type: ignore[attr-defined]
    checks.good(f"token issued at {redact_url(settings.base_url)}/oauth, expires in {token.expires_in:.0f} s", "token")
    try:
        journal = Journal(settings.journal)
        lost = journal.possible_duplicates
        journal.close()
    except (OSError, sqlite3.Error) as exc:
        checks.bad(f"journal {settings.journal}: {exc}", "make its directory writable, or set journal", "journal")
        return
    if lost:
        checks.warn(f"{lost} post(s) lost their answer and were sent again: possible duplicates on the server",
                    "journal")
    else:
        checks.good(f"journal {settings.journal}", "journal")


# Each destination type checked in its own terms (the types of phg.delivery.registry).
CHECKS: dict[str, Callable[[Checks, Any, Config, bool], Awaitable[object]]] = {
    "fhir": _fhir, "mllp": _mllp, "hl7-http": _http, "soap": _http, "c3pro": _c3pro}


def _describe_auth(checks: Checks, settings, auth) -> None:
    if auth is None:
        checks.warn("no [auth] method: requests are sent without authorization", "config")
        return
    what = f"auth method {settings.method}"
    if settings.method == "smart-backend":
        key = auth.client_auth.key
        published = auth.client_auth.keys.published()
        what += (f", client_id {settings.client_id!r}, signing key {key.kid} ({key.alg}), "
                 f"{len(published)} key(s) published")
    elif settings.method != "bearer":
        what += f", client_id {settings.client_id!r}"
    if settings.method == "password":
        checks.warn("the password grant is legacy (OAuth 2.1 removes it)", "config")
    if settings.client_cert:
        what += f", client certificate {settings.client_cert}"
    checks.good(what, "config")


async def _tls_and_capabilities(checks: Checks, client: httpx.AsyncClient, base: str, settings, section: str) -> bool:
    try:
        response = await client.get(f"{base}/metadata", headers={"Accept": "application/fhir+json"}, auth=None)
    except httpx.ProxyError as exc:
        shown = httpx.URL(settings.proxy).copy_with(username=None, password=None)  # never print its credentials
        checks.bad(f"proxy {shown} refused the connection: {exc}", "check [auth] proxy", "tls")
        return False
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError) as exc:
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            fix = ("the server's certificate is not trusted: set [auth] ca_file to its CA bundle "
                   "(or install the CA in the system store)")
        elif re.search(r"CERTIFICATE_REQUIRED|BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_UNKNOWN|HANDSHAKE_FAILURE|"
                       r"certificate", text, re.I) or (isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError)
                                                       and base.startswith("https")):
            fix = ("the server refused our TLS client certificate (or wants one): set [auth] client_cert and "
                   "client_key to a certificate its CA issued")
        elif _reserved_example(httpx.URL(base).host):
            fix = (f"{httpx.URL(base).host} is an example name (RFC 2606 reserves it; phg init writes one): "
                   f"set {section} base_url to your EHR's FHIR base")
        else:
            fix = "check the URL, DNS, firewall and that the server runs"
        checks.bad(f"cannot connect to {redact_url(base)}: {type(exc).__name__}: {exc}", fix, "tls")
        return False
    except httpx.TransportError as exc:
        checks.bad(f"{redact_url(base)}: {exc.__class__.__name__} {exc}", "check the network path to the server", "tls")
        return False
    checks.good(f"connected to {redact_url(base)}" + (" over TLS" if base.startswith("https") else ""), "tls")
    _capabilities(checks, response)
    return True


def _reserved_example(host: str) -> bool:
    """A name reserved for examples (RFC 2606 sections 2 and 3: the TLDs .example, .invalid and .test, and
    example.com, .net, .org), as in the config phg init writes: no server answers there."""
    labels = host.lower().rstrip(".").split(".")
    return labels[-1] in ("example", "invalid", "test") or ".".join(labels[-2:]) in ("example.com", "example.net",
                                                                                     "example.org")


def _capabilities(checks: Checks, response: httpx.Response) -> None:
    if response.status_code != 200:
        checks.warn(f"GET /metadata answered {response.status_code}; cannot read the server's capabilities", "tls")
        return
    try:
        statement = response.json()
    except json.JSONDecodeError:
        checks.warn("GET /metadata is not JSON", "tls")
        return
    version = str(statement.get("fhirVersion", "?"))
    if version.startswith("4.0"):
        checks.good(f"server reachable, FHIR {version} ({(statement.get('software') or {}).get('name', 'unnamed')})")
    else:
        checks.bad(f"server speaks FHIR {version}", "phg sends FHIR R4 (4.0.x); point base_url at an R4 endpoint")
    interactions = {i.get("code") for rest in statement.get("rest", []) for i in rest.get("interaction", [])}
    if "transaction" in interactions:
        checks.good("CapabilityStatement declares transaction")
    else:
        checks.warn("CapabilityStatement does not declare transaction (checked below with an empty Bundle)")


async def _token(checks: Checks, settings, auth, client: httpx.AsyncClient) -> bool:
    if settings.method != "bearer":
        if settings.token_url:
            checks.good(f"token endpoint {redact_url(settings.token_url)} (configured)", "discovery")
        else:
            try:
                smart = await auth.configuration()
            except PhgError as exc:
                checks.bad(str(exc), "set [auth] token_url, or fix the FHIR base URL", "discovery")
                return False
            checks.good(f"SMART configuration ({smart.source}): token endpoint {smart.token_endpoint}", "discovery")
            for problem in auth.configuration_problems(smart):
                checks.warn(problem, "discovery")
    if settings.registration_client_uri and settings.registration_access_token:
        if not await _registration(checks, settings, client):
            return False
    try:
        token = await auth.token()
    except PhgError as exc:
        step = "scope" if "invalid_scope" in str(exc) else "token"
        checks.bad(str(exc), "see the server's answer above; the queue is not touched by doctor", step)
        return False
    if settings.method == "bearer":
        checks.good("static bearer token configured", "token")
        return True
    checks.good(f"token issued for {settings.client_id or settings.username!r}, expires in {token.expires_in:.0f} s",
                "token")
    if token.scope is None:
        checks.warn("the token answer states no scope; the write check below tells", "scope")
        return True
    missing = [f"{t}.{p}" for t, p in REQUIRED if not _covers(token.scope, t, p)]
    if missing:
        checks.bad(f"granted scope {token.scope!r} lacks create on {', '.join(missing)}",
                   "have the server grant them, or set [auth] scope to what the server allows", "scope")
    else:
        checks.good(f"granted scope {token.scope!r} covers Patient, Device and Observation", "scope")
    return True


def _covers(scope: str, resource: str, permission: str) -> bool:
    for item in scope.split():
        match = re.fullmatch(r"system/([A-Za-z]+|\*)\.([a-z*]+)(\?.*)?", item)
        if not match or match.group(1) not in (resource, "*"):
            continue
        perms = {"read": "rs", "write": "cud", "*": "cruds"}.get(match.group(2), match.group(2))
        if permission in perms:
            return True
    return False


async def _registration(checks: Checks, settings, client: httpx.AsyncClient) -> bool:
    from phg.auth.registration import read_registration

    try:
        found = await read_registration(client, settings.registration_client_uri, settings.registration_access_token)
    except PhgError as exc:
        checks.bad(str(exc), "register again: phg register --force", "registration")
        return False
    if found.registration_access_token != settings.registration_access_token and settings.source != "(defaults)":
        from pathlib import Path

        from phg.auth.registration import store_in_config

        store_in_config(Path(settings.source), {"registration_access_token": found.registration_access_token or ""},
                        secret=True)
        checks.warn("the server rotated the registration access token on read; stored the new one", "registration")
    checks.good(f"client {found.client_id} is registered ({found.token_endpoint_auth_method})", "registration")
    return True


async def _empty_transaction(checks: Checks, client: httpx.AsyncClient, base: str, auth: httpx.Auth | None) -> None:
    """POST an empty transaction Bundle: proves the token is accepted and transactions work, writes nothing."""
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    try:
        response = await client.post(base, json=bundle, headers={"Content-Type": "application/fhir+json"},
                                     auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT)
    except (httpx.TransportError, PhgError) as exc:
        checks.bad(f"empty transaction: {exc}", "check the server", "write")
        return
    if response.status_code == 200:
        checks.good("server accepts our token and an (empty) transaction Bundle", "write")
    elif response.status_code in (401, 403):
        checks.bad(f"server refused the request: HTTP {response.status_code} {_answer(response)}",
                   "the token is valid at the authorization server but not accepted here; check the scopes and "
                   "that this client is allowed to write Patient, Device and Observation", "write")
    else:
        checks.warn(f"empty transaction answered HTTP {response.status_code} {_answer(response)}", "write")


def _answer(response: httpx.Response) -> str:
    challenge = response.headers.get("WWW-Authenticate", "")
    try:
        body = response.json()
    except ValueError:
        body = None
    from phg.delivery.fhir import outcome_text

    text = outcome_text(body) or challenge
    return f"({text[:300]})" if text else ""


async def _envelope(checks: Checks, settings, client: httpx.AsyncClient, auth_table: str) -> None:
    if not settings.encrypt_to:
        return
    from phg.auth.envelope import load_envelope

    try:
        envelope = await load_envelope(settings.encrypt_to, client, settings.encrypt_kid, auth_table)
    except PhgError as exc:
        checks.bad(str(exc), f"fix {auth_table} encrypt_to / encrypt_kid", "envelope")
        return
    assert envelope is not None
    checks.good(f"Bundles are sealed for key {envelope.kid} (JWE RSA-OAEP-256 + A256GCM)", "envelope")


def _outbox(checks: Checks, config: Config) -> None:
    from phg.outbox import Outbox

    if config.queue.engine == "jetstream":
        _jetstream(checks, config)
        return
    try:
        with Outbox(config.outbox_path, keep_delivered=config.keep_delivered) as outbox:
            counts = outbox.counts()
        checks.good(f"outbox {config.outbox_path}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                    "outbox")
    except Exception as exc:  # noqa: BLE001 - any failure to open the file is reported, not raised
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)  # OSError's str repeats the path
        checks.bad(text if str(config.outbox_path) in text else f"outbox {config.outbox_path}: {text}",
                   "check [outbox] path (PHG_OUTBOX, --outbox) and the file it names (this user must be able to "
                   "write it and its directory)",
                   "outbox")
        return
    _free_space(checks, config.outbox_path.parent)


def _jetstream(checks: Checks, config: Config) -> None:
    """The JetStream queue: reachable, a supported server, phg's streams each with a leader, a consumer per
    destination (phg.outbox.jetstream.JetStreamQueue.inspect)."""
    from phg.outbox import open_queue

    where = f"JetStream {', '.join(map(redact_url, config.queue.servers))}"
    try:
        with open_queue(config) as queue:
            found = queue.inspect(config.destination_names)
    except PhgError as exc:
        checks.bad(f"{where}: {exc}", "check [queue] servers, the credentials (creds_file, nkey_seed_file or user "
                   "and password), TLS (tls://, ca_file), and that nats-server runs with JetStream enabled", "queue")
        return
    checks.good(f"JetStream reached at {found.connected_url}, nats-server {found.server_version}", "queue")
    if not found.server_supported:
        checks.warn(f"nats-server {found.server_version} is older than 2.10.14: after a node restart it can store "
                    "and deliver again a reading already delivered (phg's delivered markers keep it from being sent "
                    "twice); use 2.10.14 or newer in production", "queue")
    for stream in found.streams:
        if stream.leader is None:
            checks.bad(f"stream {stream.name} has no leader", "bring back enough JetStream nodes for a quorum "
                       f"({stream.replicas // 2 + 1} of {stream.replicas})", "queue")
        else:
            checks.good(f"stream {stream.name}: {stream.messages} message(s), {stream.replicas} replica(s), "
                        f"leader {stream.leader}", "queue")
    for consumer in found.consumers:
        if not consumer.exists:
            checks.warn(f"destination {consumer.destination}: no worker has leased from it yet (its consumer is made "
                        "by the first `phg run --role worker` or `all`)", "queue")
            continue
        paused = (f"; paused by a Retry-After until {_iso(consumer.paused_until)}"
                  if consumer.paused_until is not None else "")
        checks.good(f"destination {consumer.destination}: {consumer.pending} waiting, {consumer.ack_pending} being "
                    f"delivered, lease {consumer.ack_wait:g} s{paused}", "queue")


def _iso(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _free_space(checks: Checks, directory: Path) -> None:
    """Warn when the outbox's file system has less than LOW_SPACE free: a full disk stops queueing."""
    fs = os.statvfs(directory)
    free = fs.f_bavail * fs.f_frsize
    if free < LOW_SPACE:
        checks.warn(f"only {free / 2**20:.1f} MiB free of {fs.f_blocks * fs.f_frsize / 2**20:.1f} MiB on the file "
                    f"system holding {directory}: readings cannot be queued once it is full; free some space, "
                    "move [outbox] path, or shorten [outbox] keep_delivered", "outbox")
