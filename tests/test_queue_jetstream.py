"""The queue on NATS JetStream (issue 15): the Queue contract on both engines (SQLite and JetStream, where
the behaviour is shared), then what only JetStream does, against a real three-node cluster started on
loopback (tests/nats_cluster.py): idempotent intake, leases kept alive by in-progress acks, Nak delays,
dead letters with their reason and `retry`, dead-lettering on the last allowed delivery, delivered markers
that make a message JetStream hands out again harmless, progress markers, the stream leader killed mid-use,
and the logins: user/password, mutual TLS, an nkey seed file and a JWT .creds file (single servers with
that authorization), credential files readable by others or malformed refused by key, never shown."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import nats
import nats.js.api
import pytest
from hypothesis import example, given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from nats_cluster import NatsCluster, Operator, nats_cluster, nkey_pair  # noqa: F401  (the fixture)
from phg.config import QueueSettings, load_config
from phg.delivery import Delivered, DeliveryWorker
from phg.demo.sim import simulated_readings
from phg.errors import ConfigError, PermanentDeliveryError, StorageError, TransientDeliveryError
from phg.model import PatientRef
from phg.outbox import DEAD, DELIVERED, INFLIGHT, QUEUED, Outbox, Queue, jetstream, open_queue
from phg.outbox.jetstream import JetStreamQueue
from test_mllp_peers import make_pki

_prefixes = itertools.count()
DEST = "fhir"


def readings(n: int, tag: str = "r") -> list[tuple[str, str]]:
    return [(f"{tag}{i:04d}" + "0" * 32, f'{{"n": {i}}}') for i in range(n)]


@pytest.fixture(autouse=True)
def short_pulls(monkeypatch):
    """Shorter pulls than in production (0.5 s): an empty lease, which many tests assert, costs one."""
    monkeypatch.setattr(jetstream, "PULL_TIMEOUT", 0.25)


@pytest.fixture
def settings(nats_cluster) -> QueueSettings:  # noqa: F811
    """JetStream settings with a prefix of this test's own (the module shares one cluster)."""
    return QueueSettings(engine="jetstream", servers=tuple(nats_cluster.urls), prefix=f"t{next(_prefixes)}",
                         stream_replicas=3)


def _changed(settings: QueueSettings, **changes: object) -> QueueSettings:
    """`settings` with `changes` (a settings class is a phg.frozen record: no dataclasses.replace)."""
    return QueueSettings(**{**vars(settings), **changes})


@pytest.fixture
def open_js(settings) -> Iterator[Callable[..., JetStreamQueue]]:
    """Open JetStreamQueues (another one = another worker process), closed at the end."""
    opened: list[JetStreamQueue] = []

    def make(**changes) -> JetStreamQueue:
        opened.append(JetStreamQueue(_changed(settings, **changes)))
        return opened[-1]

    yield make
    for queue in opened:
        queue.close()


@pytest.fixture(params=["sqlite", "jetstream"])
def queue(request, tmp_path) -> Iterator[Queue]:
    if request.param == "sqlite":
        with Outbox(tmp_path / "outbox.sqlite") as outbox:
            yield outbox
    else:
        yield request.getfixturevalue("open_js")()


def lease_all(queue: Queue, expected: int, lease_seconds: float = 30, deadline: float = 10) -> list:
    """Lease until `expected` items are held (JetStream hands them out over a few pulls), bounded."""
    items: list = []
    end = time.monotonic() + deadline
    while len(items) < expected and time.monotonic() < end:
        items += queue.lease(DEST, expected - len(items), lease_seconds)
    return items


# ------------------------------------------------------------------------------------------ the contract


def test_both_engines_are_a_queue(queue):
    assert isinstance(queue, Queue)


def test_enqueue_is_idempotent_and_commits_the_progress_marker(queue):
    items = readings(5)
    first = queue.enqueue([DEST], items, {"ble:meter": "17"})
    again = queue.enqueue([DEST], items)
    assert first == again and len(set(first)) == 5
    assert queue.counts(DEST)[QUEUED] == 5
    assert queue.source_state("ble:meter") == "17" and queue.source_state("other") is None
    assert queue.stored_keys([DEST], [k for k, _ in items] + ["unknown"]) == {k for k, _ in items}


def test_lease_then_delivered_settles_each_reading_once(queue):
    ids = queue.enqueue(DEST, readings(4))
    leased = lease_all(queue, 4)
    assert sorted(i.id for i in leased) == sorted(ids)
    assert {i.state for i in leased} == {INFLIGHT} and len({i.lease for i in leased}) == 1
    assert leased[0].payload.startswith('{"n": ') and leased[0].attempts == 1
    queue.delivered([i.id for i in leased], ["ok"] * 4, token=leased[0].lease)
    assert queue.lease(DEST, 10, 30) == []
    counts = queue.counts(DEST)
    assert counts[DELIVERED] == 4 and counts[QUEUED] == counts[INFLIGHT] == 0
    assert queue.next_due(DEST) is None


def test_retry_later_waits_its_delay_and_counts_the_refusal(queue):
    queue.enqueue(DEST, readings(1))
    [item] = lease_all(queue, 1)
    queue.retry_later([item.id], 1.5, "503 busy", refused=True, token=item.lease)
    assert queue.lease(DEST, 1, 30) == []  # not before its delay
    time.sleep(1.6)
    [again] = lease_all(queue, 1)
    assert again.key == item.key and again.attempts == 2 and again.refusals == 1
    assert again.last_error == "503 busy"


def test_release_gives_the_reading_back_at_once(queue):
    queue.enqueue(DEST, readings(2))
    leased = lease_all(queue, 2)
    queue.release([i.id for i in leased], token=leased[0].lease)
    assert {i.key for i in lease_all(queue, 2)} == {i.key for i in leased}


def test_dead_letter_keeps_the_reason_and_retry_brings_it_back(queue):
    queue.enqueue(DEST, readings(2))
    leased = lease_all(queue, 2)
    poison, good = leased
    queue.dead([poison.id], "422: Observation.value out of range\nsecond line", token=poison.lease)
    queue.delivered([good.id], token=good.lease)
    [dead] = queue.items(DEST, DEAD)
    assert dead.id == poison.id and dead.key == poison.key and dead.payload == poison.payload
    assert dead.last_error == "422: Observation.value out of range\nsecond line"
    assert queue.get(poison.id).state == DEAD and queue.counts(DEST)[DEAD] == 1
    again = queue.retry(poison.id)
    assert again is not None and queue.counts(DEST)[DEAD] == 0
    [back] = lease_all(queue, 1)
    assert back.id == again and back.key == poison.key and back.payload == poison.payload
    assert queue.retry(back.id) is None  # handed out: its worker owns it
    queue.dead([back.id], "still bad", token=back.lease)
    assert queue.purge_dead(DEST) == 1 and queue.items(state=DEAD) == []


def test_a_stale_report_is_ignored(queue):
    """Reports under a token that is not the lease's change nothing (the lease went to another)."""
    queue.enqueue(DEST, readings(1))
    [item] = lease_all(queue, 1)
    queue.dead([item.id], "stale", token="not-the-token")
    assert queue.counts(DEST)[DEAD] == 0
    queue.delivered([item.id], token=item.lease)
    assert queue.counts(DEST)[DELIVERED] == 1


# ------------------------------------------------------------------------------------------ JetStream only


def test_in_progress_acks_keep_a_lease_from_redelivery_past_ack_wait(open_js, monkeypatch):
    """The worker renews three times per lease (as phg.delivery.worker does) while another worker pulls."""
    monkeypatch.setattr(jetstream, "_claim_grace", lambda: 0.5)  # (a dead worker's claims are kept that long)
    worker, other = open_js(), open_js()
    worker.enqueue(DEST, readings(1))
    [item] = lease_all(worker, 1, lease_seconds=1.5)
    stop, renewals = threading.Event(), []

    def keep() -> None:
        while not stop.wait(0.5):
            renewals.append(worker.renew(item.lease, 1.5))

    keeper = threading.Thread(target=keep)
    keeper.start()
    try:
        end = time.monotonic() + 4  # 2.7 AckWaits
        while time.monotonic() < end:
            assert other.lease(DEST, 1, 1.5) == []
    finally:
        stop.set()
        keeper.join()
    assert renewals and set(renewals) == {1}
    time.sleep(1.7)  # no renewal: the lease runs out and, once its claim and grace have, the reading goes to the other
    [taken] = lease_all(other, 1, lease_seconds=1.5)
    assert taken.key == item.key and taken.attempts == 2
    assert worker.renew(item.lease, 1.5) == 0  # no longer ours
    worker.dead([item.id], "late", token=item.lease)  # a stale report: ignored
    other.delivered([taken.id], token=taken.lease)
    assert other.counts(DEST)[DEAD] == 0 and other.counts(DEST)[DELIVERED] == 1


def test_a_delivered_marker_makes_a_reading_stored_again_harmless(open_js):
    """Past the dedupe window (or after a 2.9 node restart) the same reading is stored again: lease skips it."""
    queue = open_js(duplicate_window=1.0)
    items = readings(3)
    queue.enqueue(DEST, items)
    leased = lease_all(queue, 3)
    queue.delivered([i.id for i in leased], token=leased[0].lease)
    time.sleep(1.2)
    again = queue.enqueue(DEST, items)
    assert set(again).isdisjoint(i.id for i in leased)  # stored anew: the window has passed
    assert queue.lease(DEST, 10, 30) == [] and queue.lease(DEST, 10, 30) == []
    assert queue.counts(DEST)[QUEUED] == 0 and queue.counts(DEST)[INFLIGHT] == 0


def test_delivered_markers_go_to_the_bucket_done_names(open_js, monkeypatch):
    """One place names the delivered markers' bucket (`_done`): moved to another bucket, the markers follow
    (before: their subject was written by hand beside it, and they went to the old bucket all the same)."""
    queue = open_js()
    monkeypatch.setattr(queue, "_done", lambda destination: queue._bucket(f"done_{destination}_moved"))
    queue.enqueue(DEST, readings(2))
    leased = lease_all(queue, 2)
    queue.delivered([i.id for i in leased], token=leased[0].lease)
    moved = queue._call(queue._bucket(f"done_{DEST}_moved"), "opening the moved bucket")
    # each marker read by its key, as phg reads them (a key listing is a watcher, which once found none at once)
    assert all(queue._call(moved.get(key), "reading a marker").value for key, _ in readings(2))


@pytest.mark.parametrize("leader_wait", [2.1, 2.3], ids=["no-round-past-leader-wait", "last-round-cut-short"])
def test_publishing_without_a_puback_ends_within_leader_wait_and_a_request_timeout(monkeypatch, leader_wait):
    """What _claim_grace relies on: _publish_all starts no round past LEADER_WAIT, and its last round's waits
    (for a permit, for the PubAcks) end REQUEST_TIMEOUT after. Two messages, one permit, no PubAck ever: a
    round publishes one, waits REQUEST_TIMEOUT for a permit for the other, then REQUEST_TIMEOUT for the
    PubAck (before: a round could start 0.25 s past LEADER_WAIT and take both waits whole, 4.25 s here)."""
    monkeypatch.setattr(jetstream, "LEADER_WAIT", leader_wait)
    monkeypatch.setattr(jetstream, "REQUEST_TIMEOUT", 1.0)
    monkeypatch.setattr(jetstream, "PUBLISH_PENDING", 1)
    pending: set[asyncio.Future] = set()

    class Unanswered:  # nats-py's JetStream context: its one permit held by a message no PubAck answers
        def publish_async_pending(self) -> int:
            return len(pending)

        async def publish_async(self, subject: str, payload: bytes, headers: dict, wait_stall: float | None):
            if pending:
                await asyncio.sleep(wait_stall)  # no permit comes free
                raise nats.js.errors.TooManyStalledMsgsError
            future = asyncio.get_running_loop().create_future()
            pending.add(future)
            future.add_done_callback(pending.discard)
            return future

    queue = object.__new__(JetStreamQueue)  # no cluster: _publish_all and its _stall only
    queue._js, queue._where = Unanswered(), "JetStream (a double)"
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        asyncio.run(queue._publish_all({n: ("s", b"{}", {}) for n in (1, 2)}, "delivered markers"))
    assert time.monotonic() - started <= leader_wait + 1.0 + 0.2


def _claims(settings: QueueSettings, work: Callable) -> object:
    """Run `work(bucket)` on the destination's claim bucket (`P_claim_DEST`), through a connection of the test's
    own (what another worker's lease would have written there)."""
    async def run() -> object:
        nc = await nats.connect(list(settings.servers))
        try:
            bucket = await nc.jetstream().create_key_value(
                bucket=f"{settings.prefix}_claim_{DEST}", history=1, ttl=jetstream.CLAIM_TTL,
                replicas=settings.stream_replicas, storage=nats.js.api.StorageType.FILE)
            return await work(bucket)
        finally:
            await nc.close()

    return asyncio.run(run())


def _claim_of_another(settings: QueueSettings, key: str, until: float) -> None:
    _claims(settings, lambda b: b.put(key, json.dumps({"token": "another", "until": until}).encode()))


def test_a_reading_another_live_lease_claims_is_put_back_until_that_claim_and_its_grace_run_out(
        open_js, settings, monkeypatch):
    """What a consumer's new leader does after a leader kill (docs/hub.md): the reading another worker holds
    is handed out again at once. Its claim keeps it from being sent: put back, due when the claim and its
    grace (its holder may still be writing the delivered marker) have run out."""
    monkeypatch.setattr(jetstream, "_claim_grace", lambda: 2.0)
    queue = open_js()
    [(key, _)] = readings(1)
    queue.enqueue(DEST, readings(1))
    until = time.time() + 2
    _claim_of_another(settings, key, until)
    assert queue.lease(DEST, 1, 30) == []  # handed out by JetStream, not by phg: put back with a delay
    while time.time() < until + 2.0 - 0.5:  # run out at `until`, but still in its grace
        assert queue.lease(DEST, 1, 30) == []
    assert queue.counts(DEST)[INFLIGHT] == 1
    [item] = lease_all(queue, 1, deadline=5)  # the claim and its grace have run out (its holder died): ours now
    assert item.key == key and item.attempts == 1  # the put-back is no attempt (max_deliver)
    queue.delivered([item.id], token=item.lease)
    assert queue.counts(DEST)[DELIVERED] == 1


def test_a_claim_run_out_past_its_grace_is_taken_over_at_once(open_js, settings):
    queue = open_js()
    [(key, _)] = readings(1)
    queue.enqueue(DEST, readings(1))
    _claim_of_another(settings, key, time.time() - jetstream.CLAIM_SKEW - jetstream._claim_grace() - 1)
    [item] = lease_all(queue, 1, deadline=2)
    assert item.key == key
    entry = _claims(settings, lambda b: b.get(key))
    assert json.loads(entry.value)["token"] == item.lease


@pytest.mark.parametrize("before", ["none", "run-out", "own-run-out"])
def test_of_two_leases_claiming_one_reading_at_once_exactly_one_wins(open_js, settings, before):
    """The claim is a key-value create, or a ticket's create over a claim that ran out (another lease's,
    past its grace, or one of the two racing, which claims its own again as a delivered batch's keeper
    does, and alone may in the grace): 20 races, one winner each."""
    workers = [open_js(), open_js()]
    keys = [key for key, _ in readings(20, before[0])]
    ended = time.time() - 1 if before == "own-run-out" else time.time() - jetstream._claim_grace() - 1
    for key in keys if before != "none" else []:
        holder = "t0" if before == "own-run-out" else "another"
        _claims(settings, lambda b, key=key, holder=holder: b.put(
            key, json.dumps({"token": holder, "until": ended}).encode()))
    for key in keys:
        barrier, won = threading.Barrier(2), {}

        def take(queue: JetStreamQueue, token: str, key: str = key, barrier: threading.Barrier = barrier,
                 won: dict = won) -> None:
            barrier.wait()
            won[token] = queue._call(queue._claim(DEST, key, token, time.time() + 30), "claiming")

        threads = [threading.Thread(target=take, args=(q, f"t{i}")) for i, q in enumerate(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [token for token, claimed in won.items() if claimed.revision is not None]
        assert len(winners) == 1, (key, won)
        assert won[winners[0]].taken_over == (before != "none")
        loser = next(token for token in won if token not in winners)
        if before == "own-run-out":  # in the grace of its run-out claim, only its holder may claim it
            assert winners == ["t0"] and round(won[loser].until, 3) in (round(ended, 3), round(won["t0"].until, 3))
        else:  # told about how long the winner's claim runs
            assert time.time() + 20 < won[loser].until <= time.time() + 30
        assert json.loads(_claims(settings, lambda b, key=key: b.get(key)).value)["token"] == winners[0]


def test_a_delivered_batch_keeps_its_claims_until_its_markers_are_written(open_js, monkeypatch):
    """The leader test's double (docs/hub.md, "Two workers, one reading"): a batch is sent, then its delivered
    markers wait for their bucket's new leader longer than the lease and the claim. Meanwhile its AckWait is
    restarted and its claims kept: the other worker is handed nothing, and once the markers are written,
    nothing either."""
    worker, other = open_js(), open_js()
    assert _leased_while_markers_wait(worker, other, monkeypatch) == [] and other.counts(DEST)[DELIVERED] == 3


def test_a_failed_round_of_keeping_claims_is_logged_and_the_next_one_keeps_them(open_js, monkeypatch, caplog):
    """A round of the keeper that fails (its claims' bucket unanswered past LEADER_WAIT) is logged, and the
    keeper goes on: the other worker is still handed nothing (before: the keeper died silently, the claims
    ran out, and the other worker was handed the batch)."""
    worker, other = open_js(), open_js()
    extend, failed = worker._extend_claims, []

    async def fails_once(*args):
        if not failed:
            failed.append(True)
            raise nats.errors.TimeoutError
        await extend(*args)

    monkeypatch.setattr(worker, "_extend_claims", fails_once)
    assert _leased_while_markers_wait(worker, other, monkeypatch) == [] and failed
    assert any("failed this time (TimeoutError" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def _leased_while_markers_wait(worker: JetStreamQueue, other: JetStreamQueue, monkeypatch) -> list:
    """What `other` is handed of 3 readings `worker` reports delivered while their markers wait 6 s, past the
    lease (1.5 s), its claims (2 s) and a put-back (+1 s)."""
    other._call(other._tried(DEST, "k"), "creating the attempts bucket")  # (a new bucket's first answer is slow)
    worker.enqueue(DEST, readings(3))
    leased = lease_all(worker, 3, lease_seconds=1.5)
    publish_all = worker._publish_all

    async def leaderless_markers(messages, what):
        if what == "delivered markers":
            await asyncio.sleep(6)
        return await publish_all(messages, what)

    monkeypatch.setattr(worker, "_publish_all", leaderless_markers)
    reporting = threading.Thread(target=worker.delivered, args=([i.id for i in leased],),
                                 kwargs={"token": leased[0].lease})
    reporting.start()
    got = []
    while reporting.is_alive():
        got += other.lease(DEST, 3, 1.5)
    reporting.join()
    return got + other.lease(DEST, 3, 1.5) + other.lease(DEST, 3, 1.5)


def test_a_claim_run_out_while_its_markers_wait_keeps_others_away_for_its_grace(open_js, monkeypatch, caplog):
    """The leader test's last double (docs/hub.md, "Two workers, one reading"): a batch is sent, then its
    claims cannot be extended nor its AckWait restarted (the keeper's rounds fail: buckets and consumer
    without leaders), its delivered markers are written only near the end of LEADER_WAIT (their bucket
    without a leader) and its acks are lost. JetStream hands the batch to the other worker after AckWait:
    the run-out claims keep it away until their grace (LEADER_WAIT + REQUEST_TIMEOUT) has passed, then it
    finds the markers and settles the readings instead of sending them (before: it took the claims over as
    soon as they ran out, found no marker yet, and was handed the batch to send again)."""
    monkeypatch.setattr(jetstream, "LEADER_WAIT", 2.0)
    grace = jetstream._claim_grace()
    holder, other = open_js(), open_js()
    other._call(other._tried(DEST, "k"), "creating the attempts bucket")  # (a new bucket's first answer is slow)
    holder.enqueue(DEST, readings(3))
    leased = lease_all(holder, 3, lease_seconds=1.5)
    claims_end = max(held.until for held in holder._leases.values())
    claim_end_of = {seq: held.until for held in holder._leases.values() for seq in held.messages}
    publish_all = holder._publish_all

    async def keeper_unanswered(token, held):
        raise nats.errors.TimeoutError

    async def markers_at_the_last_round(messages, what):
        if what == "delivered markers":
            await asyncio.sleep(jetstream.LEADER_WAIT + jetstream.REQUEST_TIMEOUT - 1)
        return await publish_all(messages, what)

    async def acks_lost(msgs, kind):
        pass

    monkeypatch.setattr(holder, "_keep_round", keeper_unanswered)
    monkeypatch.setattr(holder, "_publish_all", markers_at_the_last_round)
    monkeypatch.setattr(holder, "_settle_all", acks_lost)
    caplog.set_level(logging.INFO, logger="phg.outbox.jetstream")
    reports = [threading.Thread(target=holder.delivered, args=([i.id for i in leased if i.lease == token],),
                                kwargs={"token": token}) for token in {i.lease for i in leased}]
    for report in reports:
        report.start()
    got, end = [], time.monotonic() + grace + 15
    while (other.counts(DEST)[INFLIGHT] or other.counts(DEST)[QUEUED]) and time.monotonic() < end:
        got += other.lease(DEST, 3, 1.5)
    settled = time.time()
    for report in reports:
        report.join()
    assert got == []
    assert other.counts(DEST) == {QUEUED: 0, INFLIGHT: 0, DELIVERED: 3, DEAD: 0}  # settled by the other worker
    assert settled > claims_end + grace
    # Put back past the grace (no spinning meanwhile): each put-back is due, from its log record's time, no
    # earlier than its claim's end + CLAIM_SKEW + grace (less 0.05 s: the log's one decimal).
    put_back = [(r.created, int(m[1]), float(m[2])) for r in caplog.records
                if (m := re.search(r"stream seq (\d+) is claimed by another worker's lease for ([0-9.]+) s more",
                                   r.getMessage()))]
    assert put_back
    for at, seq, left in put_back:
        assert at + left >= claim_end_of[seq] + jetstream.CLAIM_SKEW + grace - 0.05, (seq, left)


@pytest.mark.parametrize("how", ["release", "retry_later", "dead"])
def test_a_claim_given_up_on_purpose_is_taken_over_at_once(open_js, settings, how):
    """Released, put back to be retried, or dead-lettered (then queued again with `phg queue retry`): the
    claim is given up, so another worker's lease takes the reading at once, without the grace of a claim
    that ran out by time."""
    worker, other = open_js(), open_js()
    worker.enqueue(DEST, readings(1))
    [item] = lease_all(worker, 1)
    if how == "release":
        worker.release([item.id], token=item.lease)
    elif how == "retry_later":
        worker.retry_later([item.id], 0, "timeout", token=item.lease)
    else:
        worker.dead([item.id], "refused", token=item.lease)
        assert worker.retry(item.id) is not None
    [again] = lease_all(other, 1, deadline=3)
    assert again.key == item.key
    assert json.loads(_claims(settings, lambda b: b.get(item.key)).value)["token"] == again.lease


def test_an_unanswered_enqueue_bigger_than_nats_py_allows_pending_leaves_later_ones_working(open_js, monkeypatch):
    """nats-py holds one of its 4,000 publish permits per unanswered PubAck. An enqueue of 4,001 readings
    whose publishes get no answer (as while the stream has no leader) fails, and gives every permit back:
    the next enqueue is stored (before: the first waited for a permit for ever, and so did every later one),
    and one of 4,500 whose PubAcks come is stored whole."""
    queue = open_js()
    monkeypatch.setattr(jetstream, "CALL_TIMEOUT", 10.0)
    monkeypatch.setattr(jetstream, "REQUEST_TIMEOUT", 0.5)
    monkeypatch.setattr(jetstream, "LEADER_WAIT", 1.0)
    publish, work = queue._nc.publish, queue._subject(DEST)

    async def unanswered(subject, payload=b"", reply="", headers=None):
        if subject != work:
            await publish(subject, payload, reply=reply, headers=headers)

    monkeypatch.setattr(queue._nc, "publish", unanswered)
    with pytest.raises(StorageError):
        queue.enqueue(DEST, readings(4001, "lost"))
    monkeypatch.undo()  # publishes answered again, and the real timeouts (0.5 s per PubAck failed under CI load)
    assert queue._js.publish_async_pending() == 0
    assert len(queue.enqueue(DEST, readings(3))) == 3 and queue.counts(DEST)[QUEUED] == 3
    assert len(set(queue.enqueue(DEST, readings(4500, "big")))) == 4500  # answered: more than 4,000 wait their turn


def test_a_delivered_report_after_the_lease_ran_out_still_writes_the_markers(open_js):
    """A renewal that comes too late ends the lease (renew answers 0, the worker stops sending), but a send
    that had ended meanwhile is still reported: its markers are written, so nobody sends the batch again
    (the leader test saw two whole MLLP batches twice when this report was dropped)."""
    queue = open_js()
    queue.enqueue(DEST, readings(2))
    leased = lease_all(queue, 2, lease_seconds=1)
    time.sleep(1.1)
    assert sum(queue.renew(token, 1) for token in {i.lease for i in leased}) == 0
    for token in {i.lease for i in leased}:
        queue.delivered([i.id for i in leased if i.lease == token], token=token)
    assert queue.counts(DEST)[DELIVERED] == 2 and queue.lease(DEST, 2, 1) == []


def test_a_claim_taken_over_is_not_sent_when_its_marker_came_meanwhile(open_js, settings, monkeypatch):
    """A claim that ran out is taken over, but its holder's marker landed after the lease's first look (it
    waited for a bucket's leader): looked for again after the takeover, the reading is settled, not sent."""
    queue = open_js()
    [(key, _)] = readings(1)
    queue.enqueue(DEST, readings(1))
    _claim_of_another(settings, key, time.time() - jetstream.CLAIM_SKEW - jetstream._claim_grace() - 1)
    writer = open_js()

    async def mark() -> None:  # the holder's marker, written at last
        await jetstream._put(await writer._done(DEST), key, b"{}")

    writer._call(mark(), "marking")
    looks = []
    real = queue._delivered_keys

    async def first_look_misses(destination, keys):
        looks.append(list(keys))
        return set() if len(looks) == 1 else await real(destination, keys)

    monkeypatch.setattr(queue, "_delivered_keys", first_look_misses)
    end = time.monotonic() + 5
    while not looks and time.monotonic() < end:
        assert queue.lease(DEST, 1, 30) == []
    assert looks == [[key], [key]]  # the takeover looked again, and found the marker
    assert queue.counts(DEST)[QUEUED] == 0 and queue.lease(DEST, 1, 30) == []


def test_renewing_a_lease_extends_its_claims_and_a_put_back_gives_them_up(open_js, settings):
    queue = open_js()
    queue.enqueue(DEST, readings(2))
    leased = lease_all(queue, 2, lease_seconds=3)  # (in one lease or two)
    for _ in range(4):  # 4 s: past the first claims' end
        time.sleep(1)
        assert sum(queue.renew(token, 3) for token in {i.lease for i in leased}) == 2
    for item in leased:
        claim = json.loads(_claims(settings, lambda b, key=item.key: b.get(key)).value)
        assert claim["token"] == item.lease and claim["until"] > time.time() + 1.5
    assert sum(queue.renew(token, 3) for token in {i.lease for i in leased}) == 2  # (the look took a while)
    queue.retry_later([leased[0].id], 0, "timeout", token=leased[0].lease)
    queue.release([leased[1].id], token=leased[1].lease)
    again = lease_all(queue, 2, lease_seconds=3, deadline=3)  # at once: no claim of the old lease in the way
    assert sorted(i.key for i in again) == sorted(i.key for i in leased)


def test_the_last_allowed_delivery_goes_to_the_dead_letters(open_js):
    queue = open_js(max_deliver=2)
    queue.enqueue(DEST, readings(1))
    [first] = lease_all(queue, 1)
    queue.retry_later([first.id], 0, "timeout", token=first.lease)
    [second] = lease_all(queue, 1)
    assert second.attempts == 2
    queue.retry_later([second.id], 0, "timeout again", token=second.lease)
    [dead] = queue.items(DEST, DEAD)
    assert dead.key == first.key and dead.last_error == "timeout again (after 2 deliveries)"
    assert queue.counts(DEST) == {QUEUED: 0, INFLIGHT: 0, DELIVERED: 0, DEAD: 1}


def test_releases_count_as_no_attempt(open_js):
    """A batch given back (a stop, a Retry-After that drops the batch leased ahead) is no try of its own."""
    queue = open_js(max_deliver=1)
    queue.enqueue(DEST, readings(1))
    for _ in range(3):
        [item] = lease_all(queue, 1)
        assert item.attempts == 1
        queue.release([item.id], token=item.lease)
    [item] = lease_all(queue, 1)
    queue.delivered([item.id], token=item.lease)
    assert queue.counts(DEST)[DEAD] == 0 and queue.counts(DEST)[DELIVERED] == 1


def test_a_reading_whose_worker_dies_each_time_is_dead_lettered_at_lease(open_js, monkeypatch):
    monkeypatch.setattr(jetstream, "_claim_grace", lambda: 0.5)
    queue = open_js(max_deliver=1)
    queue.enqueue(DEST, readings(1))
    [item] = lease_all(queue, 1, lease_seconds=1)  # and the worker "dies": no report, no renewal
    time.sleep(1.8 + 0.5)  # past AckWait, the claim (a third of a lease longer) and its grace
    assert queue.lease(DEST, 1, 1) == []
    [dead] = queue.items(DEST, DEAD)
    assert dead.key == item.key and "without an outcome" in dead.last_error


def test_a_pause_stops_every_worker_of_the_destination(open_js):
    worker, other = open_js(), open_js()
    worker.enqueue(DEST, readings(1))
    worker.pause(DEST, 1.5)
    assert other.lease(DEST, 1, 30) == [] and other.next_due(DEST) > time.time() + 1
    time.sleep(1.6)
    assert len(lease_all(other, 1)) == 1


async def test_the_worker_on_jetstream_shares_a_retry_after_and_isolates_the_poison(open_js):
    """phg.delivery.worker unchanged on JetStream: a 503 with Retry-After pauses every worker of the
    destination (the other one leases nothing meanwhile), then the batch refused as a whole is split until
    the reading at fault is alone: it is dead-lettered with the server's reason, the others delivered."""
    readings_ = simulated_readings(PatientRef("urn:oid:1.2.3", "p1"), datetime(2026, 11, 28, 9, tzinfo=UTC), 4)
    bad = readings_[5].key
    worker_queue, other = open_js(), open_js()
    worker_queue.enqueue(DEST, [(r.key, r.to_json()) for r in readings_])

    class Server:
        name = DEST
        answers = [TransientDeliveryError("HTTP 503", retry_after=2.0)]

        async def send(self, batch):
            if self.answers:
                raise self.answers.pop(0)
            if any(r.key == bad for r in batch):
                raise PermanentDeliveryError("HTTP 400: invalid value", 400)
            return [Delivered(f"Observation/{r.key[:6]}") for r in batch]

    worker = DeliveryWorker(worker_queue, Server(), batch_size=len(readings_), lease_seconds=10)
    first = await worker.run(until_idle=True)
    assert first.retried == len(readings_) and first.delivered == 0
    assert other.lease(DEST, 50, 10) == []  # paused for every worker
    await asyncio.sleep(2.1)
    for _ in range(5):  # until_idle ends when a pull finds nothing: a redelivery may come a pull later
        second = await worker.run(until_idle=True)
        if second.delivered + second.dead == len(readings_):
            break
    assert second.dead == 1 and second.delivered == len(readings_) - 1  # (the summary counts both runs)
    [dead] = other.items(DEST, DEAD)
    assert dead.key == bad and dead.last_error == "HTTP 400: invalid value"
    assert other.counts(DEST) == {QUEUED: 0, INFLIGHT: 0, DELIVERED: len(readings_) - 1, DEAD: 1}


def test_leader_killed_mid_use_acks_publishes_and_pulls_resume(open_js, nats_cluster):  # noqa: F811
    queue = open_js()
    items = readings(40)
    queue.enqueue(DEST, items)
    first = lease_all(queue, 20)
    leader = nats_cluster.stream_leader(queue.stream)
    nats_cluster.kill(leader)
    try:
        delivered = {i.key for i in first}
        queue.delivered([i.id for i in first], token=first[0].lease)  # acks while leaders move: retried
        late = readings(10, "late")
        queue.enqueue(DEST, late, {"src": "late"})  # published again until a new leader answers
        items += late
        assert queue.source_state("src") == "late"
        end = time.monotonic() + 40
        while len(delivered) < len(items) and time.monotonic() < end:
            try:
                batch = queue.lease(DEST, 10, 30)
            except Exception:  # noqa: BLE001  (StorageError while no leader: pull again)
                time.sleep(0.5)
                continue
            assert not delivered & {i.key for i in batch}, "a delivered reading was handed out again"
            if batch:
                queue.delivered([i.id for i in batch], token=batch[0].lease)
                delivered |= {i.key for i in batch}
        assert delivered == {k for k, _ in items}
    finally:
        nats_cluster.start(leader)
        nats_cluster.wait_ready()
    assert queue.lease(DEST, 10, 30) == []


def test_inspect_reports_the_server_streams_and_consumers(open_js):
    queue = open_js()
    queue.enqueue(DEST, readings(2))
    lease_all(queue, 1, lease_seconds=7)
    found = queue.inspect([DEST, "lab"])
    assert found.server_version.count(".") == 2 and found.connected_url.startswith("nats://127.0.0.1:")
    assert [(s.name, s.replicas) for s in found.streams] == [(queue.stream, 3), (queue.dead_stream, 3)]
    assert found.streams[0].messages == 2 and found.streams[0].leader is not None
    fhir, lab = found.consumers
    assert (fhir.exists, fhir.pending, fhir.ack_pending, fhir.ack_wait) == (True, 1, 1, 7.0)
    assert not lab.exists and lab.pending is None


def test_an_old_server_is_named_in_a_warning(open_js, caplog):
    with caplog.at_level(logging.WARNING, logger="phg.outbox.jetstream"):
        queue = open_js()
    if queue.inspect([]).server_supported:
        pytest.skip("this nats-server is 2.10.14 or newer")
    assert any("2.10.14" in r.getMessage() for r in caplog.records)


def test_a_destination_name_that_cannot_be_a_subject_is_refused(open_js):
    with pytest.raises(ConfigError, match="letters, digits"):
        open_js().enqueue("lab.a", readings(1))


def test_open_queue_opens_the_configured_engine(nats_cluster, tmp_path):  # noqa: F811
    config = load_config(document={"queue": {"engine": "jetstream", "servers": nats_cluster.urls,
                                             "prefix": f"t{next(_prefixes)}"}}, env={})
    with open_queue(config) as queue:
        assert isinstance(queue, JetStreamQueue)
        queue.enqueue(DEST, readings(1))
        assert queue.counts()[QUEUED] == 1
    config = load_config(document={"outbox": {"path": str(tmp_path / "o.sqlite")}}, env={})
    with open_queue(config) as queue:
        assert isinstance(queue, Outbox)


def test_user_and_password_open_the_queue_and_a_wrong_one_is_named_not_logged(tmp_path, caplog):
    with NatsCluster(tmp_path, size=1, user="phg", password="right-secret") as server:
        settings = QueueSettings(engine="jetstream", servers=tuple(server.urls), user="phg", password="right-secret")
        with JetStreamQueue(settings) as queue:
            queue.enqueue(DEST, readings(1))
            assert queue.counts(DEST)[QUEUED] == 1
        with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError, match="refused phg's credentials") as refused:
            JetStreamQueue(_changed(settings, password="wrong-secret"))
    assert "secret" not in str(refused.value) and "secret" not in caplog.text


def test_mutual_tls_with_the_configured_ca_and_client_certificate(tmp_path):
    pki = make_pki(tmp_path / "pki")
    with NatsCluster(tmp_path, size=1, tls=(pki.server_cert, pki.server_key, pki.ca)) as server:
        settings = QueueSettings(engine="jetstream", servers=tuple(server.tls_urls), ca_file=pki.ca,
                                 cert_file=pki.client_cert, key_file=pki.client_key)
        with JetStreamQueue(settings) as queue:
            queue.enqueue(DEST, readings(1))
            assert queue.inspect([]).connected_url.startswith("tls://127.0.0.1:")
        with pytest.raises(StorageError, match="cannot connect"):  # no client certificate: refused
            JetStreamQueue(_changed(settings, cert_file=None, key_file=None))
        with pytest.raises(ConfigError, match="certificate is not trusted"):  # the system's trust: unknown CA
            JetStreamQueue(_changed(settings, ca_file=None))


def test_no_server_to_reach_is_a_storage_error_soon():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot connect"):
        JetStreamQueue(QueueSettings(engine="jetstream", servers=(f"nats://127.0.0.1:{closed}",)))
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("key", ["creds_file", "nkey_seed_file"])
def test_a_credentials_file_others_can_read_is_refused(tmp_path, key):
    secret = tmp_path / "hub.creds"
    secret.write_text("-----BEGIN NATS USER JWT-----\n")
    os.chmod(secret, 0o644)
    document = {"queue": {"engine": "jetstream", "servers": ["nats://127.0.0.1:4222"], key: str(secret)}}
    with pytest.raises(ConfigError, match=rf"\[queue\] {key}.*chmod 600"):
        load_config(document=document, env={})
    os.chmod(secret, 0o600)
    assert getattr(load_config(document=document, env={}).queue, key) == Path(secret)


def test_a_password_in_the_config_file_needs_the_file_private(tmp_path):
    config = tmp_path / "phg.toml"
    config.write_text('[queue]\nengine = "jetstream"\nservers = ["nats://127.0.0.1:4222"]\n'
                      'user = "phg"\npassword = "s3cret"\n')
    os.chmod(config, 0o644)
    with pytest.raises(ConfigError, match=r"\[queue\] password"):
        load_config(config, env={})
    os.chmod(config, 0o600)
    assert "s3cret" not in repr(load_config(config, env={}).queue)


def test_plain_nats_to_another_machine_is_refused():
    with pytest.raises(ConfigError, match="tls://"):
        load_config(document={"queue": {"engine": "jetstream", "servers": ["nats://nats.example.org"]}}, env={})


@settings_(max_examples=200, deadline=None)
@given(server=st.text(max_size=60) | st.from_regex(r"(nats|tls)://[a-z0-9.]{1,20}(:\d{1,5})?", fullmatch=True),
       prefix=st.text(max_size=40) | st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True), replicas=st.integers(-2, 9))
@example(server="tls://nats1.example.org:4222", prefix="phg", replicas=3)
def test_queue_settings_parse_or_name_the_key(server, prefix, replicas):
    """Any [queue] servers / prefix / stream_replicas value is taken or refused with a ConfigError naming
    [queue] (never another exception)."""
    document = {"queue": {"engine": "jetstream", "servers": [server], "prefix": prefix, "stream_replicas": replicas}}
    try:
        found = load_config(document=document, env={}).queue
    except ConfigError as exc:
        assert "[queue]" in str(exc)
    else:
        assert found.servers == (server.strip(),) and 1 <= found.stream_replicas <= 5
        assert re.fullmatch(r"(nats|tls)://[^/@\s]+", found.servers[0])


# ------------------------------------------------------------------------ nkey and JWT (.creds) login


def round_trip(queue: JetStreamQueue) -> None:
    """Enqueue, lease and settle two readings: the login can use JetStream, not only connect."""
    queue.enqueue(DEST, readings(2))
    leased = lease_all(queue, 2)
    queue.delivered([i.id for i in leased], ["ok"] * 2, token=leased[0].lease)
    assert queue.counts(DEST)[DELIVERED] == 2 and queue.lease(DEST, 5, 30) == []


def private(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def test_an_nkey_seed_file_logs_in_and_a_wrong_seed_is_named_never_shown(tmp_path, caplog):
    seed, public, _ = nkey_pair()
    other, _, _ = nkey_pair()
    with NatsCluster(tmp_path, size=1, nkey=public) as server:
        settings = QueueSettings(engine="jetstream", servers=tuple(server.urls),
                                 nkey_seed_file=private(tmp_path / "phg.nk", seed + "\n"))
        with caplog.at_level(logging.DEBUG):
            with JetStreamQueue(settings) as queue:
                round_trip(queue)
            wrong = _changed(settings, nkey_seed_file=private(tmp_path / "other.nk", other))
            with pytest.raises(ConfigError, match=r"refused phg's credentials \(\[queue\] nkey_seed_file\)") as refused:
                JetStreamQueue(wrong)
            # One character of the key itself changed (the last one may hold only padding bits): the CRC-16 fails.
            typo = seed[:10] + ("C" if seed[10] == "B" else "B") + seed[11:]
            garbled = _changed(settings, nkey_seed_file=private(tmp_path / "garbled.nk", typo))
            with pytest.raises(ConfigError, match=r"\[queue\] nkey_seed_file .*garbled.nk: not an nkey user seed"):
                JetStreamQueue(garbled)  # the CRC-16 fails: refused before any connection
        texts = str(refused.value) + caplog.text
        assert seed not in texts and other not in texts and seed[2:20] not in texts
        os.chmod(settings.nkey_seed_file, 0o640)
        with pytest.raises(ConfigError, match=r"\[queue\] nkey_seed_file .*run: chmod 600"):
            JetStreamQueue(settings)


def test_a_creds_file_logs_in_to_a_server_in_operator_mode(tmp_path, caplog):
    operator = Operator(tmp_path / "jwt")
    creds = tmp_path / "phg.creds"
    operator.creds(creds)
    with NatsCluster(tmp_path, size=1, operator=operator) as server:
        settings = QueueSettings(engine="jetstream", servers=tuple(server.urls), creds_file=creds)
        with caplog.at_level(logging.DEBUG):
            with JetStreamQueue(settings) as queue:
                round_trip(queue)
            stranger = tmp_path / "stranger.creds"  # a user of another operator's account: not trusted
            Operator(tmp_path / "other").creds(stranger)
            with pytest.raises(ConfigError, match=r"refused phg's credentials \(\[queue\] creds_file\)"):
                JetStreamQueue(_changed(settings, creds_file=stranger))
        secrets_ = [line for text in (creds.read_text(), stranger.read_text()) for line in text.splitlines()
                    if line.startswith(("SU", "eyJ"))]
        assert len(secrets_) == 4 and not any(s in caplog.text for s in secrets_)
        os.chmod(creds, 0o644)
        with pytest.raises(ConfigError, match=r"\[queue\] creds_file .*run: chmod 600"):
            JetStreamQueue(settings)


@pytest.mark.parametrize("text, error", [
    ("", "no line after 'BEGIN NATS USER JWT'"),  # nats-py's own reader would loop for ever on it
    ("-----BEGIN NATS USER JWT-----\nnot a jwt\n", "is not a JWT"),
    ("-----BEGIN NATS USER JWT-----\na.b.c\n", "no line after 'BEGIN USER NKEY SEED'"),
    ("-----BEGIN NATS USER JWT-----\na.b.c\n-----BEGIN USER NKEY SEED-----\nSUAXXXX\n", "not an nkey user seed"),
    ("-----BEGIN NATS USER JWT-----\r\na.b.c\r\n", "Windows line ends (CRLF)"),
])
def test_a_creds_file_that_is_not_one_is_named_before_connecting(tmp_path, text, error):
    creds = private(tmp_path / "hub.creds", text)
    settings = QueueSettings(engine="jetstream", servers=("nats://127.0.0.1:9",), creds_file=creds)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"\[queue\] creds_file .*hub.creds: .*{re.escape(error)}") as refused:
        JetStreamQueue(settings)
    assert "SUAXXXX" not in str(refused.value) and time.monotonic() - started < 5


@settings_(max_examples=200, deadline=None)
@given(text=st.text(st.characters(codec="ascii"), max_size=300) | st.builds(
    "-----BEGIN NATS USER JWT-----\n{}\n-----BEGIN USER NKEY SEED-----\n{}\n".format,
    st.from_regex(r"[A-Za-z0-9_.-]{0,40}", fullmatch=True) | st.just("eyJ0.eyJ1.c2ln"),
    st.from_regex(r"S[A-Z2-7]{0,60}", fullmatch=True) | st.builds(lambda: nkey_pair()[0])))
def test_any_creds_text_is_taken_or_named_never_shown(tmp_path_factory, text):
    """Whatever a .creds file holds, phg's check takes it (then nats-py can read it) or refuses it with a
    ConfigError naming [queue] creds_file without echoing the file (no other exception, no hang)."""
    creds = private(tmp_path_factory.mktemp("creds") / "hub.creds", text)
    try:
        jetstream._check_creds_file(creds)
    except ConfigError as exc:
        lines = text.split("\n")
        held = [lines[i + 1] for i, line in enumerate(lines[:-1]) if "BEGIN" in line and len(lines[i + 1]) >= 8]
        assert str(exc).startswith(f"[queue] creds_file {creds}") and not any(h in str(exc) for h in held)
    else:
        seed = text.split("BEGIN USER NKEY SEED")[1].split("\n")[1]
        assert seed.startswith("SU") and len(seed) == 58


def test_delivered_markers_live_marker_age_and_max_age_without_it(open_js, settings, nats_cluster):  # noqa: F811
    """[queue] marker_age sizes the delivered markers apart from the queue (docs/hub.md, "Storage")."""
    for changes, expected in (({"marker_age": 3600.0}, 3600.0), ({}, 14 * 86400.0)):
        queue = open_js(**changes, prefix=f"{settings.prefix}m{len(changes)}")
        queue.enqueue(DEST, readings(1, str(expected)))
        leased = lease_all(queue, 1)
        queue.delivered([leased[0].id], token=leased[0].lease)
        config = nats_cluster.nodes[0].jsz("accounts=true&streams=true&config=true")
        ages = {s["name"]: s["config"]["max_age"] / 1e9 for a in config["account_details"] for s in a["stream_detail"]}
        assert ages[f"KV_{queue.settings.prefix}_done_{DEST}"] == expected


def test_marker_age_shorter_than_the_duplicate_window_is_refused(tmp_path):
    path = tmp_path / "phg.toml"
    path.write_text('[queue]\nengine = "jetstream"\nservers = ["nats://127.0.0.1:4222"]\nmarker_age = "1m"\n')
    with pytest.raises(ConfigError, match=r"marker_age must be at least \[queue\] duplicate_window \(120 s\)"):
        load_config(path, {})
