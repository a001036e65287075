"""Key files, kid thumbprints (RFC 7638) and the JWKS."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from phg.auth.keys import SigningKey, generate_key, jwks, load_key
from phg.errors import ConfigError
from shared_vectors import VECTORS as SHARED

VECTORS = SHARED / "smart"

# RFC 7638 section 3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_KEY = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiF"
    "V4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0"
    "zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
    "Cur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def rfc7638(jwk: dict) -> str:
    """Independent RFC 7638 computation: required members only, sorted, no whitespace, SHA-256."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in required}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def test_reference_thumbprint_matches_rfc7638_example() -> None:
    assert rfc7638(RFC7638_KEY) == RFC7638_THUMBPRINT


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_generate_is_0600_and_round_trips_with_thumbprint_kid(tmp_path: Path, alg: str) -> None:
    path = tmp_path / "key.pem"
    generate_key(path, alg)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    key = load_key(path)
    assert key.alg == alg
    jwk = key.public_jwk()
    assert key.kid == jwk["kid"] == rfc7638(jwk)
    assert "d" not in jwk and jwk["use"] == "sig" and jwk["alg"] == alg


def test_generated_rsa_key_is_3072_bits(tmp_path: Path) -> None:
    path = tmp_path / "rsa.pem"
    generate_key(path, "RS384")
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 3072


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_key(path)
    assert path.read_text() == "precious"


def test_generate_refuses_unknown_alg(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RS256"):
        generate_key(tmp_path / "k.pem", "RS256")
    assert not (tmp_path / "k.pem").exists()


def test_load_refuses_group_readable_key_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    generate_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as caught:
        load_key(path)
    assert str(path) in str(caught.value)
    assert "0644" in str(caught.value) and "chmod 600" in str(caught.value)


def test_load_refuses_missing_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.pem"):
        load_key(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    with pytest.raises(ConfigError, match="garbage.pem: not a PEM private key"):
        load_key(garbage)


def _write_pem(path: Path, private: object) -> Path:
    pem = private.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return path


def test_load_refuses_other_curves_and_small_rsa(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="secp256r1"):
        load_key(_write_pem(tmp_path / "p256.pem", ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ConfigError, match="1024 bits is too small"):
        load_key(_write_pem(tmp_path / "rsa1024.pem", rsa.generate_private_key(65537, 1024)))


def test_load_private_jwks_file_keeps_its_kid(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    path.write_bytes((VECTORS / "RS384.private.json").read_bytes())
    path.chmod(0o600)
    key = load_key(path)
    assert (key.alg, key.kid) == ("RS384", "eee9f17a3b598fd86417a980b591fbe6")


def test_from_jwk_refuses_public_key_and_alg_mismatch() -> None:
    public = json.loads((VECTORS / "ES384.public.json").read_text())["keys"][0]
    with pytest.raises(ConfigError, match="no private part"):
        SigningKey.from_jwk(public)
    private = json.loads((VECTORS / "ES384.private.json").read_text())["keys"][1]
    with pytest.raises(ConfigError, match="does not match"):
        SigningKey.from_jwk({**private, "alg": "RS384"})


def test_jwk_without_kid_gets_thumbprint() -> None:
    private = json.loads((VECTORS / "ES384.private.json").read_text())["keys"][1]
    key = SigningKey.from_jwk({k: v for k, v in private.items() if k != "kid"})
    assert key.kid == rfc7638(private)


def test_jwks_shape_and_unique_kids() -> None:
    rs = SigningKey.from_jwk(json.loads((VECTORS / "RS384.private.json").read_text())["keys"][1])
    es = SigningKey.from_jwk(json.loads((VECTORS / "ES384.private.json").read_text())["keys"][1])
    document = jwks([rs, es])
    assert [set(k) for k in document["keys"]] == [
        {"kty", "kid", "alg", "use", "n", "e"},
        {"kty", "kid", "alg", "use", "crv", "x", "y"},
    ]
    assert document["keys"][1]["crv"] == "P-384"
    with pytest.raises(ConfigError, match="duplicate kid"):
        jwks([rs, rs])


def test_signing_key_repr_hides_key_material() -> None:
    key = SigningKey.from_jwk(json.loads((VECTORS / "RS384.private.json").read_text())["keys"][1])
    assert "RSAKey" not in repr(key) and key.kid in repr(key)
