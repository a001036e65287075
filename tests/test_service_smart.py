"""SMART App Launch of the view (phg.service.smart): EHR and standalone launch against the real peers
(oidc-provider with authorization_code + PKCE and a `patient` launch context, the gate in front of
sekmet-fhir holding the Patient), and each refusal: wrong state, replayed code, missing PKCE verifier,
a token answer for another patient, ambiguous identifiers."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from phg.auth.keys import generate_key, jwks, load_key
from phg.config import load_config
from phg.errors import ConfigError
from phg.intake import Intake
from phg.outbox import Outbox
from phg.service import smart
from phg.service.app import ServiceContext, create_app

CLIENT_ID = "phg-view"
REDIRECT = "http://127.0.0.1:8470/smart/callback"
SYSTEM = "urn:oid:1.2.3.4.5"
LAUNCH = "launch-" + uuid.uuid4().hex


def service(tmp_path: Path, **smart_table: object) -> TestClient:
    smart_table = {"client_id": CLIENT_ID, "redirect_url": REDIRECT, **smart_table}
    config = load_config(document={"outbox": {"path": str(tmp_path / "outbox.sqlite")}, "api": {},
                                   "smart": smart_table},
                         env={})
    outbox = Outbox(config.outbox_path, config.keep_delivered)
    ctx = ServiceContext(config, outbox, Intake(outbox, ["fhir"]))
    return TestClient(create_app(ctx), base_url="http://127.0.0.1", client=("127.0.0.1", 50000),
                      follow_redirects=False)


@pytest.fixture(scope="module")
def ehr(tmp_path_factory):
    """The EHR: oidc-provider (a public client registered for the view), the gate in front of sekmet
    holding two Patients; LAUNCH stands for the first, the standalone picker picks the first too."""
    from phg.demo.peers import smart_stack

    work = tmp_path_factory.mktemp("ehr")
    patient, other = f"pt{uuid.uuid4().hex[:10]}", f"pt{uuid.uuid4().hex[:10]}"
    (work / "launches.json").write_text(json.dumps({LAUNCH: patient, "launch-other": other}))
    client = {"client_id": CLIENT_ID, "token_endpoint_auth_method": "none", "redirect_uris": [REDIRECT],
              "grant_types": ["authorization_code"], "response_types": ["code"]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OAUTH_LAUNCHES", str(work / "launches.json"))
        mp.setenv("OAUTH_PICK_PATIENT", patient)
        with smart_stack(clients=[client], scope_check=False, workdir=work) as stack:
            for id_, value in ((patient, "mrn-1"), (other, "mrn-2")):
                body = {"resourceType": "Patient", "id": id_, "identifier": [{"system": SYSTEM, "value": value}]}
                httpx.put(f"{stack.fhir.base_url}/Patient/{id_}", json=body, timeout=10).raise_for_status()
            yield stack, patient, other


def authorize(location: str) -> dict[str, str]:
    """The clinician's browser at the EHR: follows the authorization server until it sends the browser
    back to the redirect URI; the callback's query."""
    with httpx.Client(timeout=10) as browser:
        url = location
        for _ in range(10):
            if url.startswith(REDIRECT):
                return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            answer = browser.get(url)
            assert answer.is_redirect, answer.text
            url = str(answer.url.join(answer.headers["location"]))
    raise AssertionError("the authorization server never redirected back")


def launch(app: TestClient, iss: str, launch_id: str = LAUNCH) -> dict[str, str]:
    answer = app.get("/smart/launch", params={"iss": iss, "launch": launch_id})
    assert answer.status_code == 302, answer.text
    return authorize(answer.headers["location"])


@pytest.mark.peers
def test_ehr_launch_ends_on_the_view_of_the_launched_patient(ehr, tmp_path, caplog):
    stack, patient, _ = ehr
    app = service(tmp_path)
    answer = app.get("/smart/launch", params={"iss": stack.gate.base_url, "launch": LAUNCH})
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["aud"] == [stack.gate.base_url]
    assert query["launch"] == [LAUNCH] and query["scope"] == ["launch openid fhirUser patient/Patient.rs"]
    callback = authorize(answer.headers["location"])
    with caplog.at_level("INFO", logger="phg.service.smart"):
        done = app.get("/smart/callback", params=callback)
    assert done.status_code == 303
    session_id = done.headers["location"].removeprefix("/view/")
    view = _ctx(app).sessions.session(session_id)
    assert view is not None and view.patient == ((SYSTEM, "mrn-1"),) and view.ehr_patient == patient
    assert view.fhir_user == "Practitioner/phg-test-clinician"
    tokens = _ctx(app).sessions._sessions[session_id][1]
    assert tokens["access_token"] not in done.text + done.headers["location"] + caplog.text
    assert f"Patient/{patient}" in caplog.text and "Practitioner/phg-test-clinician" in caplog.text


def _ctx(app: TestClient) -> ServiceContext:
    inner = app.app
    while not hasattr(inner, "state"):
        inner = inner.app  # the security wrapper around the Starlette app
    return inner.state.ctx


@pytest.mark.peers
def test_standalone_launch_picks_the_patient(ehr, tmp_path):
    stack, patient, _ = ehr
    app = service(tmp_path, fhir_base=stack.gate.base_url)
    answer = app.get("/smart/standalone")
    assert parse_qs(urlsplit(answer.headers["location"]).query)["scope"] == [
        "launch/patient openid fhirUser patient/Patient.rs"]
    done = app.get("/smart/callback", params=authorize(answer.headers["location"]))
    assert done.status_code == 303
    assert _ctx(app).sessions.session(done.headers["location"].removeprefix("/view/")).ehr_patient == patient


def register(stack, **metadata: object) -> dict:
    """A client registered with the EHR's authorization server (RFC 7591): its client_id and secret."""
    body = {"redirect_uris": [REDIRECT], "grant_types": ["authorization_code"], "response_types": ["code"],
            **metadata}
    answer = httpx.post(stack.oauth.registration_endpoint, json=body, timeout=10)
    assert answer.status_code == 201, answer.text
    return answer.json()


@pytest.mark.peers
@pytest.mark.parametrize("method", ["client_secret_basic", "private_key_jwt"])
def test_confidential_client_launches(ehr, tmp_path, method):
    """A confidential client: client_secret_basic, or private_key_jwt with phg.auth's key (SMART
    client-confidential-asymmetric: the assertion's aud is the token endpoint, the peer checks it)."""
    stack, patient, _ = ehr
    if method == "private_key_jwt":
        key_file = tmp_path / "view-key.json"
        generate_key(key_file)
        client = register(stack, token_endpoint_auth_method=method, jwks=jwks([load_key(key_file)]))
        table = {"client_id": client["client_id"], "key_file": str(key_file)}
    else:
        client = register(stack, token_endpoint_auth_method=method)
        table = {"client_id": client["client_id"], "client_secret": client["client_secret"]}
    app = service(tmp_path, **table)
    answer = app.get("/smart/launch", params={"iss": stack.gate.base_url, "launch": LAUNCH})
    done = app.get("/smart/callback", params=authorize(answer.headers["location"]))
    assert done.status_code == 303, done.text
    assert _ctx(app).sessions.session(done.headers["location"].removeprefix("/view/")).ehr_patient == patient


@pytest.mark.peers
def test_wrong_state_is_refused_before_any_token_request(ehr, tmp_path):
    stack, _, _ = ehr
    app = service(tmp_path)
    callback = launch(app, stack.gate.base_url)
    answer = app.get("/smart/callback", params={**callback, "state": callback["state"][:-2] + "xx"})
    assert answer.status_code == 400 and "state" in answer.text
    assert not _ctx(app).sessions._sessions


@pytest.mark.peers
def test_replayed_code_is_refused(ehr, tmp_path):
    stack, _, _ = ehr
    app = service(tmp_path)
    callback = launch(app, stack.gate.base_url)
    assert app.get("/smart/callback", params=callback).status_code == 303
    again = app.get("/smart/callback", params=callback)  # the same code and state a second time
    assert again.status_code == 400 and "state" in again.text
    # and the EHR itself refuses the code a second time, whoever presents it
    pending = smart.Pending(stack.gate.base_url, stack.oauth.token_endpoint, "v" * 43, "n", 0)
    assert httpx.post(pending.token_endpoint, data={"grant_type": "authorization_code", "code": callback["code"],
                                                    "redirect_uri": REDIRECT, "client_id": CLIENT_ID,
                                                    "code_verifier": "v" * 43}).status_code == 400


@pytest.mark.peers
def test_code_without_its_pkce_verifier_is_refused(ehr, tmp_path):
    stack, _, _ = ehr
    app = service(tmp_path)
    callback = launch(app, stack.gate.base_url)
    answer = httpx.post(stack.oauth.token_endpoint, data={"grant_type": "authorization_code", "code": callback["code"],
                                                          "redirect_uri": REDIRECT, "client_id": CLIENT_ID})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    # a code stolen on its way back is useless without the verifier, which never left the service
    assert app.get("/smart/callback", params=callback).status_code == 303


@pytest.mark.peers
def test_token_answer_for_another_patient_is_refused(ehr, tmp_path, monkeypatch):
    """The Patient read with the token must be the token's patient: an EHR (or a proxy) answering with
    another patient's resource is refused and no session opens."""
    stack, patient, other = ehr
    app = service(tmp_path)
    callback = launch(app, stack.gate.base_url)
    real_get = httpx.AsyncClient.get

    async def swapped(self, url, **kwargs):
        return await real_get(self, str(url).replace(f"/Patient/{patient}", f"/Patient/{other}"), **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "get", swapped)
    answer = app.get("/smart/callback", params=callback)
    assert answer.status_code == 400 and "another patient" in answer.text
    assert not _ctx(app).sessions._sessions


@pytest.mark.peers
def test_callback_from_another_issuer_is_refused(ehr, tmp_path):
    """RFC 9207: the authorization server names itself in the callback (oidc-provider does); a code
    injected from another server (a mix-up) names another issuer."""
    stack, _, _ = ehr
    app = service(tmp_path)
    callback = launch(app, stack.gate.base_url)
    assert callback["iss"] == stack.oauth.issuer
    answer = app.get("/smart/callback", params={**callback, "iss": "https://attacker.example"})
    assert answer.status_code == 400 and "issuer" in answer.text


@pytest.mark.peers
def test_unknown_launch_is_refused_by_the_ehr(ehr, tmp_path):
    stack, _, _ = ehr
    app = service(tmp_path)
    callback = launch(app, stack.gate.base_url, "launch-nobody-made")
    answer = app.get("/smart/callback", params=callback)
    assert answer.status_code == 400 and "did not authorize" in answer.text


# ------------------------------------------------------------------------------------------ unit


def test_iss_must_be_https_unless_loopback(tmp_path):
    answer = service(tmp_path).get("/smart/launch", params={"iss": "http://ehr.example.org/fhir", "launch": "x"})
    assert answer.status_code == 400 and "https" in answer.text
    assert "allow_insecure_http" not in answer.text  # no setting allows plain http for a launch


def test_a_token_endpoint_in_plain_http_names_no_setting():
    """An EHR's SMART configuration announcing an http token endpoint: refused, without the [fhir] setting
    (which the launch does not read) as the way around."""
    with pytest.raises(smart.LaunchRefused) as info:
        smart._secure("http://ehr.lan/token", "token_endpoint of https://ehr.lan/fhir/.well-known/smart-configuration")
    assert str(info.value).endswith("uses plain http to a non-loopback host; use https")


def test_expired_sessions_are_gone_with_their_tokens():
    sessions = smart.SmartSessions()
    old = sessions.open(smart.ViewSession((("s", "v"),), "Practitioner/1", time.time() - 1), {"access_token": "t1"})
    live = sessions.open(smart.ViewSession((("s", "v"),), "Practitioner/1", time.time() + 60), {"access_token": "t2"})
    assert sessions.session(old) is None and sessions.session(live).fhir_user == "Practitioner/1"
    assert [tokens["access_token"] for _, tokens in sessions._sessions.values()] == ["t2"]


def test_iss_other_than_the_configured_ehr_is_refused_before_any_request(tmp_path):
    app = service(tmp_path, fhir_base="https://ehr.example.org/fhir")
    answer = app.get("/smart/launch", params={"iss": "https://elsewhere.example/fhir", "launch": "x"})
    assert answer.status_code == 400 and "fhir_base" in answer.text
    assert not _ctx(app).sessions._pending


def test_launches_in_progress_are_bounded(monkeypatch):
    monkeypatch.setattr(smart, "MAX_PENDING", 3)
    sessions = smart.SmartSessions()
    states = [sessions.start(smart.Pending("b", "t", "v", "n", time.time())) for _ in range(5)]
    assert len(sessions._pending) == 3 and sessions.finish(states[0]) is None and sessions.finish(states[4])


def test_pkce_challenge_is_s256_of_the_verifier():
    verifier, challenge = smart.pkce_pair()
    assert len(verifier) >= 43  # RFC 7636 4.1
    assert challenge == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _patient(*identifiers: tuple[str | None, str | None]) -> dict:
    return {"resourceType": "Patient", "id": "p", "identifier": [{"system": s, "value": v} for s, v in identifiers]}


def test_configured_system_with_two_values_is_ambiguous_and_refused():
    with pytest.raises(smart.LaunchRefused, match="2 different identifiers of system s1"):
        smart.match_identifiers(_patient(("s1", "a"), ("s1", "b")), "s1")
    assert smart.match_identifiers(_patient(("s1", "a"), ("s2", "b")), "s1") == (("s1", "a"),)


def test_every_identifier_with_a_system_is_matched_and_none_is_refused():
    assert smart.match_identifiers(_patient(("s2", "b"), ("s1", "a"), (None, "c")), None) == (("s1", "a"), ("s2", "b"))
    with pytest.raises(smart.LaunchRefused, match="no identifier"):
        smart.match_identifiers(_patient((None, "c")), None)


@given(st.recursive(st.none() | st.text() | st.integers(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)))
def test_any_patient_identifier_shape_is_matched_or_refused(identifier):
    try:
        found = smart.match_identifiers({"identifier": identifier}, None)
    except smart.LaunchRefused:
        return
    assert all(s and v for s, v in found)


def test_id_token_of_another_launch_is_refused():
    def token(**claims: object) -> str:
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        return f"e30.{body}.sig"

    assert smart._id_token_user(token(aud=CLIENT_ID, nonce="n1", fhirUser="Practitioner/1"), CLIENT_ID, "n1") == \
        "Practitioner/1"
    with pytest.raises(smart.LaunchRefused, match="nonce"):
        smart._id_token_user(token(aud=CLIENT_ID, nonce="n2"), CLIENT_ID, "n1")
    with pytest.raises(smart.LaunchRefused, match="another client"):
        smart._id_token_user(token(aud="someone-else", nonce="n1"), CLIENT_ID, "n1")


@given(st.one_of(st.none(), st.text(), st.binary().map(lambda b: "h." + base64.urlsafe_b64encode(b).decode() + ".s"),
                 st.recursive(st.none() | st.text() | st.integers(), lambda c: st.lists(c) | st.dictionaries(
                     st.text(), c)).map(lambda v: "h." + base64.urlsafe_b64encode(json.dumps(v).encode()).decode())))
def test_any_id_token_is_read_or_refused(id_token):
    try:
        assert isinstance(smart._id_token_user(id_token, CLIENT_ID, "n1"), str)
    except smart.LaunchRefused:
        pass


def test_smart_settings_need_the_registration(tmp_path):
    with pytest.raises(ConfigError, match=r"\[smart\] needs redirect_url"):
        load_config(document={"smart": {"client_id": "x"}}, env={})
    with pytest.raises(ConfigError, match="not both"):
        load_config(document={"smart": {"client_id": "x", "redirect_url": REDIRECT, "client_secret": "s",
                                         "key_file": str(tmp_path / "k")}}, env={})
