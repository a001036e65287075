"""IEEE 11073-20601 MDER codec against the shared samples, plus fuzzing."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phg.sources.ieee11073 import nomenclature as nom
from phg.sources.ieee11073.apdu import (
    ApduError,
    EventReport,
    Prst,
    decode,
    decode_attribute,
    decode_config_report,
    decode_scan_report,
    encode,
)
from phg.sources.ieee11073.configs import STANDARD, Configuration, standard
from phg.sources.ieee11073.describe import describe, describe_hex
from phg.sources.ieee11073.mder import AbsoluteTime, decode_float, decode_sfloat, number
from shared_vectors import VECTORS

SAMPLES_FILE = VECTORS / "ieee11073" / "samples.json"
SAMPLES = {s["id"]: s for s in json.loads(SAMPLES_FILE.read_text())}
MALFORMED = [i for i, s in SAMPLES.items() if "decode_error" in s["decoded"] or not s["decoded"].get("length_ok", True)]
WELL_FORMED = [i for i in SAMPLES if i not in MALFORMED]
NAMES = {v: k for table in (nom.ATTRIBUTES, nom.CLASSES, nom.EVENTS, nom.ACTIONS) for k, v in table.items()}


def config_for(sample_id: str | None) -> Configuration | None:
    if not sample_id:
        return None
    apdu = decode(bytes.fromhex(SAMPLES[sample_id]["hex"]))
    return Configuration.from_report(decode_config_report(apdu.message.info))


def differences(expected, actual, path="") -> list[str]:
    """Where `actual` disagrees with the documented decoding. The sample decoder names fewer codes than
    phg does (an attribute id may appear as a number there, a name here) and leaves some names null."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: {expected!r} != {actual!r}"]
        return [d for k in expected for d in (differences(expected[k], actual[k], f"{path}.{k}") if k in actual
                                               else [f"{path}.{k} missing"])]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: {expected!r} != {actual!r}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in differences(e, a, f"{path}[{i}]")]
    if expected is None or expected == actual:
        return []
    if isinstance(expected, int) and NAMES.get(actual) == expected:
        return []
    return [f"{path}: {expected!r} != {actual!r}"]


@pytest.mark.parametrize("sample_id", WELL_FORMED)
def test_sample_decodes_as_documented_and_round_trips(sample_id):
    sample = SAMPLES[sample_id]
    data = bytes.fromhex(sample["hex"])
    assert len(data) == sample["byte_length"]
    assert differences(sample["decoded"], describe(data, config_for(sample.get("config_ref")))) == []
    assert encode(decode(data)) == data


@pytest.mark.parametrize("sample_id", MALFORMED)
def test_malformed_sample_is_refused_with_a_reason(sample_id):
    with pytest.raises(ApduError, match="length field says .* but .* follow"):
        decode(bytes.fromhex(SAMPLES[sample_id]["hex"]))


def test_malformed_inner_length_is_named():
    # the corrected 0x0190 config report with one attribute-list length off by two
    data = bytearray.fromhex(SAMPLES["derived-H221_ID_0190-corrected"]["hex"])
    at = data.index(bytes.fromhex("00040024"))  # object 1: 4 attributes, 36 bytes
    data[at + 3] = 0x26
    apdu = decode(bytes(data))  # the outer APDU is still consistent; the event-info is not
    with pytest.raises(ApduError, match="declares|unexpected|truncated"):
        decode_config_report(apdu.message.info)


def test_standard_configurations_decode_their_reports():
    for config_id, (profile, report) in STANDARD.items():
        config = standard(config_id)
        assert config.profile == profile and set(config.objects) == {o.handle for o in report.objects}
        assert all(o.type and o.unit and o.value_map for o in config.objects.values())
    bp = standard(0x02BC).objects[1]
    assert bp.components == (150021, 150022, 150023)


def test_fixed_report_values_keep_precision():
    apdu = decode(bytes.fromhex(SAMPLES["ant-H241_ID_02BC"]["hex"]))
    scan = decode_scan_report(apdu.message.event_type, apdu.message.info)
    cfg = config_for("derived-H221_ID_02BC-corrected")
    from phg.sources.ieee11073.apdu import decode_fixed_values

    values = dict(decode_fixed_values(scan.persons[0].observations[1].data, cfg.objects[2].value_map))
    assert values[nom.ATTR_NU_VAL_OBS_BASIC].decimal == Decimal("60.0")
    assert str(values[nom.ATTR_NU_VAL_OBS_BASIC].decimal) == "60.0"


@pytest.mark.parametrize(("raw", "text"), [(0xF258, "60.0"), (0x0062, "98"), (0x07FF, "NaN"), (0x0800, "NRes"),
                                           (0x07FE, "+INF"), (0x0802, "-INF"), (0xFFFF, "-0.1")])
def test_sfloat(raw, text):
    n = decode_sfloat(raw)
    assert n.text == text
    if not n.special:
        assert n.encode() == raw.to_bytes(2, "big")


def test_float_and_number_round_trip():
    assert decode_float(0xFB387520).text == "37.00000"
    assert decode_float(0x007FFFFF).special == "NaN"
    for text in ("76.20", "-3.5", "0", "120", "0.001"):
        n = number(Decimal(text), 4)
        assert decode_float(int.from_bytes(n.encode(), "big")).decimal == Decimal(text)


def test_absolute_time_bcd():
    t = AbsoluteTime(bytes.fromhex("2007020112050000"))
    assert t.iso == "2007-02-01T12:05:00.00"
    with pytest.raises(ApduError, match="not BCD"):
        decode_attribute(nom.ATTR_TIME_STAMP_ABS, bytes.fromhex("20070201120A0000"))
    assert decode_attribute(nom.ATTR_TIME_STAMP_ABS, b"\xff" * 8).unset


def test_base_offset_time():
    raw = (1_000_000_000).to_bytes(4, "big") + (32768).to_bytes(2, "big") + (60).to_bytes(2, "big", signed=True)
    bo = decode_attribute(nom.ATTR_TIME_STAMP_BO, raw)
    assert bo.datetime.isoformat() == "2001-09-09T02:46:40.500000+01:00"
    assert bo.encode() == raw


def test_describe_hex_refuses_garbage():
    with pytest.raises(ApduError, match="hexadecimal"):
        describe_hex("zz")
    with pytest.raises(ApduError, match="unknown APDU choice"):
        describe_hex("e8000000")


# ------------------------------------------------------------------------------------ fuzzing

SEEDS = [bytes.fromhex(s["hex"]) for s in SAMPLES.values()]


def _check(data: bytes) -> None:
    try:
        apdu = decode(data)
    except ApduError as exc:
        assert str(exc)
        return
    assert encode(apdu) == data
    if isinstance(apdu, Prst) and isinstance(apdu.message, EventReport):
        m = apdu.message
        try:
            if m.event_type == nom.NOTI_CONFIG:
                Configuration.from_report(decode_config_report(m.info))
            elif m.event_type in nom.SCAN_LAYOUT:
                decode_scan_report(m.event_type, m.info)
        except ApduError:
            pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data):
    _check(data)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SEEDS), st.data())
def test_fuzz_mutated_samples(seed, data):
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    _check(bytes(buf[:cut]) if data.draw(st.booleans()) else bytes(buf))
    try:
        describe(bytes(buf))
    except ApduError:
        pass


def test_scanner_handle_map_and_grouped_report_are_described():
    cfg = config_for("ant-po-config-scanner")
    assert cfg.objects[55].handle_map == ((1, ((2636, 2), (2448, 8))), (10, ((2636, 2), (2448, 8))))
    assert cfg.objects[40].handle_map == ((1, ((2636, 2), (2375, 2), (2448, 8))), (10, ((2636, 2),)), (3, ((2636, 2),)))
    # signove/antidote tests/resources/apdu/pulse_oximeter/description, "Buf Scan Report Grouped"
    data = bytes.fromhex("e700002c002a123901000024" "0028ffffffff0d2a001a" "f000000100010012"
                         "0010" "00620000" "2008070312100000" "0049" "0062")
    (scan,) = describe(data, cfg)["event-info"]["groups"][0]["scans"]
    assert [(o["obj-handle"], [v["value"].get("text") if isinstance(v["value"], dict) else v["value"]
                               for v in o["values"]]) for o in scan["obs"]] == [
        (1, ["98", "0x0000", None]), (10, ["73"]), (3, ["98"])]
    assert describe(data)["event-info"]["groups"][0]["scans"] == [{"raw": scan["raw"]}]  # no config
