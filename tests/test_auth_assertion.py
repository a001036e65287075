"""Client assertions against the SMART spec's worked examples."""

from __future__ import annotations

import json

import pytest
from joserfc import jws
from joserfc.jwk import ECKey

from phg.auth.assertion import client_assertion
from phg.auth.keys import SigningKey
from shared_vectors import VECTORS as SHARED

VECTORS = SHARED / "smart"
CLIENT_ID = "https://bili-monitor.example.com"
TOKEN_URL = "https://authorize.smarthealthit.org/token"
EXAMPLE_EXP = 1422568860


def _private(name: str) -> SigningKey:
    return SigningKey.from_jwk(json.loads((VECTORS / f"{name}.private.json").read_text())["keys"][1])


def test_rs384_reproduces_spec_example_byte_for_byte() -> None:
    expected = (VECTORS / "RS384.example-assertion.jwt").read_text().strip()
    token = client_assertion(
        _private("RS384"), CLIENT_ID, TOKEN_URL, now=EXAMPLE_EXP - 300, jti="random-non-reusable-jwt-id-123"
    )
    assert token == expected


def test_es384_verifies_with_example_public_key() -> None:
    key = _private("ES384")
    token = client_assertion(key, CLIENT_ID, TOKEN_URL, now=1_700_000_000)
    public = ECKey.import_key(json.loads((VECTORS / "ES384.public.json").read_text())["keys"][0])
    verified = jws.deserialize_compact(token, public, algorithms=["ES384"])
    assert verified.protected == {"alg": "ES384", "kid": "cd520211e5661dbba2256f67f6d53f97", "typ": "JWT"}
    assert list(verified.protected) == ["alg", "kid", "typ"]
    claims = json.loads(verified.payload)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == TOKEN_URL
    assert claims["exp"] == 1_700_000_300


def test_fresh_jti_each_time() -> None:
    key = _private("ES384")
    jtis = {
        json.loads(jws.extract_compact(client_assertion(key, CLIENT_ID, TOKEN_URL).encode()).payload)["jti"]
        for _ in range(5)
    }
    assert len(jtis) == 5 and all(len(j) >= 32 for j in jtis)


@pytest.mark.parametrize("lifetime", [0, 301])
def test_lifetime_bounded_by_five_minutes(lifetime: int) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        client_assertion(_private("ES384"), CLIENT_ID, TOKEN_URL, lifetime=lifetime)
