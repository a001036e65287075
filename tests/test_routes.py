"""Routing (issue 15): [[routes]] send each reading to the destinations of the routes it matches, by
patient identifier system, patient value pattern or device; a reading no route matches is refused at
intake (the Intake, the API, `phg send`), never dropped. The settings are checked at load, naming the
file, the route and the key. The flow: two clinics' patients reach two sekmet-fhir servers, each only
its own (the issue's acceptance point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from starlette.testclient import TestClient

from nats_cluster import nats_cluster  # noqa: F401  (a fixture: the JetStream engine's cluster)
from phg.config import Route, load_config
from phg.errors import ConfigError, ReadingError
from phg.intake import Intake, Unrouted, route
from phg.model import Device, Metric, PatientRef, Reading
from phg.outbox import Outbox
from phg.service.app import ServiceContext, create_app

CLINIC_A, CLINIC_B = "urn:oid:1.2.36.1.2001.1003.0.1", "urn:oid:1.2.36.1.2001.1003.0.2"
PHG = str(Path(sys.executable).parent / "phg")
DESTINATIONS = {"clinic_a": {"type": "fhir", "base_url": "http://127.0.0.1:9/a"},
                "clinic_b": {"type": "fhir", "base_url": "http://127.0.0.1:9/b"},
                "lab": {"type": "mllp", "host": "127.0.0.1", "port": 2575}}


def reading(system: str = CLINIC_A, value: str = "A-1", *, system_id: str | None = "0A1B2C3D4E5F6001",
            bt_address: str | None = None, spo2: str = "97") -> Reading:
    metric = Metric(code=150456, value=Decimal(spo2), unit="%", time=datetime(2026, 11, 28, 8, 0, tzinfo=UTC))
    return Reading(Device(system_id=system_id, bt_address=bt_address), PatientRef(system, value), (metric,))


def config(tmp_path: Path, routes: list[dict], **tables) -> object:
    return load_config(document={"outbox": {"path": str(tmp_path / "o.sqlite")}, "destinations": DESTINATIONS,
                                 "routes": routes, **tables}, env={})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "phg.toml"
    path.write_text(text)
    return path


HUB = [{"destinations": ["clinic_a"], "patient_system": CLINIC_A},
       {"destinations": ["clinic_b"], "patient_system": CLINIC_B, "patient_value": "B-*"},
       {"destinations": ["lab", "clinic_a"], "device": "c0:00:00:*"}]


# ------------------------------------------------------------------------------------------ matching


def test_patient_system_is_exact_and_patient_value_a_case_sensitive_glob():
    a = Route(("clinic_a",), patient_system=CLINIC_A)
    assert a.matches(reading(CLINIC_A)) and not a.matches(reading(CLINIC_A + ".9"))
    b = Route(("clinic_b",), patient_system=CLINIC_B, patient_value="B-[0-9]*")
    assert b.matches(reading(CLINIC_B, "B-17")) and not b.matches(reading(CLINIC_B, "b-17"))
    assert not b.matches(reading(CLINIC_B, "B-x")) and not b.matches(reading(CLINIC_A, "B-17"))  # both must hold


def test_device_glob_matches_the_system_id_or_the_bluetooth_address(tmp_path):
    lab = config(tmp_path, HUB).routes[2]
    assert lab.device == "C00000*"  # case and separators of the pattern ignored
    assert lab.matches(reading(system_id=None, bt_address="C0-00-00-00-18-08"))
    assert lab.matches(reading(system_id="C00000FFFE001808"))
    assert lab.matches(reading(system_id="0A1B2C3D4E5F6001", bt_address="C0-00-00-00-18-08"))  # either identity
    assert not lab.matches(reading(system_id="0A1B2C3D4E5F6001", bt_address="C1-00-00-00-18-08"))


def test_a_reading_goes_to_the_union_of_its_routes_in_configured_order(tmp_path):
    routes = config(tmp_path, HUB).routes
    names = ["clinic_a", "clinic_b", "lab"]
    assert route(reading(CLINIC_A), names, routes) == ("clinic_a",)
    assert route(reading(CLINIC_B, "B-2", bt_address="C0-00-00-00-00-01"), names, routes) == \
        ("clinic_a", "clinic_b", "lab")
    assert route(reading(CLINIC_B, "X-2"), names, routes) == ()  # no route: nowhere
    assert route(reading(CLINIC_B, "X-2"), names, ()) == tuple(names)  # no [[routes]]: everywhere, as before
    catch_all = config(tmp_path, [*HUB, {"destinations": ["lab"], "default": True}]).routes
    assert route(reading(CLINIC_B, "X-2"), names, catch_all) == ("lab",)


# ------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(("routes", "says"), [
    ('[[routes]]\ndestinations = ["clinic_z"]\npatient_system = "s"\n',
     "[[routes]] #1 destinations names 'clinic_z', which is not configured (configured: clinic_a, clinic_b, lab)"),
    ('[[routes]]\ndestinations = ["lab"]\ndefault = true\n[[routes]]\ndestinations = ["clinic_a"]\n',
     "[[routes]] #2 needs a matcher (patient_system, patient_value, device) or default = true"),
    ('[[routes]]\ndestinations = ["lab"]\ndefault = true\ndevice = "C0*"\n',
     "[[routes]] #1: default = true matches every reading: drop device or default"),
    ('[[routes]]\ndestinations = ["lab"]\npatient = "x"\n', "[[routes]] #1: unknown key 'patient'"),
    ('[[routes]]\ndestinations = []\npatient_system = "s"\n', "[[routes]] #1 destinations is empty"),
    ('[[routes]]\npatient_system = "s"\n', "[[routes]] #1 needs destinations"),
    ('[[routes]]\ndestinations = "lab"\npatient_system = "s"\n', None),  # one name as a string is taken
    ('[[routes]]\ndestinations = [1]\npatient_system = "s"\n', "[[routes]] #1 destinations must be a list of strings"),
    ('[[routes]]\ndestinations = ["lab"]\ndevice = "C0:0G:*"\n', "[[routes]] #1 device must be a pattern over the"),
    ('[[routes]]\ndestinations = ["lab"]\npatient_value = ""\n', "[[routes]] #1 patient_value is empty"),
    ('[[routes]]\ndestinations = ["lab"]\npatient_system = 3\n', "[[routes]] #1 patient_system must be a string"),
    ('[routes]\ndestinations = ["lab"]\n', "routes must be [[routes]] tables"),
])
def test_routes_are_checked_at_load_naming_file_route_and_key(tmp_path, routes, says):
    destinations = "".join(f'[destinations.{name}]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
                           for name, table in DESTINATIONS.items())
    path = write(tmp_path, destinations + routes)
    if says is None:
        assert load_config(path, env={}).routes[0].destinations == ("lab",)
        return
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert str(refused.value).startswith(f"{path}: ") and says in str(refused.value)


TABLE = st.dictionaries(st.sampled_from(["destinations", "patient_system", "patient_value", "device", "default",
                                         "other"]),
                        st.one_of(st.text(max_size=12), st.booleans(), st.integers(), st.lists(st.text(max_size=9))),
                        max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(TABLE, max_size=3), TABLE, st.text(max_size=5)))
def test_any_routes_value_loads_or_is_refused_with_a_config_error(tmp_path_factory, routes):
    """Whatever [[routes]] holds, load_config gives routes that name configured destinations, or a ConfigError."""
    tmp_path = tmp_path_factory.getbasetemp()
    try:
        loaded = config(tmp_path, routes)
    except ConfigError as exc:
        assert "routes" in str(exc)
        return
    for each in loaded.routes:
        assert each.destinations and set(each.destinations) <= set(DESTINATIONS)
        assert each.default != any((each.patient_system, each.patient_value, each.device))
        each.matches(reading())  # never raises


# ------------------------------------------------------------------------------------------ the Intake


def test_the_intake_queues_each_reading_for_its_destinations_only(tmp_path):
    loaded = config(tmp_path, HUB)
    with Outbox(loaded.outbox_path) as outbox:
        intake = Intake(outbox, loaded.destination_names, routes=loaded.routes)
        a, b = reading(CLINIC_A, "A-1"), reading(CLINIC_B, "B-1", bt_address="C0-00-00-00-00-01")
        stored = intake.store([a, b, a], {"m": "1"})
        assert (stored.new, stored.known) == (2, 1)
        assert list(stored.ids[a.key]) == ["clinic_a"] and list(stored.ids[b.key]) == ["clinic_a", "clinic_b", "lab"]
        assert {d: outbox.counts(d)["queued"] for d in loaded.destination_names} == \
            {"clinic_a": 2, "clinic_b": 1, "lab": 1}
        assert intake.has(a) and intake.has(b) and intake.progress("m") == "1"
        assert intake.store([b]).known == 1  # stored for every one of its destinations: known


def test_an_unrouted_reading_is_refused_and_nothing_of_its_store_is_kept(tmp_path):
    loaded = config(tmp_path, HUB)
    with Outbox(loaded.outbox_path) as outbox:
        intake = Intake(outbox, loaded.destination_names, routes=loaded.routes)
        stray = reading(CLINIC_B, "X-9", spo2="93")
        with pytest.raises(Unrouted) as refused:
            intake.store([reading(CLINIC_A), stray], {"ble:X:glucose_seq": "7"})
        assert isinstance(refused.value, ReadingError)
        assert f"no [[routes]] entry matches patient {CLINIC_B}|X-9 (device 0A1B2C3D4E5F6001)" in str(refused.value)
        assert "93" not in str(refused.value)  # never a measured value
        assert sum(outbox.counts().values()) == 0 and intake.progress("ble:X:glucose_seq") is None
        assert not intake.has(stray) and intake.refusal(stray, "f.json") is not None
        assert intake.refusal(reading(CLINIC_A)) is None


def test_the_marker_is_committed_with_the_last_group_never_ahead(tmp_path):
    """Each destination set is one write; a failure after the first leaves the marker where it was."""
    loaded = config(tmp_path, HUB)
    with Outbox(loaded.outbox_path) as outbox:
        intake = Intake(outbox, loaded.destination_names, routes=loaded.routes)
        writes = []
        enqueue = outbox.enqueue

        def failing_second(destinations, items, state=None):
            writes.append((tuple(destinations), state))
            if len(writes) == 2:
                raise OSError("the second write failed")
            return enqueue(destinations, items, state)

        outbox.enqueue = failing_second
        with pytest.raises(OSError):
            intake.store([reading(CLINIC_A), reading(CLINIC_B, "B-1")], {"m": "2"})
        assert writes == [(("clinic_a",), None), (("clinic_b",), {"m": "2"})]
        assert intake.progress("m") is None and outbox.counts("clinic_a")["queued"] == 1
        outbox.enqueue = enqueue  # handed over again: the first group is known, the rest queued, the marker set
        stored = intake.store([reading(CLINIC_A), reading(CLINIC_B, "B-1")], {"m": "2"})
        assert (stored.new, stored.known, intake.progress("m")) == (1, 1, "2")


def test_a_source_does_not_acknowledge_an_unrouted_report_and_logs_why(tmp_path, caplog):
    """An IEEE 11073 agent of a patient no route takes: its report is answered with an ABRT, not an
    acknowledgement (the agent keeps it), nothing is stored, and the log names the patient."""
    import asyncio

    from ieee11073_agent import Agent, associated, read_apdu
    from phg.sources.ieee11073.apdu import Abrt
    from phg.sources.ieee11073.tcp import ManagerSettings, start_tcp_manager

    loaded = config(tmp_path, HUB)
    stray = PatientRef(CLINIC_B, "X-11073")

    async def scenario(outbox: Outbox) -> object:
        server = await start_tcp_manager(Intake(outbox, loaded.destination_names, routes=loaded.routes),
                                         ManagerSettings(stray), 0)
        agent = Agent("thermometer")
        async with server:
            reader, writer = await associated(server.sockets[0].getsockname()[1], agent)
            try:
                writer.write(agent.measurement(0)[1])
                return await read_apdu(reader)
            finally:
                writer.close()

    with Outbox(loaded.outbox_path) as outbox:
        answer = asyncio.run(asyncio.wait_for(scenario(outbox), 30))
        assert isinstance(answer, Abrt)
        assert sum(outbox.counts().values()) == 0
    assert f"no [[routes]] entry matches patient {CLINIC_B}|X-11073" in caplog.text


# ------------------------------------------------------------------------------------------ API, phg send


def test_the_api_refuses_an_unrouted_document_alone(tmp_path):
    loaded = config(tmp_path, HUB, api={})
    with Outbox(loaded.outbox_path) as outbox:
        ctx = ServiceContext(loaded, outbox, Intake(outbox, loaded.destination_names, routes=loaded.routes))
        client = TestClient(create_app(ctx), base_url="http://127.0.0.1:8470", client=("127.0.0.1", 50000))
        documents = [reading(CLINIC_A).to_document(), reading(CLINIC_B, "X-1").to_document()]
        answer = client.post("/v1/readings", json=documents)
        assert answer.status_code == 202, answer.text
        first, second = answer.json()["results"]
        assert first["status"] == "queued" and [i["destination"] for i in first["items"]] == ["clinic_a"]
        assert second == {"status": "refused", "error": f"request: patient: no [[routes]] entry matches patient "
                          f"{CLINIC_B}|X-1 (device 0A1B2C3D4E5F6001): add a route for it, or a default = true route"}
        assert answer.json()["refused"] == 1 and answer.json()["queued"] == 1
        only_stray = client.post("/v1/readings", json=[reading(CLINIC_B, "X-2").to_document()])
        assert only_stray.status_code == 400 and only_stray.json()["results"][0]["status"] == "refused"
        assert outbox.counts()["queued"] == 1


def test_phg_send_refuses_the_unrouted_document_and_queues_the_rest(tmp_path):
    path = write(tmp_path, f'[outbox]\npath = "{tmp_path / "o.sqlite"}"\n'
                 '[destinations.clinic_a]\ntype = "fhir"\nbase_url = "http://127.0.0.1:9/a"\n'
                 f'[[routes]]\ndestinations = ["clinic_a"]\npatient_system = "{CLINIC_A}"\n')
    readings = tmp_path / "readings.jsonl"
    readings.write_text("\n".join(json.dumps(r.to_document()) for r in (reading(CLINIC_A), reading(CLINIC_B, "X-3"))))
    done = subprocess.run([PHG, "--config", str(path), "send", "--no-deliver", str(readings)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PHG_CONFIG": ""})
    assert done.returncode == 1, done.stderr
    assert f"refused: {readings}: patient: no [[routes]] entry matches patient {CLINIC_B}|X-3" in done.stderr
    assert "queued 1 reading(s)" in done.stdout and "refused 1" in done.stdout
    with Outbox(tmp_path / "o.sqlite") as outbox:
        assert outbox.counts("clinic_a")["queued"] == 1


# ------------------------------------------------------------------------------------------ the flow


@pytest.mark.peers
@pytest.mark.parametrize("engine", ["sqlite", "jetstream"])
def test_two_clinics_patients_reach_two_fhir_servers_each_only_its_own(engine, request, sekmet, tmp_path):
    """Issue 15 acceptance (routing), on both engines: `phg send` of both clinics' readings, one config
    with two FHIR destinations and a route each; each server holds its clinic's readings and none of the
    other's."""
    from phg.demo.peers import SekmetServer
    from phg.demo.sim import simulated_readings
    from test_flow_fhir import START, matches
    from test_roles import queue_table

    with SekmetServer(workdir=tmp_path / "sekmet-b") as other:
        path = write(tmp_path, f'[outbox]\npath = "{tmp_path / "o.sqlite"}"\n{queue_table(request, engine)}'
                     f'[destinations.clinic_a]\ntype = "fhir"\nbase_url = "{sekmet.base_url}"\n'
                     f'[destinations.clinic_b]\ntype = "fhir"\nbase_url = "{other.base_url}"\n'
                     f'[[routes]]\ndestinations = ["clinic_a"]\npatient_system = "{CLINIC_A}"\n'
                     f'[[routes]]\ndestinations = ["clinic_b"]\npatient_system = "{CLINIC_B}"\n')
        suffix = os.urandom(4).hex()
        ours = {CLINIC_A: simulated_readings(PatientRef(CLINIC_A, f"A-{suffix}"), START, per_device=2),
                CLINIC_B: simulated_readings(PatientRef(CLINIC_B, f"B-{suffix}"), START, per_device=2)}
        files = []
        for n, readings in enumerate(ours.values()):
            files.append(tmp_path / f"clinic-{n}.jsonl")
            files[-1].write_text("\n".join(json.dumps(r.to_document()) for r in readings))
        done = subprocess.run([PHG, "--config", str(path), "send", *map(str, files)], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PHG_CONFIG": ""})
        assert done.returncode == 0, done.stdout + done.stderr
        for base, mine, theirs in ((sekmet.base_url, CLINIC_A, CLINIC_B), (other.base_url, CLINIC_B, CLINIC_A)):
            assert all(matches(base, r, m) == 1 for r in ours[mine] for m in r.metrics)
            assert all(matches(base, r, m) == 0 for r in ours[theirs] for m in r.metrics)
