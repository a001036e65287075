"""IEEE 11073-20601 manager over TCP: agents on IP networks (and the tests' agent emulator).

This module only moves bytes: each connection gets its own sans-I/O `Manager`; bytes read from the
socket go in, `data_to_send()` goes out, `Manager.deadline` drives `tick`. APDUs are framed by their own
4-byte header (choice + length), which the Manager parses. Readings are stored in the Intake in a worker
thread (the event loop never blocks on SQLite) and the agent's confirmed report is answered only after
the store returned: durable before acknowledged.

    server = await start_tcp_manager(intake, ManagerSettings(patient=..., utc_offset=...), port=6024)
    async with server:
        await server.serve_forever()

`TcpSource` is the listener as a source of `phg run` (phg.sources.supervisor).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from phg import metrics
from phg.errors import PhgError, ReadingError
from phg.intake import Intake
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
    local time without zone), the manager's own EUI-64, the configuration store, and
    the listener's limits.

    Limits (agents are not authenticated: anyone who reaches the port is an agent): at most
    `max_connections` connections at once, more are closed as soon as they are accepted (a refused agent
    connects again later, as agents do after a lost transport); a connection on which no association
    holds (just connected, or released/aborted) is closed after `timeouts.association` without data (TO_assoc,
    10 s); an associated one after `idle_timeout` without data (20601 sets no inactivity limit on an
    association, so this is the gateway's choice). Configurations are bounded by the store (StoreLimits)."""

    patient: PatientRef
    utc_offset: timedelta = timedelta(0)
    manager_id: bytes = bytes.fromhex("02AB7FFFFE00C1C1")
    store: ConfigStore = field(default_factory=MemoryConfigStore)
    timeouts: Timeouts = field(default_factory=Timeouts)
    idle_timeout: float = 600.0  # close an associated connection on which nothing arrived for this long
    max_connections: int = 32
    on_reading: Callable[[Reading], None] | None = None  # called after each reading is durable (tests, status)


Report = tuple[Measurements, list[Reading]]  # a report and its readings


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

    def readings_for(self, events: list[Event]) -> list[Report]:
        """Log the events and build readings for the Measurements among them (in order). A report the
        manager decoded but whose readings cannot be built ends the association with an ABRT (the agent
        keeps the report: nothing was acknowledged)."""
        out = []
        now = datetime.now(UTC)
        for ev in events:
            match ev:
                case Associated():
                    metrics.DEVICES_CONNECTED.labels("11073").inc()
                    log.info("11073 %s: agent %s associated (config %#06x, %s)", self.peer, ev.system_id,
                             ev.config_id, "known" if ev.known_configuration else "unknown configuration")
                case Configured():
                    log.info("11073 %s: configuration %#06x accepted", self.peer, ev.configuration.config_id)
                case DeviceAttributes():
                    self.builder.device_attributes(now)
                case Measurements():
                    try:
                        out.append((ev, self.builder.readings(ev, now)))
                    except (PhgError, ValueError, ArithmeticError) as exc:
                        metrics.DECODE_ERRORS.labels("11073").inc()
                        self._end(self.manager.abort(f"report {ev.invoke_id} cannot become readings: {exc}"))
                case Released():
                    log.info("11073 %s: association released by the %s", self.peer, ev.by)
                case Aborted():
                    self._end([ev])
        return out

    def store_and_ack(self, intake: Intake, reports: list[Report]) -> None:
        """Store each report's readings, then (only then: they are durable) acknowledge the report.
        Blocking (the store waits for the disk). A report whose readings cannot be stored as reading
        documents, or that no [[routes]] entry takes (phg.intake.Unrouted), ends the association with an
        ABRT (the agent keeps the report: nothing was acknowledged); StorageError propagates, unacknowledged."""
        for m, readings in reports:
            if self.ended is not None:
                return
            try:
                intake.store(readings)
            except (ValueError, ArithmeticError, ReadingError) as exc:
                self._end(self.manager.abort(f"report {m.invoke_id} cannot become readings: {exc}"))
                return
            self.manager.acknowledge(m)
            metrics.RECORDS_FETCHED.labels("11073").inc(len(readings))
            log.info("11073 %s: %d reading(s), %d metric(s) stored", self.peer, len(readings),
                     sum(len(r.metrics) for r in readings))
            if self.settings.on_reading:
                for r in readings:
                    self.settings.on_reading(r)

    def _end(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Aborted):
                log.warning("11073 %s: association aborted by the %s: %s", self.peer, ev.by, ev.reason)
                self.ended = ev.reason


async def handle_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, intake: Intake,
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
            reports = assoc.readings_for(events)
            writer.write(manager.data_to_send())
            if any(isinstance(ev, Configured) for ev in events):
                await asyncio.to_thread(settings.store.flush)
            if reports:
                await asyncio.to_thread(assoc.store_and_ack, intake, reports)
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

    def __init__(self, intake: Intake, settings: ManagerSettings):
        self.intake, self.settings = intake, settings
        self.connections: dict[asyncio.StreamWriter, asyncio.Task] = {}
        self.refused = 0
        self._warned_at: float | None = None

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= self.settings.max_connections:
            writer.transport.abort()
            self._refuse()
            return
        task = asyncio.current_task()
        assert task is not None
        self.connections[writer] = task
        try:
            await handle_connection(reader, writer, self.intake, self.settings)
        finally:
            del self.connections[writer]

    async def close_connections(self) -> None:
        """Close every agent connection and wait for its handler: a report being stored is stored (its
        acknowledgement may be lost; the agent sends the report again, and it is stored once)."""
        tasks = list(self.connections.values())
        for writer in self.connections:
            writer.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _refuse(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= REFUSAL_WARNING_INTERVAL:
            log.warning("11073 listener full: %d connections open (max_connections %d); %d new connection(s) "
                        "refused since the last warning", len(self.connections), self.settings.max_connections,
                        self.refused)
            self._warned_at, self.refused = now, 0


async def start_tcp_manager(intake: Intake, settings: ManagerSettings, port: int,
                            host: str = "127.0.0.1") -> asyncio.Server:
    """Listen for agents; returns the started asyncio Server (port 0 picks a free port: see server.sockets)."""
    return await asyncio.start_server(_Listener(intake, settings).on_connect, host, port)


async def run_tcp_manager(intake: Intake, settings: ManagerSettings, port: int, host: str = "127.0.0.1",
                          stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or forever). Then no new agent is accepted and the connections open
    are closed (see _Listener.close_connections)."""
    listener = _Listener(intake, settings)
    server = await asyncio.start_server(listener.on_connect, host, port)
    log.info("11073 manager listening on %s:%d", host, port)
    try:
        await (server.serve_forever() if stop is None else stop.wait())
    finally:
        server.close()
        await listener.close_connections()
        await server.wait_closed()


@dataclass(frozen=True)
class TcpSource:
    """The 11073 TCP listener as a source of `phg run` ([ieee11073] listen = "HOST:PORT")."""

    settings: ManagerSettings
    host: str
    port: int
    name: str = "11073-tcp"

    async def run(self, intake: Intake, stop: asyncio.Event) -> None:
        await run_tcp_manager(intake, self.settings, self.port, self.host, stop)
