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
    Timeouts,
)
from phg.sources.ieee11073.readings import ReadingBuilder

log = logging.getLogger(__name__)


@dataclass
class ManagerSettings:
    """What every association needs: whose readings these are, the gateway's UTC offset (agents give
    local time without zone), where readings go, the manager's own EUI-64, and the configuration store."""

    patient: PatientRef
    utc_offset: timedelta = timedelta(0)
    destinations: tuple[str, ...] = ("fhir",)
    manager_id: bytes = bytes.fromhex("02AB7FFFFE00C1C1")
    store: ConfigStore = field(default_factory=MemoryConfigStore)
    timeouts: Timeouts = field(default_factory=Timeouts)
    idle_timeout: float = 600.0  # close a connection on which nothing arrived for this long
    on_reading: Callable[[Reading], None] | None = None  # called after each reading is durable (tests, status)


class Association:
    """One agent connection: the Manager plus the reading builder; transport-independent."""

    def __init__(self, settings: ManagerSettings, peer: str = "?"):
        self.settings = settings
        self.peer = peer
        self.manager = Manager(system_id=settings.manager_id, store=settings.store, timeouts=settings.timeouts)
        self.builder = ReadingBuilder(settings.patient, settings.utc_offset)
        self.ended: str | None = None  # reason, after an abort

    def readings_for(self, events: list[Event]) -> list[tuple[Measurements, list[Reading]]]:
        """Log the events and build readings for the Measurements among them (in order)."""
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
                    out.append((ev, self.builder.readings(ev, now)))
                case Released():
                    log.info("11073 %s: association released by the %s", self.peer, ev.by)
                case Aborted():
                    log.warning("11073 %s: association aborted by the %s: %s", self.peer, ev.by, ev.reason)
                    self.ended = ev.reason
        return out


async def _store_and_ack(assoc: Association, outbox, batches: list[tuple[Measurements, list[Reading]]]) -> None:
    for m, readings in batches:
        items = [(r.key, r.to_json()) for r in readings]
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
            wait = settings.idle_timeout - (now - last_data)
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
                if not events and now - last_data >= settings.idle_timeout:
                    log.info("11073 %s: idle for %.0f s, closing", peer, settings.idle_timeout)
                    break
            else:
                last_data = now
                events = manager.receive_data(data, now)
            batches = assoc.readings_for(events)
            writer.write(manager.data_to_send())
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


async def start_tcp_manager(outbox, settings: ManagerSettings, port: int, host: str = "127.0.0.1") -> asyncio.Server:
    """Listen for agents; returns the started asyncio Server (port 0 picks a free port: see server.sockets)."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle_connection(reader, writer, outbox, settings)

    return await asyncio.start_server(on_connect, host, port)


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
