"""Readings -> PHD IG transaction Bundles: FHIR-valid (fhir.resources R4B, the closest to R4 in
fhir.resources 8), shaped like the IG's own examples, deterministic, precise, de-duplicated."""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from urllib.parse import parse_qs

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device as FhirDevice
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.patient import Patient as FhirPatient
from hypothesis import given, settings
from hypothesis import strategies as st

from phg import mdc
from phg.fhir import IG_VERSIONS, build_transaction, conditional_identifier, to_json
from phg.model import Gateway, parse_reading
from shared_vectors import VECTORS as SHARED

VECTORS = SHARED / "phd"
GATEWAY = Gateway(system_id="ECDE3D4E58532D31", serial="0001", firmware="1.2.3")
PATIENT = {"system": "urn:oid:2.999.1.2.3.4.5.6.7.8.10", "value": "sisansarahId"}
OXIMETER = {"system_id": "74E8FFFEFF051C00", "bt_address": "00:1C:05:FF:E8:74", "manufacturer": "Nonin",
            "model": "3230", "serial": "501900083", "firmware": "r2.1", "specializations": [{"code": 528388, "version": 1}]}
T = "2026-11-28T09:00:00+01:00"

DOCS = {
    "glucose": {"device": {"system_id": "00601900010E9234", "specializations": [{"code": 528401}]},
                "patient": PATIENT,
                "metrics": [{"type": "glucose", "value": "5.20", "unit": "mmol/L", "time": T},
                            {"type": "glucose_plasma", "value": "99", "unit": "mg/dL",
                             "time": "2026-11-28T10:00:00+01:00"}]},
    "blood_pressure": {"device": {"bt_address": "B0:49:5F:00:10:71", "manufacturer": "A&D", "model": "UA-651BLE"},
                       "patient": PATIENT,
                       "metrics": [{"type": "blood_pressure", "unit": "mm[Hg]", "time": T,
                                    "components": [{"type": "systolic", "value": 116}, {"type": "diastolic", "value": 71},
                                                   {"type": "mean_arterial_pressure", "value": 86}]},
                                   {"type": "pulse_rate", "value": 62, "time": T}]},
    "scale": {"device": {"system_id": "0011223344556677", "specializations": [{"code": 528399, "version": 2}]},
              "patient": PATIENT,
              "metrics": [{"type": "body_weight", "value": "72.40", "unit": "kg", "time": T},
                          {"type": "body_height", "value": "181.0", "unit": "cm", "time": T},
                          {"type": "bmi", "value": "22.1", "time": T}]},
    "thermometer": {"device": {"system_id": "8899AABBCCDDEEFF"}, "patient": PATIENT,
                    "metrics": [{"type": "body_temperature", "value": "36.50", "unit": "Cel",
                                 "time": "2026-11-28T09:00:00.25+01:00"}]},
    "oximeter": {"device": OXIMETER, "patient": PATIENT,
                 "metrics": [{"type": "spo2", "value": 98, "time": "2026-11-28T09:00:00.936-04:00"},
                             {"type": "pulse_rate_oximeter", "value": 47, "time": "2026-11-28T09:00:00.936-04:00"}]},
    "heart_rate": {"device": {"bt_address": "11:22:33:44:55:66"}, "patient": PATIENT,
                   "metrics": [{"type": "heart_rate", "value": 64, "time": "2026-11-28T08:00:00Z"}]},
}


def reading(name: str, **changes):
    return parse_reading(json.loads(json.dumps(DOCS[name] | changes), parse_float=Decimal))


def vector(name: str, version: str = "v2.0.0") -> dict:
    return json.loads((VECTORS / version / name).read_text())


def resources_of(bundle: dict, resource_type: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def codings(concepts: list[dict] | dict) -> set[tuple[str, str]]:
    concepts = concepts if isinstance(concepts, list) else [concepts]
    return {(c["system"], c["code"]) for concept in concepts for c in concept["coding"]}


def observation_by_code(bundle: dict, code: int) -> dict:
    (found,) = [o for o in resources_of(bundle, "Observation") if o["code"]["coding"][0]["code"] == str(code)]
    return found


def validate(bundle: dict) -> None:
    """Whole Bundle and each resource, from the bytes we would send; every reference resolves in the bundle."""
    data = json.loads(to_json(bundle), parse_float=Decimal)
    Bundle.model_validate(data)
    models = {"Patient": FhirPatient, "Device": FhirDevice, "Observation": FhirObservation}
    for entry in data["entry"]:
        models[entry["resource"]["resourceType"]].model_validate(entry["resource"])
    urls = [e["fullUrl"] for e in data["entry"]]
    assert len(urls) == len(set(urls)) and all(re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", u) for u in urls)
    for entry in data["entry"]:
        text = json.dumps(entry["resource"], default=str)
        assert all(ref in urls for ref in re.findall(r'"reference": "([^"]+)"', text))
    for obs in resources_of(data, "Observation"):
        assert all(r["reference"] in urls for r in (obs["subject"], obs["device"]))


# ---------------------------------------------------------------- validity and IG structure


@pytest.mark.parametrize("version", IG_VERSIONS)
@pytest.mark.parametrize("name", sorted(DOCS))
def test_every_device_type_validates(name, version):
    validate(build_transaction([reading(name)], GATEWAY, version).bundle)


def test_all_device_types_in_one_bundle_validate():
    validate(build_transaction([reading(n) for n in sorted(DOCS)], GATEWAY).bundle)


def test_observation_shape_matches_ig_example():
    """SpO2 against vectors/phd/v2.0.0/bundle-example-1.json pulse-ox-001."""
    entries = vector("bundle-example-1.json")["entry"]
    example = next(e["resource"] for e in entries if e["resource"].get("id") == "pulse-ox-001")
    bundle = build_transaction([reading("oximeter")], GATEWAY).bundle
    ours = observation_by_code(bundle, 150456)
    assert ours["meta"]["profile"] == example["meta"]["profile"]
    assert ours["extension"][0]["url"] == example["extension"][0]["url"]
    assert codings(ours["category"]) == codings(example["category"])
    assert codings(ours["code"]) == codings(example["code"])
    assert {k: ours["valueQuantity"][k] for k in ("unit", "system", "code")} == \
           {k: example["valueQuantity"][k] for k in ("unit", "system", "code")}
    assert ours["status"] == example["status"] == "final"
    assert ours["identifier"][0]["system"] == vector("numeric-spotnumeric.json")["identifier"][0]["system"]
    assert ours["effectiveDateTime"] == "2026-11-28T09:00:00.936-04:00"  # the device time, offset and digits kept


def test_temperature_and_glucose_match_ig_examples():
    temperature = observation_by_code(build_transaction([reading("thermometer")], GATEWAY).bundle, 150364)
    example = vector("temperature-observation.json")
    assert codings(temperature["category"]) == codings(example["category"])
    assert codings(temperature["code"]) == codings(example["code"])
    assert temperature["valueQuantity"] == {"value": Decimal("36.50"), "unit": "C", "system": "http://unitsofmeasure.org",
                                            "code": "Cel"}
    glucose = observation_by_code(build_transaction([reading("glucose")], GATEWAY).bundle, 160184)
    assert codings(glucose["category"]) == codings(vector("glucose-observation.json")["category"])  # phd only: no vital sign
    assert codings(glucose["code"]) == {(mdc.MDC_SYSTEM, "160184")}  # no LOINC
    assert glucose["valueQuantity"]["code"] == "mmol/L"


def test_blood_pressure_is_one_compound_observation_and_pulse_its_own():
    bundle = build_transaction([reading("blood_pressure")], GATEWAY).bundle
    observations = resources_of(bundle, "Observation")
    assert len(observations) == 2
    bp, example = observation_by_code(bundle, 150020), vector("compound-numeric-blood-pressure.json")
    assert bp["meta"]["profile"] == ["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCompoundNumericObservation"]
    assert "valueQuantity" not in bp
    assert codings(bp["code"]) == codings(example["code"])
    assert [codings(c["code"]) for c in bp["component"]] == [codings(c["code"]) for c in example["component"]]
    assert [c["valueQuantity"]["code"] for c in bp["component"]] == ["mm[Hg]"] * 3
    pulse = observation_by_code(bundle, 149546)
    assert codings(pulse["code"]) == {(mdc.MDC_SYSTEM, "149546"), (mdc.LOINC_SYSTEM, "8867-4")}
    assert pulse["valueQuantity"]["code"] == "/min"


def test_devices_and_patient_match_ig_examples():
    bundle = build_transaction([reading("oximeter")], GATEWAY).bundle
    patient, phg, phd = (e["resource"] for e in bundle["entry"][:3])
    example_phd, example_phg = vector("phd-74E8FFFEFF051C00.001C05FFE874.json"), vector("phg-example.json")
    assert patient["meta"] == vector("patientExample-1.json")["meta"]
    assert patient["identifier"] == [PATIENT]
    assert phd["meta"] == example_phd["meta"]
    # Same identifier types, systems and values as the IG's own record of this very oximeter.
    assert [(i["type"]["coding"][0]["system"], i["type"]["coding"][0]["code"], i["system"], i["value"])
            for i in phd["identifier"]] == \
           [(i["type"]["coding"][0]["system"], i["type"]["coding"][0]["code"], i["system"], i["value"])
            for i in example_phd["identifier"]]
    assert codings(phd["type"]) == codings(example_phd["type"])
    assert [codings(s["systemType"]) for s in phd["specialization"]] == [codings(s["systemType"])
                                                                          for s in example_phd["specialization"]]
    assert phd["specialization"][0]["version"] == "1"
    assert phd["version"] == [{"type": example_phd["version"][0]["type"] | {"text": "Firmware revision"}, "value": "r2.1"}]
    assert (phd["manufacturer"], phd["modelNumber"], phd["serialNumber"]) == ("Nonin", "3230", "501900083")
    assert phg["meta"] == example_phg["meta"]
    assert codings(phg["type"]) == codings(example_phg["type"])
    assert phg["identifier"][0]["system"] == example_phg["identifier"][0]["system"]
    assert phg["identifier"][0]["value"] == "EC-DE-3D-4E-58-53-2D-31"
    (sync,) = [p for p in phg["property"] if codings(p["type"]) == {(mdc.MDC_SYSTEM, "68220")}]
    assert codings(sync["valueCode"]) == {(mdc.MDC_SYSTEM, "532226")}


def test_requests_are_conditional_creates():
    transaction = build_transaction([reading("oximeter")], GATEWAY)
    entries = transaction.bundle["entry"]
    assert transaction.bundle["type"] == "transaction"
    assert [e["request"]["url"] for e in entries] == ["Patient", "Device", "Device", "Observation", "Observation"]
    assert all(e["request"]["method"] == "POST" for e in entries)
    assert entries[0]["request"]["ifNoneExist"] == "identifier=urn:oid:2.999.1.2.3.4.5.6.7.8.10|sisansarahId"
    assert entries[2]["request"]["ifNoneExist"] == \
        "identifier=urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680|74-E8-FF-FE-FF-05-1C-00"
    r = reading("oximeter")
    for metric, entry in zip(r.metrics, entries[3:], strict=True):
        system, value = conditional_identifier(r, metric)
        assert entry["resource"]["identifier"] == [{"system": system, "value": value}]
        assert parse_qs(entry["request"]["ifNoneExist"])["identifier"] == [f"{system}|{value}"]
        assert "%2B" not in value and ("-16" in value)  # -04:00 -> -16; a '+' offset would be sent as %2B


def test_ble_only_device_is_identified_by_bt_address():
    entries = build_transaction([reading("heart_rate")], GATEWAY).bundle["entry"]
    phd = entries[2]
    assert [i["type"]["coding"][0]["code"] for i in phd["resource"]["identifier"]] == ["BTMAC"]
    assert phd["request"]["ifNoneExist"] == "identifier=http://hl7.org/fhir/sid/eui-48/bluetooth|11-22-33-44-55-66"
    assert entries[3]["resource"]["identifier"][0]["value"].startswith("112233445566-")


def test_ig_1_1_0_differences():
    bundle = build_transaction([reading("oximeter")], GATEWAY, "1.1.0").bundle
    spo2 = observation_by_code(bundle, 150456)
    assert codings(spo2["code"]) == {(mdc.MDC_SYSTEM, "150456"), (mdc.LOINC_SYSTEM, "59408-5")}
    assert codings(spo2["category"]) == codings(vector("bloodPress-1.0.1.json", "v1.1.0")["category"]) == {
        ("http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories", "phd-observation"),
        ("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs")}
    assert "system" not in spo2["identifier"][0]
    phd = bundle["entry"][2]["resource"]
    assert [i["type"] for i in phd["identifier"]] == [i["type"] for i in vector(
        "phd-74E8FFFEFF051C00.001C05FFE874.json", "v1.1.0")["identifier"]]


# ---------------------------------------------------------------- measurement status


@pytest.mark.parametrize(("status", "absent", "interpretation", "security", "obs_status"), [
    ("invalid", "error", None, False, "final"),
    ("not-available", "not-performed", None, False, "final"),
    ("msmt-ongoing", "temp-unknown", None, False, "final"),
    ("questionable", None, "questionable", False, "final"),
    ("calibration-ongoing", None, "calibration-ongoing", False, "final"),
    ("validated-data", None, "validated-data", False, "final"),
    ("early-indication", None, "early-indication", False, "preliminary"),
    ("test-data", None, None, True, "final"),
    ("demonstration-data", None, None, True, "final"),
])
def test_measurement_status(status, absent, interpretation, security, obs_status):
    doc = DOCS["thermometer"]["metrics"][0] | {"status": [status]}
    bundle = build_transaction([reading("thermometer", metrics=[doc])], GATEWAY).bundle
    validate(bundle)
    obs = observation_by_code(bundle, 150364)
    assert obs["status"] == obs_status
    if absent:
        assert obs["dataAbsentReason"]["coding"] == [
            {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": absent}]
        assert "valueQuantity" not in obs
    else:
        assert "dataAbsentReason" not in obs and obs["valueQuantity"]["value"] == Decimal("36.50")
    expected = [{"coding": [{"system": "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status",
                             "code": interpretation}]}] if interpretation else None
    assert obs.get("interpretation") == expected
    assert obs["meta"].get("security") == (
        [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"}] if security else None)


def test_invalid_compound_has_no_components():
    doc = DOCS["blood_pressure"]["metrics"][0] | {"status": ["invalid"]}
    bundle = build_transaction([reading("blood_pressure", metrics=[doc])], GATEWAY).bundle
    validate(bundle)
    bp = observation_by_code(bundle, 150020)
    assert "component" not in bp and bp["dataAbsentReason"]["coding"][0]["code"] == "error"


# ---------------------------------------------------------------- precision, determinism, sharing


def test_precision_survives_to_json():
    raw = to_json(build_transaction([reading("scale"), reading("glucose")], GATEWAY).bundle)
    assert b'"value":72.40,' in raw and b'"value":181.0,' in raw and b'"value":5.20,' in raw
    assert b'"72.40"' not in raw


def test_to_json_writes_decimals_as_exact_numbers():
    data = {"a": Decimal("2.00"), "b": [Decimal("1E+2"), Decimal("-0.000001")], "c": "ü\"", "d": None, "e": True, "f": 3}
    raw = to_json(data)
    assert raw == '{"a":2.00,"b":[1E+2,-0.000001],"c":"ü\\"","d":null,"e":true,"f":3}'.encode()
    assert json.loads(raw, parse_float=Decimal) == data


def test_same_readings_give_byte_identical_bundles():
    readings = [reading(n) for n in sorted(DOCS)]
    assert to_json(build_transaction(readings, GATEWAY).bundle) == to_json(build_transaction(readings, GATEWAY).bundle)


def test_shared_patient_and_device_appear_once():
    first = reading("oximeter")
    later = reading("oximeter", metrics=[{"type": "spo2", "value": 95, "time": "2026-11-29T09:00:00-04:00"}])
    third = reading("oximeter", metrics=[{"type": "spo2", "value": 96, "time": "2026-11-30T09:00:00-04:00"},
                                         {"type": "pulse_rate_oximeter", "value": 50, "time": "2026-11-30T09:00:00-04:00"}])
    transaction = build_transaction([first, later, third], GATEWAY)
    entries = transaction.bundle["entry"]
    assert transaction.shared_entries == [0, 1, 2]
    assert [entries[i]["resource"]["resourceType"] for i in transaction.shared_entries] == ["Patient", "Device", "Device"]
    assert transaction.reading_entries == [[3, 4], [5], [6, 7]]
    for r, indices in zip([first, later, third], transaction.reading_entries, strict=True):
        assert [entries[i]["resource"]["identifier"][0]["value"] for i in indices] == \
               [conditional_identifier(r, m)[1] for m in r.metrics]
    validate(transaction.bundle)


def test_other_patient_and_device_get_their_own_entries():
    other = reading("oximeter", patient={"system": "urn:oid:1.2.3", "value": "someone+else"},
                    device=OXIMETER | {"system_id": "0102030405060708"})
    transaction = build_transaction([reading("oximeter"), other, reading("thermometer")], GATEWAY)
    types = [transaction.bundle["entry"][i]["request"]["url"] for i in transaction.shared_entries]
    assert types == ["Patient", "Device", "Device", "Patient", "Device", "Device"]
    assert transaction.bundle["entry"][3]["request"]["ifNoneExist"] == "identifier=urn:oid:1.2.3|someone%2Belse"
    validate(transaction.bundle)


def test_measurement_resent_in_a_later_reading_is_one_entry():
    """A BLE device re-sends stored records: the same measurement in two readings of one batch is one
    conditional create, listed under both readings."""
    again = reading("oximeter", metrics=DOCS["oximeter"]["metrics"][:1] + [
        {"type": "spo2", "value": 97, "time": "2026-11-29T09:00:00-04:00"}])
    transaction = build_transaction([reading("oximeter"), again], GATEWAY)
    assert transaction.reading_entries == [[3, 4], [3, 5]]
    validate(transaction.bundle)


def test_unknown_mdc_code_maps_without_loinc_or_vital_signs():
    doc = {"code": 8454260, "value": "3", "unit": "{count}", "time": T}
    bundle = build_transaction([reading("heart_rate", metrics=[doc])], GATEWAY).bundle
    validate(bundle)
    obs = observation_by_code(bundle, 8454260)
    assert codings(obs["code"]) == {(mdc.MDC_SYSTEM, "8454260")} and len(obs["category"]) == 1
    assert obs["valueQuantity"] == {"value": Decimal("3"), "unit": "{count}", "system": mdc.UCUM_SYSTEM, "code": "{count}"}


def test_empty_batch():
    transaction = build_transaction([], GATEWAY)
    assert transaction.bundle["entry"] == [] and transaction.reading_entries == [] and transaction.shared_entries == []


# ---------------------------------------------------------------- property: any valid reading maps


HEX = "0123456789ABCDEF"
SIMPLE = [c for c, m in mdc.MEASUREMENTS.items() if m.units and not m.components and c not in (150021, 150022, 150023)]
offsets = st.integers(-48, 56).map(lambda q: f"{'+' if q >= 0 else '-'}{abs(q) * 15 // 60:02d}:{abs(q) * 15 % 60:02d}")
times = st.builds(
    lambda dt, frac, off: dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + off,
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2099, 12, 31)),
    st.one_of(st.just(""), st.integers(0, 999999).map(lambda n: f"{n:06d}").flatmap(
        lambda s: st.integers(1, 6).map(lambda k: s[:k]))),
    offsets,
)
values = st.one_of(
    st.builds(lambda n, p: str(Decimal(n).scaleb(-p)), st.integers(-10**9, 10**9), st.integers(0, 6)),
    st.sampled_from(["1E+2", "0.000", "-0", "2.00"]),
)
statuses = st.lists(st.sampled_from(mdc.MEASUREMENT_STATUS), unique=True, max_size=3)
texts = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(
    lambda s: re.fullmatch(r"\S(.*\S)?", s, re.S) is not None)


@st.composite
def simple_metric(draw):
    code = draw(st.one_of(st.sampled_from(SIMPLE), st.integers(0, 2**32 - 1).filter(lambda c: c not in mdc.MEASUREMENTS)))
    units = mdc.MEASUREMENTS[code].units if code in mdc.MEASUREMENTS else ("mg", "1", "{count}", "mm[Hg]")
    return {"code": code, "value": draw(values), "unit": draw(st.sampled_from(units)),
            "time": draw(times), "status": draw(statuses)}


@st.composite
def bp_metric(draw):
    parts = draw(st.sampled_from([(150021, 150022), (150021, 150022, 150023)]))
    return {"code": 150020, "unit": "mm[Hg]", "time": draw(times), "status": draw(statuses),
            "components": [{"code": c, "value": draw(values)} for c in parts]}


@st.composite
def reading_docs(draw):
    device = {}
    kind = draw(st.sampled_from(["sysid", "bt", "both"]))
    if kind in ("sysid", "both"):
        device["system_id"] = draw(st.text(HEX, min_size=16, max_size=16))
    if kind in ("bt", "both"):
        device["bt_address"] = draw(st.text(HEX, min_size=12, max_size=12))
    for key in ("manufacturer", "model", "serial", "firmware"):
        if draw(st.booleans()):
            device[key] = draw(texts)
    if draw(st.booleans()):
        device["specializations"] = [{"code": draw(st.sampled_from(sorted(mdc.SPECIALIZATIONS) + [12345])),
                                      "version": draw(st.integers(0, 9))}]
    patient = {"system": draw(st.sampled_from(["urn:oid:2.999.1", "http://hospital.example/mrn"])), "value": draw(texts)}
    metrics = draw(st.lists(st.one_of(simple_metric(), bp_metric()), min_size=1, max_size=4))
    return {"device": device, "patient": patient, "metrics": metrics}


@settings(max_examples=60, deadline=None)
@given(st.lists(reading_docs(), min_size=1, max_size=3), st.sampled_from(IG_VERSIONS))
def test_any_valid_reading_maps_and_validates(docs, version):
    readings = [parse_reading(d) for d in docs]
    transaction = build_transaction(readings, GATEWAY, version)
    validate(transaction.bundle)
    assert to_json(transaction.bundle) == to_json(build_transaction(readings, GATEWAY, version).bundle)
    entries = transaction.bundle["entry"]
    for r, indices in zip(readings, transaction.reading_entries, strict=True):
        assert {entries[i]["resource"]["identifier"][0]["value"] for i in indices} == \
               {conditional_identifier(r, m, version)[1] for m in r.metrics}
        for i in indices:
            query = parse_qs(entries[i]["request"]["ifNoneExist"])["identifier"][0]
            assert query.endswith(entries[i]["resource"]["identifier"][0]["value"].replace("\\", "\\\\")
                                  .replace("|", "\\|").replace(",", "\\,").replace("$", "\\$"))


def test_to_json_keeps_decimal_digits_and_escapes_strings():
    bundle = {"a": [Decimal("2.00"), Decimal("1E+2"), "x\x00y", {"k": Decimal("-0.5")}], "b": "é\"q"}
    assert to_json(bundle) == '{"a":[2.00,1E+2,"x\\u0000y",{"k":-0.5}],"b":"é\\"q"}'.encode()
    with pytest.raises(ValueError):
        to_json({"v": Decimal("NaN")})
    with pytest.raises(TypeError):
        to_json({"v": object()})
