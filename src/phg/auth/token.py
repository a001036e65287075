"""The token cache every OAuth grant shares, composed with a grant and a client authentication.

``TokenAuth(grant, client_auth, ...)`` is one httpx.Auth: the grant says what is asked for
(``ClientCredentials`` here, ``PasswordGrant`` in phg.auth.secret: RFC 6749 sections 4.4 and 4.3),
the client authentication how the client proves who it is at the token endpoint (RFC 6749
section 2.3, the ``token_endpoint_auth_method`` of RFC 7591 section 2: ``PrivateKeyJwt`` in
phg.auth.smart, ``ClientSecret`` and ``PublicClient`` in phg.auth.secret). A static bearer token
needs no cache: ``StaticBearerAuth`` in phg.auth.secret. The rules live here once:

- one token shared by all concurrent requests, with a single token request in flight;
- refresh ``refresh_margin`` seconds before expiry (but never in the first half of a short lifetime);
- a 401 from the resource server invalidates the token and the request is re-sent once;
- the token is only ever sent to the FHIR server's own origin;
- a client authentication that sends a reusable secret (client secret), or a grant that does
  (password), sends it only to a token endpoint the config names (``token_url``,
  ``trusted_token_hosts``) or one on the FHIR server's origin, never to wherever a discovery
  document points; a signed assertion may follow discovery (its ``aud`` binds it to that endpoint,
  RFC 7523 section 3);
- RFC 6749 section 5.2 error answers become an AuthError saying what to fix; 408/429/5xx and
  connection trouble a TransientDeliveryError (retry later, ``reached`` False when no connection);
- the token endpoint is ``token_url`` or found by SMART discovery (lazily, once).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from phg import metrics
from phg.auth.discovery import SmartConfiguration, discover
from phg.errors import AuthError, ConfigError
from phg.terminal import printable
from phg.transport import (
    TRANSIENT_STATUSES,
    connection_error,
    exchange,
    origin,
    redact_url,
    require_secure_url,
    transient_error,
)

log = logging.getLogger(__name__)

# SMART backend-services lists expires_in as required, recommended 300 s; a server that omits it
# is assumed to use the recommended value (a 401 later still triggers one re-authentication).
DEFAULT_EXPIRES_IN = 300.0
TOKEN_TIMEOUT = httpx.Timeout(30.0)

# What to fix, per RFC 6749 section 5.2 error code. Some servers answer invalid_grant where the
# spec says invalid_client (authentication failure), so both get the grant's and the client's hints.
_HINTS = {
    "invalid_scope": "the requested scope {scope!r} is not allowed for this client; "
    "request only granted scopes or have them granted by the server administrator",
    "unauthorized_client": "client {client_id!r} is not allowed the {grant} grant; "
    "register it for this grant (phg register) or ask the server administrator",
    "unsupported_grant_type": "this token endpoint does not offer the {grant} grant; check token_url and [auth] method",
    "invalid_request": "the server found the token request malformed; check token_url and that the "
    "server supports {description}",
}


@dataclass(frozen=True)
class AccessToken:
    """A bearer token from the token endpoint. ``value`` is kept out of repr so it never lands
    in a log line or traceback by accident. ``refresh_at`` is on the auth's clock."""

    value: str = field(repr=False)
    expires_in: float
    scope: str | None
    refresh_at: float


class Grant(Protocol):
    """What the token request asks for: its ``grant_type`` and that grant's own form fields."""

    grant_type: str
    sends_reusable_secret: bool  # True: the fields carry a secret usable elsewhere (a password)

    def fields(self) -> dict[str, str]: ...

    def credentials_hint(self) -> str | None:
        """What to check when the server refuses the grant's credentials (None: the grant has none)."""
        ...

    def configuration_problems(self, configuration: SmartConfiguration) -> list[str]: ...


class ClientAuthentication(Protocol):
    """How the client authenticates at the token endpoint; ``name`` is its RFC 7591
    token_endpoint_auth_method."""

    name: str
    client_id: str | None
    sends_reusable_secret: bool

    async def authenticate(self, url: str, form: dict[str, str]) -> dict[str, str]:
        """Add this client's credentials for a token request to ``url``: form fields into
        ``form``; the extra headers are returned."""
        ...

    def credentials_hint(self) -> str: ...

    def configuration_problems(self, configuration: SmartConfiguration) -> list[str]: ...


class ClientCredentials:
    """grant_type=client_credentials (RFC 6749 section 4.4): the client acts on its own behalf."""

    grant_type = "client_credentials"
    sends_reusable_secret = False

    def __repr__(self) -> str:
        return "ClientCredentials()"

    def fields(self) -> dict[str, str]:
        return {}

    def credentials_hint(self) -> str | None:
        return None

    def configuration_problems(self, configuration: SmartConfiguration) -> list[str]:
        return configuration.undeclared("grant_types_supported", self.grant_type)


def require_own_origin(request: httpx.Request, fhir_base: str) -> None:
    """A bearer token goes only to the FHIR server's own origin (RFC 6750 section 5.3: never hand
    it to another party)."""
    if origin(request.url) != origin(httpx.URL(fhir_base)):
        raise ConfigError(
            f"refusing to send the bearer token for {redact_url(fhir_base)} to another origin ({request.url.host})"
        )


class TokenAuth(httpx.Auth):
    """A token cache composed with a grant and a client authentication; use with an
    ``httpx.AsyncClient``.

    Token and discovery requests go through ``client`` (or a private AsyncClient, closed by
    ``aclose``) with ``auth=None``, so the same client that carries this auth may be passed in
    (then its TLS settings, client certificate and proxy apply to the token endpoint too).
    ``clock`` is monotonic seconds, injectable for tests.
    """

    def __init__(
        self,
        grant: Grant,
        client_auth: ClientAuthentication,
        *,
        fhir_base: str,
        scope: str,
        token_url: str | None = None,
        refresh_margin: float = 30.0,
        client: httpx.AsyncClient | None = None,
        allow_insecure_http: bool = False,
        trusted_token_hosts: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not scope.strip():
            raise ConfigError("[auth] scope is empty (the token request requires it)")
        require_secure_url(fhir_base, "FHIR base", allow_insecure_http=allow_insecure_http)
        if token_url is not None:
            require_secure_url(token_url, "token endpoint", allow_insecure_http=allow_insecure_http)
        self.grant = grant
        self.client_auth = client_auth
        self.fhir_base = fhir_base.rstrip("/")
        self.scope = scope
        self._token_url = token_url
        self._refresh_margin = refresh_margin
        self._allow_insecure_http = allow_insecure_http
        self._trusted_hosts = frozenset(host.lower() for host in trusted_token_hosts)
        self._clock = clock
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=TOKEN_TIMEOUT)
        self._origin = origin(httpx.URL(self.fhir_base))
        self._token: AccessToken | None = None
        self._configuration: SmartConfiguration | None = None
        self._token_lock = asyncio.Lock()
        self._discovery_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"TokenAuth({self.grant!r}, {self.client_auth!r})"

    @property
    def description(self) -> str:
        """The grant and the client authentication, for messages."""
        return f"the {self.grant.grant_type} grant with {self.client_auth.name} client authentication"

    # ------------------------------------------------------------------ the flow
    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("TokenAuth needs an httpx.AsyncClient (token refresh is async)")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        require_own_origin(request, self.fhir_base)
        token = await self.token()
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if response.status_code != 401:
            return
        # The token may have been revoked or expired early: get a new one and try once more.
        # A second 401 goes back to the caller as is.
        log.info("resource server answered 401 for %s; re-authenticating once", request.url.path)
        self._invalidate(token)
        token = await self.token()
        request.headers["Authorization"] = f"Bearer {token.value}"
        yield request

    async def token(self) -> AccessToken:
        """A valid access token, from the cache or from one token request shared by all callers."""
        current = self._token
        if current is not None and self._clock() < current.refresh_at:
            return current
        async with self._token_lock:
            current = self._token
            if current is None or self._clock() >= current.refresh_at:
                current = self._token = await self._request_token()
            return current

    async def configuration(self) -> SmartConfiguration:
        """The server's SMART configuration, discovered once (also for ``phg doctor``)."""
        async with self._discovery_lock:
            if self._configuration is None:
                self._configuration = await discover(
                    self._client, self.fhir_base, allow_insecure_http=self._allow_insecure_http
                )
                for problem in self.configuration_problems(self._configuration):
                    log.warning("SMART configuration of %s: %s", self.fhir_base, problem)
            return self._configuration

    def configuration_problems(self, configuration: SmartConfiguration) -> list[str]:
        """What the server's SMART configuration declares that rules out this grant or client
        authentication (only declared lists are checked)."""
        return self.grant.configuration_problems(configuration) + self.client_auth.configuration_problems(configuration)

    async def token_endpoint(self) -> str:
        """``token_url``, else the discovered endpoint (refused for a reusable secret when untrusted)."""
        if self._token_url:
            return self._token_url
        url = (await self.configuration()).token_endpoint
        if self.grant.sends_reusable_secret or self.client_auth.sends_reusable_secret:
            self._require_trusted(url)
        return url

    def _require_trusted(self, url: str) -> None:
        """A discovered token endpoint may receive a client secret or password only on the FHIR
        server's origin or on a host of [auth] trusted_token_hosts: a discovery document is the
        server's word, and a secret sent once is gone (RFC 6749 section 10.1, RFC 9700 section 4.1)."""
        parsed = httpx.URL(url)
        if origin(parsed) == self._origin or parsed.host.lower() in self._trusted_hosts:
            return
        shown = redact_url(url)
        raise AuthError(
            f"the SMART configuration of {redact_url(self.fhir_base)} names the token endpoint {shown}, on another "
            f"origin than the FHIR server: phg sends the credentials of {self.description} only where the config "
            f"says; if it is the server's real token endpoint, add [auth] token_url = \"{shown}\" or "
            f"[auth] trusted_token_hosts = [\"{parsed.host}\"]"
        )

    async def aclose(self) -> None:
        """Close the private HTTP client, if this auth created one."""
        if self._owns_client:
            await self._client.aclose()

    def _invalidate(self, token: AccessToken) -> None:
        # Only drop the token that was refused: concurrent 401s must not discard a newer one.
        if self._token is token:
            self._token = None

    async def _request_token(self) -> AccessToken:
        """One token request, built from the grant and the client authentication, sent and judged here;
        counted in phg.metrics (requests, and failures: refused, unreachable or a bad answer)."""
        metrics.TOKEN_REQUESTS.inc()
        with metrics.TOKEN_FAILURES.count_exceptions():
            return await self._send_token_request()

    async def _send_token_request(self) -> AccessToken:
        url = await self.token_endpoint()
        form = {"grant_type": self.grant.grant_type, **self.grant.fields(), "scope": self.scope}
        headers = await self.client_auth.authenticate(url, form)
        started = self._clock()
        try:
            response = await exchange(self._client, "POST", url, data=form,
                                      headers={"Accept": "application/json", **headers}, auth=None)
        except httpx.TransportError as exc:
            raise connection_error(exc, f"token endpoint {redact_url(url)} unreachable") from exc
        if response.status_code in TRANSIENT_STATUSES:
            raise transient_error(response, "token endpoint")
        body = _json_object(response)
        if not 200 <= response.status_code < 300:  # RFC 6749 section 5.1 says 200; C3-PRO answers 202
            raise self._refusal(redact_url(url), response.status_code, body)
        return self._accept(redact_url(url), body, started)

    def _accept(self, url: str, body: dict[str, Any], started: float) -> AccessToken:
        """Any 2xx with a valid token body (access_token, token_type bearer) is a token."""
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError(f"token endpoint {url} answered without an access_token")
        token_type = body.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise AuthError(f"token endpoint {url} issued token_type {token_type!r}; only bearer is supported")
        expires_in = _seconds(body.get("expires_in"))
        # Refresh `margin` seconds before expiry, but never in the first half of a short lifetime
        # (a 40 s token with a 30 s margin would otherwise be refreshed after 10 s).
        refresh_after = max(expires_in - self._refresh_margin, expires_in / 2)
        scope = body.get("scope") if isinstance(body.get("scope"), str) else None
        if scope is not None and set(scope.split()) != set(self.scope.split()):
            log.info("token endpoint granted scope %r (requested %r)", scope, self.scope)
        log.debug("token refreshed, expires in %d s", expires_in)
        return AccessToken(value=value, expires_in=expires_in, scope=scope, refresh_at=started + refresh_after)

    def _refusal(self, url: str, status: int, body: dict[str, Any]) -> AuthError:
        """An AuthError saying what the server refused and what to fix (RFC 6749 section 5.2)."""
        error = body.get("error")
        if not isinstance(error, str):
            return AuthError(
                f"token endpoint {url} answered HTTP {status} without an OAuth error; "
                "check token_url (it must be the token endpoint itself)"
            )
        description = body.get("error_description")
        description = printable(description[:500]) if isinstance(description, str) else "no error_description"
        message = f"{printable(error[:100])}: {description} (token endpoint {url})"
        if error in ("invalid_client", "invalid_grant"):
            hints = (self.grant.credentials_hint(), self.client_auth.credentials_hint())
            message += "; " + "; ".join(hint for hint in hints if hint)
        elif error in _HINTS:
            message += "; " + _HINTS[error].format(
                client_id=self.client_auth.client_id, scope=self.scope, grant=self.grant.grant_type,
                description=self.description,
            )
        return AuthError(message)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _seconds(value: Any) -> float:
    """expires_in as positive seconds, a number or a numeric string (C3-PRO's README shows "3600");
    absent or unusable values fall back to the SMART default."""
    if isinstance(value, bool):
        return DEFAULT_EXPIRES_IN
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return DEFAULT_EXPIRES_IN
    return seconds if seconds > 0 and math.isfinite(seconds) else DEFAULT_EXPIRES_IN
