"""The view store in `phg run` and the status page (brief V2): `phg run` starts while the view store's
PostgreSQL is down and takes readings once it is up, without a restart (phg.daemon.open_view_when_reachable);
meanwhile /readyz, the API's 503 and the log name the view store (never the queue, never the password); a
SQLite view store that is not phg's stops start-up naming the view store; with [view], the devices list, the
charts and GET /v1/devices, /v1/patients/{p}/readings read the view store (phg.service.readings), so an
outbox that keeps no payloads (JetStream's answer, phg.outbox.jetstream) hides nothing, and two intakes of a
hub on one PostgreSQL view store list the same devices."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from phg.config import load_config
from phg.demo.peers import free_port
from phg.intake import Intake
from phg.model import Device, Metric, PatientRef, Reading
from phg.outbox import Outbox
from phg.service.app import ServiceContext, create_app
from phg.viewstore import PendingView, open_view
from phg_run import PHG, PhgRun
from postgres_db import postgres_url, private_postgres  # noqa: F401  (fixtures: a fresh database, a private server)

ANN, BOB = PatientRef("urn:oid:1.2.36.146.595.217.0.1", "ann"), PatientRef("urn:oid:1.2.36.146.595.217.0.1", "bob")
OXIMETER, SCALE = "0A1B2C3D4E5F6001", "0A1B2C3D4E5F6002"


def reading(patient: PatientRef, device: str, code: int, value: str, unit: str, hours_ago: float) -> Reading:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours_ago)
    return Reading(Device(system_id=device, manufacturer="Acme", model="M-1"), patient,
                   (Metric(code=code, value=Decimal(value), unit=unit, time=at),))


class NoPayloads(Outbox):
    """An outbox that keeps no payloads, as JetStream's answers (phg.outbox.jetstream: latest_per_device and
    kept_payloads give [])."""

    def latest_per_device(self) -> list:
        return []

    def kept_payloads(self, patient=None, limit: int = 1000) -> list:
        return []


def client(ctx: ServiceContext) -> TestClient:
    return TestClient(create_app(ctx), base_url="http://127.0.0.1:8470", client=("127.0.0.1", 50000))


@pytest.fixture(params=["sqlite", "postgres"])
def view_variables(request, tmp_path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"PHG_VIEW_PATH": str(tmp_path / "view.sqlite")}
    return {"PHG_VIEW_URL": request.getfixturevalue("postgres_url")}


def test_the_devices_and_charts_come_from_the_view_store_when_the_queue_keeps_no_payloads(tmp_path, view_variables):
    config = load_config(None, {"PHG_OUTBOX": str(tmp_path / "o.sqlite"), "PHG_API_LISTEN": "127.0.0.1:8470",
                                **view_variables})
    with NoPayloads(config.outbox_path) as outbox, open_view(config.view) as view:
        ctx = ServiceContext(config, outbox, Intake(outbox, ["fhir"], view=view), view=view)
        ctx.intake.store([reading(ANN, OXIMETER, 150456, "97", "%", 3), reading(ANN, SCALE, 188736, "71.5", "kg", 2)])
        ctx.intake.store([reading(BOB, OXIMETER, 150456, "91", "%", 1)])
        app = client(ctx)
        devices = app.get("/v1/devices").json()["devices"]
        assert [(d["identity"], d["last_reading"]["patient"]["value"]) for d in devices] == [
            (OXIMETER, "bob"), (SCALE, "ann")]  # Bob's, stored last, is the oximeter's newest
        ann = app.get(f"/v1/patients/{ANN.system}|ann/readings").json()["readings"]
        assert sorted(r["reading"]["metrics"][0]["value"] for r in ann) == ["71.5", "97"]
        since = (datetime.now(UTC) - timedelta(hours=2.5)).isoformat()
        assert [r["reading"]["metrics"][0]["value"] for r in app.get(
            f"/v1/patients/{ANN.system}|ann/readings", params={"since": since}).json()["readings"]] == ["71.5"]
        page = app.get("/").text
        assert OXIMETER in page and SCALE in page and "No device seen" not in page
        assert f"Weight of {ANN.system}|ann" in page and f"SpO2 of {BOB.system}|bob" in page
        assert "come from the view store ([view])" in page and "365.0 days" in page
        ctx.view = PendingView(config.view)  # not open (as while phg run waits for its server): 503s, the page says
        answer = app.get("/v1/devices")
        assert answer.status_code == 503 and "view store" in answer.json()["detail"]
        assert app.get(f"/v1/patients/{ANN.system}|ann/readings").status_code == 503
        page = app.get("/")
        assert page.status_code == 200 and "Devices and readings cannot be shown now" in page.text


def test_without_view_the_outbox_payloads_are_listed_as_before(tmp_path):
    config = load_config(None, {"PHG_OUTBOX": str(tmp_path / "o.sqlite"), "PHG_API_LISTEN": "127.0.0.1:8470"})
    with Outbox(config.outbox_path) as outbox:
        ctx = ServiceContext(config, outbox, Intake(outbox, ["fhir"]))
        ctx.intake.store([reading(ANN, SCALE, 188736, "71.5", "kg", 2)])
        app = client(ctx)
        assert [d["identity"] for d in app.get("/v1/devices").json()["devices"]] == [SCALE]
        assert "come from the payloads the queue keeps" in app.get("/").text


def test_two_intakes_on_one_postgresql_view_store_list_the_same_devices(tmp_path, postgres_url):  # noqa: F811
    """A hub: each intake has its own queue (here an outbox file each, keeping no payloads as JetStream);
    a reading posted to A and one posted to B are in both intakes' devices lists, charts and patient readings."""
    apps = []
    with ExitStack() as stack:
        for name in ("a", "b"):
            config = load_config(None, {"PHG_OUTBOX": str(tmp_path / f"o-{name}.sqlite"), "PHG_VIEW_URL": postgres_url,
                                        "PHG_API_LISTEN": "127.0.0.1:8470"})
            outbox = stack.enter_context(NoPayloads(config.outbox_path))
            view = stack.enter_context(open_view(config.view))
            apps.append(client(ServiceContext(config, outbox, Intake(outbox, ["fhir"], view=view), view=view)))
        a, b = apps
        assert a.post("/v1/readings", json=[reading(ANN, SCALE, 188736, "71.5", "kg", 1).to_document()]).status_code == 202
        assert b.post("/v1/readings", json=[reading(BOB, OXIMETER, 150456, "93", "%", 0).to_document()]).status_code == 202
        listed = [a.get("/v1/devices").json(), b.get("/v1/devices").json()]
        assert listed[0] == listed[1] and [d["identity"] for d in listed[0]["devices"]] == [OXIMETER, SCALE]
        for app in apps:
            page = app.get("/").text
            assert f"Weight of {ANN.system}|ann" in page and f"SpO2 of {BOB.system}|bob" in page
            assert [r["reading"]["metrics"][0]["value"] for r in app.get(
                f"/v1/patients/{BOB.system}|bob/readings").json()["readings"]] == ["93"]


async def until(check, timeout: float, every: float = 0.2):
    """check() until it gives something true (`timeout` s at most): that."""
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(every)
    return found


async def test_phg_run_starts_while_its_postgresql_is_down_and_takes_readings_once_it_is_up(
        tmp_path, private_postgres):  # noqa: F811
    password = tmp_path / "view-password"
    password.write_text(private_postgres.PASSWORD + "\n")
    password.chmod(0o600)
    private_postgres.stop()  # down before phg starts
    port = free_port()
    config = tmp_path / "phg.toml"
    config.write_text(f'[fhir]\nbase_url = "http://127.0.0.1:9/fhir"\n[outbox]\npath = "{tmp_path / "o.sqlite"}"\n'
                      f'[api]\nlisten = "127.0.0.1:{port}"\n'
                      f'[view]\nurl = "{private_postgres.url}"\npassword_file = "{password}"\n')
    document = reading(ANN, SCALE, 188736, "71.5", "kg", 1).to_document()
    async with PhgRun(config, "--role", "intake", api=f"http://127.0.0.1:{port}") as run:
        logged = await run.logged("trying again in")  # an ERROR naming the URL and why; it serves meanwhile
        assert "ERROR" in logged and private_postgres.url in logged and "the view store's database failed" in logged
        await run.ready("/healthz")
        async with httpx.AsyncClient(base_url=run.api, timeout=30) as api:
            ready = await api.get("/readyz")
            assert ready.status_code == 503
            assert [p for p in ready.json()["problems"] if "view store is not open" in p and private_postgres.url in p]
            refused = await api.post("/v1/readings", json=[document])
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
            assert refused.json()["title"] == "View store not writable" and "queue" not in refused.json()["detail"]
            assert (await api.get("/v1/queue")).json()["destinations"]["fhir"]["queued"] == 0
            assert (await api.get("/v1/devices")).status_code == 503
            started = time.monotonic()
            private_postgres.start()  # up: taken within the back-off's next try, without a restart

            async def ready_now() -> bool:
                return (await api.get("/readyz")).status_code == 200
            await until(ready_now, 40)
            took = time.monotonic() - started
            taken = await api.post("/v1/readings", json=[document])
            assert taken.status_code == 202, taken.text
            assert [d["identity"] for d in (await api.get("/v1/devices")).json()["devices"]] == [SCALE]
        err = logged + await run.stop()
    assert private_postgres.PASSWORD not in err and "readings are taken" in err
    assert took < 35  # the back-off is bounded (30 s at most between two tries)


async def test_phg_run_stops_cleanly_while_it_waits_for_its_view_store(tmp_path):
    config = tmp_path / "phg.toml"
    config.write_text(f'[fhir]\nbase_url = "http://127.0.0.1:9/fhir"\n[outbox]\npath = "{tmp_path / "o.sqlite"}"\n'
                      f'[view]\nurl = "postgresql://phg@127.0.0.1:{free_port()}/phg"\n')  # nothing answers there
    async with PhgRun(config) as run:
        await run.logged("trying again in 2 s")
        started = time.monotonic()
        assert "Traceback" not in await run.stop()  # exit 0
    assert time.monotonic() - started < 15


def test_phg_run_stops_naming_the_view_store_when_its_sqlite_file_is_not_phgs(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    other.chmod(0o600)
    config = tmp_path / "phg.toml"
    config.write_text(f'[fhir]\nbase_url = "http://127.0.0.1:9/fhir"\n[outbox]\npath = "{tmp_path / "o.sqlite"}"\n'
                      f'[view]\npath = "{other}"\n')
    done = subprocess.run([PHG, "run"], env={"PHG_CONFIG": str(config), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 74, done.stderr
    assert "other.sqlite: not phg's view store" in done.stderr and "view store ([view] path)" in done.stderr
    assert "the queue cannot record" not in done.stderr
    assert Path(tmp_path / "o.sqlite").exists()  # the queue opened; the view store stopped it
