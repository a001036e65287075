"""The Intake: readings and progress markers in one durable step, queued for every configured
destination; "already have it" answered from the queue."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from phg.intake import Intake, Stored
from phg.model import Device, Metric, PatientRef, Reading
from phg.outbox import Outbox

PATIENT = PatientRef("urn:oid:1.2.3.4.5", "pt-intake")


def reading(value: str) -> Reading:
    metric = Metric(code=150456, value=Decimal(value), unit="%", time=datetime(2026, 11, 28, 8, 0, tzinfo=UTC))
    return Reading(Device(system_id="0A1B2C3D4E5F6001"), PATIENT, (metric,))


def test_readings_are_queued_for_every_destination_with_their_marker(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as outbox:
        intake = Intake(outbox, ["fhir", "lab"])
        assert intake.progress("ble:X:glucose_seq") is None
        assert intake.store([reading("97"), reading("98")], {"ble:X:glucose_seq": "2"}) == Stored(new=2, known=0)
        assert intake.progress("ble:X:glucose_seq") == "2"
        assert outbox.counts("fhir")["queued"] == outbox.counts("lab")["queued"] == 2


def test_already_had_readings_are_stored_once_and_said_so(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as outbox:
        intake = Intake(outbox, ["fhir", "lab"])
        intake.store([reading("97")])
        assert intake.has(reading("97")) and not intake.has(reading("98"))
        assert intake.store([reading("97"), reading("98"), reading("98")]) == Stored(new=1, known=2)
        assert outbox.counts("fhir")["queued"] == 2
        # a destination configured later has not got it yet: not "already had" for every destination
        assert not Intake(outbox, ["fhir", "lab", "archive"]).has(reading("97"))


def test_a_failed_store_keeps_neither_readings_nor_marker(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as outbox:
        intake = Intake(outbox, ["fhir"])
        intake.store([reading("97")], {"m": "1"})
        with sqlite3.connect(tmp_path / "o.sqlite") as db:  # the marker's write fails after the readings'
            db.execute("CREATE TRIGGER fail BEFORE INSERT ON source_state WHEN NEW.value = '2' "
                       "BEGIN SELECT RAISE(ABORT, 'write failed'); END")
        with pytest.raises(sqlite3.Error, match="write failed"):
            intake.store([reading("98")], {"m": "2"})
        assert intake.progress("m") == "1" and not intake.has(reading("98"))


def test_heartbeat_proves_the_queue_can_be_written(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as outbox:
        Intake(outbox, ["fhir"]).heartbeat("ble")
        assert outbox.source_state("ble:heartbeat") is not None
        assert outbox.counts("fhir")["queued"] == 0


def test_an_intake_needs_a_destination(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as outbox, pytest.raises(ValueError, match="destination"):
        Intake(outbox, [])
