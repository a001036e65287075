"""The view store's SQLite engine (phg.viewstore: the rules of both engines): one file per gateway,
`[view] path`, by default `view.sqlite` beside the outbox, readable by its owner only.

WAL with synchronous=FULL and the WAL bound, as the outbox (phg.outbox.sqlite.use_wal), for the same
reasons: a keep is on disk when it returns. A file that another program made (tables without phg's
PRAGMA application_id) is refused.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from phg.errors import StorageError
from phg.outbox.sqlite import create_private, make_directory, storage_errors, transaction, use_wal
from phg.secretfile import require_private
from phg.viewstore import DEVICE_TABLE, SCHEMA, MeasurementRow, ReadingRow, ViewStore

APPLICATION_ID = 0x70686776  # "phgv": PRAGMA application_id, this file is phg's view store


class SqliteViewStore(ViewStore):
    """Readings kept for viewing, in one SQLite file (module docstring)."""

    TABLE, PARAMETER = "", ":%s"
    PAYLOAD_DEVICE = ("coalesce(json_extract(r.payload, '$.device.system_id'),"
                      " json_extract(r.payload, '$.device.bt_address'))")
    ANY, LOCK = "IN (SELECT value FROM json_each(:%s))", ""  # one writer at a time: no row locks

    def __init__(self, path: Path | str, retention: float | None = None, clock: Callable[[], float] = time.time):
        """`retention`: seconds a reading is kept after it was stored (None: kept, for a process that does
        not know the configured period). `clock` tells retention the time (tests pass their own)."""
        self.path = Path(path)
        self._start(retention, clock)
        with self._storage_errors():
            make_directory(self.path)
            create_private(self.path)  # patient identifiers and measurements: readable by its owner only
            require_private(self.path, "the view store (it holds health data)")
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            with self._storage_errors():
                self._open()
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA busy_timeout = 5000")
        owner = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if owner != APPLICATION_ID and (owner or tables):
            raise StorageError(f"{self.path}: not phg's view store (another program's database): "
                               "set [view] path to a file of its own", str(self.path))
        use_wal(conn)
        conn.execute("PRAGMA foreign_keys = ON")
        if not tables:
            with transaction(conn) as tx:
                for statement in SCHEMA + DEVICE_TABLE:
                    tx.execute(statement.format(table="", real="REAL"))
                self._add_device_column(tx)
                tx.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            return
        if not self._has("index", "reading_device"):
            with transaction(conn) as tx:  # a file made before the reading's device column: added, filled (once)
                if not self._has("index", "reading_device"):
                    self._add_device_column(tx)
        if not self._has_devices(conn):
            with transaction(conn) as tx:  # a file made before the device table: add it, filled (once)
                if not self._has_devices(tx):
                    for statement in DEVICE_TABLE:
                        tx.execute(statement.format(table="", real="REAL"))
                    self._fill_devices(tx)

    @staticmethod
    def _has_devices(conn: sqlite3.Connection) -> bool:
        found = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'device'")
        return bool(found.fetchone()[0])

    def _has(self, kind: str, name: str) -> bool:
        found = self._conn.execute("SELECT count(*) FROM sqlite_master WHERE type = ? AND name = ?", (kind, name))
        return bool(found.fetchone()[0])

    @contextmanager
    def _storage_errors(self) -> Iterator[None]:
        try:
            with storage_errors(self.path):
                yield
        except StorageError as exc:  # the outbox's words, about this file: say which store it is
            raise StorageError(f"view store {exc}", str(self.path)) from exc.__cause__

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._held(), self._storage_errors(), transaction(self._conn) as tx:
            return work(tx)

    def _query(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._held(), self._storage_errors():
            return work(self._conn)

    def _insert(self, tx: sqlite3.Connection, readings: list[ReadingRow],
                measurements: dict[str, list[MeasurementRow]]) -> set[str]:
        added = set()
        for row in readings:
            if tx.execute("INSERT OR IGNORE INTO reading (key, system, value, stored, payload, device)"
                          " VALUES (?, ?, ?, ?, ?, ?)", row).rowcount:
                tx.executemany("INSERT INTO measurement VALUES (?, ?, ?, ?, ?)", measurements[row[0]])
                added.add(row[0])
        return added

    def _select(self, conn: sqlite3.Connection, patients: list[list[str]], since: float, codes: list[int] | None,
                limit: int) -> list[tuple[float, str, str]]:
        return conn.execute(
            "SELECT r.stored, r.payload, r.key FROM reading r WHERE r.key IN ("
            " SELECT m.key FROM measurement m JOIN json_each(:patients) p"
            " ON m.system = json_extract(p.value, '$[0]') AND m.value = json_extract(p.value, '$[1]')"
            " WHERE m.time >= :since AND (:codes IS NULL OR m.code IN (SELECT value FROM json_each(:codes))))"
            " ORDER BY (SELECT min(time) FROM measurement WHERE key = r.key) LIMIT :limit",
            {"patients": json.dumps(patients), "since": since,
             "codes": json.dumps(codes) if codes is not None else None, "limit": limit}).fetchall()

    def _list(self, values: list[str]) -> str:
        return json.dumps(values)  # json_each's

    def _writable(self, conn: sqlite3.Connection) -> None:
        """Take the write lock and give it back (SQLite docs, "BEGIN TRANSACTION": IMMEDIATE starts a write
        transaction at once): a read-only file or directory, or a lock held past busy_timeout, fails."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # "database is locked" too: not writable now, not ready
            raise StorageError(f"view store {self.path}: cannot be written now: {exc}", str(self.path)) from None
        conn.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
