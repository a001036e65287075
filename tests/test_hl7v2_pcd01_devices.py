"""PCD-01 device rows (issue 17): the gateway and the device as MDSs with their attribute rows, the
containment tree in OBX-4, measurement status in OBX-8/OBX-11 and test data in MSH-11, rendered field by
field as IHE PCD TF-2 PCD-01 and the Continua WAN fixtures (the shared IPF vectors) write them. Every
message is clean under hl7apy strict validation and `phg hl7 check`, and the checker's new rules find
the defects they are for."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import hl7
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from phg import mdc
from phg.cli.hl7 import hl7 as hl7_group
from phg.delivery.mllp import MllpCodec, frame
from phg.hl7v2 import check, render_messages
from phg.hl7v2.pcd01 import STATUS_FLAGS
from phg.model import Bit, BitString, DeviceClock, Gateway, Metric, parse_reading
from phg.version import __version__
from test_hl7v2_mapping import NOW, VECTORS, obx_rows, strict
from test_mllp_peers import GATEWAY, PATIENT

T = "2026-11-28T09:00:00+01:00"
EUI = "0A1B2C3D4E5F6002"


def reading(metrics: list[dict], **device) -> object:
    """A reading of these metrics from device EUI (a None field left out of the device)."""
    device = {k: v for k, v in {"system_id": EUI, **device}.items() if v is not None}
    doc = {"device": device, "patient": PATIENT, "metrics": metrics}
    return parse_reading(json.loads(json.dumps(doc), parse_float=Decimal))


def render(one, gateway: Gateway = GATEWAY) -> str:
    [message] = render_messages([one], gateway, now=NOW)
    strict(message)
    assert check(message) == [], message.replace("\r", "\n")
    return message


def fields(row: hl7.Segment, *ns: int) -> tuple[str, ...]:
    return tuple(str(row[n]) if n < len(row) else "" for n in ns)


def valued(row: hl7.Segment) -> set[int]:
    """The OBX fields (by number) that hold anything."""
    return {n for n in range(1, len(row)) if str(row[n])}


GLUCOSE = [{"type": "glucose", "value": "5.20", "unit": "mmol/L", "time": T}]
BP = {"type": "blood_pressure", "unit": "mm[Hg]", "time": T,
      "components": [{"type": "systolic", "value": 116}, {"type": "diastolic", "value": 71},
                     {"type": "mean_arterial_pressure", "value": 86}]}


# ---------------------------------------------------------------------------------------------- MDS rows


def test_the_device_mds_and_its_attribute_rows():
    """IEEE 11073-20601 MDS attributes, one OBX each in MDS 1 before the metrics: time sync, System-Id,
    System-Model as two ST rows (manufacturer, model number: ST has no components, so a "^" in either is
    escaped text, never a separator), Production-Specification serial and firmware, then the device clock;
    the MDS row has the specialization and OBX-18 = EUI-64 as the Continua fixture."""
    one = reading(GLUCOSE, manufacturer="A&D", model="UA-651^BLE", serial="5150|12", firmware="1.3",
                  specializations=[{"code": 528401, "version": 1}])
    device_time = datetime(2026, 11, 28, 12, 58, 30, tzinfo=timezone(timedelta(hours=1)))
    one = one._replace(clock=DeviceClock(gateway_time=NOW, device_time=device_time, sync=532224))
    message = render(one)
    rows = {k: v for k, v in obx_rows(message).items() if k.startswith("1")}
    assert list(rows) == ["1", *(f"1.0.0.{n}" for n in range(1, 9))]
    assert fields(rows["1"], 2, 3, 5, 11, 18) == ("", "528401^MDC_DEV_SPEC_PROFILE_GLUCOSE^MDC", "", "X",
                                                   f"{EUI}^EUI-64")
    assert [fields(rows[f"1.0.0.{n}"], 2, 3, 5, 11) for n in range(1, 8)] == [
        ("CWE", "68220^MDC_TIME_SYNC_PROTOCOL^MDC", "532224^MDC_TIME_SYNC_NONE^MDC", "R"),
        ("ST", "67972^MDC_ATTR_SYS_ID^MDC", EUI, "R"),
        ("ST", "531970^MDC_ID_MODEL_MANUFACTURER^MDC", "A\\T\\D", "R"),
        ("ST", "531969^MDC_ID_MODEL_NUMBER^MDC", "UA-651\\S\\BLE", "R"),
        ("ST", "531972^MDC_ID_PROD_SPEC_SERIAL^MDC", "5150\\F\\12", "R"),
        ("ST", "531976^MDC_ID_PROD_SPEC_FW^MDC", "1.3", "R"),
        ("DTM", "67975^MDC_ATTR_TIME_ABS^MDC", "20261128125830+0100", "R"),
    ]
    assert fields(rows["1.0.0.8"], 2, 3, 5) == ("NM", "160184^MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD^MDC", "5.20")
    parsed = hl7.parse(message)  # python-hl7 reads each ST back to the device's own text, one component
    assert [parsed.unescape(str(rows[f"1.0.0.{n}"][5])) for n in (3, 4, 5)] == ["A&D", "UA-651^BLE", "5150|12"]
    assert [str(rows[f"1.0.0.{n}"][5]) for n in (3, 4)] == ["A\\T\\D", "UA-651\\S\\BLE"]  # no component separator
    strict(message)


def test_attribute_rows_only_for_what_is_known():
    """A Bluetooth device with only its address: the MDS row alone (OBX-18 its EUI-48), no system id row;
    its specialization by the rule the FHIR PhdDevice follows (the metric codes', else the generic one); a
    model without manufacturer is the model number row alone."""
    bare = reading(GLUCOSE, system_id=None, bt_address="B0:49:5F:00:10:71")
    rows = {k: v for k, v in obx_rows(render(bare)).items() if k.startswith("1")}
    assert list(rows) == ["1", "1.0.0.1"]
    assert fields(rows["1"], 3, 18) == ("528401^MDC_DEV_SPEC_PROFILE_GLUCOSE^MDC", "B0495F001071^EUI-48")
    unknown = reading([{"code": 12345, "value": 1, "unit": "%", "time": T}], system_id=None, bt_address="B0:49:5F:00:10:71")
    assert str(obx_rows(render(unknown))["1"][3]) == "528457^MDC_DEV_SPEC_PROFILE_GENERIC^MDC"
    model_only = reading(GLUCOSE, model="Contour")
    rows = obx_rows(render(model_only))
    assert fields(rows["1.0.0.2"], 3, 5) == ("531969^MDC_ID_MODEL_NUMBER^MDC", "Contour")
    assert str(rows["1.0.0.3"][3]).startswith("160184^")


def test_the_gateway_is_the_ahd_mds_0():
    """The gateway as the application hosting device: MDS 0 (MDC_MOC_VMS_MDS_AHD, OBX-18 its EUI-64), its
    time sync at 0.0.0.1 as in the Continua WAN messages, then its manufacturer, model, serial, firmware and
    software."""
    rows = {k: v for k, v in obx_rows(render(reading(GLUCOSE))).items() if k.startswith("0")}
    assert list(rows) == ["0", *(f"0.0.0.{n}" for n in range(1, 7))]
    assert fields(rows["0"], 2, 3, 5, 11, 18) == ("", "531981^MDC_MOC_VMS_MDS_AHD^MDC", "", "X",
                                                   "ECDE3D4E58532D31^EUI-64")
    assert [fields(rows[f"0.0.0.{n}"], 2, 3, 5) for n in range(1, 7)] == [
        ("CWE", "68220^MDC_TIME_SYNC_PROTOCOL^MDC", "532226^MDC_TIME_SYNC_NTPV4^MDC"),
        ("ST", "531970^MDC_ID_MODEL_MANUFACTURER^MDC", "phg project"),
        ("ST", "531969^MDC_ID_MODEL_NUMBER^MDC", "phg"),
        ("ST", "531972^MDC_ID_PROD_SPEC_SERIAL^MDC", "0001"),
        ("ST", "531976^MDC_ID_PROD_SPEC_FW^MDC", "1.2.3"),
        ("ST", "531975^MDC_ID_PROD_SPEC_SW^MDC", __version__),  # phg's own version
    ]
    plain = Gateway(system_id="0102030405060708")
    rows = obx_rows(render(reading(GLUCOSE), plain))
    assert [k for k in rows if k.startswith("0")] == ["0", "0.0.0.1", "0.0.0.2", "0.0.0.3", "0.0.0.4"]


def test_rows_match_the_continua_wan_fixtures_field_by_field():
    """The IPF Continua WAN glucose and oximeter messages: the MDS row and the metric rows hold the same
    fields in the same forms as phg's (phg adds only the UCUM alternate in OBX-6.4-6, which PCD-01 allows)."""
    ours = obx_rows(render(reading(GLUCOSE, specializations=[{"code": 528401}])))
    for name, mds_code in (("ipf-continua-wan-glucose.hl7", "528401"), ("ipf-continua-wan-oximeter.hl7", "528388")):
        theirs = obx_rows("\r".join((VECTORS / name).read_text().strip().splitlines()))
        mds = theirs["1"]
        assert valued(mds) - {14} == valued(ours["1"]) == {1, 3, 4, 11, 18}  # the oximeter's MDS row has a time
        assert fields(mds, 2, 11) == fields(ours["1"], 2, 11) == ("", "X")
        assert str(mds[3]).split("^")[0] == mds_code and str(mds[3]).endswith("^MDC")
        assert re.fullmatch(r"[0-9A-F]{16}\^EUI-64", str(mds[18])) and re.fullmatch(r"[0-9A-F]{16}\^EUI-64",
                                                                                  str(ours["1"][18]))
        metric = theirs["1.0.0.1"]
        assert valued(metric) == valued(ours["1.0.0.2"]) == {1, 2, 3, 4, 5, 6, 11, 14}
        assert fields(metric, 2, 11) == fields(ours["1.0.0.2"], 2, 11) == ("NM", "R")
        assert str(ours["1.0.0.2"][6]).split("^")[:3] == ["266866", "MDC_DIM_MILLI_MOLE_PER_L", "MDC"]
        assert str(metric[6]).split("^")[2] == "MDC"
        assert re.fullmatch(r"\d{14}\+0000", str(metric[14])) and re.fullmatch(r"\d{14}\+0000",
                                                                              str(ours["1.0.0.2"][14]))


def test_the_containment_tree_of_a_blood_pressure_reading():
    """MDS.VMD.CHAN.METRIC: the compound is channel 1 of MDS 1 with its three metrics, the pulse a metric of
    MDS 1 after the device's attribute rows, as the IPF blood pressure request numbers them."""
    one = reading([BP, {"type": "pulse_rate", "value": 62, "time": T}], manufacturer="A&D")
    ours = [k for k in obx_rows(render(one)) if k.startswith("1")]
    assert ours == ["1", "1.0.0.1", "1.0.0.2", "1.0.1", "1.0.1.1", "1.0.1.2", "1.0.1.3", "1.0.0.3"]
    theirs = list(obx_rows("\r".join((VECTORS / "ipf-pcd01-request-bp.hl7").read_text().strip().splitlines())))
    assert theirs == ["1", "1.0.1", "1.0.1.1", "1.0.1.2", "1.0.1.3"]


# ---------------------------------------------------------------------------------------------- status


@pytest.mark.parametrize(("status", "flag", "result", "has_value"), [
    ("invalid", "INV", "X", False),
    ("questionable", "QUES", "R", True),
    ("not-available", "NAV", "X", False),
    ("calibration-ongoing", "CAL", "R", True),
    ("test-data", "TEST", "R", True),
    ("demonstration-data", "DEMO", "R", True),
    ("validated-data", "", "F", True),
    ("early-indication", "EARLY", "R", True),
    ("msmt-ongoing", "BUSY", "X", False),
])
def test_measurement_status_to_obx8_and_obx11(status, flag, result, has_value):
    """IHE PCD TF-2's measurement-status table: the OBX-8 flag and OBX-11 status of each bit; a value
    that cannot be obtained (OBX-11 X) is not sent."""
    one = reading([{**GLUCOSE[0], "status": [status]}, {**GLUCOSE[0], "time": "2026-11-28T09:01:00+01:00"}])
    rows = obx_rows(render(one))
    assert fields(rows["1.0.0.2"], 8, 11) == (flag, result)
    assert fields(rows["1.0.0.2"], 2, 5) == (("NM", "5.20") if has_value else ("", ""))
    assert fields(rows["1.0.0.3"], 8, 11) == ("", "R")  # the other metric is untouched


def test_every_status_has_its_pcd_flag():
    """Every MeasurementStatus name a reading may carry maps to OBX-8 (validated-data is OBX-11 F)."""
    assert set(STATUS_FLAGS) == set(mdc.MEASUREMENT_STATUS) - {"validated-data"}


def test_flags_repeat_in_bit_order_and_mark_a_compound_and_its_components():
    one = reading([{**BP, "status": ["test-data", "questionable", "validated-data"]}])
    message = render(one)
    rows = obx_rows(message)
    for sub_id in ("1.0.1", "1.0.1.1", "1.0.1.2", "1.0.1.3"):
        assert str(rows[sub_id][8]) == "QUES~TEST"
    assert [str(r) for r in rows["1.0.1.1"][8]] == ["QUES", "TEST"]  # two repetitions of OBX-8
    assert fields(rows["1.0.1.1"], 11) == ("F",)
    invalid = obx_rows(render(reading([{**BP, "status": ["invalid"]}])))
    assert fields(invalid["1.0.1"], 8, 11) == ("INV", "X") and "1.0.1.1" not in invalid


@pytest.mark.parametrize(("statuses", "msh11"), [
    ([["test-data"], ["test-data", "questionable"]], "T"),
    ([["demonstration-data"], ["demonstration-data"]], "T"),
    ([["test-data"], ["demonstration-data"]], "T"),
    ([["test-data"], []], "P"),
    ([[], []], "P"),
])
def test_test_and_demonstration_data_are_msh11_t(statuses, msh11):
    """MSH-11 (HL7 table 0103) T when every metric is test or demonstration data; one real measurement
    among them makes the message production data, its test metrics flagged in OBX-8 alone."""
    one = reading([{**GLUCOSE[0], "time": f"2026-11-28T09:0{i}:00+01:00", "status": s} for i, s in enumerate(statuses)])
    message = render(one)
    assert str(hl7.parse(message).segment("MSH")[11]) == msh11


# ---------------------------------------------------------------------------------------------- values


STRIP = {"code": 8417752, "time": T, "bits": {"length": 16, "bits": [{"bit": 3, "name": "sensor-strip-insertion"}]}}


def test_a_status_bits_value_is_the_continua_fixtures_cwe():
    """MDC_GLU_METER_DEV_STATUS with bit 3 set: the same row as the IPF Continua glucose fixture's OBX 7,
    field for field (but its sub-id and time); several bits repeat in bit order, a cleared state bit is 0."""
    ours = obx_rows(render(reading([*GLUCOSE, STRIP])))["1.0.0.3"]
    theirs = obx_rows("\r".join((VECTORS / "ipf-continua-wan-glucose.hl7").read_text().strip().splitlines()))["1.0.0.5"]
    assert valued(ours) == valued(theirs) == {1, 2, 3, 4, 5, 11, 14}
    assert fields(ours, 2, 3, 5, 6, 8, 11) == fields(theirs, 2, 3, 5, 6, 8, 11) == (
        "CWE", "8417752^MDC_GLU_METER_DEV_STATUS^MDC", "1^sensor-strip-insertion(3)", "", "", "R")
    bpm = {"code": 8410608, "time": T, "bits": {"length": 16, "bits": [
        {"bit": 2, "name": "irregular-pulse"}, {"bit": 0, "name": "body-movement", "set": False}, {"bit": 5}]}}
    row = obx_rows(render(reading([BP, bpm])))["1.0.0.2"]
    assert fields(row, 2, 3, 5) == ("CWE", "8410608^MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS^MDC",
                                    "0^body-movement(0)~1^irregular-pulse(2)~1^improper-body-position(5)")


def test_a_coded_value_is_a_cwe_of_its_mdc_code():
    """Meal context and sample location: the value is an MDC code (CWE, no unit), a metric of the device
    beside the glucose it qualifies, as the Continua fixture sends the glucose context metrics."""
    meal = {"code": 8417864, "coded": 8417868, "time": T, "derived_from": 0}
    site = {"code": 8417844, "coded": 8417848, "time": T, "derived_from": 0}
    rows = obx_rows(render(reading([*GLUCOSE, meal, site])))
    assert fields(rows["1.0.0.3"], 2, 3, 5, 6, 11) == (
        "CWE", "8417864^MDC_CTXT_GLU_MEAL^MDC", "8417868^MDC_CTXT_GLU_MEAL_PREPRANDIAL^MDC", "", "R")
    assert fields(rows["1.0.0.4"], 3, 5) == ("8417844^MDC_CTXT_GLU_SAMPLELOCATION^MDC",
                                             "8417848^MDC_CTXT_GLU_SAMPLELOCATION_FINGER^MDC")
    invalid = obx_rows(render(reading([*GLUCOSE, {**meal, "status": ["invalid"]}])))["1.0.0.3"]
    assert fields(invalid, 2, 5, 8, 11) == ("", "", "INV", "X")


def test_supplemental_types_are_the_metrics_attribute_row():
    """Supplemental-Types (MDC_ATTR_SUPPLEMENTAL_TYPES 68193) one level below its metric, as the Continua
    fixture's 1.0.0.2.1 attribute row; a compound's at 1.0.c.0.1; the checker holds them to their metric."""
    spot = [{**GLUCOSE[0], "supplemental": [150588, 150580]}, {**BP, "supplemental": [150588]}]
    rows = obx_rows(render(reading(spot)))
    assert list(k for k in rows if k.startswith("1.")) == [
        "1.0.0.1", "1.0.0.2", "1.0.0.2.1", "1.0.1", "1.0.1.1", "1.0.1.2", "1.0.1.3", "1.0.1.0.1"]
    assert fields(rows["1.0.0.2.1"], 2, 3, 5, 11) == (
        "CWE", "68193^MDC_ATTR_SUPPLEMENTAL_TYPES^MDC", "150588^MDC_MODALITY_SPOT^MDC~150580^MDC_MODALITY_FAST^MDC", "R")
    assert fields(rows["1.0.1.0.1"], 3, 5) == ("68193^MDC_ATTR_SUPPLEMENTAL_TYPES^MDC", "150588^MDC_MODALITY_SPOT^MDC")


# ---------------------------------------------------------------------------------------------- any input


@settings(max_examples=25, deadline=None)  # hl7apy strict parsing is ~0.1 s a message
@given(st.dictionaries(st.sampled_from(["manufacturer", "model", "serial", "firmware"]),
                       st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
                               | st.sampled_from("|^&~\\"), min_size=1, max_size=20)),
       st.lists(st.sampled_from(mdc.MEASUREMENT_STATUS), unique=True, max_size=4))
def test_any_device_text_and_status_render_clean(device, status):
    """Whatever a device calls itself and whatever status bits it sets: strict v2.6, a clean PCD-01
    check, an intact MLLP frame, and the device's text back from the escaped rows."""
    one = reading([{**GLUCOSE[0], "status": status}], **device)
    message = render(one)
    codec = MllpCodec()
    codec.receive_data(frame(message))
    assert codec.next_message() == message.encode("utf-8")
    parsed, rows = hl7.parse(message), obx_rows(message)
    by_code = {str(r[3]).split("^")[0]: r for k, r in rows.items() if k.startswith("1.")}
    for key, code in (("serial", "531972"), ("firmware", "531976")):
        if key in device:
            assert parsed.unescape(str(by_code[code][5])) == device[key]
    for key, code in (("manufacturer", "531970"), ("model", "531969")):
        if key in device:
            assert parsed.unescape(str(by_code[code][5])) == device[key]


bits_values = st.builds(
    BitString, st.just(16),
    st.lists(st.builds(Bit, st.integers(0, 15), st.none() | st.text(min_size=1, max_size=12), st.booleans()),
             max_size=5, unique_by=lambda b: b.bit).map(tuple))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(
    st.builds(lambda c: {"code": 8417864, "coded": c}, st.sampled_from(sorted(mdc.CODED_VALUES)) | st.integers(1, 2**32)),
    st.builds(lambda b: {"code": 8417752, "bits": b}, bits_values),
    st.builds(lambda v, s: {"code": 160184, "value": Decimal(v), "unit": "mg/dL", "supplemental": s},
              st.integers(0, 999), st.lists(st.sampled_from(sorted(mdc.SUPPLEMENTAL_TYPES)), max_size=3).map(tuple)),
), min_size=1, max_size=4), st.lists(st.sampled_from(mdc.MEASUREMENT_STATUS), unique=True, max_size=3).map(tuple))
def test_any_coded_bits_or_supplemental_metric_renders_clean(metrics, status):
    """Whatever codes, bits (named or not, any name) and supplemental types, with any status: strict v2.6
    and a clean PCD-01 check, the containment tree included."""
    when = datetime(2026, 11, 28, 8, tzinfo=UTC)
    one = reading(GLUCOSE)._replace(metrics=tuple(Metric(time=when, status=status, **m) for m in metrics))
    render(one)


# ---------------------------------------------------------------------------------------------- checker


def _replace_row(message: str, sub_id: str, change) -> str:
    lines = message.split("\r")
    for i, line in enumerate(lines):
        parts = line.split("|")
        if parts[0] == "OBX" and parts[4] == sub_id:
            lines[i] = "|".join(change(parts))
    return "\r".join(lines)


def _set(n: int, value: str):
    def change(parts: list[str]) -> list[str]:
        parts += [""] * (n + 1 - len(parts))
        parts[n] = value
        return parts
    return change


MESSAGE = render_messages([reading([BP, {**GLUCOSE[0], "status": ["questionable"]}], manufacturer="A&D")],
                          GATEWAY, now=NOW)[0]


@pytest.mark.parametrize(("defect", "where", "text"), [
    (lambda m: m.replace("|P|2.6|", "|X|2.6|"), "MSH-11", "table 0103"),
    (lambda m: _replace_row(m, "1", _set(4, "2")), "OBX[12]-4", "MDS 1"),  # the device's rows lose their MDS
    (lambda m: _replace_row(m, "1.0.1.1", _set(4, "1.0.1.1.1")), "OBX[15]-4", "does not follow"),
    (lambda m: _replace_row(m, "1.0.0.3", _set(8, "INV")), "OBX[18]-11", "result status X"),
    (lambda m: _replace_row(m, "1.0.0.3", _set(11, "X")), "OBX[18]-5", "result status X"),
])
def test_checker_finds_each_new_defect(defect, where, text):
    assert check(MESSAGE) == []
    problems = check(defect(MESSAGE))
    assert any(p.where == where and text in p.message for p in problems), problems


def test_checker_keeps_a_metric_attribute_after_its_metric_and_the_fixtures_clean():
    """The glucose fixture's 1.0.0.2.1 (the measurement duration of 1.0.0.2) follows its metric: clean;
    moved before it, the checker says so."""
    text = (VECTORS / "ipf-continua-wan-glucose.hl7").read_text()
    assert check(text) == []
    moved = (text.replace("|1.0.0.2|", "|metric|").replace("|1.0.0.2.1|", "|1.0.0.2|")
             .replace("|metric|", "|1.0.0.2.1|"))  # the exercise row and its duration row swap sub-ids
    assert [p.where for p in check(moved)] == ["OBX[6]-4"]


def test_the_gateway_mds_row_is_optional():
    """MDS 0 is the gateway: the Continua WAN messages send its 0.0.0.1 time-sync row without an MDS row,
    which the checker accepts; any other MDS needs its row."""
    segments = [line.split("|") for line in MESSAGE.split("\r") if not line.startswith("OBX|1|")]
    for obx in segments[3:]:
        obx[1] = str(int(obx[1]) - 1)
    without = "\r".join("|".join(segment) for segment in segments)
    assert [obx[4] for obx in segments[3:5]] == ["0.0.0.1", "0.0.0.2"] and check(without) == []
    assert any("MDS 1" in p.message for p in check(without.replace("|1|||||||X|", "|2|||||||X|")))


def test_cli_check_reports_a_broken_tree(tmp_path):
    path = tmp_path / "tree.hl7"
    path.write_text(_replace_row(MESSAGE, "1", _set(4, "2")).replace("\r", "\n"))
    result = CliRunner().invoke(hl7_group, ["check", "--strict", str(path)])
    assert result.exit_code == 1
    assert "MDS 1" in result.output and "has not come before it" in result.output
    path.write_text(MESSAGE)
    assert CliRunner().invoke(hl7_group, ["check", "--strict", str(path)]).exit_code == 0

