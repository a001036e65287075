"""Who may use the service (phg.service.security): API keys, mutual TLS, loopback, cross-site requests, the TLS
requirement off loopback and `phg api-key`. The policy is tested as a function of simulated requests (any peer
address); real uvicorn servers prove it end to end: one on 127.0.0.1 with keys required by config, one on this
machine's own non-loopback address when it has one, one with mutual TLS from the test CA."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from tests.test_flow_auth import CertAuthority

from phg.cli import main
from phg.config import ApiSettings, load_config
from phg.errors import ConfigError
from phg.intake import Intake
from phg.model import Device, Metric, PatientRef, Reading
from phg.outbox import Outbox
from phg.service.app import ServiceContext
from phg.service.security import Guard, KeyStore, Protect, server_options
from phg.service.server import GRACE, _Limited, serve

READING = Reading(Device(system_id="0A1B2C3D4E5F6001"), PatientRef("urn:oid:1.2.3", "bob"),
                  (Metric(150456, datetime(2026, 11, 28, tzinfo=UTC), Decimal("97"), "%"),))


def scope(path: str = "/v1/queue", method: str = "GET", *, peer: str = "192.0.2.9", host: str = "gw.example:8470",
          scheme: str = "http", **headers: str) -> dict:
    """An ASGI HTTP scope as uvicorn builds it (headers lower-case latin-1 bytes)."""
    raw = [(b"host", host.encode())] + [(k.replace("_", "-").lower().encode(), v.encode("latin-1"))
                                         for k, v in headers.items()]
    return {"type": "http", "method": method, "path": path, "scheme": scheme, "client": (peer, 50000),
            "headers": raw}


@pytest.fixture
def store(tmp_path) -> KeyStore:
    return KeyStore(tmp_path / "api-keys.json")


def remote(store: KeyStore, **kwargs) -> Guard:
    return Guard("0.0.0.0", store, **kwargs)


# ------------------------------------------------------------------------------------------ keys


def test_a_key_is_stored_only_as_its_sha256_in_a_private_file(store):
    record, key = store.create("nurse station")
    text = store.path.read_text()
    assert key.startswith("phg_") and len(key) >= 4 + 43  # 256 bits, base64url
    assert key not in text and record.sha256 in text and "nurse station" in text
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert store.verify(key) == record and store.verify(key + "x") is None and store.verify("") is None


def test_a_revoked_key_no_longer_verifies_and_the_running_store_sees_it(store, tmp_path):
    _, key = store.create("app")
    running = KeyStore(store.path)  # the service's own store, already loaded
    assert running.verify(key) is not None
    store.revoke(store.keys()[0].id)
    assert running.verify(key) is None
    with pytest.raises(ConfigError, match="no API key 'nope'"):
        store.revoke("nope")


def test_a_key_file_others_can_read_or_not_phgs_is_refused(store):
    store.create("app")
    store.path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        KeyStore(store.path).keys()
    store.path.chmod(0o600)
    store.path.write_text('{"keys": [{"id": 1}]}')
    with pytest.raises(ConfigError, match="is not phg's"):
        KeyStore(store.path).keys()


def test_phg_api_key_create_prints_the_key_once_list_and_revoke(tmp_path):
    keys_file = tmp_path / "keys.json"
    config = tmp_path / "phg.toml"
    config.write_text(f'[api]\nkeys_file = "{keys_file}"\n[outbox]\npath = "{tmp_path / "o.sqlite"}"\n')
    run = CliRunner().invoke
    created = run(main, ["--config", str(config), "api-key", "create", "--json", "tablet 3"])
    assert created.exit_code == 0, created.output
    found = json.loads(created.output)
    assert KeyStore(keys_file).verify(found["key"]).name == "tablet 3"
    listed = run(main, ["--config", str(config), "api-key", "list"])
    assert found["id"] in listed.output and "active" in listed.output and found["key"] not in listed.output
    assert run(main, ["--config", str(config), "api-key", "revoke", found["id"]]).exit_code == 0
    assert KeyStore(keys_file).verify(found["key"]) is None
    assert "revoked" in run(main, ["--config", str(config), "api-key", "list"]).output
    assert run(main, ["--config", str(config), "api-key", "revoke", "nope"]).exit_code == 3


# ------------------------------------------------------------------------------------------ the policy


def test_off_loopback_without_a_key_401_revoked_401_valid_passes(store):
    guard = remote(store)
    _, key = store.create("app")
    refused = guard.check(scope())
    assert refused.status == 401 and refused.challenge
    assert guard.check(scope(authorization=f"Bearer {key}")) is None
    assert guard.check(scope(authorization=f"bearer {key}")) is None  # auth-scheme is case-insensitive
    assert guard.check(scope(x_api_key=key)) is None
    assert guard.check(scope(authorization="Basic " + base64.b64encode(f"any:{key}".encode()).decode())) is None
    store.revoke(store.keys()[0].id)
    assert guard.check(scope(authorization=f"Bearer {key}")).invalid_key


def test_loopback_is_open_only_for_a_loopback_peer_without_proxy_headers_naming_loopback(store):
    guard = Guard("127.0.0.1", store)
    assert guard.check(scope(peer="127.0.0.1", host="127.0.0.1:8470")) is None
    assert guard.check(scope(peer="::1", host="[::1]:8470")) is None
    assert guard.check(scope(peer="127.0.0.1", host="localhost:8470")) is None
    assert guard.check(scope(peer="192.0.2.9", host="127.0.0.1:8470")).status == 401
    # a reverse proxy on loopback forwarding outside traffic: keys required
    assert guard.check(scope(peer="127.0.0.1", host="127.0.0.1", x_forwarded_for="203.0.113.5")).status == 401
    assert guard.check(scope(peer="127.0.0.1", host="127.0.0.1", forwarded="for=203.0.113.5")).status == 401
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1
    assert guard.check(scope(peer="127.0.0.1", host="evil.example:8470")).status == 401
    assert Guard("0.0.0.0", store).check(scope(peer="127.0.0.1", host="127.0.0.1")).status == 401
    assert Guard("127.0.0.1", store, require_auth=True).check(scope(peer="127.0.0.1", host="127.0.0.1")).status == 401


def test_healthz_and_readyz_are_open_metrics_and_openapi_are_not(store):
    guard = remote(store)
    assert guard.check(scope("/healthz")) is None and guard.check(scope("/readyz", "HEAD")) is None
    assert guard.check(scope("/metrics")).status == 401 and guard.check(scope("/openapi.json")).status == 401
    assert guard.check(scope("/healthz", "POST")).status == 401


def test_client_certificate_connections_are_authenticated(store):
    guard = remote(store, client_ca=True)
    assert guard.check(scope(scheme="https")) is None
    assert guard.check(scope(scheme="http")).status == 401  # not over the TLS listener that demands one


def test_cross_site_posts_with_ambient_credentials_are_refused(store):
    loopback = {"peer": "127.0.0.1", "host": "127.0.0.1:8470"}
    retry = "/items/7/retry"
    guard = Guard("127.0.0.1", store, allowed_origins=("https://gw.example.org",))
    assert guard.check(scope(retry, "POST", **loopback, origin="http://127.0.0.1:8470")) is None
    assert guard.check(scope(retry, "POST", **loopback)) is None  # no Origin, no Referer: not a browser
    for headers in ({"origin": "http://evil.example"}, {"origin": "null"}, {"referer": "http://evil.example/x"},
                    {"sec_fetch_site": "cross-site"}, {"origin": "http://127.0.0.1:9999"}):
        refused = guard.check(scope(retry, "POST", **loopback, **headers))
        assert refused is not None and refused.status == 403, headers
    assert guard.check(scope(retry, "POST", **loopback, origin="https://gw.example.org")) is None
    assert guard.check(scope(retry, "GET", **loopback, origin="http://evil.example")) is None  # safe method
    # a client certificate and Basic are ambient too; a key in a header is not (no browser sends it on its own)
    _, key = store.create("app")
    certified = Guard("0.0.0.0", store, client_ca=True)
    assert certified.check(scope(retry, "POST", scheme="https", origin="http://evil.example")).status == 403
    basic = "Basic " + base64.b64encode(f":{key}".encode()).decode()
    assert certified.check(scope(retry, "POST", authorization=basic, origin="http://evil.example")).status == 403
    assert certified.check(scope(retry, "POST", authorization=f"Bearer {key}", origin="http://evil.example")) is None


def test_a_cross_site_websocket_handshake_is_closed(store):
    """Cross-site WebSocket hijacking: the handshake is a GET, but it opens a channel both ways (RFC 6455 10.2)."""
    sent: list = []

    async def app(scope, receive, send):
        sent.append("reached the app")

    async def send(message):
        sent.append(message)

    handshake = scope("/ws", peer="127.0.0.1", host="127.0.0.1:8470", origin="http://evil.example")
    del handshake["method"]
    asyncio.run(Protect(app, Guard("127.0.0.1", store))({**handshake, "type": "websocket"}, None, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]


@given(st.dictionaries(st.sampled_from(["authorization", "x-api-key", "host", "origin", "referer", "forwarded",
                                        "sec-fetch-site"]), st.text(st.characters(max_codepoint=255), max_size=60)),
       st.sampled_from(["GET", "POST"]), st.sampled_from(["127.0.0.1", "::1", "192.0.2.9"]))
def test_any_headers_are_decided_without_error_and_only_a_key_passes_off_loopback(tmp_path_factory, headers,
                                                                                     method, peer):
    store = KeyStore(tmp_path_factory.mktemp("k") / "keys.json")
    found = {"type": "http", "method": method, "path": "/v1/queue", "scheme": "http", "client": (peer, 1),
             "headers": [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]}
    assert remote(store).check(found).status == 401
    refusal = Guard("127.0.0.1", store).check(found)
    assert refusal is None or refusal.status in (401, 403)


# ------------------------------------------------------------------------------------------ settings


def test_off_loopback_without_tls_is_refused_naming_the_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"\[api\] listen = '0.0.0.0'.*tls_cert and tls_key.*allow_insecure"):
        load_config(env={}, document={"api": {"listen": "0.0.0.0:8470"}})
    with pytest.raises(ConfigError, match="PHG_API_LISTEN"):
        load_config(env={"PHG_API_LISTEN": "192.0.2.2:8470"}, document={})
    assert load_config(env={}, document={"api": {"listen": "0.0.0.0:8470", "allow_insecure": True}}).api
    assert load_config(env={}, document={"api": {"listen": "[::1]:8470"}}).api.listen == ("::1", 8470)


def test_phg_run_refuses_to_start_off_loopback_without_tls(tmp_path):
    config = tmp_path / "phg.toml"
    config.write_text('[api]\nlisten = "0.0.0.0:8470"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "run"])
    assert result.exit_code == 3 and "allow_insecure" in result.output


def test_tls_settings_go_together_and_the_key_is_private(tmp_path):
    ca = CertAuthority(tmp_path)
    cert, key = ca.issue("server", server=True)
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_config(env={}, document={"api": {"tls_cert": str(cert)}})
    with pytest.raises(ConfigError, match="client_ca.*needs"):
        load_config(env={}, document={"api": {"client_ca": str(ca.ca_file)}})
    with pytest.raises(ConfigError, match="not an origin"):
        load_config(env={}, document={"api": {"allowed_origins": ["https://gw.example/path"]}})
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="tls_key.*chmod 600"):
        load_config(env={}, document={"api": {"tls_cert": str(cert), "tls_key": str(key)}})
    key.chmod(0o600)
    api = load_config(env={}, document={"api": {"listen": "0.0.0.0:8470", "tls_cert": str(cert), "tls_key": str(key),
                                                "client_ca": str(ca.ca_file)}}).api
    options = server_options(api)
    assert options["ssl_cert_reqs"] == ssl.CERT_REQUIRED and options["ssl_ca_certs"] == str(ca.ca_file)
    assert options["proxy_headers"] is False and "ssl_ciphers" in options
    assert server_options(ApiSettings()) == {"proxy_headers": False}


# ------------------------------------------------------------------------------------------ real servers


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def serving(tmp_path: Path, api: dict) -> Iterator[tuple[ServiceContext, str]]:
    """The service as `phg run` serves it (phg.service.server.serve, in a thread with its own event loop)
    with [api] `api`; yields (ctx, base URL)."""
    host, port = api.setdefault("listen", f"127.0.0.1:{free_port('127.0.0.1')}").rsplit(":", 1)
    config = load_config(env={}, document={"api": {"keys_file": str(tmp_path / "keys.json"), **api},
                                           "fhir": {"base_url": "http://127.0.0.1:9/fhir"},
                                           "outbox": {"path": str(tmp_path / "outbox.sqlite")}})
    outbox = Outbox(config.outbox_path, config.keep_delivered)
    ctx = ServiceContext(config, outbox, Intake(outbox, config.destination_names))
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(ctx, stop),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host.strip("[]"), int(port)), timeout=1):
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"the service did not listen on {host}:{port}")
    try:
        yield ctx, f"{'https' if config.api.tls_cert else 'http'}://{host}:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(GRACE + 5)
        loop.close()
        outbox.close()


def post_reading(base: str, **kwargs) -> httpx.Response:
    verify = kwargs.pop("verify", True)
    with httpx.Client(base_url=base, verify=verify, timeout=10) as client:
        return client.post("/v1/readings", content=READING.to_json(),
                           headers={"content-type": "application/json", **kwargs.pop("headers", {})}, **kwargs)


def check_keys(tmp_path: Path, base: str) -> None:
    """Without a key 401, with a revoked key 401, with a valid key 202."""
    store = KeyStore(tmp_path / "keys.json")
    _, revoked = store.create("old tablet")
    store.revoke(store.keys()[0].id)
    _, valid = store.create("tablet")
    refused = post_reading(base)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert post_reading(base, headers={"authorization": f"Bearer {revoked}"}).status_code == 401
    accepted = post_reading(base, headers={"authorization": f"Bearer {valid}"})
    assert accepted.status_code == 202, accepted.text


def test_real_server_on_loopback_with_keys_required_by_config(tmp_path):
    with serving(tmp_path, {"require_auth": True}) as (_, base):
        check_keys(tmp_path, base)
        assert httpx.get(f"{base}/healthz").status_code == 200


def test_mutual_tls_with_the_test_ca(tmp_path):
    ca = CertAuthority(tmp_path)
    cert, key = ca.issue("server", server=True)
    client_cert, client_key = ca.issue("tablet", server=False)
    (tmp_path / "other").mkdir()
    stranger = CertAuthority(tmp_path / "other", name="other CA").issue("stranger", server=False)
    api = {"tls_cert": str(cert), "tls_key": str(key), "client_ca": str(ca.ca_file), "require_auth": True}
    with serving(tmp_path, api) as (_, base):
        trusted = ssl.create_default_context(cafile=str(ca.ca_file))
        trusted.load_cert_chain(client_cert, client_key)
        assert post_reading(base, verify=trusted).status_code == 202  # the certificate is the credential
        for chain in (None, stranger):
            context = ssl.create_default_context(cafile=str(ca.ca_file))
            if chain:
                context.load_cert_chain(*chain)
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                post_reading(base, verify=context)


def test_a_cross_origin_post_to_the_retry_action_is_refused(tmp_path):
    with serving(tmp_path, {}) as (ctx, base):
        ctx.intake.store([READING])
        item = ctx.outbox.lease("fhir", 1, 60)[0]
        ctx.outbox.dead([item.id], "HTTP 422")
        for path in (f"/items/{item.id}/retry", f"/v1/items/{item.id}/retry"):
            forged = httpx.post(base + path, headers={"origin": "http://evil.example"})
            assert forged.status_code == 403 and "cross-origin" in forged.json()["error"]
        assert ctx.outbox.get(item.id).state == "dead"
        own = httpx.post(f"{base}/items/{item.id}/retry", headers={"origin": base})
        assert own.status_code < 400 and ctx.outbox.get(item.id).state == "queued"


def test_refusals_are_logged_without_the_key_or_the_path(tmp_path, caplog):
    """The path may name a patient; a presented key, even a wrong one, is a secret."""
    caplog.set_level(logging.DEBUG, logger="phg")
    with serving(tmp_path, {"require_auth": True}) as (_, base):
        answer = httpx.get(f"{base}/v1/patients/urn:oid:1.2.3|alice/readings",
                           headers={"authorization": "Bearer phg_wrong-key-0123456789"})
    assert answer.status_code == 401
    refusals = [r.getMessage() for r in caplog.records if r.name == "phg.service.security"]
    assert any("unknown or revoked" in line for line in refusals)
    assert not any("wrong-key" in line or "alice" in line for line in refusals)


def test_a_key_file_made_readable_while_serving_refuses_every_key_with_503(tmp_path, caplog):
    with serving(tmp_path, {"require_auth": True}) as (_, base):
        _, key = KeyStore(tmp_path / "keys.json").create("tablet")
        assert post_reading(base, headers={"authorization": f"Bearer {key}"}).status_code == 202
        (tmp_path / "keys.json").chmod(0o644)
        answer = post_reading(base, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 503 and "chmod 600" in caplog.text


def test_a_service_nobody_can_use_says_so_at_start(tmp_path, caplog):
    with serving(tmp_path, {"require_auth": True}):
        pass
    assert "phg api-key create" in caplog.text


# ------------------------------------------------------------------------------------------ slow clients


SLOW = [b"", b"POST /v1/readings HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"POST /v1/readings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"]


def address(base: str) -> tuple[str, int]:
    host, port = base.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


@pytest.mark.parametrize("sent", SLOW, ids=["nothing", "half-the-headers", "half-the-body"])
def test_a_slow_client_is_cut_off_at_the_deadline(tmp_path, monkeypatch, sent):
    """uvicorn alone keeps such a connection open for ever (slowloris: enough of them take every file
    descriptor of phg run); the service closes it once its request is not sent and answered in time."""
    monkeypatch.setattr(_Limited, "deadline", 0.5)
    with serving(tmp_path, {}) as (_, base), socket.create_connection(address(base), timeout=5) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the service (a timeout here: still open after 5 s)
        assert 0.3 < time.monotonic() - started < 3


def test_each_answer_gives_a_keep_alive_connection_a_new_deadline(tmp_path, monkeypatch):
    """Three requests 0.4 s apart on one connection, 1.2 s in all against a 0.6 s deadline: each answered."""
    monkeypatch.setattr(_Limited, "deadline", 0.6)
    with serving(tmp_path, {}) as (_, base):
        connection = http.client.HTTPConnection(*address(base), timeout=5)
        ports = set()
        for _ in range(3):
            connection.request("GET", "/healthz")
            assert connection.getresponse().read() and connection.sock is not None
            ports.add(connection.sock.getsockname()[1])
            time.sleep(0.4)
        connection.close()
        assert len(ports) == 1


def test_connections_beyond_the_cap_are_closed_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(_Limited, "max_connections", 4)
    with serving(tmp_path, {}) as (_, base):
        time.sleep(0.3)  # serving()'s own probe connection is gone
        idle = [socket.create_connection(address(base), timeout=5) for _ in range(4)]
        time.sleep(0.3)  # all four accepted
        with socket.create_connection(address(base), timeout=5) as extra:
            assert extra.recv(10) == b""  # closed at once, not left waiting
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        with httpx.Client(base_url=base, timeout=5) as client:
            assert client.get("/healthz").status_code == 200
