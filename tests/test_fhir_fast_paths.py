"""The cheaper client path (issue 16) writes exactly the bytes of the old one: the orjson encoder, the
integer identifier timestamp, the table-driven ifNoneExist escape and the hashlib uuid5 against the
implementations they replaced (kept here, and only here, as the reference)."""

from __future__ import annotations

import json
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_FLOOR, Decimal
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phg.fhir import IG_VERSIONS, build_transaction, bundle, identifier, to_json
from phg.model import parse_reading
from test_fhir_mapping import GATEWAY, reading_docs


def old_to_json(data: dict) -> bytes:
    """phg's to_json before issue 16: the stdlib encoder with exact-digit placeholders."""
    numbers: list[str] = []
    tag = secrets.token_hex(8)

    def number(value: Any) -> str:
        if not isinstance(value, Decimal):
            raise TypeError(f"{type(value).__name__} is not JSON serializable")
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        numbers.append(str(value))
        return f"\x00{tag}:{len(numbers) - 1}"

    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=number)
    if numbers:
        text = re.sub(rf'"\\u0000{tag}:(\d+)"', lambda m: numbers[int(m.group(1))], text)
    return text.encode()


def old_timestamp_v2(time: datetime, digits: int) -> str:
    micros = Decimal((time - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)).scaleb(-6)
    seconds = micros.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_FLOOR)
    return f"{seconds}{time.utcoffset() // timedelta(minutes=15):+d}"


def old_encode(part: str) -> str:
    escaped = part.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")
    return quote(escaped, safe=":/")


@settings(max_examples=60, deadline=None)
@given(st.lists(reading_docs(), min_size=1, max_size=4), st.sampled_from(IG_VERSIONS))
def test_bundle_bytes_equal_the_old_encoder(docs, version):
    data = build_transaction([parse_reading(d) for d in docs], GATEWAY, version).bundle
    assert to_json(data) == old_to_json(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(st.characters(blacklist_categories=("Cs",)))
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=5), json_values, max_size=4))
def test_any_json_value_encodes_as_before(data):
    """Control characters, quotes, non-ASCII and every Decimal form (1E+2, -0, 0E-7) as the stdlib wrote them."""
    assert to_json(data) == old_to_json(data)


def test_nan_and_foreign_types_are_refused_as_before():
    with pytest.raises(ValueError, match="NaN is not a JSON number"):
        to_json({"entry": [{"v": Decimal("NaN")}]})
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        to_json({"v": object()})


@settings(max_examples=500, deadline=None)
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2099, 12, 31)),
       st.integers(-56, 56).map(lambda q: timezone(timedelta(minutes=15 * q))), st.integers(0, 6))
def test_identifier_timestamp_is_the_decimal_one(time, zone, digits):
    """Before 2000 too: the count rounds towards the past (-0.5 s at 1 s resolution is -1)."""
    time = time.replace(tzinfo=zone)
    assert identifier.timestamp_v2(time, digits) == old_timestamp_v2(time, digits)


@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",))) | st.text(st.characters(max_codepoint=127)))
def test_if_none_exist_escape_is_the_urllib_one(part):
    assert identifier._encode(part) == old_encode(part)


@given(st.text())
def test_uuid5_url_is_uuid5(name):
    assert bundle.uuid5_url(name) == str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def test_shared_entries_are_keyed_once_per_batch(monkeypatch):
    """50 readings of one device and patient: the Patient, PhgDevice and PhdDevice queries are written once
    each, not once per reading (issue 16: 30,000 of 48,000 entry additions were these)."""
    doc = {"device": {"system_id": "00601900010E9234"}, "patient": {"system": "urn:oid:2.999.1", "value": "p"},
           "metrics": [{"type": "glucose", "value": "5.2", "unit": "mmol/L", "time": "2026-11-28T09:00:00+01:00"}]}
    readings = [parse_reading(doc | {"metrics": [doc["metrics"][0] | {"time": f"2026-11-28T09:{n:02d}:00+01:00"}]})
                for n in range(50)]
    calls = []
    monkeypatch.setattr(bundle, "if_none_exist", lambda *part: calls.append(part) or identifier.if_none_exist(*part))
    transaction = build_transaction(readings, GATEWAY)
    assert len(calls) == len(transaction.bundle["entry"]) == 3 + 50
