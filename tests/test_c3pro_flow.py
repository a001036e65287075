"""Issue 12 against the C3-PRO test peer (tests/c3pro_peer.py, built from the facts): phg register
with the Antispam header, the 202 token, the seven reading types delivered as STU3 resources one per
envelope with the right subject, nothing posted twice (again, nor across a SIGKILL between two
posts), and phg doctor without a live send."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from fhir.resources.STU3.observation import Observation
from fhir.resources.STU3.patient import Patient

from phg.cli import main
from phg.config import load_config
from phg.daemon import deliver
from phg.delivery.c3pro import Journal
from phg.doctor import run_checks
from phg.outbox import Outbox
from test_c3pro_envelope import SEVEN, reading

pytestmark = pytest.mark.peers
PHG = str(Path(sys.executable).parent / "phg")


def write_config(tmp_path: Path, peer, *, registered: bool = True, **extra: object) -> Path:
    """A c3pro destination for the peer (its DER certificate, as deployments hand it out)."""
    token = tmp_path / "antispam"
    token.write_text(peer.antispam + "\n")
    token.chmod(0o600)
    table = {"type": "c3pro", "base_url": peer.base_url, "key_id": peer.key_id, "antispam_file": str(token),
             "public_key": str(peer.write_certificate(tmp_path / "public.crt")),
             "journal": str(tmp_path / "journal.sqlite")} | extra
    if registered:
        table["client_id"], table["client_secret"] = peer.register_client()
    path = tmp_path / "phg.toml"
    path.write_text(f'[gateway]\nsystem_id = "02AB7FFFFE00C3C3"\n[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n'
                    "[destinations.c3]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    path.chmod(0o600)
    return path


def expected_observations() -> int:
    return sum(len(doc["metrics"]) for doc in SEVEN.values())


def assert_each_resource_once(peer) -> None:
    identifiers = Counter(r["identifier"][0]["value"] for r in peer.resources("Observation"))
    assert len(identifiers) == expected_observations() and set(identifiers.values()) == {1}
    assert len(peer.resources("Patient")) == 1 and peer.problems == []


def test_register_sends_antispam_and_the_apps_body_and_stores_the_credentials(c3pro_peer, tmp_path):
    path = write_config(tmp_path, c3pro_peer, registered=False)
    result = CliRunner().invoke(main, ["--config", str(path), "register", "--destination", "c3"])
    assert result.exit_code == 0, result.output
    (registration,) = c3pro_peer.registrations
    assert registration.headers["antispam"] == c3pro_peer.antispam and registration.client_id
    body = json.loads(registration.body)
    assert body["receipt-data"] == "NO-APP-RECEIPT" and body["grant_types"][0] == "client_credentials"
    (settings,) = load_config(path, env={}).destinations
    assert settings.client_id == registration.client_id and settings.client_secret  # the 201's trailing comma read
    assert path.stat().st_mode & 0o777 == 0o600 and settings.client_secret not in result.output
    again = CliRunner().invoke(main, ["--config", str(path), "register", "--destination", "c3"])
    assert again.exit_code != 0 and "already registered" in again.output


def test_a_wrong_antispam_token_is_named_and_nothing_is_stored(c3pro_peer, tmp_path):
    path = write_config(tmp_path, c3pro_peer, registered=False)
    before = path.read_text()
    result = CliRunner().invoke(main, ["--config", str(path), "register", "--destination", "c3"],
                                env={"PHG_C3PRO_ANTISPAM": "wrong"})
    assert result.exit_code != 0 and "HTTP 401" in result.output and "Antispam" in result.output
    assert path.read_text() == before


async def test_seven_reading_types_arrive_once_as_stu3_with_the_patients_id(c3pro_peer, tmp_path):
    config = load_config(write_config(tmp_path, c3pro_peer), env={})
    readings = [reading(doc) for doc in SEVEN.values()]
    with Outbox(config.outbox_path) as outbox:
        outbox.enqueue(config.destination_names, [(r.key, r.to_json()) for r in readings])
        summary = await deliver(config, outbox, until_idle=True)
    assert (summary.delivered, summary.dead) == (len(readings), 0)
    assert c3pro_peer.token_requests == 1  # one token (a 202) for every post
    assert_each_resource_once(c3pro_peer)
    (patient,) = c3pro_peer.resources("Patient")
    Patient.model_validate(patient)
    for observation in c3pro_peer.resources("Observation"):
        Observation.model_validate(observation)
        assert observation["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert {(s.path.strip("/"), s.key_id, s.version, s.key_length) for s in c3pro_peer.submissions} == {
        ("Patient", c3pro_peer.key_id, "3.0.0", 32), ("Observation", c3pro_peer.key_id, "3.0.0", 32)}

    # The same readings again, through a new outbox (the journal is the destination's): nothing is posted.
    sent = len(c3pro_peer.submissions)
    with Outbox(tmp_path / "second.sqlite") as outbox:
        outbox.enqueue(config.destination_names, [(r.key, r.to_json()) for r in readings])
        assert (await deliver(config, outbox, until_idle=True)).delivered == len(readings)
    assert len(c3pro_peer.submissions) == sent


async def test_an_expired_token_is_renewed_once(c3pro_peer, tmp_path):
    config = load_config(write_config(tmp_path, c3pro_peer, resources=["Observation"]), env={})
    with Outbox(config.outbox_path) as outbox:
        first, second = reading(SEVEN["thermometer"]), reading(SEVEN["heart_rate"])
        outbox.enqueue(config.destination_names, [(first.key, first.to_json())])
        await deliver(config, outbox, until_idle=True)
        c3pro_peer.expire_tokens()  # the server answers 401; phg fetches a new token and posts once more
        outbox.enqueue(config.destination_names, [(second.key, second.to_json())])
        assert (await deliver(config, outbox, until_idle=True)).delivered == 1
    assert len(c3pro_peer.resources("Observation")) == 2 and c3pro_peer.resources("Patient") == []


def test_nothing_is_posted_twice_across_a_sigkill_between_two_posts(c3pro_peer, tmp_path):
    """`phg send` is killed while its third post waits at the server (held, then dropped untaken:
    the kill fell between the second post's 200 and the third post); the next `phg send` resends only
    what had no 200."""
    path = write_config(tmp_path, c3pro_peer, timeout=2)
    with path.open("a") as config:
        config.write("[delivery]\nlease_seconds = 2\nmax_retry_delay = 1\n")
    documents = tmp_path / "readings.jsonl"
    documents.write_text("\n".join(reading(doc).to_json() for doc in SEVEN.values()))
    env = {**os.environ, "PHG_CONFIG": str(path), "HOME": str(tmp_path)}
    c3pro_peer.hold_after(2)
    proc = subprocess.Popen([PHG, "send", str(documents)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        assert c3pro_peer.holding.wait(60), proc.stderr.read() if proc.poll() is not None else "no third post"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    c3pro_peer.release()
    time.sleep(2.5)  # the killed run's lease runs out
    again = subprocess.run([PHG, "send", str(documents)], env=env, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr.decode()
    assert_each_resource_once(c3pro_peer)
    assert len(c3pro_peer.submissions) == expected_observations() + 1


async def test_doctor_checks_key_registration_and_token_without_sending(c3pro_peer, tmp_path):
    lines: list[str] = []
    results: list[dict] = []
    assert await run_checks(load_config(write_config(tmp_path, c3pro_peer), env={}), lines.append, results=results)
    steps = [(r["step"], r["status"]) for r in results if r["destination"] == "c3"]
    assert steps == [("config", "ok"), ("registration", "ok"), ("token", "ok"), ("journal", "ok")]
    assert c3pro_peer.submissions == [] and c3pro_peer.token_requests == 1

    results.clear()
    unregistered = load_config(write_config(tmp_path, c3pro_peer, registered=False), env={})
    assert not await run_checks(unregistered, lines.append, results=results)
    failed = [r for r in results if r["status"] == "fail"]
    assert failed[0]["step"] == "registration" and "phg register --destination c3" in failed[0]["fix"]


async def test_a_lost_answer_is_sent_again_and_counted(c3pro_peer, tmp_path):
    """The post went out and no answer came back (the client's timeout): it is sent again, which
    may duplicate it on a real C3-PRO server, and the journal counts it."""
    path = write_config(tmp_path, c3pro_peer, timeout=1, resources=["Observation"])
    with path.open("a") as config:
        config.write("[delivery]\nmax_retry_delay = 1\n")
    config = load_config(path, env={})
    first = reading(SEVEN["thermometer"])
    c3pro_peer.hold_after(0)
    with Outbox(config.outbox_path) as outbox:
        outbox.enqueue(config.destination_names, [(first.key, first.to_json())])
        assert (await deliver(config, outbox, until_idle=True)).delivered == 0  # timed out while held
        c3pro_peer.release()
        for _ in range(20):  # the retry comes due after a backoff of at most max_retry_delay
            if outbox.counts("c3")["delivered"]:
                break
            await deliver(config, outbox, until_idle=True)
            await asyncio.sleep(0.2)
        assert outbox.counts("c3")["delivered"] == 1 and len(c3pro_peer.resources("Observation")) == 1
    journal = Journal(tmp_path / "journal.sqlite")
    assert journal.possible_duplicates == 1
    journal.close()
