"""Bounds at intake (issue 10, findings 2 and 4): numbers, control characters, depth and size, held by
the JSON Schema, by `parse_reading` and by the stored-reading re-parse alike; malformed files refused
alone. The `phg send` side is in test_cli.py."""

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phg.errors import ReadingError
from phg.model import MAX_INPUT_BYTES, from_canonical_json, loads, parse_documents, parse_reading

DOC = {"device": {"system_id": "0011223344556677", "manufacturer": "Acme", "model": "Oxi 1", "serial": "A1",
                  "firmware": "1.2", "specializations": [{"code": 528388, "version": 1}]},
       "patient": {"system": "urn:oid:1.2.3.4", "value": "pt-001"},
       "metrics": [{"type": "spo2", "value": "97", "time": "2026-11-28T09:00:00Z", "status": ["questionable"]},
                   {"code": 150020, "unit": "mm[Hg]", "time": "2026-11-28T09:00:00Z",
                    "components": [{"code": 150021, "value": "120"}, {"code": 150022, "value": "80"},
                                   {"code": 150023, "value": "93"}]}],
       "clock": {"gateway_time": "2026-11-28T09:05:00Z", "device_time": "2026-11-28T09:04:58Z"}}


def doc_with(path: str, value) -> dict:
    """DOC with the field at the dotted `path` (list indexes as numbers) set to value."""
    doc = json.loads(json.dumps(DOC))
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = doc
    for part in parents:
        target = target[part]
    target[last] = value
    return doc


def refusal(doc, source="r.json") -> ReadingError:
    with pytest.raises(ReadingError) as info:
        parse_reading(doc, source)
    return info.value


def schema_errors(doc) -> list:
    from phg.model import _validator

    return list(_validator().iter_errors(doc))


@pytest.mark.parametrize("value", ["123456789012345678", "-1.23456789012345678", "1E-128", "1E+127",
                                   "0.000", Decimal("9.99999999999999999E+144"), 97, Decimal("2.00")])
def test_values_within_bounds_are_kept_exactly(value):
    reading = parse_reading(doc_with("metrics.0.value", value))
    assert reading.metrics[0].value == Decimal(str(value))
    assert from_canonical_json(reading.to_json(), "item 1") == reading


@pytest.mark.parametrize("value, words", [
    ("1234567890123456789", "19 significant digits are too many"),
    ("1.000000000000000000", "19 significant digits are too many"),
    (Decimal("1" * 5000), "5,000 significant digits are too many"),
    ("1E-129", "the exponent is out of range"),
    ("1E+128", "the exponent is out of range"),
    ("1e999999999", "the exponent is out of range"),
    (Decimal("-1E+999999999"), "the exponent is out of range"),
    (1e300, "the exponent is out of range"),
    (float("nan"), "NaN is not a number: JSON has no NaN or Infinity"),
    (float("-inf"), "-Infinity is not a number"),
    (Decimal("Infinity"), "Infinity is not a number"),
])
def test_values_beyond_bounds_are_refused_naming_the_field(value, words):
    error = refusal(doc_with("metrics.0.value", value))
    assert (error.where, error.source) == ("metrics[0].value", "r.json") and words in error.why
    component = refusal(doc_with("metrics.1.components.2.value", value))
    assert component.where == "metrics[1].components[2].value" and words in component.why


STRING_FIELDS = ["device.system_id", "device.manufacturer", "device.model", "device.serial", "device.firmware",
                 "patient.system", "patient.value", "metrics.0.type", "metrics.0.time", "metrics.0.value",
                 "metrics.0.status.0", "metrics.1.unit", "clock.gateway_time", "clock.device_time"]


@pytest.mark.parametrize("path", STRING_FIELDS)
@pytest.mark.parametrize("char", ["\x00", "\t", "\n", "\x0b", "\x1f", "\x7f", "\x85", "\x9f", "\ud800", "\ufffe"])
def test_control_characters_are_refused_in_every_field(path, char):
    where = path.replace(".0", "[0]").replace(".1", "[1]")
    valid = DOC
    for part in path.split("."):
        valid = valid[int(part) if part.isdigit() else part]
    doc = doc_with(path, valid[:2] + char + valid[2:])
    error = refusal(doc)
    assert error.where == where
    assert f"the character U+{ord(char):04X} at position 2" in error.why
    assert schema_errors(doc), "the JSON Schema alone refuses it too"
    with pytest.raises(ReadingError) as stored:
        from_canonical_json(json.dumps(doc), "item 7")
    assert (stored.value.source, stored.value.where) == ("item 7", where)


def test_the_schema_alone_refuses_the_issue_cases_and_accepts_valid_documents():
    assert schema_errors(DOC) == []
    assert schema_errors(doc_with("patient.value", "p\x0b1"))
    assert schema_errors(doc_with("metrics.0.value", "1e999999999"))
    assert schema_errors(doc_with("metrics.0.value", Decimal("1e999999999")))
    assert schema_errors(doc_with("device.manufacturer", "x" * 1025))
    assert schema_errors(doc_with("metrics", DOC["metrics"][:1] * 4097))


def test_keys_lengths_depth_and_size_are_bounded():
    assert refusal(doc_with("device.mod\x0bel", "x")).why.startswith("a key holds the character U+000B")
    long = refusal(doc_with("device.model", "x" * 1025))
    assert (long.where, long.why) == ("device.model", "the text is 1,025 characters long; at most 1024")
    deep = refusal(doc_with("metrics.0.value", [[[[[[["x"]]]]]]]))
    assert (deep.where, deep.why) == ("metrics[0].value[0][0][0][0][0]", "nested deeper than 8 levels")
    large = refusal(doc_with("metrics", [{"x": "y" * 1000}] * 1000))
    assert (large.where, large.why) == ("(document)", "larger than 1,000,000 characters of strings and values")
    assert refusal({"device": {1, 2}}).why == "a set is not a JSON value"
    quoted = refusal([["x" * 1000] * 30]).why  # a schema message quoting a large instance is cut short
    assert len(quoted) < 200 and quoted.endswith("is not of type 'object'")


def test_a_stored_reading_is_held_to_the_same_bounds():
    """The outbox re-parse skips the schema: its own checks refuse what a source stored unbounded."""
    from phg.model import Device, PatientRef, Reading

    reading = parse_reading(DOC)
    for stored, where in [(reading.to_json().replace("pt-001", "pt\\u000b001"), "patient.value"),
                          (reading.to_json().replace('"97"', '"1e999999999"'), "metrics[0].value"),
                          (reading.to_json().replace('"97"', "NaN"), "metrics[0].value"),
                          (json.dumps(Reading(Device(system_id="0011223344556677", manufacturer="Acme\x00"),
                                              PatientRef("urn:oid:1.2", "p"), reading.metrics).to_document()),
                           "device.manufacturer"),
                          ("[" * 100_000 + "]" * 100_000, "(document)")]:
        with pytest.raises(ReadingError) as info:
            from_canonical_json(stored, "outbox item 3")
        assert (info.value.source, info.value.where) == ("outbox item 3", where)


def test_malformed_json_refuses_its_file_or_line_only():
    one = json.dumps(DOC)
    assert parse_documents(one.encode(), "f")[1] == []
    readings, errors = parse_documents(f"{one}\n[1, {{\n{one}\r\n\n{'[' * 50_000}\n{one}\n".encode(), "f.jsonl")
    assert len(readings) == 3
    assert [str(e) for e in errors] == [
        "f.jsonl: line 2 column 6: not JSON: Expecting property name enclosed in double quotes",
        "f.jsonl: line 5: not readable: nested far deeper than 8 levels"]
    broken = parse_documents(b'{\n  "device": {\n  nope\n}\n', "f.json")
    assert ([], ["f.json: line 3 column 3: not JSON: Expecting property name enclosed in double quotes"]) == (
        broken[0], [str(e) for e in broken[1]])
    bad = json.dumps(doc_with("patient.value", "p\x0b"))
    array = parse_documents(f"[{one}, {bad}]", "a.json")
    assert len(array[0]) == 1 and str(array[1][0]).startswith("a.json[1]: patient.value: ")


@pytest.mark.parametrize("data, words", [
    (b"\xef\xbb\xbf" + json.dumps(DOC).encode(), None),  # a UTF-8 BOM is ignored (RFC 8259 section 8.1)
    (b'{"a": "\xff"}', "f: (file): not UTF-8 at byte 7"),
    (b" " * (MAX_INPUT_BYTES + 1), "f: (file): larger than 16 MiB: split it"),
    (b"", "f: line 1 column 1: not JSON: Expecting value"),
])
def test_files_are_utf8_and_bounded(data, words):
    readings, errors = parse_documents(data, "f")
    assert [str(e) for e in errors] == ([words] if words else [])
    assert len(readings) == (0 if words else 1)


def test_huge_json_numbers_are_read_without_error_and_refused_by_field():
    assert loads("1" * 5000) == Decimal("1" * 5000)
    assert loads("[4294967295, 2.50]") == [4294967295, Decimal("2.50")]
    assert type(loads("4294967295")) is int  # codes stay ints for the schema
    error = refusal(loads(with_token("1e-99999999999999999999999")))
    assert (error.where, error.why.split(":")[0]) == ("metrics[0].value", "the exponent is out of range")


def with_token(token: str) -> str:
    return json.dumps(doc_with("metrics.0.value", "@")).replace('"@"', token)


hostile_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
                   | st.decimals() | st.sampled_from(["97", "1e999999999", "p\x0b1", "\ud800", "2026-11-28T09:00:00Z"]))
hostile_documents = st.recursive(
    hostile_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["device", "patient", "metrics", "clock", "code", "type", "value", "unit", "time", "status", "components",
         "system_id", "bt_address", "system", "manufacturer", "gateway_time", "device_time", "sync"]), inner, max_size=5),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(hostile_documents)
def test_fuzz_documents_give_a_reading_or_a_reading_error(doc):
    for document in (doc, {**DOC, "metrics": [doc]}, doc_with("metrics.1.components", [doc])):
        try:
            reading = parse_reading(document)
        except ReadingError as exc:
            assert exc.where and exc.why
            continue
        assert from_canonical_json(reading.to_json(), "item") == reading  # what intake accepts, the outbox re-reads
        reading.key  # noqa: B018 - UTF-8 encodable


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda d, cut: json.dumps(d, default=str).encode()[:cut],
                                            hostile_documents, st.integers(0, 400)))
def test_fuzz_bytes_never_raise(data):
    readings, errors = parse_documents(data, "f")
    assert all(isinstance(e, ReadingError) and str(e).startswith("f") for e in errors)
    try:
        from_canonical_json(data.decode("utf-8", "surrogateescape"), "item")
    except ReadingError as exc:
        assert exc.source == "item"


@pytest.mark.parametrize("text", ["NaN", "-Infinity", "sNaN", "inf", "1_000", " 1.5", "1e5", "1E-129", "-0.5",
                                  "123456789012345678", "1234567890123456789", "0.00000000000000001", "9" * 18])
def test_a_value_string_is_held_to_the_bounds_on_the_short_way_too(text):
    """model._decimal takes a short string without exponent as within the bounds once finite: the same verdict
    as check_number's."""
    from phg.model import _decimal, check_number

    try:
        check_number(Decimal(text), "v")
    except ReadingError as exc:
        with pytest.raises(ReadingError) as info:
            _decimal(text, "v")
        assert info.value.why == exc.why
    else:
        assert _decimal(text, "v") == Decimal(text)
