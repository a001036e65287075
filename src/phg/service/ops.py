"""Operations: /healthz, /readyz and /metrics.

- /healthz: the process is alive and its event loop answers. Always 200; for liveness probes and the
  container's HEALTHCHECK.
- /readyz: the gateway can take readings and deliver them: the queue can be written (a heartbeat marker
  is committed, the cheapest real write: a read-only or full disk fails it), the view store, where one
  is configured, answers (one query: while `phg run` is still opening it, or its database is away, the
  Intake refuses readings) and no destination is stopped by a configuration or authorization problem (a
  person must fix those). 200 or 503, with the problems.
- /metrics: Prometheus text exposition (prometheus_client). The counters and the latency histogram of
  phg.metrics, and, read at scrape time: the items per destination and state (from the outbox: the
  queue is the truth, not a counter that a restart resets), each destination's state and its last
  successful delivery (from its DestinationStatus).

The bodies hold no secret: a stopped destination's reason names settings and endpoints, never a token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from phg import metrics
from phg.delivery.status import BACKING_OFF, DELIVERING, STOPPED
from phg.errors import StorageError
from phg.viewstore import ViewStoreError

OPENAPI = {"paths": {
    "/healthz": {"get": {"summary": "The process is alive.", "tags": ["operations"],
                         "responses": {"200": {"description": "alive"}}}},
    "/readyz": {"get": {"summary": "The queue can be written, the view store ([view]) answers and no destination is "
                                   "stopped.", "tags": ["operations"],
                        "responses": {"200": {"description": "ready"},
                                      "503": {"description": "not ready; `problems` says why"}}}},
    "/metrics": {"get": {"summary": "Prometheus metrics (text exposition format).", "tags": ["operations"],
                         "responses": {"200": {"description": "metrics",
                                               "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
}}


class GatewayCollector:
    """phg.metrics, and what is read from the gateway's state at each scrape."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        yield from metrics.REGISTRY.collect()
        items = GaugeMetricFamily("phg_queue_items", "Items in the outbox, per destination and state.",
                                  labels=["destination", "state"])
        for name in self.ctx.config.destination_names:
            for state, count in self.ctx.outbox.counts(name).items():
                items.add_metric([name, state], count)
        yield items
        state = GaugeMetricFamily("phg_destination_state", "1 for the state each destination is in.",
                                  labels=["destination", "state"])
        last = GaugeMetricFamily("phg_last_delivery_timestamp_seconds",
                                 "Unix time of each destination's last accepted reading.", labels=["destination"])
        for status in self.ctx.statuses.values():
            for each in (DELIVERING, BACKING_OFF, STOPPED):
                state.add_metric([status.name, each], float(status.state == each))
            if status.last_delivered is not None:
                last.add_metric([status.name], status.last_delivered)
        yield state
        yield last


def problems(ctx) -> list[str]:
    """Why the gateway is not ready (empty: ready). Writes a heartbeat marker: blocking, run in a thread."""
    found = [f"destination {s.name} stopped: {s.reason}" for s in ctx.statuses.values() if s.state == STOPPED]
    try:
        ctx.intake.heartbeat("service")  # the queue, then the view store (phg.intake)
    except ViewStoreError as exc:  # its message names the view store, where and why
        found.append(str(exc))
    except StorageError as exc:
        found.append(f"the queue cannot be written: {exc}")
    return found


def routes(ctx) -> list[BaseRoute]:
    registry = CollectorRegistry()
    registry.register(GatewayCollector(ctx))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        found = await asyncio.to_thread(problems, ctx)
        return JSONResponse({"ready": not found, "problems": found}, status_code=503 if found else 200)

    async def scrape(request: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, registry)  # the queue counts are SQLite reads
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", scrape)]
