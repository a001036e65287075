"""Wiring for a running gateway: settings -> destinations (phg.delivery.registry) -> one delivery
worker each, and the sources beside them.

Kept apart from the CLI so that the demo, the tests and `phg run` assemble the same pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from phg.config import Config
from phg.delivery import DeliveryWorker, Summary
from phg.delivery.registry import open_destinations
from phg.errors import AuthError, ConfigError, PhgError
from phg.outbox import Outbox

log = logging.getLogger(__name__)


async def deliver(config: Config, outbox: Outbox, *, until_idle: bool, stop: asyncio.Event | None = None) -> Summary:
    """Deliver what the outbox holds, one worker per destination, side by side. A destination whose
    credentials or URL are refused (AuthError, ConfigError) stops alone, its queue intact, while the
    others go on; the first such error is raised once the others are idle (until_idle) or when no
    destination is left running."""
    stopped: list[PhgError] = []

    async def run(worker: DeliveryWorker) -> Summary:
        try:
            return await worker.run(stop, until_idle=until_idle)
        except (AuthError, ConfigError) as exc:
            log.error("%s: delivery stopped, its queue is intact: %s", worker.destination.name, exc)
            stopped.append(exc)
            return worker.summary

    async with open_destinations(config) as destinations:
        workers = [DeliveryWorker(outbox, d, batch_size=config.batch_size, max_backoff=config.max_retry_delay,
                                  lease_seconds=config.lease_seconds) for d in destinations]
        summaries = await asyncio.gather(*(run(w) for w in workers))
    if stopped:
        raise stopped[0]
    total = Summary()
    for s in summaries:
        total.delivered += s.delivered
        total.dead += s.dead
        total.retried += s.retried
    return total


async def run_gateway(config: Config, outbox: Outbox, stop: asyncio.Event, *, ble_backend: Any = None) -> Summary:
    """`phg run`: delivery to every destination and every configured source (phg.sources.supervisor),
    side by side until `stop` is set; then the sources stop (what they handed over is durable) and
    delivery stops. Delivery failing for good (deliver raises) stops the sources too. `ble_backend`:
    bleak backend classes (None: the platform's; the emulated radio's in tests and demos)."""
    from phg.intake import Intake
    from phg.sources.supervisor import configured_sources, supervise

    sources = configured_sources(config, ble_backend=ble_backend)
    supervisor = asyncio.create_task(supervise(sources, Intake(outbox, config.destination_names), stop))
    try:
        summary = await deliver(config, outbox, until_idle=False, stop=stop)
        await supervisor
        return summary
    finally:
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)

