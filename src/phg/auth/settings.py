"""The [auth] table: every key phg.auth reads, checked in one place.

phg.config keeps the whole [auth] table (``Config.auth``, environment overrides applied) and types
the four SMART keys itself (client_id, key_file, scope, token_url: flags may override those, so
they are taken from the Config fields). Everything else is parsed here; an unknown key or a wrong
value stops start-up with a ConfigError naming ``[auth] key``.

Keys (all optional):

    method                 "smart-backend" | "client-secret-basic" | "client-secret-post" | "password" |
                           "bearer" | "none". Default: "bearer" if token is set, else
                           "client-secret-basic" if client_secret is set and key_file is not, else
                           "smart-backend" if client_id is set, else "none" (open test servers).
    client_id, key_file, scope, token_url      SMART Backend Services (phg.config)
    trusted_token_hosts    host names a discovered token endpoint may be on besides the FHIR server's
                           origin, to receive a client secret or password (a token_url is trusted as is)
    client_secret          client secret (client-secret-*, and password with a confidential client)
    username, password     resource-owner password grant (legacy: OAuth 2.1 removes it)
    token                  a static bearer token issued out of band
    registration_endpoint  RFC 7591 endpoint for phg register (else discovered)
    initial_access_token   RFC 7591 initial access token for phg register
    software_statement     RFC 7591 software statement (a JWT, or a path to a file holding one)
    registration_access_token, registration_client_uri   RFC 7592, written by phg register
    jwks_uri               where the gateway's JWKS is published (phg serve-jwks); registered
                           instead of an inline JWKS by phg register
    jku                    JWKS URL put into the assertion header (must equal the registered one);
                           true = use jwks_uri
    key_publish_delay      seconds a rotated-in key is published before it signs (default 600)
    key_rotation_grace     seconds an old key stays published after that (default 86400)
    ca_file                PEM CA bundle that replaces the default trust store (private CAs)
    client_cert, client_key  PEM client certificate and its key (mode 0600), mutual TLS (RFC 8705)
    proxy                  HTTP(S) proxy URL for the FHIR server and the token endpoint
    encrypt_to             the server's RSA public key (PEM/JWK/JWKS file, or a JWKS https URL):
                           Bundles are sent as a JWE (RSA-OAEP-256 + A256GCM) envelope
    encrypt_kid            which key of that JWKS (default: the only RSA encryption key)

Secrets may stay out of the file: PHG_CLIENT_SECRET, PHG_USERNAME, PHG_PASSWORD, PHG_BEARER_TOKEN,
PHG_INITIAL_ACCESS_TOKEN, PHG_REGISTRATION_ACCESS_TOKEN, PHG_SOFTWARE_STATEMENT (and PHG_AUTH_METHOD)
override the file's values. A config file that holds a secret must be mode 0600 (or it is refused,
like a key file): run ``chmod 600`` on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from phg.auth.keyring import DEFAULT_GRACE, DEFAULT_PUBLISH_DELAY
from phg.config import Config
from phg.errors import ConfigError
from phg.secretfile import require_private
from phg.transport import require_secure_url

log = logging.getLogger(__name__)

METHODS = ("smart-backend", "client-secret-basic", "client-secret-post", "password", "bearer", "none")

# environment variable -> [auth] key (secrets need not sit in the file)
ENVIRONMENT = {
    "PHG_AUTH_METHOD": "method",
    "PHG_CLIENT_SECRET": "client_secret",
    "PHG_USERNAME": "username",
    "PHG_PASSWORD": "password",
    "PHG_BEARER_TOKEN": "token",
    "PHG_INITIAL_ACCESS_TOKEN": "initial_access_token",
    "PHG_REGISTRATION_ACCESS_TOKEN": "registration_access_token",
    "PHG_SOFTWARE_STATEMENT": "software_statement",
}
SECRET_KEYS = frozenset({"client_secret", "password", "token", "initial_access_token", "registration_access_token"})
_SMART_KEYS = {"client_id", "key_file", "scope", "token_url"}
_STRINGS = {"method", "client_secret", "username", "password", "token", "registration_endpoint",
            "initial_access_token", "software_statement", "registration_access_token", "registration_client_uri",
            "jwks_uri", "ca_file", "client_cert", "client_key", "proxy", "encrypt_to", "encrypt_kid"}
_SECONDS = {"key_publish_delay", "key_rotation_grace"}
KNOWN_KEYS = frozenset(_SMART_KEYS | _STRINGS | _SECONDS | {"jku", "trusted_token_hosts"})


@dataclass(frozen=True)
class AuthSettings:
    """[auth] as phg.auth uses it. Secret fields are kept out of repr."""

    method: str
    fhir_base: str | None
    client_id: str | None
    key_file: Path | None
    scope: str
    token_url: str | None
    allow_insecure_http: bool = False
    client_secret: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    registration_endpoint: str | None = None
    initial_access_token: str | None = field(default=None, repr=False)
    software_statement: str | None = field(default=None, repr=False)
    registration_access_token: str | None = field(default=None, repr=False)
    registration_client_uri: str | None = None
    jwks_uri: str | None = None
    jku: str | None = None
    key_publish_delay: float = DEFAULT_PUBLISH_DELAY
    key_rotation_grace: float = DEFAULT_GRACE
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    proxy: str | None = None
    encrypt_to: str | None = None
    encrypt_kid: str | None = None
    trusted_token_hosts: tuple[str, ...] = ()
    source: str = "(defaults)"

    def secrets(self) -> list[str]:
        """Every secret value configured (for tests and log scrubbing)."""
        return [v for v in (self.client_secret, self.password, self.token, self.initial_access_token,
                            self.registration_access_token) if v]


def auth_settings(config: Config, env: Mapping[str, str] | None = None) -> AuthSettings:
    """Parse ``config.auth`` (+ PHG_* secrets from ``env``, default os.environ) into AuthSettings."""
    env = os.environ if env is None else env
    _require_private_config(config)
    table: dict[str, Any] = dict(config.auth)
    origin = {key: config.source for key in table}
    for name, key in ENVIRONMENT.items():
        if env.get(name):
            table[key] = env[name]
            origin[key] = f"environment {name}"
    unknown = sorted(set(table) - KNOWN_KEYS)
    if unknown:
        known = ", ".join(sorted(KNOWN_KEYS))
        raise ConfigError(f"{origin[unknown[0]]}: unknown key {unknown[0]!r} in [auth]; known: {known}")

    def where(key: str) -> str:
        return f"{origin.get(key, config.source)}: [auth] {key}"

    values: dict[str, Any] = {}
    for key in _STRINGS & set(table):
        value = table[key]
        if not isinstance(value, str):
            raise ConfigError(f"{where(key)} must be a string, not {type(value).__name__}")
        values[key] = value.strip() if key not in SECRET_KEYS else value
    for key in _SECONDS & set(table):
        value = table[key]
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where(key)} must be a number of seconds, not {value!r}") from None
        if isinstance(value, bool) or not 0 <= seconds <= 365 * 86400:
            raise ConfigError(f"{where(key)} must be 0..31536000 seconds, not {value!r}")
        values[key] = seconds

    insecure = config.allow_insecure_http
    for key in ("registration_endpoint", "registration_client_uri", "jwks_uri"):
        if key in values:
            _url(values[key], where(key), insecure)
    jku = table.get("jku")
    if jku is True:
        if "jwks_uri" not in values:
            raise ConfigError(f"{where('jku')} = true needs [auth] jwks_uri")
        values["jku"] = values["jwks_uri"]
    elif isinstance(jku, str) and jku:
        _url(jku, where("jku"), insecure)
        values["jku"] = jku
    elif jku not in (None, False, ""):
        raise ConfigError(f"{where('jku')} must be a URL or true, not {jku!r}")
    if "proxy" in values and not values["proxy"].startswith(("http://", "https://", "socks5://")):
        raise ConfigError(f"{where('proxy')} must be an http://, https:// or socks5:// URL")
    if "encrypt_to" in values and values["encrypt_to"].startswith(("http://", "https://")):
        _url(values["encrypt_to"], where("encrypt_to"), insecure)
    for key in ("ca_file", "client_cert", "client_key"):
        if key in values:
            values[key] = Path(values[key]).expanduser()
            if not values[key].is_file():
                raise ConfigError(f"{where(key)}: {values[key]} is not a readable file")
    if "trusted_token_hosts" in table:
        values["trusted_token_hosts"] = _hosts(table["trusted_token_hosts"], where("trusted_token_hosts"))
    if ("client_cert" in values) != ("client_key" in values):
        raise ConfigError(f"{config.source}: [auth] client_cert and client_key go together (mutual TLS)")

    method = values.pop("method", None)
    if method is None:
        if values.get("token"):
            method = "bearer"
        elif values.get("client_secret") and config.key_file is None:
            method = "client-secret-basic"
        elif config.client_id:
            method = "smart-backend"
        else:
            method = "none"
    elif method not in METHODS:
        raise ConfigError(f"{where('method')} must be one of {', '.join(METHODS)}, not {method!r}")
    return AuthSettings(
        method=method,
        fhir_base=config.fhir_base,
        client_id=config.client_id,
        key_file=config.key_file,
        scope=config.scope,
        token_url=config.token_url,
        allow_insecure_http=insecure,
        source=config.source,
        **values,
    )


def _require_private_config(config: Config) -> None:
    """A config file holding a secret is refused when group or others can read it, like a key."""
    held = sorted(SECRET_KEYS & set(config.auth))
    if held and config.source != "(defaults)":
        require_private(config.source, f"the config file (it holds [auth] {held[0]})")


def _hosts(value: Any, where: str) -> tuple[str, ...]:
    """trusted_token_hosts: a list of host names or IP addresses (no scheme, port or path), compared
    with the token endpoint's host (httpx.URL.host: lower case, IPv6 without brackets)."""
    if not isinstance(value, list) or not all(isinstance(host, str) for host in value):
        raise ConfigError(f"{where} must be a list of host names, such as [\"auth.example.org\"]")
    hosts = tuple(host.strip().strip("[]").lower() for host in value)
    for host in hosts:
        try:
            parsed = httpx.URL(f"https://[{host}]/" if ":" in host else f"https://{host}/")
        except httpx.InvalidURL:
            parsed = None
        if not host or parsed is None or parsed.host != host:
            raise ConfigError(f"{where}: {host!r} is not a host name (give it without scheme, port or path, "
                              "such as \"auth.example.org\")")
    return hosts


def _url(value: str, where: str, insecure: bool) -> None:
    try:
        require_secure_url(value, where, allow_insecure_http=insecure)
    except ConfigError as exc:
        raise ConfigError(str(exc)) from None
