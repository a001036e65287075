"""`phg decode 11073 HEX [--config-id ID | --config HEX]` through click's CliRunner, on the published APDUs
of ../shared/vectors/ieee11073 (issue 17): the APDU always decodes; a fixed-format scan report of a
standard configuration decodes with its id alone; with a configuration the values and the readings they
become are shown, as the manager queues them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from phg.cli.decode import decode_11073
from phg.model import PatientRef, _metric_document
from phg.sources.ieee11073.apdu import decode
from phg.sources.ieee11073.configs import standard
from phg.sources.ieee11073.manager import MdsInfo, Measurements, scan_observations
from phg.sources.ieee11073.readings import readings_of
from shared_vectors import VECTORS

SAMPLES = {s["id"]: s for s in json.loads((VECTORS / "ieee11073" / "samples.json").read_text())}
OXIMETER = SAMPLES["ant-H241_ID_0190"]["hex"]  # fixed scan report, standard configuration 0x0190
BLOOD_PRESSURE = SAMPLES["ant-H241_ID_02BC"]["hex"]  # fixed scan report, standard configuration 0x02BC
STANDARD_IDS = ("0x0190", "0x02BC", "0x0320", "0x05DC", "0x06A4")


def run(*args: str) -> tuple[int, dict | str]:
    result = CliRunner().invoke(decode_11073, list(args))
    if result.exit_code:
        return result.exit_code, result.stderr
    return 0, json.loads(result.output)


def metrics(doc: dict) -> list[list[tuple]]:
    return [[(m["code"], m.get("value"), m["unit"], m["time"],
              [(c["code"], c["value"], c["unit"]) for c in m.get("components", [])]) for m in r["metrics"]]
            for r in doc["readings"]]


def test_a_standard_configuration_by_its_id_gives_values_and_readings() -> None:
    code, doc = run(OXIMETER, "--config-id", "0x0190", "--utc-offset", "+01:00")
    assert code == 0, doc
    assert doc["configuration"] == {"config-id": "0x0190", "standard": "IEEE 11073-10404 pulse oximeter",
                                    "specialization": {"code32": 528388, "name": "MDC_DEV_SPEC_PROFILE_PULS_OXIM"}}
    values = [(o["obj-handle"], o["values"][0]["value"]["text"], o["values"][1]["value"]["iso"])
              for o in doc["event-info"]["obs"]]
    assert values == [(1, "98", "2007-12-06T12:10:00.00"), (10, "72", "2007-12-06T12:10:00.00")]
    assert metrics(doc) == [[(150456, "98", "%", "2007-12-06T12:10:00+01:00", []),  # MDC_PULS_OXIM_SAT_O2
                             (149530, "72", "/min", "2007-12-06T12:10:00+01:00", [])]]  # MDC_PULS_OXIM_PULS_RATE


def test_blood_pressure_becomes_a_compound_and_a_pulse_rate() -> None:
    code, doc = run(BLOOD_PRESSURE, "--config-id", "700", "--utc-offset", "-05:00")  # 700 = 0x02BC
    assert code == 0, doc
    assert doc["configuration"]["standard"] == "IEEE 11073-10407 blood pressure monitor"
    assert metrics(doc) == [[
        (150020, None, "mm[Hg]", "2007-12-06T12:10:00-05:00",
         [(150021, "120", "mm[Hg]"), (150022, "80", "mm[Hg]"), (150023, "100", "mm[Hg]")]),
        (149546, "60.0", "/min", "2007-12-06T12:10:00-05:00", [])]]  # the device's digits kept


def test_the_readings_are_those_the_manager_queues() -> None:
    """Same APDU through the manager's own path (scan_observations + readings_of) gives the same metrics."""
    config = standard(0x02BC)
    assert config is not None
    report = decode(bytes.fromhex(BLOOD_PRESSURE)).message
    queued = readings_of(Measurements(1, report, scan_observations(config, report), MdsInfo("11"), config, True),
                         PatientRef("urn:x", "p"), timedelta(hours=2), datetime.now(UTC))
    _, doc = run(BLOOD_PRESSURE, "--config-id", "0x02BC", "--utc-offset", "+02:00")
    assert doc["readings"] == [{"metrics": [_metric_document(m) for m in r.metrics]} for r in queued]


def test_an_extended_configuration_from_its_report() -> None:
    code, doc = run(SAMPLES["ant-po-unbuf_scan_report_var"]["hex"], "--config",
                    SAMPLES["ant-po-config-scanner"]["hex"], "--utc-offset", "Z")
    assert code == 0, doc
    assert doc["configuration"] == {"config-id": "0x4000", "standard": None, "specialization": None}
    assert [(m[0], m[1], m[2]) for r in metrics(doc) for m in r] == [(150456, "98", "%"), (149530, "72", "/min")]


def test_without_a_configuration_the_apdu_still_decodes() -> None:
    # an association request names its configuration: shown, so that its reports can be read with --config-id
    code, doc = run(SAMPLES["ant-H211_ID_05DC"]["hex"])
    assert code == 0, doc
    assert doc["apdu"] == "AarqApdu" and doc["data-proto-list"][0]["info"]["dev-config-id"] == "0x05DC"
    assert doc["configuration"] == {"config-id": "0x05DC", "standard": "IEEE 11073-10415 weighing scale"}
    assert "readings" not in doc
    # an extended configuration id is not one phg knows by itself
    code, doc = run(SAMPLES["ant-H211"]["hex"])
    assert code == 0 and "configuration" not in doc
    # a fixed-format report without its configuration: one error naming what would read it
    code, message = run(OXIMETER)
    assert code == 1
    assert "fixed-format observation of handle 1 needs its configuration" in message
    assert all(cid in message for cid in STANDARD_IDS)


@pytest.mark.parametrize(("args", "exit_code", "why"), [
    ([OXIMETER, "--config-id", "0x4000"], 1, "0x4000 is not a standard configuration phg knows"),
    ([OXIMETER, "--config-id", "0x02BC"], 1, "does not fit configuration 0x02bc"),
    # the Freescale thermometer template reports a FLOAT where 11073-10408's 0x0320 has an SFLOAT
    ([SAMPLES["fs-thermo-data"]["hex"], "--config-id", "0x0320"], 1, "does not fit configuration 0x0320"),
    ([OXIMETER, "--config-id", "0x0190", "--config", SAMPLES["ant-po-config-scanner"]["hex"]], 2, "not both"),
    ([OXIMETER, "--config-id", "0x10000"], 2, "is not a dev-config-id"),
    ([OXIMETER, "--config-id", "oximeter"], 2, "is not a number"),
    (["e7zz"], 1, "is not hex"),
])
def test_clear_refusals(args: list[str], exit_code: int, why: str) -> None:
    code, message = run(*args)
    assert code == exit_code and why in message
