"""The service's ingest and end-to-end latency (issue 13), against `phg run` with an [api] table in its own
process, as an app sees it.

- ingest:  durable readings/s through POST /v1/readings (JSON arrays of BATCH reading documents) from one
           keep-alive httpx.Client, vs the in-process path `phg send` takes for the same bodies: parse the
           documents (phg.model.parse_each) and Intake.store them (one transaction per body). Target
           >= 0.5. The gateway's one destination is a closed port on loopback: its worker waits behind
           its circuit, so delivery takes no CPU from ingest.
- single:  p50/p99 of a single-reading POST (one document, one durable transaction) on the same gateway,
           vs the in-process parse + store of one document (baseline p50).
- e2e:     an idle `phg run` delivering to sekmet-fhir (no auth in the loop, as bench/delivery.py): one
           reading POSTed at a time; latency from the POST's start to the item's delivered time in the
           outbox (recorded right after the server's 2xx), p50/p99; vs one bare POST of the same
           transaction Bundle to sekmet (p50), which no gateway can beat. Target: p99 < 1 s.

--quick (PHG_BENCH_QUICK=1) scales ingest from 5,000 to 1,000 readings and the latency samples from 200
to 50.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx

from phg.demo.peers import SekmetServer
from phg.demo.sim import simulated_readings
from phg.fhir import build_transaction, to_json
from phg.intake import Intake
from phg.model import Gateway, PatientRef, Reading, parse_each
from phg.outbox import Outbox

GATEWAY = Gateway(system_id="02AB7FFFFE00C1C3", serial="BENCH-SERVICE-GW")
START = datetime(2026, 11, 28, 9, tzinfo=UTC)
BATCH = 100  # reading documents per POST in the throughput run
PHG = str(Path(sys.executable).parent / "phg")


def sizes() -> tuple[int, int]:
    """(ingest readings, latency samples): 5,000 and 200, or 1,000 and 50 with --quick."""
    return (1_000, 50) if os.environ.get("PHG_BENCH_QUICK") else (5_000, 200)


def readings(tag: str, n: int) -> list[Reading]:
    patient = PatientRef("urn:oid:1.2.3.4.5", f"bench-service-{tag}-{time.time_ns()}")
    return simulated_readings(patient, START, per_device=(n + 4) // 5)[:n]


def documents(batch: list[Reading]) -> bytes:
    return ("[" + ",".join(r.to_json() for r in batch) + "]").encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gateway(tmp: Path, fhir_base: str) -> Iterator[tuple[str, Path]]:
    """`phg run` with [api] on a free loopback port and one FHIR destination; yields (API URL, outbox)."""
    port, outbox = free_port(), tmp / "gateway.sqlite"
    config = tmp / "phg.toml"
    config.write_text(f'[gateway]\nsystem_id = "{GATEWAY.system_id}"\nserial = "{GATEWAY.serial}"\n'
                      f'[fhir]\nbase_url = "{fhir_base}"\n[outbox]\npath = "{outbox}"\n'
                      f'[api]\nlisten = "127.0.0.1:{port}"\n')
    env = {**os.environ, "PHG_CONFIG": str(config), "HOME": str(tmp), "XDG_DATA_HOME": str(tmp / "data")}
    process = subprocess.Popen([PHG, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError(f"phg run exited: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        else:
            raise RuntimeError("phg run did not serve /healthz within 30 s")
        yield url, outbox
    finally:
        process.terminate()
        process.wait(60)


def post(client: httpx.Client, body: bytes) -> list[dict]:
    response = client.post("/v1/readings", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    return response.json()["results"]


def in_process(tmp: Path, bodies: list[bytes]) -> tuple[float, list[float]]:
    """Seconds to parse and store `bodies` in-process (one transaction each), and each one's seconds."""
    with Outbox(tmp / "in-process.sqlite") as outbox:
        intake = Intake(outbox, ["fhir"])
        each = []
        for body in bodies:
            t = time.perf_counter()
            intake.store([r for r in parse_each(body, "bench") if isinstance(r, Reading)])
            each.append(time.perf_counter() - t)
    return sum(each), each


def through_api(url: str, bodies: list[bytes]) -> tuple[float, list[float]]:
    with httpx.Client(base_url=url, timeout=30) as client:  # one keep-alive connection
        post(client, documents(readings("warm", 1)))
        each = []
        for body in bodies:
            t = time.perf_counter()
            post(client, body)
            each.append(time.perf_counter() - t)
    return sum(each), each


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100)[p - 1]


def bench_ingest() -> list[dict]:
    n, samples = sizes()
    data = readings("ingest", n)
    bodies = [documents(data[i:i + BATCH]) for i in range(0, n, BATCH)]
    singles = [documents([r]) for r in readings("single", samples)]
    with tempfile.TemporaryDirectory(prefix="phg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        closed = f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens: delivery waits behind its circuit
        with gateway(tmp, closed) as (url, _):
            api_s, _ = through_api(url, bodies)
            _, api_single = through_api(url, singles)
        local_s, _ = in_process(tmp, bodies)
        _, local_single = in_process(tmp, [documents([r]) for r in readings("single-local", samples)])
    ratio = local_s / api_s
    p50, p99 = percentile(api_single, 50), percentile(api_single, 99)
    return [
        {"name": "ingest POST /v1/readings",
         "figure": f"{n / api_s:,.0f} readings/s ({BATCH} per POST, 1 keep-alive client)",
         "baseline": f"in-process parse + Intake.store {n / local_s:,.0f} readings/s", "ratio": ratio,
         "target": ">= 0.5", "ok": ratio >= 0.5},
        {"name": "single-reading POST", "figure": f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms",
         "baseline": f"in-process p50 {statistics.median(local_single) * 1000:.1f} ms",
         "ratio": p50 / statistics.median(local_single), "target": "report", "ok": True},
    ]


def delivered_at(outbox: Path, item_id: int, deadline: float) -> float:
    """The wall-clock time the gateway recorded the item as delivered (polled read-only)."""
    db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        while time.time() < deadline:
            row = db.execute("SELECT state, updated FROM item WHERE id = ?", (item_id,)).fetchone()
            if row and row[0] == "delivered":
                return row[1]
            time.sleep(0.002)
    finally:
        db.close()
    raise TimeoutError(f"item {item_id} not delivered in time")


def bench_end_to_end() -> dict:
    _, samples = sizes()
    with (tempfile.TemporaryDirectory(prefix="phg-bench-") as tmp_name,
          SekmetServer(workdir=Path(tmp_name) / "sekmet") as server):
        tmp = Path(tmp_name)
        direct = []
        with httpx.Client(timeout=30) as client:
            for r in readings("direct", samples):
                body = to_json(build_transaction([r], GATEWAY).bundle)
                t = time.perf_counter()
                response = client.post(server.base_url, content=body, headers={
                    "Content-Type": "application/fhir+json", "Prefer": "return=minimal"})
                direct.append(time.perf_counter() - t)
                assert response.status_code == 200, response.text
        latencies = []
        with gateway(tmp, server.base_url) as (url, outbox), httpx.Client(base_url=url, timeout=30) as client:
            for r in readings("e2e", samples):
                time.sleep(0.05)  # idle between readings, as an app posting now and then
                started = time.time()
                (result,) = post(client, documents([r]))
                (item,) = result["items"]
                latencies.append(delivered_at(outbox, item["id"], started + 30) - started)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return {"name": "end-to-end POST -> FHIR 2xx",
            "figure": f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (idle gateway)",
            "baseline": f"bare POST of the Bundle p50 {statistics.median(direct) * 1000:.0f} ms",
            "ratio": p50 / statistics.median(direct), "target": "p99 < 1 s", "ok": p99 < 1.0}


def bench_service() -> list[dict]:
    return [*bench_ingest(), bench_end_to_end()]


if __name__ == "__main__":
    print(json.dumps(bench_service(), indent=2))
