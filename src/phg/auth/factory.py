"""The one way a configured [auth] becomes an httpx.Auth: ``build_auth(settings, client)``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from phg.auth.keyring import KeyRing
from phg.auth.secret import ClientSecret, PasswordGrant, PublicClient, StaticBearerAuth
from phg.auth.smart import PrivateKeyJwt
from phg.auth.token import ClientAuthentication, ClientCredentials, Grant, TokenAuth
from phg.errors import ConfigError

if TYPE_CHECKING:
    from phg.config import AuthSettings


def build_auth(settings: AuthSettings, client: httpx.AsyncClient | None = None) -> httpx.Auth | None:
    """The auth flow chosen by ``[auth] method``; None for "none" (open test servers).

    ``client`` carries the token and discovery requests: pass the destination's own client so its
    TLS, client certificate and proxy settings apply to the token endpoint too. Missing or wrong
    credentials raise a ConfigError naming the [auth] key.
    """
    if settings.method == "none":
        return None
    if not settings.fhir_base:
        raise ConfigError(f"{settings.source}: [auth] method {settings.method} needs the FHIR base URL")
    if settings.method == "bearer":
        return StaticBearerAuth(settings.token or "", fhir_base=settings.fhir_base,
                                allow_insecure_http=settings.allow_insecure_http)
    return TokenAuth(_grant(settings), _client_authentication(settings), fhir_base=settings.fhir_base,
                     scope=settings.scope, token_url=settings.token_url, client=client,
                     allow_insecure_http=settings.allow_insecure_http,
                     trusted_token_hosts=settings.trusted_token_hosts)


def _grant(settings: AuthSettings) -> Grant:
    if settings.method == "password":
        return PasswordGrant(settings.username or "", settings.password or "")
    return ClientCredentials()


def _client_authentication(settings: AuthSettings) -> ClientAuthentication:
    if settings.method == "smart-backend":
        if not settings.client_id:
            raise ConfigError(f"{settings.source}: [auth] client_id is required for SMART Backend Services "
                              "(phg register obtains one)")
        if settings.key_file is None:
            raise ConfigError(f"{settings.source}: [auth] key_file is required with client_id (phg keys generate)")
        ring = KeyRing(settings.key_file)
        ring.signing_key()  # a missing or unreadable key stops start-up here, naming the file
        return PrivateKeyJwt(settings.client_id, ring, jku=settings.jku,
                             allow_insecure_http=settings.allow_insecure_http)
    if settings.method in ("client-secret-basic", "client-secret-post"):
        return ClientSecret(settings.client_id or "", settings.client_secret or "", settings.method.rsplit("-", 1)[1])
    if settings.client_secret:  # the password grant from a confidential client
        return ClientSecret(settings.client_id or "", settings.client_secret)
    return PublicClient(settings.client_id)
