"""PCD-01 over HTTP(S) (POST text/plain ER7, ACK in the body) against a WSGI receiver that parses with
python-hl7 and answers create_ack; over TLS too; AE/AR/5xx/garbage; one reading to two destinations
(HTTP and MLLP), each with its own queue state.

Also home of `wsgi_server`, the threaded (optionally TLS) WSGI server test_soap.py uses."""

from __future__ import annotations

import contextlib
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import hl7
import pytest

from hl7_destinations import http_destination, mllp_destination
from phg.delivery import worker as worker_module
from phg.delivery.worker import DeliveryWorker
from phg.errors import AuthError, ConfigError, TransientDeliveryError
from phg.outbox import Outbox
from test_mllp_peers import GATEWAY, deliver, pki, python_hl7_server, readings_of_every_type  # noqa: F401


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def wsgi_server(app: Callable, ssl_context: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve a WSGI app on 127.0.0.1 (free port) in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{server.server_address[1]}/pcd01"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class HttpReceiver:
    """Answers each POSTed ER7 message by the next scripted action: an ACK code, 'garbage' (HTML),
    '503', '401' (then the default)."""

    script: list[str] = field(default_factory=list)
    default: str = "AA"
    received: list[str] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)).decode("utf-8")
        self.content_types.append(environ.get("CONTENT_TYPE", ""))
        message = hl7.parse(body)
        self.received.append(str(message.segment("MSH")[10]))
        action = self.script.pop(0) if self.script else self.default
        if action == "garbage":
            start_response("200 OK", [("Content-Type", "text/html")])
            return [b"<html>hello</html>"]
        if action in ("503", "401"):
            start_response(f"{action} Nope", [("Content-Type", "text/plain"), ("Retry-After", "7")])
            return [b"try later"]
        ack = message.create_ack(action)
        if action[1] in "ER":
            ack.append(hl7.parse("MSH|^~\\&|x\rERR||OBX^3^5|207^Application internal error^HL70357|E||||not stored")[1])
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return [str(ack).encode("utf-8")]


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(worker_module, "backoff", lambda attempts, base=1.0, cap=300.0: 0.0)


@pytest.mark.peers
async def test_http_post_every_reading_type(tmp_path):
    readings = readings_of_every_type()
    receiver = HttpReceiver()
    with wsgi_server(receiver) as url:
        dest = http_destination(url=url, gateway=GATEWAY, timeout=5)
        box, summary = await deliver(tmp_path, dest, readings)
        await dest.aclose()
    items = box.items("http")
    assert [i.state for i in items] == ["delivered"] * len(readings)
    assert len(receiver.received) == len(set(receiver.received)) == len(readings)
    assert set(receiver.content_types) == {"text/plain; charset=utf-8"}


@pytest.mark.peers
async def test_https_with_mutual_tls(tmp_path, pki):  # noqa: F811
    receiver = HttpReceiver()
    with wsgi_server(receiver, pki.server_context(require_client=True)) as url:
        dest = http_destination(url=url, gateway=GATEWAY, ca_file=pki.ca, client_cert=pki.client_cert,
                                  client_key=pki.client_key, timeout=5)
        box, _ = await deliver(tmp_path, dest, readings_of_every_type()[:2])
        await dest.aclose()
    assert [i.state for i in box.items("http")] == ["delivered", "delivered"]


async def test_http_fault_answers(tmp_path):
    readings = readings_of_every_type()[:4]
    receiver = HttpReceiver(["AE", "AR", "AA", "garbage"])
    with wsgi_server(receiver) as url:
        dest = http_destination(url=url, gateway=GATEWAY, timeout=5, ae_retries=1)
        box = Outbox(tmp_path / "o.sqlite")
        box.enqueue("http", [(r.key, r.to_json()) for r in readings])
        worker = DeliveryWorker(box, dest)
        await worker.run_once()
        first = box.items("http")
        assert [i.state for i in first] == ["queued", "dead", "delivered", "queued"]
        assert "not stored" in first[1].last_error
        await worker.run_once()
        await dest.aclose()
    assert [i.state for i in box.items("http")] == ["delivered", "dead", "delivered", "delivered"]
    assert receiver.received.count(receiver.received[2]) == 1  # the AA'd reading is never sent again


async def test_http_503_is_transient_with_retry_after_and_401_stops(tmp_path):
    receiver = HttpReceiver(["503", "401"])
    with wsgi_server(receiver) as url:
        dest = http_destination(url=url, gateway=GATEWAY, timeout=5)
        with pytest.raises(TransientDeliveryError) as info:
            await dest.send(readings_of_every_type()[:2])
        assert info.value.retry_after == 7.0
        with pytest.raises(AuthError):
            await dest.send(readings_of_every_type()[:1])
        await dest.aclose()


def test_plain_http_only_to_loopback():
    with pytest.raises(ConfigError):
        http_destination(url="http://ehr.example/pcd01", gateway=GATEWAY)
    http_destination(url="http://ehr.example/pcd01", gateway=GATEWAY, allow_insecure_http=True)


@pytest.mark.peers
async def test_one_reading_to_two_destinations_each_with_its_own_queue_state(tmp_path):
    """The MLLP receiver says AA, the HTTP receiver says AE then AA: the reading is delivered to
    both, once each, and the MLLP side is not sent again when HTTP retries."""
    readings = readings_of_every_type()[:2]
    http_receiver = HttpReceiver(["AE"])
    async with python_hl7_server() as mllp_receiver:
        with wsgi_server(http_receiver) as url:
            mllp = mllp_destination(host="127.0.0.1", port=mllp_receiver.port, gateway=GATEWAY, ack_timeout=5)
            http = http_destination(url=url, gateway=GATEWAY, timeout=5)
            box = Outbox(tmp_path / "o.sqlite")
            box.enqueue(["mllp", "http"], [(r.key, r.to_json()) for r in readings])
            first_http = None
            for dest in (mllp, http):
                await DeliveryWorker(box, dest).run_once()
            first_http = [i.state for i in box.items("http")]
            for dest in (mllp, http):
                await DeliveryWorker(box, dest).run(until_idle=True)
            await mllp.aclose()
            await http.aclose()
    assert first_http == ["queued", "delivered"]
    assert [i.state for i in box.items("mllp")] == ["delivered", "delivered"]
    assert [i.state for i in box.items("http")] == ["delivered", "delivered"]
    assert len(mllp_receiver.received) == 2 and len(http_receiver.received) == 3
