"""Real devices' quirks (issue 17): each is decoded, logged at WARNING under its stable name with the
characteristic and no measured value, and the device's data is kept; what is really malformed is still
refused. The decoders on constructed payloads, then the RACP and CGM ones through the gateway's session
(bleak's public API on the Bumble backend) against emulated devices that misbehave so, into a real outbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phg.demo import emulator as emu
from phg.intake import Intake
from phg.model import Device, PatientRef, parse_reading
from phg.outbox import Outbox
from phg.sources.ble.gatt import GattError, decode, quirks
from phg.sources.ble.session import Collector, fetch, marker_name
from shared_vectors import VECTORS as SHARED

PATIENT = PatientRef("urn:oid:1.2.3.4.5", "pt-quirks")
OFFSET = timedelta(hours=1)
T0 = datetime(2026, 11, 28, 8, 0)
QUIRK_LOGGER = "phg.sources.ble.gatt.quirks"
GATT_VECTORS = json.loads((SHARED / "gatt" / "vectors.json").read_text())


def quirk_messages(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith(name + ": ")]



def test_every_quirk_is_documented_for_users_and_every_documented_one_exists():
    """docs/device-quirks.md has one table row per quirk name phg can log (quirks.QUIRKS, which lists every
    quirk:... name the module defines), and no other."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "device-quirks.md").read_text()
    rows = re.findall(r"^\| `(quirk:[a-z0-9-]+)` \|", doc, flags=re.MULTILINE)
    assert sorted(rows) == sorted(quirks.QUIRKS)
    assert set(quirks.QUIRKS) == {v for v in vars(quirks).values() if isinstance(v, str) and v.startswith("quirk:")}

# ------------------------------------------------------------------------------- trailing bytes

# (characteristic, a valid value without padding): every one of them laid out by its flags alone.
CLEAN = [
    (0x2A35, "06" "7400" "4700" "5600" "ea070b1c080000" "3e00"),  # BP 116/71/86, time, pulse 62
    (0x2A18, "030100ea070b1c0900000000" "78b0" "11"),  # glucose 120 mg/dL
    (0x2A9D, "02" "b036" "ea070b1c080000"),  # weight with time
    (0x2A1C, "02" "6c0100ff" "ea070b1c080000"),  # 36.4 Cel with time
    (0x2A5E, "00" "6200" "4800"),  # SpO2 98 %, PR 72
    (0x2A37, "0048"),  # heart rate 72
    (0x2A19, "64"),  # battery 100 %
    (0x2A23, "c377addeeeabedfe"),  # System ID
    (0x2A2B, "ea070b1c090000" "06" "80" "01"),  # Current Time
    (0x2A52, "06000101"),  # RACP: Report stored records -> Success
]


@pytest.mark.parametrize(("uuid", "clean"), CLEAN, ids=lambda v: f"0x{v:04X}" if isinstance(v, int) else None)
def test_trailing_padding_is_ignored_with_a_named_warning(uuid: int, clean: str, caplog) -> None:
    data = bytes.fromhex(clean)
    expected = decode(uuid, data)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=QUIRK_LOGGER):
        padded = decode(uuid, data + b"\x00\x00\x00")
    if uuid == 0x2A52:  # the RACP keeps its raw operand, padding included; the decoded fields are the same
        assert (padded.request_op_code, padded.response_code) == (expected.request_op_code, expected.response_code)
    else:
        assert padded == expected
    (message,) = quirk_messages(caplog, quirks.TRAILING_BYTES)
    assert message.startswith(f"quirk:trailing-bytes: 0x{uuid:04X} ")
    assert f"3 byte(s) after the last field (at byte {len(data)}) ignored" in message
    assert clean[:8] not in message.replace(" ", "")  # no payload bytes, hence no values, in the log


@settings(max_examples=60, deadline=None)
@given(vector=st.sampled_from([v for v in GATT_VECTORS if v["valid"]
                               and v["characteristic"].split()[0] not in ("0x2AA7", "0x2A52", "0x2AAA")
                               and not (v["characteristic"].startswith("0x2A37") and bytes.fromhex(v["hex"])[0] & 0x10)]),
       padding=st.binary(min_size=1, max_size=8))
def test_any_valid_vector_with_padding_decodes_as_without(vector: dict, padding: bytes) -> None:
    uuid = vector["characteristic"].split()[0]
    data = bytes.fromhex(vector["hex"])
    assert decode(uuid, data + padding) == decode(uuid, data)


def test_what_is_really_malformed_is_still_refused(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=QUIRK_LOGGER):
        # a mandatory field cut short
        with pytest.raises(GattError, match="truncated at byte 7 reading Time Stamp"):
            decode(0x2A35, bytes.fromhex("03020304050607"))
        # a CGM record whose Size holds a byte its flags do not announce (nor an E2E-CRC): ambiguous
        with pytest.raises(GattError, match="has Size 7, but its flags announce 6 bytes"):
            decode(0x2AA7, bytes.fromhex("07000c10050000"))
        # bytes after a CGM Session Start Time may be its E2E-CRC: two that do not match are refused
        with pytest.raises(GattError, match="E2E-CRC mismatch"):
            decode(0x2AAA, emu.cgm_session_start_time(T0, 4, 4) + b"\x00\x00")
        # a length-delimited MDER structure whose length does not match
        with pytest.raises(GattError, match="does not match"):
            decode(0x2A2A, bytes.fromhex("0001" "0006" "0201" "0002" "0100") + b"\x00")
        # an odd byte among RR intervals (they fill the rest of the value)
        with pytest.raises(GattError, match="RR values are uint16"):
            decode(0x2A37, bytes.fromhex("1048" "3300" "01"))
    assert not quirk_messages(caplog, quirks.TRAILING_BYTES)


# ------------------------------------------------------------------------------- RACP


def test_racp_number_of_records_in_one_byte(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=QUIRK_LOGGER):
        message = decode(0x2A52, bytes.fromhex("050005"))
    assert message.number_of_records == 5 and message.is_response
    (warning,) = quirk_messages(caplog, quirks.RACP_SHORT_OPERAND)
    assert warning.startswith("quirk:racp-short-operand: 0x2A52 Record Access Control Point: ")
    assert decode(0x2A52, bytes.fromhex("05000500")).number_of_records == 5  # the spec's uint16: no warning
    assert len(quirk_messages(caplog, quirks.RACP_SHORT_OPERAND)) == 1


def test_racp_response_to_a_reserved_op_code(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=QUIRK_LOGGER):
        message = decode(0x2A52, bytes.fromhex("06000901"))
    assert (message.request_op_code, message.response_code, message.succeeded) == ("reserved op code 9", "Success", True)
    (warning,) = quirk_messages(caplog, quirks.RACP_RESERVED_REQUEST_OP_CODE)
    assert "0x2A52 Record Access Control Point: response to the reserved op code 9 (byte 2)" in warning


def test_racp_reserved_response_code(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=QUIRK_LOGGER):
        message = decode(0x2A52, bytes.fromhex("0600010c"))
    assert (message.request_op_code, message.response_code) == ("Report stored records", "reserved response code 12")
    assert not message.succeeded
    (warning,) = quirk_messages(caplog, quirks.RACP_RESERVED_RESPONSE_CODE)
    assert "reserved response code 12 (byte 3)" in warning


def test_racp_really_malformed_is_refused() -> None:
    with pytest.raises(GattError, match="too short: need 4 bytes, have 3"):  # the response code is missing
        decode(0x2A52, bytes.fromhex("060001"))
    with pytest.raises(GattError, match="reserved value 7 at byte 0 in Op Code"):  # an op code nobody defined
        decode(0x2A52, bytes.fromhex("0700"))
    with pytest.raises(GattError, match="operator must be Null"):  # a response with an operator
        decode(0x2A52, bytes.fromhex("06010901"))
    with pytest.raises(GattError, match="truncated"):  # no count at all
        decode(0x2A52, bytes.fromhex("0500"))


# ------------------------------------------------------------------------------- CGM before its session start


def _unknown_start(e2e: bool = False) -> bytes:
    """A Session Start Time whose date is unknown (year, month, day 0): it cannot place records."""
    raw = bytes(7) + struct.pack("<bB", 4, 4)
    return raw + emu.crc16_mcrf4xx(raw) if e2e else raw


def test_cgm_records_before_the_session_start_are_held_then_placed(caplog) -> None:
    collector = Collector(Device(bt_address="C0-00-00-00-18-1F"), PATIENT, None, OFFSET)
    with caplog.at_level(logging.WARNING, logger=QUIRK_LOGGER):
        two = emu.cgm_measurement([emu.CgmRecord(0, Decimal(120)), emu.CgmRecord(5, Decimal(121))])
        assert collector.feed(0x2AA7, two) is None
        assert collector.feed(0x2AAA, _unknown_start()) is None  # still unusable: still held
        assert collector.feed(0x2AA7, emu.cgm_measurement([emu.CgmRecord(10, Decimal(122))])) is None
    assert collector.take() == [] and collector.last_seq is None  # nothing placed, the marker does not move
    warnings = quirk_messages(caplog, quirks.CGM_BEFORE_SESSION_START)
    assert warnings == ["quirk:cgm-before-session-start: 0x2AA7 CGM Measurement: 2 record(s) held until a usable "
                        "CGM Session Start Time (0x2AAA) is read",
                        "quirk:cgm-before-session-start: 0x2AA7 CGM Measurement: 1 record(s) held until a usable "
                        "CGM Session Start Time (0x2AAA) is read"]
    collector.feed(0x2AAA, emu.cgm_session_start_time(T0, 4, 4))
    placed = collector.take()
    assert [(str(r.metrics[0].value), r.metrics[0].time.isoformat()) for r in placed] == [
        ("120", "2026-11-28T08:00:00+02:00"), ("121", "2026-11-28T08:05:00+02:00"), ("122", "2026-11-28T08:10:00+02:00")]
    assert collector.last_seq == 10 and collector.held == []


# ------------------------------------------------------------------------------- through the session


def stored(outbox: Outbox) -> list:
    return [parse_reading(json.loads(i.payload)) for i in outbox.items(destination="fhir", limit=1000)]


async def collect(radio: emu.EmulatedLink, outbox: Outbox, address: str):
    return await fetch(address, intake=Intake(outbox, ["fhir"]), patient=PATIENT, backend=radio.backend,
                       timeout=5, idle_timeout=2, utc_offset=OFFSET)


class QuirkyMeter(emu.GlucoseMeter):
    """A glucose meter that ends its RACP procedure with `response` (op code 6, operator 0, then these two
    bytes) and pads every Glucose Measurement with two zero bytes."""

    def __init__(self, response: bytes, n: int = 4) -> None:
        super().__init__()
        self.response = response
        self.add_records([Decimal(100 + k) for k in range(1, n + 1)], T0)

    async def _respond(self, connection, request_op: int, code: int) -> None:
        await self.device.indicate_subscriber(connection, self.racp, bytes([6, 0]) + self.response)  # type: ignore[union-attr]


@pytest.fixture
def padded_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = emu.glucose_measurement
    monkeypatch.setattr(emu, "glucose_measurement", lambda record: plain(record) + b"\x00\x00")


@pytest.mark.parametrize(("response", "quirk", "complete"), [
    (bytes([9, 1]), quirks.RACP_RESERVED_REQUEST_OP_CODE, True),  # Success, answering op code 9
    (bytes([1, 12]), quirks.RACP_RESERVED_RESPONSE_CODE, False),  # a response code nobody defined
])
def test_a_meter_with_padding_and_a_quirky_racp_response_uploads(tmp_path, caplog, padded_measurements,
                                                                 response, quirk, complete) -> None:
    meter = QuirkyMeter(response)

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([meter]) as radio:
            return await collect(radio, outbox, meter.address)

    with caplog.at_level(logging.WARNING, logger=QUIRK_LOGGER), Outbox(tmp_path / "outbox.sqlite") as outbox:
        result = asyncio.run(scenario(outbox))
        assert [str(r.metrics[0].value) for r in stored(outbox)] == ["101", "102", "103", "104"]
        assert outbox.source_state(marker_name(meter.address)) == "4"  # the records are kept, none to fetch again
    assert (result.readings, result.skipped, result.last_seq, result.complete) == (4, 0, 4, complete)
    assert len(quirk_messages(caplog, quirks.TRAILING_BYTES)) == 4
    assert all("0x2A18 Glucose Measurement: 2 byte(s) after the last field" in m
               for m in quirk_messages(caplog, quirks.TRAILING_BYTES))
    assert len(quirk_messages(caplog, quirk)) == 1
    assert not any(v in r.getMessage() for r in caplog.records for v in ("101", "102", "103", "104"))


def test_a_meter_sending_a_one_byte_record_count_is_read(tmp_path, caplog) -> None:
    """A 1-byte Number of Stored Records arriving during a procedure is read, not skipped as malformed."""
    collector = Collector(Device(bt_address="C0-00-00-00-18-08"), PATIENT, None, OFFSET)
    with caplog.at_level(logging.WARNING, logger=QUIRK_LOGGER):
        assert collector.feed(0x2A52, bytes.fromhex("050014")) is None  # a count does not end a report procedure
        assert collector.feed(0x2A52, bytes.fromhex("06000101")) is True
    assert len(quirk_messages(caplog, quirks.RACP_SHORT_OPERAND)) == 1


class LateStartSensor(emu.CgmSensor):
    """A CGM whose Session Start Time reads as unknown `unknown_reads` times before its real value."""

    def __init__(self, unknown_reads: int) -> None:
        super().__init__(session_start=T0, time_zone_quarters=4, dst_quarters=4)
        self.unknown_reads = unknown_reads
        self.add_records([Decimal(120 + i) for i in range(3)])


@pytest.fixture
def late_start(monkeypatch: pytest.MonkeyPatch):
    plain = emu.cgm_session_start_time
    sensors: list[LateStartSensor] = []

    def start_time(start: datetime, zone: int, dst: int, *, e2e: bool = False) -> bytes:
        sensor = sensors[0]
        if sensor.unknown_reads:
            sensor.unknown_reads -= 1
            return _unknown_start(e2e)
        return plain(start, zone, dst, e2e=e2e)

    monkeypatch.setattr(emu, "cgm_session_start_time", start_time)
    return sensors


def test_a_cgm_whose_session_start_comes_late_uploads_through_the_session(tmp_path, caplog, late_start) -> None:
    sensor = LateStartSensor(unknown_reads=1)
    late_start.append(sensor)

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([sensor]) as radio:
            return await collect(radio, outbox, sensor.address)

    with caplog.at_level(logging.WARNING), Outbox(tmp_path / "outbox.sqlite") as outbox:
        result = asyncio.run(scenario(outbox))
        got = [(str(r.metrics[0].value), r.metrics[0].time.isoformat()) for r in stored(outbox)]
        assert got == [("120", "2026-11-28T08:00:00+02:00"), ("121", "2026-11-28T08:05:00+02:00"),
                       ("122", "2026-11-28T08:10:00+02:00")]
        assert outbox.source_state(marker_name(sensor.address, "cgm_offset")) == "10"
        assert outbox.source_state(marker_name(sensor.address, "cgm_session")) == "2026-11-28T08:00:00+02:00"
    assert (result.readings, result.complete) == (3, True)
    assert len(quirk_messages(caplog, quirks.CGM_BEFORE_SESSION_START)) == 3  # one per notification


def test_a_cgm_without_any_usable_session_start_stores_nothing_and_moves_no_marker(tmp_path, caplog, late_start) -> None:
    sensor = LateStartSensor(unknown_reads=2)
    late_start.append(sensor)

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([sensor]) as radio:
            first = await collect(radio, outbox, sensor.address)
            assert outbox.items(destination="fhir", limit=10) == []
            assert outbox.source_state(marker_name(sensor.address, "cgm_offset")) is None
            return first, await collect(radio, outbox, sensor.address)  # the start is known now: all of them

    with caplog.at_level(logging.WARNING), Outbox(tmp_path / "outbox.sqlite") as outbox:
        first, second = asyncio.run(scenario(outbox))
        assert [str(r.metrics[0].value) for r in stored(outbox)] == ["120", "121", "122"]
    assert (first.readings, first.complete) == (0, False)
    assert (second.readings, second.complete, second.last_seq) == (3, True, 10)
    assert any("3 CGM record(s) not stored: still no usable CGM Session Start Time" in r.getMessage()
               for r in caplog.records)



def test_decode_ble_shows_a_cgm_value_before_its_session_start() -> None:
    """`phg decode ble 2AA7 HEX`: the records decode; their time needs the Session Start Time, so no metrics."""
    from click.testing import CliRunner

    from phg.cli.decode import decode_ble

    result = CliRunner().invoke(decode_ble, ["2AA7", emu.cgm_measurement([emu.CgmRecord(5, Decimal(120))]).hex()])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [(r["glucose"], r["time_offset_min"]) for r in out["decoded"]["records"]] == [("120", 5)]
    assert out["metrics"] == [] and "CGM Session Start Time (0x2AAA)" in out["note"]
