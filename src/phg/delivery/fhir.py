"""The FHIR destination: a batch of readings becomes one transaction Bundle POSTed to the base URL.

FHIR R4 http.html#transaction: the response is a transaction-response Bundle whose entries answer
the request entries in order, each with response.status ("201", "201 Created", "200 OK" for a
conditional create that matched) and response.location (relative "Observation/1" or absolute
".../Observation/1/_history/1": servers differ, both are accepted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from phg.auth.envelope import Envelope, seal
from phg.delivery.outcome import Delivered, Outcome, Rejected
from phg.errors import AuthError, ConfigError, MappingError, PermanentDeliveryError, TransientDeliveryError
from phg.fhir import build_transaction, to_json
from phg.model import Gateway, Reading
from phg.transport import TRANSIENT_STATUSES, transient_error

FHIR_JSON = "application/fhir+json"


class FhirDestination:
    """Sends transaction Bundles to one FHIR server through one pooled AsyncClient."""

    name = "fhir"

    def __init__(self, client: httpx.AsyncClient, base_url: str, gateway: Gateway, ig_version: str = "2.0.0",
                 envelope: Envelope | None = None):
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.gateway = gateway
        self.ig_version = ig_version
        self.envelope = envelope  # [auth] encrypt_to: Bundles go as a JWE (phg.auth.envelope)

    def render(self, readings: Sequence[Reading]) -> tuple[bytes, list[list[int]], list[int]]:
        tx = build_transaction(readings, self.gateway, self.ig_version)
        return to_json(tx.bundle), tx.reading_entries, tx.shared_entries

    async def send(self, readings: Sequence[Reading]) -> list[Outcome]:
        try:
            # Building and serialising a bundle is CPU work: keep it off the event loop.
            body, reading_entries, shared_entries = await asyncio.to_thread(self.render, readings)
        except MappingError as exc:
            raise PermanentDeliveryError(f"cannot map to FHIR: {exc}") from exc
        content_type = FHIR_JSON
        if self.envelope is not None:  # RSA + AES work: off the event loop too
            body, content_type = await asyncio.to_thread(seal, body, self.envelope)
        try:
            response = await self.client.post(
                self.base_url, content=body,
                headers={"Content-Type": content_type, "Accept": FHIR_JSON, "Prefer": "return=minimal"},
            )
        except httpx.HTTPError as exc:  # connection, timeout, protocol and decoding trouble alike
            unreachable = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            raise TransientDeliveryError(f"{self.base_url}: {exc.__class__.__name__}: {exc}",
                                         reached=not unreachable) from exc
        return self._outcomes(response, reading_entries, shared_entries)

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
    except ValueError:
        return None


def _ok(entry: dict) -> bool:
    return str((entry.get("response") or {}).get("status", "")).strip()[:1] == "2"


def location(entry: dict) -> str:
    """'Type/id' from a relative or absolute location, with any _history suffix dropped."""
    text = str((entry.get("response") or {}).get("location", ""))
    parts = text.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else text


def outcome_text(outcome: Any) -> str:
    """The diagnostics of an OperationOutcome, one line."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    texts = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code", "")
        where = ", ".join(issue.get("expression") or issue.get("location") or [])
        texts.append(f"{text} (at {where})" if where else str(text))
    return "; ".join(texts)


def entry_problem(entry: dict) -> str:
    response = entry.get("response") or {}
    return f"{response.get('status', 'no status')}: {outcome_text(response.get('outcome')) or 'no reason given'}"


def problem(response: httpx.Response) -> str:
    return outcome_text(_json(response)) or response.text[:300] or response.reason_phrase
