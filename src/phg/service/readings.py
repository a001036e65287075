"""What the gateway has seen: `GET /v1/devices` and `GET /v1/patients/{system}|{value}/readings?since=`
(and the status page's devices and charts, phg.service.page).

With [view] (or [smart]) configured, both read the view store (phg.viewstore): every reading the Intake
took, kept for `[view] retention` (365 days by default); with `[view] url` one PostgreSQL database that
every intake of a hub shares, so each intake lists what all of them took. While the view store cannot be
read they answer 503 naming it (the status page says so in place of its devices and charts). Without
[view] they read the payloads the outbox keeps: every reading until it is delivered, and a delivered one
for `keep_delivered` (7 days by default) after which its payload is blanked (phg.outbox.sqlite,
"Retention"); JetStream keeps none (phg.outbox.jetstream), so there these lists are empty. The reading
document carries no battery level, so no battery is reported.

These answers hold measurement values and patient identifiers: they are for the gateway's operators
(docs/service.md, "Security"), and nothing here logs them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from phg.errors import ReadingError
from phg.model import Reading, from_canonical_json, patient_fits
from phg.outbox import Queue
from phg.viewstore import Kept, ViewStore, ViewStoreError

if TYPE_CHECKING:
    from phg.service.app import ServiceContext

# FHIR token search syntax, `[system]|[value]`, split at the first `|` that is not escaped as `\|`
# (FHIR R4 Search, "Escaping Search Parameters": `\|`, `\,`, `\$` and `\\` stand for the character).
log = logging.getLogger(__name__)

_TOKEN = re.compile(r"((?:[^|\\]|\\.)+)\|(.+)", re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def parse_patient(text: str) -> tuple[str, str]:
    """(system, value) of a patient written `system|value`; ValueError saying what is wrong."""
    match = _TOKEN.fullmatch(text)
    if match is None:
        raise ValueError(f"patient {text!r} is not 'system|value' (an identifier system, '|', the identifier; "
                         "a '|' inside either is written '\\|')")
    system, value = (_ESCAPE.sub(r"\1", part) for part in match.groups())
    for name, part in (("system", system), ("value", value)):
        if not patient_fits(name, part):  # no answer names a patient no reading can have: the API's schema holds
            raise ValueError(f"patient {name} {part!r:.80} cannot be a reading's (reading.schema.json: patient.{name} "
                             "has no white space at its ends, the system none at all, and no control characters)")
    return system, value


def parse_since(text: str | None) -> datetime | None:
    """The `since` query parameter: an RFC 3339 date-time with its UTC offset, or absent."""
    if text is None:
        return None
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        since = None
    if since is None or since.tzinfo is None:
        raise ValueError(f"since={text!r} is not a date-time with a UTC offset (e.g. 2026-11-28T09:00:00Z)")
    return since


def stamp(t: float) -> str:
    """A stored (epoch) time as RFC 3339 in UTC."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Seen:
    """One kept reading and when the gateway stored it (epoch seconds)."""

    stored: float
    reading: Reading


def _seen(rows: list[tuple[float, str]]) -> list[Seen]:
    """The rows' readings. One that cannot be read (a damaged payload) is left out and logged by where
    it is wrong, not by its content, so that it hides no other reading."""
    seen = []
    for stored, payload in rows:
        try:
            seen.append(Seen(stored, from_canonical_json(payload, "outbox")))
        except ReadingError as exc:
            log.warning("a reading stored %s cannot be read (at %s): left out of the devices and readings",
                        stamp(stored), exc.where)
    return seen


def _kept(kept: list[Kept]) -> list[Seen]:
    return [Seen(one.stored, one.reading) for one in kept]


def devices(outbox: Queue, view: ViewStore | None = None) -> list[Seen]:
    """Each device seen, with its newest reading, most recently heard from first: from `view` when given
    (ViewStoreError when it cannot be read), else from the payloads the outbox keeps (module docstring)."""
    if view is not None:
        return _kept(view.latest_per_device())
    return _seen(outbox.latest_per_device())


def readings(outbox: Queue, patient: tuple[str, str] | None = None, since: datetime | None = None,
             limit: int = 1000, view: ViewStore | None = None) -> list[Seen]:
    """Kept readings, newest stored first (of one patient when given), with a metric at or after `since`:
    from `view` when given (ViewStoreError when it cannot be read), else from the outbox's payloads."""
    if view is not None:
        return _kept(view.recent(patient, since, limit))
    return [seen for seen in _seen(outbox.kept_payloads(patient, limit))
            if since is None or any(metric.time >= since for metric in seen.reading.metrics)]


def unavailable(exc: ViewStoreError) -> JSONResponse:
    """The 503 (an RFC 9457 problem detail) of a list the view store cannot give now; Retry-After as the
    ingest API's 503 (phg.service.api.RETRY_AFTER)."""
    from phg.service.api import RETRY_AFTER  # here: phg.service.api imports the service's app at its import

    return JSONResponse({"type": "about:blank", "title": "View store unavailable", "status": 503,
                         "detail": f"the readings are kept in the view store, which cannot be read now: {exc}"},
                        503, headers={"Retry-After": str(RETRY_AFTER)}, media_type="application/problem+json")


def _device_entry(seen: Seen) -> dict[str, Any]:
    document = seen.reading.to_document()
    return {"identity": seen.reading.device.identity, "device": document["device"],
            "last_contact": stamp(seen.stored), "last_reading": document}


_TIME = {"type": "string", "format": "date-time"}
_JSON = "application/json"
_UNAVAILABLE = {"503": {"description": "The view store ([view]) cannot be read now; try again after Retry-After",
                        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}}
OPENAPI: dict[str, Any] = {
    "paths": {
        "/v1/devices": {"get": {
            "summary": "Devices seen, each with its newest reading",
            "description": "From the view store with [view] configured (readings kept for [view] retention; "
                           "on a hub, every intake's); else from the payloads the queue keeps ([outbox] "
                           "keep_delivered; none on JetStream).",
            "operationId": "getDevices", "tags": ["readings"],
            "responses": {"200": {"description": "Most recently heard from first", "content": {
                _JSON: {"schema": {"$ref": "#/components/schemas/Devices"}}}},
                **_UNAVAILABLE}}},
        "/v1/patients/{patient}/readings": {"get": {
            "summary": "A patient's readings, newest stored first (at most 1,000)",
            "description": "From the view store with [view] configured (readings kept for [view] retention; "
                           "on a hub, every intake's); else from the payloads the queue keeps ([outbox] "
                           "keep_delivered; none on JetStream).", "operationId": "getPatientReadings",
            "tags": ["readings"],
            "parameters": [
                {"name": "patient", "in": "path", "required": True,  # no control characters: a reading has none
                 "schema": {"type": "string", "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"},
                 "description": "The patient identifier as FHIR token search writes it: system|value (a '|' or '\\' "
                                "inside either written '\\|' or '\\\\')"},
                {"name": "since", "in": "query", "required": False, "schema": _TIME,
                 "description": "Only readings with a measurement at or after this time (RFC 3339, with offset)"}],
            "responses": {
                "200": {"description": "The readings", "content": {
                    _JSON: {"schema": {"$ref": "#/components/schemas/PatientReadings"}}}},
                "400": {"description": "The patient or since is malformed (detail says how)", "content": {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
                **_UNAVAILABLE}}},
    },
    "components": {"schemas": {
        "Devices": {"type": "object", "required": ["devices"], "additionalProperties": False, "properties": {
            "devices": {"type": "array", "items": {
                "type": "object", "required": ["identity", "device", "last_contact", "last_reading"],
                "additionalProperties": False, "properties": {
                    "identity": {"type": "string", "description": "System id (EUI-64), else Bluetooth address, "
                                                                  "hex upper case without separators"},
                    "device": {"$ref": "#/components/schemas/Reading/properties/device"},
                    "last_contact": {**_TIME, "description": "When its newest reading was stored"},
                    "last_reading": {"$ref": "#/components/schemas/Reading"}}}}}},
        "PatientReadings": {
            "type": "object", "required": ["patient", "readings"], "additionalProperties": False, "properties": {
                "patient": {"$ref": "#/components/schemas/Reading/properties/patient"},
                "readings": {"type": "array", "items": {
                    "type": "object", "required": ["stored", "reading"], "additionalProperties": False,
                    "properties": {"stored": _TIME, "reading": {"$ref": "#/components/schemas/Reading"}}}}}},
    }},
}


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    def list_devices(request: Request) -> JSONResponse:
        try:
            return JSONResponse({"devices": [_device_entry(seen) for seen in devices(ctx.outbox, ctx.view)]})
        except ViewStoreError as exc:
            return unavailable(exc)

    def patient_readings(request: Request) -> JSONResponse:
        try:
            patient = parse_patient(request.path_params["patient"])
            since = parse_since(request.query_params.get("since"))
        except ValueError as exc:  # an RFC 9457 problem detail, as the rest of the API answers
            return JSONResponse({"type": "about:blank", "title": "Bad request", "status": 400, "detail": str(exc)},
                                400, media_type="application/problem+json")
        try:
            found = readings(ctx.outbox, patient, since, view=ctx.view)
        except ViewStoreError as exc:
            return unavailable(exc)
        return JSONResponse({"patient": {"system": patient[0], "value": patient[1]},
                             "readings": [{"stored": stamp(seen.stored), "reading": seen.reading.to_document()}
                                          for seen in found]})

    # Plain (not async) endpoints: Starlette runs them in its thread pool, so the outbox's reads never
    # block the event loop.
    return [Route("/v1/devices", list_devices, methods=["GET"]),
            Route("/v1/patients/{patient:path}/readings", patient_readings, methods=["GET"])]
