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
from typing import TYPE_CHECKING

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.routing import BaseRoute, Route

from phg import mdc
from phg.delivery.status import BACKING_OFF, STOPPED, DestinationStatus
from phg.outbox import DEAD, INFLIGHT, QUEUED, Item, Queue
from phg.service.charts import Series, line_chart
from phg.service.readings import Seen, devices, readings, stamp
from phg.viewstore import ViewStoreError

if TYPE_CHECKING:
    from phg.service.app import ServiceContext

HOUR, STEP = 3600.0, 300.0  # the queue chart: the last hour in five-minute intervals
SQLITE_MAX_INTEGER = 2**63 - 1  # no item id is larger (https://www.sqlite.org/datatype3.html)
LISTED = 100  # dead letters listed (oldest first); the counts say how many there are
WAITING_LISTED = 20  # queued and inflight items listed (oldest first): the chart and counts say the rest

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


def _unit(ucum: str | None) -> str:
    """A UCUM unit as people write it (mm[Hg] -> mmHg)."""
    return mdc.UNIT_DISPLAY.get(ucum or "", ucum or "")


def patient_charts(seen: Sequence[Seen]) -> dict[str, list[str]]:
    """Per patient (`system|value`), one SVG chart per measurement and unit of CHARTED."""
    lines: dict[tuple[str, str, str], dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for one in seen:
        patient = f"{one.reading.patient.system}|{one.reading.patient.value}"
        for code, value, unit, at in _values(one):
            if code in CHARTED:
                chart, line = CHARTED[code]
                lines[(patient, chart, _unit(unit))][line].append((at, float(value)))
    charts: dict[str, list[str]] = defaultdict(list)
    for (patient, chart, unit), named in sorted(lines.items()):
        charts[patient].append(line_chart(f"{chart} of {patient}", [Series(*line) for line in named.items()], unit))
    return dict(charts)


def last_values(seen: Seen) -> str:
    """A reading's values in one line, e.g. 'Systolic blood pressure 120 mmHg, Pulse rate 70 {beat}/min'."""
    def name(code: int) -> str:
        known = mdc.MEASUREMENTS.get(code)
        return known.display if known else f"MDC {code}"
    return ", ".join(f"{name(code)} {value} {_unit(unit)}".rstrip() for code, value, unit, _ in _values(seen))


def queue_charts(outbox: Queue, names: Sequence[str], now: float) -> dict[str, str]:
    """Per destination, a chart of its waiting items and its deliveries per interval over the last hour."""
    ends = [now - HOUR + STEP * (i + 1) for i in range(int(HOUR // STEP))]
    waiting: dict[str, list[tuple[float, float]]] = defaultdict(list)
    delivered: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for destination, end, sent, queued in outbox.activity(ends, STEP):
        delivered[destination].append((end, sent))
        waiting[destination].append((end, queued))
    nothing = [(end, 0.0) for end in ends]  # a destination without an item in the hour
    return {name: line_chart(f"Queue of {name}, last hour",
                             [Series("waiting", waiting.get(name, nothing)),
                              Series(f"delivered per {STEP / 60:.0f} min", delivered.get(name, nothing))], "items")
            for name in names}


def destination(name: str, status: DestinationStatus | None, outbox: Queue) -> Destination:
    """A destination's row; `status` is None when no delivery worker runs for it in this process."""
    if status is None:
        return Destination(name, "", "unknown", state_text(None), outbox.counts(name), None)
    last = stamp(status.last_delivered) if status.last_delivered is not None else None
    return Destination(name, status.type, status.state, state_text(status), outbox.counts(name), last)


def render(ctx: ServiceContext, now: float | None = None) -> str:
    """The whole page, from the queue, the destinations' statuses and the kept readings."""
    now = time.time() if now is None else now
    outbox = ctx.outbox
    names = list(dict.fromkeys([*ctx.config.destination_names, *ctx.statuses]))
    waiting: list[Item] = outbox.items(state=QUEUED, limit=WAITING_LISTED) + outbox.items(state=INFLIGHT,
                                                                                      limit=WAITING_LISTED)
    total = outbox.counts()
    try:  # [view]: the view store's readings (phg.service.readings), else the outbox's kept payloads
        seen, kept, unavailable = devices(outbox, ctx.view), readings(outbox, view=ctx.view), None
    except ViewStoreError as exc:
        seen, kept, unavailable = [], [], str(exc)
    return _templates.get_template("status.html").render(
        now=stamp(now), destinations=[destination(name, ctx.statuses.get(name), outbox) for name in names],
        queue_charts=queue_charts(outbox, names, now),
        waiting=sorted(waiting, key=lambda item: item.id)[:WAITING_LISTED], waiting_total=total[QUEUED] + total[INFLIGHT],
        dead=outbox.items(state=DEAD, limit=LISTED), devices=[(one, last_values(one)) for one in seen],
        patients=patient_charts(kept), stamp=stamp, keep_delivered=ctx.config.keep_delivered,
        view=ctx.config.view if ctx.view is not None else None, view_unavailable=unavailable)


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


def routes(ctx: ServiceContext) -> list[BaseRoute]:
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
