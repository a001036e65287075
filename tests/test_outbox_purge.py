"""Retention's purge visits only the payloads it can blank (the index item_unpurged), in new files and in files made
before the index, and blanks the same rows as before; a file the index cannot be added to (full disk) still opens
and works, and gets it at a later open."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest
from tests.test_outbox import old_outbox

import phg.outbox.sqlite
from phg.outbox import Outbox
from phg.outbox.sqlite import _PURGE, _UNPURGED, APPLICATION_ID, PURGED, SCHEMA_VERSION, use_wal

NOW = 1_800_000_000.0
DAY = 86400.0


class Clock:
    now = NOW

    def __call__(self) -> float:
        return self.now


def rows(n: int, state: str, updated: float, payload: str = '{"n": 1}', destination: str = "ehr",
         prefix: str = "") -> list[tuple]:
    return [(destination, f"{prefix or state}{i}", payload, state, updated, NOW - 30 * DAY, updated)
            for i in range(n)]


def fill(conn: sqlite3.Connection, items: list[tuple]) -> None:
    """One transaction (the connections here have isolation_level None: each row would commit)."""
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO item (destination, key, payload, state, next_attempt, created, updated)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)", items)
    conn.execute("COMMIT")


def a_mix() -> list[tuple]:
    """Delivered long ago (already blanked, and not yet), delivered lately, waiting and dead, at two destinations."""
    return (rows(300, "delivered", NOW - 20 * DAY, PURGED, prefix="blanked")
            + rows(5, "delivered", NOW - 8 * DAY, prefix="old")
            + rows(3, "delivered", NOW - 8 * DAY, destination="lab", prefix="oldlab")
            + rows(4, "delivered", NOW - DAY, prefix="new")
            + rows(2, "queued", NOW - 9 * DAY) + rows(2, "dead", NOW - 9 * DAY))


def file_before_the_index(path: Path, items: list[tuple]) -> None:
    """A file as the release before item_unpurged left it (schema 5, the version this one still writes)."""
    conn = old_outbox(path, 5)
    fill(conn, items)
    conn.close()


def has_index(box: Outbox) -> bool:
    return bool(box._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'item_unpurged'")
                .fetchall())


def payloads(box: Outbox) -> dict[tuple[str, str], str]:
    return {(d, k): p for d, k, p in box._conn.execute("SELECT destination, key, payload FROM item")}


def purge_steps(box: Outbox) -> int:
    """SQLite virtual machine instructions one purge_delivered() takes."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    box._conn.set_progress_handler(count, 1)
    box.purge_delivered()
    box._conn.set_progress_handler(None, 1)
    return steps


@pytest.mark.parametrize("purged", [PURGED, "x"])  # the plan does not depend on the value bound: PURGED is a literal
@pytest.mark.parametrize("destination", [None, "ehr"])
def test_the_purge_searches_item_unpurged_and_scans_no_table(tmp_path: Path, destination: str | None,
                                                             purged: str) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        plan = [row[3] for row in box._conn.execute(
            f"EXPLAIN QUERY PLAN {_PURGE}", {"purged": purged, "before": NOW, "destination": destination})]
    assert len(plan) == 1 and plan[0].startswith("SEARCH item USING INDEX item_unpurged"), plan


def test_a_purge_costs_the_same_however_many_payloads_are_already_blanked(tmp_path: Path) -> None:
    """The blanked rows stay forever; a purge that visited them would grow with the outbox's age (it did, through
    item_state: 2,000 blanked rows cost it about twenty times the steps of 100)."""
    steps = []
    for blanked in (100, 2000):
        with Outbox(tmp_path / f"{blanked}.sqlite") as box:
            fill(box._conn, rows(blanked, "delivered", NOW - 20 * DAY, PURGED) + rows(3, "queued", NOW))
            box.purge_delivered()  # the same statement compiled once, as a running outbox has it
            steps.append(purge_steps(box))
    assert steps[1] <= steps[0] + 20, steps


def test_an_outbox_from_before_the_index_gets_it_and_purges_the_rows_a_new_one_does(tmp_path: Path) -> None:
    """Still schema 5: the release before opens the file afterwards (an index it does not know is SQLite's to keep)."""
    clock = Clock()
    file_before_the_index(tmp_path / "old.sqlite", a_mix())
    with Outbox(tmp_path / "old.sqlite", keep_delivered=7 * DAY, clock=clock) as old, \
            Outbox(tmp_path / "new.sqlite", keep_delivered=7 * DAY, clock=clock) as new:
        fill(new._conn, a_mix())
        assert old._schema() == (APPLICATION_ID, SCHEMA_VERSION) == (APPLICATION_ID, 5)
        assert old._conn.execute("SELECT sql FROM sqlite_master WHERE name = 'item_unpurged'").fetchone() == \
            new._conn.execute("SELECT sql FROM sqlite_master WHERE name = 'item_unpurged'").fetchone()
        clock.now += 61  # a minute after the pass of each one's opening write (old's index ran it already)
        for box in (old, new):
            box.enqueue("ehr", [("later", '{"n": 2}')])  # a write: retention runs
        blanked = {key for key, payload in payloads(old).items() if payload == PURGED}
        assert payloads(old) == payloads(new)
        assert blanked == ({("ehr", f"blanked{i}") for i in range(300)} | {("ehr", f"old{i}") for i in range(5)}
                           | {("lab", f"oldlab{i}") for i in range(3)})
        assert old.counts() == new.counts() == {"queued": 3, "inflight": 0, "delivered": 312, "dead": 2}


def test_purge_delivered_of_one_destination_leaves_the_others(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        fill(box._conn, a_mix())
        assert box.purge_delivered("lab") == 3
        assert box.purge_delivered("ehr") == 9
        assert box.purge_delivered() == 0
        assert {p for (_, k), p in payloads(box).items() if k.startswith(("queued", "dead"))} == {'{"n": 1}'}


def test_the_migration_adds_a_small_index_not_a_copy(tmp_path: Path) -> None:
    """Built from the delivered rows still holding a payload only: 10,000 blanked rows add nothing to it."""
    path = tmp_path / "o.sqlite"
    recent = rows(50, "delivered", time.time(), prefix="recent")
    file_before_the_index(path, rows(10_000, "delivered", NOW - 20 * DAY, PURGED) + recent)
    with sqlite3.connect(path) as conn:
        before = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    with Outbox(path) as box:
        assert box._conn.execute(f"SELECT count(*) FROM item INDEXED BY item_unpurged WHERE {_UNPURGED}"
                                 ).fetchone()[0] == 50
        added = box._conn.execute("PRAGMA page_count").fetchone()[0] - before
    assert 1 <= added <= 2, (before, added)


def test_a_full_disk_at_open_leaves_the_index_for_a_later_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """The release before opened this file without writing and served it: a disk with no room for the index must
    not stop the outbox (no `phg queue ls`, no `phg run`). max_page_count at the file's size is SQLite's own full
    disk (SQLITE_FULL) for the pages CREATE INDEX needs."""
    path = tmp_path / "o.sqlite"
    file_before_the_index(path, a_mix() + rows(2000, "delivered", NOW - DAY, '{"n": ' + "1" * 100 + "}", prefix="kept"))

    def full(conn: sqlite3.Connection) -> None:
        use_wal(conn)
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")

    monkeypatch.setattr(phg.outbox.sqlite, "use_wal", full)
    with caplog.at_level(logging.WARNING, "phg.outbox.sqlite"), Outbox(path, keep_delivered=7 * DAY) as box:
        assert not has_index(box)
        assert box.counts() == {"queued": 2, "inflight": 0, "delivered": 2312, "dead": 2}
        assert {item.key for item in box.lease("ehr", 10, 30, now=NOW)} == {"queued0", "queued1"}
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert str(path) in warning.getMessage() and "the disk is full" in warning.getMessage()
    assert "item_unpurged" in warning.getMessage() and "next open tries again" in warning.getMessage()

    monkeypatch.undo()
    with Outbox(path) as box:
        assert has_index(box) and box._schema() == (APPLICATION_ID, 5)
        assert box.counts()["inflight"] == 2
