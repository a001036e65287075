"""Continuous glucose monitoring over Bluetooth LE end to end: the gateway's session (bleak's public API
on the Bumble backend) against the emulated CGM sensor on a fresh virtual link per test, into a real
SQLite outbox.

Proof for issue #3 (CGM part): RACP with filter type 0x01 = Time Offset (CGMS 1.0.1) fetches all
records the first time and only the new ones later; a link lost after record 9 loses nothing and
doubles nothing, and the marker `ble:<ADDR>:cgm_offset` is committed with the readings; readings carry
MDC_CONC_GLU_ISF (160212) in mg/dL with the SFLOAT digits kept, at session start + offset in the
sensor's own time zone + DST; a record with a bad E2E-CRC is logged and skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from phg.demo import emulator as emu
from phg.errors import MappingError
from phg.intake import Intake
from phg.model import Device, PatientRef, parse_reading
from phg.outbox import Outbox
from phg.sources.ble.gatt import cgm
from phg.sources.ble.gatt.numbers import crc16_mcrf4xx
from phg.sources.ble.session import PROFILES, CgmRecords, Collector, GlucoseRecords, fetch, marker_name

PATIENT = PatientRef("urn:oid:1.2.3.4.5", "pt-cgm")
OFFSET = timedelta(hours=1)  # the gateway's UTC offset: NOT the one the CGM records are placed with
S0 = datetime(2026, 11, 28, 6, 0)  # the sensor session's start, local wall clock
SENSOR_ZONE = "+02:00"  # Time Zone +4 quarters (UTC+1) and DST +4 quarters (daylight time)
ADDRESS = "C0:00:00:00:18:1F"


def value(i: int) -> Decimal:
    """Record i (0-based): 100.0, 101.1, ... 109.9, 110.0, ...: one decimal, trailing zeros included."""
    return Decimal(f"{100 + i}.{i % 10}")


def sensor_with(n: int, **kwargs) -> emu.CgmSensor:
    sensor = emu.CgmSensor(session_start=S0, time_zone_quarters=4, dst_quarters=4, **kwargs)
    sensor.add_records([value(i) for i in range(n)])  # offsets 0, 5, 10, ... minutes
    return sensor


def readings(outbox: Outbox) -> list:
    return [parse_reading(json.loads(i.payload)) for i in outbox.items(destination="fhir", limit=1000)]


def values(outbox: Outbox) -> list[str]:
    return [str(r.metrics[0].value) for r in readings(outbox)]


def offset_marker(outbox: Outbox) -> str | None:
    return outbox.source_state(marker_name(ADDRESS, "cgm_offset"))


async def collect(radio: emu.EmulatedLink, outbox: Outbox):
    return await fetch(ADDRESS, intake=Intake(outbox, ["fhir"]), patient=PATIENT, backend=radio.backend,
                       timeout=5, idle_timeout=2, utc_offset=OFFSET)


# ------------------------------------------------------------------------------------- encoders


def test_emulator_encoders_agree_with_the_decoders():
    record = emu.CgmRecord(125, Decimal("98.5"), status=0x02 | 0x0400, trend=Decimal("-1.2"), quality=Decimal(95))
    raw = emu.cgm_record(record, e2e=True)
    assert raw[0] == len(raw) and int.from_bytes(raw[-2:], "little") == crc16_mcrf4xx(raw[:-2])
    (r,) = cgm.decode_cgm_measurement(raw).records
    assert (r.glucose, r.time_offset_min, r.trend, r.quality_pct) == (Decimal("98.5"), 125, Decimal("-1.2"), 95)
    assert r.status is not None and r.status.names == ("device battery low",)
    assert r.cal_temp is not None and r.cal_temp.names == ("calibration recommended",) and r.warning is None
    two = cgm.decode_cgm_measurement(emu.cgm_measurement([emu.CgmRecord(0, Decimal(120)), emu.CgmRecord(5, Decimal(121))]))
    assert [(x.glucose, x.time_offset_min, x.e2e_crc) for x in two.records] == [(120, 0, None), (121, 5, None)]

    start = cgm.decode_cgm_session_start_time(emu.cgm_session_start_time(S0, 4, 4, e2e=True))
    assert (start.start.naive, start.utc_offset) == (S0, timedelta(hours=2))

    feature = emu.cgm_feature(emu.CgmSensor.FEATURES, e2e=True)
    assert int.from_bytes(feature[:3], "little") & 0x1000 and feature[3] == 0x59  # E2E bit; ISF, subcutaneous
    assert int.from_bytes(feature[4:], "little") == crc16_mcrf4xx(feature[:4])
    assert emu.cgm_feature(0)[4:] == b"\xff\xff"  # no E2E: the CRC field is 0xFFFF (CGMS 1.0.1 3.2)


def test_a_record_without_crc_from_a_sensor_that_announces_e2e_is_refused():
    start = cgm.decode_cgm_session_start_time(emu.cgm_session_start_time(S0, 4, 4))
    collector = Collector(Device(bt_address="C0-00-00-00-18-1F"), PATIENT, None, OFFSET, session_start=start)
    unprotected = emu.cgm_measurement([emu.CgmRecord(5, Decimal(120))])
    assert collector.feed(0x2AA7, unprotected) is None and collector.last_seq == 5  # no E2E announced: fine
    collector.cgm_e2e = True
    with pytest.raises(MappingError, match="without E2E-CRC"):
        collector.feed(0x2AA7, emu.cgm_measurement([emu.CgmRecord(10, Decimal(121))]))
    assert collector.feed(0x2AA7, emu.cgm_measurement([emu.CgmRecord(10, Decimal(121))], e2e=True)) is None
    assert collector.last_seq == 10 and len(collector.take()) == 2


# ------------------------------------------------------------------------------------- over the air


def test_cgm_first_session_fetches_all_30_then_only_the_4_new_ones(tmp_path):
    sensor = sensor_with(30)

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([sensor]) as radio:
            first = await collect(radio, outbox)
            assert (first.profile, first.readings, first.last_seq, first.complete) == ("cgm", 30, 145, True)
            assert offset_marker(outbox) == "145"
            nothing = await collect(radio, outbox)
            assert (nothing.readings, nothing.last_seq, nothing.complete) == (0, 145, True)
            sensor.add_records([value(i) for i in range(30, 34)])
            sent_before = sensor.sent
            later = await collect(radio, outbox)
            assert (later.readings, later.last_seq, later.complete, sensor.sent - sent_before) == (4, 165, True, 4)

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        asyncio.run(scenario(outbox))
        got = readings(outbox)
        assert offset_marker(outbox) == "165"
        assert outbox.source_state(marker_name(ADDRESS, "cgm_session")) == "2026-11-28T06:00:00+02:00"

    assert [str(r.metrics[0].value) for r in got] == [str(value(i)) for i in range(34)]
    assert {(len(r.metrics), r.metrics[0].code, r.metrics[0].unit) for r in got} == {(1, 160212, "mg/dL")}
    assert [str(r.metrics[0].value) for r in got[:2]] + [str(got[10].metrics[0].value)] == ["100.0", "101.1", "110.0"]
    # session start + offset, in the sensor's time zone + DST (+02:00), not the gateway's (+01:00)
    assert [r.metrics[0].time.isoformat() for r in got] == [
        (S0 + timedelta(minutes=5 * i)).isoformat() + SENSOR_ZONE for i in range(34)]
    device = got[0].device
    assert [s.code for s in device.specializations] == [528409]  # MDC_DEV_SPEC_PROFILE_CGM
    assert (device.system_id, device.bt_address, device.model) == ("0A1B2C3D4E5F6006", "C0-00-00-00-18-1F",
                                                                   "Emu CGM Sensor")
    assert got[0].clock is not None and got[0].clock.device_time is not None  # CTS read: coincident time stamp


@pytest.mark.parametrize(("per_notification", "e2e"), [(1, True), (3, False)])  # 3 x 6 bytes fit ATT_MTU 23
def test_link_dropped_after_record_9_loses_nothing_and_doubles_nothing(tmp_path, per_notification, e2e):
    sensor = sensor_with(30, e2e=e2e)
    sensor.per_notification = per_notification
    sensor.drop_after = 9

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([sensor]) as radio:
            broken = await collect(radio, outbox)
            assert (broken.readings, broken.last_seq, broken.complete) == (9, 40, False)
            assert values(outbox) == [str(value(i)) for i in range(9)]
            assert offset_marker(outbox) == "40"  # record 9 has offset 40
            resumed = await collect(radio, outbox)
            assert (resumed.readings, resumed.last_seq, resumed.complete) == (21, 145, True)

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        asyncio.run(scenario(outbox))
        assert values(outbox) == [str(value(i)) for i in range(30)]  # 30 distinct, in order, none twice
        assert offset_marker(outbox) == "145"
    assert sensor.sent == 30  # and the sensor sent each record once


def test_bad_crc_notification_is_logged_and_skipped(tmp_path, caplog):
    sensor = sensor_with(12)
    sensor.garbage_after = 3  # a copy of record 3 with a wrong E2E-CRC follows it

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([sensor]) as radio:
            return await collect(radio, outbox)

    with caplog.at_level(logging.WARNING, logger="phg.sources.ble.session"):
        with Outbox(tmp_path / "outbox.sqlite") as outbox:
            result = asyncio.run(scenario(outbox))
            assert (result.readings, result.skipped, result.last_seq, result.complete) == (12, 1, 55, True)
            assert values(outbox) == [str(value(i)) for i in range(12)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "0x2AA7" in warnings[0] and "E2E-CRC" in warnings[0]
    assert emu.sfloat(value(2)).hex() not in warnings[0].lower() and "102.2" not in warnings[0]  # no values in logs


def test_a_new_sensor_session_is_fetched_from_its_start(tmp_path):
    sensor = sensor_with(6)

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([sensor]) as radio:
            first = await collect(radio, outbox)
            assert (first.readings, first.last_seq) == (6, 25)
            sensor.new_session(S0 + timedelta(days=14))
            sensor.add_records([Decimal(90), Decimal(91)])  # offsets 0 and 5 again: below the old marker
            second = await collect(radio, outbox)
            assert (second.readings, second.last_seq, second.complete) == (2, 5, True)

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        asyncio.run(scenario(outbox))
        got = readings(outbox)
        assert offset_marker(outbox) == "5"
        assert outbox.source_state(marker_name(ADDRESS, "cgm_session")) == "2026-12-12T06:00:00+02:00"
    assert [(str(r.metrics[0].value), r.metrics[0].time.isoformat()) for r in got[-2:]] == [
        ("90", "2026-12-12T06:00:00+02:00"), ("91", "2026-12-12T06:05:00+02:00")]


def test_each_racp_profile_downloads_by_its_own_record_strategy():
    """One strategy per profile from the PROFILES table (was: `profile.name == "cgm"` branches)."""
    strategies = {p.name: p.records for p in PROFILES if p.records is not None}
    assert {name: type(s) for name, s in strategies.items()} == {"glucose": GlucoseRecords, "cgm": CgmRecords}
    # RACP "Report stored records" >= marker + 1, operand filter type 0x01 (GLS 4.11: sequence number;
    # CGMS 3.7: time offset)
    assert strategies["glucose"].request_after(7) == strategies["cgm"].request_after(7) == bytes.fromhex("0103010800")
    assert strategies["glucose"].context(ADDRESS, {}) == {}
    start = cgm.decode_cgm_session_start_time(emu.cgm_session_start_time(S0, 4, 4))
    assert strategies["cgm"].context(ADDRESS, {"session_start": start}) == {
        marker_name(ADDRESS, "cgm_session"): "2026-11-28T06:00:00+02:00"}
    assert strategies["cgm"].context(ADDRESS, {"session_start": None}) is None  # not known yet: records are held
