"""`phg run` with two sources and two destinations (issue 11, part 4 acceptance): the emulated Bluetooth
devices and the 11073 test agent over TCP, supervised side by side, delivered to the FHIR server behind
the SMART gate and to an HL7 v2 MLLP receiver; and `phg run` (the process) stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from ieee11073_agent import Agent, session
from phg.auth import generate_key, jwks, load_key
from phg.config import DEFAULT_SCOPE, load_config
from phg.daemon import run_gateway
from phg.demo.emulator import EmulatedLink, demo_devices
from phg.demo.peers import free_port
from phg.model import from_canonical_json
from phg.outbox import Outbox
from phg_run import PhgRun
from test_flow_fhir import matches
from test_mllp_peers import python_hl7_server

pytestmark = pytest.mark.peers

def write_config(tmp_path: Path, *, listen: int, mllp_port: int, fhir: str = "", ble: tuple[str, ...] = ()) -> Path:
    path = tmp_path / "phg.toml"
    allow = ", ".join(f'"{a}"' for a in ble)
    path.write_text(f'''{fhir}
[outbox]
path = "{tmp_path / 'outbox.sqlite'}"
[patient]
system = "urn:oid:1.2.3.4.5"
value = "pt-run-{uuid.uuid4().hex[:12]}"
[ble]
allow = [{allow}]
scan_seconds = 0.5
[ieee11073]
listen = "127.0.0.1:{listen}"
[destinations.lab]
type = "mllp"
host = "127.0.0.1"
port = {mllp_port}
ack_timeout = 5
''')
    return path


async def agent_session(port: int, agent: Agent, reports: int) -> dict:
    """One agent session, once the listener accepts connections."""
    for _ in range(100):
        try:
            return await session("127.0.0.1", port, agent, reports=reports)
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


async def until(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.2)


async def test_run_collects_from_bluetooth_and_11073_and_delivers_to_fhir_and_mllp(gate, oauth, tmp_path):
    key = tmp_path / "gw.pem"
    generate_key(key, "ES384")
    client = oauth.register_client(jwks([load_key(key)]), scope=DEFAULT_SCOPE)
    fhir = f'[fhir]\nbase_url = "{gate.base_url}"\n[auth]\nclient_id = "{client["client_id"]}"\nkey_file = "{key}"\n'
    devices = demo_devices(datetime.now())
    meter = devices[0]  # 5 stored glucose records
    port = free_port()
    async with python_hl7_server() as receiver, EmulatedLink(devices) as radio:
        config = load_config(write_config(tmp_path, listen=port, mllp_port=receiver.port, fhir=fhir,
                                          ble=(meter.address,)), env={})
        assert config.destination_names == ["fhir", "lab"]
        with Outbox(config.outbox_path) as outbox:
            stop = asyncio.Event()
            task = asyncio.create_task(run_gateway(config, outbox, stop, ble_backend=radio.backend))
            answered = await agent_session(port, Agent("blood_pressure"), reports=2)
            assert answered["acks"] and answered["release"] == "Rlre"

            def delivered() -> bool:
                counts = [outbox.counts(d) for d in ("fhir", "lab")]
                return all(c["delivered"] == 7 and c["queued"] == c["inflight"] == 0 for c in counts)

            await until(delivered, 60)
            stop.set()
            summary = await asyncio.wait_for(task, 15)
            items = outbox.items("fhir", limit=100)
    assert summary.delivered == 14 and summary.dead == 0
    readings = [from_canonical_json(i.payload, str(i.id)) for i in items]
    models = sorted(r.device.model for r in readings)
    assert models == ["Emu BP Cuff"] * 2 + ["Emu Glucose Meter"] * 5
    assert len(set(receiver.received)) == 7  # each reading once at the HL7 receiver
    assert [await asyncio.to_thread(matches, gate.upstream, r, m) for r in readings for m in r.metrics] == \
        [1] * sum(len(r.metrics) for r in readings)


async def test_phg_run_stops_cleanly_on_sigterm(tmp_path):
    """SIGTERM: the sources stop (the agent's readings handed over are durable), delivery stops, exit 0."""
    port = free_port()
    async with python_hl7_server() as receiver:
        config = write_config(tmp_path, listen=port, mllp_port=receiver.port)
        async with PhgRun(config, env={"PHG_FHIR_BASE_URL": ""}) as run:
            answered = await asyncio.wait_for(agent_session(port, Agent("thermometer"), reports=3), 30)
            assert answered["acks"] and answered["release"] == "Rlre"
            await until(lambda: len(receiver.received) == 3, 30)
            err = await run.stop(20)
    assert "source 11073-tcp stopped" in err
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        assert outbox.counts("lab")["delivered"] == 3
