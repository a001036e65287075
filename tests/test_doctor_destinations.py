"""`phg doctor` checks every configured destination in its own terms (issue 11: 2): one config
with the FHIR server behind the SMART gate, an MLLP receiver over TLS (python-hl7) and an HL7-over-
HTTP receiver, each against the real peer the suite already runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from phg.auth import generate_key, jwks, load_key
from phg.config import DEFAULT_SCOPE, load_config
from phg.doctor import _test_message, run_checks
from test_flow_destinations import write_config as fhir_and_mllp_config
from test_hl7v2_http import HttpReceiver, wsgi_server
from test_mllp_peers import pki, python_hl7_server  # noqa: F401 - pki is a fixture

pytestmark = pytest.mark.peers


def write_config(tmp_path: Path, base: str, client_id: str, key: Path, mllp_port: int, ca: Path, http_url: str) -> Path:
    """The FHIR + MLLP config of test_flow_destinations, its MLLP over TLS, and an HL7 HTTP receiver."""
    path = fhir_and_mllp_config(tmp_path, base, client_id, key, mllp_port)
    path.write_text(path.read_text() + f'tls = true\nca_file = "{ca}"\n'
                    f'[destinations.v2http]\ntype = "hl7-http"\nurl = "{http_url}"\ntimeout = 5\n')
    return path


def by_destination(results: list[dict]) -> dict[str, list[tuple[str | None, str]]]:
    found: dict[str, list[tuple[str | None, str]]] = {}
    for result in results:
        found.setdefault(result["destination"] or "outbox", []).append((result["step"], result["status"]))
    return found


def unauthorized(environ, start_response):
    start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Basic")])
    return [b"who are you?"]


async def test_doctor_checks_fhir_mllp_and_hl7_http_in_one_config(gate, oauth, tmp_path, pki):  # noqa: F811
    key = tmp_path / "gw.pem"
    generate_key(key, "ES384")
    client = oauth.register_client(jwks([load_key(key)]), scope=DEFAULT_SCOPE)
    http_receiver = HttpReceiver()
    async with python_hl7_server(pki.server_context()) as mllp_receiver:
        with wsgi_server(http_receiver) as url:
            config = load_config(write_config(tmp_path, gate.base_url, client["client_id"], key, mllp_receiver.port,
                                              pki.ca, url), env={})
            results: list[dict] = []
            lines: list[str] = []
            assert await run_checks(config, lines.append, results=results), "\n".join(lines)
            assert mllp_receiver.received == []  # without --send-test nothing is sent
            sent: list[dict] = []
            assert await run_checks(config, lines.append, send_test=True, results=sent), "\n".join(lines)
    checked = by_destination(results)
    assert set(checked) == {"fhir", "lab", "v2http", "outbox"}
    assert ("token", "ok") in checked["fhir"] and ("write", "ok") in checked["fhir"]
    assert checked["lab"] == [("connect", "ok")] and checked["v2http"] == [("connect", "ok")]
    assert any("over TLS" in r["what"] for r in results if r["destination"] == "lab")
    assert ("test", "ok") in by_destination(sent)["lab"] and len(mllp_receiver.received) == 1
    assert http_receiver.received == []  # the HTTP check sends no HL7 message


async def test_doctor_names_the_destination_that_fails(gate, tmp_path, pki, unused_tcp_port):  # noqa: F811
    with wsgi_server(unauthorized) as url:
        path = write_config(tmp_path, gate.base_url, "nobody", tmp_path / "none.pem", unused_tcp_port, pki.ca, url)
        text = path.read_text().replace('[auth]\nclient_id = "nobody"\nkey_file', '[auth]\nmethod = "none"\n#')
        path.write_text(text)
        results: list[dict] = []
        lines: list[str] = []
        assert not await run_checks(load_config(path, env={}), lines.append, results=results)
    checked = by_destination(results)
    assert checked["lab"] == [("connect", "fail")]  # nothing listens there
    assert checked["v2http"] == [("connect", "fail")]  # 401: it refuses who we are
    assert ("tls", "ok") in checked["fhir"] and ("write", "fail") in checked["fhir"]  # the gate wants a token
    assert any("HTTP 401" in line for line in lines)


def test_the_test_message_is_marked_as_a_test():
    """HL7 v2.6 MSH-11 processing ID "T": a receiver does not file it as a real observation."""
    control_id, message = _test_message(load_config(env={}, document={}))
    msh = message.split("\r")[0].split("|")
    assert msh[10] == "T" and msh[9] == control_id and message.count("\rOBX|") >= 1
