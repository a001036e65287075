"""IEEE 11073-20601 manager over TCP: agents on IP networks (and the tests' agent emulator).

This module only moves bytes: each connection gets its own sans-I/O `Manager`; bytes read from the
socket go in, `data_to_send()` goes out, `Manager.deadline` drives `tick`. APDUs are framed by their own
4-byte header (choice + length), which the Manager parses. Readings are written to the outbox in a worker
thread (the event loop never blocks on SQLite) and the agent's confirmed report is answered only after
`enqueue` returned: durable before acknowledged.

    server = await start_tcp_manager(outbox, ManagerSettings(patient=..., utc_offset=...), port=6024)
    async with server:
        await server.serve_forever()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from phg.errors import PhgError
from phg.model import PatientRef, Reading
from phg.sources.ieee11073.configs import ConfigStore, MemoryConfigStore
from phg.sources.ieee11073.manager import (
    Aborted,
    Associated,
    Configured,
    DeviceAttributes,
    Event,
    Manager,
    Measurements,
    Released,
    State,
    Timeouts,
)
from phg.sources.ieee11073.readings import ReadingBuilder

log = logging.getLogger(__name__)


REFUSAL_WARNING_INTERVAL = 60.0  # seconds between two "listener full" warnings


@dataclass
class ManagerSettings:
    """What every association needs: whose readings these are, the gateway's UTC offset (agents give
    local time without zone), where readings go, the manager's own EUI-64, the configuration store, and
    the listener's limits.

    Limits (agents are not authenticated: anyone who reaches the port is an agent): at most
    `max_connections` connections at once, more are closed as soon as they are accepted (a refused agent
    connects again later, as agents do after a lost transport); a connection on which no association
    holds (just connected, or released/aborted) is closed after `timeouts.association` without data (TO_assoc,
    10 s); an associated one after `idle_timeout` without data (20601 sets no inactivity limit on an
    association, so this is the gateway's choice). Configurations are bounded by the store (StoreLimits)."""

    patient: PatientRef
    utc_offset: timedelta = timedelta(0)
    destinations: tuple[str, ...] = ("fhir",)
    manager_id: bytes = bytes.fromhex("02AB7FFFFE00C1C1")
    store: ConfigStore = field(default_factory=MemoryConfigStore)
    timeouts: Timeouts = field(default_factory=Timeouts)
    idle_timeout: float = 600.0  # close an associated connection on which nothing arrived for this long
    max_connections: int = 32
    on_reading: Callable[[Reading], None] | None = None  # called after each reading is durable (tests, status)


Stored = tuple[Measurements, list[Reading], list[tuple[str, str]]]  # a report, its readings, their outbox items


class Association:
    """One agent connection: the Manager plus the reading builder; transport-independent."""

    def __init__(self, settings: ManagerSettings, peer: str = "?"):
        self.settings = settings
        self.peer = peer
        self.manager = Manager(system_id=settings.manager_id, store=settings.store, timeouts=settings.timeouts)
        self.builder = ReadingBuilder(settings.patient, settings.utc_offset)
        self.ended: str | None = None  # reason, after an abort

    @property
    def silence_limit(self) -> float:
        """Seconds the connection may stay silent: TO_assoc while no association holds it, else idle_timeout."""
        associated = self.manager.state is not State.UNASSOCIATED
        return self.settings.idle_timeout if associated else self.settings.timeouts.association

    def readings_for(self, events: list[Event]) -> list[Stored]:
        """Log the events and build readings for the Measurements among them (in order). A report the
        manager decoded but whose readings cannot be built ends the association with an ABRT (the agent
        keeps the report: nothing was acknowledged)."""
        out = []
        now = datetime.now(UTC)
        for ev in events:
            match ev:
                case Associated():
                    log.info("11073 %s: agent %s associated (config %#06x, %s)", self.peer, ev.system_id,
                             ev.config_id, "known" if ev.known_configuration else "unknown configuration")
                case Configured():
                    log.info("11073 %s: configuration %#06x accepted", self.peer, ev.configuration.config_id)
                case DeviceAttributes():
                    self.builder.device_attributes(now)
                case Measurements():
                    try:
                        readings = self.builder.readings(ev, now)
                        out.append((ev, readings, [(r.key, r.to_json()) for r in readings]))
                    except (PhgError, ValueError, ArithmeticError) as exc:
                        self._end(self.manager.abort(f"report {ev.invoke_id} cannot become readings: {exc}"))
                case Released():
                    log.info("11073 %s: association released by the %s", self.peer, ev.by)
                case Aborted():
                    self._end([ev])
        return out

    def _end(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Aborted):
                log.warning("11073 %s: association aborted by the %s: %s", self.peer, ev.by, ev.reason)
                self.ended = ev.reason


async def _store_and_ack(assoc: Association, outbox, batches: list[Stored]) -> None:
    for m, readings, items in batches:
        if items:
            await asyncio.to_thread(outbox.enqueue, list(assoc.settings.destinations), items)
        assoc.manager.acknowledge(m)  # only now: the readings are durable
        log.info("11073 %s: %d reading(s), %d metric(s) queued", assoc.peer, len(readings),
                 sum(len(r.metrics) for r in readings))
        if assoc.settings.on_reading:
            for r in readings:
                assoc.settings.on_reading(r)


async def handle_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outbox,
                            settings: ManagerSettings) -> None:
    peer = str(writer.get_extra_info("peername"))
    assoc = Association(settings, peer)
    manager = assoc.manager
    last_data = time.monotonic()
    try:
        while assoc.ended is None:
            now = time.monotonic()
            wait = assoc.silence_limit - (now - last_data)
            if manager.deadline is not None:
                wait = min(wait, manager.deadline - now)
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout=max(wait, 0.0))
            except TimeoutError:
                data = None
            now = time.monotonic()
            if data == b"":
                log.info("11073 %s: connection closed by the agent (state %s)", peer, manager.state.value)
                break
            if data is None:
                events = manager.tick(now)
                if not events and now - last_data >= assoc.silence_limit:
                    log.info("11073 %s: silent for %.0f s (%s), closing", peer, assoc.silence_limit,
                             manager.state.value)
                    break
            else:
                last_data = now
                events = manager.receive_data(data, now)
            batches = assoc.readings_for(events)
            writer.write(manager.data_to_send())
            if any(isinstance(ev, Configured) for ev in events):
                await asyncio.to_thread(settings.store.flush)
            await _store_and_ack(assoc, outbox, batches)
            writer.write(manager.data_to_send())
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        log.info("11073 %s: connection lost: %s", peer, exc)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError, asyncio.CancelledError):  # the task ends here either way
            pass


class _Listener:
    """Accepts agents up to `max_connections`; beyond, closes new connections at once and warns (at most once
    a REFUSAL_WARNING_INTERVAL, with the count refused meanwhile)."""

    def __init__(self, outbox, settings: ManagerSettings):
        self.outbox, self.settings = outbox, settings
        self.active = 0
        self.refused = 0
        self._warned_at: float | None = None

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.settings.max_connections:
            writer.transport.abort()
            self._refuse()
            return
        self.active += 1
        try:
            await handle_connection(reader, writer, self.outbox, self.settings)
        finally:
            self.active -= 1

    def _refuse(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= REFUSAL_WARNING_INTERVAL:
            log.warning("11073 listener full: %d connections open (max_connections %d); %d new connection(s) "
                        "refused since the last warning", self.active, self.settings.max_connections, self.refused)
            self._warned_at, self.refused = now, 0


async def start_tcp_manager(outbox, settings: ManagerSettings, port: int, host: str = "127.0.0.1") -> asyncio.Server:
    """Listen for agents; returns the started asyncio Server (port 0 picks a free port: see server.sockets)."""
    return await asyncio.start_server(_Listener(outbox, settings).on_connect, host, port)


async def run_tcp_manager(outbox, settings: ManagerSettings, port: int, host: str = "127.0.0.1",
                          stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or forever)."""
    server = await start_tcp_manager(outbox, settings, port, host)
    log.info("11073 manager listening on %s:%d", host, port)
    async with server:
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()
