"""The delivery worker: outbox -> destination, with backoff, batch splitting and dead letters.

Rules (the delivery paragraph of docs/architecture.md):
- Take up to batch_size due items under a lease, so a crash leaves them to be retried, never lost.
  Every lease has a token and every outcome is reported under it (a lease that expired and was
  taken by another leaser makes the report stale: ignored). Every lease the worker holds (the batch
  on the wire, the next one leased ahead, the batch held through an outage) is renewed three times
  per lease_seconds, so a send that outlasts its lease is never sent again by this worker's
  look-ahead or by another worker on the same outbox. A lease that cannot be renewed in time (the
  queue stalls) or that the queue no longer holds is lost: its batch is sent no further (a send in
  progress is cancelled) and only what the receiver already acknowledged is reported under it (applied
  where the lease still holds); the worker that leases it next sends the rest.
  Stored times further ahead than the longest
  delay the worker sets (`horizon`) come from a clock that ran ahead and are due; in-process
  deadlines (Retry-After, the circuit) are time.monotonic().
- The destination cannot be reached (TransientDeliveryError with reached=False: connect failure at
  the server or its token endpoint): a circuit opens for the whole destination. It waits (backoff
  over consecutive failures, jittered, capped at max_backoff), holding the failed batch whole and
  leased, then sends that batch again as the one probe; nothing else is leased or written meanwhile.
  The first answer closes it and every item goes on at once: none carries a backoff of the outage.
- Transient failures of a reachable server (timeouts, 408, 429, 5xx) put the batch back with an
  exponential backoff with jitter, or the server's Retry-After when it gave one (the whole
  destination waits it out).
- A batch refused as a whole (4xx), or whose send raises an exception that is none of phg's typed
  errors (a bug, lxml, MemoryError), is split in halves until the reading at fault is alone; it goes
  dead with the server's reason (or the exception's type and message) while the others are
  delivered: no exception type leaves a batch in flight. A batch that keeps failing transiently
  while the server is reachable is tried in halves, so one reading that makes the server fail cannot
  hold back the others forever.
- An AuthError, or a ConfigError from the destination (e.g. the FHIR base answers 404: wrong URL),
  stops the worker and releases the batch untouched: credentials and URLs are fixed by a person. An
  `until_idle` run raises it; a long-running worker shows the destination as stopped with the reason,
  logs it, and tries again after a wait that grows from STOPPED_FIRST to `stopped_retry` (STOPPED_RETRY),
  jittered, so that a fix made at the server (the JWKS registered, the client enabled again, a deploy
  that answered 404 over) is picked up without a restart, at the cost of one refused request each time;
  queued readings wait meanwhile.
- An outbox that cannot be written (StorageError: disk full, I/O error, ...) pauses a long-running
  worker: it logs, waits (backoff) and tries again, so the daemon recovers when space returns. What
  it had leased keeps its lease; if the report of a delivery is what failed, the batch is sent again
  when the lease expires, which conditional create makes harmless. `until_idle` runs raise it instead.
- The worker keeps its destination's live `status` (phg.delivery.status: delivering, backing off until
  when and why, stopped and what to fix, the last delivery) and counts into phg.metrics (delivered,
  rejected, retried, the latency from enqueue to the destination's acceptance).
Queue calls block (an fsync on SQLite, a round trip on JetStream), so they run in a thread, off the event loop: in
delivery's pool (phg.process.in_thread: POOL, which phg.daemon.deliver makes for its workers alone, QUEUE_CALLS
threads each; a worker made alone, as in a test, uses the default executor), not in the event loop's default executor.
That one the Intake's calls share (the API's POST /v1/readings, the sources), and a view store whose database hangs
holds each of them for seconds (phg.viewstore.LOCK_WAIT, the PostgreSQL engine's waits): with six such calls the
default executor (min(32, CPUs + 4) threads) is full, and readings already queued would wait behind the view store for
their lease and their report. The destinations' own thread work goes to the same pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from phg import metrics
from phg.delivery.cpu import batch_work, parse_inline
from phg.delivery.outcome import Deferred, Delivered, Destination, Interrupted, Outcome, Rejected
from phg.delivery.status import BACKING_OFF, DELIVERING, STOPPED, DestinationStatus
from phg.errors import (
    AuthError,
    ConfigError,
    PermanentDeliveryError,
    ReadingError,
    StorageError,
    TransientDeliveryError,
)
from phg.model import Reading, from_canonical_json
from phg.outbox import Item, Queue
from phg.process import in_thread
from phg.terminal import printable

log = logging.getLogger(__name__)

SPLIT_AFTER = 3  # transient failures of the same readings before their batch is tried in halves
# Seconds beyond the longest delay the worker sets (max_backoff, lease_seconds) after which a stored due
# time or lease deadline is taken for a clock that ran ahead, and is due now.
CLOCK_MARGIN = 60.0
# Seconds a long-running worker waits before it tries a destination stopped by an AuthError or ConfigError again:
# the first time, then doubling (jittered, as `backoff`) up to the last.
STOPPED_FIRST = 30.0
STOPPED_RETRY = 900.0
# Thread calls one worker has in flight at the most: the look-ahead's (its lease, then parsing it), the main task's
# (sending a batch, phg.process.in_thread, then its report or the Retry-After it shares) and a lease renewal;
# a pool gets this many threads per worker (phg.daemon.deliver).
QUEUE_CALLS = 3

Batch = list[tuple[Item, Reading]]


@dataclass
class Summary:
    """Counts of what one run of the worker did (no values, no PHI)."""

    delivered: int = 0
    dead: int = 0
    retried: int = 0


def backoff(attempts: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with jitter: base * 2^(attempts-1), capped, scaled by 0.5..1.0 so that
    many gateways coming back after an outage do not retry in step."""
    return min(cap, base * 2 ** max(0, attempts - 1)) * random.uniform(0.5, 1.0)


def _parse(items: Sequence[Item]) -> tuple[Batch, list[tuple[Item, str]]]:
    """Stored payloads back to Readings (CPU work: phg.delivery.cpu says where it runs). A payload that no
    longer parses (written by another version, say) is dead-lettered alone."""
    readings, broken = [], []
    for item in items:
        try:
            readings.append((item, from_canonical_json(item.payload, f"outbox item {item.id}")))
        except ReadingError as exc:
            broken.append((item, f"stored reading is not valid: {exc}"))
    return readings, broken


class DeliveryWorker:
    def __init__(self, outbox: Queue, destination: Destination, *, batch_size: int = 50,
                 lease_seconds: float = 120.0, max_backoff: float = 300.0, idle_poll: float = 1.0,
                 status: DestinationStatus | None = None, stopped_retry: float = STOPPED_RETRY):
        self.outbox = outbox
        self.destination = destination
        self.status = status or DestinationStatus(destination.name, "")
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.max_backoff = max_backoff
        self.idle_poll = idle_poll
        self.stopped_retry = stopped_retry
        self.summary = Summary()
        # time.monotonic() before which nothing is sent: a Retry-After (503, 429) is about the server, so
        # the whole destination waits, not only the batch it refused (RFC 9110 section 10.2.3); so it does
        # while the circuit is open.
        self._resume_at = 0.0
        # The circuit: consecutive tries that could not reach the destination (open while > 0), the batch
        # held through the outage to be tried again as the probe, and the last such error.
        self._outages = 0
        self._probe: Batch = []
        self._outage_error = ""
        # The next batch, leased and parsed while the current one is on the wire (still one request in
        # flight): the server's time and ours overlap instead of adding up.
        self._next: asyncio.Task[Batch | None] | None = None
        # Tokens of the leases this worker holds (batch on the wire, leased ahead, held as the probe),
        # renewed by _keep_leases so that no other leaser takes them while they are ours.
        self._held: set[str] = set()
        # When each held lease was last renewed (time.monotonic() of the asking), the leases lost (_lose),
        # and the send in progress under each token, cancelled when its lease is lost.
        self._renewed: dict[str, float] = {}
        self._lost: set[str] = set()
        self._sending: dict[str, asyncio.Future[Sequence[Outcome]]] = {}
        self._keeper: asyncio.Task[None] | None = None
        # Set by wake() (something was queued): an idle wait ends at once instead of at the next poll.
        self._woken = asyncio.Event()

    @property
    def horizon(self) -> float:
        """How far ahead a stored due time or lease can lie before it counts as a clock error: the
        longest delay this worker ever sets, plus a margin."""
        return max(self.max_backoff, self.lease_seconds) + CLOCK_MARGIN

    async def run(self, stop: asyncio.Event | None = None, until_idle: bool = False) -> Summary:
        """Deliver batches until `stop` is set; with until_idle, return as soon as nothing is due or the
        destination must be waited for (Retry-After, unreachable): what waits is left queued for a later run."""
        stop = stop or asyncio.Event()
        try:
            return await self._run(stop, until_idle)
        except (AuthError, ConfigError) as exc:
            self._stopped(exc)
            raise
        finally:
            await self._drop_prefetch()
            await self._put_back_probe()

    async def _run(self, stop: asyncio.Event, until_idle: bool) -> Summary:
        storage_failures = stops = 0
        while not stop.is_set():
            try:
                sent = await self.run_once()
                stops = 0
                if sent:
                    storage_failures = 0
                    continue
                if until_idle:
                    break
                wait = await self._idle_wait()
                storage_failures = 0
            except StorageError as exc:
                if until_idle:
                    raise
                storage_failures += 1
                wait = backoff(storage_failures, cap=min(self.max_backoff, 30.0))
                log.error("%s: the outbox cannot be written, delivery paused for %.1f s: %s",
                          self.destination.name, wait, exc)
                self._set_state(BACKING_OFF, f"the outbox cannot be written: {exc}", wait)
            except (AuthError, ConfigError) as exc:
                if until_idle:
                    raise
                stops += 1
                wait = backoff(stops, base=min(STOPPED_FIRST, self.stopped_retry), cap=self.stopped_retry)
                self._stopped(exc, wait)
                log.error("%s: delivery stopped, its queue is intact; tried again in %.0f s (or restart phg with the "
                          "fix): %s", self.destination.name, wait, exc)
                with contextlib.suppress(TimeoutError):  # not cut short by wake(): a new reading fixes nothing
                    await asyncio.wait_for(stop.wait(), wait)
                self._set_state(DELIVERING)
                continue
            except Exception:  # a bug in the worker must not end `phg run`: what was leased comes due again
                if until_idle:
                    raise
                storage_failures += 1
                wait = backoff(storage_failures, cap=min(self.max_backoff, 30.0))
                log.exception("%s: unexpected error, delivery paused for %.1f s", self.destination.name, wait)
            await self._sleep(stop, wait)
        return self.summary

    def wake(self) -> None:
        """Readings were queued for this destination (by the API, say): end an idle wait now, so that an
        idle gateway delivers them without waiting for its next poll. A back-off (Retry-After, the circuit)
        is not cut short: the worker looks, finds it must still wait, and sleeps again. Call it in the
        event loop's thread (loop.call_soon_threadsafe from another)."""
        self._woken.set()

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        """Wait `seconds`, or less if `stop` is set or wake() is called."""
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._woken.wait())]
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()

    async def _idle_wait(self) -> float:
        """Seconds to sleep when nothing could be sent: until the circuit's probe, else until the next
        item is due (and any Retry-After has passed), polling at most idle_poll * 30 apart."""
        if self._probe:
            return max(0.05, self._resume_at - time.monotonic())
        due = await in_thread(self.outbox.next_due, self.destination.name, self.horizon)
        if due is None:
            return self.idle_poll
        return min(self.idle_poll * 30, max(0.05, due - time.time(), self._resume_at - time.monotonic()))

    async def run_once(self) -> bool:
        """Lease and deliver one batch (or send the batch held through an outage again, as the probe).
        Returns False when nothing was due or the destination must be waited for (Retry-After, an
        open circuit)."""
        self._woken.clear()  # what is queued from now on wakes the next idle wait (wake())
        if time.monotonic() < self._resume_at:
            await self._drop_prefetch()
            return False
        if self.status.state == BACKING_OFF:  # the wait is over
            self._set_state(DELIVERING)
        batch = await self._next_batch()
        if batch is None:
            return False
        if not self._outages:  # look ahead only while the destination answers: one probe at a time
            self._next = asyncio.create_task(self._take())
        try:
            await self._send(batch)
        except (AuthError, ConfigError):
            await self._drop_prefetch()
            await self._report(self.outbox.release, [item for item, _ in batch])  # what the stop left unfinished
            raise
        finally:
            if batch and not self._probe:
                self._unhold(batch[0][0].lease)
        return True

    async def _next_batch(self) -> Batch | None:
        """The probe held through an outage, else the batch leased ahead, else a new lease."""
        if self._probe:
            batch, self._probe = self._probe, []
            return batch
        if self._next is not None:
            task, self._next = self._next, None
            batch = await task
            if batch is not None:
                return batch
        return await self._take()  # nothing was due when the look-ahead ran; something may be now

    async def _take(self) -> Batch | None:
        """Lease and parse one batch (blocking work, in threads); None when nothing is due. A stored
        payload that no longer parses goes dead on its own."""
        asked = time.monotonic()  # the lease runs from about now: count from before asking
        items = await in_thread(self.outbox.lease, self.destination.name, self.batch_size, self.lease_seconds, None,
                                  self.horizon)
        if not items:
            return None
        self._hold(items[0].lease, asked)
        try:
            readings, broken = await batch_work(parse_inline(items), _parse, items)
            for item, reason in broken:
                await self._dead([item], reason)
        except BaseException:  # what was leased comes due when its lease, no longer renewed, expires
            self._unhold(items[0].lease)
            raise
        if not readings:
            self._unhold(items[0].lease)
        return readings

    def _hold(self, token: str | None, since: float) -> None:
        """Keep the lease `token`, taken (or last renewed) at time.monotonic() `since`, renewed."""
        assert token is not None
        self._held.add(token)
        self._renewed[token] = since
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_leases())

    def _unhold(self, token: str | None) -> None:
        self._held.discard(token)  # type: ignore[arg-type]
        self._renewed.pop(token, None)  # type: ignore[arg-type]
        self._lost.discard(token)  # type: ignore[arg-type]
        if not self._held and self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None

    async def _keep_leases(self) -> None:
        """Renew every lease held, three times per lease: a batch on the wire, leased ahead or held
        through an outage is never due for another leaser (another process on the same outbox, or
        this one), however long its send takes. A lease that could not be renewed in time (the queue
        stalled: a JetStream cluster without a leader, say) or that the queue says is no longer ours is
        lost: its batch is not sent, or no further (_lose)."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            for token in list(self._held):
                asked = time.monotonic()
                try:
                    held = await asyncio.wait_for(in_thread(self.outbox.renew, token, self.lease_seconds),
                                                  self.lease_seconds / 3)
                except (StorageError, TimeoutError) as exc:
                    log.warning("%s: a lease could not be renewed: %s", self.destination.name, exc or "timed out")
                    held = None
                if held:
                    self._renewed[token] = asked
                elif held == 0 or asked - self._renewed.get(token, asked) >= self.lease_seconds:
                    self._lose(token)

    def _lose(self, token: str) -> None:
        """The lease `token` ran out or was taken: another worker may be sending its readings now. What
        is still to be sent under it is not sent by this worker (a send in progress is cancelled: an HL7
        exchange stops between two messages and reports those acknowledged, Interrupted, so that at most
        the one on the wire may reach the receiver twice, unless another worker took the items meanwhile:
        then the report is stale and ignored)."""
        if token in self._lost or token not in self._held:
            return
        self._lost.add(token)
        sending = self._sending.get(token)
        if sending is not None and not sending.done():
            log.warning("%s: a lease ran out while its batch was being sent; the rest is left to the worker "
                        "that leases it now", self.destination.name)
            sending.cancel()

    async def _drop_prefetch(self) -> None:
        """Give back a batch leased ahead (when stopping or pausing), without counting an attempt."""
        task, self._next = self._next, None
        if task is None:
            return
        try:
            readings = await task
        except StorageError as exc:  # nothing was leased, or its lease simply expires
            log.debug("%s: batch leased ahead not taken back: %s", self.destination.name, exc)
            return
        if readings:
            self._unhold(readings[0][0].lease)
            await self._report(self.outbox.release, [item for item, _ in readings])

    async def _put_back_probe(self) -> None:
        """Leaving (stop, until_idle) with a batch held through an outage: it is due again at once,
        for the next run, with the error that kept it."""
        batch, self._probe = self._probe, []
        if batch:
            self._unhold(batch[0][0].lease)
            await self._report(self.outbox.retry_later, [item for item, _ in batch], 0, self._outage_error)

    async def _report(self, outcome: Callable[..., None], items: Sequence[Item], *args: object) -> None:
        """An outcome for items of one batch, under the batch's lease token (stale if it was lost)."""
        if items:
            await in_thread(partial(outcome, [item.id for item in items], *args, token=items[0].lease))

    async def _send(self, batch: Batch, isolate: bool = True) -> None:
        if not batch:
            return
        if time.monotonic() < self._resume_at:  # the other half of a split: it waits with the half that failed
            if self._outages:
                self._probe += batch  # held whole with it
            else:
                await self._report(self.outbox.release, [item for item, _ in batch])
            return
        token = batch[0][0].lease
        if token in self._lost:
            log.warning("%s: %d readings not sent: their lease ran out", self.destination.name, len(batch))
            return
        sending = asyncio.ensure_future(self.destination.send([reading for _, reading in batch]))
        self._sending[token] = sending  # type: ignore[index]
        sending.add_done_callback(lambda _: self._sending.pop(token, None))  # type: ignore[arg-type]
        try:
            outcomes = await sending
        except asyncio.CancelledError as cancelled:
            current = asyncio.current_task()
            if token in self._lost and current is not None and not current.cancelling():
                # _lose: the lease ran out mid-send. What the receiver acknowledged before is reported
                # under it all the same: the queue applies it only where the lease still holds (no other
                # worker took those items), and so keeps them from being sent again.
                if isinstance(cancelled, Interrupted):
                    await self._outcomes(batch[:len(cancelled.outcomes)], cancelled.outcomes)
                return
            raise
        except TransientDeliveryError as exc:
            if not exc.reached and exc.retry_after is None:
                await self._open_circuit(batch, exc)
                return
            self._answered()
            await self._transient(batch, exc, isolate)
            return
        except PermanentDeliveryError as exc:
            self._answered()
            await self._isolate(batch, str(exc), f"refused ({exc.status})")
            return
        except (StorageError, AuthError, ConfigError):
            raise
        except Exception as exc:  # a bug, lxml, MemoryError: no exception type may leave a batch in flight
            await self._isolate(batch, f"{type(exc).__name__}: {exc}", f"failed with {type(exc).__name__}")
            return
        self._answered()
        await self._outcomes(batch, outcomes)

    def _answered(self) -> None:
        """The destination answered: the circuit closes and every waiting item is due as it was."""
        if self._outages:
            log.info("%s: reachable again after %d failed tries", self.destination.name, self._outages)
        self._outages = 0

    async def _open_circuit(self, batch: Batch, exc: TransientDeliveryError) -> None:
        """The destination (or its token endpoint) cannot be reached. The whole destination waits, not
        each item on its own: growing, jittered, capped at max_backoff. This batch stays leased (renewed)
        and whole, to be sent again as the probe; nothing else is leased or written until a probe gets
        an answer, and then all items go on at once (none carries a backoff of the outage)."""
        self._outages += 1
        delay = backoff(self._outages, cap=self.max_backoff)
        self._resume_at = time.monotonic() + delay
        self._probe += batch
        self._outage_error = str(exc)
        self._set_state(BACKING_OFF, f"unreachable: {exc}", delay)
        log.warning("%s: unreachable, %d readings wait, next try in %.1f s: %s",
                    self.destination.name, len(self._probe), delay, exc)
        await self._drop_prefetch()

    async def _transient(self, batch: Batch, exc: TransientDeliveryError, isolate: bool) -> None:
        """The destination answered "not now" (408, 429, 5xx, a dropped answer): the batch backs off, or
        the whole destination waits out its Retry-After."""
        delay = await self._delay(exc.retry_after, max(item.attempts for item, _ in batch))
        if exc.detail:
            log.debug("%s: the peer said: %s", self.destination.name, exc.detail)
        if (isolate and len(batch) > 1 and exc.reached and exc.retry_after is None
                and min(item.attempts for item, _ in batch) >= SPLIT_AFTER):
            # Failing together again and again although the server is there: perhaps one reading makes it
            # fail (a 500, a dropped connection). Try the halves now, once each: the half without it gets
            # through, and the next rounds narrow down the rest.
            half = len(batch) // 2
            await self._send(batch[:half], isolate=False)
            await self._send(batch[half:], isolate=False)
            return
        log.warning("%s: %d readings not delivered, retry in %.1f s: %s",
                    self.destination.name, len(batch), delay, exc)
        error = f"{exc}: {exc.detail}" if exc.detail else str(exc)
        await self._report(self.outbox.retry_later, [item for item, _ in batch], delay, error)
        self._retried(len(batch))

    async def _delay(self, retry_after: float | None, attempts: int) -> float:
        """Seconds until a retry: the server's Retry-After, for which the whole destination waits (RFC
        9110 section 10.2.3), capped at max_backoff (a misconfigured server must not park readings for
        a day), every worker of it included (Queue.pause: shared on JetStream); else the backoff of the
        readings' attempts."""
        if retry_after is None:
            return backoff(attempts, cap=self.max_backoff)
        delay = min(retry_after, self.max_backoff)
        self._resume_at = max(self._resume_at, time.monotonic() + delay)
        self._set_state(BACKING_OFF, "the server asked to wait (Retry-After)", self._resume_at - time.monotonic())
        try:
            await in_thread(self.outbox.pause, self.destination.name, delay)
        except StorageError as exc:  # this worker waits all the same; the others learn it from the server
            log.warning("%s: the Retry-After could not be shared with other workers: %s", self.destination.name, exc)
        return delay

    def _set_state(self, state: str, reason: str | None = None, seconds: float | None = None) -> None:
        """The destination's live status: `reason` printable (it may quote a server), `seconds` until the
        wait ends."""
        self.status.state = state
        self.status.reason = printable(reason) if reason else None
        self.status.until = time.time() + seconds if seconds is not None else None

    def _stopped(self, exc: AuthError | ConfigError, retry: float | None = None) -> None:
        """The destination's status: stopped for a person to fix `exc`, tried again in `retry` seconds if given."""
        problem = "authorization" if isinstance(exc, AuthError) else "configuration"
        self._set_state(STOPPED, f"{problem} problem: {exc}", retry)

    def _retried(self, n: int) -> None:
        self.summary.retried += n
        metrics.RETRIED.labels(self.destination.name).inc(n)

    async def _isolate(self, batch: Batch, reason: str, what: str) -> None:
        """The batch failed because of its content: split it in halves until the reading at fault is
        alone, which goes dead with `reason`, while the others are delivered."""
        if len(batch) == 1:
            await self._dead([batch[0][0]], reason)
            return
        half = len(batch) // 2
        log.info("%s: batch of %d %s; splitting to find the reading at fault", self.destination.name, len(batch), what)
        await self._send(batch[:half])
        await self._send(batch[half:])

    async def _outcomes(self, batch: Batch, outcomes: Sequence[Outcome]) -> None:
        """Record the destination's answer for each reading of the batch."""
        delivered = [(item, o) for (item, _), o in zip(batch, outcomes, strict=True) if isinstance(o, Delivered)]
        if delivered:
            await self._report(self.outbox.delivered, [i for i, _ in delivered], [o.result for _, o in delivered])
            self._delivered([i for i, _ in delivered])
            log.debug("%s: delivered %d readings", self.destination.name, len(delivered))
        for (item, _), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Rejected):
                await self._dead([item], outcome.reason)
            elif isinstance(outcome, Deferred):
                if outcome.refusals is not None and item.refusals + 1 >= outcome.refusals:
                    await self._dead([item], f"{outcome.reason} (after {item.refusals + 1} attempts)")
                else:
                    delay = await self._delay(outcome.retry_after, item.attempts)
                    await self._report(self.outbox.retry_later, [item], delay, outcome.reason,
                                       outcome.counts_as_refusal)
                    self._retried(1)

    def _delivered(self, items: Sequence[Item]) -> None:
        """Count deliveries: the summary, the status's last delivery, and the metrics (latency: from the
        item's enqueue to now, the destination's acceptance)."""
        now = time.time()
        self.summary.delivered += len(items)
        self.status.last_delivered = now
        metrics.DELIVERED.labels(self.destination.name).inc(len(items))
        latency = metrics.LATENCY.labels(self.destination.name)
        for item in items:
            latency.observe(max(0.0, now - item.created))

    async def _dead(self, items: Sequence[Item], reason: str) -> None:
        await self._report(self.outbox.dead, items, reason)
        self.summary.dead += len(items)
        metrics.REJECTED.labels(self.destination.name).inc(len(items))
        # The reason may quote measured values: it is kept in the outbox (phg queue show ID) and logged
        # only at DEBUG.
        ids = ",".join(str(i.id) for i in items)
        log.warning("%s: %d reading(s) dead-lettered (outbox ids %s); see phg queue show",
                    self.destination.name, len(items), ids)
        log.debug("%s: outbox ids %s dead: %s", self.destination.name, ids, reason)
