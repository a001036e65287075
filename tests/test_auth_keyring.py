"""Key ring and rotation (publish before signing, retire after the grace period), jku, the JWKS
server, and the TLS client settings."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

import httpx
import pytest
from joserfc import jws

from phg.auth.jwks_server import JwksServer
from phg.auth.keyring import KeyRing, state_path
from phg.auth.keys import generate_key
from phg.config import TlsSettings
from phg.delivery.tls import httpx_options
from phg.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ring(tmp_path: Path) -> tuple[KeyRing, Clock]:
    generate_key(tmp_path / "gw.pem", "ES384")
    clock = Clock()
    return KeyRing(tmp_path / "gw.pem", clock=clock), clock


def kids(keys) -> list[str]:
    return [k.kid for k in keys]


def test_single_key_without_state(ring) -> None:
    keys, _ = ring
    assert kids(keys.published()) == [keys.signing_key().kid]
    assert not keys.state_file.exists()


def test_rotation_publishes_first_signs_later_retires_after_grace(ring, tmp_path: Path) -> None:
    keys, clock = ring
    old = keys.signing_key()
    new = keys.rotate(publish_delay=600, grace=3600)
    assert os.stat(state_path(tmp_path / "gw.pem")).st_mode & 0o777 == 0o600
    assert kids(keys.published()) == [old.kid, new.kid]  # published at once ...
    assert keys.signing_key().kid == old.kid  # ... but not signing yet
    clock.now += 600
    assert keys.signing_key().kid == new.kid and kids(keys.published()) == [old.kid, new.kid]
    clock.now += 3599
    assert old.kid in kids(keys.published())
    clock.now += 1
    assert kids(keys.published()) == [new.kid]
    newer = keys.rotate(publish_delay=0, grace=0, alg="RS384")
    assert newer.alg == "RS384" and keys.signing_key().kid == newer.kid
    assert not (tmp_path / "gw.pem").exists()  # the retired key's private file is gone
    assert json.loads(keys.state_file.read_text())["version"] == 1


def test_another_process_rotating_is_seen(ring) -> None:
    keys, clock = ring
    reader = KeyRing(keys.key_file, clock=clock)
    first = reader.signing_key().kid
    keys.rotate(publish_delay=0, grace=10)
    assert reader.signing_key().kid != first


def test_the_server_learns_a_new_key_before_the_ring_lets_it_sign(ring, tmp_path: Path) -> None:
    """`phg keys rotate --publish-delay 0` with a registration (RFC 7592): a running `phg run` re-reads
    the ring and signs with the new key as soon as it may, so publish(jwks) runs before the ring changes
    (it failed under load: the daemon's token request, signed with the new key, reached the server before
    the registration update did: invalid_client, delivery stopped)."""
    keys, clock = ring
    reader = KeyRing(keys.key_file, clock=clock)  # the running daemon's view
    first = reader.signing_key().kid
    seen: list[tuple[list[str], str]] = []

    def publish(jwks: dict) -> None:
        seen.append(([k["kid"] for k in jwks["keys"]], reader.signing_key().kid))

    new = keys.rotate(publish_delay=0, grace=60, publish=publish)
    assert seen == [([first, new.kid], first)]  # both keys published while the old one still signed
    assert reader.signing_key().kid == new.kid


def test_a_failed_publish_leaves_the_ring_as_it_was(ring, tmp_path: Path) -> None:
    keys, _ = ring
    before = sorted(p.name for p in tmp_path.iterdir())

    def publish(jwks: dict) -> None:
        raise httpx.ConnectError("registration endpoint unreachable")

    with pytest.raises(httpx.ConnectError):
        keys.rotate(publish_delay=0, grace=60, publish=publish)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no new key file, no state file
    assert kids(keys.published()) == [keys.signing_key().kid]


def test_a_ring_with_no_usable_key_says_so(ring) -> None:
    keys, clock = ring
    keys.rotate(publish_delay=100, grace=0)
    clock.now += 50
    assert keys.signing_key()  # the old key still signs during the publish delay
    keys.state_file.write_text(keys.state_file.read_text().replace('"retire_at": null', '"retire_at": 1'))
    clock.now += 100
    with pytest.raises(ConfigError, match="no key may sign"):
        keys.signing_key()


def test_jku_is_set_in_the_assertion_header(ring) -> None:
    from phg.auth.assertion import client_assertion

    keys, _ = ring
    token = client_assertion(keys.signing_key(), "gw", "https://auth/token", jku="https://gw.example.org/jwks.json")
    header = jws.extract_compact(token.encode()).protected
    assert list(header) == ["alg", "kid", "typ", "jku"] and header["jku"] == "https://gw.example.org/jwks.json"


async def test_jwks_server_publishes_the_ring(ring) -> None:
    keys, _ = ring
    async with JwksServer(keys) as server, httpx.AsyncClient() as client:
        first = await client.get(server.url)
        assert first.status_code == 200 and "max-age" in first.headers["Cache-Control"]
        assert kids(keys.published()) == [k["kid"] for k in first.json()["keys"]]
        assert all("d" not in k for k in first.json()["keys"])
        keys.rotate(publish_delay=60, grace=60)
        assert len((await client.get(server.url)).json()["keys"]) == 2
        assert (await client.get(server.url.replace("jwks.json", "other"))).status_code == 404
        assert (await client.post(server.url)).status_code == 405


def test_tls_client_options(tmp_path: Path) -> None:
    """The token endpoint's client gets the one TLS policy (phg.delivery.tls) and the [auth] proxy."""
    options = httpx_options(TlsSettings(source="[auth]"), "http://proxy:3128")
    assert options["proxy"] == "http://proxy:3128"
    import certifi

    context = httpx_options(TlsSettings(ca_file=Path(certifi.where())))["verify"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="ca_file"):
        httpx_options(TlsSettings(ca_file=bad))


def test_client_key_must_be_private(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("x")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        httpx_options(TlsSettings(client_cert=key, client_key=key))
