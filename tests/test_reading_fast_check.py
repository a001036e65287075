"""model.plainly_valid, the direct check of reading.schema.json that spares most documents the JSON Schema
validator (issue 16): it may leave a document to the validator, but never accepts one the schema refuses."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from phg.errors import ReadingError
from phg.model import _validator, check_bounds, plainly_valid
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
