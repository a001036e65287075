"""Delivery never waits behind the Intake or the view store (brief V): the delivery workers' queue calls run
in a thread pool of their own (phg.daemon.deliver, phg.delivery.worker), not in the event loop's default
executor, which the API's POST /v1/readings and the sources fill while the view store's database hangs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest

import phg.daemon
from phg.config import load_config
from phg.daemon import deliver, run_gateway
from phg.delivery import DeliveryWorker
from phg.delivery.outcome import Deferred, Delivered, Rejected
from phg.delivery.worker import QUEUE_CALLS
from phg.demo.peers import free_port
from phg.demo.sim import simulated_readings
from phg.errors import StorageError
from phg.model import PatientRef
from phg.outbox import Outbox
from phg.process import POOL
from phg.viewstore import LOCK_WAIT
from postgres_db import postgres_url  # noqa: F401  (fixture: a fresh database)
from test_flow_c3pro import assert_delivered_once, every_reading_type, write_config
from test_reliability_faults import GATEWAY

START = datetime(2026, 11, 30, 9, tzinfo=UTC)
SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"
POSTERS = 12  # concurrent POSTs, twice the default executor's threads (set in the test)


class HangingProxy:
    """A TCP listener on 127.0.0.1 in front of `upstream`: it forwards both ways until hang(); from then on it
    reads what the client sends (TCP acknowledges it) and forwards none of it, and accepts new connections
    without answering them: a database that accepts TCP and never answers. close() shuts every socket, which
    ends the calls waiting on it. (A URL to a bare listener that never answers would not do: `phg run` would
    never open the view store, and the Intake would refuse readings at once instead of hanging.)"""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.hung = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.sockets.append(client)
            if self.hung.is_set():
                continue  # accepted, never answered
            server = socket.create_connection(self.upstream, timeout=5)
            server.settimeout(None)
            self.sockets.append(server)
            for source, sink in ((client, server), (server, client)):
                self.threads.append(threading.Thread(target=self._pump, args=(source, sink), daemon=True))
                self.threads[-1].start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                if not self.hung.is_set():
                    sink.sendall(data)
            except OSError:
                return  # closed

    def hang(self) -> None:
        self.hung.set()

    def close(self) -> None:
        for each in self.sockets:
            try:
                each.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv or accept (close alone does not)
            except OSError:
                pass
            each.close()
        for thread in self.threads:
            thread.join(timeout=5)


@pytest.mark.peers
async def test_queued_readings_are_delivered_while_posts_hang_on_the_view_store(sekmet, tmp_path,
                                                                               postgres_url):  # noqa: F811
    """`phg run`'s wiring in-process (run_gateway: the API on a real port, the delivery worker to sekmet) with
    `[view] url` through a proxy that, once the view store is open, stops answering. POSTERS clients post
    readings again and again, each POST holding a default-executor thread on the view store (the call on its
    connection without end, the others LOCK_WAIT each); readings queued meanwhile reach the FHIR server far
    sooner than LOCK_WAIT, while every POST still hangs. Before the worker had its own pool, its queue calls waited
    in the default executor's queue behind the POSTs: many seconds."""
    host, port = postgres_url.split("@", 1)[1].split("/", 1)[0].split(":")
    proxy = HangingProxy((host, int(port)))
    api_port = free_port()
    config = load_config(env={}, document={
        "gateway": {"system_id": GATEWAY.system_id, "serial": GATEWAY.serial},
        "fhir": {"base_url": sekmet.base_url}, "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        "view": {"url": postgres_url.replace(f":{port}/", f":{proxy.port}/")}})
    queued = simulated_readings(PatientRef(SYSTEM, "queued"), START, per_device=2)
    answers: list[int] = []
    stop = asyncio.Event()
    # as few default-executor threads as there are POSTs, whatever the CPU count (min(32, CPUs + 4) by default)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(POSTERS // 2))
    with Outbox(config.outbox_path) as outbox:
        gateway = asyncio.create_task(run_gateway(config, outbox, stop))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as api:
                for _ in range(150):  # ready: the view store is open (through the proxy)
                    await asyncio.sleep(0.1)
                    try:
                        if (await api.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                else:
                    raise AssertionError("phg run's API never became ready")
                proxy.hang()

                async def post(n: int) -> None:
                    for attempt in range(1000):
                        patient = PatientRef(SYSTEM, f"post-{n}-{attempt}")
                        document = simulated_readings(patient, START, devices=("scale",))[0].to_document()
                        answers.append((await api.post("/v1/readings", json=[document])).status_code)

                posters = [asyncio.create_task(post(n)) for n in range(POSTERS)]
                try:
                    await asyncio.sleep(0.5)  # every POST is on the view store now
                    outbox.enqueue("fhir", [(r.key, r.to_json()) for r in queued])
                    started = time.monotonic()
                    while outbox.counts("fhir")["delivered"] < len(queued):  # far sooner than LOCK_WAIT
                        assert time.monotonic() - started < LOCK_WAIT / 2, f"not delivered: {outbox.counts('fhir')}"
                        await asyncio.sleep(0.05)
                    assert answers == []  # meanwhile every POST hung on the view store
                finally:
                    for poster in posters:
                        poster.cancel()
                    await asyncio.gather(*posters, return_exceptions=True)
        finally:
            proxy.close()  # the calls waiting on the view store end
            stop.set()
            await asyncio.wait_for(gateway, 30)


async def test_deliver_needs_no_default_executor_thread_and_leaves_none_of_its_own(tmp_path):
    """deliver() with the default executor's only thread held (as hanging intake calls hold them all): its
    workers' queue calls run in its own pool, and every deliver() shuts its pool down (`phg send` and the
    tests call it often), even when the workers are kept (`workers`, as the service keeps them)."""
    config = load_config(env={}, document={"fhir": {"base_url": "http://127.0.0.1:9/fhir"},
                                           "outbox": {"path": str(tmp_path / "outbox.sqlite")}})
    held, release = ThreadPoolExecutor(1), threading.Event()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(held)
    held.submit(release.wait)
    try:
        with Outbox(config.outbox_path) as outbox:
            kept: list = []
            for _ in range(5):
                summary = await asyncio.wait_for(deliver(config, outbox, until_idle=True, workers=kept), 5)
                assert summary.delivered == 0
    finally:
        release.set()
    for _ in range(50):
        if not [t for t in threading.enumerate() if t.name.startswith("phg-delivery")]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"delivery threads left: {threading.enumerate()}")
    assert len(kept) == 5


class _Fake:
    """A destination that accepts every reading it is sent, counting them."""

    type = "fhir"

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent = 0

    async def send(self, readings):
        self.sent += len(readings)
        await asyncio.sleep(0.05)
        return [Delivered("ok") for _ in readings]


class _FailingOrSlow:
    """The outbox, where leasing for 'a' fails (a full disk) and reporting 'b''s readings delivered is slow (a long
    fsync): a fails while b is mid-report."""

    def __init__(self, box: Outbox) -> None:
        self.box = box

    def __getattr__(self, name: str):
        return getattr(self.box, name)

    def lease(self, destination, *args, **kw):
        if destination == "a":
            time.sleep(0.2)
            raise StorageError("disk full (simulated)")
        return self.box.lease(destination, *args, **kw)

    def delivered(self, ids, *args, **kw):
        time.sleep(0.5)
        return self.box.delivered(ids, *args, **kw)


async def test_a_failing_worker_leaves_the_others_to_finish_what_they_sent(tmp_path, monkeypatch):
    """Review V finding 1: one worker raising (until_idle: a StorageError) while another is reporting a batch it
    sent. Once the failure was raised at once and the pool shut under the other worker, its report was cancelled:
    what it had sent stayed inflight, to be sent again (a duplicate at an MLLP receiver). Now deliver() raises the
    StorageError once the other has delivered everything and recorded it, and no task is left behind."""
    config = load_config(env={}, document={"fhir": {"base_url": "http://127.0.0.1:9/fhir"},
                                           "outbox": {"path": str(tmp_path / "outbox.sqlite")}})
    a, b = _Fake("a"), _Fake("b")

    @contextlib.asynccontextmanager
    async def fake_open(_config):
        yield [a, b]

    monkeypatch.setattr(phg.daemon, "open_destinations", fake_open)
    readings = simulated_readings(PatientRef(SYSTEM, "p"), START, per_device=20)
    loop_errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: loop_errors.append(context))
    with Outbox(config.outbox_path) as box:
        box.enqueue(["b"], [(r.key, r.to_json()) for r in readings])
        with pytest.raises(StorageError, match="disk full"):
            await asyncio.wait_for(deliver(config, _FailingOrSlow(box), until_idle=True), 30)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        assert b.sent == len(readings)
        assert box.counts("b") | {"dead": 0} == {"queued": 0, "inflight": 0, "delivered": len(readings), "dead": 0}
    gc.collect()
    await asyncio.sleep(0)
    assert loop_errors == []


class _Recorded:
    """The outbox, recording each call's name and the thread it ran in."""

    def __init__(self, box: Outbox) -> None:
        self.box = box
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name: str):
        call = getattr(self.box, name)

        def recorded(*args, **kw):
            self.calls.append((name, threading.current_thread().name))
            return call(*args, **kw)

        return recorded


class _Mixed:
    """A slow first answer (its lease renewed meanwhile): delivered, refused (dead), and one to wait for
    (Retry-After, a pause); then every reading delivered."""

    name = "fhir"
    type = "fhir"

    def __init__(self) -> None:
        self.sends = 0

    async def send(self, readings):
        self.sends += 1
        if self.sends > 1:
            return [Delivered("ok") for _ in readings]
        await asyncio.sleep(0.5)
        return [Delivered("ok"), Rejected("refused"), Deferred("busy", retry_after=0.3),
                *(Delivered("ok") for _ in readings[3:])]


async def test_every_queue_call_of_a_worker_runs_in_its_own_pool(tmp_path):
    """Review V finding 2: a worker's every kind of queue call (lease, renew, delivered, dead, pause, retry_later,
    next_due) runs in delivery's pool (phg.process.POOL) while the default executor's only thread is held: none of
    them waits there."""
    held, release = ThreadPoolExecutor(1), threading.Event()
    asyncio.get_running_loop().set_default_executor(held)
    held.submit(release.wait)
    readings = simulated_readings(PatientRef(SYSTEM, "p"), START, per_device=1)
    pool = ThreadPoolExecutor(QUEUE_CALLS, thread_name_prefix="own-pool")
    stop = asyncio.Event()
    try:
        with Outbox(tmp_path / "outbox.sqlite") as box:
            box.enqueue(["fhir"], [(r.key, r.to_json()) for r in readings])
            outbox = _Recorded(box)
            worker = DeliveryWorker(outbox, _Mixed(), lease_seconds=0.6)
            own = POOL.set(pool)  # as phg.daemon.deliver sets it; the task inherits it
            running = asyncio.create_task(worker.run(stop))
            POOL.reset(own)
            try:
                for _ in range(100):
                    if box.counts("fhir")["delivered"] == len(readings) - 1:
                        break
                    await asyncio.sleep(0.05)
                stop.set()
                await asyncio.wait_for(running, 5)
            finally:
                running.cancel()
            assert box.counts("fhir") | {"delivered": 0} == {"queued": 0, "inflight": 0, "delivered": 0, "dead": 1}
            assert box.counts("fhir")["delivered"] == len(readings) - 1
    finally:
        release.set()
        pool.shutdown()
    names = {name for name, _ in outbox.calls}
    assert {"lease", "renew", "delivered", "dead", "pause", "retry_later", "next_due"} <= names, names
    assert {thread.rsplit("_", 1)[0] for _, thread in outbox.calls} == {"own-pool"}


@pytest.mark.peers
async def test_c3pro_delivery_needs_no_default_executor_thread(c3pro_peer, tmp_path):
    """Review V finding 3: a destination's own thread work (C3-PRO: its journal, opened and read and written per
    resource, and its envelopes) runs in delivery's pool too (phg.process.in_thread): with the default
    executor's only thread held, every reading type still arrives once."""
    config = load_config(write_config(tmp_path, c3pro_peer), env={})
    readings = every_reading_type()
    held, release = ThreadPoolExecutor(1), threading.Event()
    asyncio.get_running_loop().set_default_executor(held)
    held.submit(release.wait)
    try:
        with Outbox(config.outbox_path) as outbox:
            outbox.enqueue(config.destination_names, [(r.key, r.to_json()) for r in readings])
            summary = await asyncio.wait_for(deliver(config, outbox, until_idle=True), 30)
    finally:
        release.set()
    assert summary.delivered == len(readings)
    assert_delivered_once(c3pro_peer, readings)


async def test_a_cancelled_deliver_returns_once_its_workers_have_ended(tmp_path, monkeypatch):
    """deliver() cancelled (`phg run` stopping on another task's failure) while a worker reports a batch: it
    cancels its workers and ends only once every one has, so that none is left running on the pool it shuts down
    (gather raising the first worker's cancellation would end at once)."""
    config = load_config(env={}, document={"fhir": {"base_url": "http://127.0.0.1:9/fhir"},
                                           "outbox": {"path": str(tmp_path / "outbox.sqlite")}})
    a, b = _Fake("a"), _Fake("b")

    @contextlib.asynccontextmanager
    async def fake_open(_config):
        yield [a, b]  # a's lease fails; the first worker cancelled ending the wait would leave b running

    monkeypatch.setattr(phg.daemon, "open_destinations", fake_open)
    readings = simulated_readings(PatientRef(SYSTEM, "p"), START, per_device=20)
    with Outbox(config.outbox_path) as box:
        box.enqueue(["b"], [(r.key, r.to_json()) for r in readings])
        delivering = asyncio.create_task(deliver(config, _FailingOrSlow(box), until_idle=False,
                                                 stop=asyncio.Event()))
        for _ in range(100):
            if b.sent:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # its report of that batch is running
        delivering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await delivering
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
