"""The Intake: where every source hands over what it collected (sources -> Intake -> queue -> worker ->
destination).

A source stores readings, and the progress marker that says how far it has collected (a glucose
meter's last sequence number, say), in ONE durable step: the marker is never ahead of the readings it
covers. It asks the Intake what it already has (its markers, or whether a reading is stored) and
acknowledges its device or peer only after `store` returned. A source never sees the destinations or
the queue: the Intake queues each reading for its destinations.

Routing. Without routes every reading goes to every destination. With [[routes]] (phg.config.Route) a
reading goes to the union of the destinations of every route it matches, and a reading that no route
matches is refused: `store` raises `Unrouted` and stores nothing of that call, so a source does not
acknowledge its device (which keeps the readings until the routes are fixed) and is started again by
its supervisor; the API and `phg send` check each document first (`refusal`) and refuse only that one.
Readings are never dropped silently. `store` groups the readings by their destination set and queues
one group per write, the progress marker with the last: a failure part-way leaves the marker where it
was, so what is already queued is simply handed over again (and recognised: the queue keys readings by
their content).

The methods block on the disk or the network (an fsync, a JetStream publish acknowledgement, the view
store's database): async sources and the API call them through `asyncio.to_thread`, the event loop's default
executor. The delivery workers call the queue in a pool of their own (phg.delivery.worker), so that delivery
never waits behind these calls, which a view store that hangs holds for seconds each.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from phg.config import Route
from phg.errors import ReadingError
from phg.frozen import Frozen, field
from phg.model import Reading
from phg.outbox import Outbox
from phg.viewstore import ViewStore


class Unrouted(ReadingError):
    """No [[routes]] entry matches a reading: it has nowhere to go. Names the patient identifier and the
    device, never a measured value."""

    def __init__(self, reading: Reading, source: str | None = None):
        device = reading.device.system_id or reading.device.bt_address or "-"
        super().__init__("patient", f"no [[routes]] entry matches patient {reading.patient.system}|"
                         f"{reading.patient.value} (device {device}): add a route for it, or a default = true "
                         "route", source)


def route(reading: Reading, destinations: Sequence[str], routes: Sequence[Route]) -> tuple[str, ...]:
    """Where `reading` goes, in the order of `destinations` (every configured one): all of them without
    routes, else the union of the matching routes' destinations (empty: no route matches)."""
    if not routes:
        return tuple(destinations)
    wanted = {name for each in routes if each.matches(reading) for name in each.destinations}
    return tuple(name for name in destinations if name in wanted)


class Stored(Frozen):
    """What one `store` did: `new` readings were queued, `known` were already there (the same reading
    sent again: a device repeating itself, an agent resending a report whose acknowledgement it lost)."""

    new: int
    known: int
    ids: Mapping[str, Mapping[str, int]] = field(default_factory=dict, compare=False)  # reading key ->
    #                                     {destination: its item id there}, in the reading's routed order
    fresh: frozenset[str] = field(default=frozenset(), compare=False)  # the keys this store queued


class Intake:
    """Readings and progress markers in, queued for the destinations each reading is routed to."""

    def __init__(self, outbox: Outbox, destinations: Sequence[str], view: ViewStore | None = None,
                 routes: Sequence[Route] = ()) -> None:
        """`destinations`: every configured destination, in order; `routes`: [[routes]] (none: every
        reading to every destination). `view`: also keep every reading there for viewing (phg.viewstore;
        [view] configured)."""
        if not destinations:
            raise ValueError("an Intake needs at least one destination to queue readings for")
        self._outbox = outbox
        self._destinations = tuple(destinations)
        self._routes = tuple(routes)
        self._view = view

    @property
    def destinations(self) -> tuple[str, ...]:
        return self._destinations

    def destinations_for(self, reading: Reading) -> tuple[str, ...]:
        """Where `reading` goes (`route`): empty when no route matches."""
        return route(reading, self._destinations, self._routes)

    def refusal(self, reading: Reading, source: str | None = None) -> Unrouted | None:
        """Why `reading` would be refused (it has no route), or None; `source` names it in the error."""
        return None if self.destinations_for(reading) else Unrouted(reading, source)

    def store(self, readings: Sequence[Reading], progress: Mapping[str, str] | None = None) -> Stored:
        """Queue `readings` for their destinations and commit `progress` (marker name -> value) with the
        last of them; raises StorageError when the queue cannot be written (the marker is then not
        committed), phg.viewstore.ViewStoreError (a StorageError) when the view store cannot keep them
        (nothing is queued then) and Unrouted, before storing anything, when a reading has no route. A reading already
        stored for every one of its destinations counts as known and is not queued twice."""
        groups: dict[tuple[str, ...], dict[str, str]] = {}
        for reading in readings:
            where = self.destinations_for(reading)
            if not where:
                raise Unrouted(reading)
            groups.setdefault(where, {})[reading.key] = reading.to_json()
        if self._view is not None and readings:  # before the queue: phg.viewstore, "Durability and order"
            self._view.keep(readings)
        if not groups:
            if progress:
                self._outbox.enqueue(self._destinations, [], progress)
            return Stored(new=0, known=0)
        ids: dict[str, dict[str, int]] = {}
        fresh: set[str] = set()
        last = list(groups)[-1]
        for where, items in groups.items():
            known = self._outbox.stored_keys(where, list(items))
            found = self._outbox.enqueue(where, list(items.items()), progress if where == last else None)
            for n, key in enumerate(items):
                ids[key] = dict(zip(where, found[n::len(items)], strict=True))
            fresh |= set(items) - known
        return Stored(new=len(fresh), known=len(readings) - len(fresh), ids=ids, fresh=frozenset(fresh))

    def has(self, reading: Reading) -> bool:
        """Whether `reading` is already stored for every one of its destinations."""
        where = self.destinations_for(reading)
        return bool(where) and bool(self._outbox.stored_keys(where, [reading.key]))

    def progress(self, name: str) -> str | None:
        """The marker last stored under `name`, or None."""
        return self._outbox.source_state(name)

    def heartbeat(self, source: str) -> None:
        """Commit a marker `<source>:heartbeat` and nothing else, then ask the view store (when there is
        one) whether it answers: the cheapest proof that readings can be stored now (StorageError when
        not; a phg.viewstore.ViewStoreError when the view store is the cause, the queue being writable). A
        source whose device forgets what it handed over checks this before talking to the device."""
        self._outbox.enqueue(self._destinations, [], {f"{source}:heartbeat": f"{time.time():.0f}"})
        if self._view is not None:
            self._view.check()
