"""`phg doctor`: check each link of the delivery chain and say what is wrong in words a person can act on.

Order follows the chain: config -> key -> server reachable over TLS (CapabilityStatement) ->
transaction support -> SMART discovery -> token -> the server accepts our token (an empty
transaction Bundle, which writes nothing) -> outbox.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

from phg.config import Config
from phg.errors import PhgError
from phg.transport import require_secure_url

Echo = Callable[[str], None]


class Checks:
    def __init__(self, echo: Echo):
        self.echo = echo
        self.ok = True

    def good(self, what: str) -> None:
        self.echo(f"  ok    {what}")

    def bad(self, what: str, fix: str) -> None:
        self.ok = False
        self.echo(f"  FAIL  {what}\n        -> {fix}")

    def warn(self, what: str) -> None:
        self.echo(f"  warn  {what}")


async def run_checks(config: Config, echo: Echo) -> bool:
    checks = Checks(echo)
    echo(f"config: {config.source}")
    if not config.fhir_base:
        checks.bad("no FHIR base URL", "set [fhir] base_url, PHG_FHIR_BASE_URL or --fhir-base")
        return False
    try:
        require_secure_url(config.fhir_base, "[fhir] base_url", allow_insecure_http=config.allow_insecure_http)
        checks.good(f"FHIR base {config.fhir_base}")
    except PhgError as exc:
        checks.bad(str(exc), "use an https URL")
        return False
    auth = None
    if config.client_id:
        from phg.daemon import make_auth

        try:
            auth = make_auth(config)
            checks.good(f"key {config.key_file} ({auth.key.alg}, kid {auth.key.kid})")
        except PhgError as exc:
            checks.bad(str(exc), "fix the key file (phg keys generate writes one with mode 0600)")
            return False
    else:
        checks.warn("no [auth] client_id: requests are sent without authorization")

    async with httpx.AsyncClient(timeout=15.0) as client:
        try:
            response = await client.get(f"{config.fhir_base}/metadata", headers={"Accept": "application/fhir+json"})
        except httpx.ConnectError as exc:
            fix = ("the server's certificate is not trusted: install its CA in the system store or set SSL_CERT_FILE"
                   if "CERTIFICATE_VERIFY_FAILED" in str(exc) else "check the URL, DNS, firewall and that the server runs")
            checks.bad(f"cannot connect to {config.fhir_base}: {exc}", fix)
            return False
        except httpx.TransportError as exc:
            checks.bad(f"{config.fhir_base}: {exc.__class__.__name__} {exc}", "check the network path to the server")
            return False
        _capabilities(checks, response)

        if auth is not None:
            try:
                smart = await auth.configuration()
                checks.good(f"SMART configuration ({smart.source}): token endpoint {smart.token_endpoint}")
                for problem in smart.backend_services_problems(auth.key.alg):
                    checks.warn(problem)
                token = await auth.token()
                checks.good(f"token issued for {config.client_id!r}, expires in {token.expires_in:.0f} s, "
                            f"scope {token.scope or '(not stated)'}")
            except PhgError as exc:
                checks.bad(str(exc), "see the message; the queue is not touched by doctor")
                await auth.aclose()
                return False
        await _empty_transaction(checks, config, auth)
        if auth is not None:
            await auth.aclose()

    from phg.outbox import Outbox

    try:
        with Outbox(config.outbox_path) as outbox:
            counts = outbox.counts()
        checks.good(f"outbox {config.outbox_path}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    except Exception as exc:  # noqa: BLE001 - any failure to open the file is reported, not raised
        checks.bad(f"outbox {config.outbox_path}: {exc}", "check the path and its permissions")
    return checks.ok


def _capabilities(checks: Checks, response: httpx.Response) -> None:
    if response.status_code != 200:
        checks.warn(f"GET /metadata answered {response.status_code}; cannot read the server's capabilities")
        return
    try:
        statement = response.json()
    except json.JSONDecodeError:
        checks.warn("GET /metadata is not JSON")
        return
    version = statement.get("fhirVersion", "?")
    if version.startswith("4.0"):
        checks.good(f"server reachable, FHIR {version} ({(statement.get('software') or {}).get('name', 'unnamed')})")
    else:
        checks.bad(f"server speaks FHIR {version}", "phg sends FHIR R4 (4.0.x); point base_url at an R4 endpoint")
    interactions = {i.get("code") for rest in statement.get("rest", []) for i in rest.get("interaction", [])}
    if "transaction" in interactions:
        checks.good("CapabilityStatement declares transaction")
    else:
        checks.warn("CapabilityStatement does not declare transaction (checked below with an empty Bundle)")


async def _empty_transaction(checks: Checks, config: Config, auth: httpx.Auth | None) -> None:
    """POST an empty transaction Bundle: proves the token is accepted and transactions work, writes nothing."""
    assert config.fhir_base is not None
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    async with httpx.AsyncClient(auth=auth, timeout=15.0) as client:
        try:
            response = await client.post(config.fhir_base, json=bundle,
                                         headers={"Content-Type": "application/fhir+json"})
        except (httpx.TransportError, PhgError) as exc:
            checks.bad(f"empty transaction: {exc}", "check the server")
            return
    if response.status_code == 200:
        checks.good("server accepts our token and an (empty) transaction Bundle")
    elif response.status_code in (401, 403):
        checks.bad(f"server refused our token: HTTP {response.status_code}",
                   "the token is valid at the authorization server but not accepted here; check the scopes and "
                   "that this client is allowed to write Patient, Device and Observation")
    else:
        checks.warn(f"empty transaction answered HTTP {response.status_code}")
