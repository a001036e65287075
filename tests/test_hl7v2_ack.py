"""ACK parsing and classification as interface engines do it, and fuzzed answers never crash."""

from __future__ import annotations

import hl7
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phg.delivery.hl7 import classify, unanswered
from phg.delivery.outcome import Deferred, Delivered, Rejected
from phg.hl7v2.ack import AckError, parse_ack
from shared_vectors import VECTORS as SHARED

SHARED_ACK = (SHARED / "hl7v2/ipf-pcd01-ack.hl7").read_text()


def ack(code: str, control: str = "C1", err: str = "") -> str:
    return f"MSH|^~\\&|r||s||20261128090000||ACK^R01^ACK|A1|P|2.6\rMSA|{code}|{control}" + (f"\r{err}" if err else "")


def test_shared_ipf_ack_parses():
    parsed = parse_ack(SHARED_ACK)
    assert (parsed.code, parsed.control_id, parsed.message_control_id) == ("AA", "MSGID1234", "AMSGID1234")
    assert classify(SHARED_ACK, "MSGID1234") == Delivered("AA MSGID1234")


@pytest.mark.parametrize("code", ["AA", "CA"])
def test_accept_is_delivered_only_for_its_own_control_id(code):
    assert isinstance(classify(ack(code), "C1"), Delivered)
    other = classify(ack(code), "C2")
    assert isinstance(other, Deferred) and unanswered(other) and "does not match" in other.reason


@pytest.mark.parametrize("code", ["AR", "CR"])
def test_reject_is_dead_with_the_err_text(code):
    result = classify(ack(code, err="ERR||PID^1^3|204^Unknown key identifier^HL70357|E||||patient unknown"), "C1")
    assert isinstance(result, Rejected)
    assert "patient unknown (at PID.1.3)" in result.reason and code in result.reason


@pytest.mark.parametrize("code", ["AE", "CE"])
def test_error_is_retried_ae_retries_times(code):
    result = classify(ack(code, err="ERR|||207^Application internal error^HL70357|E"), "C1", ae_retries=4)
    assert result == Deferred(f"{code} for C1: Application internal error", refusals=5)
    assert not unanswered(result)


def test_msa3_and_v24_err1_texts():
    result = classify(ack("AR", err="ERR|OBX^1^5^1&102&Data type error&HL70357").replace("MSA|AR|C1", "MSA|AR|C1|bad"),
                      "C1")
    assert "bad" in result.reason and "OBX 1 5" in result.reason


@pytest.mark.parametrize("answer", [None, b"", b"garbage", "MSH|^~\\&|x\rPID|1", ack("ZZ"), "MSA|AA|C1", "MSH"])
def test_garbled_or_missing_answers_are_transient(answer):
    result = classify(answer, "C1")
    assert isinstance(result, Deferred) and unanswered(result)


def test_python_hl7_create_ack_classifies():
    message = hl7.parse("MSH|^~\\&|phg^ECDE3D4E58532D31^EUI-64||||20261128090000||ORU^R01^ORU_R01|C1|P|2.6")
    assert isinstance(classify(str(message.create_ack("AA")), "C1"), Delivered)
    assert isinstance(classify(str(message.create_ack("AR")), "C1"), Rejected)


def test_lf_line_ends_and_other_delimiters():
    assert parse_ack(ack("AA").replace("\r", "\n")).code == "AA"
    assert parse_ack("MSH#*~\\&#r##s##2026##ACK#A1#P#2.6\rMSA#AA#C9").control_id == "C9"


VALID = ack("AA", "C1", "ERR||PID^1^3|204^x^HL70357|E||||t")


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    st.builds(lambda cut, junk, at: VALID[:at] + junk + VALID[at + cut:], st.integers(0, 20),
              st.text(st.sampled_from("|^~\\&\r\nMSAERRAAC1 \x00\x0b\x1c"), max_size=10), st.integers(0, len(VALID))),
))
def test_fuzzed_ack_parsing_never_crashes(answer):
    try:
        parse_ack(answer)
    except AckError:
        pass
    result = classify(answer, "C1")
    assert isinstance(result, Delivered | Rejected | Deferred)
    if isinstance(result, Delivered):
        assert parse_ack(answer).control_id == "C1"
