"""phg as a SMART app: the clinician launches it from the patient's chart in the EHR and sees that
patient's home readings (the view, phg.service.view). SMART App Launch 2.x
(https://hl7.org/fhir/smart-app-launch/app-launch.html):

- `GET /smart/launch?iss=&launch=` (EHR launch) and `GET /smart/standalone` (the clinician picks the
  patient at the EHR: scope `launch/patient` instead of `launch`, against `[smart] fhir_base`).
  Discovery from `{iss}/.well-known/smart-configuration` ("Retrieve .well-known/smart-configuration");
  `iss` must be https unless loopback, and `[smart] fhir_base` when that is set (phg then fetches
  nothing from a URL a stranger's link names). The browser goes to the authorization endpoint with
  `response_type=code`, `aud=iss`, `state`, `nonce` and a PKCE S256 challenge ("Obtain authorization
  code": PKCE is required of every app, S256 only).
- `GET /smart/callback?code=&state=`: the state must be one this service gave out and not yet used
  (a wrong or replayed state is refused before any token request); the code is exchanged with the
  verifier kept server-side; the id_token's `aud` and `nonce` must be ours (OpenID Connect Core
  3.1.3.7: received straight from the token endpoint over TLS, its issuer is the server we talked to,
  so its signature need not be checked); the token answer must carry the `patient` launch context.
  Then `GET {iss}/Patient/{patient}` with the token: the answer must be that Patient (a resource of
  another id is refused).
- Matching: phg's readings carry a patient identifier (system, value). With `[smart]
  identifier_system` the Patient's identifier of that system is used; two different values of that
  system are ambiguous and refused (the clinician would see one of two people's readings). Without
  it, every identifier of the Patient that has both a system and a value is used: they all name the
  one Patient the EHR returned; an identifier without a system could be anyone's and is ignored.
  A Patient with no usable identifier is refused.
- The session is server-side (SmartSessions): the browser gets only its random id in the URL of the
  view (`/view/{id}`), so the view works inside an EHR iframe without third-party cookies. The tokens
  stay in the session table for its lifetime and are dropped with it; they never reach the page.
  Every launch is logged with fhirUser and the EHR's Patient id, never a value or a token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from phg.auth.keys import load_key
from phg.auth.secret import ClientSecret, PublicClient
from phg.auth.smart import PrivateKeyJwt
from phg.config import SmartSettings
from phg.errors import ConfigError
from phg.transport import redact_url, require_secure_url

if TYPE_CHECKING:
    from phg.auth.token import ClientAuthentication
    from phg.service.app import ServiceContext

log = logging.getLogger(__name__)

PENDING_LIFETIME = 600.0  # seconds a started launch may take to come back to the callback
MAX_PENDING = 10_000  # launches in progress at once: past it the oldest is dropped (memory stays bounded)
TIMEOUT = 30.0  # seconds for each request to the EHR
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 id datatype


class LaunchRefused(Exception):
    """A launch that cannot go on: what is wrong, for the clinician (no token, no value)."""


@dataclass(frozen=True)
class ViewSession:
    """What a launch established: the patient's identifiers phg's readings are matched by, who
    launched (fhirUser) and until when (epoch seconds); `ehr_patient` is the EHR's Patient id."""

    patient: tuple[tuple[str, str], ...]
    fhir_user: str
    expires: float
    ehr_patient: str = ""


@dataclass(frozen=True)
class Pending:
    """A launch between the redirect to the EHR and its callback (kept server-side by its state)."""

    fhir_base: str
    token_endpoint: str
    verifier: str
    nonce: str
    started: float
    issuer: str | None = None  # the authorization server's, when the SMART configuration names it


class SmartSessions:
    """The server-side session table: view sessions by their random id (with their tokens, which
    only this table holds) and the launches in progress by their state. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[ViewSession, dict[str, Any]]] = {}
        self._pending: dict[str, Pending] = {}

    def open(self, view: ViewSession, tokens: dict[str, Any]) -> str:
        """A new session's id (256 random bits); the expired ones, and their tokens, are dropped."""
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self._sessions = {k: v for k, v in self._sessions.items() if v[0].expires > now}
            self._sessions[session_id] = (view, tokens)
        return session_id

    def session(self, session_id: str) -> ViewSession | None:
        """The live session of that id; None when unknown or expired (its tokens are dropped then)."""
        with self._lock:
            found = self._sessions.get(session_id)
            if found is not None and found[0].expires <= time.time():
                del self._sessions[session_id]
                found = None
        return found[0] if found else None

    def start(self, pending: Pending) -> str:
        state = secrets.token_urlsafe(32)
        with self._lock:
            self._pending = {s: p for s, p in self._pending.items() if p.started > time.time() - PENDING_LIFETIME}
            if len(self._pending) >= MAX_PENDING:
                del self._pending[next(iter(self._pending))]
            self._pending[state] = pending
        return state

    def finish(self, state: str) -> Pending | None:
        """The launch of that state, once: a second callback with it (a replay) finds nothing."""
        with self._lock:
            pending = self._pending.pop(state, None)
        return pending if pending and pending.started > time.time() - PENDING_LIFETIME else None


# ------------------------------------------------------------------------------------------ the flow


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636 4.1 and 4.2: 43 characters of base64url."""
    verifier = secrets.token_urlsafe(32)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


async def discover(client: httpx.AsyncClient, fhir_base: str) -> dict[str, Any]:
    """The EHR's `.well-known/smart-configuration`, with its authorization and token endpoints."""
    url = fhir_base.rstrip("/") + "/.well-known/smart-configuration"
    try:
        response = await client.get(url, headers={"Accept": "application/json"})
        document = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        document = None
    if not isinstance(document, dict):
        raise LaunchRefused(f"no SMART configuration at {redact_url(url)}")
    for key in ("authorization_endpoint", "token_endpoint"):
        if not isinstance(document.get(key), str):
            raise LaunchRefused(f"the SMART configuration at {redact_url(url)} names no {key}")
        _secure(document[key], f"{key} of {redact_url(url)}")
    return document


def _secure(url: str, what: str) -> None:
    try:
        require_secure_url(url, what, insecure_setting="")  # no setting allows plain http for a launch
    except ConfigError as exc:
        raise LaunchRefused(str(exc)) from None


def client_authentication(settings: SmartSettings) -> ClientAuthentication:
    """private_key_jwt with key_file, client_secret_basic with client_secret, else a public client."""
    if settings.key_file is not None:
        return PrivateKeyJwt(settings.client_id, load_key(settings.key_file))
    if settings.client_secret:
        return ClientSecret(settings.client_id, settings.client_secret)
    return PublicClient(settings.client_id)


async def authorize_url(sessions: SmartSessions, settings: SmartSettings, fhir_base: str, launch: str | None) -> str:
    """Where the browser goes to authorize this launch (EHR launch with `launch`, else standalone)."""
    _secure(fhir_base, "iss")
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        configuration = await discover(client, fhir_base)
    verifier, challenge = pkce_pair()
    nonce = secrets.token_urlsafe(16)
    issuer = configuration.get("issuer") if isinstance(configuration.get("issuer"), str) else None
    state = sessions.start(Pending(fhir_base, configuration["token_endpoint"], verifier, nonce, time.time(), issuer))
    scope = settings.scope if launch else " ".join(
        "launch/patient" if s == "launch" else s for s in settings.scope.split())
    query = {"response_type": "code", "client_id": settings.client_id, "redirect_uri": settings.redirect_url,
             "scope": scope, "state": state, "nonce": nonce, "aud": fhir_base,
             "code_challenge": challenge, "code_challenge_method": "S256", **({"launch": launch} if launch else {})}
    return f"{configuration['authorization_endpoint']}?{urlencode(query)}"


async def complete(sessions: SmartSessions, settings: SmartSettings, state: str, code: str,
                   iss: str | None = None) -> str:
    """The callback: the code exchanged, the Patient read and matched; the new session's id. `iss`, when
    the authorization server sends it (RFC 9207 2.4), must be the issuer this launch went to."""
    pending = sessions.finish(state)
    if pending is None:
        raise LaunchRefused("unknown, used or expired state: start the launch again from the EHR")
    if iss is not None and pending.issuer is not None and iss != pending.issuer:
        raise LaunchRefused(f"the callback comes from issuer {redact_url(iss)}, not the EHR's {redact_url(pending.issuer)}")
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        tokens = await _exchange(client, settings, pending, code)
        patient_id = tokens["patient"]
        fhir_user = _id_token_user(tokens.get("id_token"), settings.client_id, pending.nonce)
        patient = await _read_patient(client, pending.fhir_base, patient_id, tokens["access_token"])
    identifiers = match_identifiers(patient, settings.identifier_system)
    lifetime = settings.session_lifetime
    view = ViewSession(identifiers, fhir_user, time.time() + lifetime, patient_id)
    session_id = sessions.open(view, tokens)
    log.info("SMART launch: fhirUser %s opened the view of Patient/%s (%d identifiers)", fhir_user, patient_id,
             len(identifiers))
    return session_id


async def _exchange(client: httpx.AsyncClient, settings: SmartSettings, pending: Pending, code: str) -> dict[str, Any]:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": settings.redirect_url,
            "code_verifier": pending.verifier}
    headers = await client_authentication(settings).authenticate(pending.token_endpoint, form)
    if "client_id" not in form and "Authorization" not in headers:
        form["client_id"] = settings.client_id
    try:
        response = await client.post(pending.token_endpoint, data=form, headers={"Accept": "application/json",
                                                                                   **headers})
        tokens = response.json()
    except (httpx.HTTPError, ValueError):
        raise LaunchRefused(f"no token answer from {redact_url(pending.token_endpoint)}") from None
    if response.status_code != 200 or not isinstance(tokens, dict) or not isinstance(tokens.get("access_token"), str):
        error = tokens.get("error", "") if isinstance(tokens, dict) else ""
        raise LaunchRefused(f"the EHR refused the authorization code (HTTP {response.status_code} {error})".strip())
    if not isinstance(tokens.get("patient"), str) or not FHIR_ID.fullmatch(tokens["patient"]):
        raise LaunchRefused("the token answer has no patient context (launch the app from a patient's chart)")
    return tokens


def _id_token_user(id_token: Any, client_id: str, nonce: str) -> str:
    """fhirUser of the id_token, once its aud and nonce are ours (OpenID Connect Core 3.1.3.7, 2)."""
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (AttributeError, IndexError, ValueError):
        claims = None
    if not isinstance(claims, dict):
        raise LaunchRefused("the token answer has no readable id_token (scope openid fhirUser)")
    audience = claims.get("aud")
    if client_id not in (audience if isinstance(audience, list) else [audience]):
        raise LaunchRefused("the id_token is for another client")
    if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(claims["nonce"], nonce):
        raise LaunchRefused("the id_token's nonce is not this launch's")
    return str(claims.get("fhirUser") or claims.get("sub") or "unknown user")


async def _read_patient(client: httpx.AsyncClient, fhir_base: str, patient_id: str, token: str) -> dict[str, Any]:
    url = f"{fhir_base.rstrip('/')}/Patient/{patient_id}"
    try:
        response = await client.get(url, headers={"Authorization": f"Bearer {token}",
                                                  "Accept": "application/fhir+json"})
        patient = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        patient = None
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise LaunchRefused(f"the EHR gave no Patient/{patient_id} with this launch's token")
    if patient.get("id") != patient_id:
        raise LaunchRefused(f"the EHR answered Patient/{patient_id} with another patient: refused")
    return patient


def match_identifiers(patient: dict[str, Any], system: str | None) -> tuple[tuple[str, str], ...]:
    """The (system, value) identifiers phg's readings of this Patient carry (module docstring)."""
    listed = patient.get("identifier")
    found = [(i.get("system"), i.get("value")) for i in listed if isinstance(i, dict)] if isinstance(listed, list) else []
    usable = sorted({(s, v) for s, v in found if isinstance(s, str) and s and isinstance(v, str) and v})
    if system is not None:
        usable = [(s, v) for s, v in usable if s == system]
        if len(usable) > 1:
            raise LaunchRefused(f"the Patient has {len(usable)} different identifiers of system {system}: "
                                "cannot tell which one its readings carry, so none is shown")
    if not usable:
        wanted = f"of system {system}" if system else "with a system and a value"
        raise LaunchRefused(f"the Patient has no identifier {wanted}: no readings can be matched to it")
    return tuple(usable)


# ------------------------------------------------------------------------------------------ routes


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    def settings() -> SmartSettings:
        if ctx.config.smart is None:
            raise LaunchRefused("this gateway is not registered as a SMART app ([smart] is not configured)")
        return ctx.config.smart

    async def launch(request: Request) -> Response:
        iss, launch_id = request.query_params.get("iss"), request.query_params.get("launch")
        if not iss or not launch_id:
            raise LaunchRefused("an EHR launch needs iss and launch")
        if settings().fhir_base is not None and iss.rstrip("/") != settings().fhir_base.rstrip("/"):
            raise LaunchRefused(f"iss {redact_url(iss)} is not this gateway's EHR ([smart] fhir_base)")
        return RedirectResponse(await authorize_url(ctx.sessions, settings(), iss, launch_id), 302)

    async def standalone(request: Request) -> Response:
        base = settings().fhir_base
        if base is None:
            raise LaunchRefused("a standalone launch needs [smart] fhir_base (the EHR's FHIR base URL)")
        return RedirectResponse(await authorize_url(ctx.sessions, settings(), base, None), 302)

    async def callback(request: Request) -> Response:
        params = request.query_params
        if "error" in params:
            raise LaunchRefused(f"the EHR did not authorize the launch: {params['error'][:100]}")
        if not params.get("state") or not params.get("code"):
            raise LaunchRefused("the callback needs code and state")
        session_id = await complete(ctx.sessions, settings(), params["state"], params["code"], params.get("iss"))
        return RedirectResponse(f"/view/{session_id}", 303)

    return [Route(path, _refusals(handler), methods=["GET"]) for path, handler in
            (("/smart/launch", launch), ("/smart/standalone", standalone), ("/smart/callback", callback))]


def _refusals(handler: Any) -> Any:
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except LaunchRefused as refusal:
            log.warning("SMART launch refused: %s", refusal)
            return PlainTextResponse(f"Launch refused: {refusal}", 400, headers={"Cache-Control": "no-store"})
    return guarded


_REFUSED = {"400": {"description": "The launch is refused, with what is wrong (text)", "content": {
    "text/plain": {"schema": {"type": "string"}}}}}
_QUERY = {"in": "query", "required": True, "schema": {"type": "string"}}
OPENAPI = {"paths": {
    "/smart/launch": {"get": {
        "summary": "SMART EHR launch: to the EHR's authorization endpoint (PKCE S256, state, nonce)",
        "operationId": "smartLaunch", "tags": ["smart"],
        "parameters": [{"name": "iss", **_QUERY}, {"name": "launch", **_QUERY}],
        "responses": {"302": {"description": "To the EHR's authorization endpoint"}, **_REFUSED}}},
    "/smart/standalone": {"get": {
        "summary": "SMART standalone launch against [smart] fhir_base (the clinician picks the patient)",
        "operationId": "smartStandalone", "tags": ["smart"],
        "responses": {"302": {"description": "To the EHR's authorization endpoint"}, **_REFUSED}}},
    "/smart/callback": {"get": {
        "summary": "The redirect URI: the code exchanged, the Patient read, then the view (303 /view/{session})",
        "operationId": "smartCallback", "tags": ["smart"],
        "parameters": [{"name": "code", **_QUERY}, {"name": "state", **_QUERY}],
        "responses": {"303": {"description": "The view of the launched patient"}, **_REFUSED}}},
}}
