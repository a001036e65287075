"""Issue #7, crash test: `phg run` (a real subprocess) delivering 2,000 readings through the SMART gate
to sekmet is killed with SIGKILL at 10 seeded random moments and restarted each time. In the end
nothing is lost (every metric's Observation is on the server), nothing is doubled (exactly once,
checked by its PHD IG conditional-create identifier) and nothing stays in flight.

What makes it hold: the outbox commits before `phg send` acknowledges; a killed daemon's leased batch
is due again once its lease expires ([delivery] lease_seconds, 3 s here instead of 120 s); re-sending
a batch the server already stored is harmless (ifNoneExist).

The kill moments come from a seeded generator (PHG_CRASH_SEED to vary them): 10 points along the
drain (a number of delivered readings) plus a random delay of up to half a batch's send time. So the
daemon dies mid-transaction, between a server's answer and the outbox's record of it, while leasing,
and, when two points fall close together, during start-up and token fetch of the next run.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from phg.auth import jwks, load_key
from phg.config import DEFAULT_SCOPE
from phg.demo.sim import simulated_readings
from phg.fhir import conditional_identifier
from phg.model import PatientRef, Reading

pytestmark = pytest.mark.peers
log = logging.getLogger(__name__)

PHG = str(Path(sys.executable).parent / "phg")
READINGS = 2000
KILLS = 10
SEED = int(os.environ.get("PHG_CRASH_SEED", "7"))
DRAIN_DEADLINE = 150.0  # seconds, for the whole test: a hang fails instead of blocking the suite


def counts(outbox: Path) -> dict[str, int]:
    """Outbox states, read beside the running daemon (WAL: readers never block it)."""
    with sqlite3.connect(outbox, timeout=30) as conn:
        rows = conn.execute("SELECT state, count(*) FROM item GROUP BY state").fetchall()
    conn.close()
    return {"queued": 0, "inflight": 0, "delivered": 0, "dead": 0} | dict(rows)


def start_daemon(env: dict[str, str], log_file) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PHG, "run"], env=env, stdout=log_file, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=30)


def server_counts(fhir_base: str, readings: list[Reading]) -> Counter[tuple[str, str]]:
    """How many Observations the server holds per metric identifier (FHIR search by identifier,
    POSTed as _search so that hundreds of identifiers fit in one request)."""
    wanted = {conditional_identifier(r, m) for r in readings for m in r.metrics}
    ordered = sorted(wanted)

    def search(client: httpx.Client, chunk: list[tuple[str, str]]) -> list[dict]:
        answer = client.post(f"{fhir_base}/Observation/_search", data={
            "identifier": ",".join(f"{system}|{value}" for system, value in chunk),
            "_count": "2000", "_elements": "identifier"}).raise_for_status().json()
        assert not any(link["relation"] == "next" for link in answer.get("link", [])), "page too small"
        return [e["resource"] for e in answer.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]

    found: Counter[tuple[str, str]] = Counter(dict.fromkeys(wanted, 0))
    with httpx.Client(timeout=60, headers={"Accept": "application/fhir+json"}) as client, ThreadPoolExecutor(4) as pool:
        chunks = [ordered[i:i + 400] for i in range(0, len(ordered), 400)]  # the server's OR list limit is near 1000
        for resources in pool.map(lambda chunk: search(client, chunk), chunks):
            for resource in resources:
                for identifier in resource.get("identifier", []):
                    key = (identifier.get("system"), identifier.get("value"))
                    if key in wanted:
                        found[key] += 1
    return found


@pytest.fixture
def daemon_env(tmp_path, gate, oauth) -> dict[str, str]:
    """A user with a key registered at the session's OAuth server, a config with a short lease and
    short retry delays, the outbox under tmp_path, pointed at the SMART gate in front of sekmet."""
    key = tmp_path / "gw.pem"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_DATA_HOME": str(tmp_path / "data"), "PHG_OUTBOX": str(tmp_path / "outbox.sqlite"),
           "PHG_GATEWAY_SYSTEM_ID": "02AB7FFFFE00C7A5", "PHG_CLIENT_ID": "", "PHG_KEY_FILE": "",
           "PHG_FHIR_BASE_URL": ""}
    generated = subprocess.run([PHG, "keys", "generate", "--out", str(key)], env=env, capture_output=True, timeout=60)
    assert generated.returncode == 0, generated.stderr
    client = oauth.register_client(jwks([load_key(key)]), scope=DEFAULT_SCOPE)
    config = tmp_path / "phg.toml"
    config.write_text("[fhir]\ntimeout = 3\n[delivery]\nbatch_size = 100\nmax_retry_delay = 1\nlease_seconds = 3\n")
    return {**env, "PHG_CONFIG": str(config), "PHG_FHIR_BASE_URL": gate.base_url,
            "PHG_CLIENT_ID": client["client_id"], "PHG_KEY_FILE": str(key)}


def test_sigkill_at_random_moments_loses_nothing_and_doubles_nothing(tmp_path, daemon_env, gate):
    began = time.monotonic()
    outbox = Path(daemon_env["PHG_OUTBOX"])
    patient = PatientRef("urn:oid:1.2.3.4.5", f"crash-{uuid.uuid4().hex[:12]}")
    readings = simulated_readings(patient, datetime(2026, 11, 28, 9, tzinfo=UTC), per_device=READINGS // 5, seed=SEED)
    assert len(readings) == READINGS

    # Queue them all with `phg send --no-deliver`, JSON Lines on stdin.
    queued = subprocess.run([PHG, "send", "--no-deliver", "-"], env=daemon_env, capture_output=True, timeout=120,
                            input="\n".join(r.to_json() for r in readings).encode())
    assert queued.returncode == 0, queued.stderr
    assert f"queued {READINGS} reading(s)" in queued.stdout.decode()
    assert counts(outbox)["queued"] == READINGS
    queued_at = time.monotonic()

    rng = random.Random(SEED)
    targets = sorted(rng.sample(range(READINGS - 200), KILLS))  # delivered counts to kill at (plus a delay)
    kills: list[dict[str, object]] = []
    log_path = tmp_path / "daemon.log"
    with log_path.open("ab") as log_file:
        for n in range(KILLS):
            proc = start_daemon(daemon_env, log_file)
            started = time.monotonic()
            try:
                while counts(outbox)["delivered"] < targets[n]:
                    assert proc.poll() is None, f"the daemon exited by itself ({proc.returncode}); see {log_path}"
                    assert time.monotonic() - began < DRAIN_DEADLINE, f"stuck before kill {n + 1}: {counts(outbox)}"
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 0.7))
                assert proc.poll() is None, f"the daemon exited by itself ({proc.returncode}); see {log_path}"
            finally:
                code = stop(proc)
            assert code == -signal.SIGKILL
            kills.append({"n": n + 1, "target": targets[n], "after_s": round(time.monotonic() - started, 2),
                          **counts(outbox)})
        # The last start runs until everything is delivered, then stops cleanly: SIGTERM once it has started (its
        # "phg run: role" line: the signal handlers are set), since the last kill may have come after the last delivery.
        started_before = log_path.read_text().count("phg run: role")
        proc = start_daemon(daemon_env, log_file)
        try:
            while counts(outbox)["delivered"] < READINGS or log_path.read_text().count("phg run: role") == started_before:
                assert proc.poll() is None, f"the daemon exited by itself ({proc.returncode}); see {log_path}"
                assert time.monotonic() - began < DRAIN_DEADLINE, f"not drained: {counts(outbox)}"
                time.sleep(0.2)
            assert stop(proc, signal.SIGTERM) == 0, log_path.read_text()[-2000:]
        finally:
            stop(proc)
    drained_at = time.monotonic()

    final = counts(outbox)
    assert final == {"queued": 0, "inflight": 0, "delivered": READINGS, "dead": 0}
    # The kills were real interruptions: at least one left a batch leased by the dead process.
    assert any(k["inflight"] for k in kills), kills

    on_server = server_counts(gate.upstream, readings)
    doubled = {k: v for k, v in on_server.items() if v > 1}
    lost = [k for k, v in on_server.items() if v == 0]
    assert not doubled and not lost, f"{len(doubled)} doubled, {len(lost)} lost of {len(on_server)}"
    assert len(on_server) == sum(len(r.metrics) for r in readings)

    report = {"seed": SEED, "kills": kills, "queue_s": round(queued_at - began, 1),
              "drain_s": round(drained_at - queued_at, 1), "check_s": round(time.monotonic() - drained_at, 1),
              "observations": len(on_server)}
    report["log"] = str(log_path)
    log.warning("crash test: %s", json.dumps(report))
    print(json.dumps(report, indent=1))
