"""Readings -> IHE PCD-01 ORU^R01 (HL7 v2.6 ER7): every rendered message passes hl7apy strict
validation and the project's PCD-01 checker; the structure follows IHE PCD TF-2 PCD-01 / Continua WAN
(ITU-T H.812); the shared IPF example messages parse and re-check clean, and the
checker finds the defects it should. Also `phg hl7 check FILE`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import hl7
import pytest
from click.testing import CliRunner
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import given, settings
from hypothesis import strategies as st

from phg import mdc
from phg.cli.hl7 import hl7 as hl7_group
from phg.delivery.mllp import MllpCodec, frame
from phg.errors import MappingError
from phg.hl7v2 import PCD01_PROFILE, check, render_messages
from phg.hl7v2.pcd01 import escape, number, render_batch
from phg.model import DeviceClock, parse_reading
from shared_vectors import VECTORS as SHARED
from test_fhir_mapping import reading_docs
from test_mllp_peers import GATEWAY, readings_of_every_type

VECTORS = SHARED / "hl7v2"
EXAMPLES = ["ipf-continua-wan-glucose.hl7", "ipf-continua-wan-oximeter.hl7", "ipf-pcd01-request-bp.hl7"]
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def strict(message: str) -> None:
    parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()


def obx_rows(message: str) -> dict[str, hl7.Segment]:
    """OBX segments by OBX-4 sub-id."""
    return {str(s[4]): s for s in hl7.parse(message).segments("OBX")}


@pytest.fixture(scope="module")
def messages() -> list[str]:
    return render_messages(readings_of_every_type(), GATEWAY, now=NOW)


def test_every_reading_type_passes_hl7apy_strict_and_the_checker(messages):
    for message in messages:
        strict(message)
        assert check(message) == []
        assert "\n" not in message and message.count("\r") >= 4


def test_msh(messages):
    control_ids = set()
    for message in messages:
        msh = hl7.parse(message).segment("MSH")
        assert str(msh[3]) == "phg^ECDE3D4E58532D31^EUI-64"
        assert str(msh[7]) == "20261128120000+0000"
        assert (str(msh[9]), str(msh[11]), str(msh[12]), str(msh[15]), str(msh[16])) == \
               ("ORU^R01^ORU_R01", "P", "2.6", "NE", "AL")
        assert str(msh[21]) == PCD01_PROFILE == "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"
        control_ids.add(str(msh[10]))
    assert len(control_ids) == len(messages)


def test_control_id_is_deterministic_and_unique_for_a_repeated_reading():
    readings = readings_of_every_type()
    again = render_messages(readings, GATEWAY, now=NOW + timedelta(hours=1))
    first = render_messages(readings, GATEWAY, now=NOW)
    ids = [str(hl7.parse(m).segment("MSH")[10]) for m in first]
    assert ids == [str(hl7.parse(m).segment("MSH")[10]) for m in again]
    twice = render_messages([readings[0], readings[0]], GATEWAY, now=NOW)
    assert len({str(hl7.parse(m).segment("MSH")[10]) for m in twice}) == 2
    other_gateway = render_messages(readings[:1], GATEWAY._replace(system_id="0000000000000001"), now=NOW)
    assert str(hl7.parse(other_gateway[0]).segment("MSH")[10]) != ids[0]


def test_pid_and_obr(messages):
    glucose, oximeter = hl7.parse(messages[0]), hl7.parse(messages[4])
    assert str(glucose.segment("PID")[3]) == "sisansarahId^^^&2.999.1.2.3.4.5.6.7.8.10&ISO^PI"
    assert str(glucose.segment("PID")[5]) == "^^^^^^U"
    # the delimiters in an identifier are escaped, a URI system becomes a URI-typed assigning authority
    assert oximeter.segment("PID")[3] is not None
    assert "A\\F\\B\\S\\C\\T\\D^^^&http://hospital.example/mrn&URI^PI" in messages[4]
    obr = glucose.segment("OBR")
    control = str(glucose.segment("MSH")[10])
    assert str(obr[2]) == str(obr[3]) == f"{control}^phg^ECDE3D4E58532D31^EUI-64"
    assert str(obr[4]) == "182777000^monitoring of patient^SNOMED-CT"
    assert (str(obr[7]), str(obr[8])) == ("20261128080000+0000", "20261128090000+0000")


def test_obx_tree_gateway_device_metrics(messages):
    rows = obx_rows(messages[0])
    assert list(rows) == ["0", "0.0.0.1", "0.0.0.2", "0.0.0.3", "0.0.0.4", "0.0.0.5", "0.0.0.6", "1", "1.0.0.1",
                          "1.0.0.2", "1.0.0.3"]
    gateway, sync = rows["0"], rows["0.0.0.1"]
    assert (str(gateway[3]), str(gateway[11]), str(gateway[18])) == \
           ("531981^MDC_MOC_VMS_MDS_AHD^MDC", "X", "ECDE3D4E58532D31^EUI-64")
    assert (str(sync[2]), str(sync[3]), str(sync[5])) == \
           ("CWE", "68220^MDC_TIME_SYNC_PROTOCOL^MDC", "532226^MDC_TIME_SYNC_NTPV4^MDC")
    device = rows["1"]
    assert (str(device[3]), str(device[11]), str(device[18])) == \
           ("528401^MDC_DEV_SPEC_PROFILE_GLUCOSE^MDC", "X", "00601900010E9234^EUI-64")
    assert str(rows["1.0.0.1"][3]) == "67972^MDC_ATTR_SYS_ID^MDC"
    glucose = rows["1.0.0.2"]
    assert (str(glucose[2]), str(glucose[3]), str(glucose[5])) == \
           ("NM", "160184^MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD^MDC", "5.20")
    assert str(glucose[6]) == "266866^MDC_DIM_MILLI_MOLE_PER_L^MDC^mmol/L^mmol/L^UCUM"
    assert (str(glucose[11]), str(glucose[14])) == ("R", "20261128080000+0000")


def test_blood_pressure_is_a_compound_with_three_metrics(messages):
    rows = {sub_id: row for sub_id, row in obx_rows(messages[1]).items() if sub_id.startswith("1")}
    assert list(rows) == ["1", "1.0.0.1", "1.0.0.2", "1.0.1", "1.0.1.1", "1.0.1.2", "1.0.1.3", "1.0.0.3"]
    assert str(rows["1"][18]) == "B0495F001071^EUI-48"  # no EUI-64: the Bluetooth address
    assert str(rows["1"][3]) == "528391^MDC_DEV_SPEC_PROFILE_BP^MDC"  # from its metric codes
    assert (str(rows["1.0.1"][3]), str(rows["1.0.1"][2]), str(rows["1.0.1"][11])) == \
           ("150020^MDC_PRESS_BLD_NONINV^MDC", "", "X")
    assert [(str(rows[f"1.0.1.{i}"][3]).split("^")[0], str(rows[f"1.0.1.{i}"][5])) for i in (1, 2, 3)] == \
           [("150021", "116"), ("150022", "71"), ("150023", "86")]
    assert str(rows["1.0.1.1"][6]) == "266016^MDC_DIM_MMHG^MDC^mm[Hg]^mm[Hg]^UCUM"
    assert [(str(rows[f"1.0.0.{n}"][3]), str(rows[f"1.0.0.{n}"][5])) for n in (1, 2)] == [  # before its metrics
        ("531970^MDC_ID_MODEL_MANUFACTURER^MDC", "A\\T\\D"), ("531969^MDC_ID_MODEL_NUMBER^MDC", "UA-651BLE")]
    assert str(rows["1.0.0.3"][6]) == "264864^MDC_DIM_BEAT_PER_MIN^MDC^/min^/min^UCUM"


def test_times_in_utc_with_device_fraction_and_status(messages):
    rows = obx_rows(messages[3])
    assert str(rows["1.0.0.2"][14]) == "20261128080000.25+0000"
    assert str(rows["1.0.0.2"][6]) == "268192^MDC_DIM_DEGC^MDC^Cel^Cel^UCUM"
    rows = obx_rows(messages[4])
    assert str(rows["1.0.0.2"][14]) == "20261128130000.936+0000"  # -04:00 to UTC
    rows = obx_rows(messages[5])
    invalid, validated = rows["1.0.0.1"], rows["1.0.0.2"]
    assert (str(invalid[2]), str(invalid[5]), str(invalid[11])) == ("", "", "X")
    assert (str(validated[5]), str(validated[11])) == ("98.6", "F")
    assert str(validated[6]).startswith("266560^MDC_DIM_FAHR^MDC")


def test_device_clock_when_known():
    reading = readings_of_every_type()[3]
    device_time = datetime(2026, 11, 28, 11, 58, 30, tzinfo=timezone(timedelta(hours=1)))
    reading = reading._replace(clock=DeviceClock(gateway_time=NOW, device_time=device_time))
    (message,) = render_messages([reading], GATEWAY, now=NOW)
    strict(message)
    assert check(message) == []
    rows = obx_rows(message)
    clock = rows["1.0.0.2"]  # after the system id
    assert (str(clock[2]), str(clock[3]), str(clock[5]), str(clock[14])) == \
           ("DTM", "67975^MDC_ATTR_TIME_ABS^MDC", "20261128115830+0100", "20261128120000+0000")
    assert str(rows["1.0.0.3"][3]).startswith("150364^")


def test_unit_without_mdc_code_is_a_mapping_error():
    odd = parse_reading({"device": {"system_id": "0011223344556677"}, "patient": {"system": "urn:oid:1.2", "value": "p"},
                         "metrics": [{"code": 12345, "value": 1, "unit": "{count}", "time": "2026-11-28T09:00:00Z"}]})
    with pytest.raises(MappingError, match="MDC unit code"):
        render_messages([odd], GATEWAY)
    results = render_batch([odd, readings_of_every_type()[0]], GATEWAY)
    assert isinstance(results[0], MappingError) and isinstance(results[1], tuple)


def test_escape():
    assert escape("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert escape("\x0b\x1c\x00\r\x7f\ufffe\u00e9") == "\\X0B\\\\X1C\\\\X00\\\\X0D\\\\X7F\\\\XEFBFBE\\\u00e9"
    with pytest.raises(MappingError, match="surrogate U\\+D800"):
        escape("a\ud800")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("\x0b\x1c\x00\r\n|^&~\\"), min_size=1,
               max_size=30))
def test_every_rendered_er7_passes_the_mllp_codec_and_the_checker(text):
    """Issue 10 finding 7: whatever text a reading holds, the ER7 phg renders frames and de-frames to
    itself (no raw VT/FS), passes the PCD-01 checker, and python-hl7 unescapes PID-3.1 back to the text."""
    reading = readings_of_every_type()[3]
    reading = reading._replace(patient=reading.patient._replace(value=text))
    [message] = render_messages([reading], GATEWAY, now=NOW)
    codec = MllpCodec()
    codec.receive_data(frame(message))
    assert codec.next_message() == message.encode("utf-8")
    assert check(message) == []
    parsed = hl7.parse(message)
    assert parsed.unescape(str(parsed.segment("PID")[3][0][0])) == text


@pytest.mark.parametrize("value", ["1e999999999", "-1e-999999999", "1e17", "12345678901234567", "NaN", "Infinity"])
def test_numbers_beyond_nm_are_refused_before_rendering(value):
    with pytest.raises(MappingError, match="NM"):
        number(Decimal(value))


def test_numbers_within_nm_keep_their_digits():
    assert [number(Decimal(v)) for v in ("5.20", "1E+2", "-0", "0.000001", "12345678901234.5")] == \
        ["5.20", "100", "0", "0.000001", "12345678901234.5"]


@settings(max_examples=15, deadline=None)  # hl7apy strict parsing is ~0.1 s a message
@given(st.lists(reading_docs(), min_size=1, max_size=2))
def test_any_valid_reading_renders_clean_or_is_refused_for_its_unit(docs):
    readings = [parse_reading(json.loads(json.dumps(d), parse_float=Decimal)) for d in docs]
    for result in render_batch(readings, GATEWAY, now=NOW):
        if isinstance(result, MappingError):
            assert "MDC unit code" in str(result)
            continue
        _, message = result
        strict(message)
        assert check(message) == [], message.replace("\r", "\n")


# ---------------------------------------------------------------------------------------------- checker


@pytest.mark.parametrize("name", EXAMPLES)
def test_shared_examples_parse_and_recheck_clean(name):
    text = (VECTORS / name).read_text()
    message = "\r".join(text.strip().splitlines())
    strict(message)
    assert check(text) == []
    assert check(str(hl7.parse(message))) == []  # parsed and written back by python-hl7


def _without_field(message: str, segment: str, n: int, occurrence: int = 0) -> str:
    lines = message.split("\r")
    found = [i for i, line in enumerate(lines) if line.startswith(segment + "|")][occurrence]
    fields = lines[found].split("|")
    fields[n - (1 if segment == "MSH" else 0)] = ""
    lines[found] = "|".join(fields)
    return "\r".join(lines)


BP = "\r".join((VECTORS / "ipf-pcd01-request-bp.hl7").read_text().strip().splitlines())


@pytest.mark.parametrize(("defect", "where", "text"), [
    (lambda m: _without_field(m, "MSH", 21), "MSH-21", "required"),
    (lambda m: _without_field(m, "MSH", 10), "MSH-10", "required"),
    (lambda m: _without_field(m, "MSH", 16), "MSH-16", "required"),
    (lambda m: m.replace("ORU^R01^ORU_R01", "ORU^R30^ORU_R30"), "MSH-9", "ORU^R01"),
    (lambda m: m.replace("|2.6|", "|2.5|"), "MSH-12", "2.6"),
    (lambda m: _without_field(m, "PID", 3), "PID[2]-3", "required"),
    (lambda m: _without_field(m, "PID", 5), "PID[2]-5", "required"),
    (lambda m: _without_field(m, "OBX", 11, 2), "OBX[6]-11", "status"),
    (lambda m: _without_field(m, "OBX", 4, 2), "OBX[6]-4", "sub-id missing"),
    (lambda m: m.replace("|1.0.1.2|", "|1.0.1.1|"), "OBX[7]-4", "already used"),
    (lambda m: m.replace("150021^MDC_PRESS_BLD_NONINV_SYS^MDC", "8480-6^Systolic^LN"), "OBX[6]-3", "not MDC"),
    (lambda m: m.replace("|80|266016^MDC_DIM_MMHG^MDC", "|80|mm[Hg]^mm[Hg]^UCUM"), "OBX[7]-6", "not MDC"),
    (lambda m: m.replace("|120|", "|high|"), "OBX[6]-5", "not a number"),
    (lambda m: m.replace("OBX|3|NM", "OBX|3|"), "OBX[6]-2", "value type"),
    (lambda m: m.replace("OBX|4|", "OBX|9|"), "OBX[7]-1", "set id"),
    (lambda m: m.replace("|1.0.1.3|", "|1.0.x|"), "OBX[8]-4", "dotted"),
    (lambda m: "\r".join(line for line in m.split("\r") if not line.startswith("OBR")), "message", "no OBR"),
])
def test_checker_finds_each_defect(defect, where, text):
    assert check(BP) == []
    problems = check(defect(BP))
    assert any(p.where == where and text in p.message for p in problems), problems


def test_checker_finds_na_defect_and_survives_junk():
    oximeter = (VECTORS / "ipf-continua-wan-oximeter.hl7").read_text().replace("^24^", "^x^")
    assert [p.where for p in check(oximeter)] == ["OBX[6]-5"]
    assert check("PID|1") and check("") and check("MSH") and check("MSH|^~\\&")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_check_clean_file_and_strict(tmp_path):
    path = tmp_path / "two.hl7"
    path.write_text("\n".join(m.replace("\r", "\n") for m in render_messages(readings_of_every_type()[:2], GATEWAY)))
    result = CliRunner().invoke(hl7_group, ["check", "--strict", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.count(": OK") == 2


def test_cli_check_reports_defects(tmp_path):
    path = tmp_path / "bad.hl7"
    path.write_text(_without_field(BP, "MSH", 21).replace("|1.0.1.2|", "|1.0.1.1|"))
    result = CliRunner().invoke(hl7_group, ["check", str(path)])
    assert result.exit_code == 1
    assert "MSH-21: required field missing" in result.output and "already used" in result.output


def test_cli_check_shared_examples():
    for name in EXAMPLES:
        result = CliRunner().invoke(hl7_group, ["check", "--strict", str(VECTORS / name)])
        assert result.exit_code == 0, result.output


def test_mdc_unit_table_covers_every_known_unit():
    units = {u for m in mdc.MEASUREMENTS.values() for u in m.units}
    assert units <= set(mdc.UNITS_MDC)
