"""The ingest API for apps and the queue's state: POST /v1/readings, GET /v1/queue, GET /v1/items/{id},
POST /v1/items/{id}/retry, and the OpenAPI 3.1 document of every route of the service at /openapi.json.

Ingest takes what `phg send` takes (one reading document, an array of them, or JSON Lines), parsed by
the same `phg.model.parse_each`, so a refused document gets the CLI's field-level text. The answer is
202 only once the readings are durable (the Intake's one fsynced transaction), with one result per
document in request order; valid documents are stored even when others of the request are refused
(202 with a status per document rather than WebDAV's 207, whose body RFC 4918 13 defines as XML). A
request whose every document is refused stores nothing and is 400 with the same results. With [[routes]]
a document whose reading no route matches is refused the same way, its error naming the patient
identifier (phg.intake, "Routing").
docs/service.md states the rest: limits, content types, errors (RFC 9457 problem details).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from importlib.metadata import version
from itertools import islice
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from phg.errors import ReadingError, StorageError
from phg.intake import Stored
from phg.model import Reading, parse_each
from phg.outbox import DELIVERED, QUEUED, STATES, Item
from phg.service.app import ServiceContext, parts
from phg.viewstore import ViewStoreError

log = logging.getLogger(__name__)
SOURCE = "request"  # how a refusal names the body: "request[3]: metrics[0].time: ..."
MEDIA_TYPES = ("application/json", "application/x-ndjson", "application/jsonl")
RETRY_AFTER = 30  # seconds a client waits before sending again when the queue cannot be written
MAX_ITEM_ID = 2**63 - 1  # SQLite's INTEGER PRIMARY KEY range


class Refusal(Exception):
    """A request refused as a whole: its status and why (an RFC 9457 problem detail)."""

    def __init__(self, status: int, title: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"type": "about:blank", "title": self.title, "status": self.status, "detail": self.detail},
                            self.status, headers=self.headers, media_type="application/problem+json")


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    return [
        Route("/v1/readings", _refusals(ingest), methods=["POST"]),
        Route("/v1/queue", queue, methods=["GET"]),
        Route("/v1/items/{id:int}", _refusals(item), methods=["GET"]),
        Route("/v1/items/{id:int}/retry", _refusals(retry), methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]


def _refusals(handler: Any) -> Any:
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except Refusal as refusal:
            return refusal.response()
    return guarded


def _ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


# ------------------------------------------------------------------------------------------ ingest


async def ingest(request: Request) -> Response:
    ctx = _ctx(request)
    limits = ctx.config.api
    assert limits is not None  # the service runs only with [api]
    _require_json(request)
    body = await _body(request, limits.max_body)
    parsed = await asyncio.to_thread(_parse, body, limits.max_documents)
    parsed = [p if isinstance(p, ReadingError) else ctx.intake.refusal(p, SOURCE) or p for p in parsed]
    readings = [p for p in parsed if isinstance(p, Reading)]
    if not readings:
        return JSONResponse({"results": [_refused(p) for p in parsed if isinstance(p, ReadingError)], "queued": 0,
                             "duplicates": 0,
                             "refused": len(parsed)}, 400)
    try:
        stored = await asyncio.to_thread(ctx.intake.store, readings)
        if stored.new:
            ctx.wake()
        results = await asyncio.to_thread(_results, ctx, parsed, stored)
    except ViewStoreError as exc:  # kept there before anything is queued (phg.intake): nothing of it was stored
        log.warning("POST /v1/readings refused (503): %s", exc)  # where and why for the operators, not the apps
        raise Refusal(503, "View store not writable", "the gateway cannot store readings now (its view store, "
                      "[view], cannot be written: its database does not answer, or its disk is full or read-only); "
                      "nothing of this request was stored: send it again later",
                      {"Retry-After": str(RETRY_AFTER)}) from None
    except StorageError:
        atomic = ctx.config.queue.engine == "sqlite" and not ctx.config.routes  # one transaction: all or nothing
        raise Refusal(503, "Queue not writable", "the gateway cannot store readings now (its queue is full, "
                      "read-only or unreachable); " + ("nothing of this request was stored" if atomic else
                      "not all of this request was stored (what was is recognised when sent again)") +
                      ": send it again later", {"Retry-After": str(RETRY_AFTER)}) from None
    return JSONResponse({"results": results, "queued": stored.new, "duplicates": stored.known,
                         "refused": len(parsed) - len(readings)}, 202)


def _require_json(request: Request) -> None:
    """Only JSON media types: a browser may send text/plain or a form to loopback from any site without
    asking (Fetch standard, CORS-safelisted request headers); JSON types need a preflight it refuses."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise Refusal(415, "Unsupported media type",
                      f"send Content-Type {', '.join(MEDIA_TYPES)}, not {media[:60] or 'none'!r}")


async def _body(request: Request, limit: int) -> bytes:
    """The body, read until `limit` bytes and no further (413 past it, Content-Length or not)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> Refusal:
    return Refusal(413, "Content too large", f"the body is larger than {limit} bytes ([api] max_body): "
                   "send the readings in several requests")


def _parse(body: bytes, max_documents: int) -> list[Reading | ReadingError]:
    parsed = list(islice(parse_each(body, SOURCE), max_documents + 1))
    if len(parsed) > max_documents:
        raise Refusal(413, "Too many documents", f"more than {max_documents} reading documents in one request "
                      "([api] max_documents): send them in several requests")
    if not parsed:
        raise Refusal(400, "No readings", "the body holds no reading document (an empty array or no lines)")
    return parsed


def _results(ctx: ServiceContext, parsed: Sequence[Reading | ReadingError], stored: Stored) -> list[dict[str, Any]]:
    """One result per document, in request order. A document is "queued" when this request queued it,
    else (stored before, or a repeat within the request) "already delivered" when every destination
    has it, "already queued" otherwise; its items say each destination's state."""
    results, seen = [], set()
    for parsed_one in parsed:
        if isinstance(parsed_one, ReadingError):
            results.append(_refused(parsed_one))
            continue
        key = parsed_one.key
        ids = stored.ids[key]
        if key in stored.fresh and key not in seen:
            items = [{"id": id_, "destination": d, "state": QUEUED} for d, id_ in ids.items()]
            status = "queued"
        else:
            found = [ctx.outbox.get(id_) for id_ in ids.values()]
            items = [{"id": i.id, "destination": i.destination, "state": i.state} for i in found if i is not None]
            status = "already delivered" if all(i["state"] == DELIVERED for i in items) else "already queued"
        seen.add(key)
        results.append({"status": status, "items": items})
    return results


def _refused(error: ReadingError) -> dict[str, Any]:
    return {"status": "refused", "error": str(error)}


# ------------------------------------------------------------------------------------------ queue, items


async def queue(request: Request) -> Response:
    ctx = _ctx(request)
    counts = await asyncio.to_thread(lambda: {name: ctx.outbox.counts(name) for name in ctx.config.destination_names})
    return JSONResponse({"destinations": counts,
                         "total": {state: sum(c[state] for c in counts.values()) for state in STATES}})


async def item(request: Request) -> Response:
    found = await _item(request)
    return JSONResponse(item_json(found))


async def retry(request: Request) -> Response:
    ctx = _ctx(request)
    found = await _item(request)
    again = await asyncio.to_thread(ctx.outbox.retry, found.id)  # the id it waits under now (JetStream: a new one)
    if again is None:
        raise Refusal(409, "Not retryable", f"item {found.id} is {found.state}: only a dead or queued item is "
                      "queued again")
    queued = await asyncio.to_thread(ctx.outbox.get, again)
    if queued is None:  # delivered meanwhile, by a worker that was quick
        raise Refusal(404, "No such item", f"item {found.id} was queued again as {again}, which is gone already")
    return JSONResponse(item_json(queued))


async def _item(request: Request) -> Item:
    id_ = request.path_params["id"]
    found = await asyncio.to_thread(_ctx(request).outbox.get, id_) if id_ <= MAX_ITEM_ID else None
    if found is None:
        raise Refusal(404, "No such item", f"no queue item {id_}")
    return found


def item_json(found: Item) -> dict[str, Any]:
    """What an app may see of a queue item: never its payload (health data the app already has) nor its
    lease token."""
    return {"id": found.id, "destination": found.destination, "state": found.state, "attempts": found.attempts,
            "last_error": found.last_error, "result": found.result, "created": iso(found.created),
            "updated": iso(found.updated), "due": iso(found.next_attempt) if found.state == QUEUED else None}


def iso(seconds: float) -> str:
    """A wall-clock time as RFC 3339 (ISO 8601) in UTC, to the millisecond."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------ OpenAPI


async def openapi(request: Request) -> Response:
    return Response(openapi_json(), media_type="application/json")


@cache
def openapi_json() -> bytes:
    return json.dumps(openapi_document(), separators=(",", ":")).encode()


def openapi_document() -> dict[str, Any]:
    """This module's paths and components merged with those of every other part (its OPENAPI constant)."""
    from phg.service import security

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "phg, the Personal Health Gateway", "version": version("phg"),
                 "description": "Ingest readings from apps, see the queue, operate the gateway (docs/service.md)."},
        "paths": dict(PATHS),
        "components": {"schemas": {"Reading": reading_schema(), **SCHEMAS}},
    }
    for part in (*parts(), security):
        extra = getattr(part, "OPENAPI", {})  # a part that adds nothing to the document has none
        document["paths"].update(extra.get("paths", {}))
        for kind, entries in extra.get("components", {}).items():
            document["components"].setdefault(kind, {}).update(entries)
        if "security" in extra:  # the requirement every operation has (OAS 3.1 4.8.1), from security
            document["security"] = extra["security"]
    return document


def reading_schema() -> dict[str, Any]:
    """phg/reading.schema.json as an OpenAPI 3.1 Schema Object (JSON Schema 2020-12, OAS 3.1 4.8.24):
    its `$id` dropped and its `#/$defs/...` references pointed into the OpenAPI document, where the
    schema sits at #/components/schemas/Reading (a reference resolves against the document it is in)."""
    schema = json.loads(resources.files("phg").joinpath("reading.schema.json").read_text(encoding="utf-8"))
    schema.pop("$id", None)
    schema.pop("$schema", None)
    return _rebase(schema)


def _rebase(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (v.replace("#/", "#/components/schemas/Reading/", 1) if k == "$ref" and isinstance(v, str)
                    else _rebase(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rebase(v) for v in node]
    return node


def _problem(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": DESCRIPTIONS[s], "content": {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}} for s in statuses}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _lines() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "application/json", {"schema": {"oneOf": [
        {"$ref": "#/components/schemas/Reading"},
        {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Reading"}}]}}
    for media in MEDIA_TYPES[1:]:
        yield media, {"schema": {"type": "string", "description": "JSON Lines: one reading document per line"}}


DESCRIPTIONS = {
    400: "Nothing stored: the body holds no reading document",
    404: "No such item",
    409: "The item is neither dead nor queued",
    413: "Nothing stored: the body is larger than [api] max_body or holds more than [api] max_documents documents",
    415: "Nothing stored: not a JSON media type",
    503: "Nothing stored: the queue or the view store ([view]) cannot be written now (detail names which); send "
         "again after Retry-After seconds",
}
ITEM_ID = {"name": "id", "in": "path", "required": True,
           "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ITEM_ID}}
PATHS: dict[str, Any] = {
    "/v1/readings": {"post": {
        "summary": "Queue readings for their destinations (what `phg send` takes)",
        "operationId": "postReadings",
        "requestBody": {"required": True, "content": dict(_lines())},
        "responses": {
            "202": _json("#/components/schemas/IngestAnswer",
                         "Stored durably: one result per document, refused ones included"),
            "400": {"description": "Nothing stored: every document was refused (results say why), or none was given",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IngestAnswer"}},
                                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
            **_problem(413, 415),
            "503": {**_problem(503)["503"], "headers": {"Retry-After": {
                "description": "Seconds to wait (RFC 9110 10.2.3)", "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]+$"}}}},
        }}},
    "/v1/queue": {"get": {
        "summary": "Items per destination and state", "operationId": "getQueue",
        "responses": {"200": _json("#/components/schemas/Queue", "The counts")}}},
    "/v1/items/{id}": {"get": {
        "summary": "One queue item (never its payload or lease token)", "operationId": "getItem",
        "parameters": [ITEM_ID],
        "responses": {"200": _json("#/components/schemas/Item", "The item"), **_problem(404)}}},
    "/v1/items/{id}/retry": {"post": {
        "summary": "Queue a dead item again, due now, its attempts reset (on JetStream under a new id: the "
                   "answer's id)", "operationId": "retryItem",
        "parameters": [ITEM_ID],
        "responses": {"200": _json("#/components/schemas/Item", "Queued again"), **_problem(404, 409)}}},
    "/openapi.json": {"get": {
        "summary": "This document", "operationId": "getOpenApi",
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {
            "type": "object"}}}}}}},
}
_TIME = {"type": "string", "format": "date-time"}
_COUNTS = {"type": "object", "required": list(STATES), "additionalProperties": False,
           "properties": {s: {"type": "integer", "minimum": 0} for s in STATES}}
_ITEM_REF = {"type": "object", "required": ["id", "destination", "state"], "additionalProperties": False,
             "properties": {"id": {"type": "integer"}, "destination": {"type": "string"},
                            "state": {"enum": list(STATES)}}}
SCHEMAS: dict[str, Any] = {
    "Problem": {"type": "object", "description": "RFC 9457 problem details",
                "required": ["type", "title", "status", "detail"],
                "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                               "status": {"type": "integer"}, "detail": {"type": "string"}}},
    "IngestAnswer": {
        "type": "object", "required": ["results", "queued", "duplicates", "refused"], "additionalProperties": False,
        "properties": {
            "results": {"type": "array", "description": "One per document, in request order", "items": {"oneOf": [
                {"type": "object", "required": ["status", "items"], "additionalProperties": False, "properties": {
                    "status": {"enum": ["queued", "already queued", "already delivered"]},
                    "items": {"type": "array", "items": _ITEM_REF}}},
                {"type": "object", "required": ["status", "error"], "additionalProperties": False, "properties": {
                    "status": {"const": "refused"},
                    "error": {"type": "string", "description": "the field and why, as `phg send` says it"}}}]}},
            "queued": {"type": "integer", "minimum": 0, "description": "readings this request queued"},
            "duplicates": {"type": "integer", "minimum": 0,
                           "description": "readings already stored (or repeated within the request)"},
            "refused": {"type": "integer", "minimum": 0}}},
    "Queue": {"type": "object", "required": ["destinations", "total"], "additionalProperties": False,
              "properties": {"destinations": {"type": "object", "additionalProperties": _COUNTS}, "total": _COUNTS}},
    "Item": {"type": "object", "additionalProperties": False,
             "required": ["id", "destination", "state", "attempts", "last_error", "result", "created", "updated", "due"],
             "properties": {"id": {"type": "integer"}, "destination": {"type": "string"},
                            "state": {"enum": list(STATES)}, "attempts": {"type": "integer", "minimum": 0},
                            "last_error": {"type": ["string", "null"]}, "result": {"type": ["string", "null"]},
                            "created": _TIME, "updated": _TIME, "due": {"oneOf": [_TIME, {"type": "null"}]}}},
}
