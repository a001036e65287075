"""The two fast checks of issue 16 may leave a document to the full check, never accept what it refuses:
model.plainly_valid (reading.schema.json checked directly, sparing most documents the JSON Schema validator)
and model._plain_canonical (a stored reading's bounds read off its text, sparing the per-field walk)."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phg.errors import ReadingError
from phg.model import _plain_canonical, _validator, check_bounds, loads, parse_reading, plainly_valid
from test_fhir_mapping import reading_docs

ODD_VALUES = st.sampled_from([
    None, True, False, 0, -1, 7, 2**32 - 1, 2**32, Decimal("1.5"), Decimal("1.0"), Decimal("-1e146"), Decimal("1e145"),
    "", " ", "x", " x", "x ", "a  b", "a b", "5.20", "-0", "1e1234", "1E+2", "01", "1.", ".5", "+7",
    "00601900010E9234", "00:60:19:00:01:0E:92:34", "B0:49:5F:00:10:71", "B0495F001071", "absolute", "relative",
    "glucose", "invalid", "2026-11-28T09:00:00+01:00", [], [1], ["a", "a"], ["a", "b"], {}, {"code": 1}, {"type": "x"},
])
KEYS = st.sampled_from(["device", "patient", "metrics", "clock", "system_id", "bt_address", "manufacturer",
                        "specializations", "code", "version", "system", "value", "type", "unit", "time", "status",
                        "components", "gateway_time", "device_time", "sync", "other"])


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
                target[draw(st.integers(0, len(target) - 1))] = draw(ODD_VALUES)
            else:
                target.append(draw(ODD_VALUES))
        elif target and draw(st.booleans()):
            del target[draw(st.sampled_from(sorted(target)))]
        else:
            target[draw(KEYS)] = draw(ODD_VALUES)
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


def insertions() -> st.SearchStrategy[str]:
    return st.sampled_from(['"', "\\", "\\n", "\\u0000", "\x01", "\x85", "\ud800", "[", "]", "{", "}", "[[[[[[[[[",
                            "1" * 19, "-" + "9" * 18, "1.5", "1e5", "NaN", "-Infinity", "x" * 1025, ",", ":", " "])


@settings(max_examples=1000, deadline=None)
@given(st.lists(reading_docs(), min_size=1, max_size=1),
       st.lists(st.tuples(st.floats(0, 1), insertions()), max_size=3))
def test_plain_canonical_reads_only_what_check_bounds_accepts(docs, edits):
    """A stored text the fast path reads is the document `loads` reads, and within every bound."""
    text = parse_reading(docs[0]).to_json()
    for where, piece in edits:
        at = int(where * len(text))
        text = text[:at] + piece + text[at:]
    found = _plain_canonical(text)
    if found is not None:
        assert found == loads(text)
        check_bounds(found)


@pytest.mark.parametrize("text", [
    '{"a":' + "[" * 8 + "]" * 8 + "}",  # 9 levels
    '{"a":"' + "x" * 1025 + '"}',
    '{"a":"x\\u0001"}', '{"a":"\x01"}', '{"a":1234567890123456789}', '{"a":1.5}', '{"a":NaN}', '{"a":"\\\\"}',
])
def test_plain_canonical_leaves_every_bound_to_the_full_check(text):
    assert _plain_canonical(text) is None


def test_plain_canonical_reads_the_deepest_and_longest_allowed():
    text = '{"a":' + "[" * 7 + '"' + "x" * 1024 + '",' + "9" * 18 + "]" * 7 + "}"
    assert _plain_canonical(text) == json.loads(text)
