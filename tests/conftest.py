"""Shared fixtures: the real third-party peers (started once per session, on free 127.0.0.1 ports).

Integration tests that use them are marked ``@pytest.mark.peers``. Peers:

- ``sekmet``: :class:`phg.demo.peers.SekmetServer` (``.base_url`` = its FHIR base, no auth)
- ``medplum``: :class:`phg.demo.peers.MedplumServer` (``.base_url`` = its FHIR base, no auth)
- ``oauth``: :class:`phg.demo.peers.OAuthServer` (``.issuer``, ``.token_endpoint``, ``.register_client``)
- ``gate`` / ``medplum_gate``: :class:`phg.demo.peers.Gate` in front of sekmet / medplum, checking
  tokens of ``oauth`` (``.base_url`` = the FHIR base phg is pointed at)
- ``start_oauth(ttl=3, ...)`` / ``start_stack("sekmet", ttl=3, ...)``: fresh peers for one test
  (short token lifetimes, other options), stopped when the test ends
- ``c3pro_peer``: :class:`c3pro_peer.C3ProPeer`, a C3-PRO server and consumer built from
  ../shared/docs/c3pro-facts.md (``.base_url`` = the /c3pro context root), fresh for each test
- ``client_key(alg)``: a fresh ES384/RS384 key pair; ``register_client(...)``: a key pair registered
  with an OAuth server as a private_key_jwt client

In parallel (``make test``: pytest-xdist, ``-n 4 --dist loadgroup``) every worker starts its own session
peers (each binds a free port), and a module whose tests share a module-scoped fixture (a 3-node JetStream
cluster, a built wheel, an EHR) runs whole on one worker: the fixture is made once and those tests never
run beside each other, as in a serial run. Other tests that must not run at once carry
``@pytest.mark.xdist_group(NAME)``.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey

from c3pro_peer import C3ProPeer
from phg.demo.peers import (
    Gate,
    MedplumServer,
    OAuthServer,
    SekmetServer,
    SmartStack,
    smart_stack,
)

# ------------------------------------------------------------------------------------------ parallel


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test that uses a module-scoped fixture joins its module's xdist group (--dist loadgroup), unless it
    has a group already: xdist would join both names into a third group ("a_b") holding that test alone. A test
    in a group of its own (or a module's ``pytestmark``) keeps it; its module-scoped fixtures are made again on
    the worker that runs it."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)  # pytest.Function's resolved fixtures
        if fixtures is not None and item.get_closest_marker("xdist_group") is None and any(
                d.scope == "module" for defs in fixtures.name2fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


# ---------------------------------------------------------------------------------------------- keys


@dataclass
class ClientKey:
    """A test client's key pair (joserfc key) with its public JWK/JWKS and an assertion signer."""

    alg: str
    key: ECKey | RSAKey

    @property
    def kid(self) -> str:
        return self.key.kid  # type: ignore[return-value]

    @property
    def public_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(private=False), "kid": self.kid, "alg": self.alg, "use": "sig"}

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def assertion(
        self,
        client_id: str,
        aud: str,
        *,
        lifetime: int = 240,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A SMART private_key_jwt client assertion, signed here (independently of phg.auth).

        ``header`` replaces the default header {alg, kid, typ: JWT}; ``claims`` override/add claims
        (a value of None removes the claim).
        """
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": aud,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        hdr = header if header is not None else {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        # jws, not jwt.encode: the latter adds typ itself, and the tests need exact control of the header.
        return jws.serialize_compact(hdr, json.dumps(body).encode(), self.key, algorithms=[self.alg])


def make_client_key(alg: str = "ES384") -> ClientKey:
    if alg == "ES384":
        key: ECKey | RSAKey = ECKey.generate_key("P-384", private=True)
    elif alg == "RS384":
        key = RSAKey.generate_key(2048, private=True)
    else:
        raise ValueError(f"unsupported alg {alg}")
    key.ensure_kid()
    return ClientKey(alg, key)


@pytest.fixture
def client_key() -> Callable[..., ClientKey]:
    """Factory: ``client_key("ES384" | "RS384") -> ClientKey`` (a fresh key pair)."""
    return make_client_key


@dataclass
class RegisteredClient:
    client_id: str
    key: ClientKey
    oauth: OAuthServer

    def assertion(self, **kwargs: Any) -> str:
        """A valid client assertion for this client's token endpoint (kwargs as ClientKey.assertion;
        ``aud=...`` overrides the audience)."""
        aud = kwargs.pop("aud", self.oauth.token_endpoint)
        return self.key.assertion(self.client_id, aud, **kwargs)


@pytest.fixture
def register_client(oauth: OAuthServer) -> Callable[..., RegisteredClient]:
    """Factory: ``register_client(alg="ES384", *, oauth=None, scope=None) -> RegisteredClient``.

    Makes a key pair and registers its public JWKS (RFC 7591) with the session's OAuth server (or
    the one given) as a private_key_jwt, client_credentials client.
    """

    def register(alg: str = "ES384", *, oauth: OAuthServer = oauth, scope: str | None = None) -> RegisteredClient:
        key = make_client_key(alg)
        answer = oauth.register_client(key.jwks, scope=scope)
        return RegisteredClient(answer["client_id"], key, oauth)

    return register


# ---------------------------------------------------------------------------------------------- peers


@pytest.fixture(scope="session")
def peers_workdir(tmp_path_factory: pytest.TempPathFactory):
    """Where the session's peers keep their config, data and logs (kept by pytest after the run)."""
    return tmp_path_factory.mktemp("peers")


@pytest.fixture(scope="session")
def sekmet(peers_workdir) -> Iterator[SekmetServer]:
    with SekmetServer(workdir=peers_workdir / "sekmet") as server:
        yield server


@pytest.fixture(scope="session")
def medplum(peers_workdir) -> Iterator[MedplumServer]:
    with MedplumServer(workdir=peers_workdir / "medplum") as server:
        yield server


@pytest.fixture(scope="session")
def oauth(peers_workdir) -> Iterator[OAuthServer]:
    """The session's OAuth server (token ttl 300 s); register clients with ``register_client``."""
    with OAuthServer(ttl=300, workdir=peers_workdir / "oauth") as server:
        yield server


@pytest.fixture(scope="session")
def gate(sekmet: SekmetServer, oauth: OAuthServer, peers_workdir) -> Iterator[Gate]:
    """The SMART gate in front of ``sekmet``, checking ``oauth`` tokens."""
    with Gate(sekmet.base_url, oauth, workdir=peers_workdir / "gate-sekmet") as g:
        yield g


@pytest.fixture(scope="session")
def medplum_gate(medplum: MedplumServer, oauth: OAuthServer, peers_workdir) -> Iterator[Gate]:
    """The SMART gate in front of ``medplum``, checking ``oauth`` tokens."""
    with Gate(medplum.base_url, oauth, workdir=peers_workdir / "gate-medplum") as g:
        yield g


@pytest.fixture
def start_oauth(tmp_path) -> Iterator[Callable[..., OAuthServer]]:
    """Factory: ``start_oauth(clients=(), ttl=300, scopes=None) -> OAuthServer``, started now and
    stopped when the test ends (e.g. ``start_oauth(ttl=3)`` for tokens that expire during the test)."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(clients=(), *, ttl: int = 300, scopes=None) -> OAuthServer:
            nonlocal count
            count += 1
            return stack.enter_context(OAuthServer(clients, ttl=ttl, scopes=scopes, workdir=tmp_path / f"oauth-{count}"))

        yield start


@pytest.fixture
def start_stack(tmp_path) -> Iterator[Callable[..., SmartStack]]:
    """Factory: ``start_stack("sekmet"|"medplum", ttl=300, clients=(), scopes=None, discovery="both",
    scope_check=True) -> SmartStack`` (FHIR server + OAuth server + gate, fresh, stopped after the test).
    ``stack.base_url`` is the gate's FHIR base, ``stack.token_endpoint`` the OAuth token endpoint."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(fhir: str = "sekmet", **kwargs: Any) -> SmartStack:
            nonlocal count
            count += 1
            return stack.enter_context(smart_stack(fhir, workdir=tmp_path / f"stack-{count}", **kwargs))  # type: ignore[arg-type]

        yield start


@pytest.fixture
def c3pro_peer() -> Iterator[C3ProPeer]:
    """A C3-PRO peer (register, 202 tokens, envelopes decrypted and kept), started for one test."""
    with C3ProPeer() as peer:
        yield peer
