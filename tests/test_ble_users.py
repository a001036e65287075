"""Shared cuffs and scales (review B): Blood Pressure 0x2A35, Weight 0x2A9D and Body Composition 0x2A9C Measurements
may carry a User ID (BLS 1.1, WSS 1.0, BCS 1.0; 255 = unknown user). With [ble] user set, only that user's
measurements (and those without a User ID) become readings for [patient]; without it all do, and a second User ID
on one connection is logged."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from phg.config import load_config
from phg.demo import emulator as emu
from phg.errors import ConfigError
from phg.intake import Intake
from phg.model import Device, PatientRef, parse_reading
from phg.outbox import Outbox
from phg.sources.ble.session import BleSettings, Collector, run_source

PATIENT = PatientRef("urn:oid:1.2.3.4", "pt-001")
ADDRESS = "00-E5-DE-AD-77-C3"


def collector(user: int | None = None) -> Collector:
    return Collector(Device(bt_address=ADDRESS), PATIENT, None, timedelta(hours=1), user=user)


def weight(kg_005: int, user: int | None) -> bytes:
    """0x2A9D in SI units (0.005 kg steps), with the User ID flag (bit 2) when `user` is given."""
    return bytes([0x04 if user is not None else 0x00]) + kg_005.to_bytes(2, "little") + bytes([user] if user is not None
                                                                                              else [])


def blood_pressure(systolic: int, user: int) -> bytes:
    """0x2A35 in mmHg with the User ID flag (bit 3); mean arterial pressure NaN (0x07FF)."""
    return bytes([0x08, systolic, 0, 0x50, 0, 0xFF, 0x07, user])


def weights(readings: list) -> list[str]:
    return [str(r.metrics[0].value) for r in readings]


def test_with_ble_user_only_that_users_and_unmarked_measurements_are_taken(caplog):
    c = collector(user=1)
    with caplog.at_level(logging.WARNING, logger="phg.sources.ble.session"):
        c.feed(0x2A9D, weight(14000, 1))    # 70 kg, user 1: the patient
        c.feed(0x2A9D, weight(16300, 2))    # 81.5 kg, user 2: someone else
        c.feed(0x2A9D, weight(16400, 2))    # 82 kg, user 2 again: skipped without another warning
        c.feed(0x2A9D, weight(18650, 255))  # 93.25 kg, unknown user
        c.feed(0x2A9D, weight(15000, None))  # 75 kg, no User ID: a single-user scale
        c.feed(0x2A35, blood_pressure(0x8C, 2))  # user 2 again, already logged
        c.feed(0x2A35, blood_pressure(0x8D, 3))
        c.feed(0x2A35, blood_pressure(0x78, 1))
    readings = c.take()
    assert weights(readings[:2]) == ["70.000", "75.000"] and len(readings) == 3
    assert [str(m.value) for m in readings[2].metrics[0].components][:1] == ["120"]
    assert all(r.patient == PATIENT for r in readings)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(": ")[1] for w in warnings] == [
        "0x2A9D Weight Measurement of device user 2 skipped (and this user's others on this connection)",
        "0x2A9D Weight Measurement of an unknown user (User ID 255) skipped (and this user's others on this connection)",
        "0x2A35 Blood Pressure Measurement of device user 3 skipped (and this user's others on this connection)"]
    assert all(ADDRESS in w and "[ble] user = 1" in w for w in warnings)
    assert not any(value in caplog.text for value in ("81", "82", "93", "140", "141", "16300", "18650"))


def test_without_ble_user_every_measurement_is_taken_and_a_second_user_is_logged_once(caplog):
    c = collector()
    with caplog.at_level(logging.WARNING, logger="phg.sources.ble.session"):
        for kg_005, user in ((14000, 1), (14100, 1), (16300, 2), (18650, 255), (15000, None), (16400, 2)):
            c.feed(0x2A9D, weight(kg_005, user))
    assert weights(c.take()) == ["70.000", "70.500", "81.500", "93.250", "75.000", "82.000"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (f"BLE {ADDRESS}: 0x2A9D Weight Measurement: the device reports several users (User IDs 1 and 2), "
                       "all sent as [patient]: set [ble] user = N (the patient's user number on the device) to send "
                       "only theirs")


def test_a_skipped_measurement_leaves_readings_and_marker_alone():
    """A glucose record waiting for its context is handed over (with its sequence number into the marker) by the next
    value, even one that is then skipped as another user's."""
    c = collector(user=1)
    c.feed(0x2A18, bytes([0x12, 7, 0]) + bytes(7) + bytes([0x78, 0xB0, 0x11]))  # seq 7, context follows
    c.feed(0x2A9D, weight(16300, 2))
    (reading,) = c.take()
    assert (reading.metrics[0].code, str(reading.metrics[0].value)) == (160184, "120")
    assert c.last_seq == 7 and c.glucose is None
    assert c.take() == []


@pytest.mark.parametrize("value", ["300", "255", "-1"])
def test_ble_user_out_of_range_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"\[ble\] user must be (a whole number, )?0\.\.254"):
        load_config(document={"ble": {"user": int(value)}}, env={})
    with pytest.raises(ConfigError, match=r"PHG_BLE_USER.*\[ble\] user must be"):
        load_config(document={}, env={"PHG_BLE_USER": value})


def test_ble_user_reaches_the_bluetooth_source():
    from phg.sources.supervisor import configured_sources

    document = {"patient": {"system": "urn:oid:1", "value": "p"}, "ble": {"allow": ["C0:00:00:00:18:08"]}}
    config = load_config(document=document, env={"PHG_BLE_USER": "2"})
    assert config.ble_user == 2
    (source,) = configured_sources(config)
    assert source.settings.user == 2
    assert load_config(document={}, env={}).ble_user is None


class SharedCuff(emu.BloodPressureCuff):
    """A cuff two people share: systolic 120 is user 1's measurement, anything else user 2's (BLS 1.1 flags bit 3)."""

    @staticmethod
    def encode(measurement: emu.BloodPressure) -> bytes:
        plain = emu.blood_pressure_measurement(measurement)
        return bytes([plain[0] | 0x08]) + plain[1:] + bytes([1 if measurement.systolic == 120 else 2])


def test_phg_run_sends_only_the_ble_users_measurements_of_a_shared_cuff(tmp_path, caplog):
    """[ble] user reaches the Collector of every session run_source starts; the other user's measurement is taken
    from the cuff (it forgets it) but not stored."""
    time = datetime(2026, 11, 28, 8, 0)
    cuff = SharedCuff(measurements=[emu.BloodPressure(time, Decimal(120), Decimal(80), Decimal(93), Decimal(60)),
                                    emu.BloodPressure(time, Decimal(150), Decimal(95), Decimal(113), Decimal(70))])
    settings = BleSettings(allow=(cuff.address,), pair_new=False, patient=PATIENT, user=1, scan_seconds=0.2,
                           rest_seconds=0.1, retry_seconds=60)

    async def scenario(outbox: Outbox) -> None:
        async with emu.EmulatedLink([cuff]) as radio:
            stop = asyncio.Event()
            task = asyncio.create_task(run_source(settings, intake=Intake(outbox, ["fhir"]), stop=stop,
                                                  backend=radio.backend))
            for _ in range(100):
                if not cuff.measurements:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.wait_for(task, 5)

    with Outbox(tmp_path / "outbox.sqlite") as outbox, caplog.at_level(logging.WARNING, "phg.sources.ble.session"):
        asyncio.run(scenario(outbox))
        stored = [parse_reading(json.loads(i.payload)) for i in outbox.items(destination="fhir", limit=10)]
    assert cuff.measurements == []
    assert [str(c.value) for r in stored for c in r.metrics[0].components][:2] == ["120", "80"] and len(stored) == 1
    assert "0x2A35 Blood Pressure Measurement of device user 2 skipped" in caplog.text


def test_phg_ble_fetch_passes_ble_user_to_the_session(tmp_path, monkeypatch):
    """`phg ble fetch` (one download) holds the same [ble] user as `phg run`'s Bluetooth source."""
    from click.testing import CliRunner

    import phg.sources.ble.session as session
    from phg.cli.commands import main

    asked = {}

    async def fake_fetch(address, **kwargs):
        asked.update(kwargs, address=address)
        raise session.DeviceNotFound(address)

    monkeypatch.setattr(session, "fetch", fake_fetch)
    env = {"PHG_CONFIG": "", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
           "PHG_BLE_USER": "2", "PHG_PATIENT_SYSTEM": "urn:oid:1", "PHG_PATIENT_VALUE": "p"}
    result = CliRunner().invoke(main, ["--outbox", str(tmp_path / "o.sqlite"), "ble", "fetch", "--emulated",
                                       "C0:00:00:00:18:10"], env=env)
    assert asked.get("user") == 2, (result.output, asked)
