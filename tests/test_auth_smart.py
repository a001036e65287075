"""SMART Backend Services (TokenAuth with PrivateKeyJwt) against a fake token endpoint and FHIR server
(httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import parse_qs

import httpx
import pytest
from joserfc import jws
from joserfc.jwk import ECKey

from phg.auth.discovery import OAUTH_URIS, discover
from phg.auth.keys import SigningKey
from phg.auth.smart import JWT_BEARER, PrivateKeyJwt
from phg.auth.token import ClientCredentials, TokenAuth
from phg.errors import AuthError, ConfigError, DiscoveryError, TransientDeliveryError
from shared_vectors import VECTORS as SHARED

VECTORS = SHARED / "smart"
BASE = "https://ehr.example.org/fhir"
TOKEN_URL = "https://auth.example.org/token"
SCOPE = "system/Patient.cu system/Device.cu system/Observation.c"
CLIENT_ID = "phg-test"
KEY = SigningKey.from_jwk(json.loads((VECTORS / "ES384.private.json").read_text())["keys"][1])
PUBLIC = ECKey.import_key(json.loads((VECTORS / "ES384.public.json").read_text())["keys"][0])


class FakeServer:
    """A SMART token endpoint and a FHIR resource that accepts only the current token."""

    def __init__(self) -> None:
        self.smart_configuration: httpx.Response | None = httpx.Response(
            200, json={"token_endpoint": TOKEN_URL, "grant_types_supported": ["client_credentials"]}
        )
        self.metadata = httpx.Response(404)
        self.token_replies: list[httpx.Response] = []  # consumed first, then normal tokens
        self.expires_in = 300
        self.token_type = "bearer"
        self.token_requests: list[dict[str, str]] = []
        self.accepted: set[str] = set()
        self.resource_auth: list[str | None] = []
        self.reject_all = False
        self.discovery_requests = 0

    async def handler(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url == f"{BASE}/.well-known/smart-configuration":
            self.discovery_requests += 1
            return self.smart_configuration or httpx.Response(404)
        if url == f"{BASE}/metadata":
            return self.metadata
        if url == TOKEN_URL:
            return await self._token(request)
        self.resource_auth.append(request.headers.get("Authorization"))
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.reject_all or bearer not in self.accepted:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return httpx.Response(201, json={"resourceType": "Bundle"})

    async def _token(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and "Authorization" not in request.headers
        assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.token_requests.append(form)
        await asyncio.sleep(0.01)  # let concurrent callers pile up
        if self.token_replies:
            return self.token_replies.pop(0)
        token = f"token-{len(self.token_requests)}"
        self.accepted = {token}
        return httpx.Response(
            200, json={"access_token": token, "token_type": self.token_type, "expires_in": self.expires_in}
        )

    def jtis(self) -> list[str]:
        return [json.loads(jws.extract_compact(f["client_assertion"].encode()).payload)["jti"] for f in self.token_requests]


def smart_auth(fhir_base: str = BASE, **kwargs) -> TokenAuth:
    return TokenAuth(ClientCredentials(), PrivateKeyJwt(CLIENT_ID, KEY), fhir_base=fhir_base, scope=SCOPE, **kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fhir(server: FakeServer, clock: Clock):
    transport = httpx.MockTransport(server.handler)
    async with httpx.AsyncClient(transport=transport) as client:
        auth = smart_auth(client=client, clock=clock)
        client.auth = auth
        yield client


async def test_token_request_is_spec_shaped(fhir: httpx.AsyncClient, server: FakeServer) -> None:
    response = await fhir.post(f"{BASE}/", content=b"{}")
    assert response.status_code == 201
    assert server.resource_auth == ["Bearer token-1"]
    [form] = server.token_requests
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == SCOPE
    assert form["client_assertion_type"] == JWT_BEARER
    verified = jws.deserialize_compact(form["client_assertion"], PUBLIC, algorithms=["ES384"])
    claims = json.loads(verified.payload)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == TOKEN_URL  # the token endpoint, not the FHIR base


async def test_one_token_shared_by_20_concurrent_requests(fhir: httpx.AsyncClient, server: FakeServer) -> None:
    responses = await asyncio.gather(*(fhir.get(f"{BASE}/Observation/{i}") for i in range(20)))
    assert [r.status_code for r in responses] == [201] * 20
    assert len(server.token_requests) == 1
    assert set(server.resource_auth) == {"Bearer token-1"}


async def test_refresh_before_expiry_with_new_jti(fhir: httpx.AsyncClient, server: FakeServer, clock: Clock) -> None:
    await fhir.get(f"{BASE}/Patient")
    clock.now += 269  # expires_in 300 - margin 30 = 270: still cached
    await fhir.get(f"{BASE}/Patient")
    assert len(server.token_requests) == 1
    clock.now += 1
    await fhir.get(f"{BASE}/Patient")
    assert len(server.token_requests) == 2
    assert server.resource_auth[-1] == "Bearer token-2"
    jtis = server.jtis()
    assert len(set(jtis)) == 2


async def test_short_token_refreshed_after_half_its_lifetime(
    fhir: httpx.AsyncClient, server: FakeServer, clock: Clock
) -> None:
    server.expires_in = 40  # 40 - 30 = 10 s would be wasteful; half the lifetime is 20 s
    await fhir.get(f"{BASE}/Patient")
    clock.now += 19
    await fhir.get(f"{BASE}/Patient")
    assert len(server.token_requests) == 1
    clock.now += 1
    await fhir.get(f"{BASE}/Patient")
    assert len(server.token_requests) == 2


async def test_401_reauthenticates_once_then_succeeds(fhir: httpx.AsyncClient, server: FakeServer) -> None:
    await fhir.get(f"{BASE}/Patient")
    server.accepted = set()  # the server revokes token-1
    response = await fhir.post(f"{BASE}/", content=b'{"resourceType": "Bundle"}')
    assert response.status_code == 201
    assert server.resource_auth == ["Bearer token-1", "Bearer token-1", "Bearer token-2"]
    assert len(set(server.jtis())) == 2


async def test_second_401_is_returned(fhir: httpx.AsyncClient, server: FakeServer) -> None:
    server.reject_all = True
    response = await fhir.get(f"{BASE}/Patient")
    assert response.status_code == 401
    assert len(server.token_requests) == 2
    assert len(server.resource_auth) == 2


async def test_token_type_case_insensitive_and_scope_optional(fhir: httpx.AsyncClient, server: FakeServer) -> None:
    server.token_type = "Bearer"
    assert (await fhir.get(f"{BASE}/Patient")).status_code == 201
    token = await fhir.auth.token()  # type: ignore[union-attr]
    assert token.scope is None and "token-1" not in repr(token)


async def test_invalid_client_message_says_what_to_fix(fhir: httpx.AsyncClient, server: FakeServer) -> None:
    server.token_replies = [
        httpx.Response(401, json={"error": "invalid_client", "error_description": "signature check failed"})
    ]
    with pytest.raises(AuthError) as caught:
        await fhir.get(f"{BASE}/Patient")
    message = str(caught.value)
    assert message.startswith(f"invalid_client: signature check failed (token endpoint {TOKEN_URL})")
    assert CLIENT_ID in message and KEY.kid in message and "clock" in message
    assert not isinstance(caught.value, TransientDeliveryError)


async def test_invalid_scope_names_the_scope(fhir: httpx.AsyncClient, server: FakeServer) -> None:
    server.token_replies = [httpx.Response(400, json={"error": "invalid_scope"})]
    with pytest.raises(AuthError, match="invalid_scope: no error_description") as caught:
        await fhir.get(f"{BASE}/Patient")
    assert SCOPE in str(caught.value)


async def test_non_bearer_token_refused(fhir: httpx.AsyncClient, server: FakeServer) -> None:
    server.token_type = "DPoP"
    with pytest.raises(AuthError, match="DPoP"):
        await fhir.get(f"{BASE}/Patient")


@pytest.mark.parametrize("status", [503, 429, 500])
async def test_token_endpoint_outage_is_transient(fhir: httpx.AsyncClient, server: FakeServer, status: int) -> None:
    server.token_replies = [httpx.Response(status, headers={"Retry-After": "7"})]
    with pytest.raises(TransientDeliveryError) as caught:
        await fhir.get(f"{BASE}/Patient")
    assert caught.value.retry_after == 7.0
    # the next attempt signs a fresh assertion and succeeds
    assert (await fhir.get(f"{BASE}/Patient")).status_code == 201
    assert len(set(server.jtis())) == 2


async def test_token_endpoint_unreachable_is_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        auth = smart_auth(token_url=TOKEN_URL, client=client)
        with pytest.raises(TransientDeliveryError, match="unreachable"):
            await client.get(f"{BASE}/Patient", auth=auth)


async def test_discovery_falls_back_to_capability_statement(server: FakeServer) -> None:
    server.smart_configuration = None
    server.metadata = httpx.Response(200, json={
        "resourceType": "CapabilityStatement",
        "rest": [{"mode": "server", "security": {"extension": [{
            "url": OAUTH_URIS,
            "extension": [{"url": "authorize", "valueUri": "https://auth.example.org/authorize"},
                          {"url": "token", "valueUri": TOKEN_URL}],
        }]}}],
    })
    async with httpx.AsyncClient(transport=httpx.MockTransport(server.handler)) as client:
        configuration = await discover(client, BASE)
        assert (configuration.token_endpoint, configuration.source) == (TOKEN_URL, "capability-statement")
        auth = smart_auth(client=client)
        assert (await client.get(f"{BASE}/Patient", auth=auth)).status_code == 201


async def test_discovery_failure_is_clear(server: FakeServer) -> None:
    server.smart_configuration = None
    server.metadata = httpx.Response(200, json={"resourceType": "CapabilityStatement", "rest": [{}]})
    async with httpx.AsyncClient(transport=httpx.MockTransport(server.handler)) as client:
        with pytest.raises(DiscoveryError) as caught:
            await discover(client, BASE + "/")
    message = str(caught.value)
    assert BASE in message and "smart-configuration: HTTP 404" in message and "token_url" in message


async def test_discovery_outage_is_transient(server: FakeServer) -> None:
    server.smart_configuration = httpx.Response(503)
    server.metadata = httpx.Response(503)
    async with httpx.AsyncClient(transport=httpx.MockTransport(server.handler)) as client:
        with pytest.raises(TransientDeliveryError):
            await discover(client, BASE)


async def test_discovery_is_lazy_and_cached(fhir: httpx.AsyncClient, server: FakeServer, clock: Clock) -> None:
    assert server.discovery_requests == 0  # nothing happens before the first request
    for _ in range(3):
        clock.now += 1000
        await fhir.get(f"{BASE}/Patient")
    assert server.discovery_requests == 1 and len(server.token_requests) == 3


async def test_capabilities_that_rule_out_backend_services_are_reported(server: FakeServer) -> None:
    server.smart_configuration = httpx.Response(200, json={
        "token_endpoint": TOKEN_URL,
        "grant_types_supported": ["authorization_code"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384"],
    })
    async with httpx.AsyncClient(transport=httpx.MockTransport(server.handler)) as client:
        problems = smart_auth(client=client).configuration_problems(await discover(client, BASE))
    assert len(problems) == 2 and "client_credentials" in problems[0] and "ES384" in problems[1]


@pytest.mark.parametrize("url", ["http://ehr.example.org/fhir", "ftp://ehr.example.org/fhir", "/fhir"])
def test_insecure_fhir_base_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="https"):
        smart_auth(url)


def test_insecure_token_url_refused() -> None:
    with pytest.raises(ConfigError, match="token endpoint"):
        smart_auth(token_url="http://auth.example.org/token")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/fhir", "http://127.8.9.10/fhir", "http://[::1]:8080/fhir",
                                 "http://localhost:8080/fhir"])
async def test_plain_http_allowed_to_loopback(url: str) -> None:
    auth = smart_auth(url)
    await auth.aclose()


async def test_plain_http_allowed_when_configured() -> None:
    auth = smart_auth("http://ehr.lan/fhir", allow_insecure_http=True)
    await auth.aclose()


async def test_discovered_insecure_token_endpoint_refused(server: FakeServer) -> None:
    server.smart_configuration = httpx.Response(200, json={"token_endpoint": "http://auth.example.org/token"})
    async with httpx.AsyncClient(transport=httpx.MockTransport(server.handler)) as client:
        with pytest.raises(ConfigError, match="non-loopback"):
            await discover(client, BASE)


async def test_bearer_never_sent_to_another_origin(fhir: httpx.AsyncClient, server: FakeServer) -> None:
    with pytest.raises(ConfigError, match="another origin"):
        await fhir.get("https://elsewhere.example.com/fhir/Patient")
    assert server.token_requests == [] and server.resource_auth == []


async def test_sync_client_refused() -> None:
    auth = smart_auth(token_url=TOKEN_URL)
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client:
        with pytest.raises(RuntimeError, match="AsyncClient"):
            client.get(f"{BASE}/Patient", auth=auth)
    await auth.aclose()


async def test_no_secrets_logged_at_info(fhir: httpx.AsyncClient, server: FakeServer, clock: Clock,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="phg")
    await fhir.get(f"{BASE}/Patient")
    server.accepted = set()
    await fhir.get(f"{BASE}/Patient")
    assertions = [f["client_assertion"] for f in server.token_requests]
    for record in caplog.records:
        text = record.getMessage()
        assert "token-1" not in text and "token-2" not in text
        assert not any(a in text for a in assertions)
    assert any("token refreshed, expires in 300 s" in r.getMessage() for r in caplog.records)
