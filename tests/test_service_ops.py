"""Issue 13, operations: /healthz, /readyz and /metrics (the acceptance: /metrics matches the queue after a
run with deliveries, a dead letter and a retry, against sekmet-fhir behind the fault proxy), each
destination's live status as the worker keeps it, the counters of phg.metrics, `--log-format json`,
sd_notify, and the packaging (systemd unit verified with systemd-analyze where it exists; the
Containerfile linted: no container runtime in CI)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from faultproxy import Fault, FaultProxy
from phg import metrics
from phg.config import load_config
from phg.delivery import Delivered, DeliveryWorker
from phg.delivery.fhir import FhirDestination
from phg.delivery.status import BACKING_OFF, DELIVERING, STOPPED, DestinationStatus, status_line
from phg.demo.sim import simulated_readings
from phg.errors import AuthError, ConfigError, StorageError, TransientDeliveryError
from phg.intake import Intake
from phg.logformat import JsonFormatter
from phg.model import PatientRef
from phg.outbox import Outbox
from phg.service import ops, systemd
from phg.service.app import ServiceContext
from test_reliability_faults import GATEWAY
from test_reliability_poison import RETIRED_DEVICE, retired_device

ROOT = Path(__file__).resolve().parents[1]
PATIENT = PatientRef("urn:oid:1.2.3.4.5", "ops")
START = datetime(2026, 11, 28, 9, tzinfo=UTC)
READINGS = simulated_readings(PATIENT, START, per_device=4)


def context(tmp_path: Path, names: list[str], outbox: Outbox, statuses=None) -> ServiceContext:
    destinations = {name: {"type": "fhir", "base_url": "http://127.0.0.1:9/fhir"} for name in names}
    config = load_config(env={}, document={"destinations": destinations,
                                           "outbox": {"path": str(tmp_path / "outbox.sqlite")}})
    return ServiceContext(config=config, outbox=outbox, intake=Intake(outbox, names), statuses=statuses or {})


def client(ctx: ServiceContext) -> httpx.AsyncClient:
    app = Starlette(routes=ops.routes(ctx))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1")


def sample(name: str, **labels: str) -> float:
    """A sample of phg.metrics now (0 before it was first counted)."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# ------------------------------------------------------------------------------------------ acceptance


@pytest.mark.peers
async def test_metrics_match_the_queue_after_deliveries_a_dead_letter_and_a_retry(sekmet, tmp_path):
    name = f"ops-{uuid.uuid4().hex[:8]}"  # the counters are per process: a name of this test's own
    patient = PatientRef("urn:oid:1.2.3.4.5", f"pt-{uuid.uuid4().hex[:12]}")
    good = simulated_readings(patient, START, per_device=3)
    bad = retired_device(simulated_readings(patient, START, per_device=1, devices=("glucose",))[0])
    status = DestinationStatus(name, "fhir")
    with FaultProxy(sekmet.base_url, [Fault("503", 1)]) as proxy, Outbox(tmp_path / "outbox.sqlite") as outbox:
        http = httpx.AsyncClient(timeout=30)
        outbox.enqueue(name, [(r.key, r.to_json()) for r in [*good, bad]])
        worker = DeliveryWorker(outbox, FhirDestination(http, proxy.url("/fhir"), GATEWAY, name=name),
                                batch_size=50, max_backoff=1.0, status=status)
        first = await worker.run(until_idle=True)  # 503 with Retry-After: 1: the batch is put back, the destination waits
        assert (first.retried, status.state) == (len(good) + 1, BACKING_OFF)
        assert status.reason == "the server asked to wait (Retry-After)" and status.until > time.time()
        proxy.refuse(RETIRED_DEVICE)  # from now on the server refuses the retired device's reading for good
        for _ in range(50):
            if not outbox.counts(name)["queued"]:
                break
            await asyncio.sleep(0.1)
            await worker.run(until_idle=True)
        await http.aclose()
        summary = worker.summary
        assert (summary.delivered, summary.dead, summary.retried) == (len(good), 1, len(good) + 1)
        assert status.state == DELIVERING and status.last_delivered is not None

        async with client(context(tmp_path, [name], outbox, {name: status})) as api:
            response = await api.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        samples = scrape(response.text)
        label = (("destination", name),)
        for state, count in outbox.counts(name).items():
            assert samples[("phg_queue_items", (("destination", name), ("state", state)))] == count
        assert outbox.counts(name) | {} == {"queued": 0, "inflight": 0, "delivered": len(good), "dead": 1}
        assert samples[("phg_delivered_total", label)] == summary.delivered
        assert samples[("phg_rejected_total", label)] == summary.dead
        assert samples[("phg_retried_total", label)] == summary.retried
        assert samples[("phg_delivery_latency_seconds_count", label)] == summary.delivered
        assert samples[("phg_delivery_latency_seconds_sum", label)] >= 1.0 * summary.delivered  # waited the Retry-After
        assert samples[("phg_last_delivery_timestamp_seconds", label)] == pytest.approx(status.last_delivered)
        assert samples[("phg_destination_state", (("destination", name), ("state", DELIVERING)))] == 1
        assert samples[("phg_destination_state", (("destination", name), ("state", STOPPED)))] == 0
        assert "access_token" not in response.text and patient.value not in response.text


@pytest.mark.peers
async def test_phg_runs_metrics_over_http_match_its_queue(sekmet, tmp_path):
    """The same through `phg run`'s own wiring (daemon.run_gateway with [api]: the workers' statuses in the
    service, uvicorn on a real port): a 503 then deliveries and a dead letter, scraped over HTTP. (The
    counters, per process, are checked exactly above, under a destination name of that test's own.)"""
    from phg.daemon import run_gateway

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    patient = PatientRef("urn:oid:1.2.3.4.5", f"pt-{uuid.uuid4().hex[:12]}")
    good = simulated_readings(patient, START, per_device=2)
    bad = retired_device(simulated_readings(patient, START, per_device=1, devices=("glucose",))[0])
    schedule = [Fault("pass"), Fault("503", 1)]  # the first POST carries it: refused (422); the next gets a 503
    with FaultProxy(sekmet.base_url, schedule) as proxy, Outbox(tmp_path / "outbox.sqlite") as outbox:
        proxy.refuse(RETIRED_DEVICE)
        config = load_config(env={}, document={
            "gateway": {"system_id": GATEWAY.system_id, "serial": GATEWAY.serial},
            "fhir": {"base_url": proxy.url("/fhir")}, "outbox": {"path": str(tmp_path / "outbox.sqlite")},
            "delivery": {"max_retry_delay": 1}, "api": {"listen": f"127.0.0.1:{port}"}})
        outbox.enqueue("fhir", [(r.key, r.to_json()) for r in [*good, bad]])
        stop = asyncio.Event()
        gateway = asyncio.create_task(run_gateway(config, outbox, stop))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            for _ in range(300):
                await asyncio.sleep(0.1)
                if outbox.counts("fhir")["delivered"] + outbox.counts("fhir")["dead"] == len(good) + 1:
                    break
            response = await api.get("/metrics")
        stop.set()
        summary = await asyncio.wait_for(gateway, 30)
        samples = scrape(response.text)
        counts = outbox.counts("fhir")
    assert counts == {"queued": 0, "inflight": 0, "delivered": len(good), "dead": 1}
    for state, count in counts.items():
        assert samples[("phg_queue_items", (("destination", "fhir"), ("state", state)))] == count
    assert summary.retried >= 1 and [record.kind for record in proxy.records].count("503") == 1
    assert samples[("phg_destination_state", (("destination", "fhir"), ("state", DELIVERING)))] == 1
    assert samples[("phg_last_delivery_timestamp_seconds", (("destination", "fhir"),))] <= time.time()


# ------------------------------------------------------------------------------------------ status


class Scripted:
    def __init__(self, name: str, failures=()):
        self.name = name
        self.failures = list(failures)

    async def send(self, readings):
        if self.failures:
            raise self.failures.pop(0)
        return [Delivered("Observation/1") for _ in readings]


@pytest.fixture
def outbox(tmp_path):
    with Outbox(tmp_path / "outbox.sqlite") as box:
        yield box


async def run_scripted(outbox: Outbox, *failures: Exception) -> DeliveryWorker:
    name = f"s-{uuid.uuid4().hex[:8]}"
    outbox.enqueue(name, [(r.key, r.to_json()) for r in READINGS])
    worker = DeliveryWorker(outbox, Scripted(name, failures), status=DestinationStatus(name, "fhir"))
    try:
        await worker.run(until_idle=True)
    except (AuthError, ConfigError):
        pass
    return worker


@pytest.mark.parametrize(("error", "reason"), [
    (AuthError("invalid_client: unknown client (token endpoint https://ehr.example/token)"),
     "authorization problem: invalid_client: unknown client (token endpoint https://ehr.example/token)"),
    (ConfigError("the FHIR base answered 404: check base_url\x1b[2J"),
     "configuration problem: the FHIR base answered 404: check base_url[2J"),
])
async def test_a_stopped_destination_says_what_to_fix(outbox, error, reason):
    worker = await run_scripted(outbox, error)
    assert (worker.status.state, worker.status.reason) == (STOPPED, reason)  # printable: no escape sequence


async def test_an_unreachable_destination_backs_off_until_a_time(outbox):
    before = time.time()
    worker = await run_scripted(outbox, TransientDeliveryError("connection refused", reached=False))
    status = worker.status
    assert status.state == BACKING_OFF and status.reason == "unreachable: connection refused"
    assert before < status.until <= time.time() + 1.0 and status.last_delivered is None


async def test_after_the_wait_the_destination_delivers_again(outbox):
    worker = await run_scripted(outbox, TransientDeliveryError("busy", retry_after=0.05))
    assert worker.status.state == BACKING_OFF
    await asyncio.sleep(0.1)
    await worker.run(until_idle=True)
    assert worker.status.state == DELIVERING and worker.status.reason is None and worker.status.until is None
    assert time.time() - worker.status.last_delivered < 5


# ------------------------------------------------------------------------------------------ probes


async def test_healthz_and_readyz_on_a_working_gateway(tmp_path, outbox):
    ctx = context(tmp_path, ["ehr"], outbox, {"ehr": DestinationStatus("ehr", "fhir")})
    async with client(ctx) as api:
        assert (await api.get("/healthz")).json() == {"status": "alive"}
        ready = await api.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"ready": True, "problems": []})
    assert outbox.source_state("service:heartbeat") is not None  # a real write proved the queue writable


async def test_readyz_refuses_with_a_stopped_destination(tmp_path, outbox):
    stopped = DestinationStatus("mllp", "mllp", STOPPED, reason="configuration problem: no ACK from host")
    ctx = context(tmp_path, ["ehr", "mllp"], outbox, {"ehr": DestinationStatus("ehr", "fhir"), "mllp": stopped})
    async with client(ctx) as api:
        ready = await api.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["problems"] == ["destination mllp stopped: configuration problem: no ACK from host"]


async def test_readyz_refuses_when_the_queue_cannot_be_written(tmp_path, outbox):
    class Full(Intake):
        def heartbeat(self, source: str) -> None:
            raise StorageError("outbox /var/lib/phg/outbox.sqlite: database or disk is full")

    ctx = context(tmp_path, ["ehr"], outbox)
    ctx.intake = Full(outbox, ["ehr"])
    async with client(ctx) as api:
        ready = await api.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["problems"] == ["the queue cannot be written: outbox /var/lib/phg/outbox.sqlite: "
                                        "database or disk is full"]


async def test_the_assembled_service_serves_the_probes_and_lists_them(tmp_path, outbox):
    from phg.service.app import create_app

    app = create_app(context(tmp_path, ["ehr"], outbox))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1") as api:
        assert (await api.get("/healthz")).status_code == 200
        assert (await api.get("/metrics")).status_code == 200
    assert set(ops.OPENAPI["paths"]) == {"/healthz", "/readyz", "/metrics"}


# ------------------------------------------------------------------------------------------ counters


async def test_token_requests_and_failures_are_counted():
    """Unit level (a scripted token endpoint): one token granted, one refused."""
    requests, failures = sample("phg_token_requests_total"), sample("phg_token_failures_total")
    granted = httpx.MockTransport(lambda request: httpx.Response(
        200, json={"access_token": "t", "token_type": "bearer", "expires_in": 300}))
    refused = httpx.MockTransport(lambda request: httpx.Response(400, json={"error": "invalid_client"}))
    await token_auth(granted).token()
    with pytest.raises(AuthError):
        await token_auth(refused).token()
    assert sample("phg_token_requests_total") - requests == 2
    assert sample("phg_token_failures_total") - failures == 1


def token_auth(transport: httpx.MockTransport):
    from phg.auth.secret import ClientSecret
    from phg.auth.token import ClientCredentials, TokenAuth

    return TokenAuth(ClientCredentials(), ClientSecret("gw", "s3cret"), fhir_base="https://ehr.example/fhir",
                     scope="system/Observation.c", token_url="https://ehr.example/token",
                     client=httpx.AsyncClient(transport=transport))


def test_a_malformed_apdu_counts_as_a_decode_error():
    from phg.sources.ieee11073.manager import Aborted, Manager

    before = sample("phg_source_decode_errors_total", source="11073")
    events = Manager().receive_data(bytes.fromhex("E200000400020000"), 0.0)
    assert any(isinstance(e, Aborted) for e in events)
    assert sample("phg_source_decode_errors_total", source="11073") - before == 1


# ------------------------------------------------------------------------------------------ logs


def test_json_log_lines_parse_and_hold_no_control_characters():
    record = logging.LogRecord("phg.delivery.worker", logging.WARNING, __file__, 1, "%s: said %s", ("fhir", "\x1b[31mX"),
                               None)
    line = JsonFormatter().format(record)
    assert "\x1b" not in line and "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "WARNING" and parsed["logger"] == "phg.delivery.worker"
    assert parsed["message"] == "fhir: said \x1b[31mX" and parsed["time"].endswith("+00:00")
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exception"]


def test_log_format_json_on_the_command_line(tmp_path):
    phg = str(Path(sys.executable).parent / "phg")
    env = {**os.environ, "PHG_CONFIG": "", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "c"),
           "XDG_DATA_HOME": str(tmp_path / "d")}
    (tmp_path / "r.json").write_text(READINGS[0].to_json())
    result = subprocess.run([phg, "--log-format", "json", "-vv", "--outbox", str(tmp_path / "o.sqlite"),
                             "--fhir-base", "http://127.0.0.1:9/fhir", "send", str(tmp_path / "r.json")],
                            env=env, capture_output=True, text=True, timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result
    for line in lines:
        assert set(json.loads(line)) >= {"time", "level", "logger", "message"}, line


# ------------------------------------------------------------------------------------------ systemd


def test_notify_and_watchdog_reach_the_notify_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}
        assert systemd.notify("READY=1", env)
        assert server.recv(100) == b"READY=1"

        async def ping_a_while() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(systemd.watchdog(stop, env))
            await asyncio.sleep(0.12)
            stop.set()
            await task

        asyncio.run(ping_a_while())
        assert [server.recv(100), server.recv(100)] == [b"WATCHDOG=1", b"WATCHDOG=1"]
    assert not systemd.notify("READY=1", {})
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None


def test_status_is_sent_when_it_changes_and_names_what_stopped_and_why(tmp_path, monkeypatch):
    """STATUS= (what `systemctl status` shows) without a watchdog: sent at once, then only when the line changes;
    one line even when a reason holds a newline."""
    monkeypatch.setattr(systemd, "STATUS_EVERY", 0.02)
    statuses = {"fhir": DestinationStatus("fhir", "fhir"), "lab": DestinationStatus("lab", "mllp")}
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)

        async def change_a_while() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(systemd.watchdog(stop, {"NOTIFY_SOCKET": path},
                                                        lambda: status_line(statuses.values())))
            await asyncio.sleep(0.1)
            statuses["lab"].state, statuses["lab"].reason = STOPPED, "auth problem: the token endpoint\nsaid no"
            await asyncio.sleep(0.1)
            stop.set()
            await task

        asyncio.run(change_a_while())
        server.settimeout(0.2)
        said = [server.recv(500)]
        with contextlib.suppress(TimeoutError):
            said.append(server.recv(500))
            said.append(server.recv(500))
    assert said == [b"STATUS=delivering to fhir, lab", b"STATUS=lab stopped: auth problem: the token endpoint said no"]
    assert status_line([]) == "no delivery in this process"


# ------------------------------------------------------------------------------------------ packaging


def unit() -> dict[str, str]:
    return dict(re.findall(r"^(\w+)=(.*)$", (ROOT / "packaging" / "phg.service").read_text(), re.M))


def test_the_unit_is_type_notify_with_a_watchdog_and_hardened():
    settings = unit()
    assert settings["Type"] == "notify" and int(settings["WatchdogSec"]) > 0
    assert settings["DynamicUser"] == "yes" and settings["StateDirectory"] == "phg"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables", "RestrictSUIDSGID"):
        assert settings[key] == "yes", key
    assert settings["ProtectSystem"] == "strict" and settings["CapabilityBoundingSet"] == ""
    assert "--log-format json" in settings["ExecStart"] and settings["ExecStart"].endswith(" run")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    # verify checks that ExecStart's program exists: point it at this venv's phg
    text = (ROOT / "packaging" / "phg.service").read_text()
    text = text.replace("/opt/phg/bin/phg", str(Path(sys.executable).parent / "phg"))
    (tmp_path / "phg.service").write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "phg.service")],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if "phg.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_the_containerfile_is_slim_non_root_without_node_and_checks_healthz():
    """No container runtime in CI: the Containerfile's structure is checked instead of building it."""
    text = (ROOT / "packaging" / "Containerfile").read_text().replace("\\\n", " ")  # continuation lines joined
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    instructions = [line.split()[0] for line in lines]
    images = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert images and all(re.fullmatch(r"python:3\.\d+-slim", image) for image in images)
    users = [line.split()[1].split(":")[0] for line in lines if line.startswith("USER ")]
    last_run = max(i for i, name in enumerate(instructions) if name == "RUN")
    assert users and users[-1] not in ("root", "0") and instructions.index("USER") > last_run
    healthcheck = next(line for line in lines if line.startswith("HEALTHCHECK"))
    assert "/healthz" in healthcheck and "8470" in healthcheck
    assert not re.search(r"\b(node|nodejs|npm)\b", " ".join(lines))
    assert any(line.startswith("EXPOSE 8470") for line in lines)


# ------------------------------------------------------------------------------------------ wake


async def test_an_idle_worker_woken_delivers_at_once(outbox):
    """An idle gateway delivers what the API queued without waiting for its next poll (idle_poll)."""
    name = f"w-{uuid.uuid4().hex[:8]}"
    worker = DeliveryWorker(outbox, Scripted(name), idle_poll=30.0)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.2)  # idle: nothing queued
    outbox.enqueue(name, [(READINGS[0].key, READINGS[0].to_json())])
    started = time.monotonic()
    worker.wake()
    for _ in range(100):
        if outbox.counts(name)["delivered"]:
            break
        await asyncio.sleep(0.02)
    assert outbox.counts(name)["delivered"] == 1 and time.monotonic() - started < 1.5
    stop.set()
    await asyncio.wait_for(running, 5)


# ------------------------------------------------------------------------------------------ source events


def test_a_bluetooth_fetch_counts_the_device_its_records_and_a_malformed_value(tmp_path):
    """Over the emulated radio (Bumble): one device connected, ten records fetched, one value not decoded."""
    from phg.demo import emulator as emu
    from test_ble_session import collect, meter_with

    meter = meter_with(10)
    meter.garbage_after = 3
    counters = ("phg_source_devices_connected_total", "phg_source_records_fetched_total",
                "phg_source_decode_errors_total")
    before = [sample(c, source="ble") for c in counters]

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([meter]) as radio:
            return await collect(radio, outbox, meter.address)

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        result = asyncio.run(scenario(outbox))
    assert (result.readings, result.skipped) == (10, 1)
    assert [sample(c, source="ble") - b for c, b in zip(counters, before, strict=True)] == [1, 10, 1]


def test_phg_run_tells_systemd_it_is_ready_pings_the_watchdog_and_stopping(tmp_path):
    """`phg run` as the unit runs it (Type=notify, WatchdogSec): READY=1 once delivery runs, WATCHDOG=1 from
    its event loop (STATUS= between them), STOPPING=1 on SIGTERM; then it exits 0."""
    path = str(tmp_path / "notify")
    config = tmp_path / "phg.toml"
    with socket.socket() as closed:  # a port nothing listens on: the destination waits behind its circuit
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config.write_text(f'[fhir]\nbase_url = "http://127.0.0.1:{port}/fhir"\n'
                      f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n')
    env = {**os.environ, "PHG_CONFIG": str(config), "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "d"),
           "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(30)
        process = subprocess.Popen([str(Path(sys.executable).parent / "phg"), "run"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        def received() -> bytes:  # the next message but STATUS= (the destination's state, sent when it changes)
            while (message := server.recv(200)).startswith(b"STATUS="):
                pass
            return message

        try:
            assert server.recv(100) == b"READY=1"
            assert [received(), received()] == [b"WATCHDOG=1", b"WATCHDOG=1"]
            process.terminate()
            messages = [received()]
            while messages[-1] == b"WATCHDOG=1":
                messages.append(received())
            assert messages[-1] == b"STOPPING=1"
            assert process.wait(30) == 0, process.stderr.read()
        finally:
            process.kill()
            process.wait(30)
