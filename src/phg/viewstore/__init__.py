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

Retention: a reading stored more than `retention` seconds ago is deleted after the next write (at most
once a minute per process). Times are the gateway's: the store time, not the device's clock, which may
be wrong. A retention pass never makes a keep fail: it runs after the keep committed, in transactions of
its own of at most EXPIRE_BATCH readings (at most EXPIRE_BATCHES of them per pass; a larger backlog, e.g.
after `retention` was lowered, goes over the next writes), on PostgreSQL one intake at a time; a pass that
fails is logged (WARNING, the store and the database's reason, never a reading) and tried again a minute
later (review R of db9b6c3, finding 1: a DELETE inside the keep passed the statement timeout and made
every keep fail).

Both engines hold the same three tables (SCHEMA, DEVICE_TABLE): `reading` (one row per reading, its
canonical JSON and its device: DEVICE_COLUMN), `measurement` (one row per metric: the index the view's
queries use) and `device` (each device's newest reading: the status page's device list), and answer the same queries.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from phg.config import ViewSettings
from phg.errors import ReadingError, StorageError
from phg.frozen import Frozen
from phg.model import Reading, from_canonical_json

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue 16: `phg send` starts without it)
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Sequence
    from datetime import datetime
    from typing import Any

RETENTION_EVERY = 60.0  # seconds between two retention passes (of one process)
EXPIRE_BATCH = 5000  # readings one retention transaction deletes at the most (the oldest first)
EXPIRE_BATCHES = 4  # transactions one pass runs at the most: a pass adds well under a second to a keep
# Seconds a call waits at the most for the store's connection while another call of the process uses it;
# then it fails at once ("busy", StorageError), so that a call stuck on the database (e.g. a COMMIT waiting
# for a synchronous standby) never holds up every other call, /readyz's and the thread pool's (review R2,
# finding 1; review R of db9b6c3, finding 4).
LOCK_WAIT = 5.0  # far above a keep's usual milliseconds: only a call stuck on the database is waited out
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
# Each reading's device (keep's: its system id, else its Bluetooth address; NULL: none), so that forget()
# finds the readings of a device by an index, not by reading every payload (review R2, finding 3: 5 s for
# 400k readings, while it held device locks). A store made without it (a new one too: one way) gets the
# column, filled from the payloads ({payload_device}: the engine's expression), and its index, when opened.
DEVICE_COLUMN = (
    "ALTER TABLE {table}reading ADD COLUMN device TEXT",
    "UPDATE {table}reading AS r SET device = {payload_device}",
    "CREATE INDEX reading_device ON {table}reading (device, stored)",
)

# Each device's newest reading (the status page's devices): one row per device, its system id else its
# Bluetooth address (as the outbox's latest_per_device groups them), that keep() writes; among readings
# stored at once (one keep), the one measured last (then the larger key, as keep() picks). A store made
# before this table gets it, filled (DEVICE_FILL, no {where}), when it is opened; forget() fills it again
# for the devices whose newest reading it erased only ({where}: DEVICE_ONLY). {table}, {real}: as SCHEMA's.
DEVICE_TABLE = (
    "CREATE TABLE {table}device (device TEXT PRIMARY KEY, key TEXT NOT NULL REFERENCES {table}reading"
    " ON DELETE CASCADE, stored {real} NOT NULL, time {real} NOT NULL)",
    "CREATE INDEX device_key ON {table}device (key)",
)
# The engine's words ({device}: its expression for a reading's device on `r.payload`; {p[name]}: its
# placeholder for parameter `name`; {any[name]}: "is one of the list parameter `name`"; {lock}: its
# row lock for a SELECT, PostgreSQL's FOR UPDATE).
DEVICE_FILL = (
    "INSERT INTO {table}device (device, key, stored, time) SELECT device, key, stored, time FROM ("
    " SELECT device, key, stored, time, row_number() OVER (PARTITION BY device ORDER BY stored DESC, time DESC,"
    " key DESC) AS n FROM (SELECT {device} AS device, r.key, r.stored, coalesce((SELECT max(m.time) FROM"
    " {table}measurement m WHERE m.key = r.key), 0) AS time FROM {table}reading r{where}) AS readings) AS ranked"
    " WHERE n = 1 AND device IS NOT NULL ON CONFLICT (device) DO NOTHING")  # a row left: the newest is kept
DEVICE_ONLY = " WHERE {device} {any[devices]}"
# Deleting readings (retention's batch, forget): the keys are chosen once (EXPIRED, FORGOTTEN: the
# readings locked), and only those are deleted ({any[keys]}): a keep that commits meanwhile adds readings
# that stay (review R2, finding 2: a second SELECT saw a reading kept in between and took its device row
# with it). The device rows that go with them (ON DELETE CASCADE) are locked first, in device order, as
# keep() locks them, so that a delete and a keep of several devices never deadlock (review R of db9b6c3,
# finding 2); forget() fills again the rows of those devices (their newest reading went), and only those.
EXPIRED = "SELECT key FROM {table}reading WHERE stored < {p[before]} ORDER BY stored, key LIMIT {p[limit]}{lock}"
FORGOTTEN = "SELECT key FROM {table}reading WHERE system = {p[system]} AND value = {p[value]} ORDER BY stored, key{lock}"
LOCK_DEVICES = "SELECT device FROM {table}device WHERE key {any[keys]} ORDER BY device{lock}"
DELETE = "DELETE FROM {table}reading WHERE key {any[keys]}"
DEVICE_NEWER = ("INSERT INTO {table}device AS d VALUES ({p[device]}, {p[key]}, {p[stored]}, {p[time]})"
                " ON CONFLICT (device) DO UPDATE SET key = excluded.key, stored = excluded.stored, time = excluded.time"
                " WHERE (excluded.stored, excluded.time, excluded.key) > (d.stored, d.time, d.key)")
LATEST = ("SELECT r.stored, r.payload, r.key FROM {table}device d JOIN {table}reading r ON r.key = d.key"
          " ORDER BY d.stored DESC, d.time DESC, d.device")
# Readings newest stored first; {where}: one of RECENT_WHERE (a patient's: the measurement index).
RECENT = "SELECT r.stored, r.payload, r.key FROM {table}reading r{where} ORDER BY r.stored DESC, r.key LIMIT {p[limit]}"
RECENT_WHERE = {
    "patient": " WHERE r.key IN (SELECT m.key FROM {table}measurement m WHERE m.system = {p[system]}"
               " AND m.value = {p[value]} AND m.time >= {p[since]})",
    "since": " WHERE EXISTS (SELECT 1 FROM {table}measurement m WHERE m.key = r.key AND m.time >= {p[since]})",
    "all": ""}
RECENT_LIMIT = 1000  # readings recent() gives at the most: as many as the outbox's kept_payloads (the status page)

ReadingRow = tuple[str, str, str, float, str, str | None]  # key, patient system, patient value, stored, payload, device
MeasurementRow = tuple[str, str, str, int, float]  # key, patient system, patient value, code, time


class ViewStoreError(StorageError):
    """The view store (not the queue) cannot be opened, read or written: a StorageError, so that whoever
    stops on the queue's stops on it too, and its own type, so that messages name the real cause (the API's
    503, /readyz, the CLI). Every StorageError of the interface below and of open_view is one of these."""


class ViewStoreRefused(ViewStoreError):
    """The view store's database answered and refused phg, so that waiting will not help and a person must
    act: not phg's view store or another version of it, an unreadable [view] password_file, a failed login
    (no password, a wrong one, an unknown role or database, no pg_hba.conf entry), a server certificate that
    does not verify. `phg run` stops on it at start-up (exit 74, as for a SQLite view store it cannot open)
    where it retries a database that does not answer (review R of db9b6c3, finding 10; phg.daemon)."""


@contextmanager
def _faults() -> Iterator[None]:
    try:
        yield
    except ViewStoreError:
        raise
    except StorageError as exc:
        raise ViewStoreError(str(exc), exc.path) from exc.__cause__


def open_view(settings: ViewSettings | None) -> ViewStore | None:
    """The store `[view]` (or `[smart]`) configures; None when the view is not configured. PostgreSQL
    (and psycopg) only when `[view] url` is set: `phg send` on SQLite starts without it (issue 16). Blocks
    (PostgreSQL: up to its connect timeout): `phg run` calls it in a thread (phg.daemon)."""
    if settings is None:
        return None
    with _faults():
        if settings.url is not None:
            try:
                from phg.viewstore.postgres import PostgresViewStore
            except ImportError as exc:  # as open_queue says it for nats-py (phg.outbox; review R, finding 9)
                from phg.errors import ConfigError

                raise ConfigError(f"{settings.source}: [view] url (PostgreSQL) needs psycopg: "
                                  f"pip install 'phg[hub]' ({exc})") from None
            return PostgresViewStore(settings)
        return ViewStore(settings.path, settings.retention)


def shown_location(settings: ViewSettings) -> str:
    """Where the view store is, for messages: the file, or the URL with any password masked."""
    return str(settings.path) if settings.url is None else shown(settings.url)


def shown(url: str) -> str:
    """`url` with any password masked, for messages (phg.config refuses one in [view] url). Here, not in
    phg.viewstore.postgres: it needs no psycopg."""
    import re

    return re.sub(r"(password=)[^&]*", r"\1***", re.sub(r"^([^/]*//[^/@:]*):[^/@]*@", r"\1:***@", url))


class _Placeholders:
    """A template's {p[name]} and {any[name]}: the engine's `pattern` % name."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def __getitem__(self, name: str) -> str:
        return self.pattern % name


@lru_cache(maxsize=256)  # a few dozen: the templates above, each engine's words, the parts each is given
def _in_words(template: str, words: tuple[str, str, str, str, str, str], parts: tuple[tuple[str, str], ...]) -> str:
    """ViewStore._sql's text: `words` are the engine's TABLE, DEVICE, PAYLOAD_DEVICE, PARAMETER, ANY and LOCK."""
    table, device, payload_device, parameter, any_, lock = words
    named = {"table": table, "device": device, "payload_device": payload_device, "p": _Placeholders(parameter),
             "any": _Placeholders(any_), "lock": lock}
    return template.format(**named, **{name: part.format(**named) for name, part in parts})


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
    TABLE: str  # the tables' name prefix (SCHEMA's {table})
    DEVICE = "r.device"  # a reading's device (DEVICE_FILL's {device}): its column (DEVICE_COLUMN)
    PAYLOAD_DEVICE: str  # a reading's device from its payload, `r.payload` (DEVICE_COLUMN's {payload_device})
    PARAMETER: str  # a named parameter, % its name (":%s", "%%(%s)s")
    ANY: str  # "is one of a list parameter", % its name (DEVICE_ONLY's {any[devices]})
    LOCK: str  # a SELECT's row lock (LOCK_DEVICES' {lock})

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
        self._lock = threading.Lock()  # one connection, used by one thread at a time (_acquire)
        self._held_since = 0.0  # time.monotonic() when the call that holds `_lock` took it

    def _acquire(self) -> None:
        """Take `_lock`, waiting LOCK_WAIT seconds at the most; else raise StorageError ("busy")."""
        import time

        if not self._lock.acquire(timeout=LOCK_WAIT):
            raise StorageError(f"{self.path}: the view store is busy: another call has waited "
                               f"{time.monotonic() - self._held_since:.0f} s on its database", str(self.path))
        self._held_since = time.monotonic()

    @contextmanager
    def _held(self) -> Iterator[None]:
        """`_lock`, taken by _acquire, for the block."""
        self._acquire()
        try:
            yield
        finally:
            self._lock.release()

    # -------------------------------------------------------------------- what each engine gives

    def _transaction(self, work: Callable[[Any], Any]) -> Any:
        """work(connection) in one write transaction, committed durably; on any failure nothing stays."""
        raise NotImplementedError

    def _query(self, work: Callable[[Any], Any]) -> Any:
        """work(connection) outside a write transaction."""
        raise NotImplementedError

    def _insert(self, tx: Any, readings: list[ReadingRow], measurements: dict[str, list[MeasurementRow]]) -> set[str]:
        """Insert `readings` that are not kept yet (by key) and, for those only, their `measurements`; the
        keys of those inserted."""
        raise NotImplementedError

    def _select(self, conn: Any, patients: list[list[str]], since: float, codes: list[int] | None,
                limit: int) -> list[tuple[float, str, str]]:
        """(stored, payload, key) of the readings() query."""
        raise NotImplementedError

    def _sql(self, template: str, **parts: str) -> str:
        """`template` (DEVICE_FILL, LATEST, RECENT, ...) in this engine's words: its TABLE, DEVICE, PAYLOAD_DEVICE,
        PARAMETER, ANY, LOCK; `parts` are in its words too. Formatted once per engine, template and parts
        (_in_words): keep() asks for DEVICE_NEWER once per device."""
        return _in_words(template, (self.TABLE, self.DEVICE, self.PAYLOAD_DEVICE, self.PARAMETER, self.ANY, self.LOCK),
                         tuple(sorted(parts.items())))

    def _list(self, values: list[str]) -> Any:
        """A list parameter (ANY's) in this engine's form."""
        raise NotImplementedError

    def _unbounded(self, tx: Any) -> None:
        """Lift the statement timeout for the rest of transaction `tx` (PostgreSQL's; SQLite has none)."""

    def _add_device_column(self, tx: Any) -> None:
        """DEVICE_COLUMN, in transaction `tx`: a scan of every reading, without the statement timeout."""
        self._unbounded(tx)
        for statement in DEVICE_COLUMN:
            tx.execute(self._sql(statement))

    def _fill_devices(self, tx: Any, devices: list[str] | None = None) -> None:
        """Each device's newest reading, from the readings (DEVICE_FILL), in transaction `tx`: of `devices`
        only when given (their rows are gone), else of every device (the table is new, empty). A scan of
        every reading: without the statement timeout."""
        self._unbounded(tx)
        if devices is None:
            tx.execute(self._sql(DEVICE_FILL, where=""))
        elif devices:
            tx.execute(self._sql(DEVICE_FILL, where=DEVICE_ONLY), {"devices": self._list(devices)})

    def _delete(self, tx: Any, select: str, parameters: dict[str, Any]) -> tuple[int, list[str]]:
        """Delete the readings the SELECT `select` (EXPIRED, FORGOTTEN) gives, chosen once, their device rows
        locked first (LOCK_DEVICES): how many, and the devices whose row went with them (ON DELETE CASCADE), to
        be filled again. Those are exactly the rows LOCK_DEVICES locked, whose reading is among the deleted: a
        row it did not lock cannot come to point at one of them before the DELETE (a keep points a row only at
        a reading it inserted, never at one already kept; forget's fill, which points rows at readings already
        kept, runs under the delete lock, _delete_lock, as retention's batches do, so no delete runs meanwhile),
        and a device of the deleted readings whose row points elsewhere keeps its row, which a fill would leave
        as it is (ON CONFLICT DO NOTHING)."""
        keys = {"keys": self._list([key for (key,) in tx.execute(self._sql(select), parameters).fetchall()])}
        locked = [device for (device,) in tx.execute(self._sql(LOCK_DEVICES), keys).fetchall()]
        return tx.execute(self._sql(DELETE), keys).rowcount, locked

    def _recent(self, conn: Any, patient: list[str] | None, since: float, limit: int) -> list[tuple[float, str, str]]:
        """(stored, payload, key) of the recent() query, newest stored first."""
        where = "patient" if patient else "since" if since != float("-inf") else "all"
        system, value = patient or (None, None)
        return conn.execute(self._sql(RECENT, where=RECENT_WHERE[where]),
                            {"system": system, "value": value, "since": since, "limit": limit}).fetchall()

    def _delete_lock(self, tx: Any, wait: bool) -> bool:
        """Whether this process may delete readings now, in transaction `tx`: a retention batch (not `wait`: it
        is skipped while another intake runs one, or a forget) or a forget (`wait`ing its turn), so that no two
        run at once (PostgreSQL; SQLite runs one write transaction at a time anyway). Two at once: forget's fill
        can point a device row at a reading the other has locked to delete, and its commit then fails the
        foreign key (review V of fd64e8c, finding 7; before it, a deadlock)."""
        return True

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
                device = reading.device.system_id or reading.device.bt_address  # None: no device row, as DEVICE_FILL
                rows[reading.key] = (reading.key, patient.system, patient.value, now, reading.to_json(), device)
                measurements[reading.key] = [(reading.key, patient.system, patient.value, m.code, m.time.timestamp())
                                             for m in reading.metrics]
        expire = self.retention is not None and now >= self._retention_due

        def work(tx: Any) -> None:
            added = self._insert(tx, sorted(rows.values()), measurements)  # in key order: two intakes never deadlock
            newest: dict[str, dict[str, Any]] = {}
            for key in added:
                device = rows[key][5]  # the reading's device (ReadingRow)
                if device is None:
                    continue
                at = max(row[4] for row in measurements[key])
                if device not in newest or (at, key) > (newest[device]["time"], newest[device]["key"]):
                    newest[device] = {"device": device, "key": key, "stored": now, "time": at}
            for device in sorted(newest):  # in device order, as the readings
                tx.execute(self._sql(DEVICE_NEWER), newest[device])

        with _faults():
            self._transaction(work)
        if expire:
            self._retention_due = now + RETENTION_EVERY  # also when the pass fails: tried again a minute later
            self._expire(now - self.retention)

    def _expire(self, before: float) -> None:
        """A retention pass: delete the readings stored before `before`, in at most EXPIRE_BATCHES
        transactions of EXPIRE_BATCH readings, after a keep committed (module docstring: "Retention"). A
        backlog left brings the next pass forward to the next write; a failure is logged, never raised."""
        def batch(tx: Any) -> int | None:
            if not self._delete_lock(tx, wait=False):
                return None  # another intake is running a pass, or a forget
            return self._delete(tx, EXPIRED, {"before": before, "limit": EXPIRE_BATCH})[0]  # older: no newer left

        try:
            for _ in range(EXPIRE_BATCHES):
                deleted = self._transaction(batch)
                if deleted is None or deleted < EXPIRE_BATCH:
                    return
            self._retention_due = self._clock()  # more to delete: the next write goes on
        except Exception as exc:  # noqa: BLE001  (any engine's fault: the keep is committed, the pass waits)
            import logging  # here, as _kept's

            logging.getLogger(__name__).warning("view store %s: a retention pass failed (tried again in %.0f s): %s",
                                                self.path, RETENTION_EVERY, exc)

    def readings(self, patients: Collection[tuple[str, str]], since: datetime | None = None,
                 codes: Collection[int] | None = None, limit: int = 10_000) -> list[Kept]:
        """The kept readings of any of `patients` ((system, value) identifiers) with a measurement of one of
        `codes` (every type when None) at or after `since`, in measurement time order (a reading's earliest
        metric), at most `limit`. A payload that cannot be read is left out (its key is named in the error
        log, never its content)."""
        return self._kept(lambda conn: self._select(
            conn, [list(p) for p in patients], since.timestamp() if since else float("-inf"),
            sorted(codes) if codes is not None else None, limit))

    def latest_per_device(self) -> list[Kept]:
        """Each device's newest kept reading (a device: its system id, else its Bluetooth address, as the
        outbox's latest_per_device groups them), most recently stored first: the status page's devices."""
        return self._kept(lambda conn: conn.execute(self._sql(LATEST)).fetchall())

    def recent(self, patient: tuple[str, str] | None = None, since: datetime | None = None,
               limit: int = RECENT_LIMIT) -> list[Kept]:
        """Kept readings, newest stored first, at most `limit`; of `patient` (system, value) only when given,
        with a measurement at or after `since` when given: what the outbox's kept_payloads gives the status
        page and `GET /v1/patients/{p}/readings`, for as long as `retention` keeps them."""
        return self._kept(lambda conn: self._recent(conn, list(patient) if patient else None,
                                                    since.timestamp() if since else float("-inf"), limit))

    def check(self) -> None:
        """Raise ViewStoreError when the store cannot be written now (/readyz): a write that is rolled back,
        so that an intake whose database became a standby (read-only) is not ready (review R of db9b6c3,
        finding 3; the queue's readiness is a write too, docs/service.md)."""
        with _faults():
            self._query(self._writable)

    def _writable(self, conn: Any) -> None:
        """Raise the engine's error when `conn` cannot write now; writes nothing."""
        raise NotImplementedError

    def _kept(self, query: Callable[[Any], list[tuple[float, str, str]]]) -> list[Kept]:
        """The readings of the rows `query(connection)` gives. A payload that cannot be read is left out
        (its key is named in the error log, never its content)."""
        with _faults():
            found = self._query(query)
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
        """Delete every reading of `patient` (system, value); how many there were. A device whose newest
        reading was theirs gets its newest remaining one (of another patient), recomputed for those devices
        only (review R of db9b6c3, finding 2: not the whole table)."""
        def work(tx: Any) -> int:
            self._delete_lock(tx, wait=True)
            count, devices = self._delete(tx, FORGOTTEN, {"system": patient[0], "value": patient[1]})
            self._fill_devices(tx, devices)
            return count

        with _faults():
            return self._transaction(work)

    def __enter__(self) -> ViewStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()



class PendingView(ViewStore):
    """The view store `phg run` opens (phg.daemon): in a thread, off the event loop, and, while its
    database does not answer, again and again in the background with a bounded back-off, so that phg
    starts anyway. Until then each call raises ViewStoreError naming the store and why it is not open
    (the Intake refuses readings, the API answers 503, /readyz is not ready, naming the view store); from
    `opened` on, each call is the store's."""

    def __init__(self, settings: ViewSettings) -> None:
        self.path = shown_location(settings)
        self.store: ViewStore | None = None
        self.reason = f"{self.path}: opening it"
        self._guard = threading.Lock()
        self._closed = False

    def opened(self, store: ViewStore) -> None:
        """The store is open: calls go to it from now on (closed at once when this one is closed already)."""
        with self._guard:
            if not self._closed:
                self.store, store = store, None
        if store is not None:
            store.close()

    def _open(self) -> ViewStore:
        store = self.store
        if store is None:
            raise ViewStoreError(f"the view store is not open ({self.reason}); phg keeps trying", self.path)
        return store

    def keep(self, readings: Sequence[Reading]) -> None:
        self._open().keep(readings)

    def readings(self, patients: Collection[tuple[str, str]], since: datetime | None = None,
                 codes: Collection[int] | None = None, limit: int = 10_000) -> list[Kept]:
        return self._open().readings(patients, since, codes, limit)

    def latest_per_device(self) -> list[Kept]:
        return self._open().latest_per_device()

    def recent(self, patient: tuple[str, str] | None = None, since: datetime | None = None,
               limit: int = RECENT_LIMIT) -> list[Kept]:
        return self._open().recent(patient, since, limit)

    def check(self) -> None:
        self._open().check()

    def forget(self, patient: tuple[str, str]) -> int:
        return self._open().forget(patient)

    def close(self) -> None:
        with self._guard:
            self._closed, store, self.store = True, self.store, None
        if store is not None:
            store.close()
