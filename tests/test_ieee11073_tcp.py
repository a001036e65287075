"""The IEEE 11073-20601 manager over TCP with the agent emulator: five device types, full sessions,
known and unknown configurations, durable before acknowledged, garbage on the wire; and one run through
phg's pipeline to the FHIR test server."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest

from ieee11073_agent import EXPECTED, KINDS, Agent, associated, read_apdu, session
from phg.intake import Intake
from phg.model import PatientRef
from phg.outbox import Outbox
from phg.sources.ieee11073.apdu import Abrt
from phg.sources.ieee11073.manager import Timeouts
from phg.sources.ieee11073.tcp import ManagerSettings, start_tcp_manager

PATIENT = PatientRef("urn:oid:1.2.3.4.5", "pt-11073-tcp")


async def _with_manager(outbox, settings: ManagerSettings, scenario):
    server = await start_tcp_manager(Intake(outbox, ["fhir"]), settings, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await asyncio.wait_for(scenario(port), 30)
    finally:
        server.close()
        await server.wait_closed()


def test_five_device_types_full_sessions(tmp_path):
    readings = []
    settings = ManagerSettings(PATIENT, utc_offset=timedelta(hours=1), on_reading=readings.append)

    async def scenario(port):
        results = {}
        for kind in KINDS:
            results[kind] = [await session("127.0.0.1", port, Agent(kind, extended=ext), reports=3)
                             for ext in (False, True, True)]
        return results

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        results = asyncio.run(_with_manager(outbox, settings, scenario))
        counts = outbox.counts("fhir")
    for std, unknown, known in results.values():
        assert std["aare"] == 0 and "config_result" not in std  # standard configuration: no configuring
        assert unknown["aare"] == 3 and unknown["config_result"] == 0  # extended, first time: configure
        assert known["aare"] == 0  # extended, remembered for this system id
        for r in (std, unknown, known):
            assert r["get"] == (0, ()) and r["acks"] == [3357] * 3 and r["release"] == "Rlre"
    assert len(readings) == 5 * 3 * 3
    # The same measurement sent again in a later session (a new DeviceClock each time) is the same outbox
    # item: Reading.key leaves the clock out. 5 kinds x 3 distinct reports.
    assert counts["queued"] == 5 * 3
    by_kind = {r.device.model: r for r in readings}
    for kind, k in KINDS.items():
        r = by_kind[k.model]
        assert [(m.code, None if m.value is None else str(m.value), m.unit) + (
            (tuple((c.code, str(c.value)) for c in m.components),) if m.components else ())
            for m in r.metrics] == EXPECTED[kind]
        assert r.device.system_id == k.system_id and r.metrics[0].time.utcoffset() == timedelta(hours=1)


def test_pulse_oximeter_with_grouped_reports_full_sessions(tmp_path):
    from ieee11073_agent import GROUP_SCANS

    readings = []
    settings = ManagerSettings(PATIENT, utc_offset=timedelta(hours=1), on_reading=readings.append)

    async def scenario(port):
        return [await session("127.0.0.1", port, Agent("pulse_oximeter", grouped=stamp), reports=2)
                for stamp in ("abs", "bo", "rel")]

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        results = asyncio.run(_with_manager(outbox, settings, scenario))
    for r in results:
        assert r["aare"] == 3 and r["config_result"] == 0 and r["acks"] == [3370] * 2 and r["release"] == "Rlre"
    assert len(readings) == 3 * 2 * GROUP_SCANS
    for r in readings:
        assert [(m.code, str(m.value), m.unit) for m in r.metrics] == EXPECTED["pulse_oximeter"]
    abs_times = [m.time for r in readings[:2 * GROUP_SCANS] for m in r.metrics]
    bo_times = [m.time for r in readings[2 * GROUP_SCANS:4 * GROUP_SCANS] for m in r.metrics]
    assert abs_times == bo_times and abs_times[0].utcoffset() == timedelta(hours=1)
    assert all(m.time_digits == 3 for r in readings[4 * GROUP_SCANS:] for m in r.metrics)  # relative: placed


def test_acknowledged_only_after_enqueue(tmp_path):
    order = []

    class SlowOutbox:
        def stored_keys(self, destinations, keys):
            return set()

        def enqueue(self, destinations, items, state=None):
            import time

            time.sleep(0.2)
            order.append("enqueued")
            return list(range(len(items)))

    async def scenario(port):
        agent = Agent("thermometer")
        reader, writer = await associated(port, agent)
        writer.write(agent.measurement(0)[1])
        await read_apdu(reader)
        order.append("acknowledged")
        writer.close()

    asyncio.run(_with_manager(SlowOutbox(), ManagerSettings(PATIENT), scenario))
    assert order == ["enqueued", "acknowledged"]


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n", bytes.fromhex("e7000010000e"),
                                     bytes.fromhex("e2000004deadbeef"), b"\xe7\x00\x00"])
def test_garbage_ends_in_abort_or_close_never_a_hang(tmp_path, garbage):
    settings = ManagerSettings(PATIENT, timeouts=Timeouts(partial=0.3))

    async def scenario(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(garbage)
        answer = await read_apdu(reader, timeout=5)
        rest = await asyncio.wait_for(reader.read(), 5)  # the manager closes the connection
        writer.close()
        return answer, rest

    with Outbox(tmp_path / "o.sqlite") as outbox:
        answer, rest = asyncio.run(_with_manager(outbox, settings, scenario))
    assert isinstance(answer, Abrt) and rest == b""


@pytest.mark.peers
def test_readings_reach_the_fhir_server_through_the_queue(gate, oauth, tmp_path):
    from phg.daemon import deliver
    from test_flow_fhir import make_config, matches

    config = make_config(tmp_path, gate.base_url, oauth)
    patient = PatientRef("urn:oid:1.2.3.4.5", f"pt-{uuid.uuid4().hex[:12]}")
    readings = []
    settings = ManagerSettings(patient, utc_offset=timedelta(hours=1), on_reading=readings.append)

    async def scenario(port):
        for kind in KINDS:
            await session("127.0.0.1", port, Agent(kind, extended=kind == "scale"), reports=2)

    with Outbox(config.outbox_path) as outbox:
        asyncio.run(_with_manager(outbox, settings, scenario))
        summary = asyncio.run(deliver(config, outbox, until_idle=True))
        assert (summary.delivered, summary.dead) == (10, 0)
    assert len(readings) == 10
    assert [matches(gate.upstream, r, m) for r in readings for m in r.metrics] == [1] * sum(
        len(r.metrics) for r in readings)
    assert httpx  # the server is queried through test_flow_fhir.matches
