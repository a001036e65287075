"""Issue 12, without a server: C3-PRO's envelope (the iOS AES vector, decrypted with the consumer's
algorithms, shape-checked), the server keys it comes with, the STU3 resources, the registration
answer's trailing comma, 2xx token answers, and the c3pro settings."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.x509.oid import NameOID
from fhir.resources.STU3.observation import Observation
from fhir.resources.STU3.patient import Patient
from hypothesis import example, given
from hypothesis import strategies as st

from c3pro_peer import (
    VECTOR_CIPHERTEXT,
    VECTOR_KEY,
    VECTOR_PLAINTEXT,
    aes_cbc_zero_iv_decrypt,
    lenient_b64decode,
)
from phg.auth.registration import c3pro_json
from phg.auth.secret import ClientSecret
from phg.auth.token import ClientCredentials, TokenAuth
from phg.config import C3proSettings, load_config
from phg.delivery.c3pro import (
    C3proDestination,
    Journal,
    aes_encrypt,
    check_envelope,
    load_public_key,
    patient_id,
    render,
    seal,
)
from phg.delivery.outcome import Delivered, Rejected
from phg.errors import AuthError, ConfigError, MappingError, PermanentDeliveryError, TransientDeliveryError
from phg.fhir import to_json
from phg.model import Gateway, parse_reading
from test_fhir_mapping import DOCS, PATIENT

GATEWAY = Gateway(system_id="ECDE3D4E58532D31")
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CGM = {"device": {"bt_address": "C0:00:00:00:18:1F", "specializations": [{"code": 528409}]}, "patient": PATIENT,
       "metrics": [{"code": 160212, "value": "6.10", "unit": "mmol/L", "time": "2026-11-28T09:05:00+01:00",
                    "status": ["questionable"]}]}
SEVEN = {**DOCS, "cgm": CGM}  # glucose, blood pressure, weight, temperature, SpO2, heart rate, CGM


def reading(doc: dict):
    return parse_reading(json.loads(json.dumps(doc), parse_float=Decimal))


def consumer_open(body: bytes, key: rsa.RSAPrivateKey) -> tuple[bytes, int]:
    """As C3-PRO's consumer does it (SQSListener.java 98-112, 448-475): lenient Base64, OAEP SHA-1, AES-CBC zero IV."""
    envelope = json.loads(body)
    aes = key.decrypt(lenient_b64decode(envelope["symmetric_key"]),
                      OAEP(mgf=MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
    return aes_cbc_zero_iv_decrypt(aes, lenient_b64decode(envelope["message"])), len(aes)


def test_the_ios_aes_vector_byte_for_byte():
    """c3-pro-ios-framework Tests/EncryptionTests.swift 22-24, 55-66."""
    assert base64.b64encode(aes_encrypt(VECTOR_KEY, VECTOR_PLAINTEXT)).decode() == VECTOR_CIPHERTEXT


def test_an_envelope_opens_with_the_consumers_algorithms_and_a_fresh_key_each_time():
    resource = b'{"resourceType":"Patient","id":"a"}'
    first, second = (seal(resource, KEY.public_key(), "key-1", "3.0.0") for _ in range(2))
    assert json.loads(first).keys() == {"message", "symmetric_key", "key_id", "version"}
    assert json.loads(first)["key_id"] == "key-1" and json.loads(first)["version"] == "3.0.0"
    assert consumer_open(first, KEY) == (resource, 32)  # AES-256, as iOS sends
    assert json.loads(first)["message"] != json.loads(second)["message"]  # zero IV: only a fresh key varies it
    check_envelope(first, 256)


@pytest.mark.parametrize("change", [
    {"message": None}, {"key_id": ""}, {"symmetric_key": "not base64!"}, {"extra": "x"},
    {"symmetric_key": base64.b64encode(bytes(128)).decode()}, {"message": base64.b64encode(bytes(15)).decode()}])
def test_a_malformed_envelope_never_leaves(change):
    """The server answers 200 even to a malformed envelope, so phg checks its own before sending."""
    envelope = json.loads(seal(b"{}", KEY.public_key(), "k", "3.0.0")) | change
    envelope = {k: v for k, v in envelope.items() if v is not None}
    with pytest.raises(MappingError, match="C3-PRO envelope"):
        check_envelope(json.dumps(envelope).encode(), 256)


def _certificate(key) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c3pro")])
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))


@pytest.mark.parametrize("form", ["der-cert", "pem-cert", "der-spki", "pem-spki"])
def test_the_server_key_loads_from_a_certificate_or_a_public_key(tmp_path, form):
    """C3-PRO deployments hand out a DER X.509 .crt (sample-data enc/public.crt), which was refused
    as "not a PEM public key"."""
    encoding = serialization.Encoding.DER if form.startswith("der") else serialization.Encoding.PEM
    data = _certificate(KEY).public_bytes(encoding) if form.endswith("cert") else KEY.public_key().public_bytes(
        encoding, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "public.crt"
    path.write_bytes(data)
    assert load_public_key(path, "[destinations.c3] public_key").public_numbers() == KEY.public_key().public_numbers()


def test_a_key_that_is_no_rsa_key_is_refused_naming_the_file(tmp_path):
    garbage, ec_key = tmp_path / "garbage.crt", tmp_path / "ec.pem"
    garbage.write_bytes(b"\x30\x03junk")
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match=r"\[destinations.c3\] public_key .*garbage.crt is neither"):
        load_public_key(garbage, "[destinations.c3] public_key")
    with pytest.raises(ConfigError, match="RSA"):
        load_public_key(ec_key, "[destinations.c3] public_key")


@pytest.mark.parametrize("name", sorted(SEVEN))
def test_each_reading_type_becomes_valid_stu3_with_the_patient_as_subject(name):
    resources = render(reading(SEVEN[name]), GATEWAY)
    (_, patient), observations = resources[0], [r for _, r in resources[1:]]
    pid = patient_id(reading(SEVEN[name]).patient)
    assert patient == {"resourceType": "Patient", "id": pid, "identifier": [PATIENT]}
    Patient.model_validate(json.loads(to_json(patient)))
    assert len(observations) == len(SEVEN[name]["metrics"])
    for observation in observations:
        Observation.model_validate(json.loads(to_json(observation)))  # STU3 (3.0.x)
        assert observation["subject"] == {"reference": f"Patient/{pid}"}
        assert "meta" not in observation or set(observation["meta"]) == {"security"}  # no R4 PHD profiles
        assert "extension" not in observation and "terminology.hl7.org" not in to_json(observation).decode()


def test_the_same_reading_gives_the_same_journal_keys():
    """What makes "posted once" hold across runs: a resource's key does not depend on the run."""
    assert [k for k, _ in render(reading(DOCS["scale"]), GATEWAY)] == [k for k, _ in render(reading(DOCS["scale"]),
                                                                                             GATEWAY)]


# ---------------------------------------------------------------------------------------------- registration answer

C3PRO_201 = ('{\n  "client_id":"0b4c",\n  "client_secret": "a+b/c==",\n  "grant_types": ["client_credentials"],\n'
             '  "token_endpoint_auth_method":"client_secret_basic",\n}')


def test_the_201_answer_with_its_trailing_comma_is_read():
    assert c3pro_json(C3PRO_201)["client_secret"] == "a+b/c=="


@pytest.mark.parametrize("text", ['{"a": 1,,}', '{"a": [1,],}', '[1,]', '{"a": 1},', '{"a": 1,} x', '{,}'])
def test_nothing_looser_than_that_one_comma(text):
    with pytest.raises(ValueError):
        c3pro_json(text)


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), min_size=1, max_size=4),
       st.sampled_from(["", "\n", " \n "]))
def test_any_object_with_one_trailing_comma_reads_as_itself(obj, space):
    text = json.dumps(obj)
    assert c3pro_json(text[:-1] + "," + space + "}") == obj


@given(st.text(max_size=40))
@example("NaN")  # found by CI: json.loads takes it, and NaN != NaN
def test_any_text_is_json_or_that_form_or_refused(text):
    try:
        found = c3pro_json(text)
    except ValueError:
        return
    try:
        assert json.dumps(found) == json.dumps(json.loads(text))  # by their text: NaN (json.loads takes it) != NaN
    except ValueError:
        assert text.rstrip().endswith("}") and "," in text


# ---------------------------------------------------------------------------------------------- tokens


@pytest.mark.parametrize(("status", "expires_in"), [(202, 1800), (202, "1800"), (201, "3600"), (200, 60)])
async def test_any_2xx_with_a_token_body_is_a_token(status, expires_in):
    """C3-PRO answers 202 (OAuth2Server.java 116); its README shows expires_in as a string."""
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"].startswith("Basic ")
        return httpx.Response(status, json={"access_token": "t" * 64, "expires_in": expires_in, "token_type": "bearer"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        auth = TokenAuth(ClientCredentials(), ClientSecret("id", "a+b/c=="), fhir_base="https://c3.example/c3pro",
                         scope="x", token_url="https://c3.example/c3pro/oauth", client=client)
        token = await auth.token()
    assert token.expires_in == float(expires_in)


async def test_a_2xx_without_a_token_is_refused():
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(204))) as client:
        auth = TokenAuth(ClientCredentials(), ClientSecret("id", "s"), fhir_base="https://c3.example/c3pro",
                         scope="x", token_url="https://c3.example/c3pro/oauth", client=client)
        with pytest.raises(AuthError, match="answered without an access_token"):
            await auth.token()


# ---------------------------------------------------------------------------------------------- settings


def c3pro_table(tmp_path, **extra) -> dict:
    key = tmp_path / "public.crt"
    key.write_bytes(_certificate(KEY).public_bytes(serialization.Encoding.DER))
    return {"type": "c3pro", "base_url": "https://c3.example/c3pro/", "public_key": str(key), "key_id": "k"} | extra


def test_a_c3pro_table_with_its_defaults(tmp_path):
    config = load_config(env={}, document={"destinations": {"c3": c3pro_table(tmp_path)}})
    (settings,) = config.destinations
    assert isinstance(settings, C3proSettings) and settings.base_url == "https://c3.example/c3pro"
    assert (settings.version, settings.receipt_data, settings.resources) == ("3.0.0", "NO-APP-RECEIPT",
                                                                             ("Patient", "Observation"))


def test_the_antispam_token_is_a_secret(tmp_path):
    """In the config file, the file must be 0600; in its own file, that file must be."""
    path = tmp_path / "phg.toml"
    table = c3pro_table(tmp_path, antispam="s3cret")
    path.write_text("[destinations.c3]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"holds \[destinations.c3\] antispam"):
        load_config(path, env={})
    token = tmp_path / "antispam"
    token.write_text("s3cret\n")
    token.chmod(0o644)
    with pytest.raises(ConfigError, match="antispam_file .* accessible by group/others"):
        load_config(env={}, document={"destinations": {"c3": c3pro_table(tmp_path, antispam_file=str(token))}})
    token.chmod(0o600)
    (settings,) = load_config(env={}, document={"destinations": {"c3": c3pro_table(
        tmp_path, antispam_file=str(token))}}).destinations
    assert settings.antispam_token() == "s3cret" and "s3cret" not in repr(settings)


@pytest.mark.parametrize(("extra", "message"), [
    ({"resources": ["Device"]}, "resources must list some of Patient, Observation"),
    ({"base_url": "http://c3.example/c3pro"}, "plain http to a non-loopback host"),
    ({"antispam": "a", "antispam_file": "/x"}, "antispam or antispam_file, not both")])
def test_a_wrong_c3pro_table_is_refused_naming_the_key(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env={}, document={"destinations": {"c3": c3pro_table(tmp_path, **extra)}})


def test_the_weak_ciphers_are_spoken_only_to_a_c3pro_destination():
    """AES-CBC with a zero IV and RSA-OAEP SHA-1 live in phg.delivery.c3pro, which only the registry
    (for type "c3pro") and doctor import; every other envelope stays JWE (phg.auth.envelope)."""
    src = Path(__file__).parent.parent / "src" / "phg"
    users = {path.relative_to(src).as_posix() for path in src.rglob("*.py")
             if "from phg.delivery.c3pro import" in path.read_text(encoding="utf-8")}
    assert users == {"delivery/registry.py", "doctor.py"}
    assert "SHA1" not in (src / "auth" / "envelope.py").read_text()


@pytest.mark.parametrize(("status", "body", "outcome"), [
    (200, b"", "delivered"), (200, b"{'error':'JSONObject[\"message\"] not found.'}", "refused"),
    (404, b"", ConfigError), (503, b"", TransientDeliveryError), (400, b"", PermanentDeliveryError)])
async def test_what_each_answer_means(tmp_path, status, body, outcome):
    """200 with an empty body is success; a 200 with a body is C3-PRO's error written before its status
    (Utils.sendJSONError): that resource is not recorded and the reading is refused."""
    posted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(request.url.path)
        return httpx.Response(status, content=body)

    table = c3pro_table(tmp_path, resources=["Observation"], journal=str(tmp_path / "journal.sqlite"))
    (settings,) = load_config(env={}, document={"destinations": {"c3": table}}).destinations
    journal = Journal(settings.journal)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        destination = C3proDestination(settings, GATEWAY, client, KEY.public_key(), journal)
        if isinstance(outcome, type):
            with pytest.raises(outcome):
                await destination.send([reading(DOCS["thermometer"])])
            return
        (result,) = await destination.send([reading(DOCS["thermometer"])])
    assert posted == ["/c3pro/encfhir/Observation"]
    assert isinstance(result, Delivered if outcome == "delivered" else Rejected)
    assert journal.sent(render(reading(DOCS["thermometer"]), GATEWAY)[1][0]) == (outcome == "delivered")
