"""MLLP fault cases with a scripted receiver (a plain asyncio server written here, reading frames
with StreamReader.readuntil, not with phg's codec), through the outbox and the worker:
AE then AA, AE until dead, AR, no answer, wrong MSA-2, close mid-frame, garbage bytes, refused
connections. Each ends in the right queue state; no reading is lost, and none is sent again after AA."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from hl7_destinations import mllp_destination
from phg.delivery import worker as worker_module
from phg.delivery.hl7 import Hl7Destination
from phg.delivery.worker import DeliveryWorker
from phg.errors import TransientDeliveryError
from phg.outbox import Outbox
from test_mllp_peers import GATEWAY, readings_of_every_type

ACK_TIMEOUT = 0.3


class Scripted:
    """Answers each received message by the next action of `script` (then `default`):
    an ACK code (AA, AE, AR, CA, CE, CR), 'silent', 'wrong' (AA for another MSH-10), 'midframe'
    (half an ACK, then close), 'garbage', 'close' (close without answering), 'AA+close'."""

    def __init__(self, script: list[str], default: str = "AA"):
        self.script = list(script)
        self.default = default
        self.received: list[str] = []
        self.connections = 0
        self.port = 0

    @staticmethod
    def ack(code: str, control: str) -> bytes:
        err = f"\rERR||OBX^3^5|207^Application internal error^HL70357|E||||value out of range for {control}" \
            if code[1] in "ER" else ""
        text = f"MSH|^~\\&|scripted||phg||20261128090000+0000||ACK^R01^ACK|A{control[:10]}|P|2.6\rMSA|{code}|{control}{err}"
        return b"\x0b" + text.encode() + b"\x1c\r"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                block = await reader.readuntil(b"\x1c\r")
                control = block.split(b"\r")[0].split(b"|")[9].decode()
                self.received.append(control)
                action = self.script.pop(0) if self.script else self.default
                if action == "silent":
                    continue
                if action == "wrong":
                    writer.write(self.ack("AA", "SOMEONEELSE0000000000"))
                elif action == "midframe":
                    writer.write(self.ack("AA", control)[:25])
                    await writer.drain()
                    return
                elif action == "garbage":
                    writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                elif action == "close":
                    return
                elif action == "AA+close":
                    writer.write(self.ack("AA", control))
                    await writer.drain()
                    return
                else:
                    writer.write(self.ack(action, control))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # CancelledError: the test is over and the server closes; end quietly
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def scripted(script: list[str], default: str = "AA") -> AsyncIterator[Scripted]:
    peer = Scripted(script, default)
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    peer.port = server.sockets[0].getsockname()[1]
    try:
        yield peer
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await server.wait_closed()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    """Retries are due at once, so a test can run the worker again without waiting."""
    monkeypatch.setattr(worker_module, "backoff", lambda attempts, base=1.0, cap=300.0: 0.0)


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    yield box
    box.close()


def destination(peer: Scripted, **kwargs) -> Hl7Destination:
    return mllp_destination(host="127.0.0.1", port=peer.port, gateway=GATEWAY, ack_timeout=ACK_TIMEOUT,
                           connect_timeout=2, **kwargs)


async def run(outbox: Outbox, dest: Hl7Destination, readings, rounds: int) -> DeliveryWorker:
    outbox.enqueue(dest.name, [(r.key, r.to_json()) for r in readings])
    worker = DeliveryWorker(outbox, dest, batch_size=10)
    for _ in range(rounds):
        if not await worker.run_once():
            break
    await worker._drop_prefetch()  # as a stopping worker does: a batch leased ahead is given back, so the
    await dest.aclose()            # states read next do not depend on whether the look-ahead ran before the report
    return worker


def states(outbox: Outbox) -> list[str]:
    return [i.state for i in outbox.items("mllp")]


async def test_ae_then_aa_is_delivered_on_the_retry(outbox):
    (reading,) = readings_of_every_type()[:1]
    async with scripted(["AE"]) as peer:
        await run(outbox, destination(peer), [reading], rounds=5)
    (item,) = outbox.items("mllp")
    assert (item.state, item.attempts) == ("delivered", 2)
    assert len(peer.received) == 2 and len(set(peer.received)) == 1  # the same MSH-10 both times


async def test_ae_retried_ae_retries_times_then_dead(outbox):
    (reading,) = readings_of_every_type()[:1]
    async with scripted([], default="AE") as peer:
        await run(outbox, destination(peer, ae_retries=2), [reading], rounds=10)
    (item,) = outbox.items("mllp")
    assert (item.state, item.attempts) == ("dead", 3)
    assert "value out of range" in item.last_error and "AE" in item.last_error
    assert len(peer.received) == 3


@pytest.mark.parametrize("code", ["AR", "CR"])
async def test_reject_is_dead_at_once_with_the_err_text(outbox, code):
    readings = readings_of_every_type()[:2]
    async with scripted([code]) as peer:
        await run(outbox, destination(peer), readings, rounds=5)
    first, second = outbox.items("mllp")
    assert first.state == "dead" and "value out of range" in first.last_error and code in first.last_error
    assert second.state == "delivered"
    assert len(peer.received) == 2


@pytest.mark.parametrize("fault", ["silent", "wrong", "midframe", "garbage"])
async def test_no_usable_ack_is_not_delivered_and_retried(outbox, fault):
    """First batch: reading 1 AA, reading 2 gets the fault, reading 3 is not sent. The next run
    sends 2 and 3 only; 1 is never sent again."""
    readings = readings_of_every_type()[:3]
    async with scripted(["AA", fault]) as peer:
        dest = destination(peer)
        outbox.enqueue(dest.name, [(r.key, r.to_json()) for r in readings])
        worker = DeliveryWorker(outbox, dest, batch_size=10)
        await worker.run_once()
        assert states(outbox) == ["delivered", "queued", "queued"]
        second = outbox.items("mllp")[1]
        assert second.last_error and second.result is None
        assert len(peer.received) == 2
        await worker.run_once()
        await dest.aclose()
    assert states(outbox) == ["delivered", "delivered", "delivered"]
    first_id = peer.received[0]
    assert peer.received.count(first_id) == 1
    assert peer.received[1] == peer.received[2]  # the unanswered message again, same MSH-10
    assert len(peer.received) == 4


async def test_close_without_answer_on_a_kept_connection_resends_once_on_a_new_one(outbox):
    """A receiver that drops a kept-open connection instead of answering: the message goes again,
    with the same MSH-10, on a fresh connection (interface engines do the same)."""
    readings = readings_of_every_type()[:3]
    async with scripted(["AA", "close"]) as peer:
        await run(outbox, destination(peer), readings, rounds=1)
    assert states(outbox) == ["delivered"] * 3
    assert peer.received[1] == peer.received[2] and len(peer.received) == 4
    assert peer.connections == 2


async def test_close_without_answer_on_a_fresh_connection_is_not_delivered(outbox):
    readings = readings_of_every_type()[:2]
    async with scripted(["close"]) as peer:
        await run(outbox, destination(peer), readings, rounds=1)
    assert states(outbox) == ["queued", "queued"]
    assert len(peer.received) == 1 and "closed" in outbox.items("mllp")[0].last_error


async def test_fault_on_the_first_message_puts_the_whole_batch_back(outbox):
    readings = readings_of_every_type()[:3]
    async with scripted(["silent"]) as peer:
        dest = destination(peer)
        worker = await run(outbox, dest, readings, rounds=1)
    assert states(outbox) == ["queued"] * 3
    assert worker.summary.retried == 3 and len(peer.received) == 1


async def test_refused_connection_is_transient(outbox, unused_tcp_port):
    dest = mllp_destination(host="127.0.0.1", port=unused_tcp_port, gateway=GATEWAY, connect_timeout=1)
    await run(outbox, dest, readings_of_every_type()[:2], rounds=2)
    assert set(states(outbox)) <= {"queued", "inflight"}  # waiting out the outage, whole (the worker's circuit)
    with pytest.raises(TransientDeliveryError, match="cannot connect") as info:
        await dest.send(readings_of_every_type()[:2])
    assert info.value.reached is False


async def test_peer_closing_after_each_ack_is_followed(outbox):
    readings = readings_of_every_type()
    async with scripted([], default="AA+close") as peer:
        dest = destination(peer)
        await run(outbox, dest, readings, rounds=2)
    assert states(outbox) == ["delivered"] * len(readings)
    assert len(peer.received) == len(readings) == len(set(peer.received))
    assert peer.connections == len(readings)


async def test_commit_accept_is_delivered(outbox):
    async with scripted([], default="CA") as peer:
        await run(outbox, destination(peer), readings_of_every_type()[:2], rounds=1)
    assert states(outbox) == ["delivered", "delivered"]
    assert all(i.result.startswith("CA ") for i in outbox.items("mllp"))


async def test_unmappable_reading_is_dead_and_the_rest_delivered(outbox):
    from phg.model import parse_reading

    odd = parse_reading({"device": {"system_id": "0011223344556677"}, "patient": {"system": "urn:oid:1.2", "value": "p"},
                         "metrics": [{"code": 12345, "value": 1, "unit": "{count}", "time": "2026-11-28T09:00:00Z"}]})
    async with scripted([]) as peer:
        await run(outbox, destination(peer), [odd, *readings_of_every_type()[:1]], rounds=1)
    first, second = outbox.items("mllp")
    assert first.state == "dead" and "MDC unit code" in first.last_error
    assert second.state == "delivered" and len(peer.received) == 1
