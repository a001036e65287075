"""The option types every command shares (phg.cli.options): one patient form, one UTC offset form."""

from __future__ import annotations

from datetime import timedelta

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phg.cli.options import PATIENT, UTC_OFFSET, parse_utc_offset
from phg.model import PatientRef


@given(st.text(max_size=40))
def test_any_offset_text_is_an_offset_within_14_hours_or_a_value_error(text: str) -> None:
    try:
        offset = parse_utc_offset(text)
    except ValueError as exc:
        assert "is not a UTC offset such as +01:00" in str(exc)
    else:
        assert abs(offset) <= timedelta(hours=14, minutes=59)


@given(st.sampled_from("+-"), st.integers(0, 14), st.integers(0, 59), st.booleans())
def test_offsets_with_and_without_colon(sign: str, hours: int, minutes: int, colon: bool) -> None:
    offset = parse_utc_offset(f"{sign}{hours:02}{':' if colon else ''}{minutes:02}")
    assert offset == (-1 if sign == "-" else 1) * timedelta(hours=hours, minutes=minutes)


@given(st.text(max_size=40))
def test_any_patient_text_is_system_and_value_or_a_usage_error(text: str) -> None:
    try:
        patient = PATIENT.convert(text, None, None)
    except click.BadParameter as exc:
        assert "give SYSTEM|VALUE" in str(exc) or "give printable text" in str(exc)
    else:
        assert f"{patient.system}|{patient.value}" == text and patient.system and patient.value
        assert text.isprintable()


def test_the_system_may_hold_bars_the_value_is_after_the_last() -> None:
    assert PATIENT.convert("urn:x|a|pt-1", None, None) == PatientRef("urn:x|a", "pt-1")
    with pytest.raises(click.BadParameter, match=r"U\+000B"):
        PATIENT.convert("urn:x|pt\x0b1", None, None)
    with pytest.raises(click.BadParameter):
        UTC_OFFSET.convert("+15:00", None, None)


def test_only_ascii_digits_make_an_offset() -> None:
    with pytest.raises(ValueError):
        parse_utc_offset("+\u0661\u0662:00")  # Arabic-Indic digits: \d would have taken them
