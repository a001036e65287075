"""PHD IG duplicate-detection identifier and its ifNoneExist query, checked against hand-computed values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qs

import pytest

from phg.errors import MappingError
from phg.fhir import conditional_identifier, if_none_exist
from phg.fhir.identifier import timestamp_v1, timestamp_v2
from phg.model import Component, Device, Metric, PatientRef, Reading

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
