"""Delivery throughput against sekmet-fhir on loopback (issue #7, benchmark 2).

Three sides, all against one sekmet-fhir server, no auth in the loop (sekmet direct: the gate's
introspection would add the same cost to every side; tokens.py has auth), the same kind of readings
(each side its own patient and clock, so that no side's conditional creates match another's):

- phg:     `phg run`'s delivery path (phg.daemon.deliver: one DeliveryWorker per destination; outbox
           lease -> transaction Bundle of batch_size=50 readings -> POST -> mark delivered) draining
           the queued readings. Enqueueing is not timed.
- ceiling: a bare httpx.AsyncClient loop POSTing the same-size transaction Bundles, pre-built in
           memory, with the same concurrency as phg's worker: one request in flight.
- naive:   a plain FHIR client: one POST per resource (conditional create with If-None-Exist, the
           semantics of the Bundle entries), sequential; Patient and Devices once, then every
           Observation. It sends a tenth as many readings (its rate does not depend on how many).

The machine is noisy and the server slows down as its database grows, so the sides are interleaved:
ROUNDS rounds, each with a slice of every side, in a rotating order (phg drains each round's slice
with one `deliver(..., until_idle=True)`). Figures are Observations delivered per second (an
Observation is one resource on the server; a reading makes one or more); ratios are phg/ceiling
(target >= 0.9) and phg/naive (target >= 10).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from phg.config import Config
from phg.daemon import deliver
from phg.demo.peers import SekmetServer
from phg.demo.sim import simulated_readings
from phg.fhir import build_transaction, to_json
from phg.model import Gateway, PatientRef, Reading
from phg.outbox import Outbox

GATEWAY = Gateway(system_id="02AB7FFFFE00C1C1", serial="BENCH-GW")
START = datetime(2026, 11, 28, 9, tzinfo=UTC)
BATCH = 50  # phg's default [delivery] batch_size
HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json", "Prefer": "return=minimal"}


def readings_count() -> int:
    """10,000 by default; PHG_BENCH_QUICK=1 (`bench/run.py --quick`) scales down to 1,000."""
    return 1_000 if os.environ.get("PHG_BENCH_QUICK") else 10_000


ROUNDS = 10


def _readings(side: int, n: int) -> list[Reading]:
    patient = PatientRef("urn:oid:1.2.3.4.5", f"bench-delivery-{side}")
    return simulated_readings(patient, START + timedelta(days=1000 * side), per_device=(n + 4) // 5)[:n]


def _observations(bundle: dict) -> int:
    return sum(1 for e in bundle["entry"] if e["request"]["url"] == "Observation")


async def _ceiling(base: str, bodies: list[bytes]) -> float:
    async with httpx.AsyncClient(http2=True, timeout=httpx.Timeout(120.0, connect=10.0)) as client:
        t0 = time.perf_counter()
        for body in bodies:  # one request in flight, like phg's single worker per destination
            response = await client.post(base, content=body, headers=HEADERS)
            if response.status_code != 200:
                raise RuntimeError(f"ceiling loop: HTTP {response.status_code}: {response.text[:300]}")
        return time.perf_counter() - t0


def _run_ceiling(base: str, bodies: list[bytes]) -> float:
    return asyncio.run(_ceiling(base, bodies))


def _phg(config: Config, outbox: Outbox, data: list[tuple[str, str]]) -> float:
    for i in range(0, len(data), 1000):
        outbox.enqueue("fhir", data[i:i + 1000])
    t0 = time.perf_counter()
    summary = asyncio.run(deliver(config, outbox, until_idle=True))
    seconds = time.perf_counter() - t0
    if (summary.delivered, summary.dead) != (len(data), 0):
        raise RuntimeError(f"phg delivered {summary.delivered}, dead {summary.dead} of {len(data)}")
    return seconds


def _rewrite(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _rewrite(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
    return ids.get(value, value) if isinstance(value, str) else value


def _naive(client: httpx.Client, base: str, bundles: list[dict], ids: dict[str, str]) -> tuple[float, int]:
    """One conditional-create POST per resource, sequential; urn:uuid references replaced by the
    ids the server assigned (what a plain client has to do itself). Returns (seconds, Observations)."""
    observations = 0
    t0 = time.perf_counter()
    for bundle in bundles:
        for entry in bundle["entry"]:
            if entry["fullUrl"] in ids:  # Patient, Devices: the client knows them already
                continue
            kind = entry["request"]["url"]
            response = client.post(f"{base}/{kind}", content=to_json(_rewrite(entry["resource"], ids)),
                                   headers={**HEADERS, "If-None-Exist": entry["request"]["ifNoneExist"]})
            if response.status_code not in (200, 201):
                raise RuntimeError(f"naive client: HTTP {response.status_code}: {response.text[:300]}")
            location = response.headers["location"].split("/_history/")[0]
            ids[entry["fullUrl"]] = "/".join(location.split("/")[-2:])
            observations += kind == "Observation"
    return time.perf_counter() - t0, observations


def bench_delivery() -> list[dict]:
    n = readings_count()
    chunk = n // ROUNDS
    ceiling_readings, phg_readings, naive_readings = (_readings(side, n) for side in range(3))
    seconds = {"ceiling": 0.0, "phg": 0.0, "naive": 0.0}
    observations = phg_obs = naive_obs = 0
    ids: dict[str, str] = {}
    with (tempfile.TemporaryDirectory(prefix="phg-bench-") as tmp, SekmetServer(workdir=Path(tmp) / "sekmet") as server,
          Outbox(Path(tmp) / "outbox.sqlite") as outbox, httpx.Client(timeout=60.0) as naive_client):
        config = Config(gateway=GATEWAY, outbox_path=outbox.path, fhir_base=server.base_url, batch_size=BATCH,
                        allow_insecure_http=True, source="bench")
        for r in range(ROUNDS):
            part = slice(r * chunk, (r + 1) * chunk)
            bundles = [build_transaction(ceiling_readings[part][i:i + BATCH], GATEWAY).bundle
                       for i in range(0, chunk, BATCH)]
            observations += sum(map(_observations, bundles))
            bodies = [to_json(b) for b in bundles]
            queued = [(x.key, x.to_json()) for x in phg_readings[part]]
            few = naive_readings[part][:chunk // 10]
            plain = [build_transaction(few[i:i + BATCH], GATEWAY).bundle for i in range(0, len(few), BATCH)]
            phg_obs += sum(_observations(build_transaction(phg_readings[part][i:i + BATCH], GATEWAY).bundle)
                           for i in range(0, chunk, BATCH))
            sides = [("ceiling", partial(_run_ceiling, server.base_url, bodies)),
                     ("phg", partial(_phg, config, outbox, queued)),
                     ("naive", partial(_naive, naive_client, server.base_url, plain, ids))]
            for side, run in sides[r % 3:] + sides[:r % 3]:
                result = run()
                if side == "naive":
                    seconds[side] += result[0]
                    naive_obs += result[1]
                else:
                    seconds[side] += result
    phg_s, ceiling_s, naive_s = seconds["phg"], seconds["ceiling"], seconds["naive"]
    phg_rate, ceiling_rate, naive_rate = phg_obs / phg_s, observations / ceiling_s, naive_obs / naive_s
    phg_figure = f"phg {phg_rate:,.0f} obs/s ({n:,} readings, {phg_obs:,} obs in {phg_s:.0f} s)"
    return [
        {"name": "delivery vs ceiling", "figure": phg_figure,
         "baseline": f"bare httpx loop, same-size Bundles, 1 in flight: {ceiling_rate:,.0f} obs/s ({observations:,} obs)",
         "ratio": phg_rate / ceiling_rate, "target": ">= 0.9", "ok": phg_rate / ceiling_rate >= 0.9},
        {"name": "delivery vs naive", "figure": phg_figure,
         "baseline": f"one POST per resource, sequential: {naive_rate:,.0f} obs/s ({naive_obs:,} obs); "
                     f"ceiling/naive {ceiling_rate / naive_rate:.1f}",
         "ratio": phg_rate / naive_rate, "target": ">= 10", "ok": phg_rate / naive_rate >= 10},
    ]
