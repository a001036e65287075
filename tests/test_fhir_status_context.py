"""Status bits, glucose context and supplemental types into FHIR (issue 17), per the PHD IG.

The IG's own example resources (shared vectors, HL7/phd input/examples) are reproduced from the equivalent
Bluetooth payloads, field by field: what the example says phg says too (references compared by what they
resolve to in the Bundle), and whatever phg adds or says otherwise is named here (`ADDED`, and the meal text).
Then: the Bluetooth bit orders, the context pairing in the session's Collector, the reading document, and a
real FHIR server (sekmet-fhir) storing the meal context a clinician reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phg import mdc
from phg.errors import ReadingError
from phg.fhir import conditional_identifier
from phg.fhir.bundle import build_transaction, to_json
from phg.model import Bit, BitString, Device, DeviceClock, Gateway, Metric, PatientRef, Reading, parse_reading, plainly_valid
from phg.sources.ble.gatt import decode, to_metrics
from phg.sources.ble.session import Collector
from shared_vectors import VECTORS

GATEWAY = Gateway(system_id="ECDE3D4E58532D31", firmware="1.0")
PATIENT = PatientRef("urn:oid:2.999.1.2.3.4.5.6.7.8.10", "sisansarahId")
EST, EDT = timedelta(hours=-5), timedelta(hours=-4)
RECEIVED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
V2 = VECTORS / "phd" / "v2.0.0"
V1 = VECTORS / "phd" / "v1.1.0"
VALIDATE = VECTORS.parent / "tools" / "phd-validate" / "validate.sh"


def example(path) -> dict:
    resource = json.loads(path.read_text())
    resource.pop("id", None)  # a server-assigned id; phg POSTs
    resource.pop("text", None)  # narrative the IG's publisher generated
    return resource


def reading_of(metrics, system_id: str, utc_offset: timedelta, clock: bool = True) -> Reading:
    """A Reading as the BLE session builds one, with the device clock read right then (no correction)."""
    when = metrics[0].time
    device_clock = DeviceClock(when, when) if clock else None
    return Reading(Device(system_id=system_id), PATIENT, tuple(metrics), device_clock)


def render(reading: Reading, version: str = "2.0.0") -> tuple[dict, dict[str, dict]]:
    bundle = json.loads(to_json(build_transaction([reading], GATEWAY, version).bundle))
    return bundle, {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def observation(bundle: dict, code: int) -> dict:
    [found] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
               and e["resource"]["code"]["coding"][0]["code"] == str(code)]
    return found


def kind(resource: dict) -> str:
    """What a reference points at, as the IG examples name it: PhdDevice, PhgDevice, Patient, the CTS, an
    Observation of some MDC code."""
    profile = resource.get("meta", {}).get("profile", [""])[0].rsplit("/", 1)[-1]
    if resource["resourceType"] == "Observation" and profile != "PhdCoincidentTimeStampObservation":
        return f"Observation {resource['code']['coding'][0]['code']}"
    return profile or resource["resourceType"]


EXAMPLE_REFERENCES = {  # what the IG examples' references name
    "Device/phg-ecde3d4e58532d31.000000000000": "PhgDevice", "Device/phd-74E8FFFEFF051C00.001C05FFE874": "PhdDevice",
    "Device/phd-00601900010E9234.F45EABA80832": "PhdDevice", "Patient/patientExample-1": "PhdPatient",
    "Observation/coin-example-1": "PhdCoincidentTimeStampObservation",
    "Observation/compound-numeric-blood-pressure": "Observation 150020",
    "Observation/coin-20181119202022": "PhdCoincidentTimeStampObservation",
}
ADDED = {"identifier"}  # the IG's duplicate-detection identifier: the BITs and coded examples carry none


def resolved(value, entries: dict[str, dict], references: dict[str, str] | None = None):
    """value with every reference replaced by the kind of resource it points at."""
    if isinstance(value, dict):
        if set(value) == {"reference"}:
            ref = value["reference"]
            return {"reference": references[ref] if references is not None else kind(entries[ref])}
        return {k: resolved(v, entries, references) for k, v in value.items()}
    if isinstance(value, list):
        return [resolved(v, entries, references) for v in value]
    return value


def assert_reproduces(ours: dict, theirs: dict, entries: dict[str, dict], added: set[str] = ADDED) -> None:
    ours, theirs = resolved(ours, entries), resolved(theirs, entries, EXAMPLE_REFERENCES)
    for key, value in theirs.items():
        assert ours.get(key) == value, key
    assert set(ours) - set(theirs) == added


# ---------------------------------------------------------------- the IG examples, reproduced


def test_blood_pressure_status_reproduces_bpm_status():
    """bpm-status.json: body movement and improper position, derivedFrom the blood pressure."""
    bp = decode(0x2A35, bytes.fromhex("16 7800 5000 5D00 E2070B0B13 0730 3C00 2100"))
    metrics = to_metrics(bp, utc_offset=EST, received=RECEIVED)
    assert [m.code for m in metrics] == [150020, 149546, 8410608]
    bundle, entries = render(reading_of(metrics, "74E8FFFEFF051C00", EST))
    ours = observation(bundle, 8410608)
    theirs = example(V2 / "bpm-status.json")
    ours_code, theirs_code = ours.pop("code"), theirs.pop("code")
    assert ours_code["coding"] == theirs_code["coding"] and ours_code["text"]  # phg adds a text
    assert_reproduces(ours, theirs, entries)


def test_oximeter_device_status_reproduces_bits_observation():
    """bits-observation.json: sensor displaced, questionable pulse, low perfusion, poor and inadequate signal
    (PLXS bits 13, 8, 5, 4, 3 = MDER bits 2, 7, 10, 11, 12); no derivedFrom."""
    status = (1 << 13) | (1 << 8) | (1 << 5) | (1 << 4) | (1 << 3)
    spot = decode(0x2A5E, bytes.fromhex("05 6100 E0F1 E2070B0B130730") + status.to_bytes(3, "little"))
    metrics = to_metrics(spot, utc_offset=EST, received=RECEIVED)
    bundle, entries = render(reading_of(metrics, "74E8FFFEFF051C00", EST))
    ours, theirs = observation(bundle, 150604), example(V2 / "bits-observation.json")
    assert theirs.pop("language") == "en-US"  # the narrative's language: phg writes no narrative
    ours_code, theirs_code = ours.pop("code"), theirs.pop("code")
    assert ours_code["coding"] == theirs_code["coding"]
    assert_reproduces(ours, theirs, entries)


def test_meal_context_reproduces_meal_context_observation():
    """meal-context-observation.json from a glucose record with its context (GLS meal 2 = postprandial)."""
    collector = Collector(Device(system_id="00601900010E9234"), PATIENT, None, EDT)
    collector.feed(0x2A18, bytes.fromhex("12 0700 E1070602 0F0223 63B0 11"))  # context follows
    assert collector.readings == []  # waiting for its context
    collector.feed(0x2A34, bytes.fromhex("02 0700 02"))
    [reading] = collector.take()
    assert [m.code for m in reading.metrics] == [160184, 8417844, 8417864]  # glucose, sample location, meal
    when = reading.metrics[0].time
    reading = Reading(reading.device, reading.patient, reading.metrics, DeviceClock(when, when))
    bundle, entries = render(reading)
    ours, theirs = observation(bundle, 8417864), example(V2 / "meal-context-observation.json")
    # The example's identifier predates the 2.0.0 timestamp rule (phd-ig-facts.md): phg follows the rule.
    theirs_id, ours_id = theirs.pop("identifier"), ours.pop("identifier")
    assert ours_id == [dict(zip(("system", "value"), conditional_identifier(reading, reading.metrics[2]),
                                strict=True))]
    assert ours_id[0]["system"] == theirs_id[0]["system"]
    assert ours_id[0]["value"].startswith("00601900010E9234-sisansarahId-urn:oid:2.999.1.2.3.4.5.6.7.8.10-8417864-")
    # The value's text: the example's device said "After lunch/dinner"; Bluetooth's postprandial is any meal.
    ours_value, theirs_value = ours.pop("valueCodeableConcept"), theirs.pop("valueCodeableConcept")
    assert ours_value == {"coding": theirs_value["coding"], "text": "After a meal"}
    # The IG: "This measurement should contain a derived-from reference pointing to the measurement containing
    # the glucose concentration" (the example's device predates that): phg gives it.
    assert resolved(ours.pop("derivedFrom"), entries) == [{"reference": "Observation 160184"}]
    assert_reproduces(ours, theirs, entries, added=set())


def test_supplemental_type_reproduces_numeric_spotnumeric():
    """numeric-spotnumeric.json: a spot-check pulse rate carries MDC_MODALITY_SPOT as a component and as
    the identifier's last part; every other field as the example, except what is named here and why."""
    spot = decode(0x2A5E, bytes.fromhex("01 6100 E0F1 E2070B0D113B03"))
    metrics = to_metrics(spot, utc_offset=EST, received=RECEIVED)
    assert [m.supplemental for m in metrics] == [(150588,), (150588,)]
    reading = reading_of(metrics, "74E8FFFEFF051C00", EST)
    bundle, entries = render(reading)
    ours, theirs = observation(bundle, 149530), example(V2 / "numeric-spotnumeric.json")
    # The Accuracy extension: the example's device reported its accuracy (MDC_ATTR_NU_ACCUR_MSMT); a Bluetooth
    # PLX spot-check has no such field, so phg has none to give. The other two extensions are the same.
    accuracy = theirs["extension"].pop()
    assert accuracy["url"] == "http://hl7.org/fhir/uv/phd/StructureDefinition/Accuracy"
    # The identifier: the same system and parts, the supplemental type last; the time part is the 2.0.0 rule's
    # (local seconds since 2000 of the Bluetooth clock, no offset: test_fhir_clock), the example's predates it.
    ours_id, theirs_id = ours.pop("identifier"), theirs.pop("identifier")
    assert ours_id[0]["system"] == theirs_id[0]["system"]
    assert ours_id[0]["value"] == conditional_identifier(reading, metrics[1])[1]
    head = "74E8FFFEFF051C00-sisansarahId-urn:oid:2.999.1.2.3.4.5.6.7.8.10-149530-"
    assert ours_id[0]["value"].startswith(head) and theirs_id[0]["value"].startswith(head)
    assert ours_id[0]["value"].endswith("-150588") and theirs_id[0]["value"].endswith("-150588")
    # The categories: the same codings; the example adds the text "Vital Signs" and lists them the other way.
    ours_categories, theirs_categories = ours.pop("category"), theirs.pop("category")
    assert sorted(json.dumps(c["coding"]) for c in ours_categories) == \
           sorted(json.dumps(c["coding"]) for c in theirs_categories)
    # The code: the same codings except the LOINC display the example adds ("Heart rate"); phg adds a text.
    ours_code, theirs_code = ours.pop("code"), theirs.pop("code")
    assert ours_code["coding"][0] == theirs_code["coding"][0]
    assert ours_code["coding"][1] == {k: theirs_code["coding"][1][k] for k in ("system", "code")}
    assert theirs_code["coding"][1]["display"] == "Heart rate" and ours_code["text"] == "Pulse rate"
    # The unit text: the example's "{beat}/min}" has a stray brace; the value, system and code are the same.
    ours_value, theirs_value = ours.pop("valueQuantity"), theirs.pop("valueQuantity")
    assert ours_value == theirs_value | {"unit": "{beat}/min"} and theirs_value["unit"] == "{beat}/min}"
    # The performer: the example names the patient; who took a measurement is not something a Bluetooth
    # oximeter tells the gateway, so phg names no performer (PhdBaseObservation.performer is 0..*).
    assert resolved(theirs.pop("performer"), entries, EXAMPLE_REFERENCES) == [{"reference": "PhdPatient"}]
    assert_reproduces(ours, theirs, entries, added=set())  # meta, extensions, status, subject, time, device, component


def test_ig_110_shapes():
    """1.1.0: bits as valueCodeableConcept v2-0136 Y with the name as text (bits-1.0.0.40.json), the
    supplemental type with text (spotnumeric-1.0.0.3.json), the meal code (glucose-1.0.0.4.json), and the
    identifiers' value part: the code / the raw integer, no units (CodedEnumeration / BITs profile pages)."""
    status = (1 << 13) | (1 << 8) | (1 << 5) | (1 << 4) | (1 << 3)
    spot = decode(0x2A5E, bytes.fromhex("05 6100 E0F1 E2070B0B130730") + status.to_bytes(3, "little"))
    metrics = to_metrics(spot, utc_offset=EST, received=RECEIVED)
    reading = reading_of(metrics, "74E8FFFEFF051C00", EST, clock=False)
    bundle, _ = render(reading, "1.1.0")
    theirs = example(V1 / "bits-1.0.0.40.json")
    ours = observation(bundle, 150604)
    assert [c["code"] for c in ours["component"]] == [c["code"] for c in theirs["component"]]
    assert [c["valueCodeableConcept"]["coding"] for c in ours["component"]] == \
           [c["valueCodeableConcept"]["coding"] for c in theirs["component"]]
    assert ours["identifier"][0]["value"].split("-")[4] == str(0b0010000100111000)  # MDER bits 2, 7, 10, 11, 12
    assert observation(bundle, 149530)["component"] == example(V1 / "spotnumeric-1.0.0.3.json")["component"]
    meal = Metric(8417864, metrics[0].time, coded=8417872)
    bundle, _ = render(Reading(Device(system_id="00601900010E9234"), PATIENT, (meal,)), "1.1.0")
    ours = observation(bundle, 8417864)
    assert ours["valueCodeableConcept"]["coding"][0] | {"display": None} == \
           example(V1 / "glucose-1.0.0.4.json")["valueCodeableConcept"]["coding"][0] | {"display": None}
    assert ours["identifier"][0]["value"].split("-")[4] == "8417872"


# ---------------------------------------------------------------- Bluetooth bit orders and context


def bits_of(metrics: list[Metric], code: int) -> list[tuple[int, str | None]]:
    [status] = [m for m in metrics if m.code == code]
    return [(b.bit, b.name) for b in status.bits.bits]


def test_blood_pressure_pulse_range_is_mder_bit_3_or_4():
    under = decode(0x2A35, bytes.fromhex("10 7800 5000 5D00 1000"))  # range field 2: less than lower limit
    assert bits_of(to_metrics(under, utc_offset=EST, received=RECEIVED), 8410608) == [(4, "pulse-under-range-limit")]
    quiet = decode(0x2A35, bytes.fromhex("10 7800 5000 5D00 0000"))  # status present, nothing set: no observation
    assert [m.code for m in to_metrics(quiet, utc_offset=EST, received=RECEIVED)] == [150020]


def test_glucose_sensor_status_and_sample_location():
    m = to_metrics(decode(0x2A18, bytes.fromhex("0A 0100 E1070602 0F0223 63B0 21 0109")),  # AST; bits 0, 8, 11
                   utc_offset=EDT, received=RECEIVED)
    assert [(x.code, x.coded, x.derived_from) for x in m] == [(160184, None, None), (8417844, 8417852, 0),
                                                            (8417752, None, 0)]
    assert bits_of(m, 8417752) == [(0, "device-battery-low"), (8, "sensor-temp-too-low")]  # time fault: none


def test_cgm_annunciation_octets_map_to_mdc_cgm_dev_stat():
    start = decode(0x2AAA, bytes.fromhex("EA070B1C080000 04 00"))
    record = bytes.fromhex("09 E0 7800 0500 01 08 04")  # session stopped; calibration required; below hypo
    metrics = to_metrics(decode(0x2AA7, record * 2), utc_offset=EST, received=RECEIVED, session_start=start)
    assert [(m.code, m.derived_from) for m in metrics] == [(160212, None), (8418060, 0), (160212, None), (8418060, 2)]
    assert bits_of(metrics[:2], 8418060) == [(0, "sensor-session-stopped"), (9, "sensor-calibration-required"),
                                             (14, "sensor-low-hypo")]
    collector = Collector(Device(bt_address="C0-00-00-00-18-1F"), PATIENT, None, EST, session_start=start)
    collector.feed(0x2AA7, record * 2)
    assert [[m.code for m in r.metrics] for r in collector.take()] == [[160212, 8418060], [160212, 8418060]]


# CGMS Sensor Status Annunciation (octet, bit) -> MDC_CGM_DEV_STAT 8418060.<MDER bit> by ASN1ToHL7's meanings; None:
# no ASN1ToHL7 code (battery low, general device fault, time synchronization required, calibration pending) or reserved.
CGM_ANNUNCIATION = {
    ("status", 0): 0, ("status", 1): None, ("status", 2): 2, ("status", 3): 3, ("status", 4): 4, ("status", 5): None,
    ("status", 6): None, ("status", 7): None,
    ("cal_temp", 0): None, ("cal_temp", 1): 7, ("cal_temp", 2): 8, ("cal_temp", 3): 9, ("cal_temp", 4): 10,
    ("cal_temp", 5): 11, ("cal_temp", 6): None, ("cal_temp", 7): None,
    **{("warning", n): 12 + n for n in range(8)},
}


def cgm_status_bits(status: int, cal_temp: int, warning: int) -> list[tuple[int, str | None]]:
    start = decode(0x2AAA, bytes.fromhex("EA070B1C080000 04 00"))
    record = bytes([9, 0xE0]) + bytes.fromhex("7800 0500") + bytes([status, cal_temp, warning])
    metrics = to_metrics(decode(0x2AA7, record), utc_offset=EST, received=RECEIVED, session_start=start)
    return bits_of(metrics, 8418060) if len(metrics) > 1 else []


@pytest.mark.parametrize(("octet", "bit"), sorted(CGM_ANNUNCIATION))
def test_each_cgm_annunciation_bit_lands_on_its_own_meaning(octet, bit):
    octets = {"status": 0, "cal_temp": 0, "warning": 0} | {octet: 1 << bit}
    expected = CGM_ANNUNCIATION[(octet, bit)]
    want = [] if expected is None else [(expected, mdc.ASN1_BITS[8418060][expected])]
    assert cgm_status_bits(**octets) == want


def test_calibration_pending_is_no_low_glucose_alert_and_reserved_bits_are_ignored():
    """Cal/Temp 0x40 (calibration pending) is not sensor-result-below-patient-low (8418060.12); the Status
    octet's reserved bit 7 is not sensor-calibration-not-allowed (8418060.7): both give no status observation."""
    assert cgm_status_bits(0, 0x40, 0) == []
    assert cgm_status_bits(0x80, 0, 0) == []
    assert cgm_status_bits(0xC0, 0xC1, 0) == []  # reserved and unmapped only
    assert cgm_status_bits(0xFF, 0xFF, 0xFF) == [(n, mdc.ASN1_BITS[8418060][n]) for n in (0, 2, 3, 4, *range(7, 20))]


def test_one_bedtime_code_for_bluetooth_fhir_and_the_11073_decoder():
    """MDC_CTXT_GLU_MEAL_BEDTIME is 8417869 (PHD_DM term 29261) wherever phg names it: the Bluetooth meal 5, the
    FHIR display and the 11073 decoder's term names, which are one table (mdc.CODED_VALUES); 29300 is INR's."""
    from phg.sources.ble.gatt.context import MEALS
    from phg.sources.ieee11073 import nomenclature

    assert MEALS["bedtime"] == 8417869 == 128 << 16 | 29261
    assert mdc.CODED_VALUES[8417869][0] == nomenclature.DM_TERMS[29261] == "MDC_CTXT_GLU_MEAL_BEDTIME"
    assert 29300 not in nomenclature.DM_TERMS
    assert nomenclature.DM_TERMS == {code - (128 << 16): ref for code, (ref, _) in mdc.CODED_VALUES.items()}
    assert mdc.CODED_VALUES[128 << 16 | 29241][0] == "MDC_CTXT_GLU_SAMPLELOCATION_SUBCUTANEOUS"
    reading = Reading(Device(system_id="00601900010E9234"), PATIENT, (Metric(8417864, RECEIVED, coded=8417869),))
    value = observation(render(reading)[0], 8417864)["valueCodeableConcept"]
    assert value["coding"][0] | {"system": None} == {"system": None, "code": "8417869",
                                                      "display": "MDC_CTXT_GLU_MEAL_BEDTIME"}


def test_context_carbohydrate_medication_and_hba1c_are_numeric_context():
    """GLS carbohydrate (kg), medication (kg or L) and HbA1c become g, mg / mL and %, the exponent moved (no
    rounding), coded by the 10417 Metric-Id; a NaN is an invalid metric without value."""
    collector = Collector(Device(system_id="00601900010E9234"), PATIENT, None, EDT)
    collector.feed(0x2A18, bytes.fromhex("12 0700 E1070602 0F0223 63B0 F1"))  # sample location not available
    collector.feed(0x2A34, bytes.fromhex("71 0700 03 4BD0 05 0FD0 FF07"))  # dinner 75 g, pre-mixed 15 mL, HbA1c NaN
    [reading] = collector.take()
    assert [(m.code, m.value, m.unit, m.status, m.derived_from) for m in reading.metrics[1:]] == [
        (8417776, Decimal(75), "g", (), 0), (160220, None, "%", ("invalid",), 0), (8417816, Decimal(15), "mL", (), 0)]


def test_a_context_for_another_record_is_dropped_and_the_record_kept(caplog):
    collector = Collector(Device(system_id="00601900010E9234"), PATIENT, None, EDT)
    collector.feed(0x2A18, bytes.fromhex("12 0700 E1070602 0F0223 63B0 11"))
    collector.feed(0x2A34, bytes.fromhex("02 0800 01"))  # sequence number 8: not the waiting 7
    assert "matches no waiting 0x2A18" in caplog.text
    collector.feed(0x2A18, bytes.fromhex("12 0900 E1070602 0F0223 63B0 11"))  # no context came for 9 either
    readings = collector.take()  # 9 still waits for its context: not taken, not in the marker
    assert [[m.code for m in r.metrics] for r in readings] == [[160184, 8417844]] and collector.last_seq == 7
    assert collector.feed(0x2A52, bytes.fromhex("06000101")) is True  # the RACP procedure ended: 9 without one
    assert [[m.code for m in r.metrics] for r in collector.take()] == [[160184, 8417844]]
    assert collector.last_seq == 9


# ---------------------------------------------------------------- the reading document

DOC = {"device": {"system_id": "00601900010E9234"}, "patient": {"system": PATIENT.system, "value": PATIENT.value}}
T = "2017-06-02T15:02:35-04:00"


def test_document_round_trip_and_refusals():
    metrics = [{"code": 160184, "value": "99", "unit": "mg/dL", "time": T},
               {"code": 8417864, "coded": 8417868, "time": T, "derived_from": 0},
               {"code": 8410608, "bits": {"length": 16, "bits": [{"bit": 0}, {"bit": 3, "set": False}]}, "time": T},
               {"code": 149530, "value": "48.0", "unit": "/min", "time": T, "supplemental": [150588]}]
    reading = parse_reading(DOC | {"metrics": metrics})
    assert reading.metrics[2].bits == BitString(16, (Bit(0, "body-movement"), Bit(3, "pulse-over-range-limit", False)))
    assert reading.metrics[2].bits.raw == 0x8000
    assert parse_reading(reading.to_document()) == reading
    for bad, why in [({"code": 8417864, "coded": 1, "value": "1", "time": T}, "remove value"),
                     ({"code": 8417864, "coded": 1, "time": T, "derived_from": 1}, "not the index of an earlier"),
                     ({"code": 8410608, "bits": {"length": 8, "bits": [{"bit": 9}]}, "time": T}, "beyond a 8-bit"),
                     ({"code": 8410608, "bits": {"length": 16, "bits": [{"bit": 1}, {"bit": 1}]}, "time": T}, "twice"),
                     ({"code": 1, "value": "1", "unit": "1", "time": T, "supplemental": [5, 5]}, "given twice")]:
        with pytest.raises(ReadingError, match=why):
            parse_reading(DOC | {"metrics": [metrics[0], bad]})


enumerated = st.one_of(
    st.builds(lambda c, v: {"code": c, "coded": v}, st.sampled_from(sorted(mdc.CODED_VALUES)), st.integers(0, 2**32 - 1)),
    st.builds(lambda c, n, s: {"code": c, "bits": {"length": 16, "bits": [{"bit": b, "set": s} for b in sorted(n)]}},
              st.sampled_from(sorted(mdc.ASN1_BITS)), st.sets(st.integers(0, 15), max_size=4), st.booleans()),
    st.builds(lambda v, s: {"code": 149530, "value": v, "unit": "/min", "supplemental": s},
              st.sampled_from(["48", "48.0"]), st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3, unique=True)),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(enumerated, min_size=1, max_size=4), st.data())
def test_any_enumerated_document_parses_round_trips_and_renders(metrics, data):
    for i, m in enumerate(metrics):
        m["time"] = T
        if i and data.draw(st.booleans()):
            m["derived_from"] = data.draw(st.integers(0, i - 1))
    doc = DOC | {"metrics": metrics}
    assert plainly_valid(doc)  # the fast check agrees with the schema validator on these
    reading = parse_reading(doc)
    assert parse_reading(reading.to_document()) == reading
    for version in ("2.0.0", "1.1.0"):
        bundle, entries = render(reading, version)
        for entry in bundle["entry"]:
            for ref in entry["resource"].get("derivedFrom", []):
                assert ref["reference"] in entries  # every derivedFrom resolves inside the Bundle


# ---------------------------------------------------------------- a real server stores what a clinician reads


@pytest.mark.peers
def test_sekmet_stores_before_a_meal_next_to_the_glucose(sekmet):
    collector = Collector(Device(system_id="00601900010E9234"), PATIENT, None, EDT)
    collector.feed(0x2A18, bytes.fromhex("12 0A00 E1070602 0F0223 63B0 11"))
    collector.feed(0x2A34, bytes.fromhex("02 0A00 01"))  # meal 1: preprandial
    [reading] = collector.take()
    patient = PatientRef(PATIENT.system, f"meal{datetime.now(UTC).timestamp():.0f}")  # this run's own patient
    reading = Reading(reading.device, patient, reading.metrics)
    body = to_json(build_transaction([reading], GATEWAY).bundle)
    with httpx.Client(base_url=sekmet.base_url, timeout=30) as client:
        answer = client.post(sekmet.base_url, content=body, headers={"Content-Type": "application/fhir+json"})
        assert answer.status_code == 200, answer.text
        found = client.get("Observation", params={"code": "urn:iso:std:iso:11073:10101|8417864"}).json()
        [meal] = [e["resource"] for e in found.get("entry", [])
                  if f"-{patient.value}-" in e["resource"]["identifier"][0]["value"]]
        assert meal["valueCodeableConcept"]["text"] == "Before a meal"
        assert meal["valueCodeableConcept"]["coding"][0]["code"] == "8417868"
        glucose = client.get(meal["derivedFrom"][0]["reference"]).json()
        assert glucose["code"]["coding"][0]["code"] == "160184" and Decimal(str(glucose["valueQuantity"]["value"])) == 99


# ---------------------------------------------------------------- IEEE 11073-20601 enumerations


def test_11073_enumerations_become_coded_and_bits_metrics():
    """A 10417 meter's meal context (Enum-Observed-Value-Simple-OID: the term, partition from the Type) and its
    device status (Basic-Bit-Str, MDER bit 0 = most significant), and a 10404 oximeter's Supplemental-Types."""
    from phg.sources.ieee11073.manager import MdsInfo, Observation
    from phg.sources.ieee11073.mder import AbsoluteTime, MderNumber
    from phg.sources.ieee11073.readings import metric_of

    mds = MdsInfo(system_id="00601900010E9234")
    stamp = AbsoluteTime(bytes.fromhex("2017060215023500"))
    meal = metric_of(Observation(2, 8417864, None, enum_value=29264, time=stamp), mds, EDT, RECEIVED, None)
    assert (meal.coded, meal.time.isoformat()) == (8417872, "2017-06-02T15:02:35-04:00")
    status = metric_of(Observation(3, 8417752, None, enum_value=0b1000_0000_1000_0000, enum_length=16, time=stamp),
                       mds, EDT, RECEIVED, None)
    assert status.bits == BitString(16, (Bit(0, "device-battery-low"), Bit(8, "sensor-temp-too-low")))
    assert status.bits.raw == 0b1000_0000_1000_0000
    pulse = metric_of(Observation(4, 149530, 2720, value=MderNumber(480, -1, width=2), time=stamp, supplemental=(150588,)),
                      mds, EDT, RECEIVED, None)
    assert (pulse.supplemental, str(pulse.value)) == ((150588,), "48.0")


# ---------------------------------------------------------------- conformance of the new Observations


def status_context_readings() -> list[Reading]:
    """One reading of each new kind, from its source: Bluetooth BP, glucose (+ context), PLX spot-check and
    continuous (fast/slow), CGM with their status; a document with every key."""
    def ble(uuid: int, hex_: str, **kw) -> list[Metric]:
        return to_metrics(decode(uuid, bytes.fromhex(hex_)), utc_offset=EST, received=RECEIVED, **kw)

    collector = Collector(Device(system_id="00601900010E9234"), PATIENT, None, EDT)
    collector.feed(0x2A18, bytes.fromhex("1A 0700 E1070602 0F0223 63B0 11 0100"))
    # breakfast 75 g, preprandial, tester health care professional, health minor, rapid acting insulin 2 mg, HbA1c 6.5 %
    collector.feed(0x2A34, bytes.fromhex("57 0700 01 4BD0 01 12 01 02A0 41F0"))
    start = decode(0x2AAA, bytes.fromhex("EA070B1C080000 04 00"))
    return [*collector.take(),
            reading_of(ble(0x2A35, "16 7800 5000 5D00 E2070B0B13 0730 3C00 2100"), "74E8FFFEFF051C00", EST),
            reading_of(ble(0x2A5E, "05 6100 E0F1 E2070B0B130730 382100"), "74E8FFFEFF051C00", EST),
            reading_of(ble(0x2A5F, "0B 6100 E0F1 6200 DCF1 6000 D2F1 382100"), "74E8FFFEFF051C00", EST, clock=False),
            reading_of(ble(0x2AA7, "09 E0 7800 0500 01 08 04", session_start=start), "74E8FFFEFF051C00", EST),
            parse_reading(DOC | {"metrics": [
                {"code": 160184, "value": "99", "unit": "mg/dL", "time": T},
                {"code": 8417864, "coded": 8417876, "time": T, "derived_from": 0},
                {"code": 8417752, "bits": {"length": 16, "bits": [{"bit": 2}, {"bit": 3, "set": False}]}, "time": T,
                 "derived_from": 0, "status": ["test-data"]},
                {"code": 8417864, "coded": 8417868, "time": T, "status": ["invalid"]}]})]


def test_the_readings_hold_every_new_kind():
    metrics = [m for r in status_context_readings() for m in r.metrics]
    assert {m.code for m in metrics if m.bits} == {8410608, 8417752, 150604, 8418060}
    assert {m.code for m in metrics if m.coded} == {8417864, 8417844, 8417884, 8417820}
    assert {(m.code, str(m.value), m.unit) for m in metrics if m.derived_from is not None and m.value is not None} == {
        (8417768, "75", "g"), (8417800, "2", "mg"), (160220, "6.5", "%")}
    assert {c for m in metrics for c in m.supplemental} == {150580, 150584, 150588}


@pytest.mark.xdist_group("phd-validate")  # one at a time in parallel runs: validate.sh's first run fills its cache
@pytest.mark.parametrize("ig_version", ["2.0.0", "1.1.0"])
def test_the_new_observations_conform(ig_version, tmp_path):
    """../shared/tools/phd-validate over them: every resource of the Bundle conforms to its PHD profile."""
    if shutil.which("node") is None:
        if os.environ.get("PHG_REQUIRE_BROWSER"):
            pytest.fail("node is required (PHG_REQUIRE_BROWSER is set) for ../shared/tools/phd-validate")
        pytest.skip("node is not installed: the PHD profile validator cannot run")
    folder = tmp_path / "readings"
    folder.mkdir()
    (folder / "status-context.json").write_text(json.dumps([r.to_document() for r in status_context_readings()]))
    env = {**os.environ, "HOME": str(tmp_path), "PHD_VALIDATE_CACHE": os.environ.get(
        "PHD_VALIDATE_CACHE", os.path.expanduser("~/.cache/phd-validate"))}
    done = subprocess.run([str(VALIDATE), str(Path(sys.executable).with_name("phg")), "--readings", str(folder),
                           "--ig", ig_version, "--errors-only"], capture_output=True, text=True, env=env, timeout=300)
    *issues, verdict = done.stdout.strip().splitlines() or [""]
    n, _, m = verdict.partition(" ")[0].partition("/")
    assert done.returncode == 0 and n == m and int(m) > 20, "\n".join(issues + [verdict, done.stderr])


@pytest.mark.peers
@pytest.mark.parametrize("strategy", ["transaction", "single"])
def test_medplum_keeps_the_context_linked_when_the_reading_is_sent_in_parts(medplum, strategy, tmp_path):
    """A glucose record with its full context is 12 entries (Patient, 2 Devices, 9 Observations): Medplum takes
    8, so phg sends it in parts (or one resource per request); derivedFrom still reaches the glucose."""
    import asyncio

    from phg.delivery.fhir import FhirDestination
    from phg.delivery.worker import DeliveryWorker
    from phg.outbox import Outbox

    collector = Collector(Device(system_id="00601900010E9234"), PATIENT, None, EDT)
    collector.feed(0x2A18, bytes.fromhex("1A 0700 E1070602 0F0223 63B0 11 0100"))
    collector.feed(0x2A34, bytes.fromhex("57 0700 01 4BD0 01 12 01 02A0 41F0"))
    [reading] = collector.take()
    patient = PatientRef(PATIENT.system, f"parts{strategy}{datetime.now(UTC).timestamp():.0f}")
    reading = Reading(reading.device, patient, reading.metrics)
    assert len(reading.metrics) == 9

    async def run(outbox: Outbox) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            destination = FhirDestination(client, medplum.base_url, GATEWAY, strategy=strategy)
            summary = await DeliveryWorker(outbox, destination, batch_size=10).run(until_idle=True)
            assert (summary.delivered, summary.dead) == (1, 0)

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        outbox.enqueue("fhir", [(reading.key, reading.to_json())])
        asyncio.run(run(outbox))
    with httpx.Client(base_url=medplum.base_url + "/", timeout=30, headers={"Accept": "application/fhir+json"}) as c:
        system, value = conditional_identifier(reading, reading.metrics[2])
        [meal] = [e["resource"] for e in c.get("Observation", params={"identifier": f"{system}|{value}"}).json()["entry"]]
        assert meal["valueCodeableConcept"]["text"] == "Before a meal"
        glucose = c.get(meal["derivedFrom"][0]["reference"]).json()
        assert glucose["code"]["coding"][0]["code"] == "160184" and glucose["valueQuantity"]["value"] == 99
