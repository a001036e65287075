"""Hub mode on NATS JetStream (issue 15): intake and delivery rates, and a worker's CPU per reading.

It starts its own three-node JetStream cluster on loopback (tests/nats_cluster.py: Debian's nats-server,
every node on this machine, so R3 costs three servers' CPU on the same two cores) and, for delivery,
`phg run --role worker` processes (tests/hub_harness.py), against bench/fakefhir.py and against
sekmet-fhir. Rows (ratios in one run; the machine is shared and noisy):

- hub intake R1, hub intake R3: durable intake readings/s through phg's queue interface (enqueue of
  100-reading batches: published, every PubAck awaited) on a JetStream stream with 1 and with 3 replicas,
  vs phg's SQLite outbox (WAL, synchronous=FULL) on the same readings, interleaved rounds. No target: the
  figure feeds docs/hub.md's capacity plan.
- hub delivery fake 1w/2w, hub delivery sekmet 1w/2w: readings/s the workers deliver from a full queue (R3),
  measured from the first delivered reading to the last (a worker's start-up is not counted), 1 worker vs
  2 workers: against the fake server the client is the limit (ratio 2w/1w says how delivery scales with
  workers on 2 cores that also run three nats-servers), against sekmet the server is.
- hub worker CPU per 1k: CPU seconds (user + system, /proc) a worker process spends per 1,000 readings
  delivered to the fake server (2 workers: their sum over the readings), vs a `phg run --role worker` on a
  SQLite outbox delivering 4x as many to the same server in the same run (target: at most 3x).

--quick (PHG_BENCH_QUICK=1) takes a quarter of the intake readings and a sixth of the delivered ones (about a minute).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from fakefhir import FakeFhir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hub_harness import PhgProcess, stream_messages, wait_until, write_config  # noqa: E402
from nats_cluster import NatsCluster  # noqa: E402
from phg.config import QueueSettings  # noqa: E402
from phg.demo.peers import SekmetServer  # noqa: E402
from phg.demo.sim import simulated_readings  # noqa: E402
from phg.model import PatientRef  # noqa: E402
from phg.outbox import Outbox  # noqa: E402
from phg.outbox.jetstream import JetStreamQueue  # noqa: E402

START = datetime(2026, 11, 28, 9, tzinfo=UTC)
GATEWAY_ID = "02AB7FFFFE00C1C1"
BATCH = 100  # readings per enqueue call (an API request of 100 documents) and per delivery batch
INTAKE_ROUNDS = 4


def _quick() -> bool:
    return bool(os.environ.get("PHG_BENCH_QUICK"))


def _items(n: int, tag: str) -> list[tuple[str, str]]:
    patient = PatientRef("urn:oid:1.2.3.4.5", f"bench-hub-{tag}-{uuid.uuid4().hex[:8]}")
    readings = simulated_readings(patient, START, per_device=(n + 4) // 5)[:n]
    return [(r.key, r.to_json()) for r in readings]


def _settings(cluster: NatsCluster, replicas: int) -> QueueSettings:
    return QueueSettings(engine="jetstream", servers=tuple(cluster.urls), prefix=f"b{uuid.uuid4().hex[:8]}",
                         stream_replicas=replicas)


def _enqueue_seconds(queue: object, items: list[tuple[str, str]]) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(items), BATCH):
        queue.enqueue("fhir", items[i:i + BATCH])  # type: ignore[attr-defined]
    return time.perf_counter() - t0


def bench_intake(cluster: NatsCluster, tmp: Path) -> list[dict]:
    n = 2_000 if _quick() else 8_000
    chunk = n // INTAKE_ROUNDS
    seconds = {"sqlite": 0.0, "r1": 0.0, "r3": 0.0}
    with (Outbox(tmp / "intake.sqlite") as outbox, JetStreamQueue(_settings(cluster, 1)) as r1,
          JetStreamQueue(_settings(cluster, 3)) as r3):
        queues = {"sqlite": outbox, "r1": r1, "r3": r3}
        for q in (r1, r3):  # create the stream (and connect) before timing
            q.enqueue("fhir", _items(1, f"warm-{id(q)}"))
        sides = list(queues)
        for r in range(INTAKE_ROUNDS):
            for side in sides[r % 3:] + sides[:r % 3]:
                seconds[side] += _enqueue_seconds(queues[side], _items(chunk, f"{side}-{r}"))
    rate = {side: n / s for side, s in seconds.items()}
    return [{"name": f"hub intake {side.upper()}", "ratio": rate[side] / rate["sqlite"], "target": "-", "ok": True,
             "figure": f"JetStream {side.upper()} {rate[side]:,.0f} readings/s ({n:,}, enqueue of {BATCH})",
             "baseline": f"SQLite outbox {rate['sqlite']:,.0f} readings/s"} for side in ("r1", "r3")]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/PID/stat fields 14 and 15, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _deliver(cluster: NatsCluster, tmp: Path, base_url: str, workers: int, n: int, tag: str,
             engine: str = "jetstream") -> tuple[float, float]:
    """(readings/s, CPU s of all workers per 1,000 readings) for `workers` worker processes draining n queued
    readings (R3, or a SQLite outbox) to base_url, from the first delivered reading to the last."""
    settings = _settings(cluster, 3)
    outbox = tmp / f"{settings.prefix}.sqlite"
    queue = ({"engine": "jetstream", "servers": list(settings.servers), "prefix": settings.prefix, "stream_replicas": 3}
             if engine == "jetstream" else {"engine": "sqlite"})
    config = write_config(tmp / f"{settings.prefix}.toml", {
        "gateway": {"system_id": GATEWAY_ID},
        "fhir": {"base_url": base_url, "allow_insecure_http": True, "timeout": 30, "strategy": "transaction"},
        "queue": queue, "outbox": {"path": str(outbox)}, "delivery": {"batch_size": BATCH, "lease_seconds": 30}})
    with JetStreamQueue(settings) if engine == "jetstream" else Outbox(outbox) as store:
        items = _items(n, tag)
        for i in range(0, n, 500):
            store.enqueue("fhir", items[i:i + 500])
        processes = [PhgProcess(f"w{i}", "worker", config, tmp / f"{settings.prefix}-w{i}.log").start()
                     for i in range(workers)]
        try:
            def delivered() -> int:
                if engine != "jetstream":
                    return store.counts("fhir")["delivered"]
                left = stream_messages(cluster, f"{settings.prefix}_queue")  # acknowledged: removed (/jsz, cheap)
                return n - left if left is not None else 0

            def alive() -> None:
                for p in processes:
                    p.check()

            wait_until(lambda: delivered() > 0, 60, "a first delivery", every=0.05, alive=alive)
            t0, done0 = time.perf_counter(), delivered()
            cpu0 = sum(_cpu_seconds(p.process.pid) for p in processes)  # type: ignore[union-attr]
            wait_until(lambda: delivered() >= n, 600, f"{n} delivered", delivered, every=0.1, alive=alive)
            seconds = time.perf_counter() - t0
            cpu = sum(_cpu_seconds(p.process.pid) for p in processes) - cpu0  # type: ignore[union-attr]
        finally:
            for p in processes:
                p.stop()
    return (n - done0) / seconds, cpu / (n - done0) * 1000


def bench_hub_delivery(cluster: NatsCluster, tmp: Path) -> list[dict]:
    n_fake, n_sekmet = (1_000, 300) if _quick() else (6_000, 2_000)
    rows = []
    with FakeFhir() as fake, SekmetServer(workdir=tmp / "sekmet") as sekmet:
        results = {}
        for server, base, n in (("fake", fake.base_url, n_fake), ("sekmet", sekmet.base_url, n_sekmet)):
            for workers in (1, 2):
                results[(server, workers)] = _deliver(cluster, tmp, base, workers, n, f"{server}-{workers}")
            one, two = results[(server, 1)][0], results[(server, 2)][0]
            rows.append({"name": f"hub delivery {server} 2w/1w", "ratio": two / one, "target": "-", "ok": True,
                         "figure": f"2 workers {two:,.0f} readings/s ({n:,} readings)",
                         "baseline": f"1 worker {one:,.0f} readings/s"})
        cpu1, cpu2 = results[("fake", 1)][1], results[("fake", 2)][1]
        # 4x the readings: a SQLite worker delivers them 3-5x as fast, and /proc counts CPU in 10 ms ticks.
        sqlite = _deliver(cluster, tmp, fake.base_url, 1, 4 * n_fake, "fake-sqlite", engine="sqlite")[1]
        rows.append({"name": "hub worker CPU per 1k", "ratio": cpu1 / sqlite, "target": "<= 3.0", "ok": cpu1 <= 3 * sqlite,
                     "figure": f"{cpu1:.3f} CPU s per 1,000 readings, 1 worker (2 workers: {cpu2:.3f} together)",
                     "baseline": f"SQLite outbox worker {sqlite:.3f} CPU s per 1,000 readings"})
    return rows


def bench_hub() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="phg-bench-hub-") as tmp, NatsCluster(Path(tmp) / "nats") as cluster:
        rows = bench_intake(cluster, Path(tmp))
        rows += bench_hub_delivery(cluster, Path(tmp))
    return rows


if __name__ == "__main__":
    for row in bench_hub():
        print(row)
