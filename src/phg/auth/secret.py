"""The other ways servers are secured: client secrets, the password grant, a static bearer token.

The first two are parts that phg.auth.token.TokenAuth is composed with (the cache, refresh, 401
handling and error messages live there once):

- ClientSecret: client authentication with a secret, client_secret_basic (RFC 6749 section 2.3.1:
  HTTP Basic with the form-urlencoded client_id and secret) or client_secret_post (the two in the
  form body). PublicClient: no client authentication, only the client_id (RFC 6749 section 2.1).
- PasswordGrant: the resource-owner password credentials grant (RFC 6749 section 4.3). Legacy:
  OAuth 2.1 removes it. It is only used when ``[auth] method = "password"`` says so, with a warning.

StaticBearerAuth is an httpx.Auth of its own: a token the server's operator issued out of band.
Nothing to refresh: a 401 goes straight back (the FHIR destination turns it into an AuthError
that keeps the queue).
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Generator
from urllib.parse import quote

import httpx

from phg.auth.discovery import SmartConfiguration
from phg.auth.token import AccessToken, require_own_origin
from phg.errors import ConfigError
from phg.transport import require_secure_url

log = logging.getLogger(__name__)

PASSWORD_GRANT_WARNING = (
    "[auth] method = \"password\": the resource-owner password grant is legacy and removed by OAuth 2.1; "
    "use client credentials (phg register) as soon as the server allows it"
)


def basic_credentials(client_id: str, secret: str) -> str:
    """The Authorization header value of client_secret_basic: RFC 6749 section 2.3.1 wants id and
    secret form-urlencoded before the Basic encoding (httpx.BasicAuth does not do that)."""
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class ClientSecret:
    """client_secret_basic (header) or client_secret_post (form), by ``style``. The secret goes
    only to a token endpoint the config names or on the FHIR server's origin (TokenAuth)."""

    sends_reusable_secret = True

    def __init__(self, client_id: str, secret: str, style: str = "basic") -> None:
        if style not in ("basic", "post"):
            raise ConfigError(f"client secret style must be basic or post, not {style!r}")
        if not client_id:
            raise ConfigError("[auth] client_id is required for a client secret")
        if not secret:
            raise ConfigError("[auth] client_secret (or PHG_CLIENT_SECRET) is required for a client secret")
        self.client_id = client_id
        self.style = style
        self.name = f"client_secret_{style}"
        self._secret = secret

    def __repr__(self) -> str:
        return f"ClientSecret(client_id={self.client_id!r}, style={self.style!r})"

    async def authenticate(self, url: str, form: dict[str, str]) -> dict[str, str]:
        if self.style == "post":
            form.update(client_id=self.client_id, client_secret=self._secret)
            return {}
        return {"Authorization": basic_credentials(self.client_id, self._secret)}

    def credentials_hint(self) -> str:
        return (f"check client_id {self.client_id!r} and its client secret, and that the client was registered "
                f"with token_endpoint_auth_method {self.name}")

    def configuration_problems(self, configuration: SmartConfiguration) -> list[str]:
        return configuration.undeclared("token_endpoint_auth_methods_supported", self.name)


class PublicClient:
    """No client authentication (token_endpoint_auth_method "none"): the client_id, when there is
    one, goes in the form (RFC 6749 sections 2.1 and 4.3.2)."""

    name = "none"
    sends_reusable_secret = False

    def __init__(self, client_id: str | None = None) -> None:
        self.client_id = client_id

    def __repr__(self) -> str:
        return f"PublicClient(client_id={self.client_id!r})"

    async def authenticate(self, url: str, form: dict[str, str]) -> dict[str, str]:
        if self.client_id:
            form["client_id"] = self.client_id
        return {}

    def credentials_hint(self) -> str:
        return f"check client_id {self.client_id!r}"

    def configuration_problems(self, configuration: SmartConfiguration) -> list[str]:
        return []


class PasswordGrant:
    """grant_type=password (RFC 6749 section 4.3): the resource owner's username and password.
    The password is a reusable secret: it goes only where a client secret may go."""

    grant_type = "password"
    sends_reusable_secret = True

    def __init__(self, username: str, password: str) -> None:
        if not username or not password:
            raise ConfigError("[auth] username and password (or PHG_USERNAME / PHG_PASSWORD) are required "
                              "for method = \"password\"")
        self.username = username
        self._password = password
        log.warning(PASSWORD_GRANT_WARNING)

    def __repr__(self) -> str:
        return f"PasswordGrant(username={self.username!r})"

    def fields(self) -> dict[str, str]:
        return {"username": self.username, "password": self._password}

    def credentials_hint(self) -> str:
        return f"check username {self.username!r} and the password"

    def configuration_problems(self, configuration: SmartConfiguration) -> list[str]:
        return configuration.undeclared("grant_types_supported", self.grant_type)


class StaticBearerAuth(httpx.Auth):
    """A bearer token issued out of band ([auth] token / PHG_BEARER_TOKEN): sent to the FHIR
    server's own origin, never refreshed; a 401 goes back to the caller as is."""

    def __init__(self, token: str, *, fhir_base: str, allow_insecure_http: bool = False) -> None:
        if not token:
            raise ConfigError("[auth] token (or PHG_BEARER_TOKEN) is required for method = \"bearer\"")
        require_secure_url(fhir_base, "FHIR base", allow_insecure_http=allow_insecure_http)
        self.fhir_base = fhir_base.rstrip("/")
        self._token = AccessToken(value=token, expires_in=math.inf, scope=None, refresh_at=math.inf)

    def __repr__(self) -> str:
        return "StaticBearerAuth()"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        require_own_origin(request, self.fhir_base)
        request.headers["Authorization"] = f"Bearer {self._token.value}"
        yield request

    async def token(self) -> AccessToken:
        return self._token

    async def aclose(self) -> None:
        """Nothing to close (the same interface as TokenAuth)."""
