"""The reading document: parsing, canonical form, and clear errors naming the field."""

import json
import re
from datetime import UTC
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phg.errors import ReadingError
from phg.model import loads, parse_documents, parse_reading, patient_fits
from test_cli import env, phg  # noqa: F401  (env: the fixture of a user without config)
from test_service_api import ctx, post  # noqa: F401  (ctx: the fixture of an API on a real outbox)

DOC = """{"device": {"system_id": "00-1C-05-FF-FE-00-78-25", "bt_address": "00:1c:05:00:78:25",
  "manufacturer": "Acme", "specializations": [{"code": 528388, "version": 1}]},
 "patient": {"system": "urn:oid:1.2.3.4", "value": "pt-001"},
 "metrics": [
  {"code": 150456, "value": "97", "unit": "%", "time": "2026-11-28T09:00:00+01:00"},
  {"code": 150020, "unit": "mm[Hg]", "time": "2026-11-28T09:00:00.250Z",
   "components": [{"code": 150021, "value": "120"}, {"code": 150022, "value": "80"}, {"code": 150023, "value": "93"}]},
  {"type": "glucose", "value": 5.60, "unit": "mmol/L", "time": "2026-11-28T09:00:00-05:00", "status": ["questionable"]}]}"""


def reading():
    return parse_reading(loads(DOC))


def test_identity_normalised():
    r = reading()
    assert r.device.system_id == "001C05FFFE007825"
    assert r.device.bt_address == "00-1C-05-00-78-25"
    assert r.device.identity == "001C05FFFE007825"


def test_precision_kept_from_numbers_and_strings():
    r = reading()
    assert str(r.metrics[2].value) == "5.60"  # a JSON number keeps its digits
    assert r.metrics[0].value == Decimal("97")
    assert r.metrics[1].components[0].unit == "mm[Hg]"  # inherited from the compound metric


def test_time_keeps_offset_and_resolution():
    r = reading()
    assert r.metrics[0].time.utcoffset().total_seconds() == 3600
    assert r.metrics[0].time_digits == 0
    assert r.metrics[1].time_digits == 3


def test_alias_becomes_code_and_canonical_round_trip():
    r = reading()
    assert r.metrics[2].code == 160184
    again = parse_reading(json.loads(r.to_json()))
    assert again == r
    assert again.key == r.key
    assert '"time":"2026-11-28T09:00:00.250+00:00"' in r.to_json()


def test_default_unit_from_table():
    doc = json.loads(DOC)
    doc["metrics"] = [{"type": "spo2", "value": "98", "time": "2026-11-28T09:00:00Z"}]
    assert parse_reading(doc).metrics[0].unit == "%"


@pytest.mark.parametrize("change, where, words", [
    (lambda d: d["device"].clear(), "device", "system_id or bt_address"),
    (lambda d: d["device"].update(system_id="XYZ"), "device.system_id", "format"),
    (lambda d: d["metrics"][0].update(time="2026-11-28T09:00:00"), "metrics[0].time", "UTC offset"),
    (lambda d: d["metrics"][0].update(time="2026-02-30T09:00:00Z"), "metrics[0].time", "not a valid"),
    (lambda d: d["metrics"][0].update(value="ninety"), "metrics[0].value", "not a decimal"),
    (lambda d: d["metrics"][0].update(unit="kg"), "metrics[0].unit", "MDC_PULS_OXIM_SAT_O2"),
    (lambda d: d["metrics"][2].update(type="glucoze"), "metrics[2].type", "unknown type"),
    (lambda d: d["metrics"][2].update(status=["broken"]), "metrics[2].status", "unknown status"),
    (lambda d: d["metrics"][1].pop("components"), "metrics[1]", "needs a value"),
    (lambda d: d["metrics"][2].pop("unit"), "metrics[2].unit", "required for glucose"),
    (lambda d: d["patient"].pop("value"), "patient", "'value' is a required property"),
    (lambda d: d.update(metrics=[]), "metrics", "should be non-empty"),
    (lambda d: d["metrics"][0].update(code=1, type="spo2"), "metrics[0]", "exactly one of"),
])
def test_invalid_documents_name_field_and_reason(change, where, words):
    doc = json.loads(DOC)
    change(doc)
    with pytest.raises(ReadingError) as info:
        parse_reading(doc, "f.json")
    assert info.value.where == where
    assert words in str(info.value)
    assert str(info.value).startswith(f"f.json: {where}: ")


def test_json_lines_and_arrays():
    one = json.dumps(json.loads(DOC))
    assert [len(found) for found in parse_documents(f"[{one},{one}]", "x")] == [2, 0]
    assert [len(found) for found in parse_documents(f"{one}\n\n{one}\n", "x")] == [2, 0]
    readings, errors = parse_documents(f"{one}\n{{nope\n{one}".encode(), "x")
    assert len(readings) == 2 and [str(e) for e in errors] == [
        "x: line 2 column 2: not JSON: Expecting property name enclosed in double quotes"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.decimals(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["device", "patient", "metrics", "code", "type", "value", "unit", "time", "status", "components",
         "system_id", "bt_address", "system"]), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_any_json_gives_a_reading_or_a_reading_error(doc):
    try:
        parse_reading(doc)
    except ReadingError as exc:
        assert exc.where and exc.why


# ---------------------------------------------------------------- device clock


# Computed from DOC before the clock existed: a reading without a clock must keep its key and text.
KEY_WITHOUT_CLOCK = "2037d485389488af156250acc8d22e6f92254bfcc5cfae4b1985bd4816b4a574"
CLOCK = {"gateway_time": "2026-11-28T09:05:00.123+01:00", "device_time": "2026-11-28T09:04:58+01:00", "sync": 532224}


def test_reading_without_clock_keeps_its_key():
    r = reading()
    assert r.clock is None
    assert r.key == KEY_WITHOUT_CLOCK
    assert '"clock"' not in r.to_json()


def test_clock_round_trip():
    from datetime import datetime

    from phg.model import DeviceClock

    doc = json.loads(DOC) | {"clock": CLOCK}
    r = parse_reading(doc)
    assert r.clock == DeviceClock(gateway_time=datetime.fromisoformat(CLOCK["gateway_time"]),
                                  device_time=datetime.fromisoformat(CLOCK["device_time"]), clock_type=67975, sync=532224)
    assert r.to_document()["clock"] == CLOCK | {"type": "absolute"}
    again = parse_reading(json.loads(r.to_json()))
    assert again == r and again.key == r.key and again.to_json() == r.to_json()
    assert r.key != KEY_WITHOUT_CLOCK
    assert r.metrics == reading().metrics


def test_clock_time_fault_and_defaults_round_trip():
    doc = json.loads(DOC) | {"clock": {"gateway_time": "2026-11-28T08:05:00Z", "device_time": None}}
    r = parse_reading(doc)
    assert r.clock.device_time is None and r.clock.sync is None and r.clock.clock_type == 67975
    assert r.to_document()["clock"] == {"gateway_time": "2026-11-28T08:05:00+00:00", "device_time": None, "type": "absolute"}
    assert parse_reading(json.loads(r.to_json())) == r


def test_clock_canonical_digits_are_the_shortest_exact():
    doc = json.loads(DOC) | {"clock": {"gateway_time": "2026-11-28T09:05:00.5+01:00",
                                       "device_time": "2026-11-28T09:04:58.000001+01:00"}}
    clock = parse_reading(doc).to_document()["clock"]
    assert (clock["gateway_time"], clock["device_time"]) == ("2026-11-28T09:05:00.500+01:00",
                                                             "2026-11-28T09:04:58.000001+01:00")


@pytest.mark.parametrize("change, where, words", [
    (lambda c: c.update(type="relative"), "clock.type", "only 'absolute'"),
    (lambda c: c.update(type="sundial"), "clock.type", "is not one of"),
    (lambda c: c.update(device_time="2026-11-28T09:04:58"), "clock.device_time", "UTC offset"),
    (lambda c: c.update(gateway_time="2026-13-28T09:04:58Z"), "clock.gateway_time", "not a valid"),
    (lambda c: c.pop("device_time"), "clock", "'device_time' is a required property"),
    (lambda c: c.update(sync="ntp"), "clock.sync", "not of type 'integer'"),
    (lambda c: c.update(offset=3), "clock", "unknown field 'offset'; known here: gateway_time, device_time"),
    (lambda c: c.update(devce_time=3), "clock", "unknown field 'devce_time' (did you mean 'device_time'?)"),
])
def test_invalid_clock_names_field_and_reason(change, where, words):
    doc = json.loads(DOC) | {"clock": dict(CLOCK)}
    change(doc["clock"])
    with pytest.raises(ReadingError) as info:
        parse_reading(doc, "f.json")
    assert info.value.where == where
    assert words in str(info.value)


def test_canonical_json_round_trip_and_refusal():
    from phg.model import from_canonical_json

    r = reading()
    assert from_canonical_json(r.to_json(), "item 1") == r
    for broken in ('{"device": {}}', "[1]", '{"device": {"system_id": "X"}, "patient": {"system": "a", "value": "b"}, '
                   '"metrics": [{"code": 1, "time": "2026-11-28T09:00:00Z", "value": "x"}]}', "{nope"):
        with pytest.raises(ReadingError, match="item 1"):
            from_canonical_json(broken, "item 1")


def test_key_ignores_the_device_clock():
    from datetime import datetime

    from phg.model import DeviceClock

    r = reading()
    first = r._replace(clock=DeviceClock(gateway_time=datetime(2026, 11, 28, 9, tzinfo=UTC),
                                         device_time=datetime(2026, 11, 28, 9, 0, 5, tzinfo=UTC)))
    again = first._replace(clock=DeviceClock(gateway_time=datetime(2026, 11, 28, 10, tzinfo=UTC),
                                             device_time=datetime(2026, 11, 28, 10, 0, 5, tzinfo=UTC)))
    assert first.key == again.key == r.key
    assert first.to_json() != again.to_json()


@given(st.sampled_from(["system", "value"]), st.text(max_size=12) | st.text(st.characters(), min_size=1020, max_size=1030))
def test_patient_fits_says_what_reading_schema_says_of_a_patient(name, text):
    """phg.model.patient_fits (the API's patient parameter, phg.service.readings.parse_patient) holds a patient system
    or value to exactly what a reading document's patient may hold: the document with it is parsed or refused."""
    doc = json.loads(DOC)
    doc["patient"][name] = text
    try:
        parse_reading(doc)
    except ReadingError:
        accepted = False
    else:
        accepted = True
    assert patient_fits(name, text) == accepted


# A member name repeated (review A): json kept the last, so a reading could be stored for another patient than the
# one an app or a proxy checked (the first); RFC 8259 section 4 leaves the meaning of duplicates unpredictable.
ONE_LINE = " ".join(DOC.split())
REPEATS = {
    "(document)": ONE_LINE.replace('{"device"', '{"patient": {"system": "urn:oid:1.2.3.4", "value": "other"}, "device"', 1),
    "patient": ONE_LINE.replace('"value": "pt-001"}', '"value": "pt-001", "value": "pt-002"}'),
    "metrics[0]": ONE_LINE.replace('"value": "97",', '"value": "97", "value": "98",'),
    "metrics[1].components[0]": ONE_LINE.replace('{"code": 150021,', '{"code": 150021, "code": 150022,'),
}
REPEATED = {"(document)": "patient", "patient": "value", "metrics[0]": "value", "metrics[1].components[0]": "code"}


@pytest.mark.parametrize("where", REPEATS)
def test_a_repeated_member_name_refuses_its_document_alone(where):
    text = REPEATS[where]
    message = f"{where}: duplicate member {REPEATED[where]!r}: a name may appear once in an object"
    assert parse_documents(ONE_LINE, "f.json")[1] == []  # the document without the repeat is taken
    for data, source, taken in [(text, "f.json", 0), (f"[{ONE_LINE}, {text}, {ONE_LINE}]", "f.json[1]", 2),
                                (f"{ONE_LINE}\n{text}\n{ONE_LINE}\n", "f.json line 2", 2),
                                (f"{text}\n{ONE_LINE}\n", "f.json line 1", 1)]:  # JSON Lines known by its first line
        readings, [error] = parse_documents(data.encode(), "f.json")
        assert len(readings) == taken
        assert str(error).startswith(f"{source}: {message}"), error
        assert (error.where, error.source) == (where, source)
    with pytest.raises(ReadingError, match=f"^{re.escape(message)}"):
        loads(text)


def test_a_repeated_member_name_is_refused_by_phg_send_and_the_api(tmp_path, env, ctx):  # noqa: F811
    (tmp_path / "twice.json").write_text(REPEATS["patient"])
    result = phg("send", "--no-deliver", str(tmp_path / "twice.json"), "-", env=env, stdin=ONE_LINE)
    assert result.returncode == 1
    assert f"{tmp_path / 'twice.json'}: patient: duplicate member 'value'" in result.stderr
    assert "queued 1 reading(s)" in result.stdout
    answer = post(ctx, f"[{ONE_LINE}, {REPEATS['metrics[1].components[0]']}]".encode())
    assert [r["status"] for r in answer.json()["results"]] == ["queued", "refused"]
    assert answer.json()["results"][1]["error"].startswith("request[1]: metrics[1].components[0]: duplicate member 'code'")
    assert ctx.outbox.counts()["queued"] == 1


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                                                     max_size=4),
                           max_leaves=20)


@given(JSON_VALUES)
def test_json_without_a_repeated_name_reads_as_before(value):
    """The duplicate check (json's object_pairs_hook) changes nothing else: the values of json.loads, numbers as
    before (an int, or a Decimal keeping its digits)."""
    from phg.model import _json_number

    text = json.dumps(value)
    assert loads(text) == json.loads(text, parse_int=_json_number, parse_float=_json_number)


def test_a_repeated_name_deep_under_long_names_is_named_in_a_short_refusal():
    """Nesting and names past the bounds (refused anyway) would make the path megabytes: its ends are shown."""
    text = "".join('{"' + "k" * 5000 + '": ' for _ in range(500)) + '{"a": 1, "a": 2}' + "}" * 500
    _, [error] = parse_documents(text, "f.json")
    assert len(str(error)) < 400 and error.where.startswith("k" * 80 + " ... ") and error.where.endswith("k" * 100)
    assert "duplicate member 'a'" in str(error)
