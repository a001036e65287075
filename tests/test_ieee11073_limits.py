"""The IEEE 11073-20601 listener's limits (issue 10, findings 4 and 5): a connection cap, TO_assoc for
connections that never associate, a bounded configuration store written off the event loop, an ABRT for an
undecodable report; and the acceptance run: `phg 11073 listen` (a subprocess with the common 1,024 file
descriptors) still serves a genuine agent while 1,100 idle connections and 400 configuration-spamming agents
try."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import resource
import signal
import subprocess
import threading
import time
from pathlib import Path

from ieee11073_agent import Agent, associated, read_apdu, session
from phg.demo.peers import free_port
from phg.intake import Intake
from phg.model import PatientRef
from phg.outbox import Outbox
from phg.sources.ieee11073.apdu import Abrt
from phg.sources.ieee11073.configs import MemoryConfigStore
from phg.sources.ieee11073.manager import Timeouts
from phg.sources.ieee11073.tcp import ManagerSettings, start_tcp_manager
from test_cli_11073_listen import PHG, wait_listening
from test_ieee11073_manager import feb31_report

PATIENT = PatientRef("urn:oid:1.2.3.4.5", "pt-11073-limits")


async def _serve(outbox, settings: ManagerSettings, scenario):
    server = await start_tcp_manager(Intake(outbox, ["fhir"]), settings, 0)
    try:
        return await asyncio.wait_for(scenario(server.sockets[0].getsockname()[1]), 30)
    finally:
        server.close()
        await server.wait_closed()


async def _closed_by_manager(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except ConnectionError:
        return True


def test_connections_beyond_the_cap_are_closed_at_once_and_silent_ones_after_to_assoc(tmp_path, caplog):
    settings = ManagerSettings(PATIENT, max_connections=3, timeouts=Timeouts(association=0.5))

    async def scenario(port):
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        opened = time.monotonic()
        await asyncio.sleep(0.1)
        extra = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        refused = [await _closed_by_manager(r, 0.3) for r, _ in extra]  # long before TO_assoc
        silent = [await _closed_by_manager(r, 3) for r, _ in idle]
        waited = time.monotonic() - opened  # from their opening: the refusals above may take long on a loaded machine
        served = await session("127.0.0.1", port, Agent("glucose"), reports=1)
        for _, w in idle + extra:
            w.close()
        return refused, silent, waited, served

    with caplog.at_level(logging.WARNING, "phg.sources.ieee11073.tcp"), Outbox(tmp_path / "o.sqlite") as outbox:
        refused, silent, waited, served = asyncio.run(_serve(outbox, settings, scenario))
        assert outbox.counts("fhir")["queued"] == 1
    assert refused == [True] * 5 and silent == [True] * 3 and 0.45 < waited < 2.5
    assert served["acks"] and served["release"] == "Rlre"
    full = [r for r in caplog.records if "11073 listener full" in r.getMessage()]
    assert len(full) == 1 and "max_connections 3" in full[0].getMessage()  # rate-limited: one warning


def test_a_report_dated_31_february_gets_an_abort_and_the_listener_goes_on(tmp_path):
    """Issue 10 finding 4 over TCP: today's code dropped the connection without ABRT."""
    readings = []
    settings = ManagerSettings(PATIENT, on_reading=readings.append)

    async def scenario(port):
        agent = Agent("thermometer")
        reader, writer = await associated(port, agent)
        writer.write(feb31_report(agent))
        answer = await read_apdu(reader)
        closed = await _closed_by_manager(reader, 5)
        writer.close()
        return answer, closed, await session("127.0.0.1", port, Agent("thermometer"), reports=1)

    with Outbox(tmp_path / "o.sqlite") as outbox:
        answer, closed, after = asyncio.run(_serve(outbox, settings, scenario))
    assert answer == Abrt(0) and closed and len(readings) == 1 and after["acks"]


def test_configurations_are_written_off_the_event_loop(tmp_path):
    class Recording(MemoryConfigStore):
        threads: list[int] = []

        def flush(self) -> None:
            self.threads.append(threading.get_ident())

    store = Recording()
    settings = ManagerSettings(PATIENT, store=store)

    async def scenario(port):
        await session("127.0.0.1", port, Agent("scale", extended=True), reports=1)
        return threading.get_ident()

    with Outbox(tmp_path / "o.sqlite") as outbox:
        loop_thread = asyncio.run(_serve(outbox, settings, scenario))
    assert store.threads and loop_thread not in store.threads
    assert store.get(Agent("scale").kind.system_id, 0x4000 + 3) is not None


# ------------------------------------------------------------------------------------ acceptance: the caps

IDLE, SPAMMERS, SPAM_CONCURRENCY = 1100, 400, 40
CHILD_FILES = 1024  # the usual soft limit: 1,100 idle connections exhausted it before the cap


def _child_limits() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (CHILD_FILES, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def _raise_own_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


async def _idle_connections(port: int) -> list[asyncio.StreamWriter]:
    """Connections that never send a byte (those the listener accepts and keeps, or closes: both count)."""
    gate = asyncio.Semaphore(50)

    async def one() -> asyncio.StreamWriter | None:
        async with gate:
            try:
                return (await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2))[1]
            except (OSError, TimeoutError):
                return None

    return [w for w in await asyncio.gather(*(one() for _ in range(IDLE))) if w is not None]


async def _until_served(port: int, agent: Agent, deadline: float, reports: int = 2) -> dict | None:
    """An agent that connects again after a refused connection, as agents do after a lost transport."""
    while time.monotonic() < deadline:
        try:
            return await asyncio.wait_for(session("127.0.0.1", port, agent, reports=reports), 5)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, OSError):
            await asyncio.sleep(0.3 + random.random() * 0.3)
    return None


async def _spam(port: int, deadline: float) -> int:
    gate = asyncio.Semaphore(SPAM_CONCURRENCY)

    async def one(i: int) -> bool:  # a distinct agent with a distinct extended configuration
        async with gate:
            agent = Agent("scale", system_id=f"5A{i:014X}", extended_id=0x4000 + i, extra_objects=i % 8)
            return await _until_served(port, agent, deadline, reports=0) is not None

    return sum(await asyncio.gather(*(one(i) for i in range(SPAMMERS))))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_genuine_agent_is_served_while_idle_connections_and_config_spammers_try(tmp_path):
    """Issue 10 finding 5. Today's listener kept every connection 600 s: the idle ones exhausted its file
    descriptors and the genuine agent timed out; every configuration was kept and the whole file rewritten."""
    _raise_own_limit(IDLE + SPAM_CONCURRENCY + 200)
    port, outbox_path, configs = free_port(), tmp_path / "outbox.sqlite", tmp_path / "configs.jsonl"
    config = tmp_path / "phg.toml"
    config.write_text(f'[patient]\nsystem = "urn:oid:1.2.3.4.5"\nvalue = "pt-caps"\n[outbox]\npath = "{outbox_path}"\n')
    env = {**os.environ, "PHG_CONFIG": str(config), "PHG_FHIR_BASE_URL": ""}
    child = subprocess.Popen([PHG, "11073", "listen", "--tcp", str(port), "--configs", str(configs)], env=env,
                             preexec_fn=_child_limits, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, child)
        rss_before = _rss_mib(child.pid)

        async def attack_and_serve():
            idle = await _idle_connections(port)
            deadline = time.monotonic() + 25
            spam = asyncio.create_task(_spam(port, deadline))
            await asyncio.sleep(0.5)
            genuine = await _until_served(port, Agent("blood_pressure"), deadline)
            served = await spam
            for w in idle:
                w.close()
            return genuine, served

        genuine, spammers_served = asyncio.run(attack_and_serve())
        rss_after = _rss_mib(child.pid)
    finally:
        child.send_signal(signal.SIGINT)
        try:
            _, stderr = child.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            _, stderr = child.communicate()
    assert genuine is not None and genuine["acks"] and genuine["release"] == "Rlre", stderr[-2000:]
    with Outbox(outbox_path) as outbox:
        payloads = [item.payload for item in outbox.items("fhir")]
    assert sum('"model":"Emu BP Cuff"' in p for p in payloads) == 2  # the genuine agent's readings are queued
    lines = configs.read_text().splitlines()  # 256 configurations at most, and at most twice as many lines
    assert spammers_served and len(lines) <= 2 * 256 + 1 and configs.stat().st_size < 4 << 20
    live = {}
    for doc in map(json.loads, lines):
        live[doc["agent"], doc["config_id"]] = doc["report"]
    assert 0 < sum(r is not None for r in live.values()) <= 256
    assert rss_after - rss_before < 100, (rss_before, rss_after)
    assert "11073 listener full" in stderr and "Too many open files" not in stderr
