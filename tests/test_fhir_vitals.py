"""The LOINC vital-sign coding and category only with the units the FHIR R4 vital signs profile of that code allows
(review B): an Observation with those LOINC codes SHALL conform to it (R4 observation-vitalsigns.html), and the bp
profile fixes its components to mm[Hg], so a Bluetooth cuff's kPa blood pressure (BLS flags bit 0) goes with its MDC
coding and the PHD category alone, its values as the cuff gave them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from phg import mdc
from phg.fhir.bundle import build_transaction, to_json
from phg.fhir.ig import RULES
from phg.fhir.resources import VITAL_SIGN_UNITS
from phg.model import Component, Device, Gateway, Metric, PatientRef, Reading
from phg.sources.ble.gatt import decode, to_metrics
from test_phd_conformance import VALIDATE, _node_or_skip

GATEWAY = Gateway(system_id="ECDE3D4E58532D31")
PATIENT = PatientRef("urn:oid:2.999.1.2.3", "pt-vitals")
T = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
VITAL_SIGNS = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}
# 0x2A35 Blood Pressure Measurement, flags 0x01 (kPa): systolic 15.9, diastolic 10.6, mean 12.4 (SFLOATs, exponent -1)
KPA_CUFF = "01 9FF0 6AF0 7CF0"


def kpa_reading() -> Reading:
    metrics = to_metrics(decode(0x2A35, bytes.fromhex(KPA_CUFF.replace(" ", ""))), utc_offset=timedelta(0), received=T)
    return Reading(Device(system_id="0A1B2C3D4E5F0007"), PATIENT, tuple(metrics))


def mmhg_reading() -> Reading:
    bp = Metric(150020, T, unit="mm[Hg]", components=(
        Component(150021, Decimal(120), "mm[Hg]"), Component(150022, Decimal(80), "mm[Hg]"),
        Component(150023, Decimal(93), "mm[Hg]")))
    return Reading(Device(system_id="0A1B2C3D4E5F0008"), PATIENT, (bp, Metric(188736, T, Decimal("157.2"), "[lb_av]")))


def observations(reading: Reading, version: str) -> dict[str, dict]:
    """MDC code -> Observation, as sent (JSON, its numbers' digits kept)."""
    bundle = json.loads(to_json(build_transaction([reading], GATEWAY, version).bundle), parse_float=Decimal)
    found = [e["resource"] for e in bundle["entry"]]
    return {r["code"]["coding"][0]["code"]: r for r in found if r["resourceType"] == "Observation"}


def loinc(concept: dict) -> list[str]:
    return [c["code"] for c in concept["coding"] if c["system"] == mdc.LOINC_SYSTEM]


@pytest.mark.parametrize("version", ["2.0.0", "1.1.0"])
def test_a_blood_pressure_in_mmhg_is_a_vital_sign(version):
    found = observations(mmhg_reading(), version)
    bp, weight = found["150020"], found["188736"]
    assert loinc(bp["code"]) == ["85354-9"] and VITAL_SIGNS in bp["category"]
    assert [loinc(c["code"]) for c in bp["component"]] == [["8480-6"], ["8462-4"], []]
    assert loinc(weight["code"]) == ["29463-7"] and VITAL_SIGNS in weight["category"]  # [lb_av]: R4 ucum-bodyweight
    assert weight["valueQuantity"]["code"] == "[lb_av]"


@pytest.mark.parametrize("version", ["2.0.0", "1.1.0"])
def test_a_blood_pressure_in_kpa_is_sent_with_its_mdc_codes_and_values_alone(version):
    bp = observations(kpa_reading(), version)["150020"]
    assert loinc(bp["code"]) == [] and VITAL_SIGNS not in bp["category"] and len(bp["category"]) == 1
    assert [loinc(c["code"]) for c in bp["component"]] == [[], [], []]
    # the cuff's digits, not a conversion to mm[Hg]
    assert [(c["code"]["coding"][0]["code"], str(c["valueQuantity"]["value"]), c["valueQuantity"]["code"])
            for c in bp["component"]] == [("150021", "15.9", "kPa"), ("150022", "10.6", "kPa"), ("150023", "12.4", "kPa")]


def test_every_vital_sign_loinc_phg_sends_has_its_units():
    codes = {m.loinc for m in mdc.MEASUREMENTS.values() if m.loinc}
    codes |= {code for rules in RULES.values() for code in rules.loinc_overrides.values()}
    assert codes <= VITAL_SIGN_UNITS.keys()


@pytest.mark.xdist_group("phd-validate")  # one at a time in parallel runs: validate.sh's first run fills its cache
@pytest.mark.parametrize("ig_version", ["2.0.0", "1.1.0"])
def test_the_readings_conform_to_the_r4_vital_signs_profiles(ig_version, tmp_path):
    """../shared/tools/phd-validate --vitals: every Observation with a vital-sign LOINC code also against the R4
    profile of that code (review B's failing run: bp component valueQuantity.code fixed mm[Hg], found kPa)."""
    _node_or_skip()
    folder = tmp_path / "readings"
    folder.mkdir()
    (folder / "vitals.json").write_text(json.dumps([r.to_document() for r in (kpa_reading(), mmhg_reading())]))
    env = {**os.environ, "HOME": str(tmp_path), "PHD_VALIDATE_CACHE": os.environ.get(
        "PHD_VALIDATE_CACHE", os.path.expanduser("~/.cache/phd-validate"))}
    done = subprocess.run([str(VALIDATE), str(Path(sys.executable).with_name("phg")), "--readings", str(folder),
                           "--ig", ig_version, "--vitals"], capture_output=True, text=True, env=env, timeout=300)
    *issues, verdict = done.stdout.strip().splitlines() or [""]
    n, _, m = verdict.partition(" ")[0].partition("/")
    assert done.returncode == 0 and not issues and n == m and int(m) > 5, "\n".join(issues + [verdict, done.stderr])
