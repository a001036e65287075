"""The FHIR destination: a batch of readings becomes one transaction Bundle POSTed to the base URL.

FHIR R4 http.html#transaction: the response is a transaction-response Bundle whose entries answer
the request entries in order, each with response.status ("201", "201 Created", "200 OK" for a
conditional create that matched) and response.location (relative "Observation/1" or absolute
".../Observation/1/_history/1": servers differ, both are accepted).

- A reading that cannot be rendered (any exception while building its entries) is Rejected on its own;
  the others go in the transaction.
- 409 Conflict: another writer's conditional create raced ours (FHIR R4 http.html#ccreate; sekmet
  answers 409). The other writer created the resource, so the same transaction is posted once more at
  once; a second 409 is a permanent refusal.
- 412 Precondition Failed: a conditional create matched more than one resource (http.html#ccreate).
  When a Patient or Device of the transaction is ambiguous on the server (another client stored it
  twice), no reading can ever go through: ConfigError naming it, the queue stays intact.
- Answers are read defensively: whatever shape the JSON has, the result is Outcomes or a DeliveryError.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import httpx

from phg.auth.envelope import Envelope, seal
from phg.config import FhirSettings
from phg.delivery.outcome import Delivered, Outcome, Rejected
from phg.errors import AuthError, ConfigError, MappingError, PermanentDeliveryError, TransientDeliveryError
from phg.fhir import build_transaction, to_json
from phg.fhir.bundle import Transaction
from phg.model import Gateway, Reading
from phg.transport import TRANSIENT_STATUSES, require_secure_url, transient_error

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


@asynccontextmanager
async def open_fhir(settings: FhirSettings, gateway: Gateway) -> AsyncIterator[FhirDestination]:
    """One pooled HTTP client (keep-alive, HTTP/2 where the server offers it) for the destination,
    with the TLS policy of phg.delivery.tls and the [auth] CA bundle / client certificate / proxy,
    shared by the auth's token requests; Bundles go in an encrypted envelope when [auth] encrypt_to
    is set."""
    from phg.auth import build_auth
    from phg.auth.envelope import load_envelope
    from phg.delivery.tls import httpx_options

    section = "[fhir]" if settings.name == "fhir" else f"[destinations.{settings.name}]"
    if not settings.base_url:
        raise ConfigError(f"{settings.source}: {section} base_url is not set (or pass --fhir-base / PHG_FHIR_BASE_URL)")
    require_secure_url(settings.base_url, f"{section} base_url", allow_insecure_http=settings.allow_insecure_http)
    auth_settings = settings.auth
    timeout = httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout))
    async with httpx.AsyncClient(http2=True, timeout=timeout,
                                 **httpx_options(auth_settings.tls, auth_settings.proxy)) as client:
        auth = build_auth(auth_settings, client)
        client.auth = auth
        try:
            envelope = await load_envelope(auth_settings.encrypt_to, client, auth_settings.encrypt_kid)
            yield FhirDestination(client, settings.base_url, gateway, settings.ig_version, envelope, settings.name)
        finally:
            if auth is not None:
                await auth.aclose()  # type: ignore[attr-defined]


class FhirDestination:
    """Sends transaction Bundles to one FHIR server through one pooled AsyncClient."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, gateway: Gateway, ig_version: str = "2.0.0",
                 envelope: Envelope | None = None, name: str = "fhir"):
        self.name = name
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.gateway = gateway
        self.ig_version = ig_version
        self.envelope = envelope  # [auth] encrypt_to: Bundles go as a JWE (phg.auth.envelope)

    def render(self, readings: Sequence[Reading]) -> tuple[Transaction, bytes]:
        tx = build_transaction(readings, self.gateway, self.ig_version)
        return tx, to_json(tx.bundle)

    def render_each(self, readings: Sequence[Reading]) -> tuple[Transaction | None, bytes, dict[int, str]]:
        """The transaction of the readings that can be rendered, and why each other one cannot (by
        position). The whole batch is tried first; only when that fails is each reading tried alone."""
        try:
            return *self.render(readings), {}
        except Exception:  # which reading, and why, is found out below
            pass
        refused: dict[int, str] = {}
        for i, reading in enumerate(readings):
            try:
                self.render([reading])
            except MappingError as exc:
                refused[i] = f"cannot map to FHIR: {exc}"
            except Exception as exc:  # a mapping bug must cost this reading only
                refused[i] = f"cannot map to FHIR: {exc.__class__.__name__}: {exc}"
        rest = [r for i, r in enumerate(readings) if i not in refused]
        return (*self.render(rest), refused) if rest else (None, b"", refused)

    async def send(self, readings: Sequence[Reading]) -> list[Outcome]:
        # Building and serialising a bundle is CPU work: keep it off the event loop.
        tx, body, refused = await asyncio.to_thread(self.render_each, readings)
        sent = await self._transact(tx, body) if tx is not None else []
        answers = iter(sent)
        return [Rejected(refused[i]) if i in refused else next(answers) for i in range(len(readings))]

    async def _transact(self, tx: Transaction, body: bytes) -> list[Outcome]:
        content_type = FHIR_JSON
        if self.envelope is not None:  # RSA + AES work: off the event loop too
            body, content_type = await asyncio.to_thread(seal, body, self.envelope)
        response = await self._post(body, content_type)
        if response.status_code == 409:  # a conditional-create race another writer won: benign, once more
            log.info("%s answered 409 Conflict; posting the transaction once more", self.base_url)
            response = await self._post(body, content_type)
        if response.status_code == 412:
            await self._refuse_ambiguous(tx)
        return self._outcomes(response, tx.reading_entries, tx.shared_entries)

    async def _post(self, body: bytes, content_type: str) -> httpx.Response:
        try:
            return await self.client.post(
                self.base_url, content=body,
                headers={"Content-Type": content_type, "Accept": FHIR_JSON, "Prefer": "return=minimal"},
            )
        except httpx.HTTPError as exc:  # connection, timeout, protocol and decoding trouble alike
            unreachable = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            raise TransientDeliveryError(f"{self.base_url}: {exc.__class__.__name__}: {exc}",
                                         reached=not unreachable) from exc

    async def _refuse_ambiguous(self, tx: Transaction) -> None:
        """After a 412: ConfigError when the server holds more than one match for a Patient or Device
        conditional create of this transaction (FHIR R4 http.html#ccreate: "If multiple resources are
        found ... return a 412 Precondition Failed"). Such entries are shared by every reading of that
        patient or device, so no reading could ever go through; what is wrong is the server's data."""
        for i in tx.shared_entries:
            request = tx.bundle["entry"][i]["request"]
            if request["url"] not in ("Patient", "Device"):
                continue
            query = f"{request['ifNoneExist']}&_count=2"
            try:
                found = await self.client.get(f"{self.base_url}/{request['url']}?{query}", headers={"Accept": FHIR_JSON})
            except httpx.HTTPError as exc:
                raise TransientDeliveryError(f"{self.base_url}: 412, and the search for the cause failed: "
                                             f"{exc.__class__.__name__}: {exc}") from exc
            if _matches(_json(found)) > 1:
                identifier = dict(parse_qsl(request["ifNoneExist"])).get("identifier", "")
                raise ConfigError(
                    f"{self.base_url} holds more than one {request['url']} with identifier {identifier}, so every "
                    f"conditional create of it fails with 412 Precondition Failed: merge or delete the duplicate "
                    f"{request['url']} resources on the server (the readings stay queued)")

    def _outcomes(self, response: httpx.Response, reading_entries: list[list[int]],
                  shared_entries: list[int]) -> list[Outcome]:
        status = response.status_code
        if status in TRANSIENT_STATUSES:
            raise transient_error(response, "FHIR server")
        if status == 401:
            raise AuthError(f"{self.base_url} answered 401 Unauthorized even with a fresh token: "
                            f"{problem(response)}")
        if status == 403:
            raise AuthError(f"{self.base_url} answered 403 Forbidden: the client lacks a scope or permission "
                            f"(create on Patient, Device and Observation is needed): {problem(response)}")
        if status in (404, 405):
            # Our transactions reference nothing outside themselves (urn:uuid), so "not found" or "method
            # not allowed" on the POST is about the endpoint, never about a reading: stop, keep the queue.
            raise ConfigError(f"{self.base_url} answered {status} to a transaction POST: is [fhir] base_url the "
                              f"server's FHIR base? {problem(response)}")
        if status >= 400:
            raise PermanentDeliveryError(f"HTTP {status}: {problem(response)}", status, _json(response))
        bundle = _json(response)
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise TransientDeliveryError(f"{self.base_url} answered {status} without a transaction-response Bundle")
        answers = bundle.get("entry") or []
        if not isinstance(answers, list) or not all(
                isinstance(a, dict) and isinstance(a.get("response") or {}, dict) for a in answers):
            raise TransientDeliveryError(f"{self.base_url} answered {status} with a malformed transaction-response")
        if len(answers) != sum(map(len, reading_entries)) + len(shared_entries):
            raise TransientDeliveryError(f"{self.base_url} answered {len(answers)} entries for a transaction of "
                                         f"{sum(map(len, reading_entries)) + len(shared_entries)}")
        failed_shared = [entry_problem(answers[i]) for i in shared_entries if not _ok(answers[i])]
        if failed_shared:
            raise PermanentDeliveryError(f"Patient/Device entry refused: {failed_shared[0]}", status, bundle)
        outcomes: list[Outcome] = []
        for indices in reading_entries:
            refused = [entry_problem(answers[i]) for i in indices if not _ok(answers[i])]
            if refused:
                outcomes.append(Rejected("; ".join(refused)))
            else:
                outcomes.append(Delivered(" ".join(location(answers[i]) for i in indices)))
        return outcomes


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        return None


def _matches(bundle: Any) -> int:
    """How many resources a searchset Bundle holds (its entries, or its total if larger)."""
    if not isinstance(bundle, dict):
        return 0
    entries, total = bundle.get("entry"), bundle.get("total")
    return max(len(entries) if isinstance(entries, list) else 0, total if isinstance(total, int) else 0)


def _ok(entry: dict) -> bool:
    return str((entry.get("response") or {}).get("status", "")).strip()[:1] == "2"


def location(entry: dict) -> str:
    """'Type/id' from a relative or absolute location, with any _history suffix dropped."""
    text = str((entry.get("response") or {}).get("location", ""))
    parts = text.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else text


def outcome_text(outcome: Any) -> str:
    """The diagnostics of an OperationOutcome, one line. Server answers are read defensively: a part
    of an unexpected shape (a number for a string, a string for a list) is shown as text or skipped."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    issues = outcome.get("issue")
    texts = []
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        text = _text(issue.get("diagnostics")) or (_text(details.get("text")) if isinstance(details, dict) else "") \
            or _text(issue.get("code"))
        where = ", ".join(_texts(issue.get("expression")) or _texts(issue.get("location")))
        texts.append(f"{text} (at {where})" if where else text)
    return "; ".join(texts)


def _text(value: Any) -> str:
    """A string, number or boolean as text (shortened); anything else is no text."""
    return str(value)[:300] if isinstance(value, str | int | float | bool) else ""


def _texts(value: Any) -> list[str]:
    """The texts of a list of strings (FHIR string[]), or of one string sent where a list belongs."""
    values = value if isinstance(value, list) else [value]
    return [t for t in map(_text, values) if t]


def entry_problem(entry: dict) -> str:
    response = entry.get("response") or {}
    status = _text(response.get("status")) or "no status"
    return f"{status}: {outcome_text(response.get('outcome')) or 'no reason given'}"


def problem(response: httpx.Response) -> str:
    return outcome_text(_json(response)) or response.text[:300] or response.reason_phrase
