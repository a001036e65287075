"""PHD IG duplicate-detection identifier and its ifNoneExist query, checked against hand-computed values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phg.errors import MappingError, ReadingError
from phg.fhir import conditional_identifier, if_none_exist
from phg.fhir.identifier import timestamp_v1, timestamp_v2
from phg.model import Component, Device, Metric, PatientRef, Reading, Stamp, parse_reading

PATIENT = PatientRef("urn:oid:2.999.1.2.3.4.5.6.7.8.10", "sisansarahId")
SYSID_DEVICE = Device(system_id="74E8FFFEFF051C00", bt_address="00-1C-05-FF-E8-74")
BLE_DEVICE = Device(bt_address="00-1C-05-FF-E8-74")
PHD_SYSTEM = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"


def tz(hours: int = 0, minutes: int = 0) -> timezone:
    return timezone(timedelta(hours=hours, minutes=minutes))


# 2021-11-22T11:56:30Z is 690897390 s after 2000-01-01T00:00:00Z (the IG's worked example says
# 690897360, 30 s off): 21 years of which 6 leap (2000..2020) = 7671 days to 2021-01-01, + 325 days.
assert (7671 + 325) * 86400 + 11 * 3600 + 56 * 60 + 30 == 690897390


@pytest.mark.parametrize(("time", "digits", "expected"), [
    (datetime(2021, 11, 22, 11, 56, 30, tzinfo=UTC), 0, "690897390+0"),
    (datetime(2021, 11, 22, 11, 56, 30, 567000, tzinfo=UTC), 3, "690897390.567+0"),
    (datetime(2021, 11, 22, 11, 56, 30, 567000, tzinfo=UTC), 0, "690897390+0"),  # 1 s resolution: no fraction
    (datetime(2021, 11, 22, 11, 56, 30, 500000, tzinfo=UTC), 1, "690897390.5+0"),
    (datetime(2021, 11, 22, 11, 56, 30, 0, tzinfo=UTC), 2, "690897390.00+0"),  # N digits print N digits
    (datetime(2021, 11, 22, 11, 56, 30, 123456, tzinfo=UTC), 6, "690897390.123456+0"),
    (datetime(2021, 11, 22, 12, 56, 30, tzinfo=tz(1)), 0, "690897390+4"),  # +01:00 = +4 quarter hours
    (datetime(2021, 11, 22, 6, 56, 30, tzinfo=tz(-5)), 0, "690897390-20"),  # -05:00 = -20
    (datetime(2021, 11, 22, 17, 41, 30, tzinfo=tz(5, 45)), 0, "690897390+23"),  # Nepal
    (datetime(2000, 1, 1, tzinfo=UTC), 0, "0+0"),
])
def test_timestamp_v2(time, digits, expected):
    assert timestamp_v2(time, digits) == expected


def test_timestamp_v2_counts_utc_seconds_whatever_the_offset():
    """The same instant gives the same count; only the offset part differs."""
    utc = timestamp_v2(datetime(2021, 11, 22, 11, 56, 30, tzinfo=UTC))
    local = timestamp_v2(datetime(2021, 11, 22, 12, 56, 30, tzinfo=tz(1)))
    assert utc.split("+")[0] == local.split("+")[0] == "690897390"


def test_timestamp_v2_rejects_offsets_a_phd_cannot_report():
    with pytest.raises(MappingError, match="15 minutes"):
        timestamp_v2(datetime(2021, 11, 22, 12, 0, tzinfo=tz(0, 7)))


def test_timestamp_v1_is_wall_clock_dtm_with_hundredths():
    assert timestamp_v1(datetime(2018, 11, 13, 17, 59, 2, tzinfo=tz(-5))) == "20181113175902.00"
    assert timestamp_v1(datetime(2018, 11, 13, 17, 59, 2, 567000, tzinfo=tz(-5))) == "20181113175902.56"


def spo2(time=None, digits=0, status=()) -> Metric:
    time = time or datetime(2021, 11, 22, 12, 56, 30, 567000, tzinfo=tz(1))
    return Metric(150456, time, Decimal("98"), "%", digits, tuple(status))


def test_identifier_v2_with_system_id():
    reading = Reading(SYSID_DEVICE, PATIENT, (spo2(digits=3),))
    assert conditional_identifier(reading, reading.metrics[0]) == (
        PHD_SYSTEM, "74E8FFFEFF051C00-sisansarahId-urn:oid:2.999.1.2.3.4.5.6.7.8.10-150456-690897390.567+4")


def test_identifier_v2_ble_device_uses_its_address():
    reading = Reading(BLE_DEVICE, PATIENT, (spo2(),))
    system, value = conditional_identifier(reading, reading.metrics[0], "2.0.0")
    assert value == "001C05FFE874-sisansarahId-urn:oid:2.999.1.2.3.4.5.6.7.8.10-150456-690897390+4"
    assert not value.endswith("-")  # absent duration / supplemental parts leave no trailing dash


def test_identifier_v2_ignores_value_and_status():
    """2.0.0 leaves the value out: a re-sent measurement is the same one whatever its status bits."""
    a = Reading(SYSID_DEVICE, PATIENT, (spo2(),))
    b = Reading(SYSID_DEVICE, PATIENT, (spo2(status=("invalid",)),))
    assert conditional_identifier(a, a.metrics[0]) == conditional_identifier(b, b.metrics[0])


def test_identifier_v1():
    metric = Metric(149530, datetime(2018, 11, 13, 17, 59, 2, tzinfo=tz(-5)), Decimal("48.0"), "/min")
    reading = Reading(SYSID_DEVICE, PATIENT, (metric,))
    assert conditional_identifier(reading, metric, "1.1.0") == (
        None, "74E8FFFEFF051C00-sisansarahId-urn:oid:2.999.1.2.3.4.5.6.7.8.10-149530-48.0-/min-20181113175902.00")


def test_identifier_v1_absent_value_uses_data_absent_reason():
    metric = Metric(149530, datetime(2018, 11, 13, 17, 59, 2, tzinfo=UTC), None, "/min", status=("invalid",))
    reading = Reading(SYSID_DEVICE, PATIENT, (metric,))
    assert conditional_identifier(reading, metric, "1.1.0")[1].endswith("-149530-error-/min-20181113175902.00")


def test_identifier_v1_compound_lists_component_values_and_units():
    metric = Metric(150020, datetime(2018, 11, 11, 11, 38, 15, tzinfo=tz(-5)), unit="mm[Hg]", components=(
        Component(150021, Decimal("116"), "mm[Hg]"), Component(150022, Decimal("71"), "mm[Hg]")))
    reading = Reading(SYSID_DEVICE, PATIENT, (metric,))
    assert conditional_identifier(reading, metric, "1.1.0")[1].endswith(
        "-150020-116-mm[Hg]-71-mm[Hg]-20181111113815.00")


def test_unknown_ig_version():
    reading = Reading(SYSID_DEVICE, PATIENT, (spo2(),))
    with pytest.raises(ValueError, match="2.0.0"):
        conditional_identifier(reading, reading.metrics[0], "3.0.0")


# ---------------------------------------------------------------- ifNoneExist


def test_if_none_exist_percent_encodes_plus():
    query = if_none_exist(PHD_SYSTEM, "74E8FFFEFF051C00-id-urn:oid:1.2-150456-690897390+4")
    assert query == f"identifier={PHD_SYSTEM}|74E8FFFEFF051C00-id-urn:oid:1.2-150456-690897390%2B4"
    # What a server's query parser makes of it: the exact token, '+' intact (unencoded it became ' ').
    assert parse_qs(query)["identifier"] == [f"{PHD_SYSTEM}|74E8FFFEFF051C00-id-urn:oid:1.2-150456-690897390+4"]


@pytest.mark.parametrize(("raw", "encoded"), [
    ("a+b", "a%2Bb"), ("a&b", "a%26b"), ("a#b", "a%23b"), ("a%b", "a%25b"), ("a b", "a%20b"),
    ("a=b", "a%3Db"), ("a?b", "a%3Fb"), ("ü", "%C3%BC"),
    ("a|b", "a%5C%7Cb"), ("a,b", "a%5C%2Cb"), ("a$b", "a%5C%24b"), ("a\\b", "a%5C%5Cb"),  # FHIR token escapes
])
def test_if_none_exist_encodes_query_specials(raw, encoded):
    assert if_none_exist("urn:x", raw) == f"identifier=urn:x|{encoded}"


def test_if_none_exist_without_system_for_v1():
    assert if_none_exist(None, "A-b-1-2+x") == "identifier=A-b-1-2%2Bx"


# ---------------------------------------------------------------- the time part is the reported value (issue 17)
# PHD IG 2.0.0 "Generating the PHD Reported Timestamp Identifier": a tick counter -> the seconds it represents;
# local or UTC time -> the seconds since 2000-01-01 it represents; the TZ/DST offset appended only when the
# device reported one. 1.1.0: absolute time as DTM of the reported wall time, relative time as the tick count.

LOCAL_GATEWAY = Stamp("local", device_offset=False)  # a Bluetooth Date Time, an IEEE 11073 Absolute-Time
LOCAL_DEVICE = Stamp("local", device_offset=True)  # a local time with the device's TZ/DST (CGM session start)
UTC_DEVICE = Stamp("utc", device_offset=True)  # IEEE 11073 Base-Offset-Time, a GHS UTC time with its offset
UTC_GATEWAY = Stamp("utc", device_offset=False)  # a UTC clock that reports no offset


def test_ig_examples_tick_counter():
    """The IG's example: 12345678 ticks of 1 ms are "12345.678"; 1.1.0 writes the reported count."""
    ticks = Stamp("ticks", device_offset=False, ticks=12345678, tick_rate=1000)
    placed = datetime(2026, 11, 28, 9, tzinfo=tz(1))  # where the gateway put it: not in the identifier
    assert timestamp_v2(placed, 3, ticks) == "12345.678"
    assert timestamp_v1(placed, ticks) == "12345678"


def test_ig_example_local_or_utc_time_with_its_offset():
    """The IG's example, 2021-11-22 11:56:30.567 with an offset of +4 reported: "690897390.567+4" (the IG prints
    690897360, 30 s off; see the count checked at the top). Local: the wall time's seconds; UTC: the instant's."""
    local = datetime(2021, 11, 22, 11, 56, 30, 567000, tzinfo=tz(1))  # wall 11:56:30 in the device's +01:00
    utc = datetime(2021, 11, 22, 12, 56, 30, 567000, tzinfo=tz(1))  # 11:56:30 UTC, shown in +01:00
    assert timestamp_v2(local, 3, LOCAL_DEVICE) == "690897390.567+4"
    assert timestamp_v2(utc, 3, UTC_DEVICE) == "690897390.567+4"


@pytest.mark.parametrize(("time", "stamp", "expected"), [
    # No offset reported: none appended (today's code appended the gateway's "+4" / "-20").
    (datetime(2021, 11, 22, 11, 56, 30, 567000, tzinfo=tz(1)), LOCAL_GATEWAY, "690897390.567"),
    (datetime(2021, 11, 22, 11, 56, 30, 567000, tzinfo=tz(-5)), LOCAL_GATEWAY, "690897390.567"),
    (datetime(2021, 11, 22, 12, 56, 30, 567000, tzinfo=tz(1)), UTC_GATEWAY, "690897390.567"),
    (datetime(2021, 11, 22, 11, 56, 30, 567000, tzinfo=UTC), UTC_GATEWAY, "690897390.567"),
    # Local seconds of a local clock, whatever offset placed it (today's code counted UTC seconds: ...387790).
    (datetime(2021, 11, 22, 11, 56, 30, 567000, tzinfo=tz(1)), LOCAL_DEVICE, "690897390.567+4"),
    (datetime(2021, 11, 22, 11, 56, 30, 567000, tzinfo=tz(-5)), LOCAL_DEVICE, "690897390.567-20"),
    (datetime(1999, 12, 31, 23, 59, 59, 500000, tzinfo=tz(1)), LOCAL_GATEWAY, "-0.500"),  # before 2000: rounded down
])
def test_timestamp_v2_encodes_the_reported_value(time, stamp, expected):
    assert timestamp_v2(time, 3, stamp) == expected


@pytest.mark.parametrize(("ticks", "rate", "expected"), [
    (320000, 8000, "40.000000"),  # IEEE 11073-20601 Relative-Time, 1/8 ms: 0.000125 s needs 6 decimals
    (320001, 8000, "40.000125"),
    (123456789, 1_000_000, "123.456789"),  # HighResRelativeTime, 1 us
    (42, 1, "42"),  # 1 s resolution: no fraction
    (12345, 10, "1234.5"),  # GHS 100 ms
    (0, 1000, "0.000"),
])
def test_tick_counters_at_their_resolution(ticks, rate, expected):
    assert timestamp_v2(datetime(2026, 1, 1, tzinfo=UTC), 0, Stamp("ticks", False, ticks, rate)) == expected


def test_timestamp_v1_writes_a_utc_clock_without_offset_in_utc():
    assert timestamp_v1(datetime(2021, 11, 22, 12, 56, 30, tzinfo=tz(1)), UTC_GATEWAY) == "20211122115630.00"
    assert timestamp_v1(datetime(2021, 11, 22, 12, 56, 30, tzinfo=tz(1)), UTC_DEVICE) == "20211122125630.00"
    assert timestamp_v1(datetime(2018, 11, 13, 17, 59, 2, tzinfo=tz(1)), LOCAL_GATEWAY) == "20181113175902.00"


offsets = st.integers(-48, 56).map(lambda q: timezone(timedelta(minutes=15 * q)))
walls = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2099, 12, 31))


@settings(max_examples=200, deadline=None)
@given(walls, offsets, offsets, st.integers(0, 6))
def test_two_gateways_in_any_zones_agree_on_a_local_clock(wall, here, there, digits):
    """Gateways in different zones attach their own offsets to the same zoneless wall time: same time part."""
    assert (timestamp_v2(wall.replace(tzinfo=here), digits, LOCAL_GATEWAY)
            == timestamp_v2(wall.replace(tzinfo=there), digits, LOCAL_GATEWAY))


@settings(max_examples=200, deadline=None)
@given(walls, offsets, offsets, st.integers(0, 6))
def test_a_utc_clock_without_offset_is_the_instant_whatever_zone_shows_it(wall, here, there, digits):
    instant = wall.replace(tzinfo=UTC)
    assert (timestamp_v2(instant.astimezone(here), digits, UTC_GATEWAY)
            == timestamp_v2(instant.astimezone(there), digits, UTC_GATEWAY))


# ---------------------------------------------------------------- the reading document says it

def document_identifier(time: str, version: str = "2.0.0", **stamp) -> str:
    doc = {"device": {"system_id": "74E8FFFEFF051C00"}, "patient": {"system": PATIENT.system, "value": PATIENT.value},
           "metrics": [{"code": 150456, "value": "98", "unit": "%", "time": time} | stamp]}
    reading = parse_reading(doc)
    assert parse_reading(reading.to_document()) == reading  # the canonical form keeps the stamp
    return conditional_identifier(reading, reading.metrics[0], version)[1].rsplit("-", 1)[-1]


def test_a_document_that_says_nothing_keeps_its_old_identifier_and_text():
    """Documents (and readings queued before this change) without time_kind: a UTC instant with the offset
    its writer gave, the identifier they always had; their canonical text gains no key (same outbox key)."""
    assert document_identifier("2021-11-22T12:56:30+01:00") == "690897390+4"
    doc = {"device": {"system_id": "74E8FFFEFF051C00"}, "patient": {"system": "urn:x", "value": "p"},
           "metrics": [{"code": 150456, "value": "98", "unit": "%", "time": "2021-11-22T12:56:30+01:00"}]}
    assert parse_reading(doc).to_document()["metrics"][0].keys() == {"code", "time", "value", "unit"}


@pytest.mark.parametrize(("time", "stamp", "v2", "v1"), [
    ("2021-11-22T11:56:30+01:00", {"time_kind": "local"}, "690897390", "20211122115630.00"),
    ("2021-11-22T11:56:30-05:00", {"time_kind": "local"}, "690897390", "20211122115630.00"),
    ("2021-11-22T11:56:30+01:00", {"time_kind": "local", "offset_from": "device"}, "690897390+4", "20211122115630.00"),
    ("2021-11-22T12:56:30+01:00", {"offset_from": "gateway"}, "690897390", "20211122115630.00"),
    ("2021-11-22T12:56:30+01:00", {"time_kind": "utc", "offset_from": "device"}, "690897390+4", "20211122125630.00"),
    ("2021-11-22T12:56:30+01:00", {"time_kind": "ticks", "ticks": 12345678, "tick_rate": 1000}, "12345.678", "12345678"),
    # 2021-11-22T11:56:30Z is 1637582190 s after 1970-01-01 (the 2000 count above + 946684800), offset 60 min
    ("2021-11-22T12:56:30+01:00", {"time_kind": "base-offset"}, "690897390+4", "1637582190.0.+60"),
])
def test_documents_say_how_the_device_reported_the_time(time, stamp, v2, v1):
    assert document_identifier(time, **stamp) == v2
    assert document_identifier(time, "1.1.0", **stamp) == v1


@pytest.mark.parametrize(("stamp", "where", "why"), [
    ({"time_kind": "ticks", "ticks": 5}, "metrics[0]", "tick_rate"),
    ({"time_kind": "ticks", "ticks": 5, "tick_rate": 1000, "offset_from": "device"}, "metrics[0]", "offset_from"),
    ({"time_kind": "local", "ticks": 5}, "metrics[0]", "'ticks' does not go with time_kind 'local'"),
    ({"time_kind": "ticks", "ticks": 5, "tick_rate": 3}, "metrics[0].tick_rate", "finite decimal fraction"),
    ({"time_kind": "zulu"}, "metrics[0].time_kind", "zulu"),
    ({"offset_from": "nobody"}, "metrics[0].offset_from", "nobody"),
    ({"time_kind": "base-offset", "offset_from": "device"}, "metrics[0]", "and 'received' take no offset_from"),
    ({"time_kind": "received", "offset_from": "gateway"}, "metrics[0]", "and 'received' take no offset_from"),
])
def test_documents_with_a_bad_stamp_are_refused_naming_the_field(stamp, where, why):
    with pytest.raises(ReadingError) as caught:
        document_identifier("2021-11-22T12:56:30+01:00", **stamp)
    assert caught.value.where == where and why in caught.value.why


stamps = st.one_of(
    st.builds(Stamp, st.sampled_from(["local", "utc"]), st.booleans()),
    st.just(Stamp("base-offset", True)),
    st.builds(lambda ticks, a, b: Stamp("ticks", False, ticks, 2**a * 5**b), st.integers(0, 10**18 - 1), st.integers(0, 20),
              st.integers(0, 9)),
)


@settings(max_examples=200, deadline=None)
@given(stamps, walls, offsets)
def test_any_stamp_survives_the_canonical_document_and_leaves_the_key_alone(stamp, wall, offset):
    """What the outbox stores (Reading.to_json) gives the same Stamp back, and so the same identifier; the
    outbox key is the same whatever the stamp (a reading queued before stamps is recognised after)."""
    metric = Metric(150456, wall.replace(microsecond=0, tzinfo=offset), Decimal("98"), "%", stamp=stamp)
    reading = Reading(SYSID_DEVICE, PATIENT, (metric,))
    again = parse_reading(reading.to_document())
    assert again == reading
    assert conditional_identifier(again, again.metrics[0]) == conditional_identifier(reading, metric)
    assert reading.key == Reading(SYSID_DEVICE, PATIENT, (Metric(150456, metric.time, Decimal("98"), "%"),)).key


@pytest.mark.parametrize("kwargs", [
    {"kind": "zulu"}, {"kind": "ticks"}, {"kind": "ticks", "ticks": 1}, {"kind": "utc", "ticks": 1, "tick_rate": 1},
    {"kind": "ticks", "device_offset": True, "ticks": 1, "tick_rate": 1},
    {"kind": "ticks", "device_offset": False, "ticks": -1, "tick_rate": 1},
    {"kind": "ticks", "device_offset": False, "ticks": 1, "tick_rate": 3},
    {"kind": "base-offset", "device_offset": False},
])
def test_impossible_stamps_are_refused(kwargs):
    with pytest.raises(ValueError):
        Stamp(**kwargs)
