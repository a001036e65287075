"""The Intake: where every source hands over what it collected (sources -> Intake -> queue -> worker ->
destination).

A source stores readings, and the progress marker that says how far it has collected (a glucose
meter's last sequence number, say), in ONE durable step: the marker is never ahead of the readings it
covers. It asks the Intake what it already has (its markers, or whether a reading is stored) and
acknowledges its device or peer only after `store` returned. A source never sees the destinations or
the queue: the Intake queues each reading for every configured destination.

The methods block on the disk (an fsync per store): async sources call them through
`asyncio.to_thread`, as the delivery worker does with the queue.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from phg.model import Reading
from phg.outbox import Outbox
from phg.viewstore import ViewStore


@dataclass(frozen=True)
class Stored:
    """What one `store` did: `new` readings were queued, `known` were already there (the same reading
    sent again: a device repeating itself, an agent resending a report whose acknowledgement it lost)."""

    new: int
    known: int
    ids: Mapping[str, tuple[int, ...]] = field(default_factory=dict, compare=False)  # reading key -> its
    #                                     item id for each destination, in `Intake.destinations` order
    fresh: frozenset[str] = field(default=frozenset(), compare=False)  # the keys this store queued


class Intake:
    """Readings and progress markers in, queued for every destination in `destinations`."""

    def __init__(self, outbox: Outbox, destinations: Sequence[str], view: ViewStore | None = None) -> None:
        """`view`: also keep every reading there for viewing (phg.viewstore; [view] configured)."""
        if not destinations:
            raise ValueError("an Intake needs at least one destination to queue readings for")
        self._outbox = outbox
        self._destinations = tuple(destinations)
        self._view = view

    @property
    def destinations(self) -> tuple[str, ...]:
        return self._destinations

    def store(self, readings: Sequence[Reading], progress: Mapping[str, str] | None = None) -> Stored:
        """Queue `readings` and commit `progress` (marker name -> value) in one transaction; raises
        StorageError (nothing stored) when the queue cannot be written. A reading already stored for
        every destination counts as known and is not queued twice."""
        if self._view is not None and readings:  # before the queue: phg.viewstore, "Durability and order"
            self._view.keep(readings)
        items = {r.key: r.to_json() for r in readings}
        known = self._outbox.stored_keys(self._destinations, list(items)) if items else set()
        ids = self._outbox.enqueue(self._destinations, list(items.items()), progress)
        per_key = {key: tuple(ids[n::len(items)]) for n, key in enumerate(items)}
        return Stored(new=len(items) - len(known), known=len(readings) - len(items) + len(known), ids=per_key,
                      fresh=frozenset(items) - known)

    def has(self, reading: Reading) -> bool:
        """Whether `reading` is already stored for every destination."""
        return bool(self._outbox.stored_keys(self._destinations, [reading.key]))

    def progress(self, name: str) -> str | None:
        """The marker last stored under `name`, or None."""
        return self._outbox.source_state(name)

    def heartbeat(self, source: str) -> None:
        """Commit a marker `<source>:heartbeat` and nothing else: the cheapest proof that readings can be
        stored now (StorageError when not). A source whose device forgets what it handed over checks
        this before talking to the device."""
        self._outbox.enqueue(self._destinations, [], {f"{source}:heartbeat": f"{time.time():.0f}"})
