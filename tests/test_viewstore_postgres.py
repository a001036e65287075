"""The view store on PostgreSQL (phg.viewstore.postgres) as a hub's intakes share it: two stores (two
intakes) on one database see each other's readings and keep a reading sent to both at once once; phg's
schema is made once when two start together, and another program's database is refused; a server that goes
away makes each call raise StorageError naming the URL (never the password, never a reading) until it is
back, and the next call then works without restarting phg (after a restart between two calls, the first
call already works). The contract both engines share:
tests/test_viewstore.py (its `engine` fixture)."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from phg.config import ViewSettings
from phg.errors import StorageError
from phg.model import Device, Metric, PatientRef, Reading
from phg.viewstore import ViewStore, open_view
from phg.viewstore.postgres import PostgresViewStore
from postgres_db import ADMIN_URL, postgres_url, private_postgres  # noqa: F401  (fixtures)

ANN = PatientRef("urn:oid:1.2.3", "pt-7731")
T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)


def reading(value: int, minutes: float = 0, patient: PatientRef = ANN) -> Reading:
    metric = Metric(code=150456, value=Decimal(value), unit="%", time=T0 + timedelta(minutes=minutes))
    return Reading(Device(system_id="0A1B2C3D4E5F6001"), patient, (metric,))


def store(url: str, **settings) -> ViewStore:
    return open_view(ViewSettings(None, url=url, **settings))


def counts(url: str) -> tuple[int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return tuple(conn.execute(f"SELECT count(*) FROM phg_view.{table}").fetchone()[0]
                     for table in ("reading", "measurement"))


def values(found: ViewStore) -> list[int]:
    return [int(k.reading.metrics[0].value) for k in found.readings([(ANN.system, ANN.value)])]


def test_two_intakes_on_one_database_see_each_others_readings(postgres_url):  # noqa: F811
    with store(postgres_url) as a, store(postgres_url) as b:
        assert isinstance(a, PostgresViewStore) and a.path == postgres_url
        a.keep([reading(97, 0)])
        b.keep([reading(95, 1)])
        assert values(a) == values(b) == [97, 95]
        assert b.forget((ANN.system, ANN.value)) == 2
        assert values(a) == []


def test_the_same_readings_kept_by_two_intakes_at_once_are_kept_once(postgres_url):  # noqa: F811
    """Two stores on an empty database start at once (phg's schema is made once), then keep the same 200
    readings at the same moment, in opposite order, ten times over: each is kept once, no call fails (the
    keys are inserted in key order: the two transactions never deadlock)."""
    stores: list[ViewStore] = [None, None]  # type: ignore[list-item]
    start = threading.Barrier(2, timeout=30)
    failures: list[BaseException] = []

    def intake(n: int) -> None:
        try:
            start.wait()
            stores[n] = store(postgres_url)
            for round_ in range(10):
                batch = [reading(90 + i % 10, round_ * 1000 + i) for i in range(200)]
                start.wait()
                stores[n].keep(batch if n == 0 else batch[::-1])
        except BaseException as exc:  # noqa: BLE001  (reported below, with the other thread's)
            failures.append(exc)
            start.abort()

    threads = [threading.Thread(target=intake, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert not failures, failures
        assert not any(thread.is_alive() for thread in threads)
        assert counts(postgres_url) == (2000, 2000)
        assert len(stores[1].readings([(ANN.system, ANN.value)], limit=5000)) == 2000
    finally:
        for one in stores:
            if one is not None:
                one.close()


def test_another_programs_database_is_refused_naming_the_url(postgres_url):  # noqa: F811
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(StorageError, match=r"phg_view_[0-9a-f]+: not phg's view store \(another program's") as info:
        store(postgres_url)
    assert info.value.path == postgres_url
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE notes")
    store(postgres_url).close()  # an empty database becomes phg's
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE phg_view.store SET version = 3")
    with pytest.raises(StorageError, match=r"another version of it"):
        store(postgres_url)


def test_a_server_phg_cannot_verify_is_refused(postgres_url):  # noqa: F811
    """sslmode=verify-full (what phg asks for off loopback) reaches libpq: without a CA that signed the
    server's certificate (or without TLS on the server) there is no connection."""
    with pytest.raises(StorageError, match=r"the view store.s database failed: .*(SSL|certificate)"):
        store(postgres_url, sslmode="verify-full")


def test_a_server_that_goes_away_and_comes_back(private_postgres, tmp_path, caplog):  # noqa: F811
    password = tmp_path / "view-password"
    password.write_text(private_postgres.PASSWORD + "\n")
    password.chmod(0o600)
    with pytest.raises(StorageError, match="no password supplied"):
        store(private_postgres.url)  # the server asks for one: password_file is what answers
    with caplog.at_level(logging.INFO), store(private_postgres.url, password_file=password) as view:
        view.keep([reading(97, 0)])
        private_postgres.stop()
        for _ in range(2):  # every call while it is away, not only the first
            with pytest.raises(StorageError) as info:
                view.keep([reading(96, 1)])
            assert str(info.value).startswith((f"{private_postgres.url}: the view store's database failed",
                                               f"{private_postgres.url}: the view store's database is not answering"))
            assert info.value.path == private_postgres.url
        with pytest.raises(StorageError):
            view.readings([(ANN.system, ANN.value)])
        private_postgres.start()
        time.sleep(max(0.0, view._retry_at - time.monotonic()))  # the back-off after the failed connect
        view.keep([reading(95, 2)])  # the same store: a new connection
        assert values(view) == [97, 95]
        private_postgres.stop()  # a restart between two calls: the dropped connection is replaced, no call fails
        private_postgres.start()
        view.keep([reading(94, 3)])
        assert values(view) == [97, 95, 94]
    logged = caplog.text
    assert private_postgres.PASSWORD not in logged and ANN.value not in logged and "97" not in logged


def test_a_read_only_database_is_not_ready_and_its_connection_is_replaced(postgres_url):  # noqa: F811
    """Review R of db9b6c3, finding 3: check() (/readyz) proves the store can be written. A database that
    became read-only (as a demoted primary, a standby, answers) fails it, and the read-only error (SQLSTATE
    25006) drops the connection: once the database is writable again, the same store answers."""
    name = postgres_url.rsplit("/", 1)[1]
    with store(postgres_url) as view:
        view.check()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                         " AND pid <> pg_backend_pid()", (name,))  # the session now: read-only
        with pytest.raises(StorageError, match="read-only transaction"):
            view.check()
        with pytest.raises(StorageError, match="read-only transaction"):
            view.keep([reading(97, 0)])
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
        view.check()  # a new connection: writable again
        view.keep([reading(97, 0)])
        assert values(view) == [97]


def test_the_sqlite_store_is_not_ready_while_another_process_holds_its_write_lock(tmp_path):
    import sqlite3

    with ViewStore(tmp_path / "view.sqlite") as view:
        view.check()
        other = sqlite3.connect(tmp_path / "view.sqlite", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        view._conn.execute("PRAGMA busy_timeout = 100")
        try:
            with pytest.raises(StorageError, match="view store"):
                view.check()
        finally:
            other.execute("ROLLBACK")
            other.close()
        view.check()


def test_the_device_fill_and_forget_run_past_the_statement_timeout(postgres_url, monkeypatch):  # noqa: F811
    """Review R of db9b6c3, finding 2: filling the device table (at the first open of a store made before it,
    and in forget) scans every reading; it runs without the statement timeout (here 100 ms, for 60,000
    readings), so a large store still opens and a patient can still be erased."""
    import phg.viewstore.postgres as postgres

    other = Reading(Device(system_id="0A1B2C3D4E5F6002"), PatientRef("urn:oid:1.2.3", "bob"),
                    reading(91, 0).metrics)
    with store(postgres_url) as view:
        view.keep([reading(97, 0)])
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO phg_view.reading SELECT md5(i::text), 'urn:oid:1.2.3', 'bob', 1000 + i, %s"
                     " FROM generate_series(1, 60000) i", (other.to_json(),))
        conn.execute("DROP TABLE phg_view.device")  # a store made before the device table
        conn.execute("ALTER TABLE phg_view.reading DROP COLUMN device")  # and the reading's device column
    monkeypatch.setattr(postgres, "SESSION", ("SET synchronous_commit = on", "SET statement_timeout = '100ms'"))
    with store(postgres_url) as view:
        assert sorted(k.reading.device.system_id for k in view.latest_per_device()) == [
            "0A1B2C3D4E5F6001", "0A1B2C3D4E5F6002"]
        assert view.forget((ANN.system, ANN.value)) == 1
        assert [k.reading.device.system_id for k in view.latest_per_device()] == ["0A1B2C3D4E5F6002"]


def test_a_database_that_does_not_answer_holds_one_caller_only(postgres_url, monkeypatch):  # noqa: F811
    """Review R of db9b6c3, finding 4: a server that accepts and never answers (a partition). One call tries
    to connect (up to the connect timeout); the others, and every call during the back-off after it
    failed, fail at once naming the URL; close() does not wait for the connect in progress."""
    import phg.viewstore.postgres as postgres

    monkeypatch.setattr(postgres, "CONNECT_TIMEOUT", 2)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(50)
    view = store(postgres_url)
    try:
        view._settings = ViewSettings(None, url=f"postgresql://postgres@127.0.0.1:{hole.getsockname()[1]}/x")
        view._drop()  # the server moved away
        start, ended, errors = time.monotonic(), [], []

        def call() -> None:
            try:
                view.check()
            except StorageError as exc:
                ended.append(time.monotonic() - start)
                errors.append(str(exc))

        threads = [threading.Thread(target=call) for _ in range(3)]
        for thread in threads:
            thread.start()
            time.sleep(0.2)
        for thread in threads[1:]:
            thread.join(timeout=1)
            assert not thread.is_alive()  # failed at once: another call is connecting
        threads[0].join(timeout=10)
        assert sorted(ended)[:2] < [1.0, 1.0] and 1.5 < max(ended) < 5, ended
        assert sum("another call is connecting" in e for e in errors) == 2, errors
        before = time.monotonic()
        with pytest.raises(StorageError, match=re.escape(postgres_url) + r": the view store's database is not "
                                               r"answering \(connection timeout expired\); next try in 1 s"):
            view.check()  # the back-off: at once
        assert time.monotonic() - before < 1.0  # not the 1.5 s and more of a connect
        time.sleep(max(0.0, view._retry_at - time.monotonic()))
        connecting = threading.Thread(target=call)
        connecting.start()
        time.sleep(0.3)
        before = time.monotonic()
        view.close()  # a connect in progress: close() does not wait for it
        assert time.monotonic() - before < 1.0
        connecting.join(timeout=10)
    finally:
        view.close()
        hole.close()


def test_phg_run_stops_on_a_database_that_refuses_phg_and_retries_one_that_does_not_answer(postgres_url):  # noqa: F811
    """Review R of db9b6c3, finding 10: at start-up (phg.daemon), a database that answered and refused phg
    (here one that does not exist, and another program's) needs a person: ViewStoreRefused, raised at once
    (exit 74, as SQLite); one that does not answer is tried again until it does or phg stops."""
    import asyncio

    from phg.daemon import open_view_when_reachable
    from phg.viewstore import PendingView, ViewStoreRefused

    async def start(url: str, wait: float) -> list[str]:
        settings = ViewSettings(None, url=url)
        stop, view = asyncio.Event(), PendingView(settings)
        asyncio.get_running_loop().call_later(wait, stop.set)
        await open_view_when_reachable(settings, view, stop)
        return [view.reason]

    with pytest.raises(ViewStoreRefused, match="database .* does not exist"):
        asyncio.run(start(postgres_url + "_missing", 30))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(ViewStoreRefused, match="not phg's view store"):
        asyncio.run(start(postgres_url, 30))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: retried until stop
    assert "Connection refused" in asyncio.run(start(f"postgresql://postgres@127.0.0.1:{port}/x", 1.5))[0]


def test_a_version_1_store_becomes_version_2_with_its_device_table(postgres_url):  # noqa: F811
    """Review R of db9b6c3, finding 8: the device table came with version 2; a version 1 store (made before
    it) gets it, filled, and version 2 at the first connect, so an older phg, which writes no device rows,
    refuses it instead of leaving the device list stale."""
    with store(postgres_url) as view:
        view.keep([reading(97, 0)])
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM phg_view.store").fetchall() == [(2,)]
        conn.execute("DROP TABLE phg_view.device")
        conn.execute("UPDATE phg_view.store SET version = 1")
    with store(postgres_url) as view:
        assert [k.reading.device.system_id for k in view.latest_per_device()] == ["0A1B2C3D4E5F6001"]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM phg_view.store").fetchall() == [(2,)]


def test_one_intake_at_a_time_runs_a_retention_pass(postgres_url):  # noqa: F811
    """Review R of db9b6c3, finding 1: while another intake holds the retention lock (EXPIRE_LOCK), this
    one skips its pass, keeps its readings and tries again a minute later."""
    from phg.viewstore.postgres import EXPIRE_LOCK

    now = [1_000_000.0]
    with PostgresViewStore(ViewSettings(None, 86400, url=postgres_url), clock=lambda: now[0]) as view:
        view.keep([reading(97, 0)])
        now[0] += 86400 + 61
        with psycopg.connect(postgres_url) as other:  # a transaction that holds the lock
            other.execute("SELECT pg_advisory_xact_lock(%s)", (EXPIRE_LOCK,))
            view.keep([reading(96, 1)])
            assert values(view) == [97, 96] and view._retention_due == now[0] + 60
        now[0] += 61
        view.keep([reading(95, 2)])
        assert values(view) == [96, 95]


def test_forget_deletes_only_the_readings_it_chose_and_keeps_a_device_kept_meanwhile(postgres_url):  # noqa: F811
    """Review R2, finding 2: a keep of another intake that commits while forget() runs (here: just before its
    DELETE) adds a reading that stays, and the device row of that reading with it; before, the DELETE chose
    the keys again, erased that reading and, through the cascade, the device of another patient's readings."""
    import phg.viewstore as rules

    bob, scale = PatientRef("urn:oid:1.2.3", "bob"), Device(system_id="0A1B2C3D4E5F6009")
    with store(postgres_url) as a, store(postgres_url) as b:
        b.keep([reading(97, 0)])
        b.keep([reading(70, 1, bob)._replace(device=scale)])  # the scale's newest: Bob's
        sql = a._sql

        def racing(template: str, **parts: str) -> str:
            if template == rules.DELETE:  # another intake keeps Ann on the scale, committed now
                b.keep([reading(71, 2)._replace(device=scale)])
            return sql(template, **parts)

        a._sql = racing
        assert a.forget((ANN.system, ANN.value)) == 1
        assert sorted(k.reading.device.system_id for k in b.latest_per_device()) == [scale.system_id]
        assert [int(k.reading.metrics[0].value) for k in b.recent()] == [71, 70]


def test_a_commit_that_waits_for_a_synchronous_standby_ends_and_holds_up_no_other_call(
        private_postgres, tmp_path, monkeypatch):  # noqa: F811
    """Review R2, finding 1: with a synchronous standby that is down, a keep's COMMIT waits without a limit
    (statement_timeout does not cover it). The keep ends after COMMIT_WAIT with StorageError (its connection
    dropped), and meanwhile another call of the process fails after LOCK_WAIT ("busy") instead of waiting."""
    import phg.viewstore
    import phg.viewstore.postgres

    password = tmp_path / "view-password"
    password.write_text(private_postgres.PASSWORD + "\n")
    password.chmod(0o600)
    monkeypatch.setattr(phg.viewstore.postgres, "COMMIT_WAIT", 5.0)
    monkeypatch.setattr(phg.viewstore, "LOCK_WAIT", 0.5)
    with store(private_postgres.url, password_file=password) as view:
        view.keep([reading(97, 0)])  # the schema is made before the standby is required
        with psycopg.connect(private_postgres.admin_url, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
            admin.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        outcome: list[BaseException | None] = []

        def keep() -> None:
            try:
                view.keep([reading(96, 1)])
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        started = time.monotonic()
        thread = threading.Thread(target=keep, daemon=True)
        thread.start()
        time.sleep(0.5)
        with pytest.raises(StorageError, match="busy: another call has waited"):
            view.check()
        assert time.monotonic() - started < 4.0  # 0.5 + LOCK_WAIT, not the keep's COMMIT_WAIT (5 s)
        thread.join(15)
        assert not thread.is_alive() and isinstance(outcome[0], StorageError), outcome
        assert "did not confirm the commit within 5 s" in str(outcome[0]) and view._conn is None
        with psycopg.connect(private_postgres.admin_url, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
            admin.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        view.keep([reading(96, 1)])  # the source sends it again: kept once
        assert values(view) == [97, 96]


def test_a_version_1_store_with_a_stale_device_table_gets_it_filled_anew(postgres_url):  # noqa: F811
    """Review R2, finding 5: a version 1 store made by 42a0c40..6925233 has the device table already; an
    older intake that shared it wrote no rows, so the move to version 2 empties and fills it again."""
    with store(postgres_url) as view:
        view.keep([reading(97, 0)])
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DELETE FROM phg_view.device")  # an older intake's keeps: no device row
        conn.execute("UPDATE phg_view.store SET version = 1")
    with store(postgres_url) as view:
        assert [k.reading.device.system_id for k in view.latest_per_device()] == ["0A1B2C3D4E5F6001"]


def test_a_connection_made_while_the_store_is_closed_is_closed(postgres_url):  # noqa: F811
    """Review R2, finding 4: close() during a connect (which releases the store's lock) does not wait for it,
    and the connection that connect then makes is closed at once, not kept open until the process exits."""
    view = store(postgres_url)
    view._drop()  # the next call connects
    connect, connecting, go_on, made = view._connect, threading.Event(), threading.Event(), []

    def slow_connect() -> psycopg.Connection:
        connecting.set()
        go_on.wait(10)
        made.append(connect())
        return made[0]

    view._connect = slow_connect
    failed: list[BaseException] = []

    def check() -> None:
        try:
            view.check()
        except StorageError as exc:
            failed.append(exc)

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    assert connecting.wait(10)
    started = time.monotonic()
    view.close()  # never waits for the connect
    assert time.monotonic() - started < 3  # the connect waits up to 10 s
    go_on.set()
    thread.join(10)
    assert "the view store is closed" in str(failed[0])
    assert made[0].closed and view._conn is None


def test_forget_finds_a_devices_readings_by_an_index(postgres_url):  # noqa: F811
    """Review R2, finding 3: forget() fills the rows of a device again from that device's readings through the
    index on the reading's device column, not by reading every payload (5 s for 400k readings)."""
    from phg.viewstore import DEVICE_FILL, DEVICE_ONLY

    other = Reading(Device(system_id="0A1B2C3D4E5F6002"), PatientRef("urn:oid:1.2.3", "bob"), reading(91, 0).metrics)
    with store(postgres_url) as view:
        view.keep([reading(97, 0), other])
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            assert conn.execute("SELECT device FROM phg_view.reading ORDER BY device").fetchall() == [
                ("0A1B2C3D4E5F6001",), ("0A1B2C3D4E5F6002",)]
            conn.execute("INSERT INTO phg_view.reading SELECT md5(i::text), 'urn:oid:1.2.3', 'bob', 1000 + i, %s,"
                         " '0A1B2C3D4E5F6002' FROM generate_series(1, 20000) i", (other.to_json(),))
            conn.execute("ANALYZE phg_view.reading")
            plan = conn.execute("EXPLAIN " + view._sql(DEVICE_FILL, where=DEVICE_ONLY),
                                {"devices": ["0A1B2C3D4E5F6001"]}).fetchall()
        assert "reading_device" in str(plan), plan
        assert view.forget((ANN.system, ANN.value)) == 1
        assert [k.reading.device.system_id for k in view.latest_per_device()] == ["0A1B2C3D4E5F6002"]


def test_with_several_hosts_only_a_refusal_by_every_host_needs_a_person(postgres_url):  # noqa: F811
    """Review R2, finding 6: with `db1,db2`, one host refusing phg (here: no such database) while the other is
    only down (a failover) is an outage phg waits out, not ViewStoreRefused; a quoted name with a space counts."""
    from phg.viewstore.postgres import _needs_person

    def failure(url: str) -> psycopg.Error:
        with pytest.raises(psycopg.Error) as info:
            psycopg.connect(url, connect_timeout=5)
        return info.value

    port = socket.socket()
    port.bind(("127.0.0.1", 0))  # a port nothing listens on (bound, not listening: refused)
    down = port.getsockname()[1]
    try:
        assert _needs_person(failure("postgresql://postgres@127.0.0.1:5432/no_such_phg_db"))
        assert _needs_person(failure("postgresql://postgres@127.0.0.1:5432,127.0.0.1:5432/no_such_phg_db"))
        assert not _needs_person(failure(f"postgresql://postgres@127.0.0.1:5432,127.0.0.1:{down}/no_such_phg_db"))
        assert not _needs_person(failure(f"postgresql://postgres@127.0.0.1:{down},127.0.0.1:5432/no_such_phg_db"))
        assert _needs_person(failure("postgresql://no%20such%20role@127.0.0.1:5432/postgres"))
    finally:
        port.close()


def test_two_forgets_at_once_both_succeed_and_fill_a_shared_device(postgres_url):  # noqa: F811
    """Review V of fd64e8c, finding 7: Ann's, Bob's and Cy's readings on one scale, whose newest is Ann's. Bob's
    forget pauses before its DELETE while Ann's runs: Ann's fill pointed the scale at Bob's reading, which Bob's
    forget deleted, and Ann's failed on the foreign key (before fd64e8c: a deadlock). Forgets now take the delete
    lock in turn: both succeed, and the scale shows Cy's reading."""
    import phg.viewstore as rules

    bob, cy, scale = PatientRef("urn:oid:1.2.3", "bob"), PatientRef("urn:oid:1.2.3", "cy"), Device(
        system_id="0A1B2C3D4E5F6009")
    with store(postgres_url) as a, store(postgres_url) as b:
        b.keep([reading(50, 5, cy)._replace(device=scale)])
        b.keep([reading(70, 0, bob)._replace(device=scale)])
        b.keep([reading(97, 1)._replace(device=scale)])  # the scale's newest: Ann's
        paused, go = threading.Event(), threading.Event()
        sql = b._sql

        def pausing(template: str, **parts: str) -> str:
            if template == rules.DELETE:
                paused.set()
                go.wait(10)
            return sql(template, **parts)

        b._sql = pausing
        forgotten: list[int | BaseException] = []

        def forget_bob() -> None:
            try:
                forgotten.append(b.forget((bob.system, bob.value)))
            except BaseException as exc:  # noqa: BLE001  (asserted below)
                forgotten.append(exc)

        thread = threading.Thread(target=forget_bob)
        thread.start()
        assert paused.wait(10)
        timer = threading.Timer(0.5, go.set)  # Ann's forget is waiting meanwhile
        timer.start()
        try:
            assert a.forget((ANN.system, ANN.value)) == 1
        finally:
            go.set()
            thread.join(20)
            timer.cancel()
        assert forgotten == [1]
        assert [(k.reading.device.system_id, int(k.reading.metrics[0].value)) for k in a.latest_per_device()] == [
            (scale.system_id, 50)]
