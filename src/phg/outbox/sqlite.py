"""The outbox on one SQLite file (stdlib sqlite3): the embedded default.

Durability. A reading is acknowledged to its source only after `enqueue` returns, so a commit
must survive a killed process *and* a power cut. The file runs in WAL mode (readers never block
the writer, and a commit is one sequential append to the -wal file) with `synchronous=FULL`:
the WAL is fsynced at every commit. With `synchronous=NORMAL` a WAL commit survives a process
crash but the last transactions can roll back after a power loss, which would lose readings the
device already considers uploaded (and may have erased from its memory). The cost, one fsync per
commit, is paid per batch: `enqueue` stores a whole list of readings in one transaction. A lease and
its renewals are the exception: they commit with `synchronous=NORMAL`, written to the WAL (a killed
process keeps them) but not fsynced. A power cut can therefore forget a lease, which puts its items
back to due at once, as an expired lease would; the next fsynced commit (an outcome report, an
enqueue) makes every earlier one durable with it, since the WAL is replayed in order. Each write sets
the mode it needs before it begins, and only a durable write runs retention's purge (`_write`).

Leases. `lease` moves due items to `inflight` with a deadline in `next_attempt` and a fresh random
token in `lease`, which it returns with the items. The outcome reports (`delivered`, `retry_later`,
`dead`, `release`) given that token apply only to items still inflight under it: a worker whose
lease expired and was taken by another cannot undo or repeat the other's outcome. A worker renews
(`renew`) the lease of every batch it holds while it holds it, so a slow send never loses its lease
to a second leaser. Nothing has to run when a worker dies: an inflight item whose deadline has
passed is simply due again, so a crash delays readings by at most one lease and never loses them.
Re-sending is safe by design (PHD IG conditional create), which is what makes "at least once" the
right guarantee here.

Clocks. Due times and lease deadlines are wall-clock times (they outlive the process). A clock that
ran ahead when they were written leaves them far in the future once it is corrected; `lease` and
`next_due` take a `horizon` (the longest delay the caller ever sets, plus a margin) and treat a time
beyond now + horizon as due now, so a clock jump delays nothing by more than that.

Concurrency. Every write runs in `BEGIN IMMEDIATE`, which takes SQLite's single write lock before
reading which items are due; two leasers (threads or processes on the same file) therefore never
take the same item, and a read-then-write transaction can never fail with SQLITE_BUSY on upgrade.
Within a process, one connection is shared by all threads (`check_same_thread=False`) behind a
`threading.Lock`: SQLite admits one writer at a time anyway, each call is a short transaction, and
a single connection can be closed by `close()` from any thread, whereas a connection per thread
would be left open in the pool threads that call it (`asyncio.to_thread`'s, the delivery workers' own).

Storage faults. A full disk, a read-only file system, a file that cannot be opened, is not an
SQLite database or is damaged raise `StorageError` naming the file (sqlite3's own errors say none of
that). The transaction that failed is rolled back (SQLite does so itself after SQLITE_FULL or an
I/O error; `_write` rolls back whatever is still open), so a caller told "failed" really stored
nothing. Other sqlite3 errors (constraints, programming errors) pass through unchanged.

Small disks. SQLite's defaults checkpoint the WAL only once it holds 1,000 pages (about 4 MB) and
never give its space back, so on a smaller file system the WAL alone fills the disk. Here a
PASSIVE checkpoint follows any commit that leaves WAL_CHECKPOINT_PAGES pages in the WAL
(`wal_autocheckpoint`), after which the next writer starts the WAL over, reusing its space, and
truncates it to WAL_LIMIT bytes (`journal_size_limit`): the WAL stays under WAL_LIMIT unless one
transaction alone is bigger (a checkpoint never splits a transaction) or another connection keeps
reading an old snapshot. A write that fails for space runs `wal_checkpoint(TRUNCATE)`, which moves
the WAL into the database and gives the WAL's space back to the file system, and `enqueue` is then
tried once more. None of this touches durability: every commit is fsynced as "Durability" says,
and a checkpoint only copies committed pages (https://www.sqlite.org/wal.html#ckpt).
That bound has a price where the disk has room: a checkpoint costs two more fsyncs and writes each
page again into the database, and a batch of 100 readings into a queue of 20,000 rows fills more
than 64 pages (its readings' keys land on random pages of the key index), so every such commit would
be followed by one (docs/benchmarks.md, section 1). So each outbox write first looks at the free space
of the outbox's file system (statvfs, about a microsecond): from ROOMY_FREE free on, the outbox
keeps SQLite's own checkpoint interval (ROOMY_CHECKPOINT_PAGES) and cuts the WAL back to
ROOMY_WAL_LIMIT; below it, the bound above. A disk that fills between two writes is the full-disk
case above: the write fails, the WAL's space goes back, and the next write sees the small disk.

Retention. A delivered item's payload (health data) is kept `keep_delivered` seconds after its
delivery, then replaced by PURGED (JSON null); the row and its key stay, so the same reading
enqueued again is still recognised as delivered and not sent twice. Writes apply it themselves,
at most once a minute (in every write when `keep_delivered` is 0), in their own transaction. An
outbox opened without a period (None) erases nothing: it does not know what the config says.
The purge holds the write lock that intake and delivery wait for, and the blanked rows stay forever,
so it must not visit them: it searches the partial index item_unpurged, which holds only delivered
rows whose payload is still there, in order of delivery: a pass of retention visits the payloads old
enough to blank and no other row (tests/test_outbox_purge.py counts SQLite's steps); `purge_delivered`
(everything delivered, now) visits each unpurged row. The index is an optimisation, not part of the
schema: every statement is valid without it, an outbox without it (made before it, or by an older
phg, which still opens this file and maintains an index it does not know) gets it at open, and
when the disk is full or the file cannot be written the open logs a warning and goes on without it
(retention then visits every delivered row, as before it) and the next open tries again.

Whose file. The outbox stamps `PRAGMA application_id` (SQLite's own "which program owns this file"
field) with APPLICATION_ID. A database stamped by another program, or an unstamped one that already
holds tables that are not the outbox's, is refused rather than migrated over: the path is probably
wrong, and creating our tables in someone else's database would be a silent mess.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from phg.errors import ConfigError, StorageError
from phg.frozen import Frozen
from phg.secretfile import require_private

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue 16: `phg send` starts without it)
if TYPE_CHECKING:
    from typing import ParamSpec, TypeVar

    P = ParamSpec("P")
    T = TypeVar("T")

QUEUED = "queued"
INFLIGHT = "inflight"
DELIVERED = "delivered"
DEAD = "dead"
STATES = (QUEUED, INFLIGHT, DELIVERED, DEAD)

# A delivered item's payload once kept long enough (valid JSON: `phg queue show` reads it). Every file's item_unpurged
# holds it spelled out: another value needs those indexes dropped and made again, or no purge matches them.
PURGED = "null"
# The rows retention can still change, spelled once for both the index over them and the purge, with PURGED as a
# literal: SQLite uses a partial index only for a query whose WHERE implies the index's
# (https://www.sqlite.org/partialindex.html), which the same text always does; a bound parameter would be matched
# only by its value when the statement is prepared (SQLite's test/index9.test).
_UNPURGED = f"state = 'delivered' AND payload <> '{PURGED}'"
# Retention's purge searched item_state and so visited every delivered row ever kept (the rows outlive their
# payloads) once a minute, holding the write lock; this index holds only the delivered rows whose payload is still
# there, so a pass visits those old enough to blank and nothing else (docs/benchmarks.md section 1). Built at open
# from those rows alone: as large as the payloads kept (keep_delivered), not the file. `state` leads although it
# is constant here: on (updated) alone SQLite, which has no statistics of this file, prefers item_state's
# equality on state to a range on updated (EXPLAIN QUERY PLAN).
_UNPURGED_INDEX = f"CREATE INDEX IF NOT EXISTS item_unpurged ON item (state, updated) WHERE {_UNPURGED}"

# One tuple of statements per schema version; `PRAGMA user_version` records how many have been
# applied, so a later version appends a migration here and older files are upgraded on open.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE item (
            id           INTEGER PRIMARY KEY,
            destination  TEXT NOT NULL,
            key          TEXT NOT NULL,
            payload      TEXT NOT NULL,
            state        TEXT NOT NULL CHECK (state IN ('queued', 'inflight', 'delivered', 'dead')),
            attempts     INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL,  -- queued: when due, inflight: lease deadline
            created      REAL NOT NULL,
            updated      REAL NOT NULL,
            last_error   TEXT,
            result       TEXT,
            UNIQUE (destination, key)
        )""",
        "CREATE INDEX item_due ON item (destination, next_attempt) WHERE state IN ('queued', 'inflight')",
        "CREATE INDEX item_state ON item (state, destination)",
    ),
    (
        # What a source has already collected (e.g. the last glucose record number per device),
        # written in the same transaction as the readings it covers: never ahead of them.
        "CREATE TABLE source_state (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL)",
    ),
    (
        # How often the destination answered "not now" for this item in particular (an HL7 v2 AE/CE),
        # as distinct from attempts, which also count outages: the AE retry limit counts only these.
        "ALTER TABLE item ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # The token of the lease an inflight item is under: outcome reports apply under it only.
        "ALTER TABLE item ADD COLUMN lease TEXT",
    ),
    (
        # No query reads item_due (EXPLAIN QUERY PLAN: `lease` and `next_due` search item_state, which also
        # yields a destination's waiting items in id order), yet every lease rewrote its entry (a changed
        # next_attempt) and every outcome report deleted it: about 2 us per leased item (issue 16,
        # docs/benchmarks.md section 1).
        "DROP INDEX item_due",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

APPLICATION_ID = 0x7068674F  # b"phgO": PRAGMA application_id of a phg outbox file

# SQLite primary result codes that mean "this file cannot be used as it is", and what to tell a person.
_STORAGE_FAULTS = {
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_READONLY: "the outbox is read-only (file system mounted read-only, or file not writable)",
    sqlite3.SQLITE_CANTOPEN: "cannot open the outbox (check that the path is a file and its directory is writable)",
    sqlite3.SQLITE_PERM: "permission denied on the outbox",
    sqlite3.SQLITE_IOERR: "disk I/O error on the outbox",
    sqlite3.SQLITE_NOTADB: "not a phg outbox: the file is not an SQLite database (move it away or set [outbox] path)",
    sqlite3.SQLITE_CORRUPT: "the outbox file is damaged (move it away and check the disk)",
}


def storage_error(path: Path, exc: sqlite3.Error) -> StorageError | None:
    """The StorageError for a sqlite3 error that is a storage fault, naming the file; None otherwise."""
    primary = _fault(path, exc)
    if primary is None:
        return None
    return StorageError(f"{path}: {_STORAGE_FAULTS[primary]} (sqlite: {exc})", str(path))


@contextmanager
def storage_errors(path: Path) -> Iterator[None]:
    """sqlite3 errors that are storage faults become a StorageError naming the file (the view store
    shares this: phg.viewstore)."""
    try:
        yield
    except sqlite3.Error as exc:
        error = storage_error(path, exc)
        if error is None:
            raise
        raise error from exc


def make_directory(path: Path) -> None:
    """Create the directories above `path` that are missing (mode 0700), or a StorageError naming what is in the way:
    a file where a directory must be, else the system's reason. Shared with the view store (phg.viewstore)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        blocking = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
        why = exc.strerror if blocking is None else f"{blocking} is a file, not a directory"
        raise StorageError(f"{path}: cannot create its directory: {why}", str(path)) from None


def create_private(path: Path) -> None:
    """Create `path` empty and readable by its owner only, unless it exists (O_EXCL: never another's file).
    SQLite gives the -wal and -shm files the database's mode. Shared with the view store (phg.viewstore).
    A file that cannot be made (a directory this user may not write, a full disk) is a StorageError naming it."""
    try:
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # made by another process meanwhile
    except OSError as exc:
        raise StorageError(f"{path}: cannot create the file: {exc.strerror}", str(path)) from None


def use_wal(conn: sqlite3.Connection) -> None:
    """WAL with an fsync at every commit, and the WAL bound of the module docstring (small disks), for
    every phg database (the outbox and the view store share one disk)."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, holding SQLite's write lock from its first statement. On any failure,
    COMMIT included, nothing of it stays: SQLite has already rolled back after some errors (SQLITE_FULL,
    SQLITE_IOERR), so only a transaction still open is rolled back here."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the original error is the one to report
                conn.execute("ROLLBACK")
        raise


def _fault(path: Path, exc: BaseException | None) -> int | None:
    """The SQLite primary result code of a storage fault (a key of _STORAGE_FAULTS), else None.
    SQLite reports a full disk met while growing its shared-memory file, or a read-only file system
    met while creating it, as an I/O or "cannot open" error: the file system itself says which."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if code is not None else None
    if primary not in _STORAGE_FAULTS:
        return None
    if primary in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY):
        try:
            fs = os.statvfs(path.parent)
        except OSError:
            pass
        else:
            if fs.f_flag & os.ST_RDONLY:
                primary = sqlite3.SQLITE_READONLY
            elif fs.f_bavail == 0 and primary == sqlite3.SQLITE_IOERR:
                primary = sqlite3.SQLITE_FULL
    return primary


def _beyond(now: float, horizon: float | None) -> float:
    """The wall-clock time past which a stored due time or lease deadline is a clock error."""
    return math.inf if horizon is None else now + horizon


_COLUMNS = ("id, destination, key, payload, state, attempts, next_attempt, created, updated, last_error, result,"
            " refusals, lease")
_BUSY_TIMEOUT_MS = 30_000  # another process holding the write lock: wait, do not fail
WAL_CHECKPOINT_PAGES = 64  # wal_autocheckpoint: 256 KiB of 4 KiB pages (SQLite's default is 1,000)
WAL_LIMIT = 512 * 1024  # journal_size_limit: bytes the WAL is cut back to when it starts over
ROOMY_FREE = 64 * 2**20  # free bytes on the outbox's file system from which the WAL has SQLite's room
ROOMY_CHECKPOINT_PAGES = 1000  # SQLite's default wal_autocheckpoint
ROOMY_WAL_LIMIT = 8 * 2**20  # journal_size_limit then: above what 1,000 pages and a large batch take
_RETENTION_INTERVAL = 60.0  # seconds between two retention passes
_PURGE = (f"UPDATE item SET payload = :purged WHERE {_UNPURGED} AND updated <= :before"
          " AND (:destination IS NULL OR destination = :destination)")


def _once_more_when_full(method: Callable[P, T]) -> Callable[P, T]:
    """Run a write once more when it failed for a full disk: the failed write has already given the
    WAL's space back to the file system (`_write`), which may be room enough now. Safe for any write
    method: the failed call stored nothing."""
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except StorageError as exc:
            if exc.path is None or _fault(Path(exc.path), exc.__cause__) != sqlite3.SQLITE_FULL:
                raise
        return method(*args, **kwargs)
    return wrapper


def delivery_results(ids: Sequence[int], results: Sequence[str | None] | None) -> list[str | None]:
    """What `delivered` records per id (None when the destination said nothing; an id given twice: its first
    result), one per id or ValueError. Shared by both queue engines."""
    if results is None:
        return [None] * len(ids)
    if len(results) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(results)} results")
    first: dict[int, str | None] = {}
    return [first.setdefault(id, result) for id, result in zip(ids, results, strict=True)]


class Item(Frozen):
    """One payload for one destination (a frozen record, phg.frozen). For an inflight item `next_attempt`
    is its lease deadline. `last_error` is the last transient error, or the reason an item is dead;
    `result` is what the destination answered for a delivered item (e.g. the created resources' locations)."""

    id: int
    destination: str
    key: str
    payload: str
    state: str
    attempts: int
    next_attempt: float
    created: float
    updated: float
    last_error: str | None
    result: str | None
    refusals: int = 0  # answers that refused this item for now (HL7 v2 AE/CE), outages not counted
    lease: str | None = None  # the token of the lease it is (or last was) inflight under


class Outbox:
    """A durable per-destination queue of opaque payloads (the canonical reading JSON), keyed by
    the reading's content hash so that enqueueing the same reading twice stores it once.

    All methods are synchronous and thread-safe; async callers run them in threads (the delivery workers in
    a pool of their own, phg.daemon.deliver; the Intake through `asyncio.to_thread`), so that the event loop
    never waits on an fsync.
    """

    def __init__(self, path: Path | str, keep_delivered: float | None = None,
                 clock: Callable[[], float] = time.time):
        """`keep_delivered`: seconds a delivered payload is kept (0: blanked in the write that
        delivers it; None: kept, for a process that does not know the configured period, which
        must not erase early). `clock` tells retention the time (tests pass their own)."""
        self.path = Path(path)
        self.keep_delivered = keep_delivered
        self._clock = clock
        self._retention_due = -math.inf
        self._roomy = False  # use_wal set the tight WAL bound; _bound_wal widens it where there is room
        self._synchronous: str | None = "FULL"  # use_wal's; _write sets the one each write needs
        make_directory(self.path)
        self._lock = threading.Lock()
        with self._storage_errors():
            # The file holds patient identifiers and measurements: readable by its owner only (SQLite gives
            # the -wal and -shm files the database's mode).
            create_private(self.path)
            # isolation_level=None: the sqlite3 module opens no implicit transactions; _write() does.
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            with self._storage_errors():
                self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                self._refuse_foreign()  # before WAL mode, which would already rewrite another program's file
                require_private(self.path, "the outbox (it holds health data)")
                use_wal(self._conn)
                self._migrate()
            self._add_unpurged_index()
        except BaseException:
            self._conn.close()
            raise

    def _migrate(self) -> None:
        # An up-to-date outbox is opened without writing (e.g. `phg queue ls` beside a full disk).
        if self._schema() == (APPLICATION_ID, SCHEMA_VERSION):
            return
        with self._write() as conn:
            version = self._refuse_foreign()  # again, in the transaction: another process may have just written
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path}: outbox schema version {version} is newer than this phg "
                    f"understands ({SCHEMA_VERSION}); upgrade phg"
                )
            for migration in MIGRATIONS[version:]:
                for statement in migration:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def _add_unpurged_index(self) -> None:
        """Add item_unpurged to a file without it (module docstring, "Retention"); on a full disk or a file that
        cannot be written, say so and go on without it (the next open tries again): the previous release opened
        the same file without writing and served it."""
        if self._read("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'item_unpurged'"):
            return
        try:
            with self._write() as conn:
                conn.execute(_UNPURGED_INDEX)
        except StorageError as exc:
            fault = _fault(self.path, exc.__cause__)
            if fault not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY):
                raise
            import logging  # only here: queueing logs nothing otherwise (tests/test_cli_startup.py)

            logging.getLogger(__name__).warning(
                "%s: cannot add the index item_unpurged (%s): retention visits every delivered row until it can; "
                "the next open tries again", self.path, _STORAGE_FAULTS[fault])

    def _refuse_foreign(self) -> int:
        """Raise StorageError unless the file is empty, a phg outbox, or one from before the stamp
        (unstamped, only the outbox's own tables). Returns its schema version."""
        application_id, version = self._schema()
        tables = {row[0] for row in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")}
        if application_id not in (0, APPLICATION_ID):
            raise StorageError(f"{self.path}: not a phg outbox: an SQLite database of another application "
                               f"(application_id {application_id:#x}); phg will not write into it: "
                               "set [outbox] path (PHG_OUTBOX, --outbox) to another file", str(self.path))
        if application_id == 0 and (tables - {"item", "source_state"} or (version == 0 and tables)
                                    or (version > 0 and "item" not in tables)):
            shown = ", ".join(sorted(tables)[:5]) or "none"
            raise StorageError(f"{self.path}: not a phg outbox: an SQLite database with other tables ({shown}); "
                               "phg will not write into it: set [outbox] path (PHG_OUTBOX, --outbox) to another "
                               "file", str(self.path))
        return version

    def _schema(self) -> tuple[int, int]:
        """(application_id, user_version) of the open file."""
        return (self._conn.execute("PRAGMA application_id").fetchone()[0],
                self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _storage_errors(self) -> contextlib.AbstractContextManager[None]:
        return storage_errors(self.path)

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (`transaction`) that also applies retention; after a full disk the WAL
        is truncated so that the space it held serves the next write. `durable=False`: committed without
        an fsync (leases and renewals only: module docstring, "Durability"), and without retention (a purge
        of health data is committed only fsynced: the next durable write runs it)."""
        with self._lock, self._storage_errors():
            self._bound_wal()
            self._set_synchronous("FULL" if durable else "NORMAL")
            try:
                with transaction(self._conn) as conn:
                    yield conn
                    if durable:
                        self._apply_retention()
            except BaseException as exc:
                if _fault(self.path, exc) == sqlite3.SQLITE_FULL:
                    with contextlib.suppress(sqlite3.Error):  # still full: the next write tries again
                        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                raise

    def _set_synchronous(self, mode: str) -> None:
        """Each write sets the fsync mode it needs before it begins (rather than a lease restoring FULL
        after itself), so a durable write never commits at NORMAL: a mode that cannot be set fails the write."""
        if mode != self._synchronous:
            self._synchronous = None  # unknown until SQLite has taken the new one
            self._conn.execute(f"PRAGMA synchronous = {mode}")
            self._synchronous = mode

    def _bound_wal(self) -> None:
        """The WAL bound for the free space the outbox's file system has now (module docstring, "Small
        disks"): SQLite's own while there is room, the tight one below ROOMY_FREE or when statvfs fails."""
        try:
            fs = os.statvfs(self.path)
        except OSError:
            roomy = False
        else:
            roomy = fs.f_bavail * fs.f_frsize >= ROOMY_FREE
        if roomy != self._roomy:
            pages, limit = (ROOMY_CHECKPOINT_PAGES, ROOMY_WAL_LIMIT) if roomy else (WAL_CHECKPOINT_PAGES, WAL_LIMIT)
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
            self._conn.execute(f"PRAGMA journal_size_limit = {limit}")
            self._roomy = roomy

    def _apply_retention(self) -> None:
        """Blank the payloads delivered more than keep_delivered ago, at most once a minute."""
        now = self._clock()
        if self.keep_delivered is None or now < self._retention_due:
            return
        self._blank_delivered(now - self.keep_delivered)
        self._retention_due = now + min(_RETENTION_INTERVAL, self.keep_delivered)

    def _blank_delivered(self, before: float, destination: str | None = None) -> int:
        """Replace with PURGED the payloads of items delivered at or before `before`; return how many.
        Searches item_unpurged (where the file has it): only rows still holding a payload are visited."""
        return self._conn.execute(
            _PURGE, {"purged": PURGED, "before": before, "destination": destination}).rowcount

    def _read(self, sql: str, params: Sequence[object] | Mapping[str, object] = ()) -> list[tuple]:
        with self._lock, self._storage_errors():
            return self._conn.execute(sql, params).fetchall()

    @_once_more_when_full
    def enqueue(
        self,
        destination: str | Sequence[str],
        items: Sequence[tuple[str, str]],
        state: Mapping[str, str] | None = None,
    ) -> list[int]:
        """Store `(key, payload)` pairs for one destination or several, in one transaction, and
        return their ids in input order (destination by destination). A key already stored for a
        destination keeps its row, state and payload untouched (a delivered reading stays
        delivered), and its existing id is returned. `state` (source name -> value) is committed
        in the same transaction, so a source's progress marker is never ahead of its readings."""
        now = time.time()
        ids: list[int] = []
        destinations = [destination] if isinstance(destination, str) else list(destination)
        with self._write() as conn:
            for (key, payload), destination in ((i, d) for d in destinations for i in items):
                cursor = conn.execute(
                    "INSERT INTO item (destination, key, payload, state, next_attempt, created, updated)"
                    " VALUES (?, ?, ?, 'queued', ?, ?, ?) ON CONFLICT (destination, key) DO NOTHING",
                    (destination, key, payload, now, now, now),
                )
                if cursor.rowcount == 1:
                    ids.append(cursor.lastrowid)
                else:
                    row = conn.execute(
                        "SELECT id FROM item WHERE destination = ? AND key = ?", (destination, key)
                    ).fetchone()
                    ids.append(row[0])
            for name, value in (state or {}).items():
                conn.execute(
                    "INSERT INTO source_state (name, value, updated) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                    (name, value, now),
                )
        return ids

    def source_state(self, name: str) -> str | None:
        """The value last committed with `enqueue(..., state={name: value})`, or None."""
        rows = self._read("SELECT value FROM source_state WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def stored_keys(self, destinations: Sequence[str], keys: Sequence[str]) -> set[str]:
        """The keys among `keys` stored (in any state) for every one of `destinations`."""
        rows = self._read(
            "SELECT key FROM item WHERE key IN (SELECT value FROM json_each(?))"
            " AND destination IN (SELECT value FROM json_each(?)) GROUP BY key HAVING count(*) = ?",
            (json.dumps(list(keys)), json.dumps(sorted(set(destinations))), len(set(destinations))),
        )
        return {row[0] for row in rows}

    def lease(self, destination: str, limit: int, lease_seconds: float, now: float | None = None,
              horizon: float | None = None) -> list[Item]:
        """Take up to `limit` due items, oldest first: queued ones whose `next_attempt` has come
        and inflight ones whose lease has expired (their worker died). They become inflight until
        `now + lease_seconds` under one new token (`Item.lease`) and count one more attempt. Atomic,
        so no item goes to two leasers. `horizon`: a due time or deadline later than `now + horizon`
        was set by a clock that ran ahead, and is due now (module docstring, "Clocks")."""
        now = time.time() if now is None else now
        deadline = now + lease_seconds
        token = os.urandom(8).hex()  # what secrets.token_hex(8) returns, without importing secrets (hmac)
        with self._write(durable=False) as conn:
            # RETURNING only what this statement does not set itself: each column returned costs per row.
            rows = conn.execute(
                "UPDATE item SET state = 'inflight', next_attempt = ?, attempts = attempts + 1, updated = ?, lease = ?"
                " WHERE id IN (SELECT id FROM item WHERE destination = ? AND state IN ('queued', 'inflight')"
                " AND (next_attempt <= ? OR next_attempt > ?) ORDER BY id LIMIT ?)"
                " RETURNING id, key, payload, attempts, created, last_error, result, refusals",
                (deadline, now, token, destination, now, _beyond(now, horizon), limit),
            ).fetchall()
        rows.sort()  # RETURNING promises no order; ids are unique
        return [Item(id, destination, key, payload, INFLIGHT, attempts, deadline, created, now, last_error, result,
                     refusals, token) for id, key, payload, attempts, created, last_error, result, refusals in rows]

    def renew(self, token: str, lease_seconds: float) -> int:
        """Extend the lease `token` to `lease_seconds` from now; return how many items are still
        inflight under it (0: its items were all reported, or the lease expired and was taken)."""
        now = time.time()
        with self._write(durable=False) as conn:
            return conn.execute(
                "UPDATE item SET next_attempt = ?, updated = ? WHERE state = 'inflight' AND lease = ?",
                (now + lease_seconds, now, token),
            ).rowcount

    # The outcome reports below apply to inflight items only, and with `token` only to those still
    # under that lease. A report about an item that is no longer in flight (or no longer under the
    # reporter's lease) is stale, e.g. a worker whose lease expired reporting after another worker
    # delivered the item, and is ignored rather than allowed to undo a delivery or a dead-letter.
    # `token=None` (tools, tests) applies to any inflight item. Each report is one statement for the whole
    # batch, the ids passed as one JSON array (`delivered`: one JSON object, id -> result, which json_each
    # reads without a second parse per row); `+state` keeps SQLite on the ids' primary key.

    def delivered(self, ids: Sequence[int], results: Sequence[str | None] | None = None, *,
                  token: str | None = None) -> None:
        """Mark items delivered, recording per item what the destination answered (an id given twice: its
        first result)."""
        by_id = json.dumps(dict(zip(ids, delivery_results(ids, results), strict=True)))
        with self._write() as conn:
            conn.execute(
                "UPDATE item SET state = 'delivered', result = r.value, updated = :now"
                " FROM json_each(:by_id) AS r WHERE item.id = CAST(r.key AS INTEGER)"
                " AND +item.state = 'inflight' AND (:token IS NULL OR item.lease = :token)",
                {"now": time.time(), "by_id": by_id, "token": token},
            )

    def retry_later(self, ids: Sequence[int], delay: float, error: str, refused: bool = False, *,
                    token: str | None = None) -> None:
        """A transient failure: queue the items again, due in `delay` seconds. `refused`: the
        destination answered and refused these items for now (counted in `refusals`)."""
        now = time.time()
        self._update_inflight(
            ids, token, "state = 'queued', next_attempt = ?, last_error = ?, updated = ?, refusals = refusals + ?",
            (now + delay, error, now, int(refused)),
        )

    def dead(self, ids: Sequence[int], reason: str, *, token: str | None = None) -> None:
        """A permanent failure: park the items with the reason (e.g. OperationOutcome diagnostics)."""
        self._update_inflight(ids, token, "state = 'dead', last_error = ?, updated = ?", (reason, time.time()))

    def release(self, ids: Sequence[int], *, token: str | None = None) -> None:
        """Give leased items back, due now, without counting the attempt: delivery stopped for a
        reason that is not theirs (e.g. the destination refused our credentials)."""
        now = time.time()
        self._update_inflight(
            ids, token, "state = 'queued', next_attempt = ?, attempts = max(attempts - 1, 0), updated = ?", (now, now)
        )

    def _update_inflight(self, ids: Sequence[int], token: str | None, assignments: str,
                         params: tuple[object, ...]) -> None:
        with self._write() as conn:
            conn.execute(
                f"UPDATE item SET {assignments} WHERE id IN (SELECT value FROM json_each(?))"
                " AND +state = 'inflight' AND (? IS NULL OR lease = ?)",
                (*params, json.dumps(list(ids)), token, token),
            )

    def get(self, id: int) -> Item | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM item WHERE id = ?", (id,))
        return Item(*rows[0]) if rows else None

    def items(self, destination: str | None = None, state: str | None = None, limit: int = 100) -> list[Item]:
        """Items oldest first, optionally of one destination and/or state."""
        rows = self._read(
            f"SELECT {_COLUMNS} FROM item WHERE (:destination IS NULL OR destination = :destination)"
            " AND (:state IS NULL OR state = :state) ORDER BY id LIMIT :limit",
            {"destination": destination, "state": state, "limit": limit},
        )
        return [Item(*row) for row in rows]

    def states(self, keys: Sequence[str]) -> dict[str, dict[str, str]]:
        """Per reading key among `keys`: its state at each destination it is queued for."""
        states: dict[str, dict[str, str]] = {}
        for key, destination, state in self._read(
                "SELECT key, destination, state FROM item WHERE key IN (SELECT value FROM json_each(?))",
                (json.dumps(list(keys)),)):
            states.setdefault(key, {})[destination] = state
        return states

    def counts(self, destination: str | None = None) -> dict[str, int]:
        """Number of items in each state (every state present, zero included)."""
        rows = self._read(
            "SELECT state, count(*) FROM item WHERE :destination IS NULL OR destination = :destination"
            " GROUP BY state", {"destination": destination},
        )
        return dict.fromkeys(STATES, 0) | dict(rows)

    # What the gateway has seen, for the status page and the service API: read-only queries over the kept
    # payloads. A payload blanked by retention (module docstring, "Retention": keep_delivered, 7 days by
    # default) no longer says whose reading it was, so these see as far back as the payloads are kept.
    # SQLite gives a bare column of an aggregate query with min() or max() the value of the row holding
    # that extreme (https://www.sqlite.org/lang_select.html#bareagg).

    def latest_per_device(self) -> list[tuple[float, str]]:
        """For each device (system id, else Bluetooth address) of a kept payload: when its newest reading
        was stored and that payload, most recently heard from first."""
        return [tuple(row) for row in self._read(
            "SELECT max(created), payload FROM item WHERE payload <> ?"
            " GROUP BY coalesce(json_extract(payload, '$.device.system_id'), json_extract(payload, '$.device.bt_address'))"
            " ORDER BY 1 DESC", (PURGED,))]

    def kept_payloads(self, patient: tuple[str, str] | None = None, limit: int = 1000) -> list[tuple[float, str]]:
        """Kept payloads, each reading once however many destinations it is queued for, with when it was
        first stored, newest first; only those of `patient` (identifier system, value) when given."""
        system, value = patient or (None, None)
        return [tuple(row) for row in self._read(
            "SELECT min(created), payload FROM item WHERE payload <> :purged AND (:system IS NULL OR"
            " (json_extract(payload, '$.patient.system') = :system"
            " AND json_extract(payload, '$.patient.value') = :value))"
            " GROUP BY key ORDER BY 1 DESC LIMIT :limit",
            {"purged": PURGED, "system": system, "value": value, "limit": limit})]

    def activity(self, ends: Sequence[float], step: float) -> list[tuple[str, float, int, int]]:
        """Per destination and per interval of `step` seconds ending at each of `ends`: (destination, end,
        items delivered in the interval, items waiting (queued or inflight) at its end). Rebuilt from the
        rows: an item waited from when it was stored until it was delivered or dead (`updated`), so a dead
        item queued again by `retry` counts as waiting since it was first stored."""
        return [tuple(row) for row in self._read(
            "SELECT destination, edge.value,"
            " sum(state = 'delivered' AND updated > edge.value - ? AND updated <= edge.value),"
            " sum(created <= edge.value AND NOT (state IN ('delivered', 'dead') AND updated <= edge.value))"
            " FROM json_each(?) AS edge, item WHERE state IN ('queued', 'inflight') OR updated > ?"
            " GROUP BY destination, edge.value ORDER BY destination, edge.value",
            (step, json.dumps(list(ends)), min(ends, default=0) - step))]

    def retry(self, id: int) -> int | None:
        """Queue a dead (or queued) item again, due now, with a fresh attempt count so that the
        worker's backoff and attempt limit start over. Returns the id it now waits under (here the
        same; on JetStream a new one), None if the item is not dead or queued."""
        now = time.time()
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE item SET state = 'queued', next_attempt = ?, attempts = 0, refusals = 0, updated = ?"
                " WHERE id = ? AND state IN ('dead', 'queued')",
                (now, now, id),
            )
            return id if cursor.rowcount == 1 else None

    def purge_dead(self, destination: str | None = None) -> int:
        """Delete dead items; return how many."""
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM item WHERE state = 'dead' AND (:destination IS NULL OR destination = :destination)",
                {"destination": destination},
            )
            return cursor.rowcount

    def purge_delivered(self, destination: str | None = None) -> int:
        """Blank the payloads of all delivered items now, whatever keep_delivered says; return how
        many. Their rows and keys stay: the same reading enqueued again is still known as delivered."""
        with self._write():
            return self._blank_delivered(math.inf, destination)

    def pause(self, destination: str, seconds: float) -> None:
        """A Retry-After for every worker of `destination` (phg.outbox.queue.Queue): shared on JetStream,
        where workers on many machines send to one server. Here nothing is stored: each worker waits out
        the Retry-After it was given (phg.delivery.worker), and the others learn theirs from the server."""

    def next_due(self, destination: str, horizon: float | None = None) -> float | None:
        """When the next item of `destination` becomes due (a queued item's next attempt or an
        inflight item's lease deadline), or None when nothing is waiting: the worker sleeps until then.
        A time beyond now + `horizon` counts as now, as in `lease`."""
        now = time.time()
        rows = self._read(
            "SELECT min(CASE WHEN next_attempt > ? THEN ? ELSE next_attempt END) FROM item"
            " WHERE destination = ? AND state IN ('queued', 'inflight')",
            (_beyond(now, horizon), now, destination),
        )
        return rows[0][0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
