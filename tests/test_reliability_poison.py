"""Issue #7, poison: readings phg accepts but the server refuses, scattered among 200 valid ones, are
isolated (dead, with the server's reason) without holding back the rest; `phg queue retry` re-sends one
after the cause was repaired.

Two kinds of poison, both refused by the server side, never by phg. The fault proxy
(tests/faultproxy.py), playing the EHR's policy, refuses any transaction that carries such a device with
422 and an OperationOutcome, as an atomic server refuses a whole transaction for one bad entry:
- readings of a retired device the EHR will never take again. Nothing a person can do changes that:
  retried, it must go dead again with the same reason and never get lost.
- readings of a device the EHR does not know yet (registered later).
(Until issue 10 the first kind was a value of 1E+400, which sekmet-fhir refuses; phg's intake bounds now
refuse it before any server sees it: tests/test_reading_bounds.py and tests/test_delivery_poison.py.)

"Re-sends a repaired one": `phg queue retry` re-queues the stored payload unchanged (it cannot edit a
reading, and must not: the reading is what the device measured), so a retry can only succeed when what
was repaired is on the server side. That is the honest case tested here: the device gets registered at
the EHR (``proxy.allow``), the person runs `phg queue retry ID`, the same payload goes out again and is
stored once. The unrepaired kind, retried too, goes dead again with the same reason and is not lost.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from faultproxy import FaultProxy
from phg.delivery import DeliveryWorker, Summary
from phg.delivery.fhir import FhirDestination
from phg.demo.peers import SekmetServer
from phg.demo.sim import simulated_readings
from phg.model import PatientRef, Reading
from phg.outbox import Outbox
from test_reliability_faults import GATEWAY, observation_counts

pytestmark = pytest.mark.peers

PHG = str(Path(sys.executable).parent / "phg")
START = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
UNKNOWN_DEVICE = "0A1B2C3D4E5F60FF"  # its EUI-64 is in every entry of a transaction that carries it
RETIRED_DEVICE = "0A1B2C3D4E5F6011"


def retired_device(reading: Reading) -> Reading:
    return reading._replace(device=reading.device._replace(system_id=RETIRED_DEVICE,
                                                           serial="RETIRED-0007"))


def unknown_device(reading: Reading) -> Reading:
    return reading._replace(device=reading.device._replace(system_id=UNKNOWN_DEVICE,
                                                           serial="QUARANTINE-0042"))


def phg(*args: str, outbox: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"), "XDG_DATA_HOME": str(home / "data"),
           "PHG_OUTBOX": str(outbox), "PHG_GATEWAY_SYSTEM_ID": GATEWAY.system_id, "PHG_CONFIG": "",
           "PHG_FHIR_BASE_URL": "", "PHG_CLIENT_ID": "", "PHG_KEY_FILE": ""}
    return subprocess.run([PHG, *args], env=env, capture_output=True, text=True, timeout=60)


async def drain(outbox: Outbox, base: str) -> Summary:
    async with httpx.AsyncClient(timeout=30) as client:
        worker = DeliveryWorker(outbox, FhirDestination(client, base, GATEWAY), batch_size=50, max_backoff=0.5)
        return await asyncio.wait_for(worker.run(until_idle=True), 60)


def test_poison_is_isolated_and_a_repaired_one_is_resent(sekmet: SekmetServer, tmp_path):
    patient = PatientRef("urn:oid:1.2.3.4.5", f"pt-{uuid.uuid4().hex[:12]}")
    valid = simulated_readings(patient, START, per_device=40)
    retired = [retired_device(r) for r in simulated_readings(patient, START + timedelta(days=1), per_device=2,
                                                      devices=("glucose", "thermometer"))]
    unknown = [unknown_device(r) for r in simulated_readings(patient, START + timedelta(days=2), per_device=3,
                                                             devices=("pulse_oximeter",))]
    poison = retired + unknown
    readings = list(valid)
    rng = random.Random(77)
    for reading in poison:  # scattered: several batches hold one or two
        readings.insert(rng.randrange(len(readings) + 1), reading)
    assert len(readings) == 207

    outbox_path = tmp_path / "outbox.sqlite"
    with FaultProxy(sekmet.base_url) as proxy, Outbox(outbox_path) as outbox:
        proxy.refuse(UNKNOWN_DEVICE)
        proxy.refuse(RETIRED_DEVICE)
        ids = dict(zip((r.key for r in readings), outbox.enqueue("fhir", [(r.key, r.to_json()) for r in readings]),
                       strict=True))
        summary = asyncio.run(drain(outbox, proxy.url("/fhir")))
        requests = len(proxy.records)

        assert (summary.delivered, summary.dead) == (200, 7)
        assert outbox.counts("fhir") == {"queued": 0, "inflight": 0, "delivered": 200, "dead": 7}
        dead = {item.id: item for item in outbox.items(state="dead")}
        assert set(dead) == {ids[r.key] for r in poison}
        for r in (*retired, *unknown):
            reason = dead[ids[r.key]].last_error
            assert "HTTP 422" in reason and "device not registered" in reason, reason
        # Halving finds each one in about 2 log2(50) requests: 5 batches + 7 poisons.
        assert requests <= 5 + 7 * 12, requests
        assert set(observation_counts(sekmet.base_url, valid).values()) == {1}
        assert set(observation_counts(sekmet.base_url, poison).values()) == {0}

        # The EHR registers the device; a person re-queues one of its readings, and (unrepaired) a retired device's one.
        proxy.allow(UNKNOWN_DEVICE)
        repaired, hopeless = ids[unknown[0].key], ids[retired[0].key]
        reason_before = dead[hopeless].last_error
        for item_id in (repaired, hopeless):
            result = phg("queue", "retry", str(item_id), outbox=outbox_path, home=tmp_path)
            assert result.returncode == 0 and f"item {item_id} queued" in result.stdout, result.stderr
        refused = phg("queue", "retry", str(ids[valid[0].key]), outbox=outbox_path, home=tmp_path)
        assert refused.returncode == 1 and "delivered" in refused.stderr  # a delivered one stays delivered
        assert outbox.counts("fhir") == {"queued": 2, "inflight": 0, "delivered": 200, "dead": 5}

        summary = asyncio.run(drain(outbox, proxy.url("/fhir")))
        assert (summary.delivered, summary.dead) == (1, 1)
        assert outbox.get(repaired).state == "delivered"
        again = outbox.get(hopeless)
        assert again.state == "dead" and again.last_error == reason_before and again.payload == retired[0].to_json()
        for r in (*unknown[1:], *retired[1:]):  # not retried: still dead, untouched
            assert outbox.get(ids[r.key]).state == "dead"
        assert outbox.counts("fhir") == {"queued": 0, "inflight": 0, "delivered": 201, "dead": 6}

    assert list(observation_counts(sekmet.base_url, [unknown[0]]).values()) == [1] * len(unknown[0].metrics)
    assert set(observation_counts(sekmet.base_url, [*unknown[1:], *retired]).values()) == {0}
    assert set(observation_counts(sekmet.base_url, valid).values()) == {1}
