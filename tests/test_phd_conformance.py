"""Every Bundle phg renders conforms to the PHD IG profiles it declares, for 2.0.0 and 1.1.0, for every source
(issue 17): `../shared/tools/phd-validate/validate.sh` (the IG's own StructureDefinitions, run by a profile
walker; README in that folder) over `phg render --format fhir` of readings of every type from every source:
hand-written reading documents, the simulator, each Bluetooth health profile through its GATT decoder and the
device the BLE session builds, and the five IEEE 11073-20601 standard configurations through the manager.

Skipped only when node is missing and PHG_REQUIRE_BROWSER is unset (CI sets it; node is always in CI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import phg
from ieee11073_agent import KINDS, Agent, sent
from phg.demo.sim import DEVICES, simulated_readings
from phg.fhir import build_transaction, to_json
from phg.model import (
    GATEWAY_SPECIALIZATIONS,
    Component,
    Device,
    DeviceClock,
    Gateway,
    Metric,
    PatientRef,
    Reading,
    Specialization,
    device_specializations,
)
from phg.sources.ble.gatt import decode
from phg.sources.ble.session import PROFILES, Collector, device_of
from phg.sources.ieee11073.manager import Manager, Measurements
from phg.sources.ieee11073.readings import readings_of

ROOT = Path(__file__).resolve().parents[1]
VALIDATE = ROOT.parent / "shared" / "tools" / "phd-validate" / "validate.sh"
PATIENT = PatientRef("urn:oid:2.999.1.2.3", "pt-conformance")
PLUS_1 = timedelta(hours=1)


# ---------------------------------------------------------------- the readings, one document per file


def _documents() -> dict[str, dict]:
    """Hand-written reading documents: each metric alias, every status kind, a device clock, the README
    example, and devices that report as little as the schema allows (one identifier, nothing else)."""
    t = "2026-11-28T09:00:00+01:00"
    full = {"system_id": "00-1C-05-FF-FE-00-78-25", "bt_address": "00:1C:05:00:78:25", "manufacturer": "Acme",
            "model": "Oxi 1", "serial": "A123", "firmware": "1.2", "specializations": [{"code": 528388, "version": 1}]}
    docs: dict[str, dict] = {
        "readme": {"device": full, "patient": {"system": "urn:oid:1.2.3.4", "value": "pt-001"}, "metrics": [
            {"code": 150456, "value": "97", "unit": "%", "time": t},
            {"code": 150020, "unit": "mm[Hg]", "time": t, "components": [
                {"code": 150021, "value": "120"}, {"code": 150022, "value": "80"}, {"code": 150023, "value": "93"}]},
            {"type": "glucose", "value": "5.6", "unit": "mmol/L", "time": t, "status": ["questionable"]}]},
        "system-id-only": {"device": {"system_id": "0A1B2C3D4E5F0001"}, "metrics": [
            {"type": "body_weight", "value": "71.30", "unit": "kg", "time": t}]},
        "bt-address-only": {"device": {"bt_address": "F4:5E:AB:A8:08:32"}, "metrics": [
            {"type": "glucose_plasma", "value": "101", "unit": "mg/dL", "time": t}]},
        "specialization-without-version": {
            "device": {"system_id": "0A1B2C3D4E5F0002", "specializations": [{"code": 528392}]},
            "metrics": [{"type": "body_temperature", "value": "36.9", "unit": "Cel", "time": t}]},
        "statuses": {"device": {"system_id": "0A1B2C3D4E5F0003", "manufacturer": "Acme", "model": "Oxi 2"},
                     "metrics": [
                         {"type": "spo2", "unit": "%", "time": t, "status": ["invalid"]},
                         {"type": "spo2", "unit": "%", "time": "2026-11-28T09:01:00+01:00", "status": ["not-available"]},
                         {"type": "pulse_rate_oximeter", "value": "70", "time": t, "status": ["early-indication"]},
                         {"type": "spo2", "value": "96", "time": "2026-11-28T09:02:00+01:00",
                          "status": ["test-data", "calibration-ongoing"]}]},
        "clock": {"device": {"system_id": "0A1B2C3D4E5F0004"}, "metrics": [
                      {"type": "heart_rate", "value": "64", "time": "2026-11-28T09:00:00.25+01:00"}],
                  "clock": {"gateway_time": "2026-11-28T08:10:00Z", "device_time": "2026-11-28T09:09:30+01:00",
                            "type": "absolute", "sync": 532224}},
        "clock-fault": {"device": {"bt_address": "00:E5:DE:AD:77:C3", "manufacturer": "Acme"}, "metrics": [
                            {"type": "body_height", "value": "172.5", "unit": "cm", "time": t}],
                        "clock": {"gateway_time": "2026-11-28T08:10:00Z", "device_time": None, "type": "absolute"}},
    }
    # status, context and supplemental types (PhdBitsEnumerationObservation, PhdCodedEnumerationObservation,
    # supplementalTypesComponent), each qualifying the metric before it
    docs["status-context"] = {"device": {"system_id": "0A1B2C3D4E5F0006"}, "metrics": [
        {"type": "glucose", "value": "5.6", "unit": "mmol/L", "time": t},
        {"code": 8417864, "coded": 8417868, "time": t, "derived_from": 0},
        {"code": 8417844, "coded": 8417848, "time": t, "derived_from": 0},
        {"code": 150020, "unit": "mm[Hg]", "time": t, "components": [
            {"code": 150021, "value": "120"}, {"code": 150022, "value": "80"}]},
        {"code": 8410608, "time": t, "derived_from": 3, "bits": {"length": 16, "bits": [
            {"bit": 0, "name": "body-movement"}, {"bit": 2, "name": "irregular-pulse"}]}},
        {"type": "spo2", "value": "97", "time": t, "supplemental": [150588]},
        {"code": 8417768, "value": "45", "unit": "g", "time": t, "derived_from": 0},
        {"code": 160220, "value": "6.1", "unit": "%", "time": t, "derived_from": 0}]}
    aliases = ("spo2", "pulse_rate", "pulse_rate_oximeter", "heart_rate", "systolic", "diastolic",
               "mean_arterial_pressure", "body_temperature", "body_weight", "body_height", "bmi")
    docs["every-alias"] = {"device": {"system_id": "0A1B2C3D4E5F0005", "model": "Multi"}, "metrics": [
        {"type": a, "value": "1.5", "time": f"2026-11-28T09:{n:02d}:00+01:00"} for n, a in enumerate(aliases)]}
    for doc in docs.values():
        doc.setdefault("patient", {"system": PATIENT.system, "value": PATIENT.value})
    return docs


def _simulated() -> dict[str, dict]:
    start = datetime(2026, 11, 28, 9, 0, tzinfo=timezone(PLUS_1))
    return {f"sim-{r.device.model}": r.to_document() for r in simulated_readings(PATIENT, start, devices=tuple(DEVICES))}


# Each Bluetooth health profile's values as the device sends them (payloads of tests/test_ble_gatt_readings.py and
# tests/test_fhir_status_context.py: a glucose record with its context, BP, weight with its feature, temperature,
# PLX spot check and continuous, CGM with its session start, body composition in halves, heart rate), through the
# BLE session's Collector and the device it builds from the Device Information Service (device_of), with and without
# DIS strings and a device clock.
# With status: a cuff's Measurement Status, a meter's Sensor Status Annunciation (and sample location), a PLX Device
# and Sensor Status, a CGM record's annunciation (payloads of tests/test_fhir_status_context.py).
BLE_VALUES: dict[str, tuple[tuple[int, str], ...]] = {
    "glucose": ((0x2A18, "03" "0100" "ea07" "0b1c" "090000" "0000" "78b0" "11"),
                (0x2A18, "12 0700 E1070602 0F0223 63B0 11"), (0x2A34, "06 0700 01 12"),
                (0x2A18, "1A 0800 E1070602 0F0223 63B0 11 0100"), (0x2A34, "02 0800 01")),
    "blood_pressure": ((0x2A35, "06" "7400" "4700" "5600" "ea070b1c080000" "3e00"),
                       (0x2A35, "16 7800 5000 5D00 E2070B0B13 0730 3C00 2100")),
    "scale": ((0x2A9D, "0ab036ea070b1c091e00f500d606"),),
    "body_composition": ((0x2A9C, "4010" "5000" "e02e"), (0x2A9C, "0014" "5000" "b036"), (0x2A9C, "0000" "5000")),
    "heart_rate": ((0x2A37, "0048"), (0x2A37, "0055")),
    "thermometer": ((0x2A1C, "06b00e00fedc070c050b321b04"),),
    "pulse_oximeter": ((0x2A5E, "0facf3bef5e8070b1d170839204022000066e3"), (0x2A5F, "1c5f005a00200000000057f0"),
                       (0x2A5E, "05 6100 E0F1 E2070B0B130730 382100")),
    "cgm": ((0x2AAA, "ea070b1c080000" "04" "00"), (0x2AA7, "06000c10050006000c100600"),
            (0x2AA7, "09 E0 7800 0500 01 08 04")),
}
BLE_FACTS = {"scale": {"weight_feature": (0x2A9E, "8f000000")}}


def _bluetooth() -> dict[str, dict]:
    docs = {}
    clock = DeviceClock(gateway_time=datetime(2026, 11, 28, 8, 10, tzinfo=UTC),
                        device_time=datetime(2026, 11, 28, 9, 9, 30, tzinfo=timezone(PLUS_1)))
    for profile in PROFILES:
        facts = {name: decode(u, bytes.fromhex(p)) for name, (u, p) in BLE_FACTS.get(profile.name, {}).items()}
        for label, dis, with_clock in (("dis", {"manufacturer": "Acme BLE", "model": "M-1", "serial": "S1",
                                                "firmware": "F1"}, True), ("bare", {}, False)):
            device = device_of(profile, "00:E5:DE:AD:77:C3", system_id="FEEDABEEDEAD77C3" if dis else None, **dis)
            collector = Collector(device, PATIENT, clock if with_clock else None, PLUS_1, **facts)
            for uuid, payload in BLE_VALUES[profile.name]:
                collector.feed(uuid, bytes.fromhex(payload.replace(" ", "")))
            for n, reading in enumerate(collector.take()):
                docs[f"ble-{profile.name}-{label}-{n}"] = reading.to_document()
    return docs


def _ieee11073() -> dict[str, dict]:
    """The five standard configurations through the manager (association, MDS GET, one fixed scan report), and a
    pulse oximeter's periodic scanner (extended configuration) with Absolute, Base-Offset and Relative time stamps."""
    docs = {}
    agents = {kind: Agent(kind) for kind in KINDS} | {f"scanner-{s}": Agent("pulse_oximeter", grouped=s)
                                                      for s in ("abs", "bo", "rel")}
    for name, agent in agents.items():
        manager = Manager()
        manager.receive_data(agent.aarq(), 0.0)
        aare, *rest = sent(manager)
        if aare.result == 3:  # accepted-unknown-config: the agent sends its configuration
            manager.receive_data(agent.config_report(), 0.0)
            rest = sent(manager)[1:]
        (get,) = rest
        manager.receive_data(agent.get_response(get.invoke_id), 0.0)
        _, apdu = agent.measurement(2)
        (measurements,) = [e for e in manager.receive_data(apdu, 1.0) if isinstance(e, Measurements)]
        at = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
        for n, reading in enumerate(readings_of(measurements, PATIENT, PLUS_1, at, mds_read_at=at)):
            docs[f"11073-{name}-{n}"] = reading.to_document()
    return docs


def conformance_readings() -> dict[str, dict[str, dict]]:
    """source -> name -> reading document, every type from every source."""
    return {"documents": _documents(), "simulator": _simulated(), "bluetooth": _bluetooth(), "ieee11073": _ieee11073()}


# ---------------------------------------------------------------- the check


def _node_or_skip() -> None:
    if shutil.which("node") is None:
        if os.environ.get("PHG_REQUIRE_BROWSER"):
            pytest.fail("node is required (PHG_REQUIRE_BROWSER is set) for ../shared/tools/phd-validate")
        pytest.skip("node is not installed: the PHD profile validator cannot run")


@pytest.mark.xdist_group("phd-validate")  # one at a time in parallel runs: validate.sh's first run fills its cache
@pytest.mark.parametrize("ig_version", ["2.0.0", "1.1.0"])
def test_every_resource_conforms_to_its_phd_profile(ig_version: str, tmp_path: Path) -> None:
    _node_or_skip()
    readings = tmp_path / "readings"
    readings.mkdir()
    for source, docs in conformance_readings().items():  # one file, so one Bundle, per source: one render each
        (readings / f"{source}.json").write_text(json.dumps(list(docs.values())))
    phg = Path(sys.executable).with_name("phg")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PHG_")},  # phg's defaults, not this shell's
           "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "PHD_VALIDATE_CACHE": os.environ.get("PHD_VALIDATE_CACHE",
                                                str(Path.home() / ".cache" / "phd-validate"))}
    done = subprocess.run([str(VALIDATE), str(phg), "--readings", str(readings), "--ig", ig_version, "--errors-only"],
                          capture_output=True, text=True, env=env, timeout=300)
    *issues, verdict = done.stdout.strip().splitlines() or [""]
    n, _, m = verdict.partition(" ")[0].partition("/")
    assert done.returncode == 0 and n == m and m.isdigit() and int(m) > 0, "\n".join(issues + [verdict, done.stderr])


def test_every_source_and_type_is_in_the_readings() -> None:
    readings = conformance_readings()
    assert {name.split("-")[1] for name in readings["bluetooth"]} == {p.name for p in PROFILES}
    assert {name.split("-")[1] for name in readings["ieee11073"]} == set(KINDS) | {"scanner"}
    assert len(readings["simulator"]) == len(DEVICES)


# ---------------------------------------------------------------- the rule, field by field

GATEWAY = Gateway("02AB7FFFFE000001")
T = datetime(2026, 11, 28, 9, 0, tzinfo=timezone(PLUS_1))


def _bundle(reading: Reading, ig_version: str = "2.0.0") -> dict[str, dict]:
    """profile name -> resource (the first of each)."""
    entries = build_transaction([reading], GATEWAY, ig_version).bundle["entry"]
    found: dict[str, dict] = {}
    for e in entries:
        found.setdefault(e["resource"]["meta"]["profile"][0].rsplit("/", 1)[1], e["resource"] | {"_request": e["request"]})
    return found


def test_specializations_come_from_the_source_else_the_metric_codes_else_generic() -> None:
    told = Device(system_id="0A1B2C3D4E5F0001", specializations=(Specialization(528401, 2),))
    bp = (Metric(150020, T, unit="mm[Hg]", components=(Component(150021, Decimal(120), "mm[Hg]"),)),
          Metric(149546, T, Decimal(60), "/min"))
    assert device_specializations(told, bp) == (Specialization(528401, 2),)  # what the agent reported wins
    bare = Device(system_id="0A1B2C3D4E5F0001")
    mixed = (Metric(188736, T, Decimal(70), "kg"), *bp, Metric(188752, T, Decimal(22), "kg/m2"),
             Metric(147842, T, Decimal(60), "/min"))
    assert device_specializations(bare, mixed) == (Specialization(528399), Specialization(528391), Specialization(528525))
    assert device_specializations(bare, (Metric(999999, T, Decimal(1)),)) == (Specialization(528457),)
    assert {s for s in GATEWAY_SPECIALIZATIONS} >= {p.specialization for p in PROFILES}


def test_an_unreported_version_manufacturer_and_model_are_unknown_not_missing() -> None:
    unknown = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}
    reading = Reading(Device(bt_address="00-E5-DE-AD-77-C3"), PATIENT, (Metric(150364, T, Decimal("36.8"), "Cel"),))
    phd = _bundle(reading)["PhdDevice"]
    assert phd["specialization"] == [{"systemType": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "528392",
                                                                  "display": "MDC_DEV_SPEC_PROFILE_TEMP"}],
                                                     "text": "Thermometer"}, "_version": unknown}]
    assert phd["_manufacturer"] == phd["_modelNumber"] == unknown and "manufacturer" not in phd
    assert phd["version"] == [{"type": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "531976",
                                                    "display": "MDC_ID_PROD_SPEC_FW"}], "text": "Firmware revision"},
                               "_value": unknown}]
    ble = device_of(PROFILES[0], "00:e5:de:ad:77:c3", system_id=None)
    assert ble.specializations == (Specialization(PROFILES[0].specialization, None),)  # no invented version


def test_a_reported_version_is_kept() -> None:
    device = Device(system_id="0A1B2C3D4E5F0001", manufacturer="Acme", model="G1", firmware="2.1",
                    specializations=(Specialization(528401, 1),))
    phd = _bundle(Reading(device, PATIENT, (Metric(160184, T, Decimal(101), "mg/dL"),)))["PhdDevice"]
    assert phd["specialization"][0]["version"] == "1" and "_version" not in phd["specialization"][0]
    assert (phd["manufacturer"], phd["modelNumber"], phd["version"][0]["value"]) == ("Acme", "G1", "2.1")


def test_the_gateway_always_carries_specializations_and_phg_version() -> None:
    reading = Reading(Device(system_id="0A1B2C3D4E5F0001"), PATIENT, (Metric(150456, T, Decimal(97), "%"),))
    for ig_version in ("2.0.0", "1.1.0"):
        phg_device = _bundle(reading, ig_version)["PhgDevice"]
        assert [s["systemType"]["coding"][0]["code"] for s in phg_device["specialization"]] == [
            str(c) for c in GATEWAY_SPECIALIZATIONS]
        assert [(v["type"]["coding"][0]["code"], v["value"]) for v in phg_device["version"]] == [("531975", phg.__version__)]
    with_firmware = build_transaction([reading], Gateway("02AB7FFFFE000001", firmware="fw-7")).bundle["entry"][1]["resource"]
    assert [v["value"] for v in with_firmware["version"]] == [phg.__version__, "fw-7"]


def test_ig_1_1_0_types_the_patient_identifier_and_zero_fills_a_missing_system_id() -> None:
    reading = Reading(Device(bt_address="F4-5E-AB-A8-08-32"), PATIENT, (Metric(160184, T, Decimal(101), "mg/dL"),))
    old, new = _bundle(reading, "1.1.0"), _bundle(reading, "2.0.0")
    assert old["PhdPatient"]["identifier"][0]["type"] == {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR", "display": "Medical record number"}]}
    assert "type" not in new["PhdPatient"]["identifier"][0]
    assert [(i["type"]["coding"][0]["code"], i["value"]) for i in old["PhdDevice"]["identifier"]] == [
        ("SYSID", "00-00-00-00-00-00-00-00"), ("BTMAC", "F4-5E-AB-A8-08-32")]
    # the conditional create stays on the address: the all-zero SYSID identifies no device
    assert old["PhdDevice"]["_request"]["ifNoneExist"] == new["PhdDevice"]["_request"]["ifNoneExist"] == (
        "identifier=http://hl7.org/fhir/sid/eui-48/bluetooth|F4-5E-AB-A8-08-32")
    assert [i["type"]["coding"][0]["code"] for i in new["PhdDevice"]["identifier"]] == ["BTMAC"]


# ---------------------------------------------------------------- real servers store the unknowns as sent


@pytest.mark.peers
@pytest.mark.parametrize("server", ["sekmet", "medplum"])
def test_servers_store_a_device_that_reported_nothing(server: str, request: pytest.FixtureRequest) -> None:
    """A Bluetooth device without DIS strings or system id: the FHIR servers the tests run accept the
    data-absent-reason extensions and give them back on read."""
    base = request.getfixturevalue(server).base_url
    address = f"00:E5:{datetime.now(UTC).microsecond % 256:02X}:AD:77:C3"  # this run's own device
    device = device_of(PROFILES[3], address, system_id=None)  # a thermometer
    reading = Reading(device, PATIENT, (Metric(150364, T, Decimal("36.8"), "Cel"),))
    body = to_json(build_transaction([reading], GATEWAY).bundle)
    with httpx.Client(timeout=30) as client:
        answer = client.post(base, content=body, headers={"Content-Type": "application/fhir+json"})
        assert answer.status_code == 200, answer.text
        found = client.get(f"{base}/Device", params={
            "identifier": f"http://hl7.org/fhir/sid/eui-48/bluetooth|{address.replace(':', '-')}"}).json()
    (stored,) = [e["resource"] for e in found.get("entry", [])]
    unknown = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
    assert stored["_manufacturer"]["extension"] == [unknown] and stored["specialization"][0]["_version"]["extension"] == [
        unknown]


# ---------------------------------------------------------------- any device: never a required element missing

_text = st.none() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(system_id=st.none() | st.from_regex(r"[0-9A-F]{16}", fullmatch=True),
       manufacturer=_text, model=_text, firmware=_text,
       specializations=st.lists(st.builds(Specialization, st.sampled_from(sorted(GATEWAY_SPECIALIZATIONS)),
                                          st.none() | st.integers(0, 65535)), max_size=3),
       codes=st.lists(st.sampled_from([150456, 150020, 188736, 160184, 147842, 999999]), min_size=1, max_size=4),
       ig_version=st.sampled_from(["2.0.0", "1.1.0"]))
def test_any_device_has_every_element_the_profiles_require(system_id, manufacturer, model, firmware, specializations,
                                                           codes, ig_version) -> None:
    device = Device(system_id=system_id, bt_address="00-E5-DE-AD-77-C3", manufacturer=manufacturer, model=model,
                    firmware=firmware, specializations=tuple(specializations))
    metrics = tuple(Metric(code, T, Decimal(1)) for code in codes)
    phd = _bundle(Reading(device, PATIENT, metrics), ig_version)["PhdDevice"]
    assert ("manufacturer" in phd) != ("_manufacturer" in phd)
    assert ("modelNumber" in phd) != ("_modelNumber" in phd)
    assert phd["specialization"] and all(("version" in s) != ("_version" in s) for s in phd["specialization"])
    assert [s.code for s in device_specializations(device, metrics)] == [
        int(s["systemType"]["coding"][0]["code"]) for s in phd["specialization"]]
    assert len(phd["version"]) == 1 and ("value" in phd["version"][0]) != ("_value" in phd["version"][0])
    sysids = [i["value"] for i in phd["identifier"] if i["type"]["coding"][0]["code"] == "SYSID"]
    assert sysids == ([] if system_id is None and ig_version == "2.0.0" else
                      ["00-00-00-00-00-00-00-00"] if system_id is None else ["-".join(
                          system_id[i:i + 2] for i in range(0, 16, 2))])
