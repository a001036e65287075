"""The view store's PostgreSQL engine (phg.viewstore: the rules of both engines), for a hub: every intake
of it keeps readings in one database (`[view] url`), so the view any intake serves shows them all.

The database. phg keeps its tables in the schema `phg_view` of the database the URL names: `reading`,
`measurement`, `device` (phg.viewstore.SCHEMA, DEVICE_TABLE) and `store`, whose one row says the schema
is phg's view store and its version. On connecting phg creates them when the database holds no tables at
all (one process at a time: a transaction-scoped advisory lock), and refuses, with a StorageError naming the URL, a database
that holds other tables and not phg's `store` row (the SQLite engine's application_id check): give phg a
database of its own (`CREATE DATABASE phg_view OWNER phg`). A store of version 1 (before the `device`
table) becomes version 2 at the first connect of a phg that has it: the table is added when missing and
filled anew from its readings; from then on a phg that writes version 1 refuses the store, so a hub's intakes are upgraded
together (one of each version would leave the device list stale).

Durable on commit: each session sets synchronous_commit = on (whatever the server's default), so a keep
has reached the server's WAL on disk when it returns (PostgreSQL 15 docs, 20.5.1 "synchronous_commit").

One connection per store, used by one thread at a time (psycopg 3's sync API: the Intake, the sources and
the view's endpoints call it off the event loop). A call that fails on the database raises StorageError
naming the URL (never a password, never a reading) and the Intake refuses the readings (nothing is lost:
the source sends them again). A connection the server dropped (a restart, a failover) is replaced: the
call is tried once more on a new one, which is harmless (a keep inserts by key, ON CONFLICT DO NOTHING),
and while the server is away every call raises StorageError until it answers again (after a connect that
failed, at once for a back-off: BACKOFF_FIRST, BACKOFF_MAX). Bounded waits:
connecting (CONNECT_TIMEOUT), a statement (the session's statement_timeout, e.g. behind a lock another
intake holds), a write's COMMIT (COMMIT_WAIT, a client-side deadline: the server does not bound it), a lost
network (TCP_USER_TIMEOUT), and the connection while another call of the process uses it
(phg.viewstore.LOCK_WAIT).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from phg.config import ViewSettings
from phg.errors import StorageError
from phg.viewstore import DEVICE_TABLE, SCHEMA, MeasurementRow, ReadingRow, ViewStore, ViewStoreRefused, shown

TABLE = "phg_view."  # phg's schema: every table of the view store is in it
# The row of phg_view.store. Version 2 added the `device` table (review R of db9b6c3, finding 8): a phg
# that writes version 1 leaves it stale, so it refuses a store of version 2 and cannot share it unnoticed.
APPLICATION, VERSION = "phg view store", 2
CREATE_LOCK = 0x70686776  # "phgv": the advisory lock held while one process checks and creates the schema
EXPIRE_LOCK = 0x70686765  # "phge": held by the one intake running a retention batch or a forget (_delete_lock)
CONNECT_TIMEOUT = 10  # seconds (libpq connect_timeout)
# After a connect that failed, calls fail at once for a back-off (1 s, doubling up to 30 s) instead of each
# trying its own connect of up to CONNECT_TIMEOUT (review R of db9b6c3, finding 4: callers queued behind
# the lock for 10 s each and filled asyncio's default thread pool); one connect is tried at a time.
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
TCP_USER_TIMEOUT = 30_000  # ms unacknowledged data may wait before the connection counts as lost (libpq)
# Seconds a write's COMMIT may take. statement_timeout does not cover it: PostgreSQL turns the statement
# timeout off before it commits, and a COMMIT waits, without a limit, for a synchronous standby
# (synchronous_standby_names) that is down (review R2, finding 1; PostgreSQL 15 docs, 27.2.8 "Synchronous
# Replication"). Past it, the call cancels the wait (psycopg's Connection.cancel_safe, from another thread),
# drops the connection and raises StorageError: the outcome is unknown (a cancelled wait leaves the transaction
# committed on the primary only), so the Intake queues nothing and the source sends the readings again (keep
# is idempotent).
COMMIT_WAIT = 10.0
SESSION = ("SET synchronous_commit = on", "SET statement_timeout = '30s'",
           "SET idle_in_transaction_session_timeout = '60s'")  # the last: a frozen intake's locks are freed


class PostgresViewStore(ViewStore):
    """Readings kept for viewing, in a PostgreSQL database (module docstring)."""

    TABLE, PARAMETER = TABLE, "%%(%s)s"
    PAYLOAD_DEVICE = "coalesce(r.payload::jsonb #>> '{device,system_id}', r.payload::jsonb #>> '{device,bt_address}')"
    ANY, LOCK = "= ANY(%%(%s)s)", " FOR UPDATE"

    def __init__(self, settings: ViewSettings, clock: Callable[[], float] = time.time):
        """Connects and checks the database now: a wrong URL, a server that does not answer or another
        program's database stop start-up (StorageError). `clock`: as SqliteViewStore's."""
        if settings.url is None:
            raise ValueError("PostgresViewStore needs [view] url")
        self.path, self._settings = shown(settings.url), settings
        self._start(settings.retention, clock)
        self._conn: psycopg.Connection | None = None
        self._closed = self._connecting = False
        self._backoff, self._retry_at, self._why = 0.0, 0.0, ""
        self._query(lambda conn: None)

    def _connect(self) -> psycopg.Connection:
        settings = self._settings
        extra: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "tcp_user_timeout": TCP_USER_TIMEOUT,
                                 "fallback_application_name": "phg"}
        if settings.sslmode is not None:
            extra["sslmode"] = settings.sslmode
        if settings.ca_file is not None:
            extra["sslrootcert"] = str(settings.ca_file)
        if settings.password_file is not None:
            try:  # read at each connection: a changed password is taken without restarting phg
                extra["password"] = settings.password_file.read_text().rstrip("\r\n")
            except OSError as exc:
                raise ViewStoreRefused(f"{self.path}: cannot read [view] password_file {settings.password_file}: "
                                   f"{exc.strerror}", self.path) from None
        conn = psycopg.connect(settings.url, autocommit=True, **extra)
        try:
            for statement in SESSION:
                conn.execute(statement)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (CREATE_LOCK,))
                self._own(conn)
        except BaseException:
            conn.close()
            raise
        import logging  # here, as phg.viewstore's

        logging.getLogger(__name__).info("view store: connected to %s", self.path)
        return conn

    def _own(self, conn: psycopg.Connection) -> None:
        """Check that the database is phg's view store; make it one when it holds no tables."""
        if conn.execute(f"SELECT to_regclass('{TABLE}store') IS NOT NULL").fetchone()[0]:
            found = conn.execute(f"SELECT application, version FROM {TABLE}store").fetchall()
            if found not in ([(APPLICATION, 1)], [(APPLICATION, VERSION)]):
                raise ViewStoreRefused(f"{self.path}: not phg's view store, or another version of it ({TABLE}store "
                                       f"holds {found!r:.80}; this phg writes version {VERSION})", self.path)
            if not conn.execute(f"SELECT to_regclass('{TABLE}reading_device') IS NOT NULL").fetchone()[0]:
                self._add_device_column(conn)  # a store made before the reading's device column
            missing = not conn.execute(f"SELECT to_regclass('{TABLE}device') IS NOT NULL").fetchone()[0]
            if missing:  # a store made before the device table: add it
                for statement in DEVICE_TABLE:
                    conn.execute(statement.format(table=TABLE, real="DOUBLE PRECISION"))
            if missing or found == [(APPLICATION, 1)]:  # version 1 to 2 too: the device table filled anew
                # a version 1 store made by 42a0c40..6925233 has the table already, and an older intake
                # that shared it wrote no rows to it: its rows are stale (review R2, finding 5)
                conn.execute(f"DELETE FROM {TABLE}device")
                self._fill_devices(conn)
            if found == [(APPLICATION, 1)]:
                conn.execute(f"UPDATE {TABLE}store SET version = %s", (VERSION,))
            return
        tables = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                              " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')"
                              " AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'").fetchone()[0]
        if tables:
            raise ViewStoreRefused(f"{self.path}: not phg's view store (another program's database: {tables} table(s) "
                               "and no phg_view.store): set [view] url to a database of its own", self.path)
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {TABLE.rstrip('.')}")
        for statement in SCHEMA + DEVICE_TABLE:
            conn.execute(statement.format(table=TABLE, real="DOUBLE PRECISION"))
        self._add_device_column(conn)
        conn.execute(f"CREATE TABLE {TABLE}store (application TEXT NOT NULL, version INTEGER NOT NULL)")
        conn.execute(f"INSERT INTO {TABLE}store VALUES (%s, %s)", (APPLICATION, VERSION))

    def _connection(self) -> psycopg.Connection:
        """The connection, made when there is none; called with `_lock` held, which connecting releases
        meanwhile (so close() and other calls do not wait for it: they fail at once, as every call does
        during the back-off after a connect that failed)."""
        if self._conn is not None:
            return self._conn
        wait = self._retry_at - time.monotonic()
        if self._connecting or wait > 0:
            why = "another call is connecting" if self._connecting else self._why
            raise StorageError(f"{self.path}: the view store's database is not answering ({why}); next try in "
                               f"{max(wait, 0):.0f} s", self.path)
        self._connecting = True
        self._lock.release()
        try:
            conn = self._connect()
        except (psycopg.Error, StorageError) as exc:
            self._lock.acquire()
            self._backoff = min(max(self._backoff * 2, BACKOFF_FIRST), BACKOFF_MAX)
            self._retry_at, self._why = time.monotonic() + self._backoff, _first_line(exc)
            raise
        except BaseException:
            self._lock.acquire()
            raise
        else:
            self._lock.acquire()
            self._backoff, self._retry_at = 0.0, 0.0
        finally:
            self._connecting = False
        if self._closed:  # closed while connecting
            conn.close()
            raise StorageError(f"{self.path}: the view store is closed", self.path)
        self._conn = conn
        return conn

    def _run(self, work: Callable[[psycopg.Connection], Any], write: bool) -> Any:
        self._acquire()  # LOCK_WAIT at the most: "busy" (phg.viewstore)
        try:
            return self._attempts(work, write)
        finally:
            if self._closed:  # close() came while this call held the lock: the connection goes now
                self._drop()
            self._lock.release()
            # close() may have come after that check and found the lock held (review R2, finding 4)
            if self._closed and self._conn is not None and self._lock.acquire(blocking=False):
                try:
                    self._drop()
                finally:
                    self._lock.release()

    def _attempts(self, work: Callable[[psycopg.Connection], Any], write: bool) -> Any:
        if self._closed:
            raise StorageError(f"{self.path}: the view store is closed", self.path)
        for again in (True, False):
            reused = self._conn is not None
            try:
                conn = self._connection()
                if not write:
                    return work(conn)
                return self._committed(conn, work)
            except psycopg.Error as exc:
                # a read-only session (SQLSTATE 25006): the server is a standby now (a failover); a
                # new connection may reach the primary (libpq target_session_attrs=read-write)
                lost = (self._conn is None or self._conn.broken or self._conn.closed
                        or isinstance(exc, psycopg.errors.ReadOnlySqlTransaction))
                if lost:
                    self._drop()
                if not (lost and reused and again):  # else: a dropped connection, tried once more anew
                    refused = self._conn is None and _needs_person(exc)
                    raise (ViewStoreRefused if refused else StorageError)(
                        f"{self.path}: the view store's database failed: {_first_line(exc)}", self.path) from None
        raise AssertionError("unreachable")

    def _committed(self, conn: psycopg.Connection, work: Callable[[psycopg.Connection], Any]) -> Any:
        """work(conn) in a transaction whose COMMIT may take COMMIT_WAIT seconds at the most."""
        cancelled = threading.Event()

        def cancel() -> None:
            cancelled.set()
            try:
                conn.cancel_safe(timeout=CONNECT_TIMEOUT)
            except psycopg.Error:
                pass  # the connection is dropped anyway

        deadline = None
        try:
            with conn.transaction():
                result = work(conn)
                deadline = threading.Timer(COMMIT_WAIT, cancel)  # from here on: the COMMIT
                deadline.daemon = True
                deadline.start()
        except psycopg.Error:
            if not cancelled.is_set():
                raise
        finally:
            if deadline is not None:
                deadline.cancel()
        if cancelled.is_set():
            self._drop()
            raise StorageError(f"{self.path}: the view store's database did not confirm the commit within "
                               f"{COMMIT_WAIT:.0f} s (a synchronous standby that is down?): nothing is sure to be "
                               "kept", self.path)
        return result

    def _transaction(self, work: Callable[[psycopg.Connection], Any]) -> Any:
        return self._run(work, write=True)

    def _query(self, work: Callable[[psycopg.Connection], Any]) -> Any:
        return self._run(work, write=False)

    def _insert(self, tx: psycopg.Connection, readings: list[ReadingRow],
                measurements: dict[str, list[MeasurementRow]]) -> set[str]:
        """Two statements for any number of readings (arrays, unnest): one round trip each."""
        if not readings:
            return set()
        added = tx.execute(f"INSERT INTO {TABLE}reading (key, system, value, stored, payload, device) SELECT * FROM"
                           " unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::text[])"
                           " ON CONFLICT (key) DO NOTHING RETURNING key",
                           [list(column) for column in zip(*readings, strict=True)]).fetchall()
        rows = [row for (key,) in added for row in measurements[key]]
        if rows:
            tx.execute(f"INSERT INTO {TABLE}measurement SELECT * FROM unnest(%s::text[], %s::text[], %s::text[],"
                       " %s::int[], %s::float8[])", [list(column) for column in zip(*rows, strict=True)])
        return {key for (key,) in added}

    def _select(self, conn: psycopg.Connection, patients: list[list[str]], since: float, codes: list[int] | None,
                limit: int) -> list[tuple[float, str, str]]:
        return conn.execute(
            f"SELECT r.stored, r.payload, r.key FROM {TABLE}reading r WHERE r.key IN ("
            f" SELECT m.key FROM {TABLE}measurement m JOIN unnest(%(systems)s::text[], %(values)s::text[])"
            " AS p(system, value) ON m.system = p.system AND m.value = p.value"
            " WHERE m.time >= %(since)s AND (%(codes)s::int[] IS NULL OR m.code = ANY(%(codes)s::int[])))"
            f" ORDER BY (SELECT min(time) FROM {TABLE}measurement WHERE key = r.key) LIMIT %(limit)s",
            {"systems": [p[0] for p in patients], "values": [p[1] for p in patients], "since": since,
             "codes": codes, "limit": limit}).fetchall()

    def _list(self, values: list[str]) -> list[str]:
        return values  # a text[] (psycopg adapts a list to an array)

    def _unbounded(self, tx: psycopg.Connection) -> None:
        """SET LOCAL: until the transaction ends (PostgreSQL 15 docs, SET; statement_timeout 0: none)."""
        tx.execute("SET LOCAL statement_timeout = 0")

    def _writable(self, conn: psycopg.Connection) -> None:
        """An UPDATE of no row in a transaction that is rolled back: a read-only session (a standby, or a
        primary demoted by a failover: SQLSTATE 25006, read_only_sql_transaction) or a role without the right
        fails, and the former drops the connection (_run)."""
        with conn.transaction(force_rollback=True):
            conn.execute(f"UPDATE {TABLE}store SET version = version WHERE false")

    def _delete_lock(self, tx: psycopg.Connection, wait: bool) -> bool:
        """A transaction-scoped advisory lock (PostgreSQL 15 docs, 9.27.10 "Advisory Lock Functions"): a
        retention batch does not wait for it (pg_try_advisory_xact_lock: when another intake holds it, this one
        skips its pass), a forget does (pg_advisory_xact_lock, within the statement timeout: a batch or a
        forget holds it for one transaction)."""
        if wait:
            tx.execute("SELECT pg_advisory_xact_lock(%s)", (EXPIRE_LOCK,))
            return True
        return bool(tx.execute("SELECT pg_try_advisory_xact_lock(%s)", (EXPIRE_LOCK,)).fetchone()[0])

    def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except psycopg.Error:
                pass

    def close(self) -> None:
        """Never waits (phg.daemon calls it on the event loop): when a call holds the connection, that call
        drops it as it ends (_run); a connect in progress is closed as it ends (_connection)."""
        self._closed = True
        if self._lock.acquire(blocking=False):
            try:
                self._drop()
            finally:
                self._lock.release()


# libpq's and the server's words for a connection refused by configuration, not by an outage (psycopg
# gives no SQLSTATE for a failed connect: the message is all there is; PostgreSQL 15 docs, 21.15
# "Authentication Problems"). A server starting up or full of connections is not in it: that passes.
NEEDS_PERSON = re.compile(r"password authentication failed|no password supplied|role (?:\"[^\"]*\"|\S+) does not exist"
                          r"|database (?:\"[^\"]*\"|\S+) does not exist|no pg_hba\.conf entry|authentication failed"
                          r"|certificate verify failed|server certificate for .* does not match")
# psycopg's message when a URL names several hosts: one "- host: ..." line (and its continuation) per attempt
# (psycopg 3.3's connection_failed; review R2, finding 6)
ATTEMPTS = "Multiple connection attempts failed. All failures were:"


def _needs_person(exc: psycopg.Error) -> bool:
    """Whether a failed connect needs a person (ViewStoreRefused), not time: with several hosts, only when
    every host's attempt does (one may be refusing phg while the other is only down during a failover)."""
    text = str(exc)
    _, several, attempts = text.partition(ATTEMPTS)
    parts = attempts.split("\n- host: ")[1:] if several else [text]
    return bool(parts) and all(NEEDS_PERSON.search(part) is not None for part in parts)


def _first_line(exc: BaseException) -> str:
    """The first line of a psycopg error (the server's or libpq's primary message: no query parameters)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
