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
import contextlib
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from fakefhir import FakeFhir

from phg.config import Config, load_config
from phg.daemon import deliver
from phg.delivery.fhir import fit_of
from phg.demo.peers import MedplumServer, SekmetServer
from phg.demo.sim import simulated_readings
from phg.fhir import build_transaction, to_json
from phg.model import Gateway, PatientRef, Reading
from phg.outbox import Outbox
from phg.process import tune_collector

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
    return _drain(config, outbox, len(data))


def _drain(config: Config, outbox: Outbox, expected: int) -> float:
    """Seconds phg's delivery path takes to deliver the `expected` queued readings."""
    t0 = time.perf_counter()
    summary = asyncio.run(deliver(config, outbox, until_idle=True))
    seconds = time.perf_counter() - t0
    if (summary.delivered, summary.dead) != (expected, 0):
        raise RuntimeError(f"phg delivered {summary.delivered}, dead {summary.dead} of {expected}")
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
        config = load_config(env={}, document={
            "gateway": {"system_id": GATEWAY.system_id, "serial": GATEWAY.serial}, "outbox": {"path": str(outbox.path)},
            "fhir": {"base_url": server.base_url, "allow_insecure_http": True}, "delivery": {"batch_size": BATCH}})
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


# ---------------------------------------------------------------------------------- issue 16: fit the server

# 8 rounds: on Medplum 400 readings per side are one batch of 50 a round, so auto samples in batches 1, 2, 4
# and 8 (about 3% of the run; 4 rounds of 25 made it sample in 3 batches of 4, about 9%), and more rounds
# interleave the sides better under load.
FIT_ROUNDS = 8
# Readings per side (--quick: a fifth). Medplum's in-memory router searches its whole store for every
# conditional create, so it slows down fast as it fills: 600 readings per side there took over 15 minutes.
FIT_READINGS = {"sekmet": 3_000, "medplum": 400}


def _config(base: str, outbox: Path, **fhir: object) -> Config:
    """Timeout 120 s: on a loaded machine a filling Medplum router can take longer than the default 30 s to
    answer one transaction, and a timed-out batch would leave the side short of its readings."""
    return load_config(env={}, document={
        "gateway": {"system_id": GATEWAY.system_id, "serial": GATEWAY.serial},
        "fhir": {"base_url": base, "timeout": 120.0, **fhir},
        "outbox": {"path": str(outbox)}, "delivery": {"batch_size": BATCH}})


def bench_fit(kind: str) -> dict:
    """phg's "auto" strategy vs the best way for that server, each side on a fresh server of its own
    (`kind`: sekmet or medplum), the same readings, FIT_ROUNDS interleaved rounds in a rotating order:
    phg with strategy "transaction" (one 50-reading Bundle, in parts within a learned limit), phg with
    "single" (conditional creates), and the naive client above (one POST per resource, Patient and
    Devices once). Ratio: auto's Observations/s over the best of the others (target >= 0.9); and how many
    POSTs auto had refused as too many after the first minute of the run (target 0)."""
    server_class = {"sekmet": SekmetServer, "medplum": MedplumServer}[kind]
    n = FIT_READINGS[kind] // (5 if os.environ.get("PHG_BENCH_QUICK") else 1)
    chunk = n // FIT_ROUNDS
    readings = _readings(0, n)
    sides = ["auto", "transaction", "single", "naive"]
    seconds = dict.fromkeys(sides, 0.0)
    with tempfile.TemporaryDirectory(prefix="phg-bench-fit-") as tmp, contextlib.ExitStack() as stack:
        servers = {s: stack.enter_context(server_class(workdir=Path(tmp) / s)) for s in sides}
        outboxes = {s: stack.enter_context(Outbox(Path(tmp) / f"{s}.sqlite")) for s in sides}
        configs = {s: _config(servers[s].base_url, outboxes[s].path, strategy=s) for s in sides if s != "naive"}
        naive_client = stack.enter_context(httpx.Client(timeout=60.0))
        ids: dict[str, str] = {}
        observations = 0
        started = time.monotonic()
        for r in range(FIT_ROUNDS):
            part = readings[r * chunk:(r + 1) * chunk]
            queued = [(x.key, x.to_json()) for x in part]
            bundles = [build_transaction(part[i:i + BATCH], GATEWAY).bundle for i in range(0, len(part), BATCH)]
            observations += sum(map(_observations, bundles))
            runs = {s: partial(_phg, configs[s], outboxes[s], queued) for s in configs}
            runs["naive"] = partial(_naive_seconds, naive_client, servers["naive"].base_url, bundles, ids)
            for side in sides[r % 4:] + sides[:r % 4]:
                seconds[side] += runs[side]()
        fit = fit_of(configs["auto"].destinations[0])
        refused = fit.refused_at
        late = sum(1 for t in refused if t - started > 60)
        chose = min(fit.cost, key=fit.cost.__getitem__) if fit.cost else "nothing (no sample)"
        costs = ", ".join(f"{way} {seconds * 1000:.1f}" for way, seconds in fit.cost.items())
    rates = {s: observations / seconds[s] for s in sides}
    best = max(("transaction", "single", "naive"), key=rates.__getitem__)
    ratio = rates["auto"] / rates[best]
    return {"name": f"fit: {kind} auto vs best", "ratio": ratio, "target": ">= 0.9", "ok": ratio >= 0.9 and not late,
            "figure": f"auto {rates['auto']:,.1f} obs/s; {len(refused)} refused as too many, {late} after 1 min; "
                      f"chose {chose} (ms per entry in the samples: {costs})",
            "baseline": f"best = {best} {rates[best]:,.1f} obs/s (transaction {rates['transaction']:,.1f}, "
                        f"single {rates['single']:,.1f}, naive {rates['naive']:,.1f}; {observations:,} obs per side)"}


def _naive_seconds(client: httpx.Client, base: str, bundles: list[dict], ids: dict[str, str]) -> float:
    return _naive(client, base, bundles, ids)[0]


def bench_fit_sekmet() -> dict:
    return bench_fit("sekmet")


def bench_fit_medplum() -> dict:
    return bench_fit("medplum")


def bench_client() -> list[dict]:
    """The client's own ceiling: phg's delivery path (transactions of 50 readings) against the fake
    server of bench/fakefhir.py (answers cost it next to nothing) vs a bare httpx loop POSTing the same
    Bundles pre-built, one in flight, interleaved rounds. Ratio readings/s (target >= 0.5); and the CPU
    seconds this process spends per 1,000 readings delivered (process_time: every thread; target <= 0.1)."""
    n = 2 * readings_count()  # 20,000 (--quick 2,000): each round's deliver() has a start-up cost of its own
    rounds = 4
    chunk = n // rounds
    # Only texts and bodies are kept (strings and bytes, which the garbage collector does not walk), not the
    # 40,000 Readings they come from: every full collection phg's allocations set off walked those too, a
    # quarter of the CPU counted as phg's (issue 16, third session).
    phg_texts = [(x.key, x.to_json()) for x in _readings(0, n)]
    tune_collector()  # as `phg run` does once started (phg.process); both sides run under it
    bare = _readings(1, n)
    bare_bodies = [to_json(build_transaction(bare[i:i + BATCH], GATEWAY).bundle) for i in range(0, n, BATCH)]
    del bare
    seconds = {"phg": 0.0, "bare": 0.0}
    cpu = {"phg": 0.0, "bare": 0.0}
    with (tempfile.TemporaryDirectory(prefix="phg-bench-client-") as tmp, FakeFhir() as server,
          Outbox(Path(tmp) / "outbox.sqlite") as outbox):
        config = _config(server.base_url, outbox.path, strategy="transaction")
        # Warm-up, not timed: the first deliver() imports the destinations' modules (httpx's transports, h2,
        # the auth code: about 0.1 s of CPU), which a running `phg run` did at start; the bare loop's httpx
        # is imported with this module. Each round's deliver() still pays its own start-up (about 22 ms: the
        # HTTP client and its SSL context), as each `phg send` does.
        _drain(config, outbox, 0)
        _run_ceiling(server.base_url, bare_bodies[:1])
        for r in range(rounds):
            bodies = bare_bodies[r * chunk // BATCH:(r + 1) * chunk // BATCH]
            queued = phg_texts[r * chunk:(r + 1) * chunk]
            for i in range(0, len(queued), 1000):  # not timed
                outbox.enqueue("fhir", queued[i:i + 1000])
            sides = [("phg", partial(_drain, config, outbox, len(queued))),
                     ("bare", partial(_run_ceiling, server.base_url, bodies))]
            for side, run in sides[r % 2:] + sides[:r % 2]:
                c0 = time.process_time()
                seconds[side] += run()
                cpu[side] += time.process_time() - c0
    phg_rate, bare_rate = n / seconds["phg"], n / seconds["bare"]
    per_1000, bare_per_1000 = cpu["phg"] / n * 1000, cpu["bare"] / n * 1000
    figure = f"phg {phg_rate:,.0f} readings/s ({n:,} readings, transactions of {BATCH})"
    return [
        {"name": "client ceiling (fake FHIR)", "ratio": phg_rate / bare_rate, "target": ">= 0.5",
         "ok": phg_rate / bare_rate >= 0.5, "figure": figure,
         "baseline": f"bare httpx loop, same Bundles pre-built, 1 in flight: {bare_rate:,.0f} readings/s"},
        {"name": "client CPU per 1k readings", "ratio": per_1000 / 0.1, "target": "<= 1.0", "ok": per_1000 <= 0.1,
         "figure": f"{per_1000:.3f} CPU s per 1,000 readings (all threads of this process)",
         # The bare loop's CPU in the same run says how much a loaded machine inflates CPU seconds.
         "baseline": f"0.1 CPU s per 1,000 readings (the bare loop: {bare_per_1000:.3f}, "
                     f"phg/bare {per_1000 / bare_per_1000:.1f})"},
    ]
