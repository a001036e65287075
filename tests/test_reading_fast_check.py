"""The fast checks of issue 16 may leave a document to the full check, never accept what it refuses:
model.plainly_valid (reading.schema.json checked directly, sparing most documents the JSON Schema validator),
model._plainly_bounded (the bounds in one pass, sparing most documents the field-by-field walk) and
model._plainly_canonical (a stored reading's text read at once when the text shows it within the bounds)."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phg.errors import ReadingError
from phg.model import (
    _check_fields,
    _plainly_bounded,
    _plainly_canonical,
    _validator,
    check_bounds,
    loads,
    parse_reading,
    plainly_valid,
)
from test_fhir_mapping import reading_docs

ODD_VALUES = st.sampled_from([
    None, True, False, 0, -1, 7, 2**32 - 1, 2**32, Decimal("1.5"), Decimal("1.0"), Decimal("-1e146"), Decimal("1e145"),
    "", " ", "x", " x", "x ", "a  b", "a b", "5.20", "-0", "1e1234", "1E+2", "01", "1.", ".5", "+7",
    "00601900010E9234", "00:60:19:00:01:0E:92:34", "B0:49:5F:00:10:71", "B0495F001071", "absolute", "relative",
    "glucose", "invalid", "2026-11-28T09:00:00+01:00", "local", "utc", "base-offset", "ticks", "device", "gateway",
    [], [1], ["a", "a"], ["a", "b"], {}, {"code": 1}, {"type": "x"},
])
KEYS = st.sampled_from(["device", "patient", "metrics", "clock", "system_id", "bt_address", "manufacturer",
                        "specializations", "code", "version", "system", "value", "type", "unit", "time", "status",
                        "components", "gateway_time", "device_time", "sync", "time_kind", "offset_from", "ticks",
                        "tick_rate", "other"])


def containers(doc: Any) -> list[Any]:
    found = [doc]
    for child in (doc.values() if isinstance(doc, dict) else doc if isinstance(doc, list) else ()):
        found += containers(child)
    return [c for c in found if isinstance(c, dict | list)]


@st.composite
def mutated(draw):
    doc = copy.deepcopy(draw(reading_docs()))
    if draw(st.booleans()):
        doc["clock"] = {"gateway_time": "2026-11-28T09:00:00Z", "device_time": None, "type": "absolute", "sync": 532224}
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(containers(doc)))
        if isinstance(target, list):
            if target and draw(st.booleans()):
                target[draw(st.integers(0, len(target) - 1))] = copy.deepcopy(draw(ODD_VALUES))
            else:
                target.append(copy.deepcopy(draw(ODD_VALUES)))
        elif target and draw(st.booleans()):
            del target[draw(st.sampled_from(sorted(target)))]
        else:
            target[draw(KEYS)] = copy.deepcopy(draw(ODD_VALUES))
    return doc


@settings(max_examples=1500, deadline=None)
@given(mutated())
def test_plainly_valid_never_accepts_what_the_schema_refuses(doc):
    try:
        check_bounds(doc)
    except ReadingError:
        return  # refused before either check runs
    if plainly_valid(doc):
        assert not list(_validator().iter_errors(doc)), doc


@settings(max_examples=200, deadline=None)
@given(reading_docs())
def test_plainly_valid_accepts_valid_documents(doc):
    assert plainly_valid(doc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**19, 10**19) | st.text(max_size=30) | st.decimals(allow_nan=True)
    | st.floats() | st.sampled_from(["x" * 1024, "y" * 1025]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=30)


@settings(max_examples=1000, deadline=None)
@given(json_values | reading_docs())
def test_plainly_bounded_accepts_only_what_the_field_walk_accepts(doc):
    if _plainly_bounded(doc):
        _check_fields(doc)


@pytest.mark.parametrize("doc", [
    {"a": [[[[[[[[]]]]]]]]},  # 9 levels
    {"a": "x" * 1025}, {"x" * 1025: 1}, {"a": "x\x01"}, {"a\ud800": 1}, {"a": 10**18}, {"a": Decimal("NaN")},
    {"a": Decimal("1E+128")}, {"a": 1.5}, {"a": ["x" * 1000] * 1000},
])
def test_plainly_bounded_leaves_every_bound_to_the_field_walk(doc):
    assert not _plainly_bounded(doc)


def test_plainly_bounded_takes_the_deepest_and_longest_allowed():
    assert _plainly_bounded({"a": [[[[[[["x" * 1024, 10**18 - 1, Decimal("-1.5"), None, True]]]]]]]})


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 == True == Decimal(1) for ==)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    return a == b


def texts_of(value: Any) -> st.SearchStrategy[str]:
    """JSON texts of `value` as phg writes them and as others might (spaces, \\u escapes)."""
    return st.sampled_from([
        json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
        json.dumps(value, default=str), json.dumps(value, default=str, ensure_ascii=False, indent=1)])


@settings(max_examples=1500, deadline=None)
@given((json_values | reading_docs() | mutated()).flatmap(texts_of))
def test_plainly_canonical_reads_only_what_loads_reads_alike_within_the_bounds(text):
    doc = _plainly_canonical(text)
    if doc is not None:
        assert same(doc, loads(text)), text
        check_bounds(doc)


@settings(max_examples=200, deadline=None)
@given(reading_docs())
def test_plainly_canonical_reads_the_outbox_texts(doc):
    text = parse_reading(doc).to_json()
    if "\\" not in text:  # an escape (a quote or backslash in a string, a control character) takes the long way
        assert same(_plainly_canonical(text), loads(text))


@pytest.mark.parametrize("text", [
    '{"a":[[[[[[[[]]]]]]]]}', '{"a":{"b":{"c":{"d":{}}}}}',  # 9 levels; 5 dicts (each pass removes one level of each)
    json.dumps({"a": "x" * 1025}), json.dumps({"x" * 1025: 1}), '{"a":"x\\u0001"}', '{"a":"q\\"q"}', '{"a":"\x7f"}',
    '{"a":1000000000000000000}', '{"a":1.5}', '{"a":1e5}', '{"a":NaN}', '{"a":true}', "[" + '"x",' * 500_000 + "1]",
    '{"a":[}', '"\ud800"',
])
def test_plainly_canonical_leaves_the_rest_to_loads_and_check_bounds(text):
    assert _plainly_canonical(text) is None


def test_plainly_canonical_takes_the_deepest_and_longest_allowed():
    text = json.dumps({"a": [{"b": [{"c": ["x" * 1024, 10**18 - 1, -5, None]}]}]}, separators=(",", ":"))
    assert same(_plainly_canonical(text), loads(text))
