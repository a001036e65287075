"""The other ways servers are secured: client secrets, the password grant, a static bearer token.

All three are TokenAuth subclasses: the cache, refresh, 401 handling and error messages are shared
(phg.auth.token); each class only builds its token request.

- ClientSecretAuth: client_credentials with client_secret_basic (RFC 6749 section 2.3.1: HTTP Basic
  with the form-urlencoded client_id and secret) or client_secret_post (the two in the form body).
- PasswordAuth: the resource-owner password credentials grant (RFC 6749 section 4.3). Legacy: OAuth
  2.1 removes it. It is only used when ``[auth] method = "password"`` says so, with a warning.
- StaticBearerAuth: a token the server's operator issued out of band. Nothing to refresh: a 401
  goes straight back (the FHIR destination turns it into an AuthError that keeps the queue).
"""

from __future__ import annotations

import base64
import logging
import math
from typing import Any
from urllib.parse import quote

from phg.auth.discovery import SmartConfiguration
from phg.auth.token import AccessToken, TokenAuth
from phg.errors import ConfigError

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


class ClientSecretAuth(TokenAuth):
    """client_credentials with a client secret, sent ``basic`` (header) or ``post`` (form). The
    secret goes only to a token endpoint the config names or on the FHIR server's origin
    (TokenAuth.token_endpoint); the password grant inherits that rule."""

    sends_reusable_secret = True

    def __init__(self, *, client_id: str, client_secret: str, scope: str, style: str = "basic", **kwargs: Any) -> None:
        if style not in ("basic", "post"):
            raise ConfigError(f"client secret style must be basic or post, not {style!r}")
        if not client_id:
            raise ConfigError("[auth] client_id is required for a client secret")
        if not client_secret:
            raise ConfigError("[auth] client_secret (or PHG_CLIENT_SECRET) is required for a client secret")
        if not scope.strip():
            raise ConfigError("[auth] scope is empty (the token request requires it)")
        super().__init__(client_id=client_id, scope=scope, **kwargs)
        self.style = style
        self.method = f"client-secret-{style}"
        self._secret = client_secret

    def __repr__(self) -> str:
        return f"ClientSecretAuth(client_id={self.client_id!r}, style={self.style!r})"

    def _configuration_problems(self, configuration: SmartConfiguration) -> list[str]:
        declared = configuration.token_endpoint_auth_methods_supported
        wanted = f"client_secret_{self.style}"
        if declared and wanted not in declared:
            return [f"token_endpoint_auth_methods_supported {list(declared)} does not include {wanted}"]
        return []

    def _credentials_hint(self) -> str:
        return (f"check client_id {self.client_id!r} and its client secret, and that the client was registered "
                f"with token_endpoint_auth_method client_secret_{self.style}")

    def _client_authentication(self, form: dict[str, str]) -> dict[str, str]:
        assert self.client_id is not None
        if self.style == "post":
            form.update(client_id=self.client_id, client_secret=self._secret)
            return {}
        return {"Authorization": basic_credentials(self.client_id, self._secret)}

    async def _token_request(self, url: str) -> tuple[dict[str, str], dict[str, str]]:
        form = {"grant_type": "client_credentials", "scope": self.scope}
        return form, self._client_authentication(form)


class PasswordAuth(ClientSecretAuth):
    """grant_type=password (RFC 6749 section 4.3). The client authenticates with its secret when
    it has one (basic or post), else sends only its client_id (a public client)."""

    method = "password"
    grant = "password"

    def __init__(self, *, username: str, password: str, scope: str, client_id: str | None = None,
                 client_secret: str | None = None, style: str = "basic", **kwargs: Any) -> None:
        if not username or not password:
            raise ConfigError("[auth] username and password (or PHG_USERNAME / PHG_PASSWORD) are required "
                              "for method = \"password\"")
        if client_secret:
            super().__init__(client_id=client_id or "", client_secret=client_secret, scope=scope, style=style, **kwargs)
        else:
            if not scope.strip():
                raise ConfigError("[auth] scope is empty (the token request requires it)")
            TokenAuth.__init__(self, client_id=client_id, scope=scope, **kwargs)
            self.style = "none"
            self._secret = ""
        self.method = "password"
        self.username = username
        self._password = password
        log.warning(PASSWORD_GRANT_WARNING)

    def __repr__(self) -> str:
        return f"PasswordAuth(username={self.username!r}, client_id={self.client_id!r})"

    def _configuration_problems(self, configuration: SmartConfiguration) -> list[str]:
        declared = configuration.grant_types_supported
        if declared and "password" not in declared:
            return [f"grant_types_supported {list(declared)} does not include password"]
        return []

    def _credentials_hint(self) -> str:
        return f"check username {self.username!r}, the password and client_id {self.client_id!r}"

    async def _token_request(self, url: str) -> tuple[dict[str, str], dict[str, str]]:
        form = {"grant_type": "password", "username": self.username, "password": self._password, "scope": self.scope}
        if self.style == "none":
            if self.client_id:
                form["client_id"] = self.client_id
            return form, {}
        return form, self._client_authentication(form)


class StaticBearerAuth(TokenAuth):
    """A bearer token issued out of band ([auth] token / PHG_BEARER_TOKEN). Never refreshed."""

    method = "bearer"
    grant = "(static bearer token)"
    reauthenticate_on_401 = False

    def __init__(self, *, token: str, **kwargs: Any) -> None:
        if not token:
            raise ConfigError("[auth] token (or PHG_BEARER_TOKEN) is required for method = \"bearer\"")
        super().__init__(**kwargs)
        self._static = AccessToken(value=token, expires_in=math.inf, scope=None, refresh_at=math.inf)

    def __repr__(self) -> str:
        return "StaticBearerAuth()"

    async def _request_token(self) -> AccessToken:
        return self._static

    async def token_endpoint(self) -> str:
        return "(none: static bearer token)"
