"""Trust nothing a server says (issue 10, findings 3, 6, 7): where a secret may be sent, which
connection failures mean "never reached", URLs without their credentials in messages, and server
text without terminal escapes. Hostile servers are httpx.MockTransport handlers or tiny local
sockets (a closed port, a server that never answers, a server that speaks no TLS)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from phg.auth import build_auth
from phg.auth.discovery import discover
from phg.auth.envelope import load_envelope
from phg.auth.keys import SigningKey
from phg.auth.registration import register
from phg.auth.secret import ClientSecret, PasswordGrant, PublicClient
from phg.auth.smart import PrivateKeyJwt
from phg.auth.token import ClientCredentials, TokenAuth
from phg.cli import main
from phg.config import load_config
from phg.errors import AuthError, ConfigError, TransientDeliveryError
from phg.terminal import PrintableFormatter, printable
from phg.transport import redact_url
from shared_vectors import VECTORS

BASE = "https://ehr.example.org/fhir"
FOREIGN = "https://collector.example.net/token"
SCOPE = "system/Observation.c"
KEY = SigningKey.from_jwk(json.loads((VECTORS / "smart" / "ES384.private.json").read_text())["keys"][1])


class Hostile:
    """A FHIR server whose SMART configuration names ``token_endpoint``; records token requests."""

    def __init__(self, token_endpoint: str) -> None:
        self.token_endpoint = token_endpoint
        self.token_requests: list[httpx.Request] = []

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/smart-configuration"):
            return httpx.Response(200, json={"token_endpoint": self.token_endpoint})
        if str(request.url) == self.token_endpoint:
            self.token_requests.append(request)
            return httpx.Response(200, json={"access_token": "t", "token_type": "Bearer", "expires_in": 60})
        return httpx.Response(201)


def secret_auth(kind: str, client: httpx.AsyncClient, **kwargs) -> TokenAuth:
    common = dict(fhir_base=BASE, scope=SCOPE, client=client, **kwargs)
    if kind == "password":  # a public client: only the resource owner's password is secret
        return TokenAuth(PasswordGrant("nurse", "pw-123"), PublicClient("gw"), **common)
    return TokenAuth(ClientCredentials(), ClientSecret("gw", "s3cr3t", kind), **common)


def smart_auth(fhir_base: str, client: httpx.AsyncClient) -> TokenAuth:
    return TokenAuth(ClientCredentials(), PrivateKeyJwt("gw", KEY), fhir_base=fhir_base, scope=SCOPE, client=client)


def client_secret_auth(client: httpx.AsyncClient, fhir_base: str, token_url: str) -> TokenAuth:
    return TokenAuth(ClientCredentials(), ClientSecret("gw", "s"), fhir_base=fhir_base, token_url=token_url,
                     scope=SCOPE, client=client)


# ---------------------------------------------------------------------------------------------- finding 6


@pytest.mark.parametrize("kind", ["basic", "post", "password"])
async def test_a_secret_is_not_sent_where_discovery_points(kind) -> None:
    hostile = Hostile(FOREIGN)
    async with httpx.AsyncClient(transport=httpx.MockTransport(hostile.handler)) as client:
        client.auth = secret_auth(kind, client)
        with pytest.raises(AuthError) as caught:
            await client.get(f"{BASE}/Patient")
    message = str(caught.value)
    assert hostile.token_requests == []
    assert f'[auth] token_url = "{FOREIGN}"' in message
    assert '[auth] trusted_token_hosts = ["collector.example.net"]' in message
    assert "s3cr3t" not in message and "pw-123" not in message


@pytest.mark.parametrize("kind", ["basic", "password"])
async def test_a_secret_follows_discovery_to_a_trusted_host_or_the_fhir_origin(kind) -> None:
    for endpoint, trusted in ((FOREIGN, ["Collector.Example.NET"]), ("https://ehr.example.org/oauth/token", [])):
        hostile = Hostile(endpoint)
        async with httpx.AsyncClient(transport=httpx.MockTransport(hostile.handler)) as client:
            client.auth = secret_auth(kind, client, trusted_token_hosts=[h.lower() for h in trusted])
            assert (await client.get(f"{BASE}/Patient")).status_code == 201
        assert len(hostile.token_requests) == 1


async def test_a_signed_assertion_follows_discovery_anywhere() -> None:
    hostile = Hostile(FOREIGN)
    async with httpx.AsyncClient(transport=httpx.MockTransport(hostile.handler)) as client:
        client.auth = smart_auth(BASE, client)
        assert (await client.get(f"{BASE}/Patient")).status_code == 201
    [request] = hostile.token_requests
    assert "client_assertion" in parse_qs(request.content.decode())


def write_config(tmp_path: Path, auth: str, mode: int = 0o600) -> Path:
    path = tmp_path / "phg.toml"
    path.write_text(f'[fhir]\nbase_url = "{BASE}"\n\n[auth]\n{auth}\n')
    path.chmod(mode)
    return path


def test_trusted_token_hosts_is_read_and_checked(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'client_id = "gw"\nclient_secret = "s"\n'
                                  'trusted_token_hosts = ["Auth.Example.org", "[::1]", "10.0.0.7"]')
    assert load_config(path, env={}).auth.trusted_token_hosts == (
        "auth.example.org", "::1", "10.0.0.7")
    for wrong in ('["https://auth.example.org"]', '["auth.example.org:443"]',
                  '["auth.example.org/token"]', '[""]', "[7]"):
        path = write_config(tmp_path, f"trusted_token_hosts = {wrong}")
        with pytest.raises(ConfigError, match=r"\[auth\] trusted_token_hosts"):
            load_config(path, env={})


# ---------------------------------------------------------------------------------------------- finding 7


def test_credentials_in_token_url_are_refused_and_never_shown(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    path = write_config(tmp_path, 'client_id = "gw"\nclient_secret = "s"\n'
                                  'token_url = "https://gw:hunter2-pass@auth.example.org/token"')
    with pytest.raises(ConfigError, match=r"\[auth\] token_url https://\*\*\*@auth.example.org/token carries") as caught:
        build_auth(load_config(path, env={}).auth)
    assert "hunter2" not in str(caught.value) and "hunter2" not in caplog.text


@pytest.mark.parametrize(("url", "shown"), [
    ("https://u:p@h.example/t?x=1", "https://***@h.example/t?x=1"),
    ("http://a@b@127.0.0.1:9/x@y", "http://***@127.0.0.1:9/x@y"),
    ("https://h.example/a@b", "https://h.example/a@b"),
    ("https://u:p@[::1", "https://***@[::1"),  # not even a valid URL
    ("u:p@h.example/fhir", "***@h.example/fhir"),  # written without its scheme
    ("//u:p@h.example/fhir", "//***@h.example/fhir"),
    ("h.example/a@b", "h.example/a@b"),
    ("/a@b", "/a@b"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@given(user=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:%", min_size=1))
def test_redact_url_hides_any_userinfo(user: str) -> None:
    assert redact_url(f"https://{user}@h.example/p") == "https://***@h.example/p"


# ---------------------------------------------------------------------------------------------- finding 3


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def listener(answer: bytes | None) -> Iterator[int]:
    """A local TCP server: answers every connection with ``answer`` (None: reads and never answers)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)
            if answer is not None:
                conn.recv(65536)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()
        for conn in held:
            conn.close()


async def test_discovery_and_token_endpoint_down_are_unreachable(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    down = f"http://127.0.0.1:{closed_port()}"
    async with httpx.AsyncClient(timeout=5) as client:
        with pytest.raises(TransientDeliveryError) as discovery:
            await discover(client, f"{down}/fhir")
        auth = client_secret_auth(client, f"{down}/fhir", f"{down}/token")
        with pytest.raises(TransientDeliveryError) as token:
            await auth.token()
    assert discovery.value.reached is False and token.value.reached is False
    assert "ConnectError" in str(token.value)


async def test_a_discovered_endpoint_with_credentials_is_refused_and_never_shown(caplog) -> None:
    """A (hostile) server announces a token endpoint carrying user:password@: the SMART client refuses it (httpx
    would send those as HTTP Basic credentials to whoever answers), and the password appears nowhere."""
    caplog.set_level(logging.DEBUG)
    hostile = Hostile(f"http://collector:hunter2-pass@127.0.0.1:{closed_port()}/token")
    async with httpx.AsyncClient(transport=httpx.MockTransport(hostile.handler)) as mock:
        auth = smart_auth("http://127.0.0.1/fhir", mock)
        with pytest.raises(ConfigError) as caught:
            await auth.configuration()
    assert "carries credentials" in str(caught.value) and "***@127.0.0.1" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "hunter2" not in caplog.text


async def test_tls_failure_is_unreachable_a_silent_server_is_not() -> None:
    with listener(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as plain, listener(None) as silent:
        async with httpx.AsyncClient(timeout=httpx.Timeout(0.5, connect=5)) as client:
            for url, reached in ((f"https://127.0.0.1:{plain}/token", False), (f"http://127.0.0.1:{silent}/token", True)):
                auth = client_secret_auth(client, "https://127.0.0.1/fhir", url)
                with pytest.raises(TransientDeliveryError) as caught:
                    await auth.token()
                assert caught.value.reached is reached, (url, caught.value)


async def test_registration_and_envelope_endpoints_down_are_unreachable() -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    async with httpx.AsyncClient(timeout=5) as client:
        with pytest.raises(TransientDeliveryError) as registration:
            await register(client, f"{down}/reg", {"scope": SCOPE})
        with pytest.raises(TransientDeliveryError) as envelope:
            await load_envelope(f"{down}/jwks.json", client)
    assert registration.value.reached is False and envelope.value.reached is False


# ---------------------------------------------------------------------------------------------- terminal text


ESCAPES = "\x1b[2J\x1b]0;owned\x07\x9b31m\r\x00\x7f"


def test_printable_drops_escapes_keeps_lines_and_tabs() -> None:
    assert printable(f"bad{ESCAPES} secret\n\tnext é ☃") == "bad[2J]0;owned31m secret\n\tnext é ☃"


@given(st.text())
def test_printable_leaves_no_control_character(text: str) -> None:
    shown = printable(text)
    assert all(c in "\n\t" or not (ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f) for c in shown)
    assert printable(shown) == shown


def test_log_lines_hold_no_escapes() -> None:
    record = logging.LogRecord("phg", logging.WARNING, __file__, 1, "server said %s", (ESCAPES,), None)
    assert "\x1b" not in PrintableFormatter("%(message)s").format(record)


async def test_token_refusal_text_is_printable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "invalid_client\x1b[5m", "error_description": f"no{ESCAPES}"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        auth = client_secret_auth(client, BASE, FOREIGN)
        with pytest.raises(AuthError) as caught:
            await auth.token()
    assert printable(str(caught.value)) == str(caught.value) and "no[2J" in str(caught.value)



class HostileHandler(BaseHTTPRequestHandler):
    """A FHIR + OAuth server whose every word carries terminal escapes."""

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path.endswith("/.well-known/smart-configuration"):
            self._json(200, {"token_endpoint": f"{origin}/token", "registration_endpoint": f"{origin}/reg"})
        else:
            self._json(200, {"resourceType": "CapabilityStatement", "fhirVersion": f"4.0.1{ESCAPES}",
                             "software": {"name": f"evil{ESCAPES}"}})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/reg":
            self._json(201, {"client_id": f"c1{ESCAPES}", "token_endpoint_auth_method": f"none{ESCAPES}"})
        else:
            self._json(400, {"error": f"invalid_client{ESCAPES}", "error_description": f"go away{ESCAPES}"})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hostile_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostileHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("command", [["doctor"], ["register", "--method", "client_secret_basic", "--force"]])
def test_server_escapes_never_reach_the_terminal(hostile_server: str, tmp_path: Path, command) -> None:
    path = tmp_path / "phg.toml"
    path.write_text(f'[fhir]\nbase_url = "{hostile_server}"\n\n[auth]\nclient_id = "gw"\nclient_secret = "s"\n'
                    f'[outbox]\npath = "{tmp_path / "o.sqlite"}"\n')
    path.chmod(0o600)
    before = path.read_text()
    result = CliRunner().invoke(main, ["--config", str(path), *command])
    shown = result.stdout + result.stderr
    assert result.exit_code == 3, shown
    assert "go away" in shown or "none[2J" in shown  # the server's words, defused
    assert printable(shown) == shown, repr(shown)
    assert path.read_text() == before  # a refused registration stores nothing


def test_a_readable_config_with_a_secret_stops_the_cli(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'client_id = "gw"\nclient_secret = "s3cret"', mode=0o640)
    result = CliRunner().invoke(main, ["--config", str(path), "doctor"])
    assert result.exit_code == 3 and f"chmod 600 {path}" in result.stdout + result.stderr
