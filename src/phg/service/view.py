"""The view in the EHR (issue 14): a launched patient's home readings, for the clinician who launched
phg from the patient's chart (phg.service.smart ends the SMART App Launch on `/view/{session}`).

- `GET /view/{session}`: charts of blood pressure, glucose, weight, SpO2, heart rate and temperature
  over a period chosen by links (`?period=7d`, 30d (default), 90d, 365d: server-side, no JavaScript),
  and the readings with their units, device, flags (questionable, test data and the other IEEE 11073-20601
  MeasurementStatus bits a reading carries) and their delivery to each destination (from the outbox by
  reading key: which readings were also written to the EHR). `GET /view/{session}/readings`: the same
  readings as JSON. `?patient=system|value` narrows to one of the session's identifiers.
- Only the launched patient: a patient who is not among the identifiers the launch matched is 403, with a
  valid session too; an unknown or expired session is 404.
- Inside an EHR iframe without cookies: the session is the unguessable id in the path, not a cookie a
  browser may block as third-party. `Content-Security-Policy: frame-ancestors` lists `[smart]
  frame_ancestors` (CSP Level 3, 7.7.3: 'none' when empty); `Referrer-Policy: no-referrer` keeps the id out
  of any Referer (W3C Referrer Policy 3.1); `Cache-Control: no-store`, as the page holds health data.
- CSRF-safe: read-only, GET only (RFC 9110 9.2.1 safe methods); no script runs (script-src 'none').
- Every access is logged at INFO with the launching user (fhirUser) and the EHR's patient id, never values.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from phg import mdc
from phg.outbox import DELIVERED
from phg.service.charts import Series, line_chart
from phg.service.page import CHARTED, _unit, _values
from phg.service.readings import Seen, parse_patient, stamp
from phg.viewstore import Kept, ViewStoreError

if TYPE_CHECKING:
    from phg.service.app import ServiceContext
    from phg.service.smart import ViewSession

log = logging.getLogger(__name__)

PERIODS = {"7d": 7, "30d": 30, "90d": 90, "365d": 365}  # days
DEFAULT_PERIOD = "30d"
# What the view charts: the status page's measurements and heart rate and temperature.
VIEWED: dict[int, tuple[str, str]] = {
    **CHARTED,
    149546: ("Heart rate", "pulse rate"),
    149530: ("Heart rate", "pulse rate (oximeter)"),
    147842: ("Heart rate", "heart rate"),
    150364: ("Temperature", "body temperature"),
}
FLAGGED = frozenset(mdc.MEASUREMENT_STATUS) - {"validated-data"}  # a status bit the clinician should see

_templates = jinja2.Environment(loader=jinja2.PackageLoader("phg.service", "templates"), autoescape=True)


class Refused(Exception):
    """A request the view answers with `status` and `detail` (no values in it)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def frame_ancestors(ctx: ServiceContext) -> str:
    origins = ctx.config.smart.frame_ancestors if ctx.config.smart is not None else ()
    return " ".join(origins) or "'none'"


def headers(ctx: ServiceContext) -> dict[str, str]:
    """CSP (no script, no outside resource; framed only by the configured EHR origins), no referrer, no cache."""
    return {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                                       f"form-action 'none'; frame-ancestors {frame_ancestors(ctx)}",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def patients(session: ViewSession, asked: str | None) -> tuple[tuple[str, str], ...]:
    """The identifiers to show: the session's, or the one asked for when it is among them (else 403)."""
    if asked is None:
        return session.patient
    try:
        one = parse_patient(asked)
    except ValueError as exc:
        raise Refused(400, str(exc)) from None
    if one not in session.patient:
        raise Refused(403, "this view shows only the patient it was launched for")
    return (one,)


def period(asked: str | None) -> str:
    chosen = asked or DEFAULT_PERIOD
    if chosen not in PERIODS:
        raise Refused(400, f"period={chosen[:20]!r} is not one of {', '.join(PERIODS)}")
    return chosen


def charts(kept: Sequence[Kept]) -> list[str]:
    """One SVG chart per measurement and unit of VIEWED, in VIEWED's order."""
    lines: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for one in kept:
        for code, value, unit, at in _values(Seen(one.stored, one.reading)):
            if code in VIEWED:
                chart, line = VIEWED[code]
                lines[(chart, _unit(unit))][line].append((at, float(value)))
    order = list(dict.fromkeys(chart for chart, _ in VIEWED.values()))
    return [line_chart(f"{chart} ({unit})", [Series(*line) for line in named.items()], unit)
            for (chart, unit), named in sorted(lines.items(), key=lambda item: (order.index(item[0][0]), item[0][1]))]


def rows(kept: Sequence[Kept], delivery: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """One row per value: time, what, value and unit, device, flags and where it was delivered."""
    out = []
    for one in kept:
        device = one.reading.device
        states = delivery.get(one.key, {})
        for metric in one.reading.metrics:
            values = [(metric.code, metric.value, metric.unit)] if metric.value is not None else []
            values += [(c.code, c.value, c.unit) for c in metric.components]
            for code, value, unit in values:
                known = mdc.MEASUREMENTS.get(code)
                out.append({"time": stamp(metric.time.timestamp()), "code": code,
                            "measurement": known.display if known else f"MDC {code}",
                            "value": str(Decimal(value)), "unit": _unit(unit),
                            "device": " ".join(filter(None, (device.manufacturer, device.model))) or "device",
                            "device_id": device.identity, "flags": [s for s in metric.status if s in FLAGGED],
                            "delivered": sorted(d for d, state in states.items() if state == DELIVERED),
                            "delivery": states})
    return out


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    def gather(request: Request) -> tuple[ViewSession, str, list[Kept]]:
        session = ctx.sessions.session(request.path_params["session"])
        if session is None:
            raise Refused(404, "no such view session (it expired or never was): launch the app again from the EHR")
        chosen = period(request.query_params.get("period"))
        shown = patients(session, request.query_params.get("patient"))
        log.info("view: %s read patient %s (%s)", session.fhir_user, session.ehr_patient or "(no EHR id)",
                 request.url.path.removeprefix(f"/view/{request.path_params['session']}") or "page")
        if ctx.view is None:
            raise Refused(503, "no reading store is configured ([view] or [smart])")
        since = datetime.now(UTC) - timedelta(days=PERIODS[chosen])
        try:
            return session, chosen, ctx.view.readings(shown, since=since)
        except ViewStoreError as exc:  # its database is away: the operators' log names it, the clinician gets a 503
            log.error("view: %s", exc)
            raise Refused(503, "the gateway's reading store cannot be read now: try again in a minute") from None

    def answer(request: Request, render) -> Response:
        try:
            response = render(*gather(request))
        except Refused as exc:
            response = JSONResponse({"error": exc.detail}, exc.status)
        response.headers.update(headers(ctx))
        return response

    def page(request: Request) -> Response:
        def render(session: ViewSession, chosen: str, kept: list[Kept]) -> HTMLResponse:
            delivery = ctx.outbox.states([k.key for k in kept])
            return HTMLResponse(_templates.get_template("view.html").render(
                charts=charts(kept), rows=rows(kept, delivery)[::-1], periods=PERIODS, chosen=chosen,
                patients=session.patient, base=request.url.path))
        return answer(request, render)

    def data(request: Request) -> Response:
        def render(session: ViewSession, chosen: str, kept: list[Kept]) -> JSONResponse:
            delivery = ctx.outbox.states([k.key for k in kept])
            return JSONResponse({"period": chosen, "patient": [{"system": s, "value": v} for s, v in session.patient],
                                 "readings": rows(kept, delivery)})
        return answer(request, render)

    # Plain endpoints: Starlette runs them in its thread pool, off the event loop.
    return [Route("/view/{session}", page, methods=["GET"]), Route("/view/{session}/readings", data, methods=["GET"])]


OPENAPI: dict[str, Any] = {"paths": {
    "/view/{session}": {"get": {
        "summary": "The SMART view of the launched patient's readings (HTML, inside the EHR)",
        "operationId": "getView", "tags": ["view"], "security": [],
        "parameters": [{"name": "session", "in": "path", "required": True, "schema": {"type": "string"}},
                       {"name": "period", "in": "query", "schema": {"enum": list(PERIODS)}},
                       {"name": "patient", "in": "query", "schema": {"type": "string"}}],
        "responses": {"200": {"description": "The view", "content": {"text/html": {"schema": {"type": "string"}}}},
                      "400": {"description": "A malformed period or patient"},
                      "403": {"description": "A patient the session was not launched for"},
                      "404": {"description": "No such session (expired)"},
                      "503": {"description": "No reading store configured, or it cannot be read now"}}}},
    "/view/{session}/readings": {"get": {
        "summary": "The same readings as JSON", "operationId": "getViewReadings", "tags": ["view"], "security": [],
        "parameters": [{"name": "session", "in": "path", "required": True, "schema": {"type": "string"}},
                       {"name": "period", "in": "query", "schema": {"enum": list(PERIODS)}},
                       {"name": "patient", "in": "query", "schema": {"type": "string"}}],
        "responses": {"200": {"description": "The readings", "content": {"application/json": {"schema": {
                          "type": "object"}}}},
                      "400": {"description": "A malformed period or patient"},
                      "403": {"description": "A patient the session was not launched for"},
                      "404": {"description": "No such session (expired)"},
                      "503": {"description": "No reading store configured, or it cannot be read now"}}}},
}}
