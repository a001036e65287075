"""The view in the EHR (phg.service.view, issue 14): the launched patient's readings in charts and a table
with units, device, flags and delivery state; another patient is 403 with a valid session; framing by the
configured EHR only, no referrer, GET only; every access logged with fhirUser and patient, never values."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from phg.config import SmartSettings, load_config
from phg.intake import Intake
from phg.model import Component, Device, Metric, PatientRef, Reading
from phg.outbox import Outbox
from phg.service.app import ServiceContext, create_app
from phg.service.smart import ViewSession
from phg.viewstore import ViewStore, open_view
from postgres_db import postgres_url  # noqa: F401  (the fixture: a fresh PostgreSQL database)

ANN, BOB = PatientRef("urn:oid:1.2.36.146.595.217.0.1", "ann"), PatientRef("urn:oid:1.2.36.146.595.217.0.1", "bob")
EHR = "https://ehr.example.org"


def reading(patient: PatientRef, code: int, value: str, unit: str, days_ago: float, status: tuple[str, ...] = ()) -> Reading:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days_ago)
    return Reading(Device(system_id="0A1B2C3D4E5F6001", manufacturer="Acme", model="BP-7"), patient,
                   (Metric(code=code, value=Decimal(value), unit=unit, time=at, status=status),))


def blood_pressure(patient: PatientRef, days_ago: float, systolic: int) -> Reading:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days_ago)
    components = (Component(150021, Decimal(systolic), "mm[Hg]"), Component(150022, Decimal(80), "mm[Hg]"))
    return Reading(Device(system_id="0A1B2C3D4E5F6002", manufacturer="Acme", model="BP-7"), patient,
                   (Metric(code=150020, time=at, components=components),))  # no unit: parsing fills it in


@pytest.fixture
def served(tmp_path):
    config = load_config(None, {"PHG_OUTBOX": str(tmp_path / "o.sqlite")})._replace(
        smart=SmartSettings(client_id="phg", redirect_url="https://phg.example/smart/callback", frame_ancestors=(EHR,)))
    with Outbox(config.outbox_path) as outbox, ViewStore(tmp_path / "view.sqlite") as view:
        ctx = ServiceContext(config, outbox, Intake(outbox, ["fhir"], view=view), view=view)
        ctx.intake.store([blood_pressure(ANN, 1, 128), blood_pressure(ANN, 20, 141),
                          reading(ANN, 188736, "71.5", "kg", 2), reading(ANN, 150456, "96", "%", 3, ("questionable",)),
                          reading(ANN, 149546, "64", "/min", 3), reading(ANN, 150364, "37.2", "Cel", 4, ("test-data",)),
                          reading(ANN, 160184, "5.4", "mmol/L", 60), reading(BOB, 150456, "83.7", "%", 1)])
        first = outbox.lease("fhir", 1, 60)  # the oldest item (Ann's newest blood pressure) was written to the EHR
        outbox.delivered([first[0].id], token=first[0].lease)
        sid = ctx.sessions.open(ViewSession(patient=((ANN.system, ANN.value),), fhir_user="Practitioner/dr-who",
                                            expires=time.time() + 600, ehr_patient="Patient/123"), {})
        yield TestClient(create_app(ctx), base_url="http://127.0.0.1:8470"), sid


def test_the_view_charts_the_launched_patients_readings_with_units_device_flags_and_delivery(served):
    client, sid = served
    page = client.get(f"/view/{sid}")
    assert page.status_code == 200
    for chart in ("Blood pressure (mmHg)", "Weight (kg)", "SpO2 (%)", "Heart rate ({beat}/min)", "Temperature (C)"):
        assert f"<figcaption>{chart}</figcaption>" in page.text, chart
    assert "Glucose" not in page.text  # 60 days ago: outside the default 30 days
    assert "Acme BP-7" in page.text and 'class="flag">questionable' in page.text and 'class="flag">test-data' in page.text
    assert "written (fhir)" in page.text and "not yet" in page.text
    assert "83.7" not in client.get(f"/view/{sid}/readings").text  # Bob's SpO2 is not Ann's
    data = client.get(f"/view/{sid}/readings?period=90d").json()
    assert {r["measurement"] for r in data["readings"]} >= {"Body weight", "Body temperature"}
    assert any(r["code"] == 160184 and r["unit"] == "mmol/L" for r in data["readings"])
    assert 'aria-current="page">90 days' in client.get(f"/view/{sid}?period=90d").text


def test_another_patient_is_refused_with_a_valid_session(served):
    client, sid = served
    for path in (f"/view/{sid}", f"/view/{sid}/readings"):
        refused = client.get(path, params={"patient": f"{BOB.system}|{BOB.value}"})
        assert refused.status_code == 403 and "83.7" not in refused.text
        assert client.get(path, params={"patient": f"{ANN.system}|{ANN.value}"}).status_code == 200
    assert client.get("/view/not-a-session").status_code == 404
    assert client.get(f"/view/{sid}?period=2y").status_code == 400


def test_framed_only_by_the_ehr_without_referrer_read_only_and_logged_without_values(served, caplog):
    client, sid = served
    with caplog.at_level(logging.INFO, logger="phg.service.view"):
        page = client.get(f"/view/{sid}", headers={"host": "phg.example"})  # off loopback: no API key needed
    assert page.status_code == 200
    assert f"frame-ancestors {EHR}" in page.headers["content-security-policy"]
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script runs
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
    assert "set-cookie" not in page.headers
    assert client.post(f"/view/{sid}").status_code in (401, 405)  # read-only
    for other in ("/v1/queue", f"/view/{sid}/../../v1/queue", "/viewer"):  # only the view passes without a key
        assert client.get(other, headers={"host": "phg.example"}).status_code in (401, 404), other
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "Practitioner/dr-who" in logged and "Patient/123" in logged
    assert "128" not in logged and "71.5" not in logged and sid not in logged


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(period=st.one_of(st.none(), st.text(max_size=12)), patient=st.one_of(st.none(), st.text(max_size=40)))
def test_any_period_or_patient_is_answered_never_a_server_error(served, period, patient):
    client, sid = served
    params = {k: v for k, v in (("period", period), ("patient", patient)) if v is not None}
    answer = client.get(f"/view/{sid}/readings", params=params)
    assert answer.status_code in (200, 400, 403), answer.text
    if answer.status_code == 200:
        assert all(r["value"] != "83.7" for r in answer.json()["readings"])  # never Bob's


def test_two_intakes_on_one_postgresql_view_store_show_each_others_readings(tmp_path, postgres_url):  # noqa: F811
    """A hub (docs/hub.md): intake A takes a reading (POST /v1/readings), and the view intake B serves shows
    it, both with `[view] url` naming one PostgreSQL database (phg.viewstore.postgres)."""
    smart = SmartSettings(client_id="phg", redirect_url="https://phg.example/smart/callback", frame_ancestors=(EHR,))
    apps = []
    with ExitStack() as stack:
        for name in ("a", "b"):
            config = load_config(None, {"PHG_OUTBOX": str(tmp_path / f"o-{name}.sqlite"), "PHG_VIEW_URL": postgres_url,
                                        "PHG_API_LISTEN": "127.0.0.1:8470"})._replace(smart=smart)
            outbox = stack.enter_context(Outbox(config.outbox_path))
            view = stack.enter_context(open_view(config.view))
            ctx = ServiceContext(config, outbox, Intake(outbox, ["fhir"], view=view), view=view)
            apps.append((ctx, TestClient(create_app(ctx), base_url="http://127.0.0.1:8470", client=("127.0.0.1", 50000))))
        (ctx_a, a), (ctx_b, b) = apps
        document = reading(ANN, 188736, "71.5", "kg", 1).to_document()
        assert a.post("/v1/readings", json=[document]).status_code == 202
        sid = ctx_b.sessions.open(ViewSession(patient=((ANN.system, ANN.value),), fhir_user="Practitioner/dr-who",
                                              expires=time.time() + 600, ehr_patient="Patient/123"), {})
        shown = b.get(f"/view/{sid}/readings").json()["readings"]
        assert [(r["measurement"], r["value"], r["unit"]) for r in shown] == [("Body weight", "71.5", "kg")]
        assert "<figcaption>Weight (kg)</figcaption>" in b.get(f"/view/{sid}").text
        ctx_a.view.close()  # A's view store cannot be written (as while its server is away): A refuses, queues nothing
        refused = a.post("/v1/readings", json=[reading(ANN, 188736, "72", "kg", 0).to_document()])
        assert refused.status_code == 503 and ctx_a.outbox.counts("fhir")["queued"] == 1
