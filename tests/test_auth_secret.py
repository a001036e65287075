"""Client secret (basic/post), password grant, static bearer token, the shared token cache, and the
[auth] settings parser. httpx.MockTransport stands in for the servers: oidc-provider does not offer
the password grant, so it is tested here only (the secret methods also run against it in
test_flow_auth.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from phg.auth import build_auth
from phg.auth.keys import SigningKey
from phg.auth.secret import ClientSecret, PasswordGrant, PublicClient, StaticBearerAuth, basic_credentials
from phg.auth.smart import JWT_BEARER, PrivateKeyJwt
from phg.auth.token import ClientCredentials, TokenAuth
from phg.config import AuthSettings, load_config
from phg.errors import AuthError, ConfigError
from shared_vectors import VECTORS

BASE = "https://ehr.example.org/fhir"
TOKEN_URL = "https://auth.example.org/token"
SCOPE = "system/Observation.c"


class Server:
    def __init__(self) -> None:
        self.token_requests: list[httpx.Request] = []
        self.resource_auth: list[str | None] = []
        self.reply: httpx.Response | None = None
        self.accept = True

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            self.token_requests.append(request)
            await asyncio.sleep(0.01)
            if self.reply is not None:
                return self.reply
            return httpx.Response(200, json={"access_token": f"tok-{len(self.token_requests)}", "token_type": "Bearer",
                                             "expires_in": 60})
        self.resource_auth.append(request.headers.get("Authorization"))
        return httpx.Response(201 if self.accept else 401)

    def form(self, n: int = 0) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.token_requests[n].content.decode()).items()}


@pytest.fixture
def server() -> Server:
    return Server()


def client_for(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(server.handler))


def token_auth(client: httpx.AsyncClient, client_auth, grant=None) -> TokenAuth:
    return TokenAuth(grant or ClientCredentials(), client_auth, fhir_base=BASE, token_url=TOKEN_URL, scope=SCOPE,
                     client=client)


async def test_client_secret_basic(server: Server) -> None:
    async with client_for(server) as client:
        client.auth = token_auth(client, ClientSecret("gw 1", "s:é/+"))
        responses = await asyncio.gather(*(client.get(f"{BASE}/Patient") for _ in range(10)))
    assert [r.status_code for r in responses] == [201] * 10 and len(server.token_requests) == 1
    request = server.token_requests[0]
    # RFC 6749 2.3.1: form-urlencode id and secret, then Basic
    decoded = base64.b64decode(request.headers["Authorization"].removeprefix("Basic ")).decode()
    assert decoded == "gw%201:s%3A%C3%A9%2F%2B"
    assert server.form() == {"grant_type": "client_credentials", "scope": SCOPE}
    assert set(server.resource_auth) == {"Bearer tok-1"}


async def test_client_secret_post(server: Server) -> None:
    async with client_for(server) as client:
        client.auth = token_auth(client, ClientSecret("gw", "sec", "post"))
        assert (await client.get(f"{BASE}/Patient")).status_code == 201
    assert "Authorization" not in server.token_requests[0].headers
    assert server.form() == {"grant_type": "client_credentials", "scope": SCOPE, "client_id": "gw",
                             "client_secret": "sec"}


async def test_invalid_client_hint_without_the_secret(server: Server) -> None:
    server.reply = httpx.Response(401, json={"error": "invalid_client", "error_description": "bad secret"})
    async with client_for(server) as client:
        client.auth = token_auth(client, ClientSecret("gw", "hunter22"))
        with pytest.raises(AuthError) as caught:
            await client.get(f"{BASE}/Patient")
    assert "invalid_client: bad secret" in str(caught.value) and "client_secret_basic" in str(caught.value)
    assert "hunter22" not in str(caught.value) and "hunter22" not in repr(client.auth)


async def test_password_grant_warns_and_sends_the_owner_credentials(server: Server, caplog) -> None:
    async with client_for(server) as client:
        with caplog.at_level(logging.WARNING):
            client.auth = token_auth(client, PublicClient("gw"), PasswordGrant("nurse", "pw-123"))
        assert "OAuth 2.1" in caplog.text
        assert (await client.get(f"{BASE}/Patient")).status_code == 201
    assert server.form() == {"grant_type": "password", "username": "nurse", "password": "pw-123", "scope": SCOPE,
                             "client_id": "gw"}
    assert "pw-123" not in caplog.text


async def test_password_grant_with_a_confidential_client(server: Server) -> None:
    async with client_for(server) as client:
        client.auth = token_auth(client, ClientSecret("gw", "s"), PasswordGrant("u", "p"))
        await client.get(f"{BASE}/Patient")
    assert server.token_requests[0].headers["Authorization"] == basic_credentials("gw", "s")
    assert server.form()["grant_type"] == "password" and "client_secret" not in server.form()


async def test_static_bearer_never_requests_a_token_and_returns_401(server: Server) -> None:
    async with client_for(server) as client:
        client.auth = StaticBearerAuth("out-of-band", fhir_base=BASE)
        assert (await client.get(f"{BASE}/Patient")).status_code == 201
        server.accept = False
        assert (await client.get(f"{BASE}/Patient")).status_code == 401
    assert server.token_requests == [] and server.resource_auth == ["Bearer out-of-band"] * 2


async def test_bearer_token_not_sent_to_another_origin(server: Server) -> None:
    async with client_for(server) as client:
        client.auth = StaticBearerAuth("t", fhir_base=BASE)
        with pytest.raises(ConfigError, match="another origin"):
            await client.get("https://elsewhere.example.org/fhir/Patient")


async def test_secret_auth_refreshes_and_retries_on_401_like_smart(server: Server) -> None:
    async with client_for(server) as client:
        client.auth = token_auth(client, ClientSecret("gw", "s"))
        await client.get(f"{BASE}/Patient")
        server.accept = False
        assert (await client.get(f"{BASE}/Patient")).status_code == 401
    assert len(server.token_requests) == 2 and server.resource_auth[-2:] == ["Bearer tok-1", "Bearer tok-2"]


# ---------------------------------------------------------------------------------------------- composition


KEY = SigningKey.from_jwk(json.loads((VECTORS / "smart" / "ES384.private.json").read_text())["keys"][1])
CLIENTS = {
    "client_secret_basic": (lambda: ClientSecret("gw", "s"), {}),
    "client_secret_post": (lambda: ClientSecret("gw", "s", "post"), {"client_id": "gw", "client_secret": "s"}),
    "none": (lambda: PublicClient("gw"), {"client_id": "gw"}),
    "private_key_jwt": (lambda: PrivateKeyJwt("gw", KEY), {"client_assertion_type": JWT_BEARER}),
}
GRANTS = {
    "client_credentials": (ClientCredentials, {}),
    "password": (lambda: PasswordGrant("nurse", "pw"), {"username": "nurse", "password": "pw"}),
}


@pytest.mark.parametrize("grant", sorted(GRANTS))
@pytest.mark.parametrize("client_auth", sorted(CLIENTS))
async def test_every_grant_composes_with_every_client_authentication(server: Server, grant, client_auth) -> None:
    """One token cache, any grant, any client authentication: the form holds exactly both parts."""
    make_client, client_fields = CLIENTS[client_auth]
    make_grant, grant_fields = GRANTS[grant]
    async with client_for(server) as client:
        client.auth = token_auth(client, make_client(), make_grant())
        await asyncio.gather(*(client.get(f"{BASE}/Patient") for _ in range(3)))
        assert client_auth in client.auth.description and grant in client.auth.description
    [request] = server.token_requests
    form = server.form()
    form.pop("client_assertion", None)
    assert form == {"grant_type": grant, "scope": SCOPE, **grant_fields, **client_fields}
    assert ("Authorization" in request.headers) == (client_auth == "client_secret_basic")


async def test_refusal_hints_name_both_parts(server: Server) -> None:
    server.reply = httpx.Response(400, json={"error": "invalid_grant"})
    async with client_for(server) as client:
        auth = token_auth(client, ClientSecret("gw", "s", "post"), PasswordGrant("nurse", "pw-123"))
        with pytest.raises(AuthError) as caught:
            await auth.token()
    message = str(caught.value)
    assert "username 'nurse'" in message and "client_secret_post" in message and "pw-123" not in message


def test_a_static_bearer_is_no_token_cache() -> None:
    """Today's StaticBearerAuth inherited the token cache and switched it off (issue 11: 7)."""
    assert StaticBearerAuth.__mro__ == (StaticBearerAuth, httpx.Auth, object)
    auth = StaticBearerAuth("t", fhir_base=BASE)
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, text=r.headers["Authorization"]))) as c:
        assert c.get(f"{BASE}/Patient", auth=auth).text == "Bearer t"  # no async refresh: any client will do


def test_grants_and_client_authentications_are_values_not_subclasses() -> None:
    for part in (ClientCredentials, PasswordGrant, ClientSecret, PublicClient, PrivateKeyJwt):
        assert part.__mro__ == (part, object), part


# ---------------------------------------------------------------------------------------------- settings


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def auth_settings(env: dict[str, str] | None = None, **auth) -> AuthSettings:
    """[auth] as the one settings loader parses it from a config file (mode 0600: it may hold secrets)."""
    path = Path("phg.toml")
    lines = ["[fhir]", f"base_url = {json.dumps(BASE)}", "[auth]", *(f"{k} = {json.dumps(v)}" for k, v in auth.items())]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return load_config(path, env=env or {}).auth


def test_method_is_inferred() -> None:
    assert auth_settings().method == "none"
    assert auth_settings(client_id="gw", key_file="k.pem").method == "smart-backend"
    assert auth_settings(client_id="gw", client_secret="s").method == "client-secret-basic"
    assert auth_settings({"PHG_BEARER_TOKEN": "t"}).method == "bearer"


def test_secrets_from_the_environment_and_out_of_repr() -> None:
    settings = auth_settings({"PHG_CLIENT_SECRET": "s3cr3t"}, method="client-secret-post", client_id="gw")
    assert settings.client_secret == "s3cr3t" and "s3cr3t" not in repr(settings)
    auth = build_auth(settings)
    assert isinstance(auth, TokenAuth) and isinstance(auth.client_auth, ClientSecret)
    assert auth.client_auth.style == "post"


@pytest.mark.parametrize(("table", "message"), [
    ({"methd": "bearer"}, "unknown key 'methd' in \\[auth\\]"),
    ({"method": "kerberos"}, "\\[auth\\] method must be one of"),
    ({"key_rotation_grace": "soon"}, "\\[auth\\] key_rotation_grace must be a"),
    ({"jwks_uri": "http://jwks.example.org/j"}, "plain http"),
    ({"ca_file": "/nonexistent/ca.pem"}, "\\[auth\\] ca_file"),
    ({"client_secret": 42}, "\\[auth\\] client_secret must be a string"),
    ({"jku": True}, "jku = true needs"),
])
def test_wrong_values_name_the_key(table, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        auth_settings(**table)
    assert "phg.toml" in str(caught.value)


def test_missing_credentials_are_config_errors() -> None:
    for table, message in (({"method": "bearer"}, "token"), ({"method": "password"}, "username and password"),
                           ({"method": "client-secret-basic", "client_id": "gw"}, "client_secret"),
                           ({"method": "smart-backend"}, "client_id")):
        with pytest.raises(ConfigError, match=message):
            build_auth(auth_settings(**table))
