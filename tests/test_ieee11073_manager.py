"""The sans-I/O IEEE 11073-20601 manager: states, timeouts, aborts, readings; state-machine fuzzing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ieee11073_agent import EXPECTED, KINDS, Agent, sent
from phg.model import PatientRef
from phg.sources.ieee11073 import nomenclature as nom
from phg.sources.ieee11073.apdu import (
    Aare,
    Abrt,
    EventReportResult,
    Get,
    Prst,
    Rlre,
    Rlrq,
    decode,
    encode,
)
from phg.sources.ieee11073.configs import FileConfigStore, MemoryConfigStore
from phg.sources.ieee11073.manager import (
    Aborted,
    Associated,
    Configured,
    DeviceAttributes,
    Manager,
    Measurements,
    Released,
    State,
)
from phg.sources.ieee11073.readings import readings_of

PATIENT = PatientRef("urn:oid:1.2.3.4.5", "pt-11073")
OFFSET = timedelta(hours=1)


def associate(manager: Manager, agent: Agent, now: float = 0.0) -> list:
    events = manager.receive_data(agent.aarq(), now)
    (aare, *rest) = sent(manager)
    if aare.result == 3:
        events += manager.receive_data(agent.config_report(), now)
        rest = sent(manager)[1:]
    (get,) = rest
    assert isinstance(get.message, Get) and get.message.obj_handle == 0
    events += manager.receive_data(agent.get_response(get.invoke_id), now)
    return events


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_device_type_gives_the_right_readings(kind):
    manager, agent = Manager(), Agent(kind)
    events = associate(manager, agent)
    assert isinstance(events[0], Associated) and events[0].known_configuration
    assert isinstance(events[-1], DeviceAttributes) and events[-1].mds.model == agent.kind.model
    assert manager.state is State.OPERATING
    invoke, apdu = agent.measurement(2)
    (m,) = manager.receive_data(apdu, 1.0)
    assert isinstance(m, Measurements) and m.needs_ack
    assert manager.data_to_send() == b""  # nothing acknowledged before the readings are durable
    manager.acknowledge(m)
    (ack,) = sent(manager)
    assert ack.invoke_id == invoke and isinstance(ack.message, EventReportResult)
    received = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    (reading,) = readings_of(m, PATIENT, OFFSET, received, mds_read_at=received)
    assert reading.device.system_id == agent.kind.system_id
    assert reading.device.manufacturer == "Emulated Devices Inc" and reading.device.firmware == "2.1.0"
    assert reading.device.serial == "SN-" + agent.kind.system_id[-4:].lower()
    assert reading.device.specializations[0].code == nom.code32(8, {0x0190: 4100, 0x02BC: 4103, 0x0320: 4104,
                                                                   0x05DC: 4111, 0x06A4: 4113}[agent.kind.config_id])
    got = []
    for metric in reading.metrics:
        assert metric.time.utcoffset() == OFFSET and metric.time.replace(tzinfo=None) == datetime(2026, 11, 28, 9, 2)
        row = (metric.code, None if metric.value is None else str(metric.value), metric.unit)
        if metric.components:
            row += (tuple((c.code, str(c.value)) for c in metric.components),)
        got.append(row)
    assert got == EXPECTED[kind]
    assert reading.clock.device_time == datetime(2026, 11, 28, 9, 0, tzinfo=UTC).replace(
        tzinfo=reading.clock.device_time.tzinfo) and reading.clock.sync == 532224
    reading.to_json()  # the canonical document can be written
    assert manager.receive_data(encode(Rlrq(0)), 2.0) == [Released("agent")]
    assert isinstance(sent(manager)[0], Rlre) and manager.state is State.UNASSOCIATED


def test_unknown_configuration_is_learned_and_skipped_next_time(tmp_path):
    store = FileConfigStore(tmp_path / "configs.json")
    manager, agent = Manager(store=store), Agent("scale", extended=True)
    events = associate(manager, agent)
    assert [type(e) for e in events] == [Associated, Configured, DeviceAttributes]
    assert not events[0].known_configuration
    store.flush()  # what the transports do off the event loop after a Configured event
    # a fresh manager reading the same store accepts the same agent straight away
    manager2 = Manager(store=FileConfigStore(tmp_path / "configs.json"))
    manager2.receive_data(agent.aarq(), 0.0)
    assert sent(manager2)[0].result == 0
    # but a different agent with the same configuration id must configure
    other = Agent("scale", extended=True, system_id="1122334455667788")
    manager2.receive_data(encode(Rlrq(0)), 0.0)
    manager2.receive_data(other.aarq(), 0.0)
    assert [a.result for a in sent(manager2) if isinstance(a, Aare)] == [3]


def test_configuration_timeout_aborts():
    manager, agent = Manager(), Agent("glucose", extended=True)
    manager.receive_data(agent.aarq(), 0.0)
    assert manager.state is State.CONFIGURING and manager.deadline == 10.0
    assert manager.tick(9.9) == []
    (ev,) = manager.tick(10.0)
    assert isinstance(ev, Aborted) and "configuration" in ev.reason
    assert sent(manager)[-1] == Abrt(3) and manager.state is State.UNASSOCIATED


def test_get_timeout_aborts_and_reports_are_held_until_the_mds_answers():
    manager, agent = Manager(), Agent("thermometer")
    manager.receive_data(agent.aarq(), 0.0)
    (_, get) = sent(manager)
    _, report = agent.measurement(0)
    assert manager.receive_data(report, 0.5) == []  # held: the device's identity is not known yet
    events = manager.receive_data(agent.get_response(get.invoke_id), 1.0)
    assert [type(e) for e in events] == [DeviceAttributes, Measurements]
    manager2 = Manager()
    manager2.receive_data(agent.aarq(), 0.0)
    (ev,) = manager2.tick(3.0)
    assert isinstance(ev, Aborted) and "GET" in ev.reason


def test_measurement_before_configuration_aborts():
    manager, agent = Manager(), Agent("pulse_oximeter", extended=True)
    manager.receive_data(agent.aarq(), 0.0)
    (ev,) = manager.receive_data(agent.measurement(0)[1], 0.1)
    assert isinstance(ev, Aborted) and "before the configuration" in ev.reason


def test_unknown_handle_in_a_report_aborts():
    manager, agent = Manager(), Agent("pulse_oximeter")
    associate(manager, agent)
    manager.data_to_send()
    bad = bytearray(agent.measurement(0)[1])
    at = bad.index(bytes.fromhex("000a000a"))  # handle 10, 10 bytes
    bad[at + 1] = 0x0B
    (ev,) = manager.receive_data(bytes(bad), 0.2)
    assert isinstance(ev, Aborted) and "object 11" in ev.reason and sent(manager) == [Abrt(0)]


def test_garbage_and_truncation_abort():
    manager = Manager()
    (ev,) = manager.receive_data(b"HTTP/1.1 200 OK\r\n", 0.0)
    assert isinstance(ev, Aborted) and "not an APDU" in ev.reason
    manager = Manager()
    assert manager.receive_data(Agent("scale").aarq()[:20], 0.0) == []
    assert manager.deadline == 5.0
    (ev,) = manager.tick(5.0)
    assert "incomplete" in ev.reason


def test_chunked_input_and_manager_release():
    manager, agent = Manager(), Agent("blood_pressure")
    data = agent.aarq()
    events = []
    for i in range(len(data)):
        events += manager.receive_data(data[i:i + 1], 0.0)
    assert isinstance(events[0], Associated)
    (_, get) = sent(manager)
    manager.receive_data(agent.get_response(get.invoke_id), 0.0)
    manager.release(1.0)
    assert sent(manager) == [Rlrq(0)] and manager.state is State.DISASSOCIATING
    assert manager.receive_data(encode(Rlre(0)), 1.5) == [Released("manager")]
    manager.receive_data(agent.aarq(), 2.0)
    manager.data_to_send()
    manager.release(3.0)
    (ev,) = manager.tick(6.0)
    assert isinstance(ev, Aborted) and "RLRE" in ev.reason


def test_unconfirmed_report_needs_no_ack_and_specials_map_to_status():
    manager, agent = Manager(), Agent("glucose")
    associate(manager, agent)
    manager.data_to_send()
    import ieee11073_agent as emu
    from ieee11073_agent import Kind

    nan = Kind(0x06A4, agent.kind.system_id, "x", ((1, bytes.fromhex("07ff")),))
    emu.KINDS["nan-glucose"] = nan
    try:
        _, apdu = Agent("nan-glucose").measurement(0, confirmed=False)
    finally:
        del emu.KINDS["nan-glucose"]
    (m,) = manager.receive_data(apdu, 0.0)
    assert not m.needs_ack
    manager.acknowledge(m)
    assert manager.data_to_send() == b""
    (r,) = readings_of(m, PATIENT, OFFSET, datetime.now(UTC))
    assert r.metrics[0].value is None and r.metrics[0].status == ("not-available",)


def test_relative_time_is_placed_on_the_gateway_timeline():
    from phg.sources.ieee11073.manager import MdsInfo, Observation
    from phg.sources.ieee11073.mder import decode_sfloat
    from phg.sources.ieee11073.readings import metric_of

    read_at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    mds = MdsInfo("0102030405060708", time_rel=8000 * 100)
    obs = Observation(1, 150364, 6048, value=decode_sfloat(0xF170), time=("rel", 8000 * 40))
    metric = metric_of(obs, mds, OFFSET, read_at, read_at)
    assert metric.time == read_at - timedelta(seconds=60) and metric.value == Decimal("36.8")


# ------------------------------------------------------------------------------------ fuzzing

def _apdus_of(kind: str) -> list[bytes]:
    agent = Agent(kind, extended=True)
    return [agent.aarq(), agent.config_report(), agent.get_response(1), agent.measurement(0)[1],
            agent.measurement(1, confirmed=False)[1], encode(Rlrq(0)), encode(Rlre(0)), encode(Abrt(0)),
            encode(Prst(7, Get(0, ()))), encode(Aare(0, decode(Agent(kind).aarq()).protocols[0]))]


def _grouped_apdus(stamp: str) -> list[bytes]:
    agent = Agent("pulse_oximeter", grouped=stamp)
    return [agent.aarq(), agent.config_report(), agent.get_response(1), agent.measurement(0)[1],
            agent.grouped_report(1, confirmed=False, person_id=2)[1]]


POOL = [a for k in KINDS for a in _apdus_of(k)] + [a for stamp in ("abs", "bo", "rel") for a in _grouped_apdus(stamp)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(POOL), st.binary(max_size=40),
                          st.tuples(st.sampled_from(POOL), st.integers(0, 200), st.integers(0, 255)).map(
                              lambda t: t[0][:t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1:])),
                max_size=12),
       st.lists(st.floats(0, 20), max_size=12))
def test_fuzz_state_machine(chunks, gaps):
    manager = Manager()
    now = 0.0
    for i, chunk in enumerate(chunks):
        now += gaps[i] if i < len(gaps) else 0.1
        for ev in manager.tick(now) + manager.receive_data(chunk, now):
            if isinstance(ev, Aborted):
                assert ev.reason
            if isinstance(ev, Measurements):  # whatever the manager accepts becomes readings without raising
                for reading in readings_of(ev, PATIENT, OFFSET, datetime.now(UTC), datetime.now(UTC)):
                    reading.to_json()
                manager.acknowledge(ev)
        for apdu in sent(manager):  # whatever the manager says is well formed
            assert encode(apdu)
    # never stuck: every waiting state has a deadline, and time resolves it
    if manager.state not in (State.UNASSOCIATED, State.OPERATING) or manager._buffer:
        assert manager.deadline is not None
        manager.tick(manager.deadline + 0.001)
        manager.tick(now + 1000)
        assert manager.state in (State.UNASSOCIATED, State.OPERATING)
    if manager.state is State.OPERATING and manager._get_invoke is not None:
        manager.tick(now + 1000)
        assert manager.state is State.UNASSOCIATED


def test_memory_store_is_per_agent():
    store = MemoryConfigStore()
    assert store.get("A", 0x4000) is None


# ------------------------------------------------------------------------------------ grouped scan reports

def _grouped_measurements(agent: Agent, report: bytes) -> Measurements:
    manager = Manager()
    events = associate(manager, agent)
    assert isinstance(events[1], Configured) and events[1].configuration.objects[40].handle_map
    (m,) = manager.receive_data(report, 1.0)
    assert isinstance(m, Measurements), m
    return m


@pytest.mark.parametrize("stamp", ["abs", "bo", "rel"])
@pytest.mark.parametrize("persons", [False, True])
def test_grouped_reports_of_a_periodic_scanner_give_spo2_and_pulse_readings(stamp, persons):
    from ieee11073_agent import GROUP_PERIOD_S, GROUP_SCANS

    agent = Agent("pulse_oximeter", grouped=stamp)
    invoke, report = agent.grouped_report(2, person_id=7 if persons else None)
    m = _grouped_measurements(agent, report)
    assert m.needs_ack and m.report.obj_handle == 40
    assert m.report.event_type == (nom.NOTI_BUF_SCAN_REPORT_MP_GROUPED if persons else nom.NOTI_BUF_SCAN_REPORT_GROUPED)
    received = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)
    readings = readings_of(m, PATIENT, OFFSET, received, mds_read_at=received)
    assert len(readings) == GROUP_SCANS  # one Reading per scan
    for k, reading in enumerate(readings):
        assert [(x.code, str(x.value), x.unit) for x in reading.metrics] == EXPECTED["pulse_oximeter"]
        assert {x.status for x in reading.metrics} == {()}
        after = timedelta(minutes=2, seconds=k * GROUP_PERIOD_S)
        for metric in reading.metrics:
            if stamp == "rel":  # placed on the gateway's timeline: MDS Relative-Time read at `received`
                assert metric.time == received + after and metric.time_digits == 3
            else:  # abs: local time + gateway offset; bo: the device's own offset (also +01:00 here)
                assert metric.time == datetime(2026, 11, 28, 9, 0, tzinfo=timezone(OFFSET)) + after
                assert metric.time.utcoffset() == OFFSET
        reading.to_json()
    assert {o.person_id for o in m.observations} == ({7} if persons else {None})


def test_grouped_report_in_a_tcp_style_session_is_acknowledged():
    agent = Agent("pulse_oximeter", grouped="abs")
    manager = Manager()
    associate(manager, agent)
    sent(manager)
    invoke, report = agent.measurement(0)
    (m,) = manager.receive_data(report, 1.0)
    manager.acknowledge(m)
    (ack,) = sent(manager)
    assert ack.invoke_id == invoke and ack.message.event_type == nom.NOTI_BUF_SCAN_REPORT_GROUPED
    assert ack.message.obj_handle == 40


def test_grouped_report_from_a_non_scanner_or_of_the_wrong_length_aborts():
    agent = Agent("pulse_oximeter", grouped="rel")
    manager = Manager()
    associate(manager, agent)
    sent(manager)
    _, report = agent.grouped_report(0)
    wrong_handle = bytearray(report)
    at = wrong_handle.index(bytes.fromhex("0028ffffffff"))
    wrong_handle[at + 1] = 0x01  # the SpO2 metric, not the scanner
    (ev,) = manager.receive_data(bytes(wrong_handle), 1.0)
    assert isinstance(ev, Aborted) and "no scanner" in ev.reason
    import ieee11073_agent as emu

    short = emu.KINDS["pulse_oximeter"]
    for value, reason in ((b"\x00", "truncated attribute 2449 of object 10 in a grouped report"),
                          (b"\x00\x62\x00", "disagrees with the scanner's Scan-Handle-Attr-Val-Map")):
        emu.KINDS["po-bad"] = type(short)(short.config_id, short.system_id, short.model, ((1, value), (10, b"\x00\x48")))
        try:
            _, bad = Agent("po-bad", grouped="rel").grouped_report(0)
        finally:
            del emu.KINDS["po-bad"]
        manager = Manager()
        associate(manager, agent)
        (ev,) = manager.receive_data(bad, 1.0)
        assert isinstance(ev, Aborted) and reason in ev.reason, ev


def test_scanner_mapping_an_unknown_object_is_an_unsupported_configuration():
    from phg.sources.ieee11073.apdu import AVA, ConfigObject, ConfigReport, config_report_bytes, handle_attr_val_map_bytes
    from phg.sources.ieee11073.apdu import EventReport as Er

    agent = Agent("pulse_oximeter", grouped="abs")
    cfg = decode(agent.config_report()).message
    report = ConfigReport(agent.config_id, (*decode_config(cfg.info).objects[:2], ConfigObject(19, 40, (
        AVA(nom.ATTR_SCAN_HANDLE_ATTR_VAL_MAP, handle_attr_val_map_bytes(((99, ((nom.ATTR_NU_VAL_OBS_BASIC, 2),)),))),))))
    manager = Manager()
    manager.receive_data(agent.aarq(), 0.0)
    sent(manager)
    manager.receive_data(encode(Prst(5, Er(0, 0xFFFFFFFF, nom.NOTI_CONFIG, config_report_bytes(report)))), 0.1)
    (rsp,) = sent(manager)
    assert rsp.message.reply_info[2:4] == b"\x00\x01" and manager.state is State.CONFIGURING  # unsupported-config


def decode_config(info: bytes):
    from phg.sources.ieee11073.apdu import decode_config_report

    return decode_config_report(info)


# signove/antidote @ 5d0cf408 tests/resources/apdu/pulse_oximeter/description: the byte-by-byte annotation of its
# grouped reports, transcribed here (the binary files are not in the shared samples). All are laid out by the
# scanners of the shared sample ant-po-config-scanner (configuration 0x4000): episodic scanner 55 maps SpO2 (1) and
# pulse rate (10) as value + Absolute-Time-Stamp; periodic scanner 40 maps SpO2 (1) as value + Measurement-Status +
# Absolute-Time-Stamp, pulse rate (10) and fast SpO2 (3) as a bare value. "Buf Scan Report MP Grouped" is left out:
# its APDU length (0x0030) disagrees with its own octet string (0x002C + 2).
SPO2, PR, T2010, T2008 = 150456, 149530, datetime(2010, 8, 3, 10, 51, 11), datetime(2008, 7, 3, 12, 10)
ANTIDOTE_GROUPED = {
    "unbuf-grouped": ("e7000030002e000201010028" "0037ffffffff0d24001e" "f000000000010016"
                      "0014" "f3cf2010080310511100" "f3212010080310511100",
                      None, [[(SPO2, "97.5", "%", T2010), (PR, "80.1", "/min", T2010)]]),
    "unbuf-mp-grouped": ("e7000032003000020101002a" "0037ffffffff0d270020" "f000000000010018" "0001"
                         "0014" "f3cf2010080310511100" "f3212010080310511100",
                         1, [[(SPO2, "97.5", "%", T2010), (PR, "80.1", "/min", T2010)]]),
    "buf-grouped": ("e700002c002a123901000024" "0028ffffffff0d2a001a" "f000000100010012"
                    "0010" "00620000" "2008070312100000" "0049" "0062",
                    None, [[(SPO2, "98", "%", T2008), (PR, "73", "/min", None), (SPO2, "98", "%", None)]]),
}
GROUPED_EVENTS = {"MDC_NOTI_UNBUF_SCAN_REPORT_GROUPED", "MDC_NOTI_UNBUF_SCAN_REPORT_MP_GROUPED",
                  "MDC_NOTI_BUF_SCAN_REPORT_GROUPED", "MDC_NOTI_BUF_SCAN_REPORT_MP_GROUPED"}


def _shared_samples() -> dict:
    import json

    from shared_vectors import VECTORS

    return {s["id"]: s for s in json.loads((VECTORS / "ieee11073" / "samples.json").read_text())}


def _scanner_manager() -> Manager:
    """A manager that learned the shared ant-po-config-scanner configuration (0x4000) from an agent."""
    manager, agent = Manager(), Agent("pulse_oximeter", extended=True)
    assert agent.config_id == 0x4000
    manager.receive_data(agent.aarq(), 0.0)
    manager.receive_data(bytes.fromhex(_shared_samples()["ant-po-config-scanner"]["hex"]), 0.1)
    (_, _, get) = sent(manager)
    manager.receive_data(agent.get_response(get.invoke_id), 0.2)
    assert manager.state is State.OPERATING and manager.configuration.objects[40].handle_map
    return manager


def _readings_rows(m: Measurements, received: datetime) -> list:
    return [[(x.code, str(x.value), x.unit, None if x.time == received else x.time.replace(tzinfo=None))
             for x in r.metrics] for r in readings_of(m, PATIENT, OFFSET, received, mds_read_at=received)]


@pytest.mark.parametrize("name", list(ANTIDOTE_GROUPED))
def test_antidote_grouped_reports_become_readings(name):
    hexed, person, expected = ANTIDOTE_GROUPED[name]
    data = bytes.fromhex(hexed)
    assert encode(decode(data)) == data
    manager = _scanner_manager()
    (m,) = manager.receive_data(data, 1.0)
    assert isinstance(m, Measurements) and {o.person_id for o in m.observations} == {person}
    received = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)  # no time stamp in the group: time of reception
    assert _readings_rows(m, received) == expected
    fast = [o for o in m.observations if o.handle == 3]
    assert all(o.supplemental == (150580,) for o in fast)  # MDC_MODALITY_FAST, from the configuration


def test_every_shared_grouped_sample_decodes_into_readings():
    """Whatever grouped report the shared samples hold (none in the current samples.json, whose README lists
    ant-po-buf_scan_report_grouped) decodes, with its configuration, into readings with values."""
    samples = _shared_samples()
    grouped = [s for s in samples.values() if isinstance(s["decoded"], dict)
               and s["decoded"].get("event-type") in GROUPED_EVENTS and s["decoded"].get("length_ok", True)]
    for s in grouped:
        manager = _scanner_manager()
        (m,) = manager.receive_data(bytes.fromhex(s["hex"]), 1.0)
        assert isinstance(m, Measurements), (s["id"], m)
        readings = readings_of(m, PATIENT, OFFSET, datetime.now(UTC))
        assert readings and all(x.value is not None for r in readings for x in r.metrics), s["id"]


# ------------------------------------------------------------------------------------ undecodable reports

STAMP = bytes.fromhex("2026112809000000")  # Agent's clock, 2026-11-28 09:00: the stamp of measurement(0)


def feb31_report(agent: Agent, confirmed: bool = True) -> bytes:
    _, report = agent.measurement(0, confirmed)
    assert STAMP in report
    return report.replace(STAMP, bytes.fromhex("2026023109000000"))


@pytest.mark.parametrize("confirmed", [True, False])
def test_a_time_stamp_of_31_february_is_an_abort_with_its_reason(confirmed):
    """Issue 10 finding 4: the date used to pass decoding and raise while building readings, outside the
    manager; the connection dropped without ABRT and the agent sent the report again forever."""
    manager, agent = Manager(), Agent("thermometer")
    associate(manager, agent)
    sent(manager)
    (ev,) = manager.receive_data(feb31_report(agent, confirmed), 1.0)
    assert isinstance(ev, Aborted) and "Absolute-Time 2026023109000000: day is out of range for month" in ev.reason
    assert sent(manager) == [Abrt(0)] and manager.state is State.UNASSOCIATED


def test_time_stamps_must_be_dates_but_a_device_clock_without_one_is_a_time_fault():
    from phg.sources.ieee11073.apdu import ApduError, decode_attribute

    for bad in ("2026023109000000", "2026130109000000", "2026112825000000", "2026112809610000"):
        with pytest.raises(ApduError, match="Absolute-Time"):
            decode_attribute(nom.ATTR_TIME_STAMP_ABS, bytes.fromhex(bad))
    assert decode_attribute(nom.ATTR_TIME_STAMP_ABS, b"\xff" * 8).unset  # no time set: allowed
    clock = decode_attribute(nom.ATTR_TIME_ABS, bytes.fromhex("2026023109000000"))  # the MDS clock: read
    from phg.sources.ieee11073.manager import MdsInfo
    from phg.sources.ieee11073.readings import device_clock

    now = datetime.now(UTC)
    assert device_clock(MdsInfo("0102030405060708", time_abs=clock), now, OFFSET).device_time is None


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([k for k in KINDS]), st.integers(0, 7), st.integers(0, 255), st.booleans())
def test_fuzz_time_stamps_never_raise_out_of_the_manager_or_the_readings(kind, at, value, confirmed):
    """Any byte of a report's Absolute-Time stamp: readings, or an ABRT; never an exception."""
    manager, agent = Manager(), Agent(kind)
    associate(manager, agent)
    sent(manager)
    _, report = agent.measurement(0, confirmed)
    stamp = bytearray(STAMP)
    stamp[at] = value
    for ev in manager.receive_data(report.replace(STAMP, bytes(stamp)), 1.0):
        if isinstance(ev, Measurements):
            for reading in readings_of(ev, PATIENT, OFFSET, datetime.now(UTC), datetime.now(UTC)):
                reading.to_json()
        else:
            assert isinstance(ev, Aborted) and sent(manager) == [Abrt(0)]


# ------------------------------------------------------------------------------------ the configuration store

def _config(agent_id: int, config_id: int = 0x4000, extra: int = 0):
    from phg.sources.ieee11073.apdu import decode_config_report
    from phg.sources.ieee11073.configs import Configuration

    agent = Agent("scale", extended_id=config_id, extra_objects=extra, system_id=f"{agent_id:016X}")
    report = decode_config_report(decode(agent.config_report()).message.info)
    return agent.sys_id.hex().upper(), Configuration.from_report(report)


def test_store_is_bounded_by_count_per_agent_and_size_least_recently_used_first():
    from phg.sources.ieee11073.configs import StoreLimits

    store = MemoryConfigStore(StoreLimits(max_configs=3, per_agent=2, max_bytes=200))
    for i in range(4):
        store.put(*_config(i))
    assert store.get(*_key(0)) is None and all(store.get(*_key(i)) for i in (1, 2, 3))  # oldest forgotten
    store.get(*_key(1))  # used: now the most recent
    store.put(*_config(4))
    assert store.get(*_key(2)) is None and store.get(*_key(1)) is not None
    for cid in (0x4001, 0x4002, 0x4003):  # one agent, three configurations: only its two latest stay
        store.put(*_config(9, cid))
    assert [store.get(f"{9:016X}", c) is not None for c in (0x4001, 0x4002, 0x4003)] == [False, True, True]
    system_id, big = _config(7, extra=5)
    assert len(big.to_bytes()) > 200
    store.put(system_id, big)
    assert store.get(system_id, 0x4000) is None  # too large to remember (used for its association only)


def _key(i: int) -> tuple[str, int]:
    return f"{i:016X}", 0x4000


def test_file_store_appends_changes_survives_restarts_and_stays_bounded(tmp_path):
    from phg.sources.ieee11073.configs import FileConfigStore, StoreLimits

    path, limits = tmp_path / "configs.jsonl", StoreLimits(max_configs=20, per_agent=2)
    store = FileConfigStore(path, limits)
    store.put(*_config(1))
    store.flush()
    first = path.read_bytes()
    store.put(*_config(2))
    store.flush()
    assert path.read_bytes().startswith(first) and len(path.read_bytes().splitlines()) == 2  # appended
    for i in range(3, 200):
        store.put(*_config(i))
        store.flush()
    lines = path.read_text().splitlines()
    assert len(lines) <= 2 * 20 + 1  # forgotten configurations are compacted away
    again = FileConfigStore(path, limits)
    assert [again.get(*_key(i)) is not None for i in (179, 180, 199)] == [False, True, True]
    assert len(path.read_text().splitlines()) == 20


def test_file_store_reads_the_earlier_format_and_skips_damage(tmp_path):
    import json

    from phg.sources.ieee11073.configs import FileConfigStore

    system_id, config = _config(1)
    path = tmp_path / "configs.json"
    path.write_text(json.dumps({f"{system_id}/4000": config.to_bytes().hex(), "X/zz": "00"}, indent=1))
    assert FileConfigStore(path).get(system_id, 0x4000) is not None
    assert json.loads(path.read_text().splitlines()[0])["agent"] == system_id  # rewritten as JSON Lines
    with path.open("a") as f:
        f.write('{"agent": "A", "config_id": 16384, "report": "e7"}\n[1]\nnot json\n{"agent": "B"')
    store = FileConfigStore(path)
    assert store.get(system_id, 0x4000) is not None and store.get("A", 0x4000) is None
    assert len(path.read_text().splitlines()) == 1


def test_file_store_write_failure_is_logged_and_the_next_flush_rewrites(tmp_path, caplog):
    from phg.sources.ieee11073.configs import FileConfigStore

    path = tmp_path / "not-yet" / "configs.jsonl"
    store = FileConfigStore(path)
    store.put(*_config(1))
    store.flush()  # the directory does not exist: logged, not raised
    assert "configurations not saved" in caplog.text and store.get(*_key(1)) is not None
    path.parent.mkdir()
    store.put(*_config(2))
    store.flush()
    assert len(path.read_text().splitlines()) == 2 and FileConfigStore(path).get(*_key(1)) is not None


def test_undated_observations_of_two_scans_and_of_two_reports_get_distinct_receptions():
    """Two scans of one grouped report, or two reports in one instant, without time stamps: each reading its own
    time of reception (milliseconds, RECEPTION_STEP apart), so that their PHD IG identifiers differ (as Bluetooth's,
    review B finding 1); they were one identifier, and all but the first reading folded into it."""
    from phg.fhir import build_transaction
    from phg.model import RECEIVED, RECEPTION_STEP, Gateway
    from phg.sources.ieee11073.manager import MdsInfo, Observation
    from phg.sources.ieee11073.mder import decode_sfloat
    from phg.sources.ieee11073.readings import ReadingBuilder

    def report(*groups: int) -> Measurements:
        observations = tuple(Observation(1, 150364, 6048, value=decode_sfloat(0xF170), group=g) for g in groups)
        return Measurements(1, None, observations, MdsInfo("74E8FFFEFF051C00"), None, False)  # type: ignore[arg-type]

    received = datetime(2026, 11, 28, 10, 30, 0, 123456, tzinfo=UTC)
    builder = ReadingBuilder(PATIENT, OFFSET)
    readings = builder.readings(report(0, 1), received) + builder.readings(report(None), received)
    times = [r.metrics[0].time for r in readings]
    assert times == [received.replace(microsecond=123000) + RECEPTION_STEP * n for n in range(3)]
    assert all(r.metrics[0].stamp.kind == RECEIVED and r.metrics[0].time_digits == 3 for r in readings)
    for version in ("2.0.0", "1.1.0"):
        entries = build_transaction(readings, Gateway(system_id="0011223344556677"), version).reading_entries
        assert len({frozenset(e) for e in entries}) == 3, version
