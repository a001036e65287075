"""The `phg` command as a user runs it: a real subprocess, a real config, real peers where marked."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from phg.auth import jwks, load_key
from phg.config import DEFAULT_SCOPE
from phg.demo.peers import free_port
from phg.demo.sim import simulated_readings
from phg.model import PatientRef

PHG = str(Path(sys.executable).parent / "phg")
READINGS = simulated_readings(PatientRef("urn:oid:1.2.3.4.5", "cli-patient"), datetime(2026, 11, 28, 9, tzinfo=UTC))


def phg(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PHG, *args], env={**os.environ, **env}, input=stdin, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A user with no config: everything under tmp_path, nothing from the real home."""
    return {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data"),
            "PHG_OUTBOX": str(tmp_path / "outbox.sqlite"), "PHG_GATEWAY_SYSTEM_ID": "02AB7FFFFE00C11A",
            "PHG_CONFIG": "", "PHG_FHIR_BASE_URL": "", "PHG_CLIENT_ID": "", "PHG_KEY_FILE": ""}


@pytest.fixture
def reading_files(tmp_path) -> list[Path]:
    paths = []
    for n, reading in enumerate(READINGS):
        path = tmp_path / f"r{n}.json"
        path.write_text(reading.to_json())
        paths.append(path)
    return paths


def test_help_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", "import sys, phg.cli; print(sorted(m for m in "
                          "('httpx', 'jsonschema', 'joserfc', 'cryptography', 'sqlite3', 'platformdirs', 'asyncio') "
                          "if m in sys.modules))"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_keys_generate_writes_0600_and_prints_jwks(tmp_path, env):
    key = tmp_path / "gw.pem"
    result = phg("keys", "generate", "--alg", "RS384", "--out", str(key), env=env)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    printed = json.loads(result.stdout)
    assert printed == jwks([load_key(key)])
    assert printed["keys"][0]["alg"] == "RS384" and "d" not in printed["keys"][0]
    again = phg("keys", "jwks", "--key", str(key), env=env)
    assert json.loads(again.stdout) == printed
    refused = phg("keys", "generate", "--out", str(key), env=env)
    assert refused.returncode == 3 and str(key) in refused.stderr  # never overwrites a key


def test_key_readable_by_others_is_refused(tmp_path, env):
    key = tmp_path / "gw.pem"
    phg("keys", "generate", "--out", str(key), env=env)
    key.chmod(0o644)
    result = phg("keys", "jwks", "--key", str(key), env=env)
    assert result.returncode == 3 and "chmod 600" in result.stderr


def test_init_writes_a_config_that_loads(tmp_path, env):
    config = tmp_path / "phg.toml"
    assert phg("--config", str(config), "init", env=env).returncode == 0
    assert "[fhir]" in config.read_text()
    assert phg("--config", str(config), "init", env=env).returncode == 1  # no silent overwrite
    result = phg("--config", str(config), "queue", "ls", env=env)
    assert result.returncode == 0, result.stderr


def test_render_prints_the_transaction(reading_files, env):
    result = phg("render", str(reading_files[0]), str(reading_files[1]), env=env)
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)
    assert bundle["type"] == "transaction"
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds.count("Patient") == 1 and kinds.count("Device") == 3  # gateway + two devices
    assert all("ifNoneExist" in e["request"] for e in bundle["entry"])


def test_send_refuses_invalid_documents_and_queues_the_rest(tmp_path, reading_files, env):
    bad = tmp_path / "bad.json"
    doc = json.loads(reading_files[0].read_text())
    doc["metrics"][0]["time"] = "yesterday"
    bad.write_text(json.dumps(doc))
    result = phg("send", "--no-deliver", str(reading_files[0]), str(bad), "-", env=env,
                 stdin=reading_files[1].read_text())
    assert result.returncode == 1
    assert f"{bad}: metrics[0].time: 'yesterday' is not a date-time" in result.stderr
    assert "queued 2 reading(s)" in result.stdout
    listing = phg("queue", "ls", env=env)
    assert "queued: 2" in listing.stdout
    # The same file again is the same queue item.
    phg("send", "--no-deliver", str(reading_files[0]), env=env)
    assert "queued: 2" in phg("queue", "ls", env=env).stdout


def test_send_while_the_server_is_unreachable_keeps_readings_queued(reading_files, env):
    env = {**env, "PHG_FHIR_BASE_URL": f"http://127.0.0.1:{free_port()}/fhir"}
    result = phg("send", *map(str, reading_files), env=env)
    assert result.returncode == 75, result.stderr
    assert "delivered 0" in result.stdout and "5 waiting" in result.stdout
    show = json.loads(phg("queue", "show", "1", env=env).stdout)
    assert show["state"] == "queued" and show["attempts"] == 1 and "ConnectError" in show["last_error"]


def test_refused_input_sets_the_exit_code_while_the_rest_waits(tmp_path, reading_files, env):
    (tmp_path / "nan.json").write_text(with_value(json.loads(reading_files[0].read_text()), "NaN"))
    env = {**env, "PHG_FHIR_BASE_URL": f"http://127.0.0.1:{free_port()}/fhir"}
    result = phg("send", str(reading_files[1]), str(tmp_path / "nan.json"), env=env)
    assert result.returncode == 1, result.stderr  # not 75: the refusal needs the user, the queue does not
    assert "metrics[0].value: NaN is not a number" in result.stderr and "1 waiting" in result.stdout


def test_queue_retry_and_purge(tmp_path, env):
    from phg.outbox import Outbox

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        ids = outbox.enqueue("fhir", [(r.key, r.to_json()) for r in READINGS[:2]])
        outbox.lease("fhir", 2, 60)
        outbox.dead(ids, "HTTP 400: refused")
    assert "dead: 2" in phg("queue", "ls", "--state", "dead", env=env).stdout
    assert phg("queue", "retry", str(ids[0]), env=env).returncode == 0
    assert phg("queue", "retry", "999", env=env).returncode == 1
    assert "removed 1 dead item(s)" in phg("queue", "purge", "--dead", env=env).stdout
    assert "queued: 1" in phg("queue", "ls", env=env).stdout


@pytest.fixture
def smart_env(tmp_path, env, gate, oauth) -> dict[str, str]:
    key = tmp_path / "gw.pem"
    phg("keys", "generate", "--out", str(key), env=env)
    client = oauth.register_client(jwks([load_key(key)]), scope=DEFAULT_SCOPE)
    return {**env, "PHG_FHIR_BASE_URL": gate.base_url, "PHG_CLIENT_ID": client["client_id"], "PHG_KEY_FILE": str(key)}


@pytest.mark.peers
def test_send_delivers_through_smart_backend_services(reading_files, smart_env):
    result = phg("send", *map(str, reading_files), env=smart_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "delivered 5, dead 0" in result.stdout
    assert "delivered: 5" in phg("queue", "ls", env=smart_env).stdout
    logged = result.stdout + result.stderr
    assert "eyJ" not in logged  # no token or assertion in the output


@pytest.mark.peers
def test_doctor_checks_the_whole_chain(smart_env, tmp_path):
    result = phg("doctor", env=smart_env)
    assert result.returncode == 0, result.stdout
    for line in ("FHIR 4.0.1", "token endpoint", "token issued", "accepts our token", "outbox"):
        assert line in result.stdout
    broken = phg("doctor", env={**smart_env, "PHG_CLIENT_ID": "nobody"})
    assert broken.returncode == 3 and "invalid_client" in broken.stdout


def test_render_hl7v2_passes_the_pcd01_checker(tmp_path, reading_files, env):
    result = phg("render", "--format", "hl7v2", *map(str, reading_files), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("MSH|") == len(reading_files)  # one message per reading
    messages = tmp_path / "messages.hl7"
    messages.write_text(result.stdout)
    checked = phg("hl7", "check", str(messages), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_simulate_collects_from_the_emulated_bluetooth_devices(env):
    result = phg("simulate", "--no-deliver", env=env)
    assert result.returncode == 0, result.stderr
    assert "queued 9 reading(s) from 5 emulated devices" in result.stdout
    assert "queued: 9" in phg("queue", "ls", env=env).stdout


def with_value(doc: dict, token: str) -> str:
    """The document as JSON text with its first metric's value written as the raw JSON `token`."""
    changed = json.loads(json.dumps(doc))
    changed["metrics"][0]["value"] = "@"
    return json.dumps(changed).replace('"@"', token)


def bad_documents(tmp_path: Path, doc: dict) -> dict[str, str]:
    """One file per intake bound that the parser used to miss (issue 10, findings 2 and 4), and the
    refusal each must give."""
    cases = {
        "vt.json": (json.dumps(doc | {"patient": {"system": "urn:oid:1.2", "value": "pt\u000b1"}}),
                    "patient.value: the text holds the character U+000B"),
        "exponent.json": (with_value(doc, '"1e999999999"'), "metrics[0].value: the exponent is out of range"),
        "nan.json": (with_value(doc, "NaN"), "metrics[0].value: NaN is not a number"),
        "infinity.json": (with_value(doc, "-Infinity"), "metrics[0].value: -Infinity is not a number"),
        "digits.json": (with_value(doc, "7" * 5000), "metrics[0].value: 5,000 significant digits"),
        "deep.json": ("[" * 200_000 + "]" * 200_000, "(document): not readable: nested far deeper"),
    }
    for name, (content, _) in cases.items():
        (tmp_path / name).write_text(content)
    return {name: f"{tmp_path / name}: {words}" for name, (_, words) in cases.items()}


def test_send_refuses_out_of_bounds_and_malformed_files_and_queues_the_rest(tmp_path, reading_files, env):
    doc = json.loads(reading_files[0].read_text())
    refusals = bad_documents(tmp_path, doc)
    result = phg("send", "--no-deliver", str(reading_files[0]), *(str(tmp_path / name) for name in refusals),
                 str(reading_files[1]), env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for refusal in refusals.values():
        assert refusal in result.stderr
    assert f"queued 2 reading(s) in {env['PHG_OUTBOX']}, refused {len(refusals)}" in result.stdout
    assert "queued: 2" in phg("queue", "ls", env=env).stdout


def test_a_bad_json_lines_line_is_refused_alone_from_stdin(tmp_path, reading_files, env):
    lines = [reading_files[0].read_text(), '{"device": {nope', reading_files[1].read_text(),
             with_value(json.loads(reading_files[2].read_text()), '"1e999999999"')]
    result = phg("send", "--no-deliver", "-", env=env, stdin="\n".join(lines) + "\n")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "refused: stdin: line 2 column 13: not JSON: Expecting property name" in result.stderr
    assert "refused: stdin line 4: metrics[0].value: the exponent is out of range" in result.stderr
    assert "queued 2 reading(s)" in result.stdout and "refused 2" in result.stdout
    assert "queued: 2" in phg("queue", "ls", env=env).stdout


def test_render_refuses_the_bad_document_and_renders_the_rest(tmp_path, reading_files, env):
    refusals = bad_documents(tmp_path, json.loads(reading_files[0].read_text()))
    result = phg("render", "--format", "hl7v2", str(tmp_path / "exponent.json"), str(tmp_path / "vt.json"),
                 str(reading_files[0]), env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert refusals["exponent.json"] in result.stderr and refusals["vt.json"] in result.stderr
    assert result.stdout.count("MSH|") == 1
