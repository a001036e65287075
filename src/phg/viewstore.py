"""The reading store for viewing: every reading the Intake stores, kept for the SMART view in the EHR
(phg.service.view) and queryable by patient identifier, measurement type and time.

Separate from the delivery queue (phg.outbox), in its own SQLite file beside it (`[view] path`, by
default `view.sqlite` next to the outbox), for three reasons: it keeps readings for months (`[view]
retention`, 365 days by default) while the queue blanks a delivered payload after `[outbox]
keep_delivered` (7 days); erasing a patient (`forget`) removes their readings here without touching the
queue's keys, which stop a reading from being sent twice; and the view's reads never wait on the queue's
write lock. The queue is the engine of record for delivery; this store has no engine of its own beyond
SQLite (a hub on JetStream or PostgreSQL would keep this file on the gateway all the same).

Durability and order. The Intake keeps readings here *before* it queues them (phg.intake): a source
acknowledges its device only after the queue committed, so a crash between the two leaves at most a
viewable reading the source sends again (kept once: the reading's content key is the primary key), never
a queued reading missing from the view.
WAL with synchronous=FULL and the WAL bound, as the outbox (phg.outbox.sqlite.use_wal), for the same reasons.

Retention: a reading stored more than `retention` seconds ago is deleted by the next write (at most
once a minute). Times are the gateway's: the store time, not the device's clock, which may be wrong.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from phg.config import ViewSettings
from phg.errors import ReadingError, StorageError
from phg.frozen import Frozen
from phg.model import Reading, from_canonical_json
from phg.outbox.sqlite import create_private, storage_errors, transaction, use_wal
from phg.secretfile import require_private

APPLICATION_ID = 0x70686776  # "phgv": PRAGMA application_id, this file is phg's view store
RETENTION_EVERY = 60.0  # seconds between two retention passes
SCHEMA = (
    "CREATE TABLE reading (key TEXT PRIMARY KEY, system TEXT NOT NULL, value TEXT NOT NULL,"
    " stored REAL NOT NULL, payload TEXT NOT NULL)",
    "CREATE INDEX reading_stored ON reading (stored)",
    # one row per metric (a compound metric once, under its own code): the index the view's queries use
    "CREATE TABLE measurement (key TEXT NOT NULL REFERENCES reading ON DELETE CASCADE, system TEXT NOT NULL,"
    " value TEXT NOT NULL, code INTEGER NOT NULL, time REAL NOT NULL)",
    "CREATE INDEX measurement_patient ON measurement (system, value, time)",
    "CREATE INDEX measurement_key ON measurement (key)",
)


def open_view(settings: ViewSettings | None) -> ViewStore | None:
    """The store `[view]` (or `[smart]`) configures; None when the view is not configured."""
    return ViewStore(settings.path, settings.retention) if settings is not None else None


class Kept(Frozen):
    """One kept reading, when the gateway stored it (epoch seconds) and its key as the Intake stored it
    (the outbox's key for it: a reading read back may differ from the one stored, e.g. a unit filled in)."""

    stored: float
    reading: Reading
    key: str


class ViewStore:
    """Readings kept for viewing, in one SQLite file (module docstring)."""

    def __init__(self, path: Path | str, retention: float | None = None, clock: Callable[[], float] = time.time):
        """`retention`: seconds a reading is kept after it was stored (None: kept, for a process that does
        not know the configured period). `clock` tells retention the time (tests pass their own)."""
        self.path, self.retention, self._clock = Path(path), retention, clock
        self._retention_due = 0.0
        self._lock = threading.Lock()
        with self._storage_errors():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
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
            with self._write() as tx:
                for statement in SCHEMA:
                    tx.execute(statement)
                tx.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    @contextmanager
    def _storage_errors(self) -> Iterator[None]:
        try:
            with storage_errors(self.path):
                yield
        except OSError as exc:  # the directory or the file could not be made
            raise StorageError(f"{self.path}: {exc.strerror}", str(self.path)) from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; on any failure nothing of it stays."""
        with self._lock, self._storage_errors(), transaction(self._conn) as tx:
            yield tx

    def keep(self, readings: Sequence[Reading]) -> None:
        """Keep `readings` (one that is kept already stays as it was) in one durable transaction; raises
        StorageError (nothing kept) when the file cannot be written."""
        now = self._clock()
        with self._write() as tx:
            for reading in readings:
                patient = reading.patient
                added = tx.execute("INSERT OR IGNORE INTO reading VALUES (?, ?, ?, ?, ?)",
                                   (reading.key, patient.system, patient.value, now, reading.to_json())).rowcount
                if added:
                    tx.executemany("INSERT INTO measurement VALUES (?, ?, ?, ?, ?)",
                                   [(reading.key, patient.system, patient.value, m.code, m.time.timestamp())
                                    for m in reading.metrics])
            if self.retention is not None and now >= self._retention_due:
                tx.execute("DELETE FROM reading WHERE stored < ?", (now - self.retention,))
                self._retention_due = now + RETENTION_EVERY

    def readings(self, patients: Collection[tuple[str, str]], since: datetime | None = None,
                 codes: Collection[int] | None = None, limit: int = 10_000) -> list[Kept]:
        """The kept readings of any of `patients` ((system, value) identifiers) with a measurement of one of
        `codes` (every type when None) at or after `since`, in measurement time order. A payload that cannot
        be read is left out (its key is named in the error log, never its content)."""
        with self._lock, self._storage_errors():
            rows = self._conn.execute(
                "SELECT r.stored, r.payload, r.key FROM reading r WHERE r.key IN ("
                " SELECT m.key FROM measurement m JOIN json_each(:patients) p"
                " ON m.system = json_extract(p.value, '$[0]') AND m.value = json_extract(p.value, '$[1]')"
                " WHERE m.time >= :since AND (:codes IS NULL OR m.code IN (SELECT value FROM json_each(:codes))))"
                " ORDER BY (SELECT min(time) FROM measurement WHERE key = r.key) LIMIT :limit",
                {"patients": json.dumps([list(p) for p in patients]),
                 "since": since.timestamp() if since else float("-inf"),
                 "codes": json.dumps(sorted(codes)) if codes is not None else None, "limit": limit}).fetchall()
        kept = []
        for stored, payload, key in rows:
            try:
                kept.append(Kept(stored, from_canonical_json(payload, "view store"), key))
            except ReadingError as exc:
                import logging  # here: `phg send`, which keeps readings here, starts without logging

                logging.getLogger(__name__).error("view store reading %s cannot be read (at %s): left out", key,
                                                  exc.where)
        return kept

    def forget(self, patient: tuple[str, str]) -> int:
        """Delete every reading of `patient` (system, value); how many there were."""
        with self._write() as tx:
            return tx.execute("DELETE FROM reading WHERE system = ? AND value = ?", patient).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ViewStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
