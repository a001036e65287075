"""Wiring for a running gateway: settings -> destinations (phg.delivery.registry) -> one delivery
worker each, and the sources beside them; in one process or split by role (intake, worker).

Kept apart from the CLI so that the demo, the tests and `phg run` assemble the same pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from phg.config import Config, ViewSettings
from phg.delivery import DeliveryWorker, Summary
from phg.delivery.registry import open_destinations
from phg.delivery.status import DestinationStatus, status_line
from phg.delivery.worker import QUEUE_CALLS
from phg.errors import AuthError, ConfigError, PhgError, StorageError
from phg.outbox import Queue
from phg.process import POOL

TYPE_CHECKING = False
if TYPE_CHECKING:
    from phg.viewstore import PendingView

log = logging.getLogger(__name__)
T = TypeVar("T")


async def deliver(config: Config, outbox: Queue, *, until_idle: bool, stop: asyncio.Event | None = None,
                  statuses: Mapping[str, DestinationStatus] | None = None,
                  workers: list[DeliveryWorker] | None = None) -> Summary:
    """Deliver what the outbox holds, one worker per destination, side by side. A destination whose
    credentials or URL are refused (AuthError, ConfigError) stops alone, its queue intact, while the
    others go on: until_idle, the first such error is raised once the others are idle; else the worker
    shows it stopped and tries it again after a growing wait (phg.delivery.worker, STOPPED_RETRY). Each worker
    keeps `statuses[name]` current (the service reads them); `workers` receives the running workers (the
    service wakes them when it queues readings).

    The workers' queue calls and their destinations' thread work (phg.process.in_thread: parsing and rendering
    large batches, C3-PRO's journal and envelopes, FHIR's encrypt_to, the SMART assertion) run in a thread pool of
    their own (QUEUE_CALLS threads per worker), not in the event loop's default executor, which the Intake's calls
    fill while the view store hangs (phg.delivery.worker): delivery never waits behind intake. Isolating delivery
    rather than the Intake: delivery's calls are the few (one worker per destination, a handful of calls each), the
    Intake's callers are many (the API, each source).

    A worker that fails otherwise (until_idle: a StorageError, a bug; without it, only a report as it leaves, at
    `stop` or after an AuthError) does not cut the others short: they go on, each reporting what it sent (cut short,
    a batch sent and not yet reported would be sent again), and its error is raised once every worker has ended,
    before any AuthError or ConfigError. The pool is shut down only then, without waiting (the event loop must not
    block): at most calls whose caller gave up on them (a lease renewal's timeout, a worker cancelled with
    deliver()) are still running, and their threads end with them."""
    stopped: list[PhgError] = []
    failed: list[Exception] = []

    async def run(worker: DeliveryWorker) -> None:
        try:
            await worker.run(stop, until_idle=until_idle)
        except (AuthError, ConfigError) as exc:
            log.error("%s: delivery stopped, its queue is intact: %s", worker.destination.name, exc)
            stopped.append(exc)
        except Exception as exc:
            failed.append(exc)

    pool = ThreadPoolExecutor(QUEUE_CALLS * max(1, len(config.destinations)), thread_name_prefix="phg-delivery")
    own = POOL.set(pool)  # opening the destinations, and the workers' tasks, which inherit it with every task they start
    try:
        async with open_destinations(config) as destinations:
            running = [DeliveryWorker(outbox, d, batch_size=config.batch_size, max_backoff=config.max_retry_delay,
                                      lease_seconds=config.lease_seconds, status=(statuses or {}).get(d.name))
                       for d in destinations]
            if workers is not None:
                workers += running
            # deliver() cancelled: gather cancels the workers and, returning their cancellations, ends once they have
            # ended (raising it, it would end at the first, and the pool would be shut under the others)
            await asyncio.gather(*(run(w) for w in running), return_exceptions=True)
    finally:
        POOL.reset(own)
        pool.shutdown(wait=False, cancel_futures=True)
    if failed:
        raise failed[0]
    if stopped:
        raise stopped[0]
    total = Summary()
    for s in (w.summary for w in running):
        total.delivered += s.delivered
        total.dead += s.dead
        total.retried += s.retried
    return total


async def run_gateway(config: Config, outbox: Queue, stop: asyncio.Event, *, ble_backend: Any = None,
                      role: str | None = None) -> Summary:
    """`phg run`: delivery to every destination, every configured source (phg.sources.supervisor) and,
    with [api], the service (phg.service.server), side by side until `stop` is set; then the server
    finishes the requests in progress, the sources stop (what they handed over is durable) and delivery
    stops. Destinations that cannot be opened (a broken config) stop start-up; one refused while running (its
    credentials, its URL) is shown stopped and tried again after a growing wait, the rest going on
    (deliver). The server failing (its address in use) sets `stop`. `ble_backend`: bleak backend
    classes (None: the platform's; the emulated radio's in tests and demos).

    `role` (default [run] role): "all" runs all of it; "intake" the sources and the service, no delivery
    (what they store waits in the queue for workers); "worker" delivery only, and with [api] the
    operations endpoints (/healthz, /readyz, /metrics), no ingest. Intakes and workers share the queue
    (one SQLite file, whose leases keep two workers off one item, or JetStream), any number of each,
    started in any order.

    With [view], an intake opens the view store off the event loop: a SQLite file before anything starts
    (its StorageError, a phg.viewstore.ViewStoreError, stops `phg run`: a person must act), a PostgreSQL
    database in the background (open_view_when_reachable), so that the gateway starts and serves while its
    database is down, refusing readings with the view store named until it opens."""
    from phg.intake import Intake
    from phg.service import systemd
    from phg.sources.supervisor import configured_sources, supervise
    from phg.viewstore import PendingView

    role = role or config.role
    takes, delivers = role in ("all", "intake"), role in ("all", "worker")
    view = PendingView(config.view) if takes and config.view is not None else None
    opening = None
    if view is not None:  # in a thread; PostgreSQL not answering yet: again in the background (a task below)
        opening = asyncio.create_task(open_view_when_reachable(config.view, view, stop))
        if config.view.url is None:
            await opening  # the SQLite file: open before anything starts, or stop with its error
    intake = Intake(outbox, config.destination_names, view=view, routes=config.routes)
    statuses = {d.name: DestinationStatus(d.name, d.type) for d in config.destinations} if delivers else {}
    workers: list[DeliveryWorker] = []
    sources = configured_sources(config, ble_backend=ble_backend) if takes else []
    if role == "intake" and not sources and config.api is None:
        log.warning("role intake without sources or [api]: nothing takes readings in this process")
    if role == "worker" and (config.ble_enabled or config.ieee11073_listen or config.usb_enabled):
        log.warning("role worker: the configured sources ([ble], [ieee11073], [usb]) run only where the role is "
                    "intake or all")
    started = (lambda: len(workers) == len(config.destinations)) if delivers else (lambda: True)
    tasks = [asyncio.create_task(supervise(sources, intake, stop)),
             asyncio.create_task(systemd.lifecycle(stop, started, status=lambda: status_line(statuses.values())))]
    if opening is not None and not opening.done():
        tasks.append(opening)
        opening.add_done_callback(lambda opened: _stop_if_failed(opened, stop))  # not a StorageError: stop
    if config.api is not None:
        from phg.service.app import ServiceContext
        from phg.service.server import serve

        ctx = ServiceContext(config, outbox, intake, statuses, wake=lambda: [w.wake() for w in workers], view=view,
                             ingest=takes)
        tasks.append(asyncio.create_task(serve(ctx, stop)))
        tasks[-1].add_done_callback(lambda served: _stop_if_failed(served, stop))
    log.info("phg run: role %s", role)
    try:
        if delivers:
            summary = await deliver(config, outbox, until_idle=False, stop=stop, statuses=statuses, workers=workers)
        else:
            summary = Summary()
            await stop.wait()
        for task in tasks:
            await task
        return summary
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if view is not None:
            view.close()


async def open_queue_when_reachable(config: Config, stop: asyncio.Event, *, max_delay: float = 30.0) -> Queue | None:
    """The configured queue, open, for `phg run`. JetStream that cannot be reached yet (a process started
    before its cluster, a partition) is tried again, each failure logged, with a delay doubling up to
    `max_delay`, until it answers or `stop` is set (then None): intakes and workers may start in any order,
    before the cluster too. The SQLite outbox fails at once: its StorageError (a read-only disk, a path
    that is not an outbox) needs a person."""
    from phg.outbox import open_queue

    return await open_when_reachable(lambda: open_queue(config), stop, retried=config.queue.engine == "jetstream",
                                     failed=lambda exc, delay: log.warning(
                                         "the queue cannot be reached: %s; trying again in %.0f s", exc, delay),
                                     max_delay=max_delay)


async def open_view_when_reachable(settings: ViewSettings, view: PendingView, stop: asyncio.Event, *,
                                   max_delay: float = 30.0) -> None:
    """Open the view store into `view` (phg.viewstore.PendingView), in a thread (PostgreSQL's connect
    blocks up to its timeout), for `phg run`. PostgreSQL that does not answer yet is tried again as the
    JetStream queue is (open_when_reachable), each failure logged at ERROR with the URL (its password
    masked) and the reason: `phg run` starts and serves meanwhile, refusing readings with the view store
    named, so an intake may start before its database, as it may before its cluster. The SQLite file fails
    at once, as the SQLite outbox does (a read-only disk, another program's file: a person must act), and
    so does a PostgreSQL database that answered and refused phg (ViewStoreRefused: not phg's view store or
    another version, an unreadable password_file, a failed login): `phg run` stops, exit 74."""
    from phg.viewstore import ViewStoreRefused, open_view

    def failed(exc: StorageError, delay: float) -> None:
        view.reason = str(exc)
        log.error("%s; readings are refused until it opens: trying again in %.0f s", exc, delay)

    def retried(exc: StorageError) -> bool:  # a database that does not answer, not one that refused phg
        return settings.url is not None and not isinstance(exc, ViewStoreRefused)

    opened = await open_when_reachable(lambda: open_view(settings), stop, retried=retried,
                                       failed=failed, max_delay=max_delay)
    if opened is not None:
        view.opened(opened)
        log.info("view store %s open: readings are taken", view.path)


async def open_when_reachable(open_: Callable[[], T], stop: asyncio.Event, *,
                              retried: bool | Callable[[StorageError], bool],
                              failed: Callable[[StorageError, float], object], max_delay: float) -> T | None:
    """`open_()` in a thread until it returns (its result) or `stop` is set (None). A StorageError is raised
    at once unless `retried` (or `retried(error)`); else `failed(error, delay)` is told and it is tried again after `delay`
    seconds, doubling from 1 up to `max_delay` (a server restarting is retried soon, one down for long
    every `max_delay`)."""
    delay = 1.0
    while True:
        try:
            return await asyncio.to_thread(open_)
        except StorageError as exc:
            if not (retried(exc) if callable(retried) else retried):
                raise
            failed(exc, delay)
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return None
        except TimeoutError:
            delay = min(delay * 2, max_delay)


def _stop_if_failed(task: asyncio.Task, stop: asyncio.Event) -> None:
    """A part that failed (the server could not listen) stops the gateway; awaiting it raises its error."""
    if not task.cancelled() and task.exception() is not None:
        stop.set()
