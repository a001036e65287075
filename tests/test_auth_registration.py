"""RFC 7591 client metadata and answers, storing the result in the config file, and envelopes."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

from phg.auth.envelope import envelope_from_file, envelope_from_jwks, open_envelope, seal
from phg.auth.registration import client_metadata, register, set_table_keys, store_in_config
from phg.errors import AuthError, ConfigError

CONFIG = """# phg configuration
[gateway]
system_id = "02AB7FFFFE00C1C1"  # keep me

[auth]
# the SMART client
client_id = "old"   # replaced
scope = "system/Observation.c"
# a comment at the end of [auth]

[outbox]
path = "/tmp/o.sqlite"
"""


def test_set_table_keys_keeps_comments_and_other_tables() -> None:
    text = set_table_keys(CONFIG, "auth", {"client_id": "new-id", "registration_access_token": 'a"b\\c'})
    parsed = tomllib.loads(text)
    assert parsed["auth"]["client_id"] == "new-id" and parsed["auth"]["registration_access_token"] == 'a"b\\c'
    assert parsed["outbox"]["path"] == "/tmp/o.sqlite" and parsed["gateway"]["system_id"] == "02AB7FFFFE00C1C1"
    for comment in ("# phg configuration", "# keep me", "# the SMART client", "# a comment at the end of [auth]"):
        assert comment in text
    # the new key sits inside [auth], before [outbox]
    assert text.index("registration_access_token") < text.index("[outbox]")


def test_set_table_keys_adds_a_missing_table() -> None:
    text = set_table_keys("[fhir]\nbase_url = \"https://x\"", "auth", {"client_id": "c"})
    assert tomllib.loads(text) == {"fhir": {"base_url": "https://x"}, "auth": {"client_id": "c"}}
    with pytest.raises(ConfigError, match="by hand"):
        set_table_keys('auth = {client_id = "x"}\n', "auth", {"client_id": "c"})


def test_store_in_config_makes_a_secret_file_0600(tmp_path: Path) -> None:
    path = tmp_path / "phg.toml"
    path.write_text(CONFIG)
    path.chmod(0o644)
    store_in_config(path, {"client_id": "x"}, secret=False)
    assert os.stat(path).st_mode & 0o777 == 0o644
    store_in_config(path, {"registration_access_token": "rat"}, secret=True)
    assert os.stat(path).st_mode & 0o777 == 0o600 and "rat" in path.read_text()


def test_client_metadata_shapes() -> None:
    jwks = {"keys": [{"kty": "EC", "kid": "k"}]}
    md = client_metadata(scope="system/Observation.c", jwks=jwks, signing_alg="ES384", software_statement="eyJ.x.y")
    assert md["grant_types"] == ["client_credentials"] and md["token_endpoint_auth_method"] == "private_key_jwt"
    assert md["jwks"] == jwks and md["token_endpoint_auth_signing_alg"] == "ES384" and md["software_statement"]
    md = client_metadata(scope="s", jwks_uri="https://gw.example.org/jwks.json")
    assert md["jwks_uri"] == "https://gw.example.org/jwks.json" and "jwks" not in md
    assert "jwks" not in client_metadata(scope="s", auth_method="client_secret_post")
    with pytest.raises(ConfigError):
        client_metadata(scope="s")


async def test_register_sends_the_initial_access_token_and_reads_the_answer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers.get("Authorization") != "Bearer iat-1":
            return httpx.Response(401, json={"error": "invalid_token"})
        return httpx.Response(201, json={"client_id": "c1", "registration_access_token": "rat-secret-1",
                                         "registration_client_uri": "https://as/reg/c1",
                                         "token_endpoint_auth_method": "private_key_jwt"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        md = client_metadata(scope="s", jwks={"keys": []})
        with pytest.raises(AuthError, match="needs an initial access token"):
            await register(client, "https://as/reg", md)
        found = await register(client, "https://as/reg", md, initial_access_token="iat-1")
    assert json.loads(seen[-1].content)["grant_types"] == ["client_credentials"]
    assert found.config_values() == {"client_id": "c1", "method": "smart-backend",
                                     "registration_access_token": "rat-secret-1",
                                     "registration_client_uri": "https://as/reg/c1"}
    assert "rat-secret-1" not in repr(found)


async def test_registration_refusal_is_readable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "invalid_client_metadata", "error_description": "scope not allowed"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(AuthError, match="invalid_client_metadata: scope not allowed; the server refused"):
            await register(client, "https://as/reg", client_metadata(scope="s", jwks={"keys": []}))


# ---------------------------------------------------------------------------------------------- envelopes


@pytest.fixture(scope="module")
def server_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_envelope_round_trip_from_a_pem_file(server_key, tmp_path: Path) -> None:
    pem = tmp_path / "server.pem"
    pem.write_bytes(server_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    envelope = envelope_from_file(pem)
    body = b'{"resourceType":"Bundle","type":"transaction","entry":[]}'
    sealed, content_type = seal(body, envelope)
    again, _ = seal(body, envelope)
    assert content_type == "application/jose" and sealed.count(b".") == 4 and sealed != again  # fresh CEK + IV
    clear, header = open_envelope(sealed, RSAKey.import_key(server_key))
    assert clear == body and header["kid"] == envelope.kid and header["enc"] == "A256GCM"
    assert seal(body, None) == (body, "application/fhir+json")


def test_envelope_key_from_a_jwks(server_key) -> None:
    public = RSAKey.import_key(server_key.public_key()).as_dict(private=False)
    jwks = {"keys": [{**public, "kid": "enc-1", "use": "enc"}, {**public, "kid": "sig-1", "use": "sig"}]}
    assert envelope_from_jwks(jwks, None, "test").kid == "enc-1"
    with pytest.raises(ConfigError, match="exactly one"):
        envelope_from_jwks({"keys": [jwks["keys"][0], {**jwks["keys"][0], "kid": "enc-2"}]}, None, "test")
    assert envelope_from_jwks({"keys": [jwks["keys"][0], {**jwks["keys"][0], "kid": "enc-2"}]}, "enc-2", "t").kid == "enc-2"


# ---------------------------------------------------------------------------------------------- hostile answers


@pytest.mark.parametrize(("answer", "message"), [
    ({"token_endpoint_auth_method": "none"}, "token_endpoint_auth_method 'none'"),
    ({"token_endpoint_auth_method": "tls_client_auth"}, "authenticates only with private_key_jwt"),
    ({"token_endpoint_auth_method": "client_secret_basic"}, "without issuing a client_secret"),
    ({"registration_client_uri": "https://collector.example.net/reg/c1"}, "on another origin"),
    ({"registration_client_uri": "http://as/reg/c1"}, "on another origin"),  # https endpoint, http URI
    ({"registration_client_uri": "https://as:8443/reg/c1"}, "on another origin"),
    ({"registration_client_uri": "https://x:y@as/reg/c1"}, "https://\\*\\*\\*@as/reg/c1 on another origin"),
    ({"registration_client_uri": "/reg/c1"}, "on another origin"),
    ({"registration_access_token": 42}, "registration_access_token that is not a string"),
    ({"client_id": ""}, "without a client_id"),
])
async def test_hostile_registration_answers_are_refused(answer, message) -> None:
    body = {"client_id": "c1", "registration_access_token": "rat-secret-9",
            "registration_client_uri": "https://as/reg/c1", "token_endpoint_auth_method": "private_key_jwt", **answer}

    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(201, json=body))) as client:
        with pytest.raises(AuthError, match=message) as caught:
            await register(client, "https://as/reg", client_metadata(scope="s", jwks={"keys": []}))
    assert "rat-secret-9" not in str(caught.value)


async def test_a_management_answer_must_stay_on_the_uri_origin() -> None:
    """RFC 7592 read/update: the answer's registration_client_uri is checked against the URI called,
    so a rotated URI on another origin never receives the registration access token later."""
    from phg.auth.registration import read_registration

    answer = {"client_id": "c1", "token_endpoint_auth_method": "private_key_jwt",
              "registration_client_uri": "https://collector.example.net/c1"}
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=answer))) as client:
        with pytest.raises(AuthError, match="on another origin"):
            await read_registration(client, "https://as/reg/c1", "rat")
        answer["registration_client_uri"] = "https://as/reg/c1-rotated"
        assert (await read_registration(client, "https://as/reg/c1", "rat")).registration_client_uri == \
            "https://as/reg/c1-rotated"


async def test_a_secret_method_with_its_secret_is_stored() -> None:
    body = {"client_id": "c1", "client_secret": "cs", "token_endpoint_auth_method": "client_secret_post"}
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(201, json=body))) as client:
        found = await register(client, "https://as/reg", client_metadata(scope="s", jwks={"keys": []}))
    assert found.config_values() == {"client_id": "c1", "method": "client-secret-post", "client_secret": "cs"}


# --- `~` in the file settings outside phg.config: one rule (phg.config.path) --------------------------------------


def public_pem(server_key: rsa.RSAPrivateKey) -> bytes:
    return server_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)


async def test_encrypt_to_expands_home_and_names_itself_for_a_user_with_none(server_key, tmp_path, monkeypatch) -> None:
    from phg.auth.envelope import load_envelope

    (tmp_path / "server.pem").write_bytes(public_pem(server_key))
    monkeypatch.setenv("HOME", str(tmp_path))
    async with httpx.AsyncClient() as client:
        assert (await load_envelope("~/server.pem", client)).kid
        with pytest.raises(ConfigError, match=r"\[auth\] encrypt_to: '~nosuchuser0/key.pem' names a home directory"):
            await load_envelope("~nosuchuser0/key.pem", client)


def test_a_software_statement_is_a_jwt_or_a_file_with_home_expanded(tmp_path, monkeypatch) -> None:
    from phg.cli.auth import _software_statement

    jwt = "eyJhbGciOiJFUzM4NCJ9." + "eyJpc3MiOiJ2ZW5kb3IifQ" * 20 + ".c2ln"  # longer than a file name may be
    (tmp_path / "statement.jwt").write_text(f"{jwt}\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _software_statement(jwt, "--software-statement") == jwt
    assert _software_statement("~/statement.jwt", "--software-statement") == jwt
    assert _software_statement(None, "[auth] software_statement") is None
    with pytest.raises(ConfigError, match=r"^\[auth\] software_statement: '~nosuchuser0/x' names a home directory"):
        _software_statement("~nosuchuser0/x", "[auth] software_statement")


def test_a_software_statement_file_with_a_byte_order_mark_reads_as_the_jwt(tmp_path) -> None:
    from phg.cli.auth import _software_statement

    (tmp_path / "statement.jwt").write_text("eyJhbGciOiJub25lIn0.eyJpc3MiOiJ2In0.\n", encoding="utf-8-sig")
    assert _software_statement(str(tmp_path / "statement.jwt"), "--software-statement") == \
        "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ2In0."


@pytest.mark.parametrize("given", ["statement.jwt.typo", "directory", "~", "empty file", "not a jwt", "nul"])
def test_a_software_statement_neither_a_file_nor_a_jwt_is_named_not_sent(tmp_path, monkeypatch, given) -> None:
    """Sent as it is, the server would answer invalid_software_statement and nothing would name the path (an empty
    one: registration would go on without it)."""
    from phg.cli.auth import _software_statement

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "statement.jwt").write_text("eyJhbGciOiJub25lIn0.eyJpc3MiOiJ2In0.\n")
    (tmp_path / "empty.jwt").write_text("\n")
    (tmp_path / "notes.txt").write_text("see the vendor's portal\n")
    value = {"directory": str(tmp_path), "empty file": "empty.jwt", "not a jwt": "~/notes.txt",
             "nul": "statement\x00.jwt"}.get(given, given)
    with pytest.raises(ConfigError) as caught:
        _software_statement(value, "[auth] software_statement")
    message = str(caught.value)
    assert message.startswith("[auth] software_statement"), message
    expected = {"empty file": "empty.jwt: the file is empty", "not a jwt": "notes.txt: does not hold a JWT"}
    assert message.endswith(expected.get(given, "is neither a readable file nor a JWT")), message


async def test_a_destinations_encrypt_to_is_named_by_its_own_auth_table(tmp_path) -> None:
    from phg.config import load_config
    from phg.delivery.fhir import open_fhir

    path = tmp_path / "phg.toml"
    path.write_text('[gateway]\nsystem_id = "02AB7FFFFE00C5D1"\n\n[destinations.lab]\ntype = "fhir"\n'
                    'base_url = "https://127.0.0.1:9/fhir"\n\n[destinations.lab.auth]\nencrypt_to = "~nosuchuser0/k"\n'
                    f'\n[outbox]\npath = "{tmp_path / "o.sqlite"}"\n')
    config = load_config(path, env={})
    [lab] = [d for d in config.destinations if d.name == "lab"]
    with pytest.raises(ConfigError, match=r"^\[destinations\.lab\.auth\] encrypt_to: '~nosuchuser0/k' names a home"):
        async with open_fhir(lab, config.gateway):
            pass
    with pytest.raises(ConfigError, match=r"^\[destinations\.lab\.auth\] encrypt_to: 'a\\x00b' is not a file name"):
        envelope_from_file(Path("a\x00b"), where="[destinations.lab.auth] encrypt_to")


def test_register_with_a_statement_under_a_missing_home_stops_before_writing_a_key(tmp_path) -> None:
    from click.testing import CliRunner

    from phg.cli import main

    config = tmp_path / "phg.toml"
    config.write_text(f'[fhir]\nbase_url = "https://127.0.0.1:9/fhir"\n\n[auth]\nkey_file = "{tmp_path / "k.pem"}"\n'
                      f'[outbox]\npath = "{tmp_path / "o.sqlite"}"\n')
    config.chmod(0o600)
    result = CliRunner().invoke(main, ["--config", str(config), "register", "--software-statement", "~nosuchuser0/x"])
    shown = result.stdout + result.stderr
    assert result.exit_code == 3, shown
    assert "--software-statement: '~nosuchuser0/x' names a home directory" in shown and "Traceback" not in shown
    assert not (tmp_path / "k.pem").exists()
