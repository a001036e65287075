"""Smoke tests of the real peers themselves (through real HTTP, no phg code but the launchers).

If these fail, integration tests of phg against the peers mean nothing.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from phg.demo import peers
from phg.demo.peers import NODE_MISSING, PeerError, SekmetServer, install_node_peers, peers_dir

pytestmark = pytest.mark.peers

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
UPLOAD_SCOPE = "system/Patient.cu system/Device.cu system/Observation.c"
FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def transaction(tag: str) -> dict:
    """Patient + Observation, both conditional creates (ifNoneExist), linked by urn:uuid."""
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_urn,
                "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:phg:test", "value": tag}]},
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier=urn:phg:test|{tag}"},
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "identifier": [{"system": "urn:phg:test", "value": f"{tag}-obs"}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
                    "subject": {"reference": patient_urn},
                    "effectiveDateTime": "2024-05-01T10:00:00Z",
                    "valueQuantity": {"value": 36.6, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"},
                },
                "request": {"method": "POST", "url": "Observation", "ifNoneExist": f"identifier=urn:phg:test|{tag}-obs"},
            },
        ],
    }


def statuses(response: httpx.Response) -> list[str]:
    """Entry status codes, "201 Created" and "201" alike -> "201"."""
    return [e["response"]["status"].split()[0] for e in response.json()["entry"]]


def token_request(client, scope: str = UPLOAD_SCOPE, assertion: str | None = None, **extra: str) -> httpx.Response:
    return httpx.post(
        client.oauth.token_endpoint,
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion if assertion is not None else client.assertion(),
            **extra,
        },
        timeout=10,
    )


# ---------------------------------------------------------------------------------------------- FHIR servers


@pytest.mark.parametrize("server_fixture", ["sekmet", "medplum"])
def test_transaction_if_none_exist_201_then_200(server_fixture, request):
    server = request.getfixturevalue(server_fixture)
    tag = uuid.uuid4().hex
    first = httpx.post(server.base_url, json=transaction(tag), headers=FHIR_JSON, timeout=30)
    assert first.status_code == 200, first.text
    assert first.json()["type"] == "transaction-response"
    assert statuses(first) == ["201", "201"]
    again = httpx.post(server.base_url, json=transaction(tag), headers=FHIR_JSON, timeout=30)
    assert again.status_code == 200, again.text
    assert statuses(again) == ["200", "200"]
    # the urn:uuid reference was rewritten to the Patient the server made
    found = httpx.get(
        f"{server.base_url}/Observation", params={"identifier": f"urn:phg:test|{tag}-obs"}, headers=FHIR_JSON, timeout=30
    ).json()
    [entry] = found["entry"]
    patient_location = first.json()["entry"][0]["response"]["location"]
    assert entry["resource"]["subject"]["reference"].startswith("Patient/")
    assert entry["resource"]["subject"]["reference"].split("/")[1] in patient_location


def test_sekmet_serves_capability_statement(sekmet):
    r = httpx.get(f"{sekmet.base_url}/metadata", timeout=10)
    assert r.status_code == 200
    assert r.json()["resourceType"] == "CapabilityStatement"


def test_medplum_rejects_invalid_resource(medplum):
    r = httpx.post(f"{medplum.base_url}/Patient", json={"resourceType": "Patient", "bogus": 1}, headers=FHIR_JSON)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


# ---------------------------------------------------------------------------------------------- OAuth server


def test_oauth_issues_token_to_registered_es384_client(register_client):
    client = register_client("ES384")
    r = token_request(client)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"].lower() == "bearer"
    assert body["expires_in"] == 300
    assert set(body["scope"].split()) == set(UPLOAD_SCOPE.split())
    assert body["access_token"]


def test_oauth_issues_token_to_rs384_client(register_client):
    client = register_client("RS384")
    r = token_request(client, scope="system/Patient.write system/Device.write system/Observation.write")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"aud": "http://127.0.0.1:1/fhir"}, id="aud-is-fhir-base"),
        pytest.param({"aud": "issuer"}, id="aud-is-issuer-not-token-endpoint"),
        pytest.param({"exp": -60}, id="expired"),
        pytest.param({"exp": 3600}, id="exp-more-than-5-min-ahead"),
        pytest.param({"sub": "someone-else"}, id="sub-not-client-id"),
        pytest.param({"header": "no-typ"}, id="no-typ"),
        pytest.param({"header": "no-kid"}, id="no-kid"),
        pytest.param({"header": "wrong-kid"}, id="wrong-kid"),
        pytest.param({"jti": None}, id="no-jti"),
    ],
)
def test_oauth_rejects_bad_assertions(register_client, bad):
    client = register_client("ES384")
    key = client.key
    claims: dict = {}
    header = None
    if "aud" in bad:
        claims["aud"] = client.oauth.issuer if bad["aud"] == "issuer" else bad["aud"]
    if "exp" in bad:
        claims["exp"] = int(time.time()) + bad["exp"]
    if "sub" in bad:
        claims["sub"] = bad["sub"]
    if "jti" in bad:
        claims["jti"] = None
    if bad.get("header") == "no-typ":
        header = {"alg": key.alg, "kid": key.kid}
    elif bad.get("header") == "no-kid":
        header = {"alg": key.alg, "typ": "JWT"}
    elif bad.get("header") == "wrong-kid":
        header = {"alg": key.alg, "kid": "not-the-registered-kid", "typ": "JWT"}
    assertion = client.assertion(header=header, **claims)
    r = token_request(client, assertion=assertion)
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"] == "invalid_client"


def test_oauth_rejects_replayed_assertion(register_client):
    client = register_client("ES384")
    assertion = client.assertion()
    assert token_request(client, assertion=assertion).status_code == 200
    replay = token_request(client, assertion=assertion)
    assert replay.status_code in (400, 401)
    assert replay.json()["error"] == "invalid_client"


def test_oauth_client_secret_basic(oauth):
    answer = oauth.register_client(client_secret_basic=True)
    r = httpx.post(
        oauth.token_endpoint,
        auth=(answer["client_id"], answer["client_secret"]),
        data={"grant_type": "client_credentials", "scope": UPLOAD_SCOPE},
    )
    assert r.status_code == 200, r.text
    bad = httpx.post(
        oauth.token_endpoint,
        auth=(answer["client_id"], "wrong"),
        data={"grant_type": "client_credentials", "scope": UPLOAD_SCOPE},
    )
    assert bad.status_code == 401
    assert bad.json()["error"] == "invalid_client"


def test_oauth_short_ttl(start_oauth, register_client):
    short = start_oauth(ttl=3)
    client = register_client("ES384", oauth=short)
    r = token_request(client)
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] == 3


# ---------------------------------------------------------------------------------------------- gate


def test_gate_discovery_document(gate, oauth):
    r = httpx.get(gate.smart_configuration_url, headers={"Accept": "text/html"})
    assert r.status_code == 200
    doc = r.json()
    assert doc["token_endpoint"] == oauth.token_endpoint
    assert doc["grant_types_supported"] == ["client_credentials"]
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert {"RS384", "ES384"} <= set(doc["token_endpoint_auth_signing_alg_values_supported"])
    assert "client-confidential-asymmetric" in doc["capabilities"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "system/Observation.c" in doc["scopes_supported"]


def test_gate_metadata_public_with_oauth_uris(gate, oauth):
    r = httpx.get(f"{gate.base_url}/metadata")
    assert r.status_code == 200
    security = r.json()["rest"][0]["security"]
    [ext] = security["extension"]
    uris = {e["url"]: e["valueUri"] for e in ext["extension"]}
    assert uris["token"] == oauth.token_endpoint


def test_gate_401_without_token(gate):
    r = httpx.get(f"{gate.base_url}/Patient")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["resourceType"] == "OperationOutcome"


def test_gate_401_with_garbage_token(gate):
    r = httpx.post(gate.base_url, json=transaction("x"), headers={**FHIR_JSON, "Authorization": "Bearer garbage"})
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("gate_fixture", ["gate", "medplum_gate"])
def test_gate_forwards_with_valid_token(gate_fixture, request, register_client):
    g = request.getfixturevalue(gate_fixture)
    token = token_request(register_client("ES384")).json()["access_token"]
    auth = {**FHIR_JSON, "Authorization": f"Bearer {token}"}
    tag = uuid.uuid4().hex
    first = httpx.post(g.base_url, json=transaction(tag), headers=auth, timeout=30)
    assert first.status_code == 200, first.text
    assert statuses(first) == ["201", "201"]
    again = httpx.post(g.base_url, json=transaction(tag), headers=auth, timeout=30)
    assert statuses(again) == ["200", "200"]
    # absolute URLs point at the gate, never at the FHIR server behind it
    assert g.upstream not in first.text
    created = httpx.post(f"{g.base_url}/Device", json={"resourceType": "Device"}, headers=auth)
    assert created.status_code == 201, created.text
    assert created.headers["location"].startswith(f"{g.base_url}/Device/")


def test_gate_403_when_scope_does_not_cover(gate, register_client):
    token = token_request(register_client("ES384"), scope="system/Observation.c").json()["access_token"]
    auth = {**FHIR_JSON, "Authorization": f"Bearer {token}"}
    r = httpx.post(gate.base_url, json=transaction(uuid.uuid4().hex), headers=auth)  # needs Patient.c too
    assert r.status_code == 403
    assert "insufficient_scope" in r.headers["www-authenticate"]
    r = httpx.get(f"{gate.base_url}/Observation", headers=auth)  # search needs .s
    assert r.status_code == 403


def test_gate_rejects_expired_token(start_stack, client_key):
    stack = start_stack("sekmet", ttl=3)
    key = client_key("ES384")
    client_id = stack.register_client(key.jwks)["client_id"]
    r = httpx.post(
        stack.token_endpoint,
        data={
            "grant_type": "client_credentials",
            "scope": UPLOAD_SCOPE,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": key.assertion(client_id, stack.token_endpoint),
        },
    )
    assert r.status_code == 200, r.text
    auth = {**FHIR_JSON, "Authorization": f"Bearer {r.json()['access_token']}"}
    assert httpx.post(f"{stack.base_url}/Patient", json={"resourceType": "Patient"}, headers=auth).status_code == 201
    time.sleep(3.5)
    expired = httpx.post(f"{stack.base_url}/Patient", json={"resourceType": "Patient"}, headers=auth)
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]


# ---------------------------------------------------------------------------------------------- launcher


def test_launcher_reports_missing_node_modules(tmp_path, monkeypatch):
    from phg.demo.peers import MedplumServer

    (tmp_path / "medplum-fhir.mjs").write_text("")
    monkeypatch.setenv("PHG_PEERS_DIR", str(tmp_path))
    with pytest.raises(PeerError, match="npm ci --prefix"):
        MedplumServer().start()
    assert peers_dir() == tmp_path


def test_launcher_stops_process(tmp_path):
    server = SekmetServer(workdir=tmp_path)
    with server:
        process = server.process
        assert process is not None and process.poll() is None
        assert httpx.get(f"{server.base_url}/metadata").status_code == 200
    assert process.poll() is not None
    assert not server.running


@pytest.fixture
def shipped_only(tmp_path, monkeypatch) -> Path:
    """An installed phg: the shipped Node peers without node_modules; fake `node` and `npm` on PATH (npm
    logs each call in tmp_path/npm.log and creates node_modules, or fails when NPM_FAIL is set)."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for name in ("gate.mjs", "package.json", "package-lock.json"):
        (shipped / name).write_text(name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = (f"import os, sys\nwith open({str(tmp_path / 'npm.log')!r}, 'a') as log:\n"
           "    print(os.getcwd(), *sys.argv[1:], file=log)\n"
           "if os.environ.get('NPM_FAIL'):\n    sys.exit('npm ERR! 404 Not Found')\nos.mkdir('node_modules')")
    for name, body in {"node": "", "npm": npm}.items():
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setattr(peers, "SHIPPED", shipped)
    monkeypatch.delenv("PHG_PEERS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(bin_dir))
    return shipped


def test_installed_node_peers_are_npm_installed_once_into_the_user_cache(shipped_only, tmp_path):
    directory = install_node_peers()
    assert directory == peers_dir() and directory.parent == tmp_path / "cache" / "phg"
    assert (directory / "gate.mjs").read_text() == "gate.mjs" and (directory / "node_modules").is_dir()
    assert install_node_peers() == directory
    calls = (tmp_path / "npm.log").read_text().splitlines()
    assert len(calls) == 1 and calls[0].endswith(" ci --no-audit --no-fund --loglevel=error")
    assert peers._node_peer("gate.mjs")[1] == str(directory / "gate.mjs")
    (shipped_only / "gate.mjs").write_text("a newer gate")  # another phg version: its own copy
    assert peers_dir() != directory


def test_a_failed_npm_install_says_why_in_one_line_and_leaves_nothing(shipped_only, tmp_path, monkeypatch):
    monkeypatch.setenv("NPM_FAIL", "1")
    with pytest.raises(PeerError, match=r"npm ci for the Node peers failed \(exit 1\): npm ERR! 404 Not Found$"):
        install_node_peers()
    assert not peers_dir().exists() and list((tmp_path / "cache" / "phg").iterdir()) == []


def test_without_node_the_launcher_says_what_to_install(shipped_only, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    for start in (install_node_peers, peers.OAuthServer(workdir=tmp_path / "oauth").start):
        with pytest.raises(PeerError) as caught:
            start()
        assert str(caught.value) == NODE_MISSING
