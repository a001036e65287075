"""The seed flow end to end against real peers: phg's own key, config, outbox, worker and SMART auth,
talking to oidc-provider and to sekmet-fhir / Medplum's FHIR router behind the SMART gate.

What arrived is checked on the FHIR server itself (behind the gate, no auth needed there).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from phg.auth import generate_key, jwks, load_key
from phg.auth.token import TokenAuth
from phg.config import DEFAULT_SCOPE, Config, load_config
from phg.daemon import deliver
from phg.demo.peers import Gate, OAuthServer, SekmetServer, free_port
from phg.demo.sim import simulated_readings
from phg.errors import AuthError
from phg.fhir import conditional_identifier
from phg.model import Gateway, Metric, PatientRef, Reading
from phg.outbox import Outbox

pytestmark = pytest.mark.peers

GATEWAY = Gateway(system_id="02AB7FFFFE00C1C1", serial="TEST-GW")
START = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def patient() -> PatientRef:
    """A patient of its own per test, so tests sharing a server do not see each other's data."""
    return PatientRef("urn:oid:1.2.3.4.5", f"pt-{uuid.uuid4().hex[:12]}")


def make_config(tmp_path: Path, base: str, oauth: OAuthServer, alg: str = "ES384",
                scope: str = DEFAULT_SCOPE, **overrides) -> Config:
    key_file = tmp_path / f"gateway-{alg}.pem"
    generate_key(key_file, alg)
    client = oauth.register_client(jwks([load_key(key_file)]), scope=scope)
    config = fhir_config(tmp_path, base, {"client_id": client["client_id"], "key_file": str(key_file), "scope": scope})
    return config._replace(**overrides)


def fhir_config(tmp_path: Path, base: str, auth: dict[str, str]) -> Config:
    """The settings of a gateway sending to `base` with this [auth], through the one loader."""
    return load_config(env={}, document={"gateway": {"system_id": GATEWAY.system_id, "serial": GATEWAY.serial},
                                         "fhir": {"base_url": base}, "auth": auth,
                                         "outbox": {"path": str(tmp_path / "outbox.sqlite")}})


def enqueue(outbox: Outbox, readings: list[Reading]) -> list[int]:
    return outbox.enqueue("fhir", [(r.key, r.to_json()) for r in readings])


def matches(base: str, reading: Reading, metric: Metric) -> int:
    """How many Observations the server holds with this metric's conditional-create identifier."""
    system, value = conditional_identifier(reading, metric)
    bundle = httpx.get(f"{base}/Observation", params={"identifier": f"{system}|{value}"},
                       headers={"Accept": "application/fhir+json"}, timeout=30).raise_for_status().json()
    return len([e for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"])


def count_everywhere(base: str, readings: list[Reading]) -> list[int]:
    return [matches(base, r, m) for r in readings for m in r.metrics]


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
@pytest.mark.parametrize("server", ["sekmet", "medplum"])
def test_five_device_types_arrive_once_and_resending_adds_nothing(server, alg, request, oauth, tmp_path):
    gate: Gate = request.getfixturevalue("gate" if server == "sekmet" else "medplum_gate")
    config = make_config(tmp_path, gate.base_url, oauth, alg)
    readings = simulated_readings(patient(), START, per_device=2)

    with Outbox(config.outbox_path) as outbox:
        enqueue(outbox, readings)
        summary = asyncio.run(deliver(config, outbox, until_idle=True))
        assert (summary.delivered, summary.dead) == (len(readings), 0)
        delivered = outbox.items(state="delivered", limit=100)
        assert all(i.result and i.result.startswith("Observation/") for i in delivered)
    assert count_everywhere(gate.upstream, readings) == [1] * sum(len(r.metrics) for r in readings)

    # The same readings again, from a fresh queue (as after a lost outbox): the server adds nothing.
    with Outbox(tmp_path / "second.sqlite") as outbox:
        enqueue(outbox, readings)
        summary = asyncio.run(deliver(config._replace(outbox_path=outbox.path), outbox, until_idle=True))
        assert summary.delivered == len(readings)
    assert count_everywhere(gate.upstream, readings) == [1] * sum(len(r.metrics) for r in readings)


def test_server_down_then_up_delivers_everything_once(oauth, tmp_path):
    """200 readings queued while nothing listens at the FHIR base; then the server starts."""
    port = free_port()
    config = make_config(tmp_path, f"http://127.0.0.1:{port}/fhir", oauth, max_retry_delay=1.0)
    readings = simulated_readings(patient(), START, per_device=40)
    assert len(readings) == 200

    async def scenario(outbox: Outbox) -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(deliver(config, outbox, until_idle=False, stop=stop))
        try:
            await asyncio.sleep(2.0)
            assert outbox.counts("fhir")["delivered"] == 0
            # Tried, and waiting: one probe batch at a time (the destination-wide circuit), the rest untouched.
            attempted = [i for i in outbox.items(limit=200) if i.attempts >= 1]
            assert 1 <= len(attempted) <= 50, len(attempted)
            with SekmetServer(workdir=tmp_path / "sekmet") as fhir:
                with Gate(fhir.base_url, oauth, port=port, workdir=tmp_path / "gate"):
                    deadline = time.monotonic() + 60
                    while outbox.counts("fhir")["delivered"] < 200 and time.monotonic() < deadline:
                        await asyncio.sleep(0.2)
                    assert outbox.counts("fhir")["delivered"] == 200
                    assert await asyncio.to_thread(count_everywhere, fhir.base_url, readings) == [1] * sum(
                        len(r.metrics) for r in readings)
        finally:
            stop.set()
            await worker

    with Outbox(config.outbox_path) as outbox:
        enqueue(outbox, readings)
        asyncio.run(scenario(outbox))


def test_delivery_continues_across_token_expiries(start_stack, tmp_path, monkeypatch):
    stack = start_stack("sekmet", ttl=3)
    config = make_config(tmp_path, stack.base_url, stack.oauth)
    tokens = []
    request_token = TokenAuth._request_token

    async def counting(self):
        token = await request_token(self)
        tokens.append(token.expires_in)
        return token

    monkeypatch.setattr(TokenAuth, "_request_token", counting)
    rounds = [simulated_readings(patient(), START, per_device=1, seed=n) for n in range(5)]

    async def scenario(outbox: Outbox) -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(deliver(config, outbox, until_idle=False, stop=stop))
        try:
            for batch in rounds:  # readings keep arriving for ~8 s, well past two token lifetimes
                await asyncio.to_thread(enqueue, outbox, batch)
                await asyncio.sleep(1.6)
            deadline = time.monotonic() + 20
            while outbox.counts("fhir")["delivered"] < 25 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await worker

    with Outbox(config.outbox_path) as outbox:
        enqueue(outbox, [])
        asyncio.run(scenario(outbox))
        counts = outbox.counts("fhir")
    assert (counts["delivered"], counts["dead"], counts["queued"]) == (25, 0, 0)
    assert len(tokens) >= 3 and max(tokens) <= 3


def test_one_reading_that_cannot_be_sent_among_fifty(gate, oauth, tmp_path):
    """A stored reading that no longer passes phg's bounds (here 1E+400, which an older phg accepted and
    sekmet-fhir refuses as no double) goes dead alone with its reason; the other 49 are delivered."""
    readings = simulated_readings(patient(), START, per_device=10)
    bad = readings[23]
    metric = bad.metrics[0]
    bad = Reading(bad.device, bad.patient, (Metric(metric.code, metric.time, Decimal("1E+400"), metric.unit),
                                             *bad.metrics[1:]))
    readings[23] = bad
    config = make_config(tmp_path, gate.base_url, oauth)
    with Outbox(config.outbox_path) as outbox:
        ids = enqueue(outbox, readings)
        summary = asyncio.run(deliver(config, outbox, until_idle=True))
        assert (summary.delivered, summary.dead) == (49, 1)
        dead = outbox.items(state="dead")
        assert [i.id for i in dead] == [ids[23]]
        assert "metrics[0].value" in dead[0].last_error and "exponent" in dead[0].last_error
    good = readings[:23] + readings[24:]
    assert count_everywhere(gate.upstream, good) == [1] * sum(len(r.metrics) for r in good)


def test_unregistered_key_stops_delivery_and_keeps_the_queue(gate, oauth, tmp_path):
    config = make_config(tmp_path, gate.base_url, oauth)
    other = tmp_path / "not-registered.pem"
    generate_key(other, "ES384")
    config = fhir_config(tmp_path, gate.base_url, {"client_id": config.auth.client_id, "key_file": str(other)})
    with Outbox(config.outbox_path) as outbox:
        enqueue(outbox, simulated_readings(patient(), START))
        with pytest.raises(AuthError, match="invalid_client") as info:
            asyncio.run(deliver(config, outbox, until_idle=True))
        assert "registered" in str(info.value)
        counts = outbox.counts("fhir")
        assert (counts["queued"], counts["inflight"], counts["dead"]) == (5, 0, 0)
        assert all(i.attempts == 0 for i in outbox.items())


def test_missing_write_scope_stops_delivery_and_keeps_the_queue(gate, oauth, tmp_path):
    config = make_config(tmp_path, gate.base_url, oauth, scope="system/Patient.cu system/Device.cu")
    with Outbox(config.outbox_path) as outbox:
        enqueue(outbox, simulated_readings(patient(), START))
        with pytest.raises(AuthError, match="403"):
            asyncio.run(deliver(config, outbox, until_idle=True))
        assert outbox.counts("fhir")["queued"] == 5
