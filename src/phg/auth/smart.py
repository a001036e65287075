"""SMART Backend Services authorization as an httpx.Auth (SMART App Launch 2.2.0, backend-services).

The gateway authenticates with a signed client assertion (private_key_jwt, RFC 7523) in a
client_credentials token request, gets a short-lived bearer token (no refresh token) and
re-authenticates before it expires. The token cache, the single in-flight refresh and the one
re-authentication on 401 are phg.auth.token.TokenAuth's; this module only builds the request.

The signing key is a SigningKey or a KeyRing (several keys, rotation): the ring is asked for its
current signing key at every token request, so a ``phg keys rotate`` done while the daemon runs
takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import httpx

from phg.auth.assertion import client_assertion
from phg.auth.discovery import SmartConfiguration, discover
from phg.auth.keyring import KeyRing, KeySource, StaticKey
from phg.auth.keys import SigningKey
from phg.auth.token import DEFAULT_EXPIRES_IN, TOKEN_TIMEOUT, AccessToken, TokenAuth
from phg.errors import ConfigError
from phg.transport import require_secure_url

__all__ = ["DEFAULT_EXPIRES_IN", "TOKEN_TIMEOUT", "AccessToken", "KeyRing", "SmartBackendAuth", "SmartConfiguration",
           "discover"]

log = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# exp at most 5 min ahead (SMART); 60 s below the limit so a server whose clock is behind ours
# still sees exp within its 5 minutes.
ASSERTION_LIFETIME = 240


class SmartBackendAuth(TokenAuth):
    """httpx auth flow for SMART Backend Services; use with an ``httpx.AsyncClient``.

    ``key`` is a SigningKey or a KeyRing. ``jku``, when set, goes into every assertion header
    (it must equal the JWKS URL registered for the client). The token endpoint may be wherever
    discovery says: an assertion is no reusable secret, its ``aud`` is that endpoint (RFC 7523
    section 3), so nothing it carries works elsewhere.
    """

    method = "smart-backend"

    def __init__(
        self,
        *,
        fhir_base: str,
        client_id: str,
        key: SigningKey | KeySource,
        scope: str,
        token_url: str | None = None,
        jku: str | None = None,
        refresh_margin: float = 30.0,
        client: httpx.AsyncClient | None = None,
        allow_insecure_http: bool = False,
        trusted_token_hosts: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not client_id:
            raise ConfigError("SMART backend services: client_id is empty")
        if not scope.strip():
            raise ConfigError("SMART backend services: scope is empty (the token request requires it)")
        if jku is not None:
            require_secure_url(jku, "[auth] jku", allow_insecure_http=allow_insecure_http)
        super().__init__(fhir_base=fhir_base, client_id=client_id, scope=scope, token_url=token_url,
                         refresh_margin=refresh_margin, client=client, allow_insecure_http=allow_insecure_http,
                         trusted_token_hosts=trusted_token_hosts, clock=clock)
        self.keys: KeySource = StaticKey(key) if isinstance(key, SigningKey) else key
        self.jku = jku

    @property
    def key(self) -> SigningKey:
        """The key that signs the next assertion (a ring may change it between token requests)."""
        return self.keys.signing_key()

    def _configuration_problems(self, configuration: SmartConfiguration) -> list[str]:
        return configuration.backend_services_problems(self.key.alg)

    def _credentials_hint(self) -> str:
        key = self.key
        return (f"check client_id {self.client_id!r}, that the public key (kid {key.kid}, {key.alg}) is registered "
                "for this client at the server (JWKS URL or inline JWKS), and that this host's clock is correct")

    def _sign(self, url: str) -> str:
        assert self.client_id is not None
        key = self.keys.signing_key()  # may read the ring's state file: runs in a thread
        return client_assertion(key, self.client_id, url, lifetime=ASSERTION_LIFETIME, jku=self.jku)

    async def _token_request(self, url: str) -> tuple[dict[str, str], dict[str, str]]:
        """client_credentials with a freshly signed assertion (new jti) every time (SMART
        backend-services, "Obtaining an access token")."""
        # RSA signing is CPU work and the ring may touch the disk: keep both off the event loop.
        assertion = await asyncio.to_thread(self._sign, url)
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        }
        return form, {}

