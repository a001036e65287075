"""The device clock -> PHD IG Coincident Time Stamp Observation (2.0.0 and 1.1.0), and the timestamp
correction the gateway applies: FHIR-valid (fhir.resources R4B), shaped like the IG's coin-*.json and
bundle-example-1.json, one per device clock reading, deterministic."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qs

import pytest

from phg.errors import MappingError
from phg.fhir import IG_VERSIONS, build_transaction, conditional_identifier, to_json
from phg.model import Device, DeviceClock, Gateway, PatientRef, Reading, parse_reading
from phg.sources.ble.gatt import decode, to_metrics
from phg.sources.ieee11073.manager import MdsInfo, Observation
from phg.sources.ieee11073.mder import AbsoluteTime, decode_base_offset_time, decode_sfloat
from phg.sources.ieee11073.readings import metric_of
from shared_vectors import VECTORS as SHARED
from test_fhir_mapping import validate

VECTORS = SHARED / "phd"
GATEWAY = Gateway(system_id="ECDE3D4E58532D31", serial="0001", firmware="1.2.3")  # NTPv4 (532226)
PATIENT = {"system": "urn:oid:2.999.1.2.3.4.5.6.7.8.10", "value": "sisansarahId"}
OXIMETER = {"system_id": "74E8FFFEFF051C00", "bt_address": "00:1C:05:FF:E8:74", "manufacturer": "Nonin"}
# bundle-example-1.json's own clock: the PHG read 12:40:09.000 on the PHD at 12:40:07.936 of its own time.
CLOCK = {"gateway_time": "2019-09-20T12:40:07.936-04:00", "device_time": "2019-09-20T12:40:09.000-04:00"}
METRICS = [{"type": "spo2", "value": 98, "time": "2019-09-20T12:40:18-04:00"},
           {"type": "pulse_rate_oximeter", "value": 47, "time": "2019-09-20T12:40:18-04:00"}]
CTS_PROFILE = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCoincidentTimeStampObservation"
CTS_EXTENSION = "http://hl7.org/fhir/uv/phd/StructureDefinition/CoincidentTimeStampReference"
GATEWAY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"


def reading(clock: dict | None = CLOCK, metrics: list | None = None, **changes):
    doc = {"device": OXIMETER, "patient": PATIENT, "metrics": metrics or METRICS} | changes
    if clock is not None:
        doc["clock"] = clock
    return parse_reading(json.loads(json.dumps(doc), parse_float=Decimal))


def vector(name: str, version: str = "v2.0.0") -> dict:
    return json.loads((VECTORS / version / name).read_text())


def example_resource(resource_id: str) -> dict:
    """A resource of vectors/phd/v2.0.0/bundle-example-1.json by id."""
    return next(e["resource"] for e in vector("bundle-example-1.json")["entry"] if e["resource"].get("id") == resource_id)


def codings(concept: dict) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in concept["coding"]}


def is_cts(resource: dict) -> bool:
    return resource["meta"]["profile"] == [CTS_PROFILE]


def ctss(bundle: dict) -> list[dict]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation" and is_cts(e["resource"])]


def measurements(bundle: dict) -> list[dict]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation" and not is_cts(e["resource"])]


def url_of(bundle: dict, profile: str) -> str:
    (url,) = [e["fullUrl"] for e in bundle["entry"] if e["resource"]["meta"]["profile"][0].endswith("/" + profile)]
    return url


# ---------------------------------------------------------------- validity


@pytest.mark.parametrize("version", IG_VERSIONS)
@pytest.mark.parametrize("clock", [
    CLOCK,
    CLOCK | {"sync": 532224},
    CLOCK | {"sync": 532229},
    {"gateway_time": "2019-09-20T12:40:07.936-04:00", "device_time": None},
])
def test_bundles_with_clocks_validate(version, clock):
    transaction = build_transaction([reading(clock), reading(None)], GATEWAY, version)
    validate(transaction.bundle)
    assert len(ctss(transaction.bundle)) == 1


# ---------------------------------------------------------------- IG 2.0.0 structure


def test_coincident_time_stamp_matches_ig_2_0_0_examples():
    """Against vectors/phd/v2.0.0/bundle-example-1.json (cts-001) and coin-example-1.json."""
    bundle = build_transaction([reading()], GATEWAY).bundle
    (entry,) = ctss(bundle)
    cts = entry["resource"]
    example = example_resource("cts-001")
    assert cts["meta"] == example["meta"] == vector("coin-example-1.json")["meta"]
    assert cts["code"]["coding"] == example["code"]["coding"] == vector("coin-example-1.json")["code"]["coding"]
    assert cts["status"] == example["status"] == "final"
    assert "category" not in cts and "category" not in example  # the profile's parent is Observation, not PhdBaseObservation
    assert "extension" not in cts and "extension" not in example
    assert cts["subject"] == {"reference": url_of(bundle, "PhdDevice")}
    assert cts["device"] == {"reference": url_of(bundle, "PhgDevice")}
    # This is the example's own clock: the same gateway and device times, printed the same way.
    assert (cts["effectiveDateTime"], cts["valueDateTime"]) == ("2019-09-20T12:40:07.936-04:00",
                                                               "2019-09-20T12:40:09-04:00")
    assert "component" not in cts  # no sync method known
    # Same entry order as the example: Patient, PhgDevice, PhdDevice, CTS, then the measurements.
    ours = [e["resource"]["meta"]["profile"][0].rsplit("/", 1)[1] for e in bundle["entry"]]
    theirs = [e["resource"]["meta"]["profile"][0].rsplit("/", 1)[1] for e in vector("bundle-example-1.json")["entry"]]
    assert ours == theirs


def test_measurements_reference_it_with_the_extension():
    bundle = build_transaction([reading()], GATEWAY).bundle
    (cts,) = ctss(bundle)
    example = example_resource("pulse-ox-001")
    assert [x["url"] for x in example["extension"]] == [GATEWAY_EXTENSION, CTS_EXTENSION]
    for entry in measurements(bundle):
        obs = entry["resource"]
        assert [x["url"] for x in obs["extension"]] == [GATEWAY_EXTENSION, CTS_EXTENSION]
        assert obs["extension"][1]["valueReference"] == {"reference": cts["fullUrl"]}
        assert "derivedFrom" not in obs


def test_effective_time_is_corrected_like_the_ig_example():
    """An unsynchronised PHD 1.064 s ahead: the PHG puts its measurements on its own timeline
    (CoincidentTimeStamp.md); bundle-example-1.json's pulse-ox-001 says 12:40:16.936 for this clock."""
    r = reading()
    bundle = build_transaction([r], GATEWAY).bundle
    example = example_resource("pulse-ox-001")
    for entry, metric in zip(measurements(bundle), r.metrics, strict=True):
        assert entry["resource"]["effectiveDateTime"] == example["effectiveDateTime"] == "2019-09-20T12:40:16.936-04:00"
        # The duplicate-detection identifier keeps the device's own timestamp (ObservationIdentifier.md).
        assert entry["resource"]["identifier"][0]["value"] == conditional_identifier(r, metric)[1]
        assert entry["resource"]["identifier"][0]["value"] == conditional_identifier(reading(None), metric)[1]


def test_correction_keeps_device_offset_and_resolution():
    clock = {"gateway_time": "2026-11-28T08:00:05Z", "device_time": "2026-11-28T09:00:00+01:00", "sync": 532224}
    metrics = [{"type": "body_temperature", "value": "36.50", "unit": "Cel", "time": "2026-11-28T08:30:00.25+01:00"},
               {"type": "spo2", "value": 97, "time": "2026-11-28T08:31:00+01:00"}]
    bundle = build_transaction([reading(clock, metrics)], GATEWAY).bundle
    assert [e["resource"]["effectiveDateTime"] for e in measurements(bundle)] == [
        "2026-11-28T08:30:05.25+01:00", "2026-11-28T08:31:05+01:00"]


def test_synchronised_device_with_a_synchronised_gateway_is_corrected():
    bundle = build_transaction([reading(CLOCK | {"sync": 532229})], GATEWAY).bundle
    (cts,) = ctss(bundle)
    assert cts["resource"]["effectiveDateTime"] == "2019-09-20T12:40:07.936-04:00"
    assert all(e["resource"]["effectiveDateTime"] == "2019-09-20T12:40:16.936-04:00" for e in measurements(bundle))


def test_better_synchronised_device_keeps_its_times_and_the_cts_has_no_effective():
    """PhdCoincidentTimeStampObservation.fsh: effective[x] "Absent if PHD is better synchronized"; the PHG then
    reports the PHD's timestamps unmodified (CoincidentTimeStamp.md)."""
    unsynced_gateway = GATEWAY._replace(time_sync=532224)
    bundle = build_transaction([reading(CLOCK | {"sync": 532226})], unsynced_gateway).bundle
    validate(bundle)
    (cts,) = ctss(bundle)
    assert "effectiveDateTime" not in cts["resource"] and cts["resource"]["valueDateTime"] == "2019-09-20T12:40:09-04:00"
    assert all(e["resource"]["effectiveDateTime"] == "2019-09-20T12:40:18-04:00" for e in measurements(bundle))
    assert all(e["resource"]["extension"][1]["url"] == CTS_EXTENSION for e in measurements(bundle))


def test_sync_method_component():
    bundle = build_transaction([reading(CLOCK | {"sync": 532229})], GATEWAY).bundle
    (cts,) = ctss(bundle)
    (component,) = cts["resource"]["component"]
    example = vector("coin-20181119174911.json")["component"][0]
    assert codings(component["code"]) == codings(example["code"]) == {("urn:iso:std:iso:11073:10101", "68220")}
    assert codings(component["valueCodeableConcept"]) == {("urn:iso:std:iso:11073:10101", "532229")}
    assert component["valueCodeableConcept"]["coding"][0]["display"] == "MDC_TIME_SYNC_BTV1"


def test_time_fault_gives_data_absent_reason_and_keeps_device_times():
    clock = {"gateway_time": "2018-11-20T04:50:47-05:00", "device_time": None}
    bundle = build_transaction([reading(clock)], GATEWAY).bundle
    validate(bundle)
    (cts,) = ctss(bundle)
    example = vector("coin-example-timefault.json")
    assert "valueDateTime" not in cts["resource"]
    assert cts["resource"]["dataAbsentReason"] == example["dataAbsentReason"]
    assert cts["resource"]["effectiveDateTime"] == example["effectiveDateTime"] == "2018-11-20T04:50:47-05:00"
    assert all(e["resource"]["effectiveDateTime"] == "2019-09-20T12:40:18-04:00" for e in measurements(bundle))
    assert all(e["resource"]["extension"][1]["url"] == CTS_EXTENSION for e in measurements(bundle))


# ---------------------------------------------------------------- IG 1.1.0


def test_ig_1_1_0_coincident_time_stamp_and_derived_from():
    """v1.1.0 coin-1234.json: gatewayDevice extension, subject Patient, device PhdDevice; measurements
    point at it with derivedFrom (glucose-1.0.0.4.json, bloodPress-1.0.1.json)."""
    bundle = build_transaction([reading(CLOCK | {"sync": 532224})], GATEWAY, "1.1.0").bundle
    (entry,) = ctss(bundle)
    cts, example = entry["resource"], vector("coin-1234.json", "v1.1.0")
    assert cts["meta"] == example["meta"]
    assert codings(cts["code"]) == codings(example["code"])
    assert [x["url"] for x in cts["extension"]] == [x["url"] for x in example["extension"]] == [GATEWAY_EXTENSION]
    assert cts["extension"][0]["valueReference"] == {"reference": url_of(bundle, "PhgDevice")}
    assert cts["subject"] == {"reference": url_of(bundle, "PhdPatient")}
    assert cts["device"] == {"reference": url_of(bundle, "PhdDevice")}
    assert "component" not in cts
    for obs in measurements(bundle):
        assert obs["resource"]["derivedFrom"] == [{"reference": entry["fullUrl"]}]
        assert [x["url"] for x in obs["resource"]["extension"]] == [GATEWAY_EXTENSION]
        assert obs["resource"]["effectiveDateTime"] == "2019-09-20T12:40:16.936-04:00"


def test_ig_1_1_0_coincident_time_stamp_is_per_patient():
    other = reading(patient={"system": "urn:oid:1.2.3", "value": "other"})
    assert len(ctss(build_transaction([reading(), other], GATEWAY, "1.1.0").bundle)) == 2
    assert len(ctss(build_transaction([reading(), other], GATEWAY, "2.0.0").bundle)) == 1


# ---------------------------------------------------------------- sharing and determinism


def test_two_readings_with_the_same_clock_share_one_cts():
    first = reading()
    second = reading(metrics=[{"type": "spo2", "value": 95, "time": "2019-09-20T12:39:00-04:00"}])
    transaction = build_transaction([first, second], GATEWAY)
    entries = transaction.bundle["entry"]
    (cts,) = ctss(transaction.bundle)
    n = entries.index(cts)
    assert transaction.shared_entries == [0, 1, 2, n] and n == 3
    assert transaction.reading_entries == [[4, 5], [6]]
    assert all(n not in indices for indices in transaction.reading_entries)
    for indices in transaction.reading_entries:
        for i in indices:
            assert entries[i]["resource"]["extension"][1]["valueReference"] == {"reference": cts["fullUrl"]}
    validate(transaction.bundle)


def test_another_connection_gets_its_own_cts_and_unclocked_readings_none():
    later = reading({"gateway_time": "2019-09-21T08:00:00-04:00", "device_time": "2019-09-21T08:00:02-04:00"},
                    [{"type": "spo2", "value": 96, "time": "2019-09-21T07:59:00-04:00"}])
    plain = reading(None, [{"type": "spo2", "value": 94, "time": "2019-09-22T07:59:00-04:00"}])
    transaction = build_transaction([reading(), later, plain], GATEWAY)
    entries = transaction.bundle["entry"]
    first_cts, later_cts = ctss(transaction.bundle)
    assert transaction.shared_entries == [0, 1, 2, 3, 4]
    assert entries[transaction.reading_entries[1][0]]["resource"]["extension"][1]["valueReference"] == \
        {"reference": later_cts["fullUrl"]}
    assert entries[transaction.reading_entries[1][0]]["resource"]["effectiveDateTime"] == "2019-09-21T07:58:58-04:00"
    (plain_obs,) = [entries[i]["resource"] for i in transaction.reading_entries[2]]
    assert [x["url"] for x in plain_obs["extension"]] == [GATEWAY_EXTENSION]
    assert plain_obs["effectiveDateTime"] == "2019-09-22T07:59:00-04:00"
    assert first_cts["fullUrl"] != later_cts["fullUrl"]
    validate(transaction.bundle)


def test_cts_is_a_deterministic_conditional_create():
    readings = [reading(CLOCK | {"sync": 532224}), reading(None)]
    first = to_json(build_transaction(readings, GATEWAY).bundle)
    assert first == to_json(build_transaction(readings, GATEWAY).bundle)
    (cts,) = ctss(build_transaction(readings, GATEWAY).bundle)
    assert cts["request"]["method"] == "POST" and cts["request"]["url"] == "Observation"
    (identifier,) = cts["resource"]["identifier"]
    assert identifier["system"] == "urn:ietf:rfc:3986"
    assert re.fullmatch(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", identifier["value"])
    assert parse_qs(cts["request"]["ifNoneExist"])["identifier"] == [f"urn:ietf:rfc:3986|{identifier['value']}"]
    # Another clock reading of the same device is another CTS.
    (other,) = ctss(build_transaction([reading(CLOCK | {"device_time": "2019-09-20T12:40:10-04:00"})], GATEWAY).bundle)
    assert other["resource"]["identifier"] != cts["resource"]["identifier"] and other["fullUrl"] != cts["fullUrl"]


def test_readings_without_clock_map_as_before():
    bundle = build_transaction([reading(None)], GATEWAY).bundle
    assert ctss(bundle) == []
    assert [e["resource"]["effectiveDateTime"] for e in measurements(bundle)] == ["2019-09-20T12:40:18-04:00"] * 2


def test_tick_clocks_are_refused_with_a_clear_error():
    r = reading()._replace(clock=DeviceClock(datetime.fromisoformat("2019-09-20T12:40:07-04:00"), None, clock_type=67983))
    with pytest.raises(MappingError, match="only absolute clocks"):
        build_transaction([r], GATEWAY)


# ---------------------------------------------------------------- each source's clock -> the identifier's time part
# (issue 17; README.md "The identifier's time part: source clock -> identifier time part": one table row per test below)

def identifier_times(metrics, version: str = "2.0.0") -> list[str]:
    reading = Reading(Device(system_id="74E8FFFEFF051C00"), PatientRef(PATIENT["system"], PATIENT["value"]),
                      tuple(metrics))
    head = f"74E8FFFEFF051C00-{PATIENT['value']}-{PATIENT['system']}-"
    # after the head: 2.0.0 "type-time", 1.1.0 "type-value-units-time" (these values and units hold no dash)
    return [conditional_identifier(reading, m, version)[1].removeprefix(head).split("-", 3 if version == "1.1.0" else 1)[-1]
            for m in metrics]


def ble_metrics(uuid: int, payload: str, offset: timedelta, **kwargs):
    received = datetime(2026, 11, 28, 9, 0, tzinfo=timezone(offset))
    return to_metrics(decode(uuid, bytes.fromhex(payload)), utc_offset=offset, received=received, **kwargs)


# The IG 1.1.0 page's own Bluetooth example: Date Time E0 07 05 17 11 34 11 = 2016-05-23 17:52:17 (local, no zone),
# here in a Health Thermometer measurement (flags 02: time stamp; 37.60 Cel).
THERMOMETER_IG_TIME = "02" "b00e00fe" "e0070517113411"
# 2016-05-23T17:52:17 is 5987 days (16 years of which 4 leap, + 143 days of 2016) and 64337 s after 2000-01-01.
assert 5987 * 86400 + 17 * 3600 + 52 * 60 + 17 == 517341137


@pytest.mark.parametrize("offset", [timedelta(hours=1), timedelta(hours=-5), timedelta(hours=5, minutes=45)])
def test_bluetooth_legacy_time_is_local_seconds_without_the_gateways_offset(offset):
    """Two gateways in different zones receiving the same measurement compute the same identifier; the
    offset they attach places the effective time only. Today's code: UTC seconds plus the gateway's offset."""
    (metric,) = ble_metrics(0x2A1C, THERMOMETER_IG_TIME, offset)
    assert metric.time.utcoffset() == offset  # effectiveDateTime: the wall time in the gateway's zone
    assert identifier_times([metric]) == ["517341137"]
    assert identifier_times([metric], "1.1.0") == ["20160523175217.00"]  # the IG 1.1.0 example's value


def test_bluetooth_cgm_time_carries_the_sensors_own_time_zone():
    """CGM Session Start Time 2026-11-28 08:00 with Time Zone +4 (1 h), DST 0: the device's offset, appended.
    Record offsets 5 and 6 min: local 08:05 = 9828 days and 29100 s after 2000-01-01."""
    session = decode(0x2AAA, bytes.fromhex("ea070b1c080000" "04" "00"))
    assert 9828 * 86400 + 8 * 3600 + 5 * 60 == 849168300
    for gateway in (timedelta(hours=-5), timedelta(hours=9)):
        records = ble_metrics(0x2AA7, "06000c10050006000c100600", gateway, session_start=session)
        assert identifier_times(records) == ["849168300+4", "849168360+4"]
        assert identifier_times(records, "1.1.0") == ["20261128080500.00", "20261128080600.00"]  # the local wall time
    unknown_zone = decode(0x2AAA, bytes.fromhex("ea070b1c080000" "80" "ff"))  # Time Zone -128, DST 255: unknown
    records = ble_metrics(0x2AA7, "06000c10050006000c100600", timedelta(hours=-5), session_start=unknown_zone)
    assert identifier_times(records) == ["849168300", "849168360"]
    assert identifier_times(records, "1.1.0") == ["20261128080500.00", "20261128080600.00"]


def test_time_of_reception_is_the_gateways_utc_clock_with_its_offset():
    """No device time (Heart Rate): the gateway is the clock: UTC seconds to the millisecond and its offset."""
    (metric,) = ble_metrics(0x2A37, "0055", timedelta(hours=1))  # received 09:00+01:00 = 08:00 UTC
    assert identifier_times([metric]) == ["849168000.000+4"]
    assert identifier_times([metric], "1.1.0") == ["20261128090000.00"]  # the gateway's wall time


def test_a_time_of_reception_is_not_corrected_by_the_device_clock_nor_linked_to_its_cts():
    """Review B finding 4: the device's clock is an hour slow (its CTS says so); a heart rate it did not time is
    received at the gateway's time, already on the gateway's timeline: sent as received, without the CTS reference
    (the CTS describes the device clock, which did not time it). A measurement the device timed in the same bundle is
    still moved onto the gateway's timeline and linked."""
    received = datetime(2026, 11, 28, 9, 0, 0, 250000, tzinfo=timezone(timedelta(hours=1)))
    clock = DeviceClock(received, received - timedelta(hours=1), 67975)
    (heart,) = to_metrics(decode(0x2A37, bytes.fromhex("0055")), utc_offset=timedelta(hours=1), received=received)
    (timed,) = to_metrics(decode(0x2A1C, bytes.fromhex(THERMOMETER_IG_TIME)), utc_offset=timedelta(hours=1),
                          received=received)
    device = Device(bt_address="00:1C:05:FF:E8:74")
    patient = PatientRef(PATIENT["system"], PATIENT["value"])
    for version in IG_VERSIONS:
        bundle = build_transaction([Reading(device, patient, (heart, timed), clock=clock)], GATEWAY, version).bundle
        (cts,) = ctss(bundle)
        heart_obs, timed_obs = (entry["resource"] for entry in measurements(bundle))
        assert heart_obs["effectiveDateTime"] == "2026-11-28T09:00:00.250+01:00"
        assert cts["fullUrl"] not in repr(heart_obs)
        assert timed_obs["effectiveDateTime"] == "2016-05-23T18:52:17+01:00"  # moved by the hour the device is slow
        assert cts["fullUrl"] in repr(timed_obs)


def observation_metric(time, *, time_rel=None, time_hi_res=None):
    mds = MdsInfo("74E8FFFEFF051C00", time_rel=time_rel, time_hi_res=time_hi_res)
    obs = Observation(1, 150364, 6048, value=decode_sfloat(0xF170), time=time)
    read_at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    return metric_of(obs, mds, timedelta(hours=-5), read_at, read_at)


def test_ieee11073_absolute_time_is_local_like_the_ig_example():
    """The IG 1.1.0 page's own IEEE 11073 example: Absolute-Time 20 07 02 01 12 05 20 86 -> 20070201120520.86;
    2.0.0: 2007-02-01 12:05:20.86 local = 2588 days (7 years, 2 leap, + 31) and 43520.86 s after 2000-01-01."""
    metric = observation_metric(AbsoluteTime(bytes.fromhex("2007020112052086")))
    assert 2588 * 86400 + 12 * 3600 + 5 * 60 + 20 == 223646720
    assert identifier_times([metric]) == ["223646720.86"]
    assert identifier_times([metric], "1.1.0") == ["20070201120520.86"]


@pytest.mark.parametrize(("raw", "v2", "v1"), [
    ("D4674038" "1314" "FED4", "2616851640.074-20", "3563536440.4884.-300"),  # the IG 1.1.0 page's own example
    ("D4674038" "1314" "012C", "2616851640.074+20", "3563536440.4884.+300"),  # its "if offset is positive"
    ("D4674038" "FFFF" "0000", "2616851640.999+0", "3563536440.65535.+0"),
    ("D4674038" "0000" "0000", "2616851640+0", "3563536440.0.+0"),
])
def test_ieee11073_base_offset_time_is_utc_with_the_devices_offset(raw, v2, v1):
    """The IG 1.1.0 page's Base-Offset-Time bytes D4 67 40 38 13 14 FE D4: 3563536440 s, 4884/65536 s, -300 min.
    2.0.0: phg reads the seconds from IEEE 1588's 1970 (mder.BO_EPOCH): 3563536440 - 946684800 s after
    2000-01-01 UTC, 0.074523 s (3 digits kept), offset -300 min = -20 quarter hours, the device's: appended.
    1.1.0: the three fields as sent, "3563536440.4884.-300", exactly the page's example."""
    metric = observation_metric(decode_base_offset_time(bytes.fromhex(raw)))
    assert identifier_times([metric]) == [v2]
    assert identifier_times([metric], "1.1.0") == [v1]


def test_the_identifier_writes_base_offset_seconds_back_from_the_decoders_epoch():
    from phg.fhir import identifier
    from phg.sources.ieee11073 import mder

    assert identifier._BO_EPOCH == mder.BO_EPOCH


@pytest.mark.parametrize(("time", "expected"), [
    (("rel", 8000 * 40 + 1), "40.000125"),  # Relative-Time, 1/8 ms ticks: the seconds they represent
    (("hi-res", 123456789), "123.456789"),  # HighResRelativeTime, 1 us ticks
])
def test_ieee11073_relative_time_is_its_ticks(time, expected):
    """The tick count, not where the gateway placed it: the same with or without the MDS's clock read."""
    placed = observation_metric(time, time_rel=8000 * 100, time_hi_res=10**9)
    unplaced = observation_metric(time)
    assert placed.time != unplaced.time
    assert identifier_times([placed]) == identifier_times([unplaced]) == [expected]
    assert identifier_times([placed], "1.1.0") == [str(time[1])]


def test_a_measurement_queued_before_the_upgrade_is_recognised_after_it(tmp_path):
    """Stored readings written before Metric.stamp carry no time_kind (UTC with the written offset); the same
    Bluetooth measurement fetched again after the upgrade is local. The outbox key leaves the stamp out, so
    the Intake recognises it and does not queue (and send, under a new identifier) a second copy."""
    from phg.intake import Intake
    from phg.outbox import Outbox

    (metric,) = ble_metrics(0x2A1C, THERMOMETER_IG_TIME, timedelta(hours=1))
    after = Reading(Device(bt_address="00-1C-05-FF-E8-74"), PatientRef(PATIENT["system"], PATIENT["value"]), (metric,))
    old_document = after.to_document()
    del old_document["metrics"][0]["time_kind"]  # the text a gateway before this change stored
    before = parse_reading(old_document)
    assert before.metrics[0].stamp != after.metrics[0].stamp
    assert conditional_identifier(before, before.metrics[0]) != conditional_identifier(after, after.metrics[0])
    with Outbox(tmp_path / "o.sqlite") as outbox:
        intake = Intake(outbox, ["fhir"])
        assert intake.store([before]).fresh
        assert intake.has(after)
        assert not intake.store([after]).fresh
