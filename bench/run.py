"""phg benchmarks: `make bench` (or `python bench/run.py [--quick] [NAME...]`) prints one table.

Every figure is a ratio against a baseline measured in the same run on the same machine, because
machines here are noisy: absolute numbers are printed for context only.

- enqueue:   durable enqueue (phg Outbox) vs raw sqlite3 inserts of the same bytes with the same
             durability settings (WAL, synchronous=FULL), same batch size. Target >= 0.5.
- purge:     retention's pass over 200,000 delivered rows whose payloads are all blanked already, through
             item_unpurged vs the statement before it (led through item_state, as then). Target >= 100.
- cold-start: `phg --help` vs `python -c pass` (interpreter start-up alone). Target < 0.3 s absolute.
- footprint: peak RSS while draining a backlog through the worker vs idle RSS. Target < 1.5x.
- delivery:  observations/s that `phg run`'s delivery path gets through sekmet-fhir on loopback vs a
             bare httpx loop POSTing the same Bundles (target >= 0.9) and vs one POST per resource
             (target >= 10x). bench/delivery.py; starts sekmet-fhir itself.
- tokens:    token requests of 32 concurrent senders sharing one SMART auth, time scaled 1/50
             (6 s tokens, 12 s), vs duration/TTL + 1. Target <= 1.0. bench/tokens.py; needs the Node
             peers (make setup).
- service:   `phg run` with [api]: readings/s through POST /v1/readings from one keep-alive client vs the
             in-process parse + Intake.store of the same bodies (target >= 0.5); p50/p99 of a single-reading
             POST; end-to-end POST -> sekmet-fhir 2xx on an idle gateway (p50/p99, target p99 < 1 s).
             bench/service.py; starts sekmet-fhir itself.

- mapping, render, send: the client path (issue 16): build + encode vs json.dumps of the same dicts (<= 2),
             `phg render` of 5,000 readings (<= 1 s, <= 100 MB), `phg send` of one reading --no-deliver vs
             `python -c pass` (<= 4). bench/clientpath.py.

- fit-medplum, fit-sekmet: phg's strategy "auto" vs the best of "transaction", "single" and a naive client
             on that server, a fresh server per side (target >= 0.9, no "too many entries" refusal after the
             first minute). client: phg vs a bare httpx loop against bench/fakefhir.py (target >= 0.5) and
             phg's CPU s per 1,000 readings (target <= 0.1). bench/delivery.py; issue 16.
- client-before: the same client path's CPU per reading in the tree before issue 16 (a git worktree of
             f8f0590) over this tree's, alternating child processes (target >= 3: the issue's "three times
             cheaper"). bench/clientbefore.py.

- hub intake R1/R3, hub delivery fake/sekmet 2w/1w, hub worker CPU per 1k: hub mode on a three-node
             JetStream cluster it starts (issue 15): durable intake vs the SQLite outbox, delivery with 1 and 2
             `phg run --role worker` processes, a worker's CPU s per 1,000 readings (target <= 0.1).
             bench/hub.py; figures in docs/hub.md.

--quick (or PHG_BENCH_QUICK=1) scales the delivery benchmark down from 10,000 to 1,000 readings.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from clientbefore import bench_client_before
from clientpath import bench_mapping, bench_render, bench_send
from delivery import bench_client, bench_delivery, bench_fit_medplum, bench_fit_sekmet
from hub import bench_hub
from service import bench_service
from tokens import bench_tokens

from phg.delivery import Delivered, DeliveryWorker
from phg.demo.sim import simulated_readings
from phg.model import PatientRef
from phg.outbox import Outbox

PATIENT = PatientRef("urn:oid:1.2.3.4.5", "bench")
START = datetime(2026, 11, 28, 9, tzinfo=UTC)


def items(n: int) -> list[tuple[str, str]]:
    readings = simulated_readings(PATIENT, START, per_device=(n + 4) // 5)[:n]
    return [(r.key, r.to_json()) for r in readings]


def bench_enqueue(n: int = 20_000, batch: int = 100) -> dict:
    """The two sides take turns batch by batch, each first every other batch: the machine's fsync latency
    changes from one second to the next (other work on the disk), and both sides then meet the same."""
    data = items(n)
    with tempfile.TemporaryDirectory() as tmp:
        raw = sqlite3.connect(Path(tmp) / "raw.sqlite", isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=FULL")
        raw.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, destination TEXT, key TEXT, payload TEXT,"
                    " UNIQUE (destination, key))")

        def raw_enqueue(chunk: list[tuple[str, str]]) -> None:
            raw.execute("BEGIN IMMEDIATE")
            raw.executemany("INSERT INTO item (destination, key, payload) VALUES ('fhir', ?, ?)", chunk)
            raw.execute("COMMIT")

        outbox = Outbox(Path(tmp) / "phg.sqlite")

        def phg_enqueue(chunk: list[tuple[str, str]]) -> None:
            outbox.enqueue("fhir", chunk)

        seconds = {raw_enqueue: 0.0, phg_enqueue: 0.0}
        for i in range(0, n, batch):
            for enqueue in (raw_enqueue, phg_enqueue)[::1 if i // batch % 2 else -1]:
                t0 = time.perf_counter()
                enqueue(data[i:i + batch])
                seconds[enqueue] += time.perf_counter() - t0
        raw.close()
        raw_s, phg_s = seconds[raw_enqueue], seconds[phg_enqueue]
        single = []
        for key, payload in items(500):
            t = time.perf_counter()
            outbox.enqueue("fhir", [(key + "x", payload)])
            single.append(time.perf_counter() - t)
        outbox.close()
    p99 = statistics.quantiles(single, n=100)[98]
    return {"name": "durable enqueue", "figure": f"{n / phg_s:,.0f} readings/s (p99 single {p99 * 1000:.1f} ms)",
            "baseline": f"raw sqlite3 {n / raw_s:,.0f} rows/s", "ratio": raw_s / phg_s, "target": ">= 0.5",
            "ok": raw_s / phg_s >= 0.5}


# The purge before item_unpurged, led through item_state as it was then (SQLite would take item_unpurged here too).
OLD_PURGE = ("UPDATE item INDEXED BY item_state SET payload = :purged WHERE state = 'delivered' AND updated <= :before"
             " AND payload <> :purged AND (:destination IS NULL OR destination = :destination)")


def bench_purge(n: int = 200_000, runs: int = 21) -> dict:
    """Retention's pass once a minute over an outbox whose n delivered payloads are all blanked already (its
    steady state): the purge through item_unpurged vs the one before, which visited every delivered row; on the
    same file, taking turns; medians."""
    from phg.outbox.sqlite import _PURGE, PURGED

    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox(Path(tmp) / "o.sqlite")
        conn = outbox._conn
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO item (destination, key, payload, state, next_attempt, created, updated)"
                         " VALUES ('fhir', ?, ?, 'delivered', 0, 0, 0)", ((f"{i:064x}", PURGED) for i in range(n)))
        conn.execute("COMMIT")
        seconds: dict[str, list[float]] = {_PURGE: [], OLD_PURGE: []}
        params = {"purged": PURGED, "before": time.time(), "destination": None}
        for run in range(runs):
            for statement in (_PURGE, OLD_PURGE)[::1 if run % 2 else -1]:
                t0 = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                assert conn.execute(statement, params).rowcount == 0
                conn.execute("COMMIT")
                seconds[statement].append(time.perf_counter() - t0)
        outbox.close()
    new, old = statistics.median(seconds[_PURGE]), statistics.median(seconds[OLD_PURGE])
    return {"name": "retention pass, 200k blanked", "figure": f"{new * 1000:.2f} ms per pass",
            "baseline": f"statement before item_unpurged {old * 1000:.1f} ms", "ratio": old / new, "target": ">= 100",
            "ok": old / new >= 100}


def _time_command(cmd: list[str], runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_cold_start() -> dict:
    phg = str(Path(sys.executable).parent / "phg")
    base = _time_command([sys.executable, "-c", "pass"])
    ours = _time_command([phg, "--help"])
    return {"name": "phg --help cold start", "figure": f"{ours * 1000:.0f} ms",
            "baseline": f"python -c pass {base * 1000:.0f} ms", "ratio": ours / base, "target": "< 300 ms",
            "ok": ours < 0.3}


class Instant:
    """A destination that accepts everything at once: isolates phg's own cost of draining."""

    name = "fhir"

    async def send(self, readings):
        return [Delivered("Observation/1") for _ in readings]


def _rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def bench_footprint(n: int = 100_000) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox(Path(tmp) / "o.sqlite")
        data = items(1000)
        for copy in range(n // 1000):
            outbox.enqueue("fhir", [(f"{k}-{copy}", p) for k, p in data])
        idle = _rss_kb()
        peak = idle
        worker = DeliveryWorker(outbox, Instant(), batch_size=50)

        async def drain() -> None:
            nonlocal peak
            while await worker.run_once():
                peak = max(peak, _rss_kb())

        t0 = time.perf_counter()
        asyncio.run(drain())
        seconds = time.perf_counter() - t0
        delivered = outbox.counts("fhir")["delivered"]
        outbox.close()
    assert delivered == n
    return {"name": "footprint draining 100k", "figure": f"peak {peak / 1024:.0f} MiB ({n / seconds:,.0f} readings/s)",
            "baseline": f"idle {idle / 1024:.0f} MiB", "ratio": peak / idle, "target": "< 1.5",
            "ok": peak / idle < 1.5}


BENCHMARKS: dict[str, Callable[[], dict | list[dict]]] = {
    "enqueue": bench_enqueue,
    "purge": bench_purge,
    "cold-start": bench_cold_start,
    "footprint": bench_footprint,
    "delivery": bench_delivery,
    "fit-medplum": bench_fit_medplum,
    "fit-sekmet": bench_fit_sekmet,
    "client": bench_client,
    "client-before": bench_client_before,
    "mapping": bench_mapping,
    "render": bench_render,
    "send": bench_send,
    "tokens": bench_tokens,
    "service": bench_service,
    "hub": bench_hub,
}


def main(names: list[str]) -> int:
    if "--quick" in names:
        os.environ["PHG_BENCH_QUICK"] = "1"
        names = [n for n in names if n != "--quick"]
    if unknown := [n for n in names if n not in BENCHMARKS]:
        print(f"usage: bench/run.py [--quick] [BENCHMARK...]; unknown: {' '.join(unknown)}; "
              f"the benchmarks (all when none is named): {' '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    rows: list[dict] = []
    for name in names or BENCHMARKS:
        result = BENCHMARKS[name]()  # a row, or a list of rows (delivery: vs ceiling and vs naive)
        rows.extend(result if isinstance(result, list) else [result])
    print(f"{'benchmark':<26} {'ratio':>7}  {'target':<9} {'ok':<3} figure  |  baseline")
    for row in rows:
        print(f"{row['name']:<26} {row['ratio']:>7.2f}  {row['target']:<9} {'yes' if row['ok'] else 'NO':<3} "
              f"{row['figure']}  |  {row['baseline']}")
    print(f"(peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
