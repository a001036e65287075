"""The emulated Bluetooth devices: their encoders agree with the gateway's decoders and with the
published vectors, and their GATT behaviour (RACP, indications, bonding) is right, seen through
bleak's public API on the Bumble backend. Each test runs on a fresh LocalLink."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime
from decimal import Decimal

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakGATTProtocolError

from phg.demo import emulator as emu
from phg.sources.ble.gatt import blood_pressure, glucose, pulse_oximeter, thermometer, weight
from shared_vectors import VECTORS as SHARED

T = datetime(2026, 11, 28, 9, 30, 5)
VECTORS = SHARED / "gatt" / "vectors.json"


def test_sfloat_and_float_keep_the_digits():
    assert emu.sfloat(Decimal("0.00120")) == bytes.fromhex("78b0")  # GSS SFLOAT: 120 mg/dL = 0xB078
    assert emu.sfloat(Decimal("0.0055")) == bytes.fromhex("37c0")  # 5.5 mmol/L = 0xC037
    assert emu.float32(Decimal("36.50")) == (3650 | (0xFE << 24)).to_bytes(4, "little")
    for special in (Decimal(2046), Decimal(2047), Decimal(-2046), Decimal(-2048)):
        with pytest.raises(ValueError):
            emu.sfloat(special)


def test_system_id_is_the_eui64_reversed():
    assert emu.system_id("0A1B2C3D4E5F6001") == bytes.fromhex("01605F4E3D2C1B0A")


def test_glucose_encoding_decodes_to_the_same_record():
    record = emu.GlucoseRecord(7, T, Decimal("120"), time_offset=-30, status=0x0001, meal=1)
    m = glucose.decode_glucose_measurement(emu.glucose_measurement(record))
    assert (m.sequence_number, m.base_time.naive, m.time_offset_min) == (7, T, -30)
    assert (m.concentration, m.concentration_unit, m.type, m.sample_location) == (
        Decimal("0.00120"), "kg/L", "capillary whole blood", "finger")
    assert m.sensor_status is not None and m.sensor_status.names == ("device battery low",)
    assert m.context_information_follows
    ctx = glucose.decode_glucose_context(emu.glucose_context(record))
    assert (ctx.sequence_number, ctx.meal) == (7, "preprandial")
    mmol = glucose.decode_glucose_measurement(emu.glucose_measurement(emu.GlucoseRecord(1, T, Decimal("5.5"), "mmol/L")))
    assert (mmol.concentration, mmol.concentration_unit) == (Decimal("0.0055"), "mol/L")


def test_other_profiles_decode_to_what_was_encoded():
    bp = blood_pressure.decode_blood_pressure_measurement(emu.blood_pressure_measurement(
        emu.BloodPressure(T, Decimal(128), Decimal(82), Decimal(97), Decimal(71))))
    assert (bp.unit, bp.systolic, bp.diastolic, bp.mean_arterial_pressure, bp.pulse_rate, bp.timestamp.naive) == (
        "mmHg", 128, 82, 97, 71, T)
    w = weight.decode_weight_measurement(emu.weight_measurement(
        emu.Weight(T, Decimal("72.400"), Decimal("24.5"), Decimal("1.720"))))
    assert (w.weight, w.weight_unit, w.bmi, w.height, w.height_unit, w.timestamp.naive) == (
        Decimal("72.400"), "kg", Decimal("24.5"), Decimal("1.720"), "m", T)
    t = thermometer.decode_temperature_measurement(emu.temperature_measurement(emu.Temperature(T, Decimal("36.85"))))
    assert (t.temperature, t.unit, t.temperature_type, t.timestamp.naive) == (Decimal("36.85"), "Cel", "mouth", T)
    p = pulse_oximeter.decode_plx_spot_check(emu.spot_check_measurement(emu.SpotCheck(T, Decimal(97), Decimal(68))))
    assert (p.spo2_pct, p.pulse_rate_bpm, p.timestamp.naive) == (97, 68, T)


def test_encoders_reproduce_published_vectors():
    """Where a published vector (shared/vectors/gatt) is expressible by the emulator, the bytes are identical."""
    vectors = {v["hex"] for v in json.loads(VECTORS.read_text())} if VECTORS.exists() else set()
    produced = {
        emu.weight_measurement(emu.Weight(datetime(2023, 12, 25, 14, 30, 45), Decimal("70.0"))).hex(),
        emu.temperature_measurement(emu.Temperature(datetime(2012, 12, 5, 11, 50, 27), Decimal("37.60"), site=4)).hex(),
    }
    assert produced == {"02b036e7070c190e1e2d", "06b00e00fedc070c050b321b04"}
    if vectors:
        assert produced <= vectors


def test_current_time_layout():
    raw = emu.current_time(datetime(2026, 11, 28, 9, 30, 5, 500_000))
    assert raw == bytes([0xEA, 0x07, 11, 28, 9, 30, 5, 6, 128, 0])  # Saturday = 6, 0.5 s = 128/256


# ---------------------------------------------------------------------------------------- over the air


async def _glucose_session(radio: emu.EmulatedLink, request: bytes, pair: bool = False) -> tuple[list[int], list[bytes]]:
    seqs: list[int] = []
    answers: list[bytes] = []
    done = asyncio.Event()
    dev = await BleakScanner.find_device_by_address("C0:00:00:00:18:08", timeout=3, backend=radio.backend.scanner)
    async with BleakClient(dev, backend=radio.backend.client, pair=pair) as client:
        await client.start_notify("2a18", lambda _c, d: seqs.append(int.from_bytes(d[1:3], "little")))
        await client.start_notify("2a52", lambda _c, d: (answers.append(bytes(d)), done.set()))
        await client.write_gatt_char("2a52", request, response=True)
        await asyncio.wait_for(done.wait(), 3)
    return seqs, answers


def test_racp_reports_what_was_asked():
    async def scenario():
        meter = emu.GlucoseMeter()
        meter.add_records([Decimal(100 + i) for i in range(20)])
        async with emu.EmulatedLink([meter]) as radio:
            assert await _glucose_session(radio, glucose.report_all_records()) == (list(range(1, 21)), [b"\x06\x00\x01\x01"])
            assert await _glucose_session(radio, glucose.report_records_from(18)) == ([18, 19, 20], [b"\x06\x00\x01\x01"])
            assert await _glucose_session(radio, glucose.report_records_from(21)) == ([], [b"\x06\x00\x01\x06"])
            assert await _glucose_session(radio, glucose.report_number_of_records()) == ([], [b"\x05\x00\x14\x00"])
            assert await _glucose_session(radio, glucose.delete_all_records()) == ([], [b"\x06\x00\x02\x02"])
            assert await _glucose_session(radio, bytes([1, 9])) == ([], [b"\x06\x00\x01\x04"])

    asyncio.run(scenario())


def test_scan_lists_all_five_with_their_services():
    async def scenario():
        async with emu.EmulatedLink(emu.demo_devices()) as radio:
            found = await BleakScanner.discover(timeout=0.3, return_adv=True, backend=radio.backend.scanner)
        services = {addr: adv.service_uuids for addr, (_d, adv) in found.items()}
        assert services == {
            "C0:00:00:00:18:08": ["00001808-0000-1000-8000-00805f9b34fb"],
            "C0:00:00:00:18:10": ["00001810-0000-1000-8000-00805f9b34fb"],
            "C0:00:00:00:18:1D": ["0000181d-0000-1000-8000-00805f9b34fb"],
            "C0:00:00:00:18:09": ["00001809-0000-1000-8000-00805f9b34fb"],
            "C0:00:00:00:18:22": ["00001822-0000-1000-8000-00805f9b34fb"],
        }

    asyncio.run(scenario())


def test_bonding_device_refuses_an_unencrypted_link_and_bonds_once():
    async def scenario():
        meter = emu.GlucoseMeter(bonding=True)
        meter.add_records([Decimal(110)])
        async with emu.EmulatedLink([meter]) as radio:
            dev = await BleakScanner.find_device_by_address(meter.address, timeout=3, backend=radio.backend.scanner)
            async with BleakClient(dev, backend=radio.backend.client) as client:
                with pytest.raises(BleakGATTProtocolError) as info:
                    await client.read_gatt_char("2a29")
                assert info.value.code == 0x0F  # Insufficient Encryption
            assert await _glucose_session(radio, glucose.report_all_records(), pair=True) == ([1], [b"\x06\x00\x01\x01"])
            assert await meter.bonds() == [radio.central_address]
            # reconnect: the stored keys re-encrypt the link, no pairing asked for
            async with BleakClient(dev, backend=radio.backend.client) as client:
                assert (await client.read_gatt_char("2a29")).decode() == "phg emulator"
            assert await meter.bonds() == [radio.central_address]

    asyncio.run(scenario())


def test_indicating_device_sends_stored_measurements_then_ends_the_link():
    async def scenario():
        cuff = emu.BloodPressureCuff(measurements=[emu.BloodPressure(T, Decimal(120), Decimal(80), Decimal(93))] * 2)
        async with emu.EmulatedLink([cuff]) as radio:
            got: list[bytes] = []
            gone = asyncio.Event()
            dev = await BleakScanner.find_device_by_address(cuff.address, timeout=3, backend=radio.backend.scanner)
            async with BleakClient(dev, backend=radio.backend.client, disconnected_callback=lambda _c: gone.set()) as client:
                assert client.services.get_characteristic("2a35").properties == ["indicate"]
                await client.start_notify("2a35", lambda _c, d: got.append(bytes(d)))
                await asyncio.wait_for(gone.wait(), 3)
            assert len(got) == 2 and cuff.measurements == []

    asyncio.run(scenario())


@pytest.mark.parametrize("command", [("simulate", "--no-deliver"), ("ble", "scan", "--emulated")])
def test_without_bumble_the_emulated_devices_say_what_to_install(tmp_path, command):
    """Bumble is the [demo] extra's: without it, one line saying so (exit 3), no traceback."""
    blocked = "import sys; sys.modules['bumble'] = None; from phg.cli import main; sys.argv[0] = 'phg'; main()"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
           "PHG_CONFIG": "", "PHG_OUTBOX": str(tmp_path / "outbox.sqlite"), "PHG_GATEWAY_SYSTEM_ID": "02AB7FFFFE00C11C"}
    result = subprocess.run([sys.executable, "-c", blocked, *command], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip() == "error: the emulated Bluetooth devices need Bumble: pip install 'phg[demo]'"
