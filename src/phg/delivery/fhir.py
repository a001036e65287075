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

Batches that fit the server (issue 16). Each destination remembers, in memory for the life of the
process (not persisted: a restart learns again, at the cost of one refused POST), how many entries a
transaction may hold and which way of sending is fastest there:
- The entry limit: [fhir] max_entries, or learned from a refusal like Medplum's ("Transaction requires
  strict isolation but has too many entries": @medplum/fhir-router refuses any transaction holding a
  conditional create and more than maxSerializableTransactionEntries = 8 entries; the answer does not
  say the number, so a refusal of n entries teaches min(n - 1, 8)). The refused batch is sent again at
  once, within the limit: its entries in order, in parts of at most that many. Every entry references
  only entries before it (Patient, Devices and Coincident Time Stamps come first), so a reference to an
  entry of an earlier part is rewritten to the literal "Type/id" the server answered for it (FHIR R4
  references.html#literal); references inside a part stay urn:uuid (http.html#trules). One reading
  too big for one transaction is sent this way too: it is never dead-lettered for its size.
- The way ([fhir] strategy): "transaction" (Bundles, in parts when a limit applies), "single" (each
  resource its own conditional create, POST [type] with If-None-Exist, http.html#ccreate, references
  rewritten the same way), or "auto": the ways are compared on samples of one batch, the rest of which
  and every batch until the next comparison go the cheaper way. Compared in batches 1, 2, 4, 8, ... and
  then every RECHECK batches: which way is cheaper may change as the server's store grows (Medplum's
  in-memory router searches its whole store for each conditional create, twice inside a transaction, so
  transactions of 8 win on an empty store and single POSTs soon after), most likely early on. In a
  sampled batch the shared entries go first as single conditional creates (few, and needed by both
  samples), then SAMPLE Observation entries as transactions and the next SAMPLE as single POSTs, back
  to back on one warm connection, each timed per entry: equal samples of the same kind of entry at the
  same moment, so that neither way pays the other's set-up (the first connection, the first creation
  of the Patient and Devices) and a server that slows down as it fills weighs on both alike. Only
  SAMPLE entries of a batch go the dearer way, where timing a whole batch each way cost a whole slow
  batch (a quarter of a short run on Medplum).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson

from phg.auth.envelope import Envelope, seal
from phg.config import FHIR_STRATEGIES, FhirSettings
from phg.delivery.cpu import batch_work, render_inline
from phg.delivery.outcome import Delivered, Outcome, Rejected
from phg.errors import AuthError, ConfigError, MappingError, PermanentDeliveryError, TransientDeliveryError
from phg.fhir import build_transaction, to_json
from phg.fhir.bundle import Transaction
from phg.model import Gateway, Reading
from phg.process import in_thread
from phg.transport import TRANSIENT_STATUSES, exchange, redact_url, require_secure_url, transient_error

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
WAYS = FHIR_STRATEGIES[1:]  # "transaction", "single"
MEDPLUM_ENTRIES = 8  # @medplum/fhir-router maxSerializableTransactionEntries (with a conditional create)
RECHECK = 200  # under "auto", the ways are compared (a sampled batch) in batches 1, 2, 4, ... and then every RECHECK
SAMPLE = 8  # Observation entries per way in a sampled batch: one transaction even on Medplum (never refused as
# too many), small because every comparison sends SAMPLE entries the dearer way (bench fit-medplum: 16 cost 0.76)


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
            envelope = await load_envelope(auth_settings.encrypt_to, client, auth_settings.encrypt_kid,
                                           "[auth]" if settings.name == "fhir" else f"[destinations.{settings.name}.auth]")
            yield FhirDestination(client, settings.base_url, gateway, settings.ig_version, envelope, settings.name,
                                  strategy=settings.strategy, fit=fit_of(settings))
        finally:
            if auth is not None:
                await auth.aclose()  # type: ignore[attr-defined]


@dataclass
class Fit:
    """What one server takes, as this process has learned it (module docstring): at most max_entries
    entries per transaction (None: no limit known), the seconds per entry each way cost in the latest
    sample, and how many batches were sent under "auto"; refused_at:
    when (time.monotonic()) a transaction was refused as too many (a refusal lowers max_entries, so there
    are few).
    """

    max_entries: int | None = None
    cost: dict[str, float] = field(default_factory=dict)
    batches: int = 0
    refused_at: list[float] = field(default_factory=list)
    # "single": where the server keeps each Patient, Device and Coincident Time Stamp already sent, by
    # fullUrl (a uuid5 of the conditional create's query), so that a batch sends only what is new.
    located: dict[str, str] = field(default_factory=dict)


# Kept for the life of the process, per destination and server, so that every delivery run of a process
# (phg run's worker, each `phg send`'s delivery) starts from what was learned; not persisted.
_FITS: dict[tuple[str, str], Fit] = {}


def fit_of(settings: FhirSettings) -> Fit:
    """The destination's Fit in this process, starting from [fhir] max_entries (0: none)."""
    return _FITS.setdefault((settings.name, settings.base_url or ""), Fit(settings.max_entries or None))


class FhirDestination:
    """Sends transaction Bundles to one FHIR server through one pooled AsyncClient."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, gateway: Gateway, ig_version: str = "2.0.0",
                 envelope: Envelope | None = None, name: str = "fhir", *, strategy: str = "transaction",
                 fit: Fit | None = None):
        if strategy not in FHIR_STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(FHIR_STRATEGIES)}, not {strategy!r}")
        self.name = name
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.gateway = gateway
        self.ig_version = ig_version
        self.envelope = envelope  # [auth] encrypt_to: Bundles go as a JWE (phg.auth.envelope)
        # Only a transaction Bundle is sealed in an envelope: encrypted destinations never send singles.
        self.strategy = "transaction" if envelope is not None else strategy
        self.fit = fit or Fit()

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
        tx, body, refused = await batch_work(render_inline(readings), self.render_each, readings)
        sent = await self._deliver(tx, body) if tx is not None else []
        answers = iter(sent)
        return [Rejected(refused[i]) if i in refused else next(answers) for i in range(len(readings))]

    def way(self) -> str:
        """How the next batch goes: the configured strategy; under "auto", "sample" (both ways timed on
        samples of the batch) until both are timed, then in batches 2, 4, 8, ... and every RECHECK, else
        the way that cost the least per entry in the latest sample."""
        if self.strategy != "auto":
            return self.strategy
        fit = self.fit
        fit.batches += 1
        n = fit.batches
        if len(fit.cost) < len(WAYS) or (n & (n - 1) == 0 if n < RECHECK else n % RECHECK == 0):
            return "sample"
        return min(WAYS, key=fit.cost.__getitem__)

    async def _deliver(self, tx: Transaction, body: bytes) -> list[Outcome]:
        way = self.way()
        if way == "sample":
            answers = await self._sampled(tx, body)
        else:
            answers = await (self._singles(tx) if way == "single" else self._transaction(tx, body))
        return self._outcomes(answers, tx)

    async def _sampled(self, tx: Transaction, body: bytes) -> list[dict]:
        """The batch with the ways compared on it (module docstring): the shared entries as single POSTs,
        SAMPLE Observation entries each way, timed per entry, the rest the cheaper way. A batch with fewer
        than two Observations to compare on goes as one transaction, untimed."""
        entries: list[dict] = tx.bundle["entry"]
        start = max(tx.shared_entries, default=-1) + 1  # build_transaction puts the shared entries first
        size = min(SAMPLE, (len(entries) - start) // 2)
        if size < 1:
            return await self._transaction(tx, body)
        known = dict(self.fit.located)
        try:
            return await self._sampled_with(tx, start, size, known)
        except PermanentDeliveryError:  # as in _singles: a resource remembered may be gone from the server
            if not known:
                raise
            self.fit.located.clear()
            return await self._sampled_with(tx, start, size, {})

    async def _sampled_with(self, tx: Transaction, start: int, size: int, located: dict[str, str]) -> list[dict]:
        entries: list[dict] = tx.bundle["entry"]
        answers = await self._singles_with(tx, located, entries[:start])
        cost = self.fit.cost
        for way in WAYS:
            started = time.perf_counter()
            answers += await self._by(way, tx, entries[len(answers):len(answers) + size], located)
            cost[way] = (time.perf_counter() - started) / size
        best = min(WAYS, key=cost.__getitem__)
        log.debug("%s: seconds per entry %s; sending the %s way", self.name,
                  ", ".join(f"{w} {cost[w]:.6f}" for w in WAYS), best)
        return answers + await self._by(best, tx, entries[len(answers):], located)

    async def _by(self, way: str, tx: Transaction, entries: list[dict], located: dict[str, str]) -> list[dict]:
        """The answers to `entries` (a run of the transaction's) sent `way`, references to earlier entries
        resolved through `located`, which learns where these are."""
        if not entries:
            return []
        if way == "single":
            return await self._singles_with(tx, located, entries)
        return await self._in_parts(tx, entries, located)

    async def _transaction(self, tx: Transaction, body: bytes) -> list[dict]:
        """The transaction's answers, entry by entry: one POST when it fits the server, else in parts."""
        entries = len(tx.bundle["entry"])
        if self.fit.max_entries is None or entries <= self.fit.max_entries:
            response = await self._post_transaction(tx, body)
            if not _too_many(response, entries):
                return self._answers(response, entries)
            self._learn(entries)
        return await self._in_parts(tx, tx.bundle["entry"], {})

    async def _in_parts(self, tx: Transaction, entries: list[dict], located: dict[str, str]) -> list[dict]:
        """The entries in order, in transactions of at most max_entries (all in one without a limit); a
        reference to an entry located before (an earlier part's, or in `located`) becomes the "Type/id"
        the server answered for it."""
        answers: list[dict] = []
        while len(answers) < len(entries):
            limit = self.fit.max_entries or len(entries)
            part = [_resolved(e, located) for e in entries[len(answers):len(answers) + limit]]
            body = to_json({"resourceType": "Bundle", "type": "transaction", "entry": part})  # orjson: microseconds
            response = await self._post_transaction(tx, body)
            if _too_many(response, len(part)):
                self._learn(len(part))
                continue
            for entry, answer in zip(part, self._answers(response, len(part)), strict=True):
                located[entry["fullUrl"]] = location(answer)
                answers.append(answer)
        return answers

    async def _singles(self, tx: Transaction) -> list[dict]:
        """Each resource its own conditional create (FHIR R4 http.html#ccreate: POST [type] with
        If-None-Exist; 201 Created, or 200 OK when it matched), in the transaction's order, references to
        earlier entries rewritten to their "Type/id". The answers take the shape of transaction-response
        entries, so they are judged alike. Patient, Device and Coincident Time Stamp entries sent before
        by this process are not sent again (Fit.located); if the server refuses anything while some were
        left out (one may have been deleted there), they are forgotten and the batch is sent whole."""
        known = dict(self.fit.located)
        try:
            return await self._singles_with(tx, known, tx.bundle["entry"])
        except PermanentDeliveryError:
            if not known:
                raise
            self.fit.located.clear()
            return await self._singles_with(tx, {}, tx.bundle["entry"])

    async def _singles_with(self, tx: Transaction, located: dict[str, str], entries: list[dict]) -> list[dict]:
        answers: list[dict] = []
        shared = {tx.bundle["entry"][i]["fullUrl"] for i in tx.shared_entries}
        for entry in entries:
            if entry["fullUrl"] in located and entry["fullUrl"] in shared:
                answers.append({"response": {"status": "200 OK", "location": located[entry["fullUrl"]]}})
                continue
            request = entry["request"]
            headers = {"If-None-Exist": request["ifNoneExist"]}
            response = await self._post_conflicted(tx, to_json(_resolved(entry, located)["resource"]),
                                                   f"{self.base_url}/{request['url']}", headers)
            self._check(response)
            answer = self._single_answer(response, request["url"])
            located[entry["fullUrl"]] = location(answer)
            if entry["fullUrl"] in shared:
                self.fit.located[entry["fullUrl"]] = location(answer)
            answers.append(answer)
        return answers

    def _learn(self, refused: int) -> None:
        """A transaction of `refused` entries was too many: the limit is below it (Medplum's, 8, at most)."""
        self.fit.max_entries = max(1, min(refused - 1, MEDPLUM_ENTRIES, self.fit.max_entries or refused))
        self.fit.refused_at.append(time.monotonic())
        log.info("%s: a transaction of %d entries was refused as too many; sending at most %d per transaction",
                 self.name, refused, self.fit.max_entries)

    async def _post_transaction(self, tx: Transaction, body: bytes) -> httpx.Response:
        content_type = FHIR_JSON
        if self.envelope is not None:  # RSA + AES work: off the event loop too
            body, content_type = await in_thread(seal, body, self.envelope)
        return await self._post_conflicted(tx, body, self.base_url, {"Content-Type": content_type,
                                                                      "Prefer": "return=minimal"})

    async def _post_conflicted(self, tx: Transaction, body: bytes, url: str, headers: dict[str, str]) -> httpx.Response:
        """POST; once more at once after a 409 (a conditional-create race another writer won); the cause
        of a 412 found out (_refuse_ambiguous)."""
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, **headers}
        response = await self._post(url, body, headers)
        if response.status_code == 409:  # a conditional-create race another writer won: benign, once more
            log.info("%s answered 409 Conflict; posting once more", self.base_url)
            response = await self._post(url, body, headers)
        if response.status_code == 412:
            await self._refuse_ambiguous(tx)
        return response

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        try:
            return await exchange(self.client, "POST", url, content=body, headers=headers)
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
                found = await exchange(self.client, "GET", f"{self.base_url}/{request['url']}?{query}",
                                       headers={"Accept": FHIR_JSON})
            except httpx.HTTPError as exc:
                raise TransientDeliveryError(f"{self.base_url}: 412, and the search for the cause failed: "
                                             f"{exc.__class__.__name__}: {exc}") from exc
            if _matches(_json(found)) > 1:
                identifier = dict(parse_qsl(request["ifNoneExist"])).get("identifier", "")
                raise ConfigError(
                    f"{self.base_url} holds more than one {request['url']} with identifier {identifier}, so every "
                    f"conditional create of it fails with 412 Precondition Failed: merge or delete the duplicate "
                    f"{request['url']} resources on the server (the readings stay queued)")

    def _check(self, response: httpx.Response) -> None:
        """Raise what an error status means for the destination (a 2xx passes)."""
        status = response.status_code
        if status in TRANSIENT_STATUSES:
            raise transient_error(response, "FHIR server")
        if status == 401:
            raise AuthError(f"{self.base_url} answered 401 Unauthorized even with a fresh token{self._words(response)}")
        if status == 403:
            raise AuthError(f"{self.base_url} answered 403 Forbidden: the client lacks a scope or permission "
                            f"(create on Patient, Device and Observation is needed){self._words(response)}")
        if status in (404, 405):
            # Our requests reference nothing the server has not answered for, so "not found" or "method
            # not allowed" on the POST is about the endpoint, never about a reading: stop, keep the queue.
            raise ConfigError(f"{self.base_url} answered {status} to a POST: is [fhir] base_url the "
                              f"server's FHIR base?{self._words(response)}")
        if 300 <= status < 400:
            # A moved endpoint (http to https, a new base): like a 404, about the endpoint, never a reading. phg
            # does not follow it with readings (nor with the token): stop, keep the queue (review A finding 6: a
            # 3xx went dead-letter in single creates and was retried for ever as a transaction).
            moved = redact_url(response.headers.get("Location", "")) or "nowhere given"
            raise ConfigError(f"{self.base_url} answered {status} to a POST, redirecting to {moved}: set [fhir] "
                              "base_url to the server's FHIR base")
        if status >= 400:
            raise PermanentDeliveryError(f"HTTP {status}: {problem(response)}", status, _json(response))

    def _words(self, response: httpx.Response) -> str:
        """Where the server's own words about a refusal that stops the destination are: logged at DEBUG only. They
        may quote what was POSTed (an OperationOutcome echoing a valueQuantity), and the refusal's message is logged
        at ERROR and shown as the destination's status (the page, systemd's STATUS=): review A finding 5."""
        log.debug("%s answered %d: %s", self.base_url, response.status_code, problem(response))
        return " (the server's words are logged at DEBUG: phg -vv)"

    def _single_answer(self, response: httpx.Response, resource_type: str) -> dict:
        """A 2xx answer to POST [type] as a transaction-response entry: its status, and where the resource
        is: the Location header (FHIR R4 http.html#create: "SHALL also return a Location header"), else the
        returned resource's id. A 200 or 201 that says neither (an HTML page from a proxy or a captive portal, an
        error OperationOutcome, an empty body) is no FHIR answer: TransientDeliveryError, tried again; it was
        counted delivered, and its empty location put in the references of later entries (review A finding 1)."""
        status = response.status_code
        where = ""
        if status in (200, 201):
            where = response.headers.get("Location", "")
            resource = None if where else _json(response)
            if isinstance(resource, dict) and resource.get("resourceType") == resource_type:
                ident = resource.get("id")
                where = f"{resource_type}/{ident}" if isinstance(ident, str) and ident else ""
        if not where:
            raise TransientDeliveryError(f"{self.base_url} answered {status} to a POST of a {resource_type} without "
                                         f"saying where it is (no Location header, no {resource_type} with an id)")
        return {"response": {"status": str(status), "location": where}}

    def _answers(self, response: httpx.Response, entries: int) -> list[dict]:
        """The entries of a transaction-response to a transaction of `entries` entries."""
        self._check(response)
        status = response.status_code
        bundle = _json(response)
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise TransientDeliveryError(f"{self.base_url} answered {status} without a transaction-response Bundle")
        answers = bundle.get("entry") or []
        if not isinstance(answers, list) or not all(  # each entry's response.status is 1..1 (R4 Bundle)
                isinstance(a, dict) and isinstance(a.get("response"), dict) and isinstance(a["response"].get("status"), str)
                for a in answers):
            raise TransientDeliveryError(f"{self.base_url} answered {status} with a malformed transaction-response")
        if len(answers) != entries:
            raise TransientDeliveryError(f"{self.base_url} answered {len(answers)} entries for a transaction of "
                                         f"{entries}")
        return answers

    def _outcomes(self, answers: list[dict], tx: Transaction) -> list[Outcome]:
        failed_shared = [entry_problem(answers[i]) for i in tx.shared_entries if not _ok(answers[i])]
        if failed_shared:
            raise PermanentDeliveryError(f"Patient/Device entry refused: {failed_shared[0]}", 200,
                                         {"resourceType": "Bundle", "entry": answers})
        outcomes: list[Outcome] = []
        for indices in tx.reading_entries:
            mine = [answers[i] for i in indices]
            if all(map(_ok, mine)):
                outcomes.append(Delivered(" ".join(map(location, mine))))
            else:
                outcomes.append(Rejected("; ".join(entry_problem(a) for a in mine if not _ok(a))))
        return outcomes


def _too_many(response: httpx.Response, entries: int) -> bool:
    """Refused for its number of entries (Medplum: 400, "Transaction requires strict isolation but has
    too many entries"); a transaction of one entry is never refused for that."""
    return entries > 1 and response.status_code == 400 and "too many entries" in problem(response)


def _resolved(value: Any, located: dict[str, str]) -> Any:
    """`value` with every reference to a located urn:uuid replaced by its "Type/id" (a copy; the
    original untouched)."""
    if not located:
        return value
    if isinstance(value, dict):
        return {k: located.get(v, v) if k == "reference" and isinstance(v, str) else _resolved(v, located)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v, located) for v in value]
    return value


def _json(response: httpx.Response) -> Any:
    """The answer's JSON, or None. orjson reads the UTF-8 that servers send (a transaction-response of 100
    entries: a quarter of the stdlib's time, issue 16); what it refuses (a byte-order mark, another charset,
    NaN, nesting past 1,024) is read as httpx reads it. (orjson reads an integer beyond 64 bits as a float:
    no number phg reads from an answer is one.)"""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        pass
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
    status = (entry.get("response") or {}).get("status", "")
    return (status if type(status) is str else str(status)).lstrip()[:1] == "2"


def location(entry: dict) -> str:
    """'Type/id' from a relative or absolute location, with any _history suffix dropped."""
    text = str((entry.get("response") or {}).get("location", ""))
    path = text.partition("/_history/")[0].rstrip("/")
    last = path.rfind("/")
    return path[path.rfind("/", 0, last) + 1:] if last >= 0 else text


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
