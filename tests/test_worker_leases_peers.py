"""Issue 10, findings 1 and 8 against real peers: a slow MLLP receiver (python-hl7's server, ACKing
each message late) whose batches outlast a short lease, and a FHIR server (sekmet) that cannot be
reached for a while, behind the fault proxy."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import hl7
import hl7.mllp
import httpx
import pytest

from faultproxy import FaultProxy
from hl7_destinations import mllp_destination
from phg.delivery.fhir import FhirDestination
from phg.delivery.worker import DeliveryWorker
from phg.demo.sim import simulated_readings
from phg.model import Gateway, PatientRef
from phg.outbox import Outbox
from test_worker_leases import Stalling

GATEWAY = Gateway(system_id="ECDE3D4E58532D31", serial="0001", firmware="1.2.3")
START = datetime(2026, 11, 28, 9, tzinfo=UTC)


@contextlib.asynccontextmanager
async def slow_receiver(delay: float) -> AsyncIterator[tuple[int, list[str]]]:
    """python-hl7's MLLP server answering AA to every message after `delay` seconds; yields its port
    and the MSH-10 of every message received."""
    received: list[str] = []

    async def handle(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while True:
                message = await reader.readmessage()
                received.append(str(message.segment("MSH")[10]))
                await asyncio.sleep(delay)
                writer.writemessage(message.create_ack("AA"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, hl7.mllp.InvalidBlockError):
            pass
        finally:
            writer.close()

    server = await hl7.mllp.start_hl7_server(handle, "127.0.0.1", 0, encoding="utf-8")
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()


async def drain(box: Outbox, workers: list[DeliveryWorker], name: str, total: int, timeout: float) -> None:
    """Run the workers side by side until every item is delivered or dead (bounded), then stop them."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(t.done() for t in tasks):
        counts = await asyncio.to_thread(box.counts, name)
        if counts["delivered"] + counts["dead"] == total:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*tasks)


@pytest.mark.peers
@pytest.mark.parametrize("workers, per_device", [(1, 100), (2, 40)], ids=["one-worker-500", "two-workers-200"])
async def test_a_slow_mllp_receiver_gets_every_message_once(tmp_path, workers, per_device):
    """Each batch of 50 takes about 1.5 s to be ACKed, the lease is 0.5 s: the lease is renewed while
    the batch is on the wire, so neither the look-ahead nor a second worker (`phg send` beside
    `phg run`, each with its own connection) sends it again."""
    readings = simulated_readings(PatientRef("urn:oid:1.2.3", "slow"), START, per_device=per_device)
    box = Outbox(tmp_path / "outbox.sqlite")
    box.enqueue("lab", [(r.key, r.to_json()) for r in readings])
    async with slow_receiver(delay=0.03) as (port, received):
        destinations = [mllp_destination(host="127.0.0.1", port=port, gateway=GATEWAY, name="lab", ack_timeout=5)
                        for _ in range(workers)]
        try:
            await drain(box, [DeliveryWorker(box, d, batch_size=50, lease_seconds=0.5) for d in destinations],
                        "lab", len(readings), timeout=35)
        finally:
            for destination in destinations:
                await destination.aclose()
    twice = [control for control, n in Counter(received).items() if n > 1]
    assert not twice, f"{len(twice)} MSH-10 received twice"
    assert box.counts("lab")["delivered"] == len(readings) == len(received)
    box.close()


@pytest.mark.peers
async def test_a_lease_lost_mid_batch_reports_what_the_receiver_acknowledged(tmp_path, caplog):
    """The queue stalls while an MLLP batch is on the wire (each message ACKed 0.15 s late), so its lease
    (0.6 s) is lost and the send stops between two messages, once the message on the wire has its ACK; the
    messages ACKed are reported delivered under the lost lease (no other worker took them), so the lease
    that sends the rest (here the same worker's next) does not send them again: no MSH-10 twice.
    Before: every message ACKed before the loss was sent again (nothing was reported under a lost lease),
    and the next message read the late ACK of the one on the wire (the connection was kept); then, until
    the exchange on the wire was let finish, that one message reached the receiver twice."""
    readings = simulated_readings(PatientRef("urn:oid:1.2.3", "lost"), START, per_device=2)
    box = Stalling(tmp_path / "outbox.sqlite")
    box.enqueue("lab", [(r.key, r.to_json()) for r in readings])
    async with slow_receiver(delay=0.15) as (port, received):
        async with mllp_destination(host="127.0.0.1", port=port, gateway=GATEWAY, name="lab",
                                    ack_timeout=5) as destination:
            worker = DeliveryWorker(box, destination, batch_size=10, lease_seconds=0.6)
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))
            await asyncio.sleep(0.2)
            box.stalled = True  # no renewal gets through from here: the lease is lost
            for _ in range(50):
                if "a lease ran out while its batch was being sent" in caplog.text:
                    break
                await asyncio.sleep(0.05)
            box.stalled = False
            assert "a lease ran out while its batch was being sent" in caplog.text
            for _ in range(40):  # reported once the message on the wire has its ACK (0.15 s)
                if acknowledged := box.counts("lab")["delivered"]:
                    break
                await asyncio.sleep(0.05)
            await drain(box, [], "lab", len(readings), timeout=10)
            stop.set()
            await running
    assert 1 <= acknowledged < len(readings), acknowledged  # stopped part way, the ACKed ones reported at once
    assert box.counts("lab")["delivered"] == len(readings)
    twice = [control for control, n in Counter(received).items() if n > 1]
    assert twice == [], f"{len(twice)} MSH-10 received twice"
    box.close()


@pytest.mark.peers
async def test_an_unreachable_fhir_server_gets_probes_then_one_transaction_per_batch(tmp_path, sekmet):
    readings = simulated_readings(PatientRef("urn:oid:1.2.3", f"outage-{time.time_ns()}"), START, per_device=24)
    batch_size, outage, max_backoff = 20, 4.0, 1.0
    box = Outbox(tmp_path / "outbox.sqlite")
    box.enqueue("fhir", [(r.key, r.to_json()) for r in readings])
    proxy = FaultProxy(sekmet.base_url).start()
    port = proxy.port
    proxy.stop()  # the server is down: connections to its port are refused
    attempts: list[float] = []

    async def count(request: httpx.Request) -> None:
        if request.method == "POST":
            attempts.append(time.monotonic())

    async with httpx.AsyncClient(timeout=30, event_hooks={"request": [count]}) as client:
        destination = FhirDestination(client, f"http://127.0.0.1:{port}/fhir", GATEWAY)
        worker = DeliveryWorker(box, destination, batch_size=batch_size, max_backoff=max_backoff)
        task = asyncio.create_task(drain(box, [worker], "fhir", len(readings), timeout=30))
        await asyncio.sleep(outage)
        back = time.monotonic()
        proxy = FaultProxy(sekmet.base_url, port=port).start()  # the server is back
        try:
            await task
        finally:
            proxy.stop()
    during = [t for t in attempts if t < back]
    assert 1 <= len(during) <= 8, f"{len(during)} POSTs in a {outage} s outage"  # probes, not dozens per second
    assert box.counts("fhir")["delivered"] == len(readings)
    posts = [r for r in proxy.records if r.method == "POST"]
    assert len(posts) == math.ceil(len(readings) / batch_size)  # whole batches, no per-item leftovers
    assert posts[-1].answered is not None and posts[-1].answered - back < max_backoff + 10
    box.close()
