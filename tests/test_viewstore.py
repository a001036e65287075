"""The reading store for viewing (phg.viewstore): kept by patient, type and time, retention, erasure per
patient, its own file (0600, refused when another program's), and fed by the Intake before the queue. The
contract runs on both engines (`engine`: SQLite, and PostgreSQL on 127.0.0.1:5432: tests/postgres_db.py);
tests/test_viewstore_postgres.py has what only a shared database has (two intakes, a server that goes away)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from phg.config import ViewSettings
from phg.errors import StorageError
from phg.intake import Intake
from phg.model import Device, Metric, PatientRef, Reading
from phg.outbox import Outbox
from phg.viewstore import ViewStore
from phg.viewstore.postgres import PostgresViewStore
from postgres_db import postgres_url  # noqa: F401  (the fixture: a fresh PostgreSQL database)

ANN, BOB = PatientRef("urn:oid:1.2.3", "ann"), PatientRef("urn:oid:1.2.3", "bob")
T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)


def reading(patient: PatientRef, code: int, value: str, unit: str, hours: float = 0) -> Reading:
    metric = Metric(code=code, value=Decimal(value), unit=unit, time=T0 + timedelta(hours=hours))
    return Reading(Device(system_id="0A1B2C3D4E5F6001"), patient, (metric,))


def ident(patient: PatientRef) -> tuple[str, str]:
    return patient.system, patient.value


class Engine:
    """One engine of the view store for a test: `open` a store on it (the same file or database each time)
    and count the rows of one of its tables."""

    def __init__(self, name: str, open: Callable[..., ViewStore], table_prefix: str, variables: dict[str, str]):
        self.name, self.open, self.prefix, self.variables = name, open, table_prefix, variables

    def count(self, store: ViewStore, table: str) -> int:
        return store._query(lambda conn: conn.execute(f"SELECT count(*) FROM {self.prefix}{table}").fetchone()[0])


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path) -> Engine:
    if request.param == "sqlite":
        return Engine("sqlite", lambda retention=None, clock=time.time: ViewStore(tmp_path / "view.sqlite", retention,
                                                                                  clock), "",
                      {"PHG_VIEW_PATH": str(tmp_path / "view.sqlite")})
    url = request.getfixturevalue("postgres_url")
    return Engine("postgres", lambda retention=None, clock=time.time: PostgresViewStore(
        ViewSettings(None, retention, url=url), clock), "phg_view.", {"PHG_VIEW_URL": url})


def test_readings_are_queried_by_patient_type_and_time(engine):
    with engine.open() as store:
        store.keep([reading(ANN, 150456, "97", "%", 0), reading(ANN, 188736, "70", "kg", 1),
                    reading(BOB, 150456, "91", "%", 2), reading(ANN, 150456, "95", "%", 3)])
        store.keep([reading(ANN, 150456, "97", "%", 0)])  # the same reading again: kept once
        ann = store.readings([ident(ANN)])
        assert [k.reading.metrics[0].value for k in ann] == [Decimal(97), Decimal(70), Decimal(95)]
        assert all(k.reading.patient == ANN for k in ann)
        assert ann[0].key == reading(ANN, 150456, "97", "%", 0).key  # the key the Intake queued it under
        spo2 = store.readings([ident(ANN)], codes={150456})
        assert [k.reading.metrics[0].value for k in spo2] == [Decimal(97), Decimal(95)]
        later = store.readings([ident(ANN)], since=T0 + timedelta(hours=1))
        assert [k.reading.metrics[0].value for k in later] == [Decimal(70), Decimal(95)]
        assert len(store.readings([ident(ANN), ident(BOB)])) == 4
        assert store.readings([("urn:oid:1.2.3", "carl")]) == []


def test_each_devices_newest_reading_and_the_recent_readings_newest_stored_first(engine):
    """What the status page and GET /v1/devices, /v1/patients/{p}/readings read with [view] (phg.service.readings):
    each device's newest reading (by when it was stored; among those stored at once, the one measured last),
    and readings newest stored first, of one patient, with a measurement since a time, at most `limit`."""
    clock = [1000.0]
    scale = Device(system_id="0A1B2C3D4E5F6009")
    with engine.open(clock=lambda: clock[0]) as store:
        store.keep([reading(ANN, 150456, "97", "%", 0), reading(ANN, 150456, "96", "%", 2)])  # one keep: one time
        clock[0] = 1010.0
        store.keep([reading(BOB, 150456, "91", "%", 1)._replace(device=scale)])
        clock[0] = 1020.0
        store.keep([reading(ANN, 150456, "95", "%", -5)])  # stored last, measured first
        latest = store.latest_per_device()
        assert [(k.reading.device.system_id, k.stored, k.reading.metrics[0].value) for k in latest] == [
            ("0A1B2C3D4E5F6001", 1020.0, Decimal(95)), ("0A1B2C3D4E5F6009", 1010.0, Decimal(91))]
        clock[0] = 1030.0
        store.keep([reading(BOB, 150456, "90", "%", 3)])  # Bob on Ann's oximeter: its newest now
        assert [(k.reading.device.system_id, k.reading.metrics[0].value) for k in store.latest_per_device()] == [
            ("0A1B2C3D4E5F6001", Decimal(90)), ("0A1B2C3D4E5F6009", Decimal(91))]
        values = lambda kept: [k.reading.metrics[0].value for k in kept]  # noqa: E731
        assert [k.stored for k in store.recent()] == [1030.0, 1020.0, 1010.0, 1000.0, 1000.0]
        assert values(store.recent(ident(ANN)))[0] == Decimal(95) and sorted(values(store.recent(ident(ANN)))[1:]) == [
            Decimal(96), Decimal(97)]
        assert values(store.recent(ident(ANN), since=T0 + timedelta(hours=1))) == [Decimal(96)]
        assert values(store.recent(since=T0 + timedelta(hours=1))) == [Decimal(90), Decimal(91), Decimal(96)]
        assert values(store.recent(limit=2)) == [Decimal(90), Decimal(95)]
        assert store.recent(("urn:oid:1.2.3", "carl")) == []
        store.check()  # it answers
        assert store.forget(ident(BOB)) == 2  # the oximeter's newest was Bob's: Ann's newest again, the scale gone
        assert [(k.reading.device.system_id, k.reading.metrics[0].value) for k in store.latest_per_device()] == [
            ("0A1B2C3D4E5F6001", Decimal(95))]
        store.keep([reading(BOB, 150456, "89", "%", 4)._replace(device=scale)])
        store._transaction(lambda tx: tx.execute(f"DROP TABLE {engine.prefix}device"))  # a store made before it
    with engine.open() as store:  # opened again: the table is made and filled from the readings
        assert [(k.reading.device.system_id, k.reading.metrics[0].value) for k in store.latest_per_device()] == [
            ("0A1B2C3D4E5F6009", Decimal(89)), ("0A1B2C3D4E5F6001", Decimal(95))]


def test_retention_deletes_readings_stored_before_the_period(engine):
    now = [1_000_000.0]
    with engine.open(retention=86400, clock=lambda: now[0]) as store:
        def values() -> list[int]:
            return [int(k.reading.metrics[0].value) for k in store.readings([ident(ANN)])]

        store.keep([reading(ANN, 150456, "97", "%")])  # a retention pass (the first write)
        now[0] += 86400 - 30
        store.keep([reading(ANN, 150456, "96", "%", 1)])  # a pass: nothing is old enough yet
        now[0] += 40
        store.keep([reading(ANN, 150456, "95", "%", 2)])  # the first is due, but the last pass was 40 s ago
        assert values() == [97, 96, 95]
        now[0] += 21
        store.keep([reading(ANN, 150456, "94", "%", 3)])  # a pass: the first goes
        assert values() == [96, 95, 94]
        assert engine.count(store, "measurement") == 3  # the index rows went with their readings


def test_the_query_limit_and_a_payload_that_cannot_be_read(engine, caplog):
    with engine.open() as store:
        store.keep([reading(ANN, 150456, str(90 + n), "%", n) for n in range(5)])
        assert [k.reading.metrics[0].value for k in store.readings([ident(ANN)], limit=2)] == [Decimal(90), Decimal(91)]
        broken = reading(ANN, 150456, "91", "%", 1).key
        prefix = "phg_view." if engine.name == "postgres" else ""
        mark = "%s" if engine.name == "postgres" else "?"
        store._transaction(lambda tx: tx.execute(f"UPDATE {prefix}reading SET payload = 'not json' WHERE key = {mark}",
                                                 (broken,)))
        with caplog.at_level("ERROR", logger="phg.viewstore"):
            kept = store.readings([ident(ANN)])
        assert [k.reading.metrics[0].value for k in kept] == [Decimal(90), Decimal(92), Decimal(93), Decimal(94)]
        assert broken in caplog.text and "not json" not in caplog.text


def test_forget_erases_one_patient_only(engine):
    with engine.open() as store:
        store.keep([reading(ANN, 150456, "97", "%"), reading(ANN, 188736, "70", "kg"), reading(BOB, 150456, "91", "%")])
        assert store.forget(ident(ANN)) == 2
        assert store.readings([ident(ANN)]) == [] and len(store.readings([ident(BOB)])) == 1
        assert engine.count(store, "measurement") == 1  # the index rows went with their readings


def test_its_file_is_private_and_another_programs_database_is_refused(tmp_path):
    ViewStore(tmp_path / "view.sqlite").close()
    assert stat.S_IMODE((tmp_path / "view.sqlite").stat().st_mode) == 0o600
    with sqlite3.connect(tmp_path / "other.sqlite") as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    (tmp_path / "other.sqlite").chmod(0o600)
    with pytest.raises(StorageError, match=r"other.sqlite: not phg's view store"):
        ViewStore(tmp_path / "other.sqlite")


def test_the_intake_keeps_every_reading_for_viewing_before_it_queues_it(tmp_path, engine):
    with Outbox(tmp_path / "o.sqlite") as outbox, engine.open() as view:
        intake = Intake(outbox, ["fhir"], view=view)
        intake.store([reading(ANN, 150456, "97", "%")])
        assert len(view.readings([ident(ANN)])) == 1
        view.close()  # the view store cannot be written: nothing is queued, the source keeps its reading
        with pytest.raises(sqlite3.ProgrammingError if engine.name == "sqlite" else StorageError):
            intake.store([reading(ANN, 150456, "95", "%", 1)])
        assert outbox.counts("fhir")["queued"] == 1


def test_phg_send_keeps_readings_for_the_view_and_phg_view_forget_erases_a_patient(tmp_path, engine):
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "c"), "XDG_DATA_HOME": str(tmp_path / "d"),
           "PHG_OUTBOX": str(tmp_path / "o.sqlite"), **engine.variables,
           "PHG_GATEWAY_SYSTEM_ID": "02AB7FFFFE00C11A", "PHG_CONFIG": "", "PHG_FHIR_BASE_URL": ""}
    documents = [reading(ANN, 150456, "97", "%").to_document(), reading(BOB, 188736, "70", "kg").to_document()]
    (tmp_path / "r.json").write_text(json.dumps(documents))
    phg = str(Path(sys.executable).parent / "phg")
    sent = subprocess.run([phg, "send", "--no-deliver", str(tmp_path / "r.json")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    with engine.open() as store:
        assert len(store.readings([ident(ANN), ident(BOB)])) == 2
    forgot = subprocess.run([phg, "view", "forget", "urn:oid:1.2.3|ann"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert forgot.returncode == 0 and forgot.stdout.startswith("forgot 1 reading(s)"), forgot.stderr
    with engine.open() as store:
        assert store.readings([ident(ANN)]) == [] and len(store.readings([ident(BOB)])) == 1
    refused = subprocess.run([phg, "view", "forget", "ann"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "is not 'system|value'" in refused.stderr


def test_a_retention_pass_that_fails_never_fails_the_keep(engine, caplog, monkeypatch):
    """Review R of db9b6c3, finding 1: retention runs after the keep committed, in its own transactions of
    at most EXPIRE_BATCH readings; a pass that fails (here a trigger refuses the DELETE, as a statement
    timeout would) is logged and tried again a minute later, and every keep is kept meanwhile."""
    import phg.viewstore as viewstore

    monkeypatch.setattr(viewstore, "EXPIRE_BATCH", 2)
    now = [1_000_000.0]
    with engine.open(retention=86400, clock=lambda: now[0]) as store:
        store.keep([reading(ANN, 150456, str(90 + n), "%", n) for n in range(9)])
        if engine.name == "sqlite":
            refuse = ["CREATE TRIGGER refuse BEFORE DELETE ON reading BEGIN SELECT RAISE(ABORT, 'refused'); END"]
        else:
            refuse = ["CREATE FUNCTION phg_view.refuse() RETURNS trigger LANGUAGE plpgsql AS"
                      " $$BEGIN RAISE EXCEPTION 'refused'; END$$",
                      "CREATE TRIGGER refuse BEFORE DELETE ON phg_view.reading FOR EACH ROW EXECUTE FUNCTION"
                      " phg_view.refuse()"]
        store._transaction(lambda tx: [tx.execute(statement) for statement in refuse])
        now[0] += 86400 + 61
        with caplog.at_level("WARNING", logger="phg.viewstore"):
            store.keep([reading(ANN, 150456, "80", "%", 10)])  # the pass fails: the keep does not
        assert "a retention pass failed" in caplog.text and "refused" in caplog.text and "ann" not in caplog.text
        assert store._retention_due == now[0] + 60
        assert len(store.readings([ident(ANN)])) == 10
        store._transaction(lambda tx: tx.execute("DROP TRIGGER refuse" + (" ON phg_view.reading" if engine.name
                                                                             == "postgres" else "")))
        now[0] += 61
        store.keep([reading(ANN, 150456, "81", "%", 11)])  # 4 batches of 2: 8 of the 9 old readings go
        assert engine.count(store, "reading") == 3 and store._retention_due == now[0]  # the rest: the next write
        store.keep([reading(ANN, 150456, "82", "%", 12)])
        assert [int(k.reading.metrics[0].value) for k in store.readings([ident(ANN)])] == [80, 81, 82]


def test_forget_rewrites_only_the_devices_whose_newest_reading_it_erased(engine):
    """Review R of db9b6c3, finding 2: forget recomputes the device rows of the readings it erased, not the
    whole table (which, on a large store, passed the statement timeout and locked every device)."""
    scale = Device(system_id="0A1B2C3D4E5F6009")
    with engine.open() as store:
        store.keep([reading(BOB, 150456, "91", "%", 0), reading(ANN, 150456, "97", "%", 1)])  # the oximeter's: Ann's
        store.keep([reading(BOB, 188736, "70", "kg", 2)._replace(device=scale)])
        mark = "%s" if engine.name == "postgres" else "?"
        store._transaction(lambda tx: tx.execute(f"UPDATE {engine.prefix}device SET time = 12345 WHERE device = {mark}",
                                                 (scale.system_id,)))  # a mark: rewritten rows lose it
        assert store.forget(ident(ANN)) == 1
        rows = store._query(lambda conn: conn.execute(f"SELECT device, time FROM {engine.prefix}device ORDER BY device"
                                                      ).fetchall())
        assert [tuple(row) for row in rows] == [("0A1B2C3D4E5F6001", T0.timestamp()), (scale.system_id, 12345.0)]


def test_a_sqlite_file_made_before_the_readings_device_column_gets_it_filled(tmp_path):
    """Review R2, finding 3: the reading's device column (and its index), which forget() uses, is added to a
    file made without it and filled from the payloads when the file is opened."""
    path = tmp_path / "view.sqlite"
    with ViewStore(path) as store:
        store.keep([reading(ANN, 150456, "97", "%")])
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX reading_device")
    conn.execute("ALTER TABLE reading DROP COLUMN device")
    conn.commit()
    conn.close()
    with ViewStore(path) as store:
        assert store._query(lambda c: c.execute("SELECT device FROM reading").fetchall()) == [("0A1B2C3D4E5F6001",)]
        assert store.forget((ANN.system, ANN.value)) == 1 and store.latest_per_device() == []


def test_a_statement_is_formatted_once_per_engine_not_at_each_call(engine):
    """keep() asks for DEVICE_NEWER once per device: the engine's text of a template (with its parts) is made
    once (phg.viewstore._in_words) and the same string is given again."""
    from phg.viewstore import DEVICE_NEWER, RECENT, RECENT_WHERE

    with engine.open() as store:
        assert store._sql(DEVICE_NEWER) is store._sql(DEVICE_NEWER)
        patient = store._sql(RECENT, where=RECENT_WHERE["patient"])
        assert patient is store._sql(RECENT, where=RECENT_WHERE["patient"])
        assert patient != store._sql(RECENT, where=RECENT_WHERE["all"]) and engine.prefix + "reading" in patient
