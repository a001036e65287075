"""The service's one ASGI application, assembled from its parts.

Starlette rather than FastAPI: the reading document already has its JSON Schema
(phg/reading.schema.json), which the OpenAPI document embeds as it is; FastAPI would want the same
rules again as pydantic models. Starlette is the small, well-kept ASGI toolkit FastAPI itself is built
on, and uvicorn is the server both use.

Each part contributes its routes from its own module (`routes(ctx)`) and its paths to the OpenAPI
document (its `OPENAPI` constant, merged by `api.openapi_document`): `api` (ingest, queue, items,
OpenAPI), `readings` (devices, patients' readings), `page` (the status page), `ops` (/healthz, /readyz,
/metrics); `security` wraps the whole app (API keys, client certificates, cross-site checks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType

from starlette.applications import Starlette

from phg.config import Config
from phg.delivery.status import DestinationStatus
from phg.intake import Intake
from phg.outbox import Queue
from phg.service.smart import SmartSessions
from phg.viewstore import ViewStore


@dataclass
class ServiceContext:
    """What every part of the service reads: the settings, the queue, the intake sources and apps write to,
    and each destination's live status (kept by its delivery worker); `wake` tells delivery that
    readings were queued (an idle worker sends them at once, not at its next poll)."""

    config: Config
    outbox: Queue  # either engine ([queue] engine)
    intake: Intake
    statuses: Mapping[str, DestinationStatus] = field(default_factory=dict)
    wake: Callable[[], object] = lambda: None
    sessions: SmartSessions = field(default_factory=SmartSessions)  # the view's SMART launches (phg.service.smart)
    view: ViewStore | None = None  # the reading store the SMART view reads ([view] or [smart])
    ingest: bool = True  # False in a worker-only `phg run --role worker`: the operations endpoints alone


def parts() -> tuple[ModuleType, ...]:
    """The modules that contribute routes, in the order they are matched."""
    from phg.service import api, ops, page, readings, smart, view

    return api, readings, smart, view, ops, page


def create_app(ctx: ServiceContext) -> Starlette:
    """The whole service; a worker-only process (`ctx.ingest` False) serves /healthz, /readyz and /metrics
    alone: it takes no readings, and the queue and readings are the intakes' to show."""
    from phg.service import ops, security

    served = parts() if ctx.ingest else (ops,)
    app = Starlette(routes=[route for part in served for route in part.routes(ctx)])
    app.state.ctx = ctx
    return security.protect(app, ctx)
