"""The status page (GET /, POST /items/{id}/retry), GET /v1/devices and GET /v1/patients/.../readings, and the
outbox's read queries behind them, on a gateway seeded through the Intake (no delivery worker runs)."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from phg.config import Config, load_config
from phg.delivery.status import BACKING_OFF, STOPPED, DestinationStatus
from phg.intake import Intake
from phg.model import Component, Device, Metric, PatientRef, Reading
from phg.outbox import Outbox
from phg.service.app import ServiceContext, create_app
from phg.service.charts import Series, line_chart
from phg.service.readings import parse_patient, parse_since

ALICE = PatientRef("http://hospital.example/mrn", "alice|1")  # a '|' and '/' in the path: escaped and kept
BOB = PatientRef("urn:oid:1.2.3", "bob")
CUFF = Device(system_id="0A1B2C3D4E5F6001", manufacturer="Omron", model="BP7000")
SCALE = Device(bt_address="AA-BB-CC-DD-EE-01", manufacturer="A&D", model="UC-352")
T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)


def blood_pressure(patient: PatientRef, hour: int, systolic: int) -> Reading:
    parts = (Component(150021, Decimal(systolic), "mm[Hg]"), Component(150022, Decimal(systolic - 40), "mm[Hg]"))
    metrics = (Metric(150020, T0 + timedelta(hours=hour), components=parts),
               Metric(149546, T0 + timedelta(hours=hour), Decimal(70), "/min"))
    return Reading(CUFF, patient, metrics)


def single(device: Device, patient: PatientRef, code: int, value: str, unit: str, hour: int) -> Reading:
    return Reading(device, patient, (Metric(code, T0 + timedelta(hours=hour), Decimal(value), unit),))


def gateway_config(tmp_path: Path) -> Config:
    return load_config(env={}, document={
        "fhir": {"base_url": "http://127.0.0.1:9/fhir"},
        "destinations": {"archive": {"type": "fhir", "base_url": "http://127.0.0.1:9/archive"}},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")}})


def local(ctx: ServiceContext) -> TestClient:
    """A client on loopback, as a browser on the gateway's machine is (its POSTs carry their Origin)."""
    return TestClient(create_app(ctx), base_url="http://127.0.0.1", client=("127.0.0.1", 50000),
                      headers={"Origin": "http://127.0.0.1"})


@pytest.fixture
def seeded(tmp_path) -> ServiceContext:
    """Two patients, a cuff and a scale; for "fhir" one reading delivered, one dead with the server's reason."""
    config = gateway_config(tmp_path)
    outbox = Outbox(config.outbox_path, config.keep_delivered)
    intake = Intake(outbox, config.destination_names)
    intake.store([blood_pressure(ALICE, 0, 120), blood_pressure(ALICE, 1, 130),
                  single(SCALE, ALICE, 188736, "72.5", "kg", 2), single(CUFF, BOB, 150456, "97", "%", 0),
                  single(CUFF, BOB, 160184, "5.4", "mmol/L", 1)])
    delivered, dead = outbox.lease("fhir", 2, 60)
    outbox.delivered([delivered.id])
    outbox.dead([dead.id], "HTTP 422: Observation.subject: Patient not found (OperationOutcome)")
    statuses = {"fhir": DestinationStatus("fhir", "fhir", BACKING_OFF, until=time.time() + 60),
                "archive": DestinationStatus("archive", "fhir", STOPPED, reason="the server refused the token: check "
                                             "[destinations.archive.auth] client_id")}
    yield ServiceContext(config, outbox, intake, statuses)
    outbox.close()


def test_devices_are_listed_with_their_last_contact_and_newest_reading(seeded):
    with local(seeded) as client:
        answer = client.get("/v1/devices")
    assert answer.status_code == 200
    found = {d["identity"]: d for d in answer.json()["devices"]}
    assert set(found) == {"0A1B2C3D4E5F6001", "AABBCCDDEE01"}
    assert found["AABBCCDDEE01"]["device"]["manufacturer"] == "A&D"
    assert found["AABBCCDDEE01"]["last_reading"]["metrics"][0]["value"] == "72.5"
    assert found["0A1B2C3D4E5F6001"]["last_contact"].endswith("Z")


def test_a_patients_readings_since_a_time_each_once_whatever_the_destinations(seeded):
    path = "/v1/patients/http://hospital.example/mrn|alice\\|1/readings"
    with local(seeded) as client:
        every = client.get(path).json()
        recent = client.get(path, params={"since": "2026-11-28T09:30:00+00:00"}).json()
        other = client.get("/v1/patients/urn:oid:1.2.3|nobody/readings").json()
    assert every["patient"] == {"system": ALICE.system, "value": ALICE.value}
    assert len(every["readings"]) == 3  # stored for two destinations, listed once
    assert [r["reading"]["metrics"][0]["code"] for r in recent["readings"]] == [188736]
    assert other["readings"] == []


@pytest.mark.parametrize(("path", "says"), [
    ("/v1/patients/no-bar/readings", "is not 'system|value'"),
    ("/v1/patients/|value/readings", "is not 'system|value'"),
    ("/v1/patients/urn:x|1/readings?since=yesterday", "since='yesterday' is not a date-time"),
    ("/v1/patients/urn:x|1/readings?since=2026-11-28T09:00:00", "with a UTC offset"),
    ("/v1/patients/urn:x%C2%A0y|1/readings", r"patient system 'urn:x\xa0y' cannot be a reading's"),  # NBSP: white space
    ("/v1/patients/urn:x| 1/readings", "patient value ' 1' cannot be a reading's"),
])
def test_a_malformed_patient_or_since_is_a_400_saying_what(seeded, path, says):
    with local(seeded) as client:
        answer = client.get(path)
    assert answer.status_code == 400 and says in answer.json()["detail"]
    assert answer.headers["content-type"] == "application/problem+json"


# What a reading's patient system can hold (reading.schema.json: no white space, no control character, no
# surrogate, no U+FFFE/U+FFFF); a value may have inner white space
_FIT = st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters="\ufffe\uffff")


@given(st.text(_FIT, min_size=1, max_size=64), st.text(_FIT, min_size=1, max_size=64))
def test_patient_tokens_round_trip_with_fhir_escaping(system, value):
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|")
    assert parse_patient(f"{escape(system)}|{escape(value)}") == (system, value)


@given(st.text())
def test_any_patient_text_parses_or_is_refused_with_a_valueerror(text):
    try:
        system, value = parse_patient(text)
    except ValueError as exc:
        assert "is not 'system|value'" in str(exc) or "cannot be a reading's" in str(exc)
    else:
        assert system and value and "|" in text


@given(st.text())
def test_any_since_text_parses_to_an_aware_time_or_is_refused_with_a_valueerror(text):
    try:
        since = parse_since(text)
    except ValueError as exc:
        assert "is not a date-time with a UTC offset" in str(exc)
    else:
        assert since.tzinfo is not None


def test_the_page_shows_states_queue_dead_letters_devices_and_patients(seeded):
    with local(seeded) as client:
        answer = client.get("/")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    page = answer.text
    assert "backing off until 20" in page
    assert "stopped: the server refused the token: check [destinations.archive.auth] client_id" in page
    assert "Patient not found (OperationOutcome)" in page and 'action="/items/2/retry"' in page
    assert "Body weight 72.5 kg" in page and "A&amp;D UC-352" in page  # escaped
    assert "Blood pressure of http://hospital.example/mrn|alice|1" in page
    assert "Glucose of urn:oid:1.2.3|bob" in page and "SpO2 of urn:oid:1.2.3|bob" in page
    assert "<script" not in page  # the tables and charts need no JavaScript


def test_the_retry_button_queues_the_dead_letter_again(seeded):
    with local(seeded) as client:
        answer = client.post("/items/2/retry", follow_redirects=False)
        again = client.post("/items/2/retry", follow_redirects=False)
        assert client.post("/items/1/retry").status_code == 409  # delivered: nothing to retry
        assert client.post(f"/items/{2**64}/retry").status_code == 409  # no such id, not a server error
    assert answer.status_code == 303 and answer.headers["location"] == "/#dead"
    assert seeded.outbox.get(2).state == "queued" and seeded.outbox.get(2).attempts == 0
    assert again.status_code == 303  # a queued item: made due now, as `phg queue retry` does


def test_purged_payloads_drop_out_of_devices_and_readings(seeded):
    assert seeded.outbox.purge_delivered() == 1  # one of Alice's blood pressures, for "fhir"
    assert len(seeded.outbox.kept_payloads((ALICE.system, ALICE.value))) == 3  # still queued for "archive"
    seeded.outbox.purge_dead()
    for name in ("fhir", "archive"):
        while items := seeded.outbox.lease(name, 10, 60):
            seeded.outbox.delivered([item.id for item in items])
    seeded.outbox.purge_delivered()
    assert seeded.outbox.latest_per_device() == [] and seeded.outbox.kept_payloads() == []


def test_activity_counts_deliveries_and_waiting_items_per_interval(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as outbox:
        outbox.enqueue("fhir", [(f"k{i}", "{}") for i in range(3)])
        now = time.time()
        outbox.delivered([outbox.lease("fhir", 1, 60)[0].id])
        later = time.time() + 1
        assert outbox.activity([now - 1, later], 1.5) == [("fhir", now - 1, 0, 0), ("fhir", later, 1, 2)]


def test_a_chart_is_valid_svg_with_its_text_escaped():
    svg = line_chart("<b>&", [Series("a<", [(0, 1), (60, 2)]), Series("b", [(30, 1.5)])], "mm[Hg]")
    root = ElementTree.fromstring(svg).find("svg")
    assert ElementTree.fromstring(svg).find("figcaption").text == root.find("title").text == "<b>&"
    assert len(root.findall("g/polyline")) == 2 and len(root.findall("g/circle")) == 3
    assert line_chart("x", [Series("a", [])], "kg").startswith('<p class="empty">')


@pytest.mark.peers
async def test_the_page_shows_what_real_workers_report(gate, oauth, tmp_path):
    """FHIR through the SMART gate delivers, an MLLP receiver that is down backs off, refused credentials
    stop their destination with the reason: the page says each, as the delivery workers left it."""
    from phg.auth import generate_key, jwks, load_key
    from phg.config import DEFAULT_SCOPE
    from phg.daemon import deliver
    from phg.demo.peers import free_port
    from phg.demo.sim import simulated_readings
    from phg.errors import AuthError
    from test_flow_destinations import write_config
    from test_flow_fhir import START, patient

    key = tmp_path / "gw.pem"
    generate_key(key, "ES384")
    client = oauth.register_client(jwks([load_key(key)]), scope=DEFAULT_SCOPE)
    readings = simulated_readings(patient(), START)
    pages = []
    for run, client_id in enumerate((client["client_id"], "not-registered")):
        (tmp_path / str(run)).mkdir()
        config = load_config(write_config(tmp_path / str(run), gate.base_url, client_id, key, free_port()), env={})
        statuses = {d.name: DestinationStatus(d.name, d.type) for d in config.destinations}
        with Outbox(config.outbox_path, config.keep_delivered) as outbox:
            intake = Intake(outbox, config.destination_names)
            intake.store(readings)
            try:
                await deliver(config, outbox, until_idle=True, statuses=statuses)
            except AuthError:
                pass
            with local(ServiceContext(config, outbox, intake, statuses)) as client_:
                pages.append(client_.get("/").text)
    delivering, refused = pages
    assert '<td class="state-delivering">delivering</td>' in delivering
    assert '<td class="state-backing-off">backing off until 20' in delivering
    assert '<td class="state-stopped">stopped: ' in refused and "invalid_client" in refused


def test_a_damaged_payload_is_left_out_and_logged_without_its_content(seeded, caplog):
    with sqlite3.connect(seeded.config.outbox_path) as db:
        db.execute("UPDATE item SET payload = json_set(payload, '$.metrics[0].time', 'secret 123')"
                   " WHERE key = (SELECT key FROM item WHERE id = 5)")  # Bob's glucose, for both destinations
    with local(seeded) as client:
        page, found = client.get("/"), client.get("/v1/devices").json()["devices"]
    assert page.status_code == 200 and "SpO2 of urn:oid:1.2.3|bob" in page.text  # the others are shown
    assert "Glucose of urn:oid:1.2.3|bob" not in page.text
    assert {device["identity"] for device in found} == {"0A1B2C3D4E5F6001", "AABBCCDDEE01"}
    assert "cannot be read (at metrics[0].time)" in caplog.text and "secret 123" not in caplog.text


def test_text_from_a_reading_is_escaped_on_the_page(seeded):
    hostile = Device(system_id="0A1B2C3D4E5F6002", manufacturer="<script>alert(1)</script>", model="<b>")
    seeded.intake.store([single(hostile, PatientRef("urn:x", "<img src=x onerror=alert(1)>"), 188736, "70", "kg", 0)])
    with local(seeded) as client:
        page = client.get("/").text
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
