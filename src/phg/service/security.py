"""Who may use the service: API keys, client certificates, loopback, and cross-site requests.

The policy (docs/service.md, "Security"):

- **Loopback is open** when the service listens on a loopback address, the peer is a loopback address,
  no proxy header (Forwarded, X-Forwarded-*, X-Real-IP) says the request came from elsewhere, and the
  Host header names loopback (a page on another site that re-binds its DNS name to 127.0.0.1 is then
  refused: its requests carry its own name). `[api] require_auth = true` closes loopback too (a machine
  with other users).
- **Otherwise a credential is required**: an API key, sent as `Authorization: Bearer <key>` (RFC 6750
  2.1), as `X-API-Key: <key>`, or as the password of HTTP Basic (RFC 7617, for a browser opening the
  status page; the user name is ignored); or a client certificate: with `[api] client_ca` the TLS
  handshake requires one issued by that CA on every connection (uvicorn's ssl_cert_reqs=CERT_REQUIRED),
  so a request that arrived over it is authenticated. A missing or unknown key is 401 with the
  challenges of RFC 6750 3 and RFC 7617 2; a revoked key is refused like an unknown one.
- **/healthz and /readyz are open** (probes cannot easily carry secrets; they say alive/ready and which
  destination is stopped, nothing else); /metrics, /openapi.json and everything else need a credential.
- **Cross-site requests**: a key in a request header is never sent by a browser on its own, so such a
  request cannot be forged by another site. Loopback, client certificates and Basic are ambient (the
  browser adds them), so a state-changing request (POST, PUT, PATCH, DELETE) that relies on them must
  come from the service's own origin: `Sec-Fetch-Site: cross-site` is refused, and an `Origin` (else
  `Referer`) header must equal the request's own origin (scheme and Host) or one of
  `[api] allowed_origins` (RFC 6454 serialization). A request with neither header is not from a
  browser (browsers send Origin on every POST: Fetch standard, "append a request Origin header").

API keys are 256-bit random strings; only their SHA-256 is stored (phg.secretfile: a 0600 file). A
slow password hash (bcrypt, scrypt, Argon2) protects guessable passwords from a stolen hash file; a
random 256-bit key cannot be guessed from its hash, so one SHA-256 is as strong and keeps every request
cheap (a slow hash per request would hand any client a way to burn CPU). The comparison is
constant-time (hmac.compare_digest) all the same.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from phg.config import ApiSettings
from phg.errors import ConfigError
from phg.secretfile import require_private, write_private
from phg.transport import is_loopback

log = logging.getLogger(__name__)

KEY_PREFIX = "phg_"  # makes a leaked key recognisable to secret scanners
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# The SMART launch and the view it ends on: opened by a clinician's browser inside the EHR, which holds no
# API key; OAuth (phg.service.smart) and the unguessable session id in the path (phg.service.view) decide.
SESSION_PREFIXES = ("/smart/", "/view/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # RFC 9110 9.2.1
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip")
# Mozilla's "intermediate" TLS 1.2 suites (TLS 1.3 suites are not affected by set_ciphers); uvicorn's own
# default, "TLSv1", would admit CBC and non-forward-secret suites.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
# The OpenAPI 3.1 document's part (merged by phg.service.api): the ways to authenticate; `{}` first because
# loopback needs none (OAS 3.1 4.8.30: an empty requirement makes security optional).
OPENAPI: dict[str, Any] = {
    "components": {"securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (`phg api-key create`), RFC 6750"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same API key"},
        "basic": {"type": "http", "scheme": "basic",
                  "description": "The API key as the password, any user name (a browser opening the status page)"},
        "clientCertificate": {"type": "mutualTLS", "description": "A client certificate issued by [api] client_ca"},
    }},
    "security": [{}, {"bearer": []}, {"apiKey": []}, {"basic": []}, {"clientCertificate": []}],
}


# ------------------------------------------------------------------------------------------ the key store


@dataclass(frozen=True)
class ApiKey:
    """A stored key: its id (shown, used to revoke), a name for people, the SHA-256 of the key (hex),
    when it was created and, once revoked, when."""

    id: str
    name: str
    sha256: str
    created: str
    revoked: str | None = None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """The API keys, in one JSON file of mode 0600 ({"keys": [ApiKey...]}). The running service reads it
    again whenever it changes, so `phg api-key revoke` takes effect on the next request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int, int] | None = None
        self._keys: list[ApiKey] = []

    def keys(self) -> list[ApiKey]:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return []
        seen = (info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode)  # a chmod is noticed too
        if self._seen != seen:
            self._keys = self._read()
            self._seen = seen
        return self._keys

    def _read(self) -> list[ApiKey]:
        require_private(self.path, "the API key file")
        try:
            return [ApiKey(**entry) for entry in json.loads(self.path.read_text(encoding="utf-8"))["keys"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"the API key file {self.path} is not phg's ({exc.__class__.__name__}: {exc}); "
                              "remove it and create the keys again with `phg api-key create`") from None

    def verify(self, presented: str) -> ApiKey | None:
        """The live key `presented` is, or None (unknown or revoked)."""
        digest = _digest(presented)
        found = None
        for key in self.keys():  # every entry compared, constant-time: no early exit to time
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found if found is not None and found.revoked is None else None

    @contextmanager
    def _changing(self) -> Iterator[list[ApiKey]]:
        """The keys to change, under an exclusive lock (two `phg api-key create` at once keep both)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._seen = None
            keys = list(self.keys())
            yield keys
            write_private(self.path, json.dumps({"keys": [asdict(key) for key in keys]}, indent=1) + "\n")

    def create(self, name: str) -> tuple[ApiKey, str]:
        """A new key: (its record, the key itself: shown once, stored only as its hash)."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)  # 32 random bytes = 256 bits
        with self._changing() as keys:
            key_id = secrets.token_hex(6)
            while key_id in {key.id for key in keys}:
                key_id = secrets.token_hex(6)
            record = ApiKey(key_id, name, _digest(secret), _now())
            keys.append(record)
        return record, secret

    def revoke(self, key_id: str) -> ApiKey:
        with self._changing() as keys:
            for index, key in enumerate(keys):
                if key.id == key_id:
                    keys[index] = key if key.revoked else ApiKey(**{**asdict(key), "revoked": _now()})
                    return keys[index]
            raise ConfigError(f"no API key {key_id!r} in {self.path} (`phg api-key list` shows them)")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------ the policy


def _host_name(host_header: str) -> str:
    """The host of a Host header value ("[::1]:8470" -> "::1", "localhost:8470" -> "localhost")."""
    match = re.fullmatch(r"\[([^\]]*)\](?::\d*)?|([^:]*)(?::\d*)?", host_header)
    return (match[1] or match[2] or "") if match else ""


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    challenge: bool = False  # send WWW-Authenticate
    invalid_key: bool = False


class Guard:
    """The policy of the module docstring, as one function of a request (check)."""

    def __init__(self, listen_host: str, keys: KeyStore, *, client_ca: bool = False, require_auth: bool = False,
                 allowed_origins: tuple[str, ...] = ()) -> None:
        self.open_loopback = is_loopback(listen_host) and not require_auth
        self.keys = keys
        self.client_ca = client_ca
        self.allowed_origins = frozenset(origin.lower().rstrip("/") for origin in allowed_origins)

    @classmethod
    def from_settings(cls, api: ApiSettings) -> Guard:
        return cls(api.listen[0], KeyStore(api.keys_file), client_ca=api.client_ca is not None,
                   require_auth=api.require_auth, allowed_origins=api.allowed_origins)

    def check(self, scope: Scope) -> Refusal | None:
        """None when the request may go on; else why not."""
        method, headers = scope.get("method", "WEBSOCKET"), Headers(scope=scope)
        if (scope["path"] in OPEN_PATHS or scope["path"].startswith(SESSION_PREFIXES)) and method in ("GET", "HEAD"):
            return None
        presented = _presented_key(headers)
        if presented is not None:
            key, ambient = presented
            if key is None or self.keys.verify(key) is None:
                return Refusal(401, "unknown or revoked API key", challenge=True, invalid_key=True)
            return self._same_origin(scope, headers) if ambient else None
        if self.client_ca and scope.get("scheme") == "https":  # the handshake required a certificate of client_ca
            return self._same_origin(scope, headers)
        if self.open_loopback and self._from_loopback(scope, headers):
            return self._same_origin(scope, headers)
        return Refusal(401, "an API key or a client certificate is required", challenge=True)

    @staticmethod
    def _from_loopback(scope: Scope, headers: Headers) -> bool:
        client = scope.get("client")
        return (client is not None and is_loopback(client[0]) and not any(h in headers for h in PROXY_HEADERS)
                and is_loopback(_host_name(headers.get("host", ""))))

    def _same_origin(self, scope: Scope, headers: Headers) -> Refusal | None:
        """Cross-site request forgery: a state-changing request from a browser must come from our own
        origin (OWASP CSRF cheat sheet, "Verifying Origin With Standard Headers")."""
        if scope.get("method", "WEBSOCKET") in SAFE_METHODS:  # a WebSocket handshake is checked (RFC 6455 10.2)
            return None
        if headers.get("sec-fetch-site") == "cross-site":
            return Refusal(403, "cross-site request refused (Sec-Fetch-Site: cross-site)")
        source = headers.get("origin") or _referer_origin(headers.get("referer"))
        if source is None:
            return None
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
        if source.lower() not in self.allowed_origins | {own}:
            return Refusal(403, f"cross-origin request refused: the request came from {source[:80]!r}, "
                                f"not from {own!r} (add the origin to [api] allowed_origins if it is yours)")
        return None


def _presented_key(headers: Headers) -> tuple[str | None, bool] | None:
    """(the key, whether the browser sends it on its own: Basic) when the request carries one; (None, ...)
    when it carries a malformed one; None when it carries none."""
    if "x-api-key" in headers:
        return headers["x-api-key"].strip(), False
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":  # auth-scheme is case-insensitive: RFC 9110 11.1
        return value.strip() or None, False
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2] or None, True
        except (binascii.Error, UnicodeDecodeError):
            return None, True
    return None


def _referer_origin(referer: str | None) -> str | None:
    match = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*)", referer or "")
    return match[1] if match else None


# ------------------------------------------------------------------------------------------ the ASGI wrapper


class Protect:
    """ASGI middleware applying a Guard to every HTTP and WebSocket request."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app, self.guard = app, guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            refusal = self.guard.check(scope) if scope["type"] in ("http", "websocket") else None
        except ConfigError as exc:  # the key file was made readable to others, or damaged, while serving
            log.error("%s", exc)
            refusal = Refusal(503, "the gateway cannot check API keys now (its key file is unusable: see its log)")
        if refusal is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("?",)
        log.info("refused %s from %s: %s", scope.get("method", "WEBSOCKET"), client[0], refusal.reason)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # RFC 6455 7.4.1: policy violation
            return
        response = JSONResponse({"error": refusal.reason}, status_code=refusal.status)
        if refusal.challenge:
            bearer = 'Bearer realm="phg"' + (', error="invalid_token"' if refusal.invalid_key else "")
            response.raw_headers += [(b"www-authenticate", bearer.encode()),
                                     (b"www-authenticate", b'Basic realm="phg", charset="UTF-8"')]
        await response(scope, receive, send)


def protect(app: ASGIApp, ctx: Any) -> ASGIApp:
    """The app behind the Guard of ctx.config.api (the defaults when there is no [api] table). The key
    file is read now: a damaged one stops start-up rather than the first request."""
    api = ctx.config.api or ApiSettings()
    guard = Guard.from_settings(api)
    if not (guard.open_loopback or guard.keys.keys() or api.client_ca):
        log.warning("[api] requires an API key or a client certificate, and there is neither: nobody can use the "
                    "service until `phg api-key create NAME` (keys file %s)", api.keys_file)
    return Protect(app, guard)


# ------------------------------------------------------------------------------------------ the server


def server_options(api: ApiSettings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for [api]: TLS when tls_cert is set (a client certificate of
    client_ca required on every connection when that is set), and proxy_headers off: the policy needs
    the real peer address, which uvicorn would otherwise replace with X-Forwarded-For's."""
    options: dict[str, Any] = {"proxy_headers": False}
    if api.tls_cert is not None:
        options |= {"ssl_certfile": str(api.tls_cert), "ssl_keyfile": str(api.tls_key), "ssl_ciphers": CIPHERS}
    if api.client_ca is not None:
        options |= {"ssl_ca_certs": str(api.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options
