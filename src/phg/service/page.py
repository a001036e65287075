"""The status page at `/`, for the gateway's operators: each destination's state, queue depth and
throughput over the last hour, the queued items, the dead letters with the server's reason and a retry
button, the devices seen with their last reading, and per patient a chart of recent values.

Server-rendered HTML (Jinja2, autoescaped) with inline SVG charts (phg.service.charts): no JavaScript,
no front-end package. The retry button is a plain POST form to `/items/{id}/retry`, so the service's
same-origin check on mutating requests (phg.service.security) covers it. The page shows measurement values
and patient identifiers: it is for the people who run the gateway (docs/service.md, "Security").
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.routing import BaseRoute, Route

from phg import mdc
from phg.delivery.status import BACKING_OFF, STOPPED, DestinationStatus
from phg.outbox import DEAD, INFLIGHT, QUEUED, Item
from phg.service.charts import Series, line_chart
from phg.service.readings import Seen, devices, readings, stamp

HOUR, STEP = 3600.0, 300.0  # the queue chart: the last hour in five-minute intervals
SQLITE_MAX_INTEGER = 2**63 - 1  # no item id is larger (https://www.sqlite.org/datatype3.html)
LISTED = 100  # queued items and dead letters listed (oldest first); the counts say how many there are

# What the patients' charts show: MDC code -> (chart, line). Blood pressure comes as the components of
# MDC_PRESS_BLD_NONINV or as separate systolic and diastolic metrics: either way the same two lines.
CHARTED: dict[int, tuple[str, str]] = {
    150021: ("Blood pressure", "systolic"),
    150022: ("Blood pressure", "diastolic"),
    160184: ("Glucose", "capillary whole blood"),
    160188: ("Glucose", "capillary plasma"),
    188736: ("Weight", "body weight"),
    150456: ("SpO2", "oxygen saturation"),
}

_templates = jinja2.Environment(loader=jinja2.PackageLoader("phg.service", "templates"), autoescape=True)


@dataclass(frozen=True)
class Destination:
    """One destination's row: its state in words and its item counts."""

    name: str
    type: str
    kind: str  # delivering, backing-off, stopped or unknown (the status page colours it)
    state: str
    counts: dict[str, int]
    last_delivered: str | None


def state_text(status: DestinationStatus | None) -> str:
    """What an operator reads: delivering, backing off until T, or stopped with what to fix."""
    if status is None:
        return "not started (no delivery worker runs in this process)"
    if status.state == BACKING_OFF:
        return f"backing off until {stamp(status.until)}" if status.until is not None else "backing off"
    if status.state == STOPPED:
        return f"stopped: {status.reason or 'no reason given'}"
    return status.state


def _values(seen: Seen) -> Iterable[tuple[int, Decimal, str | None, float]]:
    """(code, value, unit, time) of each value of a reading, a compound metric's components included."""
    for metric in seen.reading.metrics:
        at = metric.time.timestamp()
        if metric.value is not None:
            yield metric.code, metric.value, metric.unit, at
        for component in metric.components:
            yield component.code, component.value, component.unit, at


def patient_charts(seen: Sequence[Seen]) -> dict[str, list[str]]:
    """Per patient (`system|value`), one SVG chart per measurement and unit of CHARTED."""
    lines: dict[str, dict[tuple[str, str], dict[str, list[tuple[float, float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for one in seen:
        patient = f"{one.reading.patient.system}|{one.reading.patient.value}"
        for code, value, unit, at in _values(one):
            if code in CHARTED:
                chart, line = CHARTED[code]
                lines[patient][(chart, mdc.UNIT_DISPLAY.get(unit or "", unit or ""))][line].append((at, float(value)))
    return {patient: [line_chart(f"{chart} of {patient}", [Series(label, points) for label, points in named.items()],
                                 unit)
                      for (chart, unit), named in sorted(charts.items())]
            for patient, charts in sorted(lines.items())}


def last_values(seen: Seen) -> str:
    """A reading's values in one line, e.g. 'Systolic blood pressure 120 mmHg, Pulse rate 70 {beat}/min'."""
    def name(code: int) -> str:
        known = mdc.MEASUREMENTS.get(code)
        return known.display if known else f"MDC {code}"
    return ", ".join(f"{name(code)} {value} {mdc.UNIT_DISPLAY.get(unit or '', unit or '')}".rstrip()
                     for code, value, unit, _ in _values(seen))


def queue_charts(outbox, names: Sequence[str], now: float) -> dict[str, str]:
    """Per destination, a chart of its waiting items and its deliveries per interval over the last hour."""
    ends = [now - HOUR + STEP * (i + 1) for i in range(int(HOUR // STEP))]
    waiting: dict[str, list[tuple[float, float]]] = defaultdict(list)
    delivered: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for destination, end, sent, queued in outbox.activity(ends, STEP):
        delivered[destination].append((end, sent))
        waiting[destination].append((end, queued))
    return {name: line_chart(f"Queue of {name}, last hour",
                             [Series("waiting", waiting[name] or [(t, 0) for t in ends]),
                              Series(f"delivered per {STEP / 60:.0f} min", delivered[name] or [(t, 0) for t in ends])],
                             "items")
            for name in names}


def render(ctx, now: float | None = None) -> str:
    """The whole page, from the queue, the destinations' statuses and the kept readings."""
    now = time.time() if now is None else now
    outbox = ctx.outbox
    names = list(dict.fromkeys([*ctx.config.destination_names, *ctx.statuses]))
    destinations = [Destination(name, status.type if status else "", status.state if status else "unknown",
                                state_text(status), outbox.counts(name),
                                stamp(status.last_delivered) if status and status.last_delivered else None)
                    for name in names for status in [ctx.statuses.get(name)]]
    waiting: list[Item] = outbox.items(state=QUEUED, limit=LISTED) + outbox.items(state=INFLIGHT, limit=LISTED)
    seen = readings(outbox)
    return _templates.get_template("status.html").render(
        now=stamp(now), destinations=destinations, queue_charts=queue_charts(outbox, names, now),
        waiting=sorted(waiting, key=lambda item: item.id), dead=outbox.items(state=DEAD, limit=LISTED),
        devices=[(one, last_values(one)) for one in devices(outbox)], patients=patient_charts(seen),
        stamp=stamp, keep_delivered=ctx.config.keep_delivered)


OPENAPI = {"paths": {
    "/": {"get": {"summary": "The status page (HTML, for the gateway's operators)", "operationId": "getStatusPage",
                  "tags": ["page"],
                  "responses": {"200": {"description": "The page", "content": {"text/html": {"schema": {
                      "type": "string"}}}}}}},
    "/items/{id}/retry": {"post": {
        "summary": "The page's retry button: queue a dead letter again, then see the page (303)",
        "operationId": "retryFromPage", "tags": ["page"],
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}],
        "responses": {"303": {"description": "Queued again: the page, at its dead letters", "headers": {
                          "Location": {"required": True, "schema": {"type": "string"}}}},
                      "409": {"description": "Not a dead letter (nor queued): nothing done", "content": {
                          "text/html": {"schema": {"type": "string"}}}}}}},
}}


def routes(ctx) -> list[BaseRoute]:
    def page(request: Request) -> HTMLResponse:
        return HTMLResponse(render(ctx))

    def retry(request: Request) -> HTMLResponse | RedirectResponse:
        item = request.path_params["id"]
        if item > SQLITE_MAX_INTEGER or not ctx.outbox.retry(item):
            return HTMLResponse(f"<p>Item {item} is not a dead letter (it may have been retried already). "
                                '<a href="/">Back to the status page</a></p>', status_code=409)
        return RedirectResponse("/#dead", status_code=303)  # See Other: the browser GETs the page again

    # Plain (not async) endpoints: Starlette runs them in its thread pool, off the event loop.
    return [Route("/", page, methods=["GET"]), Route("/items/{id:int}/retry", retry, methods=["POST"])]
