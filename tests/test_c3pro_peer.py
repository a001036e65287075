"""The C3-PRO test peer (tests/c3pro_peer.py) behaves as ../shared/docs/c3pro-facts.md says C3-PRO's code
does, checked with plain httpx and `cryptography`, without phg: so that phg's tests against it prove
something. Also the iOS framework's published AES test vector, byte for byte."""

from __future__ import annotations

import base64
import json
import re
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote_plus

import httpx
import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from c3pro_peer import (
    VECTOR_CIPHERTEXT,
    VECTOR_KEY,
    VECTOR_PLAINTEXT,
    C3ProPeer,
    _read_envelope,
    aes_cbc_zero_iv_decrypt,
    aes_cbc_zero_iv_encrypt,
    lenient_b64decode,
    make_envelope,
    sha1_base64,
)

OBSERVATION = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
               "subject": {"reference": "Patient/p1"}}
UNAUTHORIZED = {"error": "unauthorized_client"}


def basic(client_id: str, secret: str) -> str:
    """RFC 6749 2.3.1: id and secret form-urlencoded, then Base64 (C3-PRO decodes them that way)."""
    return "Basic " + base64.b64encode(f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()).decode()


def token(peer: C3ProPeer) -> str:
    answer = httpx.post(f"{peer.base_url}/oauth", data={"grant_type": "client_credentials"},
                        headers={"Authorization": basic(*peer.register_client())})
    assert answer.status_code == 202
    return answer.json()["access_token"]


# ------------------------------------------------------------------------------------------- the vector


def test_ios_aes_vector_byte_for_byte():
    """I Tests/EncryptionTests.swift 22-24, 55-66: "Let's encrypt!" under "why-is-this-here", CBC, zero IV."""
    assert aes_cbc_zero_iv_encrypt(VECTOR_KEY, VECTOR_PLAINTEXT) == base64.b64decode(VECTOR_CIPHERTEXT)
    assert base64.b64encode(aes_cbc_zero_iv_encrypt(VECTOR_KEY, VECTOR_PLAINTEXT)).decode() == VECTOR_CIPHERTEXT
    assert aes_cbc_zero_iv_decrypt(VECTOR_KEY, base64.b64decode(VECTOR_CIPHERTEXT)) == VECTOR_PLAINTEXT


# ------------------------------------------------------------------------------------------- registration


def test_register_needs_the_antispam_token(c3pro_peer):
    url, body = f"{c3pro_peer.base_url}/register", {"receipt-data": "NO-APP-RECEIPT"}
    denied = {"error": "unauthorized_client", "error_description": "Antispam token not validated"}
    for headers in ({}, {"Antispam": "wrong"}, {"Authorization": f"Bearer {c3pro_peer.antispam}"}):
        answer = httpx.post(url, json=body, headers=headers)
        assert (answer.status_code, answer.json()) == (401, denied)
    assert sha1_base64("abc") == "qZk+NkcGgWq6PiVxeFDCbJzQ2J0="  # SHA-1 of "abc", Base64 (FIPS 180 example)


@pytest.mark.parametrize(("body", "status", "error"), [
    ("not json", 400, {"error": "invalid_request"}),
    ('{"sandbox": true}', 400, {"error": "invalid_request"}),
    ('{"receipt-data": 7}', 400, {"error": "invalid_request"}),
    ('{"receipt-data": "MIIS"}', 401, {"error": "unauthorized_client", "error_description": "Apple receipt not valid"}),
])
def test_register_refuses_a_body_without_a_usable_receipt(c3pro_peer, body, status, error):
    answer = httpx.post(f"{c3pro_peer.base_url}/register", content=body, headers={"Antispam": c3pro_peer.antispam})
    assert (answer.status_code, answer.json()) == (status, error)
    assert c3pro_peer.clients == {}


def test_register_answers_201_with_the_trailing_comma(c3pro_peer):
    answer = httpx.post(f"{c3pro_peer.base_url}/register", headers={"Antispam": c3pro_peer.antispam},
                        json={"client_name": "phg", "sandbox": False, "receipt-data": "NO-APP-RECEIPT"})
    assert answer.status_code == 201 and answer.headers["content-type"] == "application/json"
    assert answer.text.endswith('"token_endpoint_auth_method":"client_secret_basic",\n}')
    with pytest.raises(json.JSONDecodeError):
        json.loads(answer.text)
    fields = json.loads(re.sub(r",\s*}$", "}", answer.text))
    assert fields["grant_types"] == ["client_credentials"]
    assert str(uuid.UUID(fields["client_id"])) == fields["client_id"]
    assert len(fields["client_secret"]) == 88 and len(base64.b64decode(fields["client_secret"])) == 64
    assert c3pro_peer.clients == {fields["client_id"]: sha1_base64(fields["client_secret"])}
    assert c3pro_peer.registrations[-1].client_id == fields["client_id"]


# ------------------------------------------------------------------------------------------- tokens


def test_token_202_with_basic_over_form_urlencoded_credentials(c3pro_peer):
    client_id, secret = c3pro_peer.register_client()
    answer = httpx.post(f"{c3pro_peer.base_url}/oauth", data={"grant_type": "client_credentials", "scope": "x"},
                        headers={"Authorization": basic(client_id, secret)})
    assert answer.status_code == 202
    body = answer.json()
    assert body["expires_in"] == 1800 and body["token_type"] == "bearer"
    assert re.fullmatch(r"[0-9A-Za-z._]{64}", body["access_token"])
    by_query = httpx.post(f"{c3pro_peer.base_url}/oauth?grant_type=CLIENT_CREDENTIALS",
                          headers={"Authorization": basic(client_id, secret)})
    assert by_query.status_code == 202


def test_token_refuses_an_unencoded_plus_and_bad_headers(c3pro_peer):
    client_id = str(uuid.uuid4())
    c3pro_peer.clients[client_id] = sha1_base64("a+b/c=")
    url, grant = f"{c3pro_peer.base_url}/oauth", {"grant_type": "client_credentials"}
    raw = "Basic " + base64.b64encode(f"{client_id}:a+b/c=".encode()).decode()  # '+' decodes to ' '
    for header in (raw, basic(client_id, "wrong"), "Bearer x", "Basic", "Basic  " + raw[6:], None):
        answer = httpx.post(url, data=grant, headers={"Authorization": header} if header else {})
        assert (answer.status_code, answer.json()) == (401, UNAUTHORIZED), header
    lower = "basic " + basic(client_id, "a+b/c=")[6:]
    assert httpx.post(url, data=grant, headers={"Authorization": lower}).status_code == 202


@pytest.mark.parametrize(("data", "error"), [
    ({}, {"error": "invalid_request", "error_description": "Grant type is null"}),
    ({"grant_type": "password"}, {"error": "unsupported_grant_type"}),
])
def test_token_needs_the_client_credentials_grant(c3pro_peer, data, error):
    authorization = basic(*c3pro_peer.register_client())
    answer = httpx.post(f"{c3pro_peer.base_url}/oauth", data=data, headers={"Authorization": authorization})
    assert (answer.status_code, answer.json()) == (400, error)


def test_bearer_filter_on_encfhir(c3pro_peer):
    url = f"{c3pro_peer.base_url}/encfhir/Observation"
    good = token(c3pro_peer)
    for header in (None, "Bearer nope", f"Bearer  {good}", f"Basic {good}"):
        answer = httpx.post(url, json={}, headers={"Authorization": header} if header else {})
        assert (answer.status_code, answer.json()) == (401, UNAUTHORIZED), header
    assert httpx.get(url, headers={"Authorization": f"bearer {good}"}).status_code == 405  # only doPost
    c3pro_peer.expire_tokens()
    assert httpx.post(url, json={}, headers={"Authorization": f"Bearer {good}"}).status_code == 401
    assert c3pro_peer.submissions == []


# ------------------------------------------------------------------------------------------- envelopes


def post(peer: C3ProPeer, body: object, path: str = "/encfhir/Observation") -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(peer.base_url + path, content=content, headers={"Authorization": f"Bearer {token(peer)}"})


def test_an_envelope_is_decrypted_and_kept(c3pro_peer):
    public = c3pro_peer.certificate.public_key()
    answer = post(c3pro_peer, make_envelope(OBSERVATION, public, c3pro_peer.key_id, "3.0.0"))
    assert (answer.status_code, answer.content) == (200, b"")
    patient = {"resourceType": "Patient", "id": "p1"}
    envelope = make_envelope(patient, public, f" {c3pro_peer.key_id}\n", "1.0.2", key_length=16)  # key_id trimmed
    envelope["message"] = "\n".join(envelope["message"][i:i + 64] for i in range(0, len(envelope["message"]), 64))
    assert post(c3pro_peer, envelope, path="/encfhir").status_code == 200
    assert c3pro_peer.resources() == [OBSERVATION, patient] and c3pro_peer.problems == []
    first, second = c3pro_peer.submissions
    assert (first.path, first.key_length, first.version) == ("Observation", 32, "3.0.0")
    assert (second.path, second.key_length) == ("", 16)


def test_a_missing_field_is_answered_200_with_a_non_json_body(c3pro_peer):
    envelope = make_envelope(OBSERVATION, c3pro_peer.certificate.public_key(), c3pro_peer.key_id, "3.0.0")
    del envelope["symmetric_key"]
    answer = post(c3pro_peer, envelope)
    assert (answer.status_code, answer.text) == (200, """{'error':'JSONObject["symmetric_key"] not found.'}""")
    assert [s.problem for s in c3pro_peer.problems] == ['JSONObject["symmetric_key"] not found.']
    assert c3pro_peer.resources() == []


def test_what_the_consumer_cannot_process_is_recorded(c3pro_peer):
    public = c3pro_peer.certificate.public_key()
    other = C3ProPeer().certificate.public_key()  # not started: only its key
    no_subject = {**OBSERVATION, "subject": {"reference": "p1"}}
    bodies = [make_envelope(OBSERVATION, public, "another-key", "3.0.0"),
              make_envelope(OBSERVATION, other, c3pro_peer.key_id, "3.0.0"),
              make_envelope(no_subject, public, c3pro_peer.key_id, "3.0.0"),
              make_envelope({"resourceType": "Patient"}, public, c3pro_peer.key_id, "3.0.0"),
              {**make_envelope(OBSERVATION, public, c3pro_peer.key_id, "3.0.0"), "message": "AAAA"},
              "[]"]
    for body in bodies:
        assert post(c3pro_peer, body).status_code == 200  # C3-PRO's server never looks inside
    assert len(c3pro_peer.problems) == len(bodies) and c3pro_peer.resources() == []


def test_the_certificate_is_handed_out_in_der_and_pem(c3pro_peer, tmp_path):
    der = x509.load_der_x509_certificate(c3pro_peer.write_certificate(tmp_path / "public.crt").read_bytes())
    pem = x509.load_pem_x509_certificate(c3pro_peer.write_certificate(tmp_path / "public.pem", "pem").read_bytes())
    assert der == pem == c3pro_peer.certificate
    assert der.public_key().public_numbers() == c3pro_peer.private_key.public_key().public_numbers()
    assert der.public_key().key_size == 2048


# ------------------------------------------------------------------------------------------- fuzz


@given(st.text(max_size=200))
def test_envelope_reader_never_raises(body):
    envelope, problem = _read_envelope(body)
    assert (problem is None) == (set(envelope) >= {"message", "symmetric_key", "key_id", "version"})


@given(st.binary(max_size=100), st.integers(0, 80))
def test_lenient_base64_reads_wrapped_and_urlsafe_text(data, width):
    text = base64.b64encode(data).decode()
    wrapped = "\r\n".join(text[i:i + width] for i in range(0, len(text), width)) if width else text
    assert lenient_b64decode(wrapped) == data
    assert lenient_b64decode(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data


def test_a_held_post_whose_client_is_gone_is_not_taken(c3pro_peer):
    """The peer's hook for crash tests: a client killed while its post is held never delivered it."""
    public = c3pro_peer.certificate.public_key()
    envelope = json.dumps(make_envelope(OBSERVATION, public, c3pro_peer.key_id, "3.0.0")).encode()
    bearer = token(c3pro_peer)
    c3pro_peer.hold_after(0)
    with socket.create_connection(("127.0.0.1", c3pro_peer.port)) as sock:
        sock.sendall(b"POST /c3pro/encfhir/Observation HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     + f"Authorization: Bearer {bearer}\r\nContent-Length: {len(envelope)}\r\n\r\n".encode() + envelope)
        assert c3pro_peer.holding.wait(10)
    assert c3pro_peer.dropped.wait(10)  # noticed while held
    c3pro_peer.release()
    assert post(c3pro_peer, json.loads(envelope)).status_code == 200
    assert len(c3pro_peer.submissions) == 1 and c3pro_peer.resources() == [OBSERVATION]


def test_a_held_post_is_taken_on_release(c3pro_peer):
    envelope = make_envelope(OBSERVATION, c3pro_peer.certificate.public_key(), c3pro_peer.key_id, "3.0.0")
    c3pro_peer.hold_after(0)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, c3pro_peer, envelope)
        assert c3pro_peer.holding.wait(10) and c3pro_peer.submissions == []
        c3pro_peer.release()
        assert answer.result(timeout=10).status_code == 200
    assert c3pro_peer.resources() == [OBSERVATION]


def test_a_lost_answer_is_a_post_taken_and_never_answered(c3pro_peer):
    envelope = make_envelope(OBSERVATION, c3pro_peer.certificate.public_key(), c3pro_peer.key_id, "3.0.0")
    bearer = token(c3pro_peer)
    c3pro_peer.hold_after(0, lose_answer=True)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{c3pro_peer.base_url}/encfhir/Observation", json=envelope,
                   headers={"Authorization": f"Bearer {bearer}"}, timeout=0.5)
    assert c3pro_peer.dropped.wait(10)
    assert c3pro_peer.resources() == [OBSERVATION]  # the server took it all the same
    assert post(c3pro_peer, envelope).status_code == 200  # one post only is held
    assert c3pro_peer.resources() == [OBSERVATION, OBSERVATION]
