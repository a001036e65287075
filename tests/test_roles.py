"""Roles (issue 15): `phg run --role intake` takes readings (the API here) and delivers none; `phg run
--role worker` delivers and serves only /healthz, /readyz and /metrics; an intake process and a worker
process on one queue, started in either order, deliver everything, each reading on the server once.
Real processes, a real sekmet-fhir, on both engines: the SQLite outbox file and a 3-node JetStream
cluster (tests/nats_cluster.py)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from nats_cluster import nats_cluster  # noqa: F401  (a fixture: the JetStream engine's cluster)
from phg.config import load_config
from phg.demo.peers import free_port
from phg.demo.sim import simulated_readings
from phg.model import PatientRef
from phg_run import PhgRun
from test_flow_fhir import START, matches

ENGINES = ["sqlite", "jetstream"]


def queue_table(request: pytest.FixtureRequest, engine: str) -> str:
    """The [queue] table of `engine`: nothing for SQLite (the [outbox] file), else the test's 3-node JetStream
    cluster with replicated streams and a prefix of this test's own."""
    if engine == "sqlite":
        return ""
    cluster = request.getfixturevalue("nats_cluster")
    servers = ", ".join(f'"{url}"' for url in cluster.urls)
    return (f'[queue]\nengine = "jetstream"\nservers = [{servers}]\nstream_replicas = 3\n'
            f'prefix = "t{uuid.uuid4().hex[:12]}"\n')


def write_config(tmp_path: Path, base: str, port: int, queue: str = "") -> Path:
    """One config for every process: the queue, the FHIR server, [api] on `port` (a process given
    PHG_API_LISTEN listens elsewhere)."""
    path = tmp_path / "phg.toml"
    path.write_text(f'[fhir]\nbase_url = "{base}"\ntimeout = 5\n[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n'
                    f'[delivery]\nlease_seconds = 5\n[api]\nlisten = "127.0.0.1:{port}"\n{queue}')
    return path


@contextlib.asynccontextmanager
async def process(config: Path, role: str, port: int) -> AsyncIterator[PhgRun]:
    """`phg run --role ROLE` with the config, its API on `port` (`.api`), once /readyz answers."""
    async with PhgRun(config, "--role", role, api=f"http://127.0.0.1:{port}",
                      env={"PHG_API_LISTEN": f"127.0.0.1:{port}"}) as run:
        await run.ready("/readyz")
        yield run


async def post(url: str, documents: list[dict]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for n in range(0, len(documents), 50):
            answer = await client.post("/v1/readings", json=documents[n:n + 50])
            assert answer.status_code == 202, answer.text
            assert {r["status"] for r in answer.json()["results"]} == {"queued"}


def on_server(base: str, readings: list) -> list[int]:
    """How many times each metric of `readings` is on the FHIR server."""
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda r: [matches(base, r, m) for m in r.metrics], readings))
    return [n for per_reading in found for n in per_reading]


async def until_on_server(base: str, readings: list, seconds: float) -> None:
    """Until every metric of `readings` is on the server once: a sample is polled, then all are checked."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    for each in (readings[::10] + readings[-1:], readings):
        while (counts := await asyncio.to_thread(on_server, base, each)) != [1] * len(counts):
            assert loop.time() < deadline, f"{counts.count(0)} of {len(counts)} observations missing"
            await asyncio.sleep(1)


def readings(n_per_device: int) -> list:
    return simulated_readings(PatientRef("urn:oid:1.2.3.4.5", f"pt-roles-{uuid.uuid4().hex[:10]}"), START,
                              per_device=n_per_device)


@pytest.mark.peers
@pytest.mark.parametrize("engine", ENGINES)
async def test_an_intake_process_and_a_worker_process_on_one_queue_deliver_everything(engine, request, sekmet,
                                                                                      tmp_path):
    intake_port, worker_port = free_port(), free_port()
    config = write_config(tmp_path, sekmet.base_url, intake_port, queue_table(request, engine))
    first, second = readings(10), readings(10)  # 50 readings each
    async with process(config, "intake", intake_port) as intake:
        await post(intake.api, [r.to_document() for r in first])
        await asyncio.sleep(2)  # an intake delivers nothing: the readings wait for a worker
        assert set(await asyncio.to_thread(on_server, sekmet.base_url, first[::5])) == {0}
        async with process(config, "worker", worker_port) as worker:  # started after the intake
            async with httpx.AsyncClient(base_url=worker.api) as client:
                assert (await client.get("/healthz")).status_code == 200
                assert "phg_queue_items" in (await client.get("/metrics")).text
                for path in ("/v1/queue", "/"):  # no ingest, queue or page: the intakes' to serve
                    assert (await client.get(path)).status_code == 404
                assert (await client.post("/v1/readings", json=[first[0].to_document()])).status_code in (404, 405)
            await until_on_server(sekmet.base_url, first, 120)
            await post(intake.api, [r.to_document() for r in second])  # to a running worker, from another process
            await until_on_server(sekmet.base_url, second, 120)
            assert "role worker" in await worker.stop()
        assert "role intake" in await intake.stop()


@pytest.mark.peers
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_worker_started_first_delivers_what_a_later_intake_takes(engine, request, sekmet, tmp_path):
    intake_port, worker_port = free_port(), free_port()
    config = write_config(tmp_path, sekmet.base_url, intake_port, queue_table(request, engine))
    batch = readings(4)
    async with process(config, "worker", worker_port) as worker, process(config, "intake", intake_port) as intake:
        await post(intake.api, [r.to_document() for r in batch])
        await until_on_server(sekmet.base_url, batch, 60)
        await intake.stop()
        await worker.stop()


@pytest.mark.peers
async def test_a_worker_started_before_its_jetstream_waits_for_it_then_delivers(sekmet, tmp_path):
    """JetStream not up yet: `phg run --role worker` logs it, tries again with backoff and delivers once it
    answers; stopped, it exits cleanly."""
    from nats_cluster import NatsCluster, require_nats_server
    from phg.intake import Intake
    from phg.outbox import open_queue

    require_nats_server()
    cluster = NatsCluster(tmp_path / "nats", size=1)  # its port chosen, not started yet
    servers = ", ".join(f'"{url}"' for url in cluster.urls)
    config = write_config(tmp_path, sekmet.base_url, free_port(),
                          f'[queue]\nengine = "jetstream"\nservers = [{servers}]\n')
    async with PhgRun(config, "--role", "worker") as worker:
        logged = await worker.logged("the queue cannot be reached")
        assert "trying again in 1 s" in logged
        with cluster:
            cluster.wait_ready()
            batch = readings(2)
            loaded = load_config(config, env={})
            with open_queue(loaded) as queue:
                Intake(queue, loaded.destination_names).store(batch)
            await until_on_server(sekmet.base_url, batch, 90)
            await worker.stop()  # waiting, not failed: it delivered, and it exits cleanly


async def test_a_run_stopped_before_its_jetstream_answers_exits_cleanly(tmp_path):
    from nats_cluster import require_nats_server

    require_nats_server()
    config = write_config(tmp_path, "http://127.0.0.1:9/fhir", free_port(),
                          f'[queue]\nengine = "jetstream"\nservers = ["nats://127.0.0.1:{free_port()}"]\n')
    async with PhgRun(config) as run:
        await run.logged("the queue cannot be reached")
        assert "stopped before the queue could be reached" in await run.stop()


def test_role_comes_from_the_flag_the_environment_or_run_role(tmp_path):
    path = tmp_path / "phg.toml"
    path.write_text('[run]\nrole = "worker"\n')
    assert load_config(path, env={}).role == "worker"
    assert load_config(path, env={"PHG_RUN_ROLE": "intake"}).role == "intake"
    assert load_config(path, env={"PHG_RUN_ROLE": "intake"}, flags={("run", "role"): "all"}).role == "all"
    assert load_config(None, env={}, document={}).role == "all"
    path.write_text('[run]\nrole = "both"\n')
    with pytest.raises(Exception, match=r"\[run\] role must be one of all, intake, worker, not 'both'"):
        load_config(path, env={})
