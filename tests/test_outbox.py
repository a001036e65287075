"""The outbox: states, idempotency, durability across SIGKILL, exclusive leases, one commit per batch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from phg.config import load_config
from phg.errors import ConfigError, StorageError
from phg.outbox import STATES, Outbox
from phg.outbox.sqlite import APPLICATION_ID, MIGRATIONS, PURGED, SCHEMA_VERSION, delivery_results

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAR_FUTURE = 1e12


@pytest.fixture
def outbox(tmp_path: Path):
    with Outbox(tmp_path / "queue" / "outbox.db") as box:
        yield box


def pairs(n: int, prefix: str = "k") -> list[tuple[str, str]]:
    return [(f"{prefix}{i}", json.dumps({"n": i})) for i in range(n)]


# --- basics -------------------------------------------------------------------------------------


def test_no_sql_in_phg_numbers_its_placeholders() -> None:
    """?1-style placeholders bound from a sequence warn on Python 3.12+ (sqlite3 counts them as named) and are
    an error on 3.14: phg's SQL uses plain ? with a sequence or :name with a dict."""
    import ast
    import re

    numbered = re.compile(r"[\s(=,]\?\d")
    offenders = [f"{path.name}:{node.lineno}" for path in sorted((Path(SRC) / "phg").rglob("*.py"))
                 for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.Constant) and isinstance(node.value, str) and numbered.search(node.value)]
    assert offenders == []



def test_enqueue_returns_ids_in_input_order_and_is_idempotent(outbox: Outbox) -> None:
    ids = outbox.enqueue("ehr", [("b", "B"), ("a", "A"), ("c", "C")])
    assert len(set(ids)) == 3
    assert [outbox.get(i).key for i in ids] == ["b", "a", "c"]
    again = outbox.enqueue("ehr", [("c", "other"), ("d", "D"), ("a", "A"), ("d", "D")])
    assert again[0] == ids[2] and again[2] == ids[1] and again[1] == again[3]
    assert outbox.get(ids[2]).payload == "C"  # the stored payload is kept
    assert outbox.counts("ehr")["queued"] == 4


def test_same_key_for_two_destinations_is_two_items(outbox: Outbox) -> None:
    [a] = outbox.enqueue("ehr", [("k", "p")])
    [b] = outbox.enqueue("lab", [("k", "p")])
    assert a != b
    assert outbox.counts("ehr")["queued"] == outbox.counts("lab")["queued"] == 1
    assert outbox.counts()["queued"] == 2


def test_lease_then_delivered(outbox: Outbox) -> None:
    ids = outbox.enqueue("ehr", pairs(5))
    leased = outbox.lease("ehr", 3, 30)
    assert [item.id for item in leased] == ids[:3]  # oldest first
    assert all(item.state == "inflight" and item.attempts == 1 for item in leased)
    assert outbox.lease("ehr", 10, 30) == outbox.items("ehr", "inflight")[3:]  # the two left
    outbox.delivered(ids[:2], ["Observation/1/_history/1", None])
    assert outbox.get(ids[0]).state == "delivered"
    assert outbox.get(ids[0]).result == "Observation/1/_history/1"
    assert outbox.counts("ehr") == {"queued": 0, "inflight": 3, "delivered": 2, "dead": 0}
    with pytest.raises(ValueError):
        outbox.delivered(ids[2:4], ["only one"])


def test_a_leased_item_is_what_the_outbox_stores(outbox: Outbox) -> None:
    """`lease` builds its Items from what it set and what RETURNING gave: they equal the stored rows, for an
    item that comes back after a refusal (error, refusals, attempts) and for an expired lease taken again."""
    ids = outbox.enqueue("ehr", pairs(3))
    first = outbox.lease("ehr", 3, 30)
    outbox.retry_later(ids[:1], 0, "AE: busy", refused=True, token=first[0].lease)
    again = outbox.lease("ehr", 3, 30, now=time.time() + 60)  # the other two: expired
    assert again == [outbox.get(i) for i in ids]
    assert [(i.attempts, i.refusals, i.last_error) for i in again] == [(2, 1, "AE: busy"), (2, 0, None), (2, 0, None)]
    assert {i.lease for i in again} != {first[0].lease} and len({i.lease for i in again}) == 1


def test_delivered_records_any_result_text(outbox: Outbox) -> None:
    """The results travel as one JSON object: quotes, backslashes and non-ASCII come back as given."""
    ids = outbox.enqueue("ehr", pairs(3))
    results = ['Observation/"a"\\b/_history/1', "Observation/é\n", None]
    outbox.delivered(ids, results, token=outbox.lease("ehr", 3, 30)[0].lease)
    assert [outbox.get(i).result for i in ids] == results


def test_delivered_stays_delivered_when_enqueued_again(outbox: Outbox) -> None:
    [id_] = outbox.enqueue("ehr", [("k", "p")])
    outbox.lease("ehr", 1, 30)
    outbox.delivered([id_])
    assert outbox.enqueue("ehr", [("k", "p")]) == [id_]
    assert outbox.get(id_).state == "delivered"
    assert outbox.lease("ehr", 1, 30) == []


def test_retry_later_backs_off_and_records_the_error(outbox: Outbox) -> None:
    [id_] = outbox.enqueue("ehr", [("k", "p")])
    outbox.lease("ehr", 1, 30)
    outbox.retry_later([id_], 60, "503 Service Unavailable")
    item = outbox.get(id_)
    assert (item.state, item.attempts, item.last_error) == ("queued", 1, "503 Service Unavailable")
    assert outbox.lease("ehr", 1, 30) == []
    assert outbox.next_due("ehr") == pytest.approx(time.time() + 60, abs=5)
    [again] = outbox.lease("ehr", 1, 30, now=time.time() + 61)
    assert (again.id, again.attempts) == (id_, 2)


def test_dead_retry_and_purge(outbox: Outbox) -> None:
    ids = outbox.enqueue("ehr", pairs(3))
    outbox.enqueue("lab", [("x", "p")])
    outbox.lease("ehr", 3, 30)
    outbox.lease("lab", 1, 30)
    outbox.dead(ids[:2], "Observation.code: unknown code")
    outbox.dead([outbox.items("lab")[0].id], "bad")
    assert outbox.get(ids[0]).state == "dead"
    assert outbox.get(ids[0]).last_error == "Observation.code: unknown code"
    assert [i.id for i in outbox.items("ehr", "dead")] == ids[:2]

    assert outbox.retry(ids[0]) == ids[0]  # the id it waits under again
    item = outbox.get(ids[0])
    assert (item.state, item.attempts) == ("queued", 0)
    assert outbox.retry(ids[2]) is None  # inflight: its worker still owns it
    assert outbox.retry(10_000) is None

    assert outbox.purge_dead("ehr") == 1
    assert outbox.get(ids[1]) is None
    assert outbox.purge_dead() == 1  # the lab one
    assert outbox.counts() == {"queued": 1, "inflight": 1, "delivered": 0, "dead": 0}


def test_release_does_not_count_the_attempt(outbox: Outbox) -> None:
    [id_] = outbox.enqueue("ehr", [("k", "p")])
    outbox.lease("ehr", 1, 30)
    outbox.release([id_])
    item = outbox.get(id_)
    assert (item.state, item.attempts) == ("queued", 0)
    assert [i.id for i in outbox.lease("ehr", 1, 30)] == [id_]


def test_stale_reports_do_not_undo_an_outcome(outbox: Outbox) -> None:
    [id_] = outbox.enqueue("ehr", [("k", "p")])
    outbox.lease("ehr", 1, 30)
    outbox.delivered([id_], ["Observation/1"])
    outbox.retry_later([id_], 10, "late timeout report")
    outbox.dead([id_], "late")
    outbox.release([id_])
    item = outbox.get(id_)
    assert (item.state, item.result, item.last_error) == ("delivered", "Observation/1", None)


def test_expired_lease_is_due_again(outbox: Outbox) -> None:
    [id_] = outbox.enqueue("ehr", [("k", "p")])
    now = time.time()
    outbox.lease("ehr", 1, 30, now=now)
    assert outbox.lease("ehr", 1, 30, now=now + 29) == []
    assert outbox.next_due("ehr") == pytest.approx(now + 30)
    [again] = outbox.lease("ehr", 1, 30, now=now + 31)
    assert (again.id, again.attempts) == (id_, 2)


def test_next_due_ignores_finished_items(outbox: Outbox) -> None:
    assert outbox.next_due("ehr") is None
    [id_] = outbox.enqueue("ehr", [("k", "p")])
    assert outbox.next_due("ehr") <= time.time()
    outbox.lease("ehr", 1, 30)
    outbox.delivered([id_])
    assert outbox.next_due("ehr") is None


def test_items_limit_and_filters(outbox: Outbox) -> None:
    ids = outbox.enqueue("ehr", pairs(5))
    outbox.enqueue("lab", pairs(2))
    assert [i.id for i in outbox.items("ehr", limit=2)] == ids[:2]
    assert len(outbox.items()) == 7
    assert outbox.items(state="dead") == []


def test_schema_version_is_recorded_and_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigError, match="newer"):
        Outbox(path)


def old_outbox(path: Path, version: int) -> sqlite3.Connection:
    """A file as a release of schema `version` made it (no item_unpurged: the outbox adds that at open, outside the
    schema versions), open in autocommit for the caller to fill and close (tests/test_outbox_purge.py too)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in (s for migration in MIGRATIONS[:version] for s in migration):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    os.chmod(path, 0o600)
    return conn


def test_an_outbox_of_schema_4_is_upgraded_and_keeps_working(tmp_path: Path) -> None:
    """Schema 5 drops the index item_due (no query read it): a file written before opens, keeps its items in
    their states, and a lease taken before the upgrade is still reported under its token."""
    path = tmp_path / "outbox.db"
    conn = old_outbox(path, 4)
    now = time.time()
    conn.executemany(
        "INSERT INTO item (destination, key, payload, state, next_attempt, created, updated, lease)"
        " VALUES ('ehr', ?, '{}', ?, ?, ?, ?, ?)",
        [("q", "queued", now, now, now, None), ("i", "inflight", now + 60, now, now, "oldtoken"),
         ("d", "delivered", now, now, now, None), ("x", "dead", now, now, now, None)])
    conn.close()
    with Outbox(path) as box:
        indexes = {row[0] for row in box._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "item_due" not in indexes and "item_state" in indexes
        assert box._schema() == (APPLICATION_ID, SCHEMA_VERSION)
        assert [(i.key, i.state) for i in box.items()] == [("q", "queued"), ("i", "inflight"), ("d", "delivered"),
                                                           ("x", "dead")]
        assert box.counts() == {"queued": 1, "inflight": 1, "delivered": 1, "dead": 1}
        assert box.next_due("ehr") == pytest.approx(now)
        [queued] = box.lease("ehr", 10, 30)
        assert queued.key == "q"
        box.delivered([2], ["Observation/2"], token="oldtoken")
        box.delivered([queued.id], token=queued.lease)
        assert box.counts() == {"queued": 0, "inflight": 0, "delivered": 3, "dead": 1}
        assert box.get(2).result == "Observation/2"


# --- one transaction per batch ------------------------------------------------------------------


def test_enqueue_of_1000_items_is_one_transaction(outbox: Outbox) -> None:
    statements: list[str] = []
    outbox._conn.set_trace_callback(statements.append)
    outbox.enqueue("ehr", pairs(1000))
    outbox._conn.set_trace_callback(None)
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert statements.count("COMMIT") == 1
    assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
    assert outbox.counts()["queued"] == 1000


def test_each_report_is_one_statement_and_only_leases_commit_without_an_fsync(outbox: Outbox) -> None:
    """The worker's writes per batch cost one statement each; a lease or renewal is committed with
    synchronous=NORMAL (module docstring, "Durability"), everything else with FULL, set before it begins."""
    ids = outbox.enqueue("ehr", pairs(50))
    statements: list[str] = []
    outbox._conn.set_trace_callback(statements.append)
    leased = outbox.lease("ehr", 50, 30)
    token = leased[0].lease
    assert outbox.renew(token, 30) == 50
    outbox.delivered(ids[:20:-1], [f"Observation/{i}" for i in ids[:20:-1]], token=token)  # any order
    outbox.retry_later(ids[10:20], 60, "503", token=token)
    outbox.dead(ids[5:10], "refused", token=token)
    outbox.release(ids[:5], token=token)
    outbox._conn.set_trace_callback(None)

    transactions, current, sync = [], [], "FULL"
    for statement in statements:
        if statement.startswith("PRAGMA synchronous"):
            sync = statement.split()[-1]
        elif statement == "BEGIN IMMEDIATE":
            current = [sync]
        elif statement == "COMMIT":
            transactions.append(current)
        else:
            current.append(statement.split()[0])
    assert transactions == [["NORMAL", "UPDATE"], ["NORMAL", "UPDATE"], *[["FULL", "UPDATE"]] * 4]
    assert sync == "FULL" and outbox._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert all(outbox.get(i).result == f"Observation/{i}" for i in ids[21:])
    assert outbox.get(ids[20]).state == "inflight"  # not reported
    assert outbox.counts() == {"queued": 15, "inflight": 1, "delivered": 29, "dead": 5}


class _FailingOnce:
    """The outbox's connection, but `statement` fails once with an I/O error."""

    def __init__(self, conn: sqlite3.Connection, statement: str) -> None:
        self.conn, self.statement, self.failed = conn, statement, False

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == self.statement and not self.failed:
            self.failed = True
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = sqlite3.SQLITE_IOERR
            raise error
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_a_write_after_fsync_mode_could_not_be_set_back_is_fsynced_or_refused(outbox: Outbox) -> None:
    """A lease commits at NORMAL; if FULL cannot be set again (an I/O error), no later durable write commits
    at NORMAL silently: the write that cannot set FULL fails (nothing stored), the next one sets it."""
    outbox.enqueue("ehr", pairs(2))
    conn = outbox._conn
    outbox._conn = _FailingOnce(conn, "PRAGMA synchronous = FULL")
    with contextlib.suppress(StorageError):
        outbox.lease("ehr", 1, 30)
    stored = []
    for attempt in range(2):
        with contextlib.suppress(StorageError):
            stored += outbox.enqueue("ehr", pairs(1, f"after{attempt}"))
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert outbox._conn.failed and len(stored) == 1 and outbox.counts()["queued"] == 2


def test_a_lease_runs_no_retention(tmp_path) -> None:
    """A lease commits unsynced: a purge of delivered payloads waits for the next durable write."""
    clock = Clock()
    with Outbox(tmp_path / "o.sqlite", keep_delivered=10, clock=clock) as box:
        box.enqueue("fhir", pairs(3))
        ids = deliver(box, 1)
        clock.now += 100
        assert box.lease("fhir", 1, 60) and box.get(ids[0]).payload != PURGED
        box.enqueue("fhir", pairs(1, "other"))
        assert box.get(ids[0]).payload == PURGED


def test_an_id_reported_twice_as_delivered_keeps_its_first_result(outbox: Outbox) -> None:
    outbox.enqueue("ehr", pairs(2))
    ids = [item.id for item in outbox.lease("ehr", 2, 30)]
    outbox.delivered([ids[0], ids[1], ids[0], ids[1]], ["first", "second", "third", "fourth"])
    assert [outbox.get(i).result for i in ids] == ["first", "second"]
    assert delivery_results([7, 8, 7], ["a", "b", "c"]) == ["a", "b", "a"]  # JetStream's delivered records these


def test_a_failing_batch_stores_nothing(outbox: Outbox) -> None:
    batch = [*pairs(999), ("bad", None)]  # NOT NULL payload fails on the last row
    with pytest.raises(sqlite3.IntegrityError):
        outbox.enqueue("ehr", batch)  # type: ignore[arg-type]
    assert outbox.counts()["queued"] == 0


# --- durability across SIGKILL ------------------------------------------------------------------


def child(code: str) -> subprocess.Popen[str]:
    """A Python child process that prints one line when done and then waits to be killed."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)


def kill_after_first_line(proc: subprocess.Popen[str]) -> str:
    line = proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return line


def test_enqueued_items_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    proc = child(
        "import json, sys, time\n"
        "from phg.outbox import Outbox\n"
        f"box = Outbox({str(path)!r})\n"
        "ids = box.enqueue('ehr', [(f'k{i}', 'p') for i in range(50)])\n"
        "print(json.dumps(ids), flush=True)\n"
        "time.sleep(60)\n"
    )
    ids = json.loads(kill_after_first_line(proc))
    with Outbox(path) as box:
        assert [i.id for i in box.items("ehr", "queued")] == ids
        assert [i.id for i in box.lease("ehr", 100, 30)] == ids


def test_items_leased_by_a_killed_worker_are_leased_again_after_expiry(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        ids = box.enqueue("ehr", pairs(20))
    proc = child(
        "import json, time\n"
        "from phg.outbox import Outbox\n"
        f"box = Outbox({str(path)!r})\n"
        "print(json.dumps([i.id for i in box.lease('ehr', 20, 5)]), flush=True)\n"
        "time.sleep(60)\n"
    )
    assert json.loads(kill_after_first_line(proc)) == ids
    with Outbox(path) as box:
        assert box.lease("ehr", 100, 30) == []  # still leased to the dead worker
        deadline = box.next_due("ehr")
        assert deadline is not None
        again = box.lease("ehr", 100, 30, now=deadline)
        assert [i.id for i in again] == ids
        assert all(i.attempts == 2 for i in again)


# --- concurrency --------------------------------------------------------------------------------


def drain(box: Outbox, taken: list[int]) -> None:
    while batch := box.lease("ehr", 7, 300):
        taken.extend(item.id for item in batch)


@pytest.mark.parametrize("shared", [True, False], ids=["one-outbox", "outbox-per-thread"])
def test_concurrent_threads_never_get_the_same_item(tmp_path: Path, shared: bool) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        ids = box.enqueue("ehr", pairs(500))
        boxes = [box if shared else Outbox(path) for _ in range(4)]
        taken: list[list[int]] = [[] for _ in boxes]
        threads = [threading.Thread(target=drain, args=(b, t)) for b, t in zip(boxes, taken, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if not shared:
            for b in boxes:
                b.close()
    everything = [i for t in taken for i in t]
    assert sorted(everything) == ids  # each item exactly once


def test_concurrent_processes_never_get_the_same_item(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        ids = box.enqueue("ehr", pairs(600))
    code = (
        "import json\n"
        "from phg.outbox import Outbox\n"
        f"box = Outbox({str(path)!r})\n"
        "taken = []\n"
        "while batch := box.lease('ehr', 5, 300):\n"
        "    taken.extend(i.id for i in batch)\n"
        "print(json.dumps(taken))\n"
    )
    procs = [child(code) for _ in range(3)]
    outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    everything = [i for out in outputs for i in json.loads(out)]
    assert sorted(everything) == ids


# --- any sequence of operations keeps every item in exactly one state ---------------------------


class OutboxMachine(RuleBasedStateMachine):
    """A model of item states checked against the outbox after every operation. Time is not
    modelled; instead a far-future lease must return every undelivered, non-dead item."""

    DESTINATIONS = ("ehr", "lab")

    @initialize()
    def open(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.box = Outbox(Path(self.dir.name) / "outbox.db")
        self.model: dict[int, tuple[str, str]] = {}  # id -> (destination, state)
        self.horizon = FAR_FUTURE  # moves on at every check so that all earlier leases have expired

    def teardown(self) -> None:
        self.box.close()
        self.dir.cleanup()

    def ids(self, *states: str) -> list[int]:
        return sorted(i for i, (_, state) in self.model.items() if state in states)

    @rule(destination=st.sampled_from(DESTINATIONS), keys=st.lists(st.sampled_from("abcdefgh"), max_size=5))
    def enqueue(self, destination: str, keys: list[str]) -> None:
        ids = self.box.enqueue(destination, [(k, f"payload {k}") for k in keys])
        for id_ in ids:
            self.model.setdefault(id_, (destination, "queued"))

    @rule(
        destination=st.sampled_from(DESTINATIONS),
        limit=st.integers(1, 5),
        far=st.booleans(),
    )
    def lease(self, destination: str, limit: int, far: bool) -> None:
        leased = self.box.lease(destination, limit, 30, now=FAR_FUTURE if far else None)
        assert len(leased) <= limit
        for item in leased:
            assert self.model[item.id] in ((destination, "queued"), (destination, "inflight"))
            self.model[item.id] = (destination, "inflight")

    def report(self, data: st.DataObject, new_state: str, call) -> None:
        candidates = sorted(self.model)
        ids = data.draw(st.lists(st.sampled_from(candidates), max_size=4, unique=True))
        call(ids)
        for id_ in ids:
            destination, state = self.model[id_]
            if state == "inflight":
                self.model[id_] = (destination, new_state)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delivered(self, data: st.DataObject) -> None:
        self.report(data, "delivered", lambda ids: self.box.delivered(ids, [f"loc {i}" for i in ids]))

    @precondition(lambda self: self.model)
    @rule(data=st.data(), delay=st.sampled_from([0, 60]))
    def retry_later(self, data: st.DataObject, delay: float) -> None:
        self.report(data, "queued", lambda ids: self.box.retry_later(ids, delay, "timeout"))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def dead(self, data: st.DataObject) -> None:
        self.report(data, "dead", lambda ids: self.box.dead(ids, "rejected"))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        self.report(data, "queued", self.box.release)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        id_ = data.draw(st.sampled_from(sorted(self.model)))
        destination, state = self.model[id_]
        assert self.box.retry(id_) == (id_ if state in ("dead", "queued") else None)
        if state == "dead":
            self.model[id_] = (destination, "queued")

    @rule(destination=st.none() | st.sampled_from(DESTINATIONS))
    def purge_dead(self, destination: str | None) -> None:
        gone = [i for i, (d, s) in self.model.items() if s == "dead" and destination in (None, d)]
        assert self.box.purge_dead(destination) == len(gone)
        for id_ in gone:
            del self.model[id_]

    @rule(destination=st.sampled_from(DESTINATIONS))
    def nothing_is_lost(self, destination: str) -> None:
        waiting = [i for i, (d, s) in self.model.items() if d == destination and s in ("queued", "inflight")]
        self.horizon += 1e9
        leased = self.box.lease(destination, 1000, 30, now=self.horizon)
        assert [item.id for item in leased] == sorted(waiting)
        for id_ in waiting:
            self.model[id_] = (destination, "inflight")

    @invariant()
    def every_item_in_exactly_its_modelled_state(self) -> None:
        stored = {item.id: (item.destination, item.state) for item in self.box.items(limit=10_000)}
        assert stored == self.model
        counts = self.box.counts()
        assert set(counts) == set(STATES)
        assert sum(counts.values()) == len(self.model)
        for state in STATES:
            assert counts[state] == len(self.ids(state))


TestOutboxStateMachine = OutboxMachine.TestCase
TestOutboxStateMachine.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_several_destinations_and_source_state_in_one_transaction(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as box:
        ids = box.enqueue(["fhir", "mllp"], [("k1", "p1"), ("k2", "p2")], state={"ble:AA": "7"})
        assert len(ids) == 4 and len(set(ids)) == 4
        assert box.counts("fhir")["queued"] == 2 and box.counts("mllp")["queued"] == 2
        assert box.source_state("ble:AA") == "7"
        box.enqueue("fhir", [("k3", "p3")], state={"ble:AA": "8"})
        assert box.source_state("ble:AA") == "8"
        assert box.source_state("nothing") is None
    with Outbox(tmp_path / "o.sqlite") as box:  # durable across reopen
        assert box.source_state("ble:AA") == "8"


def test_state_is_not_committed_when_the_readings_are_not(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as box:
        with pytest.raises(sqlite3.IntegrityError):
            box.enqueue("fhir", [("k1", "p1"), ("k2", None)], state={"ble:AA": "20"})  # type: ignore[list-item]
        assert box.source_state("ble:AA") is None
        assert box.counts()["queued"] == 0


def test_the_outbox_is_readable_by_its_owner_only(tmp_path):
    with Outbox(tmp_path / "private" / "o.sqlite") as box:
        box.enqueue("fhir", [("k1", "p1")])
    assert (tmp_path / "private" / "o.sqlite").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o700


def test_an_outbox_readable_by_others_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "o.sqlite"
    Outbox(path).close()
    assert path.stat().st_mode & 0o777 == 0o600  # new files stay private
    path.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        Outbox(path)
    assert str(path) in str(caught.value) and f"chmod 600 {path}" in str(caught.value)
    path.chmod(0o600)
    Outbox(path).close()


# --- retention of delivered payloads ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def deliver(box: Outbox, n: int) -> list[int]:
    ids = [item.id for item in box.lease("fhir", n, 60)]
    box.delivered(ids)
    return ids


def test_delivered_payloads_are_blanked_after_keep_delivered_and_not_queued_again(tmp_path):
    clock = Clock()
    with Outbox(tmp_path / "o.sqlite", keep_delivered=3600, clock=clock) as box:
        box.enqueue("fhir", pairs(3))
        ids = deliver(box, 2)
        clock.now += 3599
        box.enqueue("fhir", pairs(1, "other"))  # a write: retention runs, nothing is old enough yet
        assert all(box.get(i).payload != PURGED for i in ids)
        clock.now += 61  # past keep_delivered, and a minute after the last pass
        box.enqueue("fhir", pairs(1, "third"))
        assert [box.get(i).payload for i in ids] == [PURGED, PURGED]
        assert box.get(ids[0]).key == "k0" and box.get(ids[0]).state == "delivered"
        assert json.loads(box.items(state="queued")[0].payload) == {"n": 2}  # queued ones untouched
        assert box.enqueue("fhir", pairs(2)) == ids  # the same readings again: still known as delivered
        assert box.counts() == {"queued": 3, "inflight": 0, "delivered": 2, "dead": 0}


def test_retention_runs_at_most_once_a_minute_and_zero_blanks_at_delivery(tmp_path):
    clock = Clock()
    with Outbox(tmp_path / "a.sqlite", keep_delivered=100, clock=clock) as box:
        box.enqueue("fhir", pairs(2))
        first = deliver(box, 1)
        clock.now += 101
        box.enqueue("fhir", pairs(1, "x"))  # a pass: blanks the first
        second = deliver(box, 1)
        clock.now += 30  # the second is old enough by now, but the last pass was only 30 s ago
        box.enqueue("fhir", pairs(1, "y"))
        assert box.get(first[0]).payload == PURGED and box.get(second[0]).payload != PURGED
        clock.now += 31
        box.enqueue("fhir", pairs(1, "z"))
        assert box.get(second[0]).payload == PURGED
    with Outbox(tmp_path / "b.sqlite", keep_delivered=0) as box:
        box.enqueue("fhir", pairs(2))
        assert [box.get(i).payload for i in deliver(box, 2)] == [PURGED, PURGED]  # in the delivering write
    with Outbox(tmp_path / "c.sqlite", clock=lambda: FAR_FUTURE) as box:  # no period given: nothing erased
        box.enqueue("fhir", pairs(1))
        assert box.get(deliver(box, 1)[0]).payload != PURGED


@pytest.mark.parametrize(("value", "seconds"), [('"7d"', 604800.0), ("0", 0.0), ('"12h"', 43200.0),
                                                ('"30m"', 1800.0), ("90", 90.0), ('"45s"', 45.0)])
def test_keep_delivered_config(tmp_path, value, seconds):
    config = tmp_path / "phg.toml"
    config.write_text(f"[outbox]\nkeep_delivered = {value}\n")
    assert load_config(config, env={}).keep_delivered == seconds
    assert load_config(None, env={"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "x")}
                       ).keep_delivered == 7 * 86400  # the default


@pytest.mark.parametrize("value", ['"a week"', "-1", '"7w"', "true", "nan"])
def test_keep_delivered_config_refuses_what_is_not_a_duration(tmp_path, value):
    config = tmp_path / "phg.toml"
    config.write_text(f"[outbox]\nkeep_delivered = {value}\n")
    with pytest.raises(ConfigError, match=rf'{config}: \[outbox\] keep_delivered must be .* "7d"'):
        load_config(config, env={})


def test_queue_purge_delivered_and_dead_from_the_cli(tmp_path):
    from click.testing import CliRunner

    from phg.cli import main

    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        box.enqueue("fhir", pairs(4))
        delivered = deliver(box, 2)
        box.dead([box.lease("fhir", 1, 60)[0].id], "HTTP 400")
    env = {"PHG_OUTBOX": str(path), "PHG_CONFIG": "", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "c")}
    runner = CliRunner()
    result = runner.invoke(main, ["queue", "purge", "--delivered"], env=env)
    assert result.exit_code == 0 and "erased the readings of 2 delivered item(s)" in result.output, result.output
    with Outbox(path) as box:
        assert [box.get(i).payload for i in delivered] == [PURGED, PURGED]
        assert box.counts() == {"queued": 1, "inflight": 0, "delivered": 2, "dead": 1}
    result = runner.invoke(main, ["queue", "purge", "--dead", "--delivered"], env=env)
    assert "removed 1 dead item(s)" in result.output and "erased the readings of 0 delivered" in result.output
    result = runner.invoke(main, ["queue", "purge"], env=env)
    assert result.exit_code == 2 and "--dead, --delivered or both" in result.output
