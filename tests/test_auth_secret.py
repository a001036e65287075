"""Client secret (basic/post), password grant, static bearer token, the shared token cache, and the
[auth] settings parser. httpx.MockTransport stands in for the servers: oidc-provider does not offer
the password grant, so it is tested here only (the secret methods also run against it in
test_flow_auth.py)."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from phg.auth.secret import ClientSecretAuth, PasswordAuth, StaticBearerAuth, basic_credentials
from phg.auth.settings import auth_settings
from phg.config import Config
from phg.daemon import build_auth
from phg.errors import AuthError, ConfigError
from phg.model import Gateway

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


async def test_client_secret_basic(server: Server) -> None:
    async with client_for(server) as client:
        client.auth = ClientSecretAuth(fhir_base=BASE, token_url=TOKEN_URL, client_id="gw 1", client_secret="s:é/+",
                                       scope=SCOPE, client=client)
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
        client.auth = ClientSecretAuth(fhir_base=BASE, token_url=TOKEN_URL, client_id="gw", client_secret="sec",
                                       scope=SCOPE, style="post", client=client)
        assert (await client.get(f"{BASE}/Patient")).status_code == 201
    assert "Authorization" not in server.token_requests[0].headers
    assert server.form() == {"grant_type": "client_credentials", "scope": SCOPE, "client_id": "gw",
                             "client_secret": "sec"}


async def test_invalid_client_hint_without_the_secret(server: Server) -> None:
    server.reply = httpx.Response(401, json={"error": "invalid_client", "error_description": "bad secret"})
    async with client_for(server) as client:
        client.auth = ClientSecretAuth(fhir_base=BASE, token_url=TOKEN_URL, client_id="gw", client_secret="hunter22",
                                       scope=SCOPE, client=client)
        with pytest.raises(AuthError) as caught:
            await client.get(f"{BASE}/Patient")
    assert "invalid_client: bad secret" in str(caught.value) and "client_secret_basic" in str(caught.value)
    assert "hunter22" not in str(caught.value) and "hunter22" not in repr(client.auth)


async def test_password_grant_warns_and_sends_the_owner_credentials(server: Server, caplog) -> None:
    async with client_for(server) as client:
        with caplog.at_level(logging.WARNING):
            client.auth = PasswordAuth(fhir_base=BASE, token_url=TOKEN_URL, username="nurse", password="pw-123",
                                       client_id="gw", scope=SCOPE, client=client)
        assert "OAuth 2.1" in caplog.text
        assert (await client.get(f"{BASE}/Patient")).status_code == 201
    assert server.form() == {"grant_type": "password", "username": "nurse", "password": "pw-123", "scope": SCOPE,
                             "client_id": "gw"}
    assert "pw-123" not in caplog.text


async def test_password_grant_with_a_confidential_client(server: Server) -> None:
    async with client_for(server) as client:
        client.auth = PasswordAuth(fhir_base=BASE, token_url=TOKEN_URL, username="u", password="p", client_id="gw",
                                   client_secret="s", scope=SCOPE, client=client)
        await client.get(f"{BASE}/Patient")
    assert server.token_requests[0].headers["Authorization"] == basic_credentials("gw", "s")
    assert server.form()["grant_type"] == "password" and "client_secret" not in server.form()


async def test_static_bearer_never_requests_a_token_and_returns_401(server: Server) -> None:
    async with client_for(server) as client:
        client.auth = StaticBearerAuth(fhir_base=BASE, client=client, token="out-of-band")
        assert (await client.get(f"{BASE}/Patient")).status_code == 201
        server.accept = False
        assert (await client.get(f"{BASE}/Patient")).status_code == 401
    assert server.token_requests == [] and server.resource_auth == ["Bearer out-of-band"] * 2


async def test_bearer_token_not_sent_to_another_origin(server: Server) -> None:
    async with client_for(server) as client:
        client.auth = StaticBearerAuth(fhir_base=BASE, client=client, token="t")
        with pytest.raises(ConfigError, match="another origin"):
            await client.get("https://elsewhere.example.org/fhir/Patient")


async def test_secret_auth_refreshes_and_retries_on_401_like_smart(server: Server) -> None:
    async with client_for(server) as client:
        client.auth = ClientSecretAuth(fhir_base=BASE, token_url=TOKEN_URL, client_id="gw", client_secret="s",
                                       scope=SCOPE, client=client)
        await client.get(f"{BASE}/Patient")
        server.accept = False
        assert (await client.get(f"{BASE}/Patient")).status_code == 401
    assert len(server.token_requests) == 2 and server.resource_auth[-2:] == ["Bearer tok-1", "Bearer tok-2"]


# ---------------------------------------------------------------------------------------------- settings


@pytest.fixture(autouse=True)
def private_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file config() names as its source: holding secrets, it must be mode 0600."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "phg.toml"
    path.write_text("")
    path.chmod(0o600)
    return path


def config(**auth) -> Config:
    fields = {k: auth.pop(k) for k in ("client_id", "key_file") if k in auth}
    return Config(gateway=Gateway(system_id="02AB7FFFFE00C1C1"), outbox_path=Path("/tmp/x"), fhir_base=BASE,
                  auth={**fields, **auth}, source="phg.toml", **fields)


def test_method_is_inferred() -> None:
    assert auth_settings(config(), env={}).method == "none"
    assert auth_settings(config(client_id="gw", key_file=Path("k.pem")), env={}).method == "smart-backend"
    assert auth_settings(config(client_id="gw", client_secret="s"), env={}).method == "client-secret-basic"
    assert auth_settings(config(), env={"PHG_BEARER_TOKEN": "t"}).method == "bearer"


def test_secrets_from_the_environment_and_out_of_repr() -> None:
    settings = auth_settings(config(method="client-secret-post", client_id="gw"), env={"PHG_CLIENT_SECRET": "s3cr3t"})
    assert settings.client_secret == "s3cr3t" and "s3cr3t" not in repr(settings)
    auth = build_auth(settings)
    assert isinstance(auth, ClientSecretAuth) and auth.style == "post"


@pytest.mark.parametrize(("table", "message"), [
    ({"methd": "bearer"}, "unknown key 'methd' in \\[auth\\]"),
    ({"method": "kerberos"}, "\\[auth\\] method must be one of"),
    ({"key_rotation_grace": "soon"}, "\\[auth\\] key_rotation_grace must be a number"),
    ({"jwks_uri": "http://jwks.example.org/j"}, "plain http"),
    ({"ca_file": "/nonexistent/ca.pem"}, "\\[auth\\] ca_file"),
    ({"client_secret": 42}, "\\[auth\\] client_secret must be a string"),
    ({"jku": True}, "jku = true needs"),
])
def test_wrong_values_name_the_key(table, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        auth_settings(config(**table), env={})
    assert "phg.toml" in str(caught.value)


def test_missing_credentials_are_config_errors() -> None:
    for table, message in (({"method": "bearer"}, "token"), ({"method": "password"}, "username and password"),
                           ({"method": "client-secret-basic", "client_id": "gw"}, "client_secret"),
                           ({"method": "smart-backend"}, "client_id")):
        with pytest.raises(ConfigError, match=message):
            build_auth(auth_settings(config(**table), env={}))
