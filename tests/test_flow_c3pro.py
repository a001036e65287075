"""Issue 12, acceptance: phg speaks C3-PRO to the test peer built from ../shared/docs/c3pro-facts.md
(tests/c3pro_peer.py, which decrypts with the consumer's algorithms, not with phg's): `phg register`
with Antispam, `phg doctor` and the 202 token (renewed after expiry), the seven reading types delivered
as valid FHIR STU3 with the right subject, nothing posted twice (again, nor across a SIGKILL between two
posts), a lost answer resent and counted. (The iOS AES vector and the unit tests: test_c3pro_envelope.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.STU3 import get_fhir_model_class

from c3pro_peer import C3ProPeer, sha1_base64
from phg.config import load_config
from phg.daemon import deliver
from phg.delivery.c3pro import Journal
from phg.demo.sim import simulated_readings
from phg.doctor import run_checks
from phg.fhir import conditional_identifier
from phg.mdc import MDC_SYSTEM
from phg.model import PatientRef, Reading
from phg.outbox import Outbox
from test_c3pro_envelope import SEVEN, reading

pytestmark = pytest.mark.peers

PHG = str(Path(sys.executable).parent / "phg")
START = datetime(2026, 11, 28, 9, tzinfo=UTC)


def write_config(tmp_path: Path, peer: C3ProPeer, *, registered: bool = True, **extra: object) -> Path:
    """A config with one [destinations.c3] of type c3pro (the peer's DER certificate, as deployments hand
    it out; `extra` keys added), the outbox and journal under tmp_path, short retry delays; with
    `registered`, a client made at the peer (else `phg register` adds it)."""
    antispam = tmp_path / "antispam"
    antispam.write_text(peer.antispam + "\n")
    antispam.chmod(0o600)
    table = {"type": "c3pro", "base_url": peer.base_url, "key_id": peer.key_id, "antispam_file": str(antispam),
             "public_key": str(peer.write_certificate(tmp_path / "public.crt")),
             "journal": str(tmp_path / "journal.sqlite"), "timeout": 5} | extra
    if registered:
        table["client_id"], table["client_secret"] = peer.register_client()
    path = tmp_path / "phg.toml"
    path.write_text(f'[gateway]\nsystem_id = "02AB7FFFFE00C3C3"\n[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n'
                    "[delivery]\nmax_retry_delay = 1\nlease_seconds = 5\n"
                    "[destinations.c3]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    path.chmod(0o600)
    return path


def every_reading_type() -> list[Reading]:
    """The seven reading types (glucose, blood pressure, weight, temperature, SpO2, heart rate, CGM:
    test_c3pro_envelope.SEVEN) and the simulator's five devices, for two patients."""
    return [reading(doc) for doc in SEVEN.values()] + simulated_readings(PatientRef("urn:oid:1.2.3.4.5", "c3pro-sim"),
                                                                          START)


def observations_by_identifier(peer: C3ProPeer) -> Counter[tuple[str, str]]:
    return Counter((o["identifier"][0].get("system"), o["identifier"][0]["value"]) for o in peer.resources("Observation"))


def assert_delivered_once(peer: C3ProPeer, readings: list[Reading]) -> None:
    """Each metric's Observation arrived exactly once, valid STU3, with the MDC code, and its subject
    is the Patient (also at the peer, valid STU3) that carries the reading's patient identifier."""
    assert peer.problems == []
    for resource in peer.resources():
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)  # raises if not STU3
    patients = {p["id"]: (p["identifier"][0]["system"], p["identifier"][0]["value"]) for p in peer.resources("Patient")}
    observations = {(o["identifier"][0].get("system"), o["identifier"][0]["value"]): o
                    for o in peer.resources("Observation")}
    wanted = {conditional_identifier(r, m): (r, m) for r in readings for m in r.metrics}
    assert observations_by_identifier(peer) == Counter(dict.fromkeys(wanted, 1))
    for identifier, (sent, metric) in wanted.items():
        observation = observations[identifier]
        kind, _, pid = observation["subject"]["reference"].partition("/")
        assert kind == "Patient" and patients[pid] == (sent.patient.system, sent.patient.value)
        assert {"system": MDC_SYSTEM, "code": str(metric.code)}.items() <= observation["code"]["coding"][0].items()


def phg_env(tmp_path: Path, config: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_DATA_HOME": str(tmp_path / "data"), "PHG_CONFIG": str(config)}


def phg(tmp_path: Path, config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PHG, *args], env=phg_env(tmp_path, config), capture_output=True, text=True, timeout=120,
                          input=stdin)


def daemon(config: Path, tmp_path: Path, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PHG, "run"], env=phg_env(tmp_path, config), stdout=log, stderr=subprocess.STDOUT)


async def test_register_doctor_and_deliver(c3pro_peer, tmp_path):
    """phg register (Antispam, the app's body, the 201 with its trailing comma), phg doctor (the 202
    token), then every reading type delivered with the stored credentials."""
    config = write_config(tmp_path, c3pro_peer, registered=False)
    registered = phg(tmp_path, config, "register", "--destination", "c3")
    assert registered.returncode == 0, registered.stderr
    (request,) = c3pro_peer.registrations
    assert request.headers["antispam"] == c3pro_peer.antispam
    assert request.headers["content-type"].startswith("application/json")
    assert json.loads(request.body)["receipt-data"] == "NO-APP-RECEIPT"
    assert config.stat().st_mode & 0o077 == 0
    settings = load_config(config, env={}).destinations[0]
    assert settings.client_id == request.client_id and settings.client_secret  # type: ignore[attr-defined]
    assert c3pro_peer.clients[request.client_id] == sha1_base64(settings.client_secret)  # type: ignore[attr-defined]
    assert settings.client_secret not in registered.stdout + registered.stderr  # type: ignore[attr-defined]
    again = phg(tmp_path, config, "register", "--destination", "c3")
    assert again.returncode != 0 and "already registered" in again.stderr, again.stderr
    doctor = phg(tmp_path, config, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert c3pro_peer.token_requests == 1 and c3pro_peer.submissions == []  # no live send
    readings = every_reading_type()
    queued = phg(tmp_path, config, "send", "-", stdin="\n".join(r.to_json() for r in readings))
    assert queued.returncode == 0, queued.stderr
    assert_delivered_once(c3pro_peer, readings)


def test_register_with_a_wrong_antispam_token_stores_nothing(c3pro_peer, tmp_path):
    config = write_config(tmp_path, c3pro_peer, registered=False)
    before = config.read_text()
    refused = phg(tmp_path, config, "register", "--destination", "c3", "--antispam", "not-the-token")
    assert refused.returncode != 0 and "Antispam token not validated" in refused.stderr, refused.stderr
    assert config.read_text() == before and c3pro_peer.clients == {}


async def test_doctor_checks_key_registration_and_token_without_sending(c3pro_peer, tmp_path):
    lines: list[str] = []
    results: list[dict[str, Any]] = []
    assert await run_checks(load_config(write_config(tmp_path, c3pro_peer), env={}), lines.append, results=results)
    steps = [(r["step"], r["status"]) for r in results if r["destination"] == "c3"]
    assert steps == [("config", "ok"), ("registration", "ok"), ("token", "ok"), ("journal", "ok")]
    assert c3pro_peer.submissions == [] and c3pro_peer.token_requests == 1

    results.clear()
    unregistered = load_config(write_config(tmp_path, c3pro_peer, registered=False), env={})
    assert not await run_checks(unregistered, lines.append, results=results)
    failed = [r for r in results if r["status"] == "fail"]
    assert failed[0]["step"] == "registration" and "phg register --destination c3" in failed[0]["fix"]


async def test_every_reading_type_arrives_once_as_stu3_with_its_subject(c3pro_peer, tmp_path):
    config = load_config(write_config(tmp_path, c3pro_peer), env={})
    readings = every_reading_type()
    with Outbox(config.outbox_path) as outbox:
        outbox.enqueue(config.destination_names, [(r.key, r.to_json()) for r in readings])
        summary = await deliver(config, outbox, until_idle=True)
        assert (summary.delivered, summary.dead) == (len(readings), 0)
        assert c3pro_peer.token_requests == 1  # one token for the whole run (1800 s)
        # Sending the same readings again (a resend after the outbox lost track) posts nothing new.
        outbox.enqueue(config.destination_names, [(r.key + "-again", r.to_json()) for r in readings])
        await deliver(config, outbox, until_idle=True)
    assert_delivered_once(c3pro_peer, readings)
    assert {s.path for s in c3pro_peer.submissions} == {"Patient", "Observation"}
    assert all(s.path == s.resource["resourceType"] for s in c3pro_peer.submissions if s.resource)
    assert {(s.key_length, s.key_id, s.version) for s in c3pro_peer.submissions} == {(32, c3pro_peer.key_id, "3.0.0")}


async def test_an_expired_token_is_renewed_once(c3pro_peer, tmp_path):
    """C3-PRO has no refresh tokens: a 401 on /encfhir means a new client-credentials token, then the post."""
    config = load_config(write_config(tmp_path, c3pro_peer, resources=["Observation"]), env={})
    first, second = reading(SEVEN["thermometer"]), reading(SEVEN["heart_rate"])
    with Outbox(config.outbox_path) as outbox:
        outbox.enqueue(config.destination_names, [(first.key, first.to_json())])
        await deliver(config, outbox, until_idle=True)
        c3pro_peer.expire_tokens()
        outbox.enqueue(config.destination_names, [(second.key, second.to_json())])
        assert (await deliver(config, outbox, until_idle=True)).delivered == 1
    assert len(c3pro_peer.resources("Observation")) == 2 and c3pro_peer.resources("Patient") == []
    assert c3pro_peer.problems == []


def test_sigkill_between_two_posts_posts_nothing_twice(c3pro_peer, tmp_path):
    """`phg run` is killed (SIGKILL) while its next post is held at the peer, i.e. after the server's
    last 200 and before it takes another; restarted, it posts only what the server has not taken."""
    readings = simulated_readings(PatientRef("urn:oid:1.2.3.4.5", "c3pro-crash"), START, per_device=4)
    config = write_config(tmp_path, c3pro_peer)
    queued = phg(tmp_path, config, "send", "--no-deliver", "-", stdin="\n".join(r.to_json() for r in readings))
    assert queued.returncode == 0, queued.stderr
    c3pro_peer.hold_after(7)  # mid-batch, mid-reading: the Patient and some Observations taken
    with (tmp_path / "daemon.log").open("ab") as log:
        proc = daemon(config, tmp_path, log)
        try:
            assert c3pro_peer.holding.wait(60), (tmp_path / "daemon.log").read_text()
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            assert c3pro_peer.dropped.wait(10)  # the held post is not taken
        finally:
            c3pro_peer.release()
        assert len(c3pro_peer.submissions) == 7
        proc = daemon(config, tmp_path, log)
        try:
            wanted = sum(len(r.metrics) for r in readings)
            deadline = time.monotonic() + 60
            while len(observations_by_identifier(c3pro_peer)) < wanted and time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert_delivered_once(c3pro_peer, readings)
    assert len(c3pro_peer.resources("Patient")) == 1


async def test_a_lost_answer_is_resent_once_and_counted(c3pro_peer, tmp_path):
    """The server took a post but its answer never came (the client timed out): phg cannot tell, so it
    posts that resource again (the one duplicate C3-PRO will hold) and counts it; nothing else doubles."""
    config = load_config(write_config(tmp_path, c3pro_peer, timeout=1), env={})
    readings = simulated_readings(PatientRef("urn:oid:1.2.3.4.5", "c3pro-lost"), START)
    c3pro_peer.hold_after(3, lose_answer=True)
    with Outbox(config.outbox_path) as outbox:
        outbox.enqueue(config.destination_names, [(r.key, r.to_json()) for r in readings])
        for _ in range(20):  # the retry is due after a back-off of up to 1 s
            await deliver(config, outbox, until_idle=True)
            if outbox.counts("c3")["delivered"] == len(readings):
                break
            await asyncio.sleep(0.5)
        assert outbox.counts("c3")["delivered"] == len(readings)
    lost = c3pro_peer.submissions[3].resource
    counts = observations_by_identifier(c3pro_peer)
    assert c3pro_peer.problems == [] and lost is not None
    assert counts.pop((lost["identifier"][0]["system"], lost["identifier"][0]["value"])) == 2
    assert set(counts.values()) == {1} and len(counts) == sum(len(r.metrics) for r in readings) - 1
    journal = Journal(config.destinations[0].journal)  # type: ignore[attr-defined]
    try:
        assert journal.possible_duplicates == 1
    finally:
        journal.close()
