"""One reading, several destinations, from a config file: the FHIR server behind the SMART gate and
an HL7 v2 MLLP receiver (python-hl7), each with its own queue state."""

from __future__ import annotations

from pathlib import Path

import pytest

from phg.auth import generate_key, jwks, load_key
from phg.config import DEFAULT_SCOPE, load_config
from phg.daemon import deliver
from phg.demo.sim import simulated_readings
from phg.errors import AuthError
from phg.outbox import Outbox
from test_flow_fhir import START, count_everywhere, patient
from test_mllp_peers import python_hl7_server

pytestmark = pytest.mark.peers


def write_config(tmp_path: Path, base: str, client_id: str, key: Path, mllp_port: int) -> Path:
    path = tmp_path / "phg.toml"
    path.write_text(f'''
[gateway]
system_id = "02AB7FFFFE00D00D"
[fhir]
base_url = "{base}"
[auth]
client_id = "{client_id}"
key_file = "{key}"
[outbox]
path = "{tmp_path / 'outbox.sqlite'}"
[destinations.lab]
type = "mllp"
host = "127.0.0.1"
port = {mllp_port}
ack_timeout = 5
''')
    return path


async def test_fhir_and_mllp_from_one_config(gate, oauth, tmp_path):
    key = tmp_path / "gw.pem"
    generate_key(key, "ES384")
    client = oauth.register_client(jwks([load_key(key)]), scope=DEFAULT_SCOPE)
    readings = simulated_readings(patient(), START, per_device=2)
    async with python_hl7_server() as receiver:
        config = load_config(write_config(tmp_path, gate.base_url, client["client_id"], key, receiver.port), env={})
        assert config.destination_names == ["fhir", "lab"]
        with Outbox(config.outbox_path) as outbox:
            outbox.enqueue(config.destination_names, [(r.key, r.to_json()) for r in readings])
            summary = await deliver(config, outbox, until_idle=True)
            assert (summary.delivered, summary.dead) == (2 * len(readings), 0)
            assert outbox.counts("fhir")["delivered"] == outbox.counts("lab")["delivered"] == len(readings)
            lab = outbox.items("lab", state="delivered", limit=100)
    assert len(receiver.received) == len(set(receiver.received)) == len(readings)  # one message per reading, once
    assert all(item.result and "AA" in item.result for item in lab)
    assert count_everywhere(gate.upstream, readings) == [1] * sum(len(r.metrics) for r in readings)


async def test_a_destination_that_is_down_does_not_hold_up_the_other(gate, oauth, tmp_path):
    from phg.demo.peers import free_port

    key = tmp_path / "gw.pem"
    generate_key(key, "ES384")
    client = oauth.register_client(jwks([load_key(key)]), scope=DEFAULT_SCOPE)
    config = load_config(write_config(tmp_path, gate.base_url, client["client_id"], key, free_port()), env={})
    readings = simulated_readings(patient(), START)
    with Outbox(config.outbox_path) as outbox:
        outbox.enqueue(config.destination_names, [(r.key, r.to_json()) for r in readings])
        await deliver(config, outbox, until_idle=True)
        assert outbox.counts("fhir")["delivered"] == len(readings)
        lab = outbox.counts("lab")
        assert lab["delivered"] == 0 and lab["queued"] == len(readings)  # waiting for its own retry


async def test_refused_credentials_stop_only_their_destination(gate, oauth, tmp_path):
    key = tmp_path / "gw.pem"
    generate_key(key, "ES384")  # never registered: the FHIR destination's token request is refused
    readings = simulated_readings(patient(), START)
    async with python_hl7_server() as receiver:
        config = load_config(write_config(tmp_path, gate.base_url, "not-registered", key, receiver.port), env={})
        with Outbox(config.outbox_path) as outbox:
            outbox.enqueue(config.destination_names, [(r.key, r.to_json()) for r in readings])
            with pytest.raises(AuthError, match="invalid_client"):
                await deliver(config, outbox, until_idle=True)
            assert outbox.counts("lab")["delivered"] == len(readings)  # the v2 receiver got everything
            fhir = outbox.counts("fhir")
            assert (fhir["queued"], fhir["inflight"], fhir["dead"]) == (len(readings), 0, 0)


async def test_a_fhir_destination_table_with_its_own_auth(gate, oauth, tmp_path):
    """[destinations.NAME] type = "fhir" with [destinations.NAME.auth]: the same settings class and
    opener as the [fhir]/[auth] sugar, under its own queue name."""
    key = tmp_path / "gw.pem"
    generate_key(key, "ES384")
    client = oauth.register_client(jwks([load_key(key)]), scope=DEFAULT_SCOPE)
    path = tmp_path / "phg.toml"
    path.write_text(f'''
[gateway]
system_id = "02AB7FFFFE00D00E"
[outbox]
path = "{tmp_path / 'outbox.sqlite'}"
[destinations.ehr2]
type = "fhir"
base_url = "{gate.base_url}"
[destinations.ehr2.auth]
client_id = "{client["client_id"]}"
key_file = "{key}"
''')
    config = load_config(path, env={})
    assert config.destination_names == ["ehr2"]
    readings = simulated_readings(patient(), START, per_device=1)
    with Outbox(config.outbox_path) as outbox:
        outbox.enqueue(config.destination_names, [(r.key, r.to_json()) for r in readings])
        summary = await deliver(config, outbox, until_idle=True)
        assert (summary.delivered, summary.dead) == (len(readings), 0)
        assert outbox.counts("ehr2")["delivered"] == len(readings)
    assert count_everywhere(gate.upstream, readings) == [1] * sum(len(r.metrics) for r in readings)
