"""Dynamic client registration (RFC 7591) and its management (RFC 7592), and storing the result.

``phg register`` sends the gateway's client metadata to the server's registration endpoint
(``[auth] registration_endpoint``, else the SMART configuration's ``registration_endpoint``):
grant_types client_credentials, token_endpoint_auth_method private_key_jwt with the public JWKS
inline or as ``jwks_uri`` (SMART prefers a JWKS URL), the scopes, and optionally an initial access
token (RFC 7591 section 3, as a bearer token) and a software statement (section 2.3). The issued
client_id, the registration access token and the client configuration URI (RFC 7592 section 3) are
written into the config file's [auth] table, so ``phg run`` uses them with no further step.

With the RFC 7592 registration access token phg can later read, update (e.g. a rotated key in an
inline JWKS) or delete the registration. A server may rotate that token on every management call;
the new one is stored each time.

An answer is checked before anything of it is stored: its token_endpoint_auth_method must be one
phg uses (never "none", which would turn authentication off), a client_secret_* method comes with
a client_secret, and the registration_client_uri (which receives the registration access token)
must be on the origin of the endpoint that answered (RFC 7592 section 3 lets the server choose the
URI, not its origin; a URI elsewhere would take the token to a third party).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from phg.errors import AuthError, ConfigError
from phg.secretfile import write_private
from phg.terminal import printable
from phg.transport import TRANSIENT_STATUSES, connection_error, origin, redact_url, transient_error

log = logging.getLogger(__name__)

# [auth] method for each RFC 7591 token_endpoint_auth_method phg can use
METHODS = {
    "private_key_jwt": "smart-backend",
    "client_secret_basic": "client-secret-basic",
    "client_secret_post": "client-secret-post",
}
_HINTS = {
    "invalid_client_metadata": "the server refused a metadata value (scope, grant type, auth method or JWKS); "
    "see the description and adjust [auth] scope or the phg register options",
    "invalid_software_statement": "the software statement is malformed or its signature is not accepted",
    "unapproved_software_statement": "the server does not trust this software statement's issuer",
    "invalid_redirect_uri": "the server insists on redirect URIs; it may not support client_credentials clients",
}


@dataclass(frozen=True)
class Registration:
    """What the server issued. Secrets are kept out of repr."""

    client_id: str
    token_endpoint_auth_method: str
    client_secret: str | None = field(default=None, repr=False)
    registration_access_token: str | None = field(default=None, repr=False)
    registration_client_uri: str | None = None
    scope: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    def config_values(self) -> dict[str, str]:
        """The [auth] keys to store."""
        values = {"client_id": self.client_id, "method": METHODS[self.token_endpoint_auth_method]}
        for key in ("client_secret", "registration_access_token", "registration_client_uri"):
            value = getattr(self, key)
            if value:
                values[key] = value
        return values


def client_metadata(
    *,
    auth_method: str = "private_key_jwt",
    scope: str,
    jwks: Mapping[str, Any] | None = None,
    jwks_uri: str | None = None,
    signing_alg: str | None = None,
    client_name: str | None = None,
    software_statement: str | None = None,
) -> dict[str, Any]:
    """RFC 7591 section 2 metadata of a backend-services (client_credentials) client."""
    if auth_method not in METHODS:
        raise ConfigError(f"token_endpoint_auth_method must be one of {', '.join(METHODS)}, not {auth_method!r}")
    metadata: dict[str, Any] = {
        "grant_types": ["client_credentials"],
        "response_types": [],  # no browser flows: nothing is ever redirected
        "token_endpoint_auth_method": auth_method,
        "scope": scope,
    }
    if auth_method == "private_key_jwt":
        if (jwks is None) == (jwks_uri is None):
            raise ConfigError("private_key_jwt registration needs the JWKS inline or a jwks_uri (exactly one)")
        if jwks_uri is not None:
            metadata["jwks_uri"] = jwks_uri
        else:
            metadata["jwks"] = dict(jwks or {})
        if signing_alg:
            metadata["token_endpoint_auth_signing_alg"] = signing_alg
    if client_name:
        metadata["client_name"] = client_name
    if software_statement:
        metadata["software_statement"] = software_statement
    return metadata


async def register(
    client: httpx.AsyncClient,
    endpoint: str,
    metadata: Mapping[str, Any],
    *,
    initial_access_token: str | None = None,
) -> Registration:
    """POST the metadata (RFC 7591 section 3.1); the 201 answer (section 3.2.1) as a Registration."""
    headers = {"Accept": "application/json"}
    if initial_access_token:
        headers["Authorization"] = f"Bearer {initial_access_token}"
    response = await _call(client, "POST", endpoint, headers, metadata)
    if response.status_code not in (200, 201):
        raise _refusal("registration", endpoint, response, initial_access_token is not None)
    return _registration(response, endpoint, metadata)


# ---------------------------------------------------------------------------------------------- C3-PRO

# C3-PRO's 201 answer ends its object with '",\n}' (S RegisterServer.java 67-73): one comma before the
# closing brace, which JSON forbids. Exactly that comma is dropped; anything else stays invalid.
_C3PRO_TRAILING_COMMA = re.compile(r'(?<=["\d\]}el]),(\s*\}\s*)\Z')  # right after a value


def c3pro_json(text: str) -> Any:
    """JSON, or C3-PRO's registration answer with its one trailing comma before the final brace."""
    try:
        return json.loads(text)
    except ValueError:
        if not _C3PRO_TRAILING_COMMA.search(text):
            raise
    return json.loads(_C3PRO_TRAILING_COMMA.sub(r"\1", text))


def c3pro_metadata(receipt_data: str, client_name: str = "phg") -> dict[str, Any]:
    """The body C3-PRO's apps send (p2/OAuth2 OAuth2DynReg.swift 92-140 with the iOS framework's
    OAuth2DynRegAppStore.swift 69-74); the server reads only receipt-data (RegisterServer.java 98-103)."""
    return {"client_name": client_name, "grant_types": ["client_credentials", "refresh_token"],
            "token_endpoint_auth_method": "client_secret_basic", "sandbox": False, "receipt-data": receipt_data}


async def register_c3pro(client: httpx.AsyncClient, root: str, antispam: str, receipt_data: str,
                         client_name: str = "phg") -> Registration:
    """POST <root>/register with the Antispam header (RegisterServer.java 46, 86-95); 201 with
    client_id and client_secret (client_secret_basic, no registration access token)."""
    endpoint = f"{root.rstrip('/')}/register"
    headers = {"Accept": "application/json", "Content-Type": "application/json; charset=utf-8", "Antispam": antispam}
    metadata = c3pro_metadata(receipt_data, client_name)
    try:
        response = await client.post(endpoint, headers=headers, content=json.dumps(metadata).encode(), auth=None)
    except httpx.TransportError as exc:
        raise connection_error(exc, f"registration endpoint {redact_url(endpoint)} unreachable") from exc
    if response.status_code in TRANSIENT_STATUSES:
        raise transient_error(response, "registration endpoint")
    if response.status_code != 201:
        error = _refusal("registration", endpoint, response, True)
        if response.status_code == 401:
            raise AuthError(f"{error}; check the Antispam token (antispam or antispam_file) and receipt_data")
        raise error
    found = _registration(response, endpoint, metadata, parse=c3pro_json)
    if found.token_endpoint_auth_method != "client_secret_basic":
        raise AuthError(f"registration endpoint {redact_url(endpoint)} registered {found.token_endpoint_auth_method}; "
                        "C3-PRO clients use client_secret_basic, so nothing was stored")
    return found


async def read_registration(client: httpx.AsyncClient, uri: str, access_token: str) -> Registration:
    """GET the client configuration (RFC 7592 section 2.1)."""
    response = await _call(client, "GET", uri, _bearer(access_token))
    if response.status_code != 200:
        raise _refusal("registration read", uri, response, True)
    return _registration(response, uri, {}, access_token)


async def update_registration(client: httpx.AsyncClient, uri: str, access_token: str,
                              metadata: Mapping[str, Any]) -> Registration:
    """PUT the full metadata, client_id included (RFC 7592 section 2.2)."""
    response = await _call(client, "PUT", uri, _bearer(access_token), metadata)
    if response.status_code != 200:
        raise _refusal("registration update", uri, response, True)
    return _registration(response, uri, metadata, access_token)


async def delete_registration(client: httpx.AsyncClient, uri: str, access_token: str) -> None:
    """DELETE the registration (RFC 7592 section 2.3): the client_id stops working."""
    response = await _call(client, "DELETE", uri, _bearer(access_token))
    if response.status_code not in (200, 204):
        raise _refusal("registration delete", uri, response, True)


def _bearer(token: str) -> dict[str, str]:
    return {"Accept": "application/json", "Authorization": f"Bearer {token}"}


async def _call(client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str],
                body: Mapping[str, Any] | None = None) -> httpx.Response:
    try:
        response = await client.request(method, url, headers=headers, json=dict(body) if body is not None else None,
                                        auth=None)
    except httpx.TransportError as exc:
        raise connection_error(exc, f"registration endpoint {redact_url(url)} unreachable") from exc
    if response.status_code in TRANSIENT_STATUSES:
        raise transient_error(response, "registration endpoint")
    return response


def _registration(response: httpx.Response, url: str, sent: Mapping[str, Any],
                  previous_token: str | None = None, parse: Any = json.loads) -> Registration:
    """The answer (RFC 7591 section 3.2.1, RFC 7592 section 3) as a Registration, once it is checked."""
    try:
        body = parse(response.text)
    except ValueError:
        body = None
    where = f"registration endpoint {redact_url(url)}"
    if not isinstance(body, dict) or not isinstance(body.get("client_id"), str) or not body["client_id"]:
        raise AuthError(f"{where} answered HTTP {response.status_code} without a client_id")
    # RFC 7591 section 2: an omitted token_endpoint_auth_method means client_secret_basic
    method = body.get("token_endpoint_auth_method") or sent.get("token_endpoint_auth_method") or "client_secret_basic"
    if method not in METHODS:
        raise AuthError(f"{where} registered token_endpoint_auth_method {printable(str(method)[:100])!r}; phg "
                        f"authenticates only with {', '.join(METHODS)}, so nothing was stored; register with one "
                        "of them (phg register --method)")
    secret, token, uri = (_string(body, key, where) for key in
                          ("client_secret", "registration_access_token", "registration_client_uri"))
    if method.startswith("client_secret") and not secret:
        raise AuthError(f"{where} registered {method} without issuing a client_secret; nothing was stored")
    if uri is not None:
        _require_same_origin(uri, url, where)
    public = {k: v for k, v in body.items() if k not in ("client_secret", "registration_access_token")}
    return Registration(
        client_id=body["client_id"],
        token_endpoint_auth_method=method,
        client_secret=secret,
        registration_access_token=token or previous_token,
        registration_client_uri=uri or (url if previous_token else None),
        scope=body.get("scope") if isinstance(body.get("scope"), str) else None,
        metadata=public,
    )


def _string(body: Mapping[str, Any], key: str, where: str) -> str | None:
    value = body.get(key)
    if value is None or (isinstance(value, str) and value):
        return value
    raise AuthError(f"{where} answered a {key} that is not a string; nothing was stored")


def _require_same_origin(uri: str, endpoint: str, where: str) -> None:
    """The registration_client_uri must be on the origin of the endpoint that answered (so https
    when that is https: the endpoint itself passed require_secure_url), without userinfo."""
    try:
        parsed = httpx.URL(uri)
    except httpx.InvalidURL:
        raise AuthError(f"{where} answered a registration_client_uri that is not a URL; nothing was stored") from None
    if origin(parsed) != origin(httpx.URL(endpoint)) or parsed.userinfo:
        raise AuthError(f"{where} answered registration_client_uri {redact_url(uri)} on another origin; the "
                        "registration access token goes only to the origin that issued it, so nothing was stored")


def _refusal(what: str, url: str, response: httpx.Response, had_token: bool) -> AuthError:
    """RFC 7591 section 3.2.2 / RFC 7592 errors, in words, without echoing any secret."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    error, description = body.get("error"), body.get("error_description")
    status = response.status_code
    message = f"{what} at {redact_url(url)} refused: HTTP {status}"
    if isinstance(error, str):
        message += f" {printable(error[:100])}"
    if isinstance(description, str):
        message += f": {printable(description[:500])}"
    hint = _HINTS.get(error) if isinstance(error, str) else None
    if hint is None and status in (401, 403):
        hint = ("the registration access token is not accepted: the registration was revoked or the token "
                "rotated; register again (phg register --force)") if what != "registration" else (
            "the initial access token is wrong or expired" if had_token else
            "this server needs an initial access token (phg register --initial-access-token, or PHG_INITIAL_ACCESS_TOKEN)")
    if hint is None and status in (404, 405) and what != "registration":
        hint = "the server does not offer RFC 7592 registration management, or the client no longer exists"
    if hint:
        message += f"; {hint}"
    return AuthError(message)


# ---------------------------------------------------------------------------------------------- config file


_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")


def set_table_keys(text: str, table: str, values: Mapping[str, str]) -> str:
    """``text`` (TOML) with ``values`` set in ``[table]``: an existing ``key = ...`` line is replaced,
    a new key goes after the table's last key; comments and everything else stay as they are.
    Single-line values only (what phg writes). The result is checked by parsing it again."""
    lines = text.splitlines(keepends=True)
    start = end = None
    for number, line in enumerate(lines):
        match = _TABLE.match(line) if not line.lstrip().startswith("[[") else None
        if match and start is None and match.group(1).strip() == table:
            start = number
        elif (match or line.lstrip().startswith("[[")) and start is not None and end is None:
            end = number
    if start is None:
        if table in tomllib.loads(text):
            raise ConfigError(f"[{table}] is written as an inline or dotted table; edit the file by hand")
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines += ["\n", f"[{table}]\n"]
        start, end = len(lines) - 1, len(lines)
    end = len(lines) if end is None else end
    last_key = start
    for key, value in values.items():
        rendered = f"{key} = {_toml_string(value)}\n"
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for number in range(start + 1, end):
            if pattern.match(lines[number]):
                if lines[number].split("=", 1)[1].lstrip().startswith(('"""', "'''")):
                    raise ConfigError(f"[{table}] {key} is a multi-line string; edit the file by hand")
                lines[number] = rendered
                break
        else:
            for number in range(start + 1, end):
                stripped = lines[number].strip()
                if stripped and not stripped.startswith("#"):
                    last_key = max(last_key, number)
            lines.insert(last_key + 1, rendered)
            last_key += 1
            end += 1
    result = "".join(lines)
    parsed: Any = tomllib.loads(result)
    for part in table.split("."):  # a dotted name ("destinations.c3") is a nested table
        parsed = parsed.get(part, {}) if isinstance(parsed, dict) else {}
    if any(parsed.get(key) != value for key, value in values.items()):
        raise ConfigError(f"could not update [{table}] safely; edit the file by hand")
    return result


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def store_in_config(path: Path, values: Mapping[str, str], *, secret: bool, table: str = "auth") -> None:
    """Write ``values`` into the [auth] table (or `table`) of the config file at ``path``, atomically.
    A file that holds a secret ends up mode 0600."""
    try:
        text = path.read_text()
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        text, mode = "", 0o600
    new = set_table_keys(text, table, values)
    if secret:
        mode = 0o600
    write_private(path, new, mode)
