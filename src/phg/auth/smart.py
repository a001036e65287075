"""SMART Backend Services client authentication (SMART App Launch 2.2.0, backend-services).

The gateway authenticates with a signed client assertion (private_key_jwt, RFC 7523 section 2.2)
in a client_credentials token request, gets a short-lived bearer token (no refresh token) and
re-authenticates before it expires: ``TokenAuth(ClientCredentials(), PrivateKeyJwt(...), ...)``.
The token cache, the single in-flight refresh and the one re-authentication on 401 are
phg.auth.token.TokenAuth's; this module only authenticates the client.

The signing key is a SigningKey or a KeyRing (several keys, rotation): the ring is asked for its
current signing key at every token request, so a ``phg keys rotate`` done while the daemon runs
takes effect without a restart.
"""

from __future__ import annotations

from phg.auth.assertion import client_assertion
from phg.auth.discovery import SmartConfiguration
from phg.auth.keyring import KeySource, StaticKey
from phg.auth.keys import SigningKey
from phg.errors import ConfigError
from phg.process import in_thread
from phg.transport import require_secure_url

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# exp at most 5 min ahead (SMART); 60 s below the limit so a server whose clock is behind ours
# still sees exp within its 5 minutes.
ASSERTION_LIFETIME = 240


class PrivateKeyJwt:
    """private_key_jwt: a freshly signed client assertion (new jti) with every token request
    (SMART backend-services, "Obtaining an access token").

    ``key`` is a SigningKey or a KeyRing. ``jku``, when set, goes into every assertion header
    (it must equal the JWKS URL registered for the client). The token endpoint may be wherever
    discovery says: an assertion is no reusable secret, its ``aud`` is that endpoint (RFC 7523
    section 3), so nothing it carries works elsewhere.
    """

    name = "private_key_jwt"
    sends_reusable_secret = False

    def __init__(self, client_id: str, key: SigningKey | KeySource, *, jku: str | None = None,
                 allow_insecure_http: bool = False) -> None:
        if not client_id:
            raise ConfigError("SMART backend services: client_id is empty")
        if jku is not None:
            require_secure_url(jku, "[auth] jku", allow_insecure_http=allow_insecure_http)
        self.client_id = client_id
        self.keys: KeySource = StaticKey(key) if isinstance(key, SigningKey) else key
        self.jku = jku

    def __repr__(self) -> str:
        return f"PrivateKeyJwt(client_id={self.client_id!r})"

    @property
    def key(self) -> SigningKey:
        """The key that signs the next assertion (a ring may change it between token requests)."""
        return self.keys.signing_key()

    async def authenticate(self, url: str, form: dict[str, str]) -> dict[str, str]:
        # RSA signing is CPU work and the ring may touch the disk: keep both off the event loop.
        form["client_assertion_type"] = JWT_BEARER
        form["client_assertion"] = await in_thread(self._sign, url)
        return {}

    def _sign(self, url: str) -> str:
        return client_assertion(self.key, self.client_id, url, lifetime=ASSERTION_LIFETIME, jku=self.jku)

    def credentials_hint(self) -> str:
        key = self.key
        return (f"check client_id {self.client_id!r}, that the public key (kid {key.kid}, {key.alg}) is registered "
                "for this client at the server (JWKS URL or inline JWKS), and that this host's clock is correct")

    def configuration_problems(self, configuration: SmartConfiguration) -> list[str]:
        return (configuration.undeclared("token_endpoint_auth_methods_supported", self.name)
                + configuration.undeclared("token_endpoint_auth_signing_alg_values_supported", self.key.alg))
