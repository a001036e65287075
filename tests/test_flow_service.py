"""Issue 13 acceptance: an app-like client posts 1,000 readings to `phg run` (the process, [api] set)
while it delivers to the FHIR server behind the SMART gate; SIGKILL between the 202s and the delivery
loses nothing; every reading is on the server once. And `phg run` with [api] stops on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from phg.auth import generate_key, jwks, load_key
from phg.config import DEFAULT_SCOPE
from phg.demo.peers import free_port
from phg.demo.sim import simulated_readings
from phg.outbox import Outbox
from phg_run import PhgRun
from test_flow_fhir import START, matches, patient
from test_flow_run_sources import until

pytestmark = pytest.mark.peers

def write_config(tmp_path: Path, base: str, client_id: str, key: Path, port: int) -> Path:
    path = tmp_path / "phg.toml"
    path.write_text(f'''[fhir]
base_url = "{base}"
timeout = 5
[auth]
client_id = "{client_id}"
key_file = "{key}"
[outbox]
path = "{tmp_path / 'outbox.sqlite'}"
[delivery]
lease_seconds = 5
[api]
listen = "127.0.0.1:{port}"
''')
    return path


@contextlib.asynccontextmanager
async def serving(config: Path, port: int, env: dict[str, str] | None = None) -> AsyncIterator[PhgRun]:
    """`phg run` with the config, once its API on `port` answers GET /v1/queue."""
    async with PhgRun(config, api=f"http://127.0.0.1:{port}", env=env) as run:
        await run.ready("/v1/queue")
        yield run


def bodies(documents: list[dict]) -> list[tuple[bytes, str]]:
    """Requests of 50 documents, as an app would send them: JSON arrays and JSON Lines, alternately."""
    found = []
    for n in range(0, len(documents), 50):
        chunk = documents[n:n + 50]
        if n // 50 % 2:
            found.append(("\n".join(json.dumps(d) for d in chunk).encode(), "application/x-ndjson"))
        else:
            found.append((json.dumps(chunk).encode(), "application/json"))
    return found


async def post_all(port: int, documents: list[dict]) -> list[dict]:
    """Each request on one keep-alive connection; every answer 202 with each document queued."""
    answers = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for body, media in bodies(documents):
            answer = await client.post("/v1/readings", content=body, headers={"Content-Type": media})
            assert answer.status_code == 202, answer.text
            answers += answer.json()["results"]
    return answers


def delivered(outbox_path: Path) -> int:
    with Outbox(outbox_path) as outbox:
        return outbox.counts("fhir")["delivered"]


async def test_an_app_posts_1000_readings_a_sigkill_after_the_202s_loses_none_each_on_the_server_once(
        gate, oauth, tmp_path):
    key = tmp_path / "gw.pem"
    generate_key(key, "ES384")
    client_id = oauth.register_client(jwks([load_key(key)]), scope=DEFAULT_SCOPE)["client_id"]
    port = free_port()
    config = write_config(tmp_path, gate.base_url, client_id, key, port)
    outbox = tmp_path / "outbox.sqlite"
    readings = simulated_readings(patient(), START, per_device=200)
    documents = [r.to_document() for r in readings]
    assert len(documents) == 1000

    async with serving(config, port) as run:  # the first half while the gateway delivers
        answers = await post_all(port, documents[:500])
        assert [a["status"] for a in answers] == ["queued"] * 500
        await until(lambda: delivered(outbox) == 500, 60)
        answers = await post_all(port, documents[500:])  # the second half, then SIGKILL after the last 202
        await run.kill()
    assert [a["status"] for a in answers] == ["queued"] * 500
    assert delivered(outbox) < 1000  # the kill came before delivery of some: else this proves nothing

    async with serving(config, port) as run:  # restarted: everything the 202s acknowledged is delivered
        await until(lambda: delivered(outbox) == 1000, 90)
        again = await post_all(port, documents[:100])  # idempotent: known readings stay one item each
        assert {a["status"] for a in again} == {"already delivered"}
        await run.stop()
    with Outbox(outbox) as queue:
        assert queue.counts() == {"queued": 0, "inflight": 0, "delivered": 1000, "dead": 0}
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda r: [matches(gate.upstream, r, m) for m in r.metrics], readings))
    assert [n for per_reading in found for n in per_reading] == [1] * sum(len(r.metrics) for r in readings)


async def test_phg_run_refuses_an_api_address_in_use(tmp_path):
    """[api] listen on a port taken: phg run stops at once, exit 3, naming the key."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "phg.toml"
        config.write_text(f'[fhir]\nbase_url = "http://127.0.0.1:{free_port()}/fhir"\n[auth]\nmethod = "none"\n'
                          f'[outbox]\npath = "{tmp_path / "o.sqlite"}"\n[api]\nlisten = "127.0.0.1:{port}"\n')
        async with PhgRun(config) as run:
            _, err = await asyncio.wait_for(run.child.communicate(), 30)
    assert run.child.returncode == 3, err.decode()
    assert f"[api] listen 127.0.0.1:{port}: cannot listen there" in err.decode()


async def test_phg_run_goes_on_taking_readings_while_its_destination_is_stopped(tmp_path):
    """The only destination stops for a person to fix (its base answers 404 to the POST: a wrong URL, a
    ConfigError): `phg run` with [api] stays up and takes readings into the queue (not a restart loop under
    systemd, not the apps' readings refused), /readyz names the stopped destination, so does systemd's STATUS=
    (`systemctl status`), and SIGTERM ends it cleanly (exit 0), every reading still queued."""
    import os
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    wrong = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=wrong.serve_forever, daemon=True).start()
    port = free_port()
    config = tmp_path / "phg.toml"
    config.write_text(f'[fhir]\nbase_url = "http://127.0.0.1:{wrong.server_port}/not-fhir"\n[auth]\nmethod = "none"\n'
                      f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n[api]\nlisten = "127.0.0.1:{port}"\n')
    documents = [r.to_document() for r in simulated_readings(patient(), START, per_device=20)]
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"phg-test-notify-{os.getpid()}-{port}"
    notify.bind("\0" + name)  # the abstract namespace: no path length to mind
    notify.setblocking(False)
    try:
        async with serving(config, port, env={"NOTIFY_SOCKET": "@" + name}) as run:
            assert [a["status"] for a in await post_all(port, documents[:50])] == ["queued"] * 50
            logged = await run.logged("delivery stopped, its queue is intact; tried again in ")
            assert "answered 404 to a POST" in logged
            said = [(await asyncio.wait_for(asyncio.get_running_loop().sock_recv(notify, 4096), 15)).decode()]
            while not said[-1].startswith("STATUS=fhir stopped: "):
                said.append((await asyncio.wait_for(asyncio.get_running_loop().sock_recv(notify, 4096), 15)).decode())
            assert said[0] == "READY=1" and "answered 404 to a POST" in said[-1], said
            assert [a["status"] for a in await post_all(port, documents[50:])] == ["queued"] * 50
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
                ready = await api.get("/readyz")
            assert ready.status_code == 503 and "destination fhir stopped" in ready.text, ready.text
            await run.stop()
    finally:
        wrong.shutdown()
        notify.close()
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        assert outbox.counts("fhir") == {"queued": 100, "inflight": 0, "delivered": 0, "dead": 0}
