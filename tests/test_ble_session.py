"""The gateway's Bluetooth session end to end: bleak's public API on the Bumble backend, against the
emulated devices on a fresh virtual link per test, into a real SQLite outbox.

Proof for issue #3: the right codes, units, precision and times for each device type; RACP fetches
only what is new; a link lost after record 7 of 20 loses nothing and doubles nothing; a device that
needs bonding is bonded once; a malformed notification is skipped; several devices at once; and
(marked peers) the glucose readings reach the FHIR server once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from phg.demo import emulator as emu
from phg.intake import Intake
from phg.model import PatientRef, parse_reading
from phg.outbox import Outbox
from phg.sources.ble.session import BleSettings, DeviceNotFound, fetch, marker_name, run_source, scan

PATIENT = PatientRef("urn:oid:1.2.3.4.5", "pt-ble")
OFFSET = timedelta(hours=1)  # the gateway's UTC offset in these tests (+01:00)
T0 = datetime(2026, 11, 28, 8, 0)  # device wall-clock times (local, naive)


def readings(outbox: Outbox) -> list:
    return [parse_reading(json.loads(i.payload)) for i in outbox.items(destination="fhir", limit=1000)]


def glucose_values(outbox: Outbox) -> list[str]:
    return [str(r.metrics[0].value) for r in readings(outbox)]


def meter_with(n: int, **kwargs) -> emu.GlucoseMeter:
    """A meter whose record k has the value 100 + k mg/dL, 30 minutes apart from T0."""
    meter = emu.GlucoseMeter(**kwargs)
    meter.add_records([Decimal(100 + k) for k in range(1, n + 1)], T0)
    return meter


async def collect(radio: emu.EmulatedLink, outbox: Outbox, address: str, **kwargs):
    return await fetch(address, intake=Intake(outbox, ["fhir"]), patient=PATIENT, backend=radio.backend,
                       timeout=5, idle_timeout=2, utc_offset=OFFSET, **kwargs)


# ------------------------------------------------------------------------------------- device types


def test_each_device_type_end_to_end(tmp_path):
    devices = emu.demo_devices(datetime(2026, 11, 28, 10, 0))

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink(devices) as radio:
            return [await collect(radio, outbox, d.address) for d in devices]

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        results = asyncio.run(scenario(outbox))
        got = readings(outbox)
    assert [(r.profile, r.readings, r.complete) for r in results] == [
        ("glucose", 5, True), ("blood_pressure", 1, True), ("scale", 1, True), ("thermometer", 1, True),
        ("pulse_oximeter", 1, True)]

    by_model = {r.device.model: r for r in got if r.device.model != "Emu Glucose Meter"}
    glucose = [r for r in got if r.device.model == "Emu Glucose Meter"]

    first = glucose[0]
    assert first.device.system_id == "0A1B2C3D4E5F6001" and first.device.bt_address == "C0-00-00-00-18-08"
    assert (first.device.manufacturer, first.device.serial, first.device.firmware) == ("phg emulator", "EMU-GL-1", "1.0.0")
    assert [s.code for s in first.device.specializations] == [528401]
    assert [(m.code, str(m.value), m.unit, m.time.isoformat()) for r in glucose for m in r.metrics[:1]] == [
        (160184, v, "mg/dL", f"2026-11-28T{h}+01:00") for v, h in
        zip(("98", "132", "117", "105", "141"), ("08:00:00", "08:30:00", "09:00:00", "09:30:00", "10:00:00"), strict=True)]
    assert first.clock is not None and first.clock.device_time is not None
    # the device's local wall clock (CTS) with the gateway's offset attached; the emulator's clock is our local time
    assert first.clock.device_time.utcoffset() == OFFSET
    assert abs(first.clock.device_time.replace(tzinfo=None) - datetime.now()) < timedelta(seconds=5)

    bp = by_model["Emu BP Cuff"]
    assert bp.device.specializations[0].code == 528391
    assert [(c.code, str(c.value), c.unit) for c in bp.metrics[0].components] == [
        (150021, "128", "mm[Hg]"), (150022, "82", "mm[Hg]"), (150023, "97", "mm[Hg]")]
    assert (bp.metrics[0].code, bp.metrics[1].code, str(bp.metrics[1].value), bp.metrics[1].unit) == (
        150020, 149546, "71", "/min")
    assert bp.metrics[0].time.isoformat() == "2026-11-28T09:40:00+01:00"

    scale = by_model["Emu Scale"]
    assert scale.device.specializations[0].code == 528399
    assert [(m.code, str(m.value), m.unit) for m in scale.metrics] == [
        (188736, "72.400", "kg"), (188740, "172.0", "cm"), (188752, "24.5", "kg/m2")]

    thermo = by_model["Emu Thermometer"]
    assert thermo.device.specializations[0].code == 528392
    assert [(m.code, str(m.value), m.unit, m.time.isoformat()) for m in thermo.metrics] == [
        (188424, "36.85", "Cel", "2026-11-28T09:50:00+01:00")]  # mouth: MDC_TEMP_ORAL

    ox = by_model["Emu Pulse Oximeter"]
    assert ox.device.specializations[0].code == 528388
    assert [(m.code, str(m.value), m.unit) for m in ox.metrics] == [(150456, "97", "%"), (149530, "68", "/min")]


def test_scan_lists_health_devices_with_their_services():
    async def scenario():
        async with emu.EmulatedLink(emu.demo_devices()) as radio:
            return await scan(0.3, backend=radio.backend)

    entries = asyncio.run(scenario())
    assert [(e.address, e.name, e.profiles) for e in entries] == [
        ("C0:00:00:00:18:08", "Emu Glucose", ["glucose"]), ("C0:00:00:00:18:09", "Emu Thermo", ["thermometer"]),
        ("C0:00:00:00:18:10", "Emu BP", ["blood_pressure"]), ("C0:00:00:00:18:1D", "Emu Scale", ["scale"]),
        ("C0:00:00:00:18:22", "Emu PulseOx", ["pulse_oximeter"])]


# ------------------------------------------------------------------------------------- glucose RACP


def test_glucose_fetches_only_new_records(tmp_path):
    meter = meter_with(20)

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([meter]) as radio:
            first = await collect(radio, outbox, meter.address)
            assert (first.readings, first.last_seq, first.complete) == (20, 20, True)
            assert outbox.source_state(marker_name(meter.address)) == "20"
            nothing = await collect(radio, outbox, meter.address)
            assert (nothing.readings, nothing.last_seq, nothing.complete) == (0, 20, True)
            meter.add_records([Decimal(121), Decimal(122), Decimal(123)], T0 + timedelta(days=1))
            sent_before = meter.sent
            second = await collect(radio, outbox, meter.address)
            assert (second.readings, second.last_seq, meter.sent - sent_before) == (3, 23, 3)

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        asyncio.run(scenario(outbox))
        assert glucose_values(outbox) == [str(100 + k) for k in range(1, 24)]
        assert outbox.source_state(marker_name(meter.address)) == "23"


def test_link_lost_after_record_7_loses_nothing_and_doubles_nothing(tmp_path):
    meter = meter_with(20)
    meter.drop_after = 7

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([meter]) as radio:
            broken = await collect(radio, outbox, meter.address)
            assert (broken.readings, broken.last_seq, broken.complete) == (7, 7, False)
            assert glucose_values(outbox) == [str(100 + k) for k in range(1, 8)]
            assert outbox.source_state(marker_name(meter.address)) == "7"
            resumed = await collect(radio, outbox, meter.address)
            assert (resumed.readings, resumed.last_seq, resumed.complete) == (13, 20, True)

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        asyncio.run(scenario(outbox))
        values = glucose_values(outbox)
        assert values == [str(100 + k) for k in range(1, 21)]  # 20 distinct, in order, none twice
        assert meter.sent == 20  # and the meter sent each record once
        assert outbox.source_state(marker_name(meter.address)) == "20"


def test_malformed_notification_is_logged_and_skipped(tmp_path, caplog):
    meter = meter_with(10)
    meter.garbage_after = 3

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([meter]) as radio:
            return await collect(radio, outbox, meter.address)

    with caplog.at_level(logging.WARNING, logger="phg.sources.ble.session"):
        with Outbox(tmp_path / "outbox.sqlite") as outbox:
            result = asyncio.run(scenario(outbox))
            assert (result.readings, result.skipped, result.last_seq, result.complete) == (10, 1, 10, True)
            assert glucose_values(outbox) == [str(100 + k) for k in range(1, 11)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "0x2A18" in warnings[0] and "1f01" not in warnings[0]


# ------------------------------------------------------------------------------------- bonding


def test_bonding_device_is_bonded_once_then_reconnects_without_pairing(tmp_path, caplog):
    meter = meter_with(2, bonding=True)

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([meter]) as radio:
            first = await collect(radio, outbox, meter.address)
            meter.add_records([Decimal(103)], T0 + timedelta(days=1))
            second = await collect(radio, outbox, meter.address)
            central_bonds = [name for name, _ in await radio.central.keystore.get_all()]
            return first, second, central_bonds, await meter.bonds()

    with caplog.at_level(logging.INFO, logger="phg.sources.ble.session"):
        with Outbox(tmp_path / "outbox.sqlite") as outbox:
            first, second, central_bonds, meter_bonds = asyncio.run(scenario(outbox))
            assert glucose_values(outbox) == ["101", "102", "103"]
    assert (first.readings, second.readings) == (2, 1)
    assert central_bonds == [meter.address] and meter_bonds == [emu.EmulatedLink().central_address]
    assert sum("requires pairing" in r.getMessage() for r in caplog.records) == 1


def test_bonding_device_without_permission_to_pair_fails_cleanly(tmp_path):
    meter = meter_with(1, bonding=True)

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([meter]) as radio:
            await collect(radio, outbox, meter.address, pair=False)

    from bleak.exc import BleakGATTProtocolError

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        with pytest.raises(BleakGATTProtocolError):
            asyncio.run(scenario(outbox))
        assert outbox.counts()["queued"] == 0


# ------------------------------------------------------------------------------------- errors, many devices


def test_device_not_in_range(tmp_path):
    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([]) as radio:
            await fetch("C0:00:00:00:99:99", intake=Intake(outbox, ["fhir"]), patient=PATIENT,
                        backend=radio.backend, timeout=0.3)

    with Outbox(tmp_path / "outbox.sqlite") as outbox, pytest.raises(DeviceNotFound):
        asyncio.run(scenario(outbox))


def test_run_source_collects_from_several_devices_at_once_and_survives_a_lost_link(tmp_path):
    devices = emu.demo_devices(datetime(2026, 11, 28, 10, 0))
    meter = devices[0]
    assert isinstance(meter, emu.GlucoseMeter)
    meter.add_records([Decimal(100 + k) for k in range(15)], T0)  # 20 records in all
    meter.drop_after = 7
    settings = BleSettings(allow=tuple(d.address for d in devices) + ("C0:00:00:00:99:99",), pair_new=False,
                           patient=PATIENT, scan_seconds=0.15, rest_seconds=0.05, retry_seconds=0.2)
    stranger = emu.Thermometer(address="C0:00:00:00:77:77", measurements=[emu.Temperature(T0, Decimal("37.0"))])

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([*devices, stranger]) as radio:
            stop = asyncio.Event()
            source = asyncio.create_task(run_source(settings, intake=Intake(outbox, ["fhir"]), stop=stop,
                                                    backend=radio.backend, utc_offset=OFFSET))
            for _ in range(200):
                if outbox.counts()["queued"] >= 24:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # nothing more should come
            stop.set()
            await asyncio.wait_for(source, 5)

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        asyncio.run(scenario(outbox))
        got = readings(outbox)
        assert outbox.source_state(marker_name(meter.address)) == "20"
    models = sorted(r.device.model for r in got)
    assert models.count("Emu Glucose Meter") == 20 and len(got) == 24  # 20 + one each of the other four
    assert "Emu Thermometer" in models and all(r.device.bt_address != "C0-00-00-00-77-77" for r in got)  # not allowed
    assert meter.sent == 20


# ------------------------------------------------------------------------------------- to the FHIR server


@pytest.mark.peers
def test_glucose_readings_reach_the_fhir_server_once(gate, oauth, tmp_path):
    import httpx

    from phg.auth import generate_key, jwks, load_key
    from phg.config import DEFAULT_SCOPE, load_config
    from phg.daemon import deliver
    from phg.fhir import conditional_identifier

    key_file = tmp_path / "gateway.pem"
    generate_key(key_file, "ES384")
    client = oauth.register_client(jwks([load_key(key_file)]), scope=DEFAULT_SCOPE)
    config = load_config(env={}, document={
        "gateway": {"system_id": "02AB7FFFFE00C1C1", "serial": "TEST-GW"}, "fhir": {"base_url": gate.base_url},
        "auth": {"client_id": client["client_id"], "key_file": str(key_file), "scope": DEFAULT_SCOPE},
        "outbox": {"path": str(tmp_path / "o.sqlite")}})
    patient = PatientRef("urn:oid:1.2.3.4.5", f"pt-{uuid.uuid4().hex[:12]}")
    meter = meter_with(6)
    meter.drop_after = 4  # and a lost link on the way, for good measure

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([meter]) as radio:
            for _ in range(2):
                await fetch(meter.address, intake=Intake(outbox, ["fhir"]), patient=patient,
                            backend=radio.backend, timeout=5, idle_timeout=2, utc_offset=OFFSET)
        return await deliver(config, outbox, until_idle=True)

    with Outbox(config.outbox_path) as outbox:
        summary = asyncio.run(scenario(outbox))
        assert (summary.delivered, summary.dead) == (6, 0)
        got = readings(outbox)

    def matches(reading, metric) -> int:
        system, value = conditional_identifier(reading, metric)
        bundle = httpx.get(f"{gate.upstream}/Observation", params={"identifier": f"{system}|{value}"},
                           headers={"Accept": "application/fhir+json"}, timeout=30).raise_for_status().json()
        return len([e for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"])

    assert [matches(r, m) for r in got for m in r.metrics[:1]] == [1] * 6
    assert Path(config.outbox_path).exists()


async def test_no_device_is_read_while_the_outbox_cannot_store(tmp_path):
    """A device without RACP forgets what the stack confirmed: with a broken outbox, don't collect."""
    from phg.demo.emulator import EmulatedLink, demo_devices
    from phg.errors import StorageError
    from phg.sources.ble.session import BleSettings, run_source

    class FullOutbox:
        calls = 0

        def enqueue(self, destinations, items, state=None):
            FullOutbox.calls += 1
            raise StorageError("disk is full", "outbox.sqlite")

    devices = demo_devices()
    cuff = devices[1]
    settings = BleSettings(allow=(cuff.address,), pair_new=False, patient=PatientRef("urn:oid:1.2", "p"),
                           scan_seconds=0.2, rest_seconds=0.1, retry_seconds=0.2)
    async with EmulatedLink(devices) as radio:
        stop = asyncio.Event()
        task = asyncio.create_task(run_source(settings, intake=Intake(FullOutbox(), ["fhir"]), stop=stop,
                                              backend=radio.backend))
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait_for(task, 5)
    assert FullOutbox.calls >= 2  # it kept checking
    assert len(cuff.measurements) == 1  # nothing was taken from the cuff


def test_measurements_received_together_without_time_stamps_are_each_sent():
    """Review B finding 1: a cuff uploading stored measurements without the Time Stamp flag, a glucose meter whose
    Base Time is unknown, heart rate notifications: each takes its time of reception, which (stamped to the
    second) gave two readings of one second one PHD IG 2.0.0 identifier, and all but the first were folded into it.
    Receptions are now kept 10 ms apart (IG 1.1.0's hundredths), with milliseconds: every measurement its own
    Observation."""
    from phg.fhir import build_transaction
    from phg.model import Device, Gateway
    from phg.sources.ble.session import Collector

    collector = Collector(Device(bt_address="00-E5-DE-AD-77-C3"), PatientRef("urn:oid:1.2.3.4", "pt-001"), None,
                          timedelta(hours=1))
    for systolic, diastolic, pulse in ((0x78, 0x50, 0x40), (0x8C, 0x5A, 0x48), (0xA0, 0x64, 0x50)):
        collector.feed(0x2A35, bytes([0x04, systolic, 0, diastolic, 0, 0xFF, 0x07, pulse, 0]))  # no Time Stamp
    for sequence, value in ((1, 0x78), (2, 0x96), (3, 0xB4)):  # Base Time 0000-00-00: unknown
        collector.feed(0x2A18, bytes([0x02, sequence, 0]) + bytes(7) + bytes([value, 0xB0, 0x11]))
    for bpm in (72, 90, 72):
        collector.feed(0x2A37, bytes([0x00, bpm]))
    readings = collector.take()
    assert len(readings) == 9
    times = [m.time for r in readings for m in r.metrics if m.code in (150020, 160184, 147842)]
    assert times == sorted(set(times)) and all(later - earlier >= timedelta(milliseconds=10)
                                               for earlier, later in zip(times, times[1:], strict=False))
    for version in ("2.0.0", "1.1.0"):
        transaction = build_transaction(readings, Gateway(system_id="0011223344556677"), version)
        per_reading = [frozenset(entries) for entries in transaction.reading_entries]
        assert len(set(per_reading)) == 9 and all(not a & b for a in per_reading for b in per_reading if a is not b)


def test_a_heart_rate_sensor_streams_and_each_beat_is_stored_as_its_own_reading(tmp_path):
    """A heart rate sensor (0x180D) was decoded but never subscribed to. Its notifications, without time stamps, are
    stored as they arrive, each at its time of reception, with the heart-rate sub-specialization (11073-10406,
    528525) on the device; the session ends with the link."""
    from phg.fhir import build_transaction, conditional_identifier
    from phg.model import RECEIVED, Gateway

    monitor = emu.HeartRateMonitor(measurements=[72, 90, 72, 75])

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([monitor]) as radio:
            return await collect(radio, outbox, monitor.address)

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        result = asyncio.run(scenario(outbox))
        stored = [parse_reading(json.loads(item.payload)) for item in outbox.items(destination="fhir", limit=10)]
    assert (result.profile, result.readings, monitor.measurements) == ("heart_rate", 4, [])
    assert [str(r.metrics[0].value) for r in stored] == ["72", "90", "72", "75"]
    assert all(r.metrics[0].code == 147842 and r.metrics[0].stamp.kind == RECEIVED for r in stored)
    assert {s.code for r in stored for s in r.device.specializations} == {528525}
    assert len({conditional_identifier(r, r.metrics[0]) for r in stored}) == 4
    bundle = build_transaction(stored, Gateway(system_id="0011223344556677")).bundle
    assert sum(e["resource"]["resourceType"] == "Observation" and e["resource"]["code"]["coding"][0]["code"] == "147842"
               for e in bundle["entry"]) == 4


def test_a_body_composition_measurement_in_two_halves_is_one_reading():
    """BCS 1.0 section 3.2.1: a value longer than the ATT MTU comes as two indications, each with the body fat
    percentage: the Collector takes them as one measurement (its body fat once), not as two readings."""
    from phg.model import Device
    from phg.sources.ble.session import Collector

    collector = Collector(Device(bt_address="00-E5-DE-AD-77-C4"), PATIENT, None, timedelta(hours=1))
    collector.feed(0x2A9C, bytes.fromhex("4010" "5000" "e02e"))  # first half: body fat 8.0 %, fat-free mass 60 kg
    assert collector.take() == []
    collector.feed(0x2A9C, bytes.fromhex("0014" "5000" "b036"))  # second half: body fat 8.0 %, weight 70 kg
    (reading,) = collector.take()
    assert [(m.code, str(m.value)) for m in reading.metrics] == [(188748, "8.0"), (188736, "70.000")]  # fat once


def test_the_profiles_cover_every_health_service_phg_decodes():
    """Every measurement characteristic phg decodes into readings is subscribed to by some profile (heart rate, body
    composition and continuous oximetry were decoded but never collected)."""
    from phg.sources.ble.session import PROFILES

    subscribed = {uuid for p in PROFILES for uuid in p.measurements}
    assert {0x2A18, 0x2A35, 0x2A9D, 0x2A9C, 0x2A1C, 0x2A5E, 0x2A5F, 0x2AA7, 0x2A37} <= subscribed
