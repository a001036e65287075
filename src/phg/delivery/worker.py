"""The delivery worker: outbox -> destination, with backoff, batch splitting and dead letters.

Rules (issue #2, design.md "delivery"):
- Take up to batch_size due items under a lease, so a crash leaves them to be retried, never lost.
- Transient failures (connection errors, timeouts, 408, 429, 5xx) put the batch back with an
  exponential backoff with jitter, or the server's Retry-After when it gave one.
- A batch refused as a whole (4xx) is split in halves until the reading at fault is alone; it goes
  dead with the server's reason while the others are delivered. A batch that keeps failing
  transiently while the server is reachable is tried in halves, so one reading that makes the
  server fail cannot hold back the others forever.
- An AuthError, or a ConfigError from the destination (e.g. the FHIR base answers 404: wrong URL),
  stops the worker and releases the batch untouched: credentials and URLs are fixed by a person.
- An outbox that cannot be written (StorageError: disk full, I/O error, ...) pauses a long-running
  worker: it logs, waits (backoff) and tries again, so the daemon recovers when space returns. What
  it had leased keeps its lease; if the report of a delivery is what failed, the batch is sent again
  when the lease expires, which conditional create makes harmless. `until_idle` runs raise it instead.
Outbox calls are blocking SQLite work, so they run in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from phg.delivery.outcome import UNBOUNDED, Delivered, Destination, Rejected, Retry
from phg.errors import (
    AuthError,
    ConfigError,
    PermanentDeliveryError,
    ReadingError,
    StorageError,
    TransientDeliveryError,
)
from phg.model import Reading, from_canonical_json
from phg.outbox import Item, Outbox

log = logging.getLogger(__name__)

SPLIT_AFTER = 3  # transient failures of the same readings before their batch is tried in halves


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


def _parse(items: Sequence[Item]) -> tuple[list[tuple[Item, Reading]], list[tuple[Item, str]]]:
    """Stored payloads back to Readings (CPU work: run in a thread). A payload that no longer
    parses (written by another version, say) is dead-lettered alone."""
    readings, broken = [], []
    for item in items:
        try:
            readings.append((item, from_canonical_json(item.payload, f"outbox item {item.id}")))
        except ReadingError as exc:
            broken.append((item, f"stored reading is not valid: {exc}"))
    return readings, broken


class DeliveryWorker:
    def __init__(self, outbox: Outbox, destination: Destination, *, batch_size: int = 50,
                 lease_seconds: float = 120.0, max_backoff: float = 300.0, idle_poll: float = 1.0):
        self.outbox = outbox
        self.destination = destination
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.max_backoff = max_backoff
        self.idle_poll = idle_poll
        self.summary = Summary()
        # time.monotonic() before which nothing is sent: a Retry-After (503, 429) is about the server, so
        # the whole destination waits, not only the batch it refused (RFC 9110 section 10.2.3).
        self._resume_at = 0.0
        # The next batch, leased and parsed while the current one is on the wire (still one request in
        # flight): the server's time and ours overlap instead of adding up.
        self._next: asyncio.Task[list[tuple[Item, Reading]] | None] | None = None

    async def run(self, stop: asyncio.Event | None = None, until_idle: bool = False) -> Summary:
        """Deliver batches until `stop` is set; with until_idle, return as soon as nothing is due or the
        server asked to wait (Retry-After): what waits is left queued for a later run."""
        stop = stop or asyncio.Event()
        try:
            return await self._run(stop, until_idle)
        finally:
            await self._drop_prefetch()

    async def _run(self, stop: asyncio.Event, until_idle: bool) -> Summary:
        storage_failures = 0
        while not stop.is_set():
            try:
                if await self.run_once():
                    storage_failures = 0
                    continue
                if until_idle:
                    break
                due = await asyncio.to_thread(self.outbox.next_due, self.destination.name)
                wait = self.idle_poll if due is None else min(self.idle_poll * 30, max(
                    0.05, due - time.time(), self._resume_at - time.monotonic()))
                storage_failures = 0
            except StorageError as exc:
                if until_idle:
                    raise
                storage_failures += 1
                wait = backoff(storage_failures, cap=min(self.max_backoff, 30.0))
                log.error("%s: the outbox cannot be written, delivery paused for %.1f s: %s",
                          self.destination.name, wait, exc)
            except (AuthError, ConfigError):
                raise
            except Exception:  # a bug or a peer's surprise must not end `phg run`: what was leased comes due again
                if until_idle:
                    raise
                storage_failures += 1
                wait = backoff(storage_failures, cap=min(self.max_backoff, 30.0))
                log.exception("%s: unexpected error, delivery paused for %.1f s", self.destination.name, wait)
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait)
            except TimeoutError:
                pass
        return self.summary

    async def run_once(self) -> bool:
        """Lease and deliver one batch. Returns False when nothing was due (or the server's
        Retry-After has not passed yet)."""
        if time.monotonic() < self._resume_at:
            await self._drop_prefetch()
            return False
        readings = None
        if self._next is not None:
            task, self._next = self._next, None
            readings = await task
        if readings is None:  # nothing was due when the look-ahead ran; something may be now
            readings = await self._take()
        if readings is None:
            return False
        self._next = asyncio.create_task(self._take())
        try:
            await self._send(readings)
        except (AuthError, ConfigError):
            await self._drop_prefetch()
            await asyncio.to_thread(self._release_unfinished, [item.id for item, _ in readings])
            raise
        return True

    async def _take(self) -> list[tuple[Item, Reading]] | None:
        """Lease and parse one batch (blocking work, in threads); None when nothing is due. A stored
        payload that no longer parses goes dead on its own."""
        items = await asyncio.to_thread(self.outbox.lease, self.destination.name, self.batch_size, self.lease_seconds)
        if not items:
            return None
        readings, broken = await asyncio.to_thread(_parse, items)
        for item, reason in broken:
            await self._dead([item], reason)
        return readings

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
            await asyncio.to_thread(self.outbox.release, [item.id for item, _ in readings])

    def _release_unfinished(self, ids: Sequence[int]) -> None:
        """Put back what the stopped batch did not finish, without counting an attempt."""
        self.outbox.release([i for i in ids if (item := self.outbox.get(i)) and item.state == "inflight"])

    async def _send(self, batch: Sequence[tuple[Item, Reading]], isolate: bool = True) -> None:
        if not batch:
            return
        if time.monotonic() < self._resume_at:  # the other half of a split got a Retry-After: wait with it
            await asyncio.to_thread(self.outbox.release, [item.id for item, _ in batch])
            return
        try:
            outcomes = await self.destination.send([reading for _, reading in batch])
        except TransientDeliveryError as exc:
            attempts = max(item.attempts for item, _ in batch)
            # A Retry-After longer than max_backoff is capped: a misconfigured server must not park
            # readings for a day.
            delay = (min(exc.retry_after, self.max_backoff) if exc.retry_after is not None
                     else backoff(attempts, cap=self.max_backoff))
            if exc.retry_after is not None:
                self._resume_at = time.monotonic() + delay
            if exc.detail:
                log.debug("%s: the peer said: %s", self.destination.name, exc.detail)
            if (isolate and len(batch) > 1 and exc.reached and exc.retry_after is None
                    and min(item.attempts for item, _ in batch) >= SPLIT_AFTER):
                # Failing together again and again although the server is there: perhaps one reading makes it
                # fail (a 500, a dropped connection). Try the halves now, once each: the half without it gets
                # through, and the next rounds narrow down the rest. (Not when the server cannot be
                # reached: an outage says nothing about the batch.)
                half = len(batch) // 2
                await self._send(batch[:half], isolate=False)
                await self._send(batch[half:], isolate=False)
                return
            log.warning("%s: %d readings not delivered, retry in %.1f s: %s",
                        self.destination.name, len(batch), delay, exc)
            error = f"{exc}: {exc.detail}" if exc.detail else str(exc)
            await asyncio.to_thread(self.outbox.retry_later, [item.id for item, _ in batch], delay, error)
            self.summary.retried += len(batch)
            return
        except PermanentDeliveryError as exc:
            if len(batch) == 1:
                await self._dead([batch[0][0]], str(exc))
                return
            half = len(batch) // 2
            log.info("%s: batch of %d refused (%s); splitting to find the reading at fault",
                     self.destination.name, len(batch), exc.status)
            await self._send(batch[:half])
            await self._send(batch[half:])
            return
        delivered = [(item, o) for (item, _), o in zip(batch, outcomes, strict=True) if isinstance(o, Delivered)]
        if delivered:
            await asyncio.to_thread(self.outbox.delivered, [i.id for i, _ in delivered], [o.result for _, o in delivered])
            self.summary.delivered += len(delivered)
            log.info("%s: delivered %d readings", self.destination.name, len(delivered))
        for (item, _), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Rejected):
                await self._dead([item], outcome.reason)
            elif isinstance(outcome, Retry):
                if item.refusals + 1 >= outcome.max_attempts:
                    await self._dead([item], f"{outcome.reason} (after {item.refusals + 1} attempts)")
                else:
                    delay = backoff(item.attempts, cap=self.max_backoff)
                    refused = outcome.max_attempts < UNBOUNDED  # an answer (AE), not silence
                    await asyncio.to_thread(self.outbox.retry_later, [item.id], delay, outcome.reason, refused)
                    self.summary.retried += 1

    async def _dead(self, items: Sequence[Item], reason: str) -> None:
        await asyncio.to_thread(self.outbox.dead, [i.id for i in items], reason)
        self.summary.dead += len(items)
        # The server's reason may quote measured values: it is kept in the outbox (phg queue show ID)
        # and logged only at DEBUG.
        ids = ",".join(str(i.id) for i in items)
        log.warning("%s: %d reading(s) dead-lettered (outbox ids %s); see phg queue show",
                    self.destination.name, len(items), ids)
        log.debug("%s: outbox ids %s dead: %s", self.destination.name, ids, reason)
