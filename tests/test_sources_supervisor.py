"""The supervisor of `phg run`'s sources: every configured source runs; one that crashes is logged and
started again with backoff without taking the others down; `stop` ends them all; and which sources a
configuration turns on. The 11073 TCP listener closes its agents' connections when stopped."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from ieee11073_agent import Agent, read_apdu
from phg.config import load_config
from phg.errors import ConfigError
from phg.intake import Intake
from phg.model import PatientRef
from phg.outbox import Outbox
from phg.sources.ble.session import BleSource
from phg.sources.ieee11073.tcp import ManagerSettings, TcpSource, run_tcp_manager
from phg.sources.ieee11073.usb import UsbSource
from phg.sources.supervisor import configured_sources, supervise


class Steady:
    """Stores a heartbeat now and then until stopped."""

    name = "steady"

    def __init__(self) -> None:
        self.beats = 0

    async def run(self, intake: Intake, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(intake.heartbeat, self.name)
            self.beats += 1
            await asyncio.sleep(0.02)


class Crashing:
    """Crashes (or returns early) at once, every time."""

    def __init__(self, crash: bool = True) -> None:
        self.name = "crashing" if crash else "quitter"
        self.crash = crash
        self.starts: list[float] = []

    async def run(self, intake: Intake, stop: asyncio.Event) -> None:
        self.starts.append(time.monotonic())
        if self.crash:
            raise RuntimeError("adapter went away")


@pytest.mark.parametrize("crash", [True, False])
async def test_a_failing_source_is_restarted_with_backoff_and_the_others_go_on(tmp_path, caplog, crash):
    steady, failing = Steady(), Crashing(crash)
    with Outbox(tmp_path / "o.sqlite") as outbox:
        stop = asyncio.Event()
        with caplog.at_level(logging.WARNING, "phg.sources.supervisor"):
            task = asyncio.create_task(supervise([steady, failing], Intake(outbox, ["fhir"]), stop,
                                                 min_backoff=0.1, max_backoff=0.4))
            await asyncio.sleep(1.2)
            beats = steady.beats
            await asyncio.sleep(0.2)
            assert steady.beats > beats  # still running beside the failing one
            stop.set()
            await asyncio.wait_for(task, 2)
    gaps = [b - a for a, b in zip(failing.starts, failing.starts[1:], strict=False)]
    assert 3 <= len(failing.starts) <= 6  # restarted, but not in a busy loop
    assert gaps[0] >= 0.08 and gaps[1] >= 0.16 and max(gaps) < 0.6  # 0.1, 0.2, 0.4, 0.4 (+-10 %)
    words = "failed: RuntimeError: adapter went away" if crash else "stopped on its own"
    assert any(f"source {failing.name} {words}" in r.getMessage() for r in caplog.records)


async def test_stop_ends_every_source_promptly(tmp_path):
    sources = [Steady(), Steady()]
    with Outbox(tmp_path / "o.sqlite") as outbox:
        stop = asyncio.Event()
        task = asyncio.create_task(supervise(sources, Intake(outbox, ["fhir"]), stop))
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 1)
    assert all(s.beats for s in sources)


async def test_a_stopped_listener_closes_its_agents_connections(tmp_path):
    """Before: `phg 11073 listen`'s server stopped accepting but left connected agents' handlers running."""
    from phg.demo.peers import free_port

    port = free_port()
    with Outbox(tmp_path / "o.sqlite") as outbox:
        stop = asyncio.Event()
        server = asyncio.create_task(run_tcp_manager(Intake(outbox, ["fhir"]), ManagerSettings(PatientRef("urn:x", "p")),
                                                     port, stop=stop))
        for _ in range(50):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        writer.write(Agent("thermometer").aarq())
        await read_apdu(reader)  # associated, then idle
        stop.set()
        await asyncio.wait_for(server, 2)
        await asyncio.wait_for(reader.read(), 2)  # what the manager had sent (its GET), then the end
        assert reader.at_eof()
        writer.close()


def _config(tmp_path, text: str):
    path = tmp_path / "phg.toml"
    path.write_text(f'[outbox]\npath = "{tmp_path / "o.sqlite"}"\n{text}')
    return load_config(path, env={})


def test_the_configuration_turns_sources_on(tmp_path):
    assert configured_sources(_config(tmp_path, "")) == []
    patient = '[patient]\nsystem = "urn:x"\nvalue = "p"\n'
    sources = configured_sources(_config(tmp_path, patient + '[ble]\nallow = ["C0:00:00:00:18:08"]\n'
                                         '[ieee11073]\nlisten = "127.0.0.1:6024"\nmax_connections = 4\n'
                                         '[usb]\nenabled = true\nvendor_id = 0x0483\n'))
    assert [type(s) for s in sources] == [BleSource, TcpSource, UsbSource]
    ble, tcp, usb = sources
    assert ble.settings.allow == ("C0:00:00:00:18:08",)
    assert (tcp.host, tcp.port, tcp.settings.max_connections, tcp.settings.patient) == (
        "127.0.0.1", 6024, 4, PatientRef("urn:x", "p"))
    assert (usb.vendor_id, usb.product_id) == (0x0483, None)


@pytest.mark.parametrize(("text", "message"), [
    ('[ieee11073]\nlisten = "127.0.0.1:6024"\n', r"\[ieee11073\] collects readings for a \[patient\]"),
    ('[usb]\nenabled = true\n', r"\[usb\] collects readings for a \[patient\]"),
    ('[patient]\nsystem = "urn:x"\nvalue = "p"\n[ieee11073]\nlisten = "6024"\n', r"\[ieee11073\] listen must be HOST:PORT"),
])
def test_source_settings_are_checked_at_load(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, text)


async def test_usb_source_waits_for_its_device_and_stores_for_every_destination(tmp_path, monkeypatch, caplog):
    from phg.sources.ieee11073 import usb
    from test_cli_11073_usb import FakePhdc

    links = iter([LookupError("no USB PHDC device found"), FakePhdc(Agent("blood_pressure"))])

    def open_phdc(vendor_id, product_id):
        found = next(links)
        if isinstance(found, Exception):
            raise found
        return found

    monkeypatch.setattr(usb, "open_phdc", open_phdc)
    source = UsbSource(ManagerSettings(PatientRef("urn:x", "p")))
    with Outbox(tmp_path / "o.sqlite") as outbox:
        stop = asyncio.Event()
        with caplog.at_level(logging.ERROR, "phg.sources.supervisor"):
            task = asyncio.create_task(supervise([source], Intake(outbox, ["fhir", "lab"]), stop, min_backoff=0.1))
            for _ in range(100):
                if outbox.counts("lab")["queued"] == 2:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 2)
        assert outbox.counts("fhir")["queued"] == outbox.counts("lab")["queued"] == 2
    assert any("source 11073-usb failed: LookupError: no USB PHDC device found" in r.getMessage()
               for r in caplog.records)
