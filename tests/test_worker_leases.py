"""Issue 10, findings 1, 8 and 10 at unit level (scripted destinations; the real peers are in
test_worker_leases_peers.py): leases that hold while a send outlasts them, a destination-wide circuit
during an outage, stored times from a clock that ran ahead, a lease shorter than a request's timeout
refused, and an arbitrary exception from a destination isolated to its reading."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from phg.config import load_config
from phg.delivery import Delivered, DeliveryWorker
from phg.demo.sim import simulated_readings
from phg.errors import ConfigError, TransientDeliveryError
from phg.model import PatientRef
from phg.outbox import Outbox

READINGS = simulated_readings(PatientRef("urn:oid:1.2.3", "p1"), datetime(2026, 11, 28, 9, tzinfo=UTC), 20)
DAY = 86400.0


class Slow:
    """Delivers everything, each batch after `seconds`; records every reading it was sent."""

    name = "fhir"

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.sent: Counter[str] = Counter()
        self.batches: list[int] = []

    async def send(self, readings):
        self.batches.append(len(readings))
        self.sent.update(r.key for r in readings)
        await asyncio.sleep(self.seconds)
        return [Delivered("ok") for _ in readings]


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.enqueue("fhir", [(r.key, r.to_json()) for r in READINGS])
    yield box
    box.close()


async def run_until(outbox: Outbox, workers: list[DeliveryWorker], done, timeout: float = 20.0) -> None:
    """Run the workers side by side until done(counts) (bounded), then stop them."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done(outbox.counts("fhir")):
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)


# --- finding 1: a send that outlasts its lease ----------------------------------------------------------


async def test_a_send_longer_than_the_lease_is_sent_once(outbox):
    """Each batch takes three leases to send: renewed, neither this worker's look-ahead nor a
    second worker (`phg send` beside `phg run`) takes it again."""
    dest = Slow(0.9)
    workers = [DeliveryWorker(outbox, dest, batch_size=25, lease_seconds=0.3) for _ in range(2)]
    await run_until(outbox, workers, lambda c: c["delivered"] == len(READINGS))
    assert outbox.counts("fhir")["delivered"] == len(READINGS)
    assert max(dest.sent.values()) == 1 and len(dest.sent) == len(READINGS)


def test_outcomes_apply_only_under_the_lease_given(outbox):
    first = outbox.lease("fhir", 1, 30)
    [again] = outbox.lease("fhir", 1, 30, now=time.time() + 31)  # first's lease expired: taken again
    assert again.id == first[0].id and again.lease != first[0].lease
    outbox.delivered([again.id], ["late"], token=first[0].lease)  # the expired holder reports: ignored
    outbox.dead([again.id], "late", token=first[0].lease)
    assert outbox.get(again.id).state == "inflight"
    assert outbox.renew(first[0].lease, 30) == 0 and outbox.renew(again.lease, 30) == 1
    outbox.delivered([again.id], ["Observation/1"], token=again.lease)
    assert outbox.get(again.id).state == "delivered"


# --- finding 8: an outage ------------------------------------------------------------------------------


class Down:
    """Unreachable for the first `outage` seconds, then delivers."""

    name = "fhir"

    def __init__(self, outage: float):
        self.until = time.monotonic() + outage
        self.batches: list[tuple[float, int]] = []

    async def send(self, readings):
        self.batches.append((time.monotonic(), len(readings)))
        if time.monotonic() < self.until:
            raise TransientDeliveryError("connection refused", reached=False)
        return [Delivered("ok") for _ in readings]


async def test_an_outage_is_waited_out_by_the_destination_not_item_by_item(outbox):
    dest = Down(outage=3.0)
    worker = DeliveryWorker(outbox, dest, batch_size=20, max_backoff=1.0)
    await run_until(outbox, [worker], lambda c: c["delivered"] == len(READINGS))
    during = [n for t, n in dest.batches if t < dest.until]
    after = [n for t, n in dest.batches if t >= dest.until]
    assert len(during) <= 8  # probes, one at a time, backing off to max_backoff (not 5 batches each retrying)
    assert set(during) == {20}  # whole
    assert after == [20] * 5  # one transaction per batch, none held back by a backoff of the outage
    assert after and dest.batches[-1][0] - dest.until < 1.0 + 1.0  # resumed within one capped wait
    items = outbox.items("fhir", limit=1000)
    assert sum(i.attempts for i in items) == len(READINGS)  # one lease each: the probe was held, not re-leased


async def test_a_queue_held_whole_as_the_probe_is_tried_when_the_wait_is_over(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as box:
        box.enqueue("fhir", [(r.key, r.to_json()) for r in READINGS[:5]])
        dest = Down(outage=1.0)
        worker = DeliveryWorker(box, dest, batch_size=20, max_backoff=0.5, lease_seconds=120)
        began = time.monotonic()
        await run_until(box, [worker], lambda c: c["delivered"] == 5)
        assert box.counts("fhir")["delivered"] == 5
        assert time.monotonic() - began < 1.0 + 0.5 + 1.0  # not the probe's lease deadline, 120 s ahead


async def test_until_idle_in_an_outage_tries_once_and_leaves_everything_due(outbox):
    dest = Down(outage=60)
    summary = await DeliveryWorker(outbox, dest, batch_size=20).run(until_idle=True)
    assert summary.delivered == 0 and len(dest.batches) == 1
    assert outbox.next_due("fhir") <= time.time()  # a later `phg send` tries at once
    counts = outbox.counts("fhir")
    assert (counts["queued"], counts["inflight"]) == (len(READINGS), 0)
    assert outbox.items("fhir", limit=1)[0].last_error == "connection refused"


# --- finding 10: clocks --------------------------------------------------------------------------------


async def test_due_times_and_leases_from_a_clock_that_ran_ahead_are_due(outbox):
    outbox.lease("fhir", 30, 120, now=time.time() + 3600)  # leased at +1 h, then the process was killed
    ids = [i.id for i in outbox.items("fhir", "queued", limit=1000)]
    outbox.lease("fhir", len(ids), 0, now=time.time() + 2 * DAY)
    outbox.retry_later(ids, 0, "queued while the clock ran two days ahead")
    with outbox._write() as conn:  # what that clock left behind: due in two days
        conn.execute("UPDATE item SET next_attempt = next_attempt + ? WHERE state = 'queued'", (2 * DAY,))
    worker = DeliveryWorker(outbox, Slow(0), batch_size=50, max_backoff=300, lease_seconds=120)
    summary = await worker.run(until_idle=True)
    assert summary.delivered == len(READINGS)
    assert outbox.next_due("fhir", worker.horizon) is None


async def test_a_retry_after_pause_is_kept_by_the_monotonic_clock(outbox, monkeypatch):
    class Busy(Slow):
        async def send(self, readings):
            self.batches.append(len(readings))
            raise TransientDeliveryError("503", retry_after=30)

    worker = DeliveryWorker(outbox, Busy(0), batch_size=50, max_backoff=60)
    assert await worker.run_once()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + DAY)  # the wall clock jumps a day ahead
    assert not await worker.run_once()  # still paused: the pause is not a wall-clock deadline


def test_a_lease_shorter_than_a_request_timeout_is_refused(tmp_path):
    config = tmp_path / "phg.toml"
    config.write_text('[fhir]\nbase_url = "http://127.0.0.1:1/fhir"\ntimeout = 60\n[delivery]\nlease_seconds = 30\n')
    with pytest.raises(ConfigError, match=r"\[delivery\] lease_seconds \(30 s\) must be at least \[fhir\] timeout"):
        load_config(config, env={})
    config.write_text('[delivery]\nlease_seconds = 20\n[destinations.lab]\ntype = "mllp"\nhost = "127.0.0.1"\n'
                      'port = 2575\n')
    with pytest.raises(ConfigError, match=r"lease_seconds \(20 s\) must be at least \[destinations.lab\] ack_timeout"):
        load_config(config, env={})
    config.write_text('[delivery]\nlease_seconds = 20\n[destinations.lab]\ntype = "http"\n'
                      'url = "http://127.0.0.1:1/hl7"\ntimeout = 10\n')
    assert load_config(config, env={}).lease_seconds == 20  # the FHIR server is not in use: its timeout is not


# --- no exception type leaves a batch in flight ----------------------------------------------------------


async def test_an_arbitrary_exception_kills_only_its_reading(outbox):
    bad = READINGS[13].key

    class Buggy(Slow):
        async def send(self, readings):
            self.batches.append(len(readings))
            if any(r.key == bad for r in readings):
                raise MemoryError("rendering a gigabyte of digits")
            return [Delivered("ok") for _ in readings]

    summary = await DeliveryWorker(outbox, Buggy(0), batch_size=50).run(until_idle=True)
    assert (summary.delivered, summary.dead) == (len(READINGS) - 1, 1)
    [dead] = outbox.items("fhir", "dead")
    assert dead.key == bad and dead.last_error == "MemoryError: rendering a gigabyte of digits"
    assert outbox.counts("fhir")["inflight"] == 0


class OneByOne:
    """Sends a batch one reading at a time, `seconds` each (as an HL7 exchange does, message by message);
    records the readings each call sent."""

    name = "fhir"

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.calls: list[list[str]] = []

    async def send(self, readings):
        self.calls.append(sent := [])
        for reading in readings:
            await asyncio.sleep(self.seconds)
            sent.append(reading.key)
        return [Delivered("ok") for _ in readings]


class Stalling(Outbox):
    """An outbox whose lease renewals hang once `stalled` is set (a JetStream cluster without a leader)."""

    stalled = False

    def renew(self, token, lease_seconds):
        if self.stalled:
            time.sleep(1.5)
            return 0
        return super().renew(token, lease_seconds)


async def test_a_lease_lost_mid_send_stops_the_send(tmp_path):
    """The queue stalls while a batch is on the wire, so its lease cannot be renewed and runs out: the worker
    stops sending that batch within a message (not the whole batch, which another worker now leases and
    sends: here this same worker, under a new lease), reports nothing under the lost lease, and goes on.
    Old code: the whole batch sent under the lost lease."""
    box = Stalling(tmp_path / "o.sqlite")
    box.enqueue("fhir", [(r.key, r.to_json()) for r in READINGS[:10]])
    first = OneByOne(0.15)
    worker = DeliveryWorker(box, first, batch_size=10, lease_seconds=0.6)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.2)
    box.stalled = True  # from here no renewal gets through: the lease ends about 0.6 s after it was taken
    await asyncio.sleep(1.6)
    stop.set()
    await running
    assert 1 <= len(first.calls[0]) <= 6, first.calls  # stopped within a message of the lease's end (0.6 s / 0.15 s)
    assert box.counts("fhir")["delivered"] == 0  # nothing reported under a lost lease
    box.stalled = False
    second = OneByOne(0.0)
    with Outbox(tmp_path / "o.sqlite") as other:  # another worker: the expired lease is due for it
        await DeliveryWorker(other, second, batch_size=10, lease_seconds=5).run(until_idle=True)
        assert other.counts("fhir")["delivered"] == 10
    assert sorted(second.calls[0]) == sorted(r.key for r in READINGS[:10])
    box.close()
