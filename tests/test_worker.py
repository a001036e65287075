"""Delivery worker rules with a scripted destination (unit level; the real flows are in
test_flow_*.py against real servers)."""

import asyncio
import time
from datetime import UTC, datetime

import httpx
import pytest

from phg.delivery import Deferred, Delivered, DeliveryWorker, Rejected
from phg.delivery.worker import backoff
from phg.demo.sim import simulated_readings
from phg.errors import AuthError, PermanentDeliveryError, TransientDeliveryError
from phg.model import PatientRef
from phg.outbox import Outbox

READINGS = simulated_readings(PatientRef("urn:oid:1.2.3", "p1"), datetime(2026, 11, 28, 9, tzinfo=UTC), 10)
BAD = READINGS[7].key


class Scripted:
    """Refuses any batch holding the BAD reading with a 400, like an atomic FHIR server."""

    name = "fhir"

    def __init__(self, failures=()):
        self.failures = list(failures)
        self.batches = []

    async def send(self, readings):
        self.batches.append(len(readings))
        if self.failures:
            raise self.failures.pop(0)
        if any(r.key == BAD for r in readings):
            raise PermanentDeliveryError("HTTP 400: invalid value (at Observation.valueQuantity)", 400)
        return [Delivered(f"Observation/{r.key[:6]}") for r in readings]


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.enqueue("fhir", [(r.key, r.to_json()) for r in READINGS])
    yield box
    box.close()


async def test_bad_reading_is_isolated_by_splitting(outbox):
    dest = Scripted()
    summary = await DeliveryWorker(outbox, dest, batch_size=50).run(until_idle=True)
    assert (summary.delivered, summary.dead) == (49, 1)
    dead = outbox.items(state="dead")
    assert [i.key for i in dead] == [BAD]
    assert "invalid value" in dead[0].last_error or "invalid value" in (dead[0].result or "")
    assert dest.batches[0] == 50 and len(dest.batches) <= 1 + 2 * 6  # halving: log2(50) rounds


async def test_rejected_entry_goes_dead_rest_delivered(outbox):
    class PerEntry(Scripted):
        async def send(self, readings):
            return [Rejected("422: nope") if r.key == BAD else Delivered("Observation/1") for r in readings]

    summary = await DeliveryWorker(outbox, PerEntry(), batch_size=50).run(until_idle=True)
    assert (summary.delivered, summary.dead) == (49, 1)


async def test_transient_failure_backs_off_and_honours_retry_after(outbox):
    dest = Scripted([TransientDeliveryError("503", retry_after=7)])
    summary = await DeliveryWorker(outbox, dest, batch_size=50).run(until_idle=True)
    assert summary.retried == 50 and summary.delivered == 0
    item = outbox.items(state="queued", limit=1)[0]
    assert item.attempts == 1 and item.last_error == "503"
    assert 6.0 <= item.next_attempt - time.time() <= 7.5


async def test_auth_error_stops_and_keeps_queue(outbox):
    dest = Scripted([AuthError("invalid_client")])
    with pytest.raises(AuthError):
        await DeliveryWorker(outbox, dest, batch_size=20).run(until_idle=True)
    counts = outbox.counts("fhir")
    assert (counts["queued"], counts["inflight"]) == (50, 0)
    assert all(i.attempts == 0 for i in outbox.items(limit=100))


async def test_a_long_running_worker_tries_a_stopped_destination_again_after_stopped_retry(outbox):
    """`phg run`: an AuthError (the JWKS not registered yet, say) shows the destination stopped and keeps the
    queue; new readings (wake) do not make it try again sooner; after stopped_retry it does, and delivers once
    the server accepts (the fix made at the EHR, no restart)."""
    from phg.delivery.status import DELIVERING, STOPPED
    from test_flow_run_sources import until

    dest = Scripted([AuthError("invalid_client")])
    worker = DeliveryWorker(outbox, dest, batch_size=50, stopped_retry=3.0)  # the first wait: 1.5-3 s
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await until(lambda: worker.status.state == STOPPED, 5)
    assert worker.status.reason == "authorization problem: invalid_client" and worker.status.until is not None
    assert outbox.counts("fhir")["queued"] == 50
    worker.wake()  # a reading queued meanwhile
    await asyncio.sleep(0.3)
    assert dest.batches == [50] and worker.status.state == STOPPED  # not tried again before stopped_retry
    await until(lambda: outbox.counts("fhir")["delivered"] == 49, 10)  # BAD is dead, as always
    stop.set()
    await asyncio.wait_for(running, 10)
    assert worker.status.state == DELIVERING


def test_backoff_grows_with_jitter_and_cap():
    assert 0.5 <= backoff(1) <= 1.0
    assert 4.0 <= backoff(4) <= 8.0
    assert 150 <= backoff(30) <= 300


async def test_retry_outcome_retries_then_goes_dead(outbox):
    class Busy(Scripted):
        async def send(self, readings):
            return [Deferred("AE: try later", refusals=2) if r.key == BAD else Delivered("ok") for r in readings]

    worker = DeliveryWorker(outbox, Busy(), batch_size=50, max_backoff=0.01)
    assert await worker.run_once()  # one batch: on a slow machine run() could already retry the busy one
    summary = worker.summary
    assert (summary.delivered, summary.retried, summary.dead) == (49, 1, 0)
    await asyncio.sleep(0.02)
    summary = await worker.run(until_idle=True)
    dead = outbox.items(state="dead")
    assert [i.key for i in dead] == [BAD] and "after 2 attempts" in dead[0].last_error


async def test_a_wrong_base_url_stops_delivery_instead_of_killing_readings(outbox):
    import httpx

    from phg.delivery.fhir import FhirDestination
    from phg.errors import ConfigError
    from phg.model import Gateway

    transport = httpx.MockTransport(lambda request: httpx.Response(404, json={"resourceType": "OperationOutcome"}))
    async with httpx.AsyncClient(transport=transport) as client:
        destination = FhirDestination(client, "http://127.0.0.1:9/fhir-typo", Gateway("02AB7FFFFE000001"))
        with pytest.raises(ConfigError, match="is \\[fhir\\] base_url the server's FHIR base"):
            await DeliveryWorker(outbox, destination, batch_size=50).run(until_idle=True)
    counts = outbox.counts("fhir")
    assert (counts["queued"], counts["dead"], counts["inflight"]) == (50, 0, 0)


@pytest.mark.parametrize("answer", [
    lambda request: httpx.Response(200, content=b"\x1f\x8b garbage", headers={"Content-Encoding": "gzip"}),
    lambda request: httpx.Response(200, json={"resourceType": "Bundle", "entry": [1, 2]}),
    lambda request: httpx.Response(200, json={"resourceType": "Bundle", "entry": "x"}),
])
async def test_a_garbled_answer_is_transient_not_a_crash(outbox, answer):
    from phg.delivery.fhir import FhirDestination
    from phg.model import Gateway

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        destination = FhirDestination(client, "http://127.0.0.1:9/fhir", Gateway("02AB7FFFFE000001"))
        summary = await DeliveryWorker(outbox, destination, batch_size=50).run(until_idle=True)
    assert (summary.delivered, summary.dead, summary.retried) == (0, 0, 50)


async def test_an_unexpected_error_does_not_end_a_long_run(outbox):
    class Buggy(Scripted):
        async def send(self, readings):
            self.batches.append(len(readings))
            if len(self.batches) == 1:
                raise KeyError("surprise")
            return [Delivered("ok") for _ in readings]

    stop = asyncio.Event()
    worker = DeliveryWorker(outbox, Buggy(), batch_size=50, lease_seconds=1, max_backoff=0.2)
    task = asyncio.create_task(worker.run(stop))
    for _ in range(100):
        if outbox.counts("fhir")["delivered"] == 50:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await task
    assert outbox.counts("fhir")["delivered"] == 50


async def test_a_reading_that_keeps_failing_transiently_does_not_hold_back_its_batch(outbox):
    class FailsWithBad(Scripted):
        async def send(self, readings):
            self.batches.append(len(readings))
            if any(r.key == BAD for r in readings):
                raise TransientDeliveryError("HTTP 500")
            return [Delivered("ok") for _ in readings]

    stop = asyncio.Event()
    worker = DeliveryWorker(outbox, FailsWithBad(), batch_size=50, max_backoff=0.05)
    task = asyncio.create_task(worker.run(stop))
    for _ in range(200):  # bounded: 10 s
        if outbox.counts("fhir")["delivered"] == 49:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    counts = outbox.counts("fhir")
    assert (counts["delivered"], counts["dead"]) == (49, 0)  # the bad one waits alone, not lost


async def test_an_outage_does_not_use_up_the_ae_retries(outbox):
    class OutageThenAE(Scripted):
        async def send(self, readings):
            self.batches.append(len(readings))
            if len(self.batches) <= 3:
                raise TransientDeliveryError("connection refused", reached=False)
            return [Deferred("AE: busy", refusals=2) if r.key == BAD else Delivered("ok") for r in readings]

    worker = DeliveryWorker(outbox, OutageThenAE(), batch_size=50, max_backoff=0.01)
    for _ in range(4):  # three failed tries (the outage), then the answer
        await asyncio.sleep(0.03)
        assert await worker.run_once()
    bad = next(i for i in outbox.items(limit=100) if i.key == BAD)
    # one AE so far: not dead yet; the outage's probes re-sent the held batch without new leases
    assert bad.state == "queued" and bad.refusals == 1 and bad.attempts == 1


async def test_an_unreachable_server_does_not_break_batches_apart(outbox):
    class Down(Scripted):
        async def send(self, readings):
            self.batches.append(len(readings))
            raise TransientDeliveryError("ConnectError", reached=False)

    worker = DeliveryWorker(outbox, Down(), batch_size=50, max_backoff=0.01)
    for _ in range(5):
        await asyncio.sleep(0.03)
        assert await worker.run_once()
    assert worker.destination.batches == [50] * 5  # still one batch: nothing to isolate in an outage
