"""One side of bench/clientbefore.py, run as a child whose PYTHONPATH picks the phg tree: `phg run`'s delivery
path drains N readings (transactions of 50) from a SQLite outbox into bench/fakefhir.py, then a bare httpx loop
posts the same Bundles pre-built. Prints one JSON line: CPU seconds (this process, every thread) of each.
Only what both trees have is used (issue 16's "before" tree has no phg.process: it ran with Python's collector
as configured by default, which is what `phg run` did then)."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from fakefhir import FakeFhir

from phg.config import load_config
from phg.daemon import deliver
from phg.demo.sim import simulated_readings
from phg.fhir import build_transaction, to_json
from phg.model import Gateway, PatientRef
from phg.outbox import Outbox

GATEWAY = Gateway(system_id="02AB7FFFFE00C1C1", serial="BENCH-GW")
HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json", "Prefer": "return=minimal"}
WARM = 100  # delivered first, not timed: the first deliver() imports the destination's modules


async def _bare(base: str, bodies: list[bytes]) -> None:
    async with httpx.AsyncClient(http2=True) as client:
        for body in bodies:
            response = await client.post(base, content=body, headers=HEADERS)
            if response.status_code != 200:
                raise RuntimeError(f"bare loop: HTTP {response.status_code}")


def main(n: int) -> None:
    patient = PatientRef("urn:oid:1.2.3.4.5", "bench-before")
    readings = simulated_readings(patient, datetime(2026, 11, 28, 9, tzinfo=UTC), per_device=(n + WARM + 4) // 5)
    texts = [(r.key, r.to_json()) for r in readings[:n + WARM]]
    bodies = [to_json(build_transaction(readings[i:i + 50], GATEWAY).bundle) for i in range(WARM, n + WARM, 50)]
    del readings  # texts and bodies only: strings and bytes, which the collector does not walk
    try:
        from phg.process import tune_collector  # as `phg run` does once started, in the trees that have it
    except ImportError:
        pass
    else:
        tune_collector()
    with (tempfile.TemporaryDirectory() as tmp, FakeFhir() as server, Outbox(Path(tmp) / "outbox.sqlite") as outbox):
        config = load_config(env={}, document={
            "gateway": {"system_id": GATEWAY.system_id, "serial": GATEWAY.serial},
            "fhir": {"base_url": server.base_url, "timeout": 120.0}, "outbox": {"path": str(outbox.path)},
            "delivery": {"batch_size": 50}})
        outbox.enqueue("fhir", texts[:WARM])
        asyncio.run(deliver(config, outbox, until_idle=True))
        for i in range(WARM, n + WARM, 1000):
            outbox.enqueue("fhir", texts[i:i + 1000])
        cpu = time.process_time()
        summary = asyncio.run(deliver(config, outbox, until_idle=True))
        phg_cpu = time.process_time() - cpu
        if summary.delivered != n:
            raise RuntimeError(f"delivered {summary.delivered} of {n}")
        cpu = time.process_time()
        asyncio.run(_bare(server.base_url, bodies))
        bare_cpu = time.process_time() - cpu
    print(json.dumps({"phg": phg_cpu, "bare": bare_cpu}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
