"""The reading store for viewing: every reading the Intake stores, kept for the SMART view in the EHR
(phg.service.view) and queryable by patient identifier, measurement type and time.

Two engines, one interface (ViewStore) and one set of rules (this module):
- SQLite (phg.viewstore.sqlite, the default): one file per gateway, `[view] path` (by default
  `view.sqlite` beside the outbox). `ViewStore(path)` is this engine, as it always was.
- PostgreSQL (phg.viewstore.postgres, `[view] url`): one database shared by every intake of a hub
  (docs/hub.md), so the view any intake serves shows the readings every intake took (issue 14's closing
  note: "when [the hub] does, the view store needs a shared engine").

Separate from the delivery queue (phg.outbox) for three reasons: it keeps readings for months (`[view]
retention`, 365 days by default) while the queue blanks a delivered payload after `[outbox]
keep_delivered` (7 days); erasing a patient (`forget`) removes their readings here without touching the
queue's keys, which stop a reading from being sent twice; and the view's reads never wait on the queue's
write lock. The queue is the engine of record for delivery.

Durability and order. The Intake keeps readings here *before* it queues them (phg.intake): a source
acknowledges its device only after the queue committed, so a crash between the two leaves at most a
viewable reading the source sends again (kept once: the reading's content key is the primary key), never
a queued reading missing from the view. Each keep is one transaction, durable when it returns (SQLite:
WAL with synchronous=FULL; PostgreSQL: synchronous_commit=on); when it cannot be written the call raises
StorageError and nothing of it is kept (the Intake then queues nothing: the source sends again).

Retention: a reading stored more than `retention` seconds ago is deleted by the next write (at most
once a minute per process). Times are the gateway's: the store time, not the device's clock, which may
be wrong.

Both engines hold the same two tables (SCHEMA): `reading` (one row per reading, its canonical JSON) and
`measurement` (one row per metric: the index the view's queries use), and answer the same queries.
"""

from __future__ import annotations

import threading
from pathlib import Path

from phg.config import ViewSettings
from phg.errors import ReadingError
from phg.frozen import Frozen
from phg.model import Reading, from_canonical_json

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue 16: `phg send` starts without it)
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence
    from datetime import datetime
    from typing import Any

RETENTION_EVERY = 60.0  # seconds between two retention passes (of one process)
# Both engines' tables: {table} is the engine's name prefix ("" in SQLite's own file, "phg_view." in
# PostgreSQL: phg's schema), {real} its 8-byte float type (PostgreSQL's REAL is 4 bytes: not for epoch seconds).
SCHEMA = (
    "CREATE TABLE {table}reading (key TEXT PRIMARY KEY, system TEXT NOT NULL, value TEXT NOT NULL,"
    " stored {real} NOT NULL, payload TEXT NOT NULL)",
    "CREATE INDEX reading_stored ON {table}reading (stored)",
    # one row per metric (a compound metric once, under its own code): the index the view's queries use
    "CREATE TABLE {table}measurement (key TEXT NOT NULL REFERENCES {table}reading ON DELETE CASCADE,"
    " system TEXT NOT NULL, value TEXT NOT NULL, code INTEGER NOT NULL, time {real} NOT NULL)",
    "CREATE INDEX measurement_patient ON {table}measurement (system, value, time)",
    "CREATE INDEX measurement_key ON {table}measurement (key)",
)

ReadingRow = tuple[str, str, str, float, str]  # key, patient system, patient value, stored, payload
MeasurementRow = tuple[str, str, str, int, float]  # key, patient system, patient value, code, time


def open_view(settings: ViewSettings | None) -> ViewStore | None:
    """The store `[view]` (or `[smart]`) configures; None when the view is not configured. PostgreSQL
    (and psycopg) only when `[view] url` is set: `phg send` on SQLite starts without it (issue 16)."""
    if settings is None:
        return None
    if settings.url is not None:
        from phg.viewstore.postgres import PostgresViewStore

        return PostgresViewStore(settings)
    return ViewStore(settings.path, settings.retention)


class Kept(Frozen):
    """One kept reading, when the gateway stored it (epoch seconds) and its key as the Intake stored it
    (the outbox's key for it: a reading read back may differ from the one stored, e.g. a unit filled in)."""

    stored: float
    reading: Reading
    key: str


class ViewStore:
    """Readings kept for viewing (module docstring). `ViewStore(path, retention, clock)` opens the SQLite
    engine (phg.viewstore.sqlite), as before there were two (pathlib.Path's pattern); open_view chooses by
    the settings. An engine gives `path` (where it is, for messages: the file, or the URL) and runs one
    transaction (`_transaction`) or one query (`_query`) on its connection, turning its faults into
    StorageError; the rules are here."""

    path: Path | str
    FORGET: str  # DELETE one patient's readings: parameters (system, value)
    EXPIRE: str  # DELETE the readings stored before a time: parameter (before,)

    def __new__(cls, *args: Any, **kwargs: Any) -> ViewStore:
        if cls is ViewStore:
            from phg.viewstore.sqlite import SqliteViewStore

            cls = SqliteViewStore
        return super().__new__(cls)

    def _start(self, retention: float | None, clock: Callable[[], float]) -> None:
        """`retention`: seconds a reading is kept after it was stored (None: kept, for a process that does
        not know the configured period). `clock` tells retention the time (tests pass their own)."""
        self.retention, self._clock = retention, clock
        self._retention_due = 0.0
        self._lock = threading.Lock()  # one connection, used by one thread at a time

    # -------------------------------------------------------------------- what each engine gives

    def _transaction(self, work: Callable[[Any], Any]) -> Any:
        """work(connection) in one write transaction, committed durably; on any failure nothing stays."""
        raise NotImplementedError

    def _query(self, work: Callable[[Any], Any]) -> Any:
        """work(connection) outside a write transaction."""
        raise NotImplementedError

    def _insert(self, tx: Any, readings: list[ReadingRow], measurements: dict[str, list[MeasurementRow]]) -> None:
        """Insert `readings` that are not kept yet (by key) and, for those only, their `measurements`."""
        raise NotImplementedError

    def _select(self, conn: Any, patients: list[list[str]], since: float, codes: list[int] | None,
                limit: int) -> list[tuple[float, str, str]]:
        """(stored, payload, key) of the readings() query."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------------- the interface

    def keep(self, readings: Sequence[Reading]) -> None:
        """Keep `readings` (one that is kept already stays as it was) in one durable transaction; raises
        StorageError (nothing kept) when the store cannot be written."""
        now = self._clock()
        rows: dict[str, ReadingRow] = {}
        measurements: dict[str, list[MeasurementRow]] = {}
        for reading in readings:
            patient = reading.patient
            if reading.key not in rows:
                rows[reading.key] = (reading.key, patient.system, patient.value, now, reading.to_json())
                measurements[reading.key] = [(reading.key, patient.system, patient.value, m.code, m.time.timestamp())
                                             for m in reading.metrics]
        expire = self.retention is not None and now >= self._retention_due

        def work(tx: Any) -> None:
            self._insert(tx, sorted(rows.values()), measurements)  # in key order: two intakes never deadlock
            if expire:
                tx.execute(self.EXPIRE, (now - self.retention,))

        self._transaction(work)
        if expire:
            self._retention_due = now + RETENTION_EVERY

    def readings(self, patients: Collection[tuple[str, str]], since: datetime | None = None,
                 codes: Collection[int] | None = None, limit: int = 10_000) -> list[Kept]:
        """The kept readings of any of `patients` ((system, value) identifiers) with a measurement of one of
        `codes` (every type when None) at or after `since`, in measurement time order (a reading's earliest
        metric), at most `limit`. A payload that cannot be read is left out (its key is named in the error
        log, never its content)."""
        found = self._query(lambda conn: self._select(
            conn, [list(p) for p in patients], since.timestamp() if since else float("-inf"),
            sorted(codes) if codes is not None else None, limit))
        kept = []
        for stored, payload, key in found:
            try:
                kept.append(Kept(stored, from_canonical_json(payload, "view store"), key))
            except ReadingError as exc:
                import logging  # here: `phg send`, which keeps readings here, starts without logging

                logging.getLogger(__name__).error("view store reading %s cannot be read (at %s): left out", key,
                                                  exc.where)
        return kept

    def forget(self, patient: tuple[str, str]) -> int:
        """Delete every reading of `patient` (system, value); how many there were."""
        return self._transaction(lambda tx: tx.execute(self.FORGET, tuple(patient)).rowcount)

    def __enter__(self) -> ViewStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

