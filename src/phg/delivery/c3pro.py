"""The C3-PRO destination: each FHIR resource of a reading, encrypted in C3-PRO's own JSON envelope,
POSTed alone to ``<root>/encfhir/<ResourceType>``. Rules read from C3-PRO's code: github.com/C3-PRO
c3-pro-server @bd7994f, c3-pro-consumer @039c28a, c3-pro-ios-framework @e5790c5 (files cited below).

The envelope (C3-PRO consumer ``SQSListener.java`` 448-475, iOS ``AESUtility.swift``/``RSAUtility.swift``):
``{"message", "symmetric_key", "key_id", "version"}``, all strings. ``message`` is the resource's JSON
encrypted with AES-256-CBC, PKCS#7 padding and an all-zero IV (nothing of the IV travels);
``symmetric_key`` that AES key wrapped with RSA-OAEP, SHA-1, MGF1-SHA-1, empty label; both Base64.
A fresh key is drawn for every message, so the zero IV never meets the same key twice. These ciphers
are weak by today's standards: they are spoken only to a destination typed ``c3pro``; every other
encrypted destination gets JWE (phg.auth.envelope).

The server neither decrypts nor validates: it answers 200 with an empty body to whatever carries the
four fields, and 200 too (with ``{'error': ...}``, its error written before the status) to a body
missing one. So phg shape-checks every envelope it built before sending it (`check_envelope`): the
four strings, Base64, a wrapped key as long as the RSA modulus, a whole number of AES blocks. The
tests decrypt with the consumer's algorithms.

What is sent, in FHIR STU3 (3.0.x; C3-PRO's pipeline is DSTU2/STU3, never R4; the envelope's
``version``, default "3.0.0" as the iOS framework sends, names the i2b2 pipeline):
- the Patient, once per patient: ``id`` (a UUID named by the patient identifier: the consumer PUTs
  Patients by id) and the identifier;
- each measurement Observation of the reading, ``subject.reference = Patient/<that id>`` (the
  consumer rewrites "Type/id"): identifier (the PHD IG conditional identifier), status, category,
  code (MDC + LOINC), effectiveDateTime (the gateway's corrected time), value or dataAbsentReason,
  components, ``device`` as a Reference by identifier (STU3 Reference.identifier) with a display.
Dropped, because STU3 or the C3-PRO consumer cannot take them: the PHD IG R4 profiles in meta and its
extensions (gatewayDevice, Coincident Time Stamp reference), the Device resources (the consumer posts
every non-Patient resource by its subject, which a Device has not), the Coincident Time Stamp
Observation (its subject is the device), and all but the first interpretation (0..1 in STU3).
terminology.hl7.org code systems are written with their STU3 URIs (http://hl7.org/fhir/...).

Duplicates: C3-PRO has none of FHIR's conditional create; every 200 is a new message. So each
resource the server took is recorded in the destination's journal (SQLite, ``journal`` key) before
anything else is sent, and a resource already recorded is never posted again: a batch retried after
a crash, a 5xx or a lease that ran out resends only what had no 200. A post whose answer was lost
(the request went out, no answer came back) cannot be told apart from one the server never saw: it
is sent again, which may duplicate it; each such post is counted (`Journal.possible_duplicates`,
kept in the journal, so it survives restarts).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from phg.config import C3proSettings, TlsSettings
from phg.delivery.outcome import Delivered, Outcome, Rejected
from phg.errors import AuthError, ConfigError, MappingError, PermanentDeliveryError
from phg.fhir import build_transaction, to_json
from phg.fhir.resources import phd_identifier
from phg.model import Gateway, PatientRef, Reading
from phg.process import in_thread
from phg.transport import TRANSIENT_STATUSES, connection_error, exchange, require_secure_url, transient_error

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/fhir+json; charset=utf-8"  # what the iOS app sends (the server does not check)
ZERO_IV = bytes(16)
KEY_BYTES = 32  # AES-256, as iOS sends (AESUtility.swift 31)
FIELDS = ("message", "symmetric_key", "key_id", "version")
# C3-PRO's token endpoint ignores scope (OAuth2Server.java); TokenAuth sends one, so it says what is done.
SCOPE = "system/*.write"
_STU3_SYSTEMS = (("http://terminology.hl7.org/CodeSystem/v3-", "http://hl7.org/fhir/v3/"),
                 ("http://terminology.hl7.org/CodeSystem/", "http://hl7.org/fhir/"))
_OAEP = OAEP(mgf=MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303 (C3-PRO's own)


# ---------------------------------------------------------------------------------------------- the keys


def load_public_key(path: Path, where: str) -> rsa.RSAPublicKey:
    """The server's RSA key from a DER or PEM X.509 certificate (what C3-PRO deployments hand out:
    sample-data enc/public.crt) or a DER or PEM SubjectPublicKeyInfo. ConfigError naming `where`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where} {path}: cannot read it ({exc.strerror})") from None
    pem = data.lstrip().startswith(b"-----BEGIN")
    loaders = (x509.load_pem_x509_certificate, serialization.load_pem_public_key) if pem else \
        (x509.load_der_x509_certificate, serialization.load_der_public_key)
    for loader in loaders:
        try:
            found = loader(data)
        except ValueError:
            continue
        key = found.public_key() if isinstance(found, x509.Certificate) else found
        if not isinstance(key, rsa.RSAPublicKey):
            raise ConfigError(f"{where} {path} holds a {type(key).__name__}; C3-PRO wraps keys with RSA")
        return key
    raise ConfigError(f"{where} {path} is neither an X.509 certificate nor a public key (DER or PEM)")


# ---------------------------------------------------------------------------------------------- the envelope


def aes_encrypt(key: bytes, clear: bytes) -> bytes:
    """AES-CBC, PKCS#7, IV of 16 zero bytes (C3-PRO consumer SQSListener.java 448-458)."""
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(ZERO_IV)).encryptor()
    return encryptor.update(padder.update(clear) + padder.finalize()) + encryptor.finalize()


def seal(resource: bytes, public_key: rsa.RSAPublicKey, key_id: str, version: str) -> bytes:
    """One envelope for one resource's JSON, with a fresh AES-256 key wrapped by RSA-OAEP SHA-1."""
    key = os.urandom(KEY_BYTES)
    envelope = {
        "message": base64.b64encode(aes_encrypt(key, resource)).decode("ascii"),
        "symmetric_key": base64.b64encode(public_key.encrypt(key, _OAEP)).decode("ascii"),
        "key_id": key_id,
        "version": version,
    }
    return json.dumps(envelope).encode()


def check_envelope(body: bytes, key_bytes: int) -> None:
    """Shape-check an envelope before it is sent (the server answers 200 even to a malformed one):
    a JSON object of the four strings, Base64, the wrapped key as long as the RSA modulus
    (`key_bytes`), the message a non-empty whole number of AES blocks. MappingError names what is
    wrong (the reading is dead-lettered: a bug of phg's, never sent)."""
    try:
        envelope = json.loads(body)
    except ValueError as exc:
        raise MappingError(f"C3-PRO envelope is not JSON: {exc}") from None
    if not isinstance(envelope, dict) or set(envelope) != set(FIELDS) or \
            not all(isinstance(envelope[name], str) and envelope[name] for name in FIELDS):
        raise MappingError(f"C3-PRO envelope must hold the non-empty strings {', '.join(FIELDS)}")
    try:
        message = base64.b64decode(envelope["message"], validate=True)
        wrapped = base64.b64decode(envelope["symmetric_key"], validate=True)
    except ValueError:
        raise MappingError("C3-PRO envelope: message or symmetric_key is not Base64") from None
    if len(wrapped) != key_bytes or not message or len(message) % 16:
        raise MappingError(f"C3-PRO envelope: a {len(wrapped)}-byte wrapped key (the RSA key has {key_bytes}) "
                           f"and a {len(message)}-byte message (a whole number of 16-byte blocks expected)")


# ---------------------------------------------------------------------------------------------- STU3 resources


def patient_id(patient: PatientRef) -> str:
    """The Patient's id: a UUID named by its identifier, the same on every gateway."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"Patient?identifier={patient.system}|{patient.value}"))


def stu3_systems(value: Any) -> Any:
    """`value` with every terminology.hl7.org code system written with its STU3 URI."""
    if isinstance(value, dict):
        return {k: stu3_systems(v) for k, v in value.items()}
    if isinstance(value, list):
        return [stu3_systems(v) for v in value]
    if isinstance(value, str):
        for r4, stu3 in _STU3_SYSTEMS:
            if value.startswith(r4):
                return stu3 + value.removeprefix(r4)
    return value


def _observation(r4: dict[str, Any], subject: str, device: dict[str, Any]) -> dict[str, Any]:
    """A PHD IG R4 Observation as STU3 (see the module docstring for what is dropped)."""
    keep = ("identifier", "status", "category", "code", "effectiveDateTime", "valueQuantity", "dataAbsentReason")
    resource: dict[str, Any] = {"resourceType": "Observation"}
    if security := r4.get("meta", {}).get("security"):
        resource["meta"] = {"security": security}
    resource |= {key: r4[key] for key in keep if key in r4}
    resource["subject"] = {"reference": subject}
    if interpretation := r4.get("interpretation"):
        resource["interpretation"] = interpretation[0]
    resource["device"] = device
    if "component" in r4:
        resource["component"] = r4["component"]
    return stu3_systems(resource)


def render(reading: Reading, gateway: Gateway) -> list[tuple[str, dict[str, Any]]]:
    """The reading's STU3 resources as (journal key, resource): the Patient, then each Observation."""
    tx = build_transaction([reading], gateway)
    pid = patient_id(reading.patient)
    system, value = phd_identifier(reading.device)
    names = " ".join(n for n in (reading.device.manufacturer, reading.device.model) if n)
    device = {"identifier": {"system": system, "value": value}, **({"display": names} if names else {})}
    found = [(f"Patient/{pid}", {"resourceType": "Patient", "id": pid, "identifier": [
        {"system": reading.patient.system, "value": reading.patient.value}]})]
    for i in tx.reading_entries[0]:
        r4 = tx.bundle["entry"][i]["resource"]
        identifier = r4["identifier"][0]
        found.append((f"Observation?identifier={identifier.get('system', '')}|{identifier['value']}",
                      _observation(r4, f"Patient/{pid}", device)))
    return found


# ---------------------------------------------------------------------------------------------- the journal


class Journal:
    """Which resources the server took (a 200), by a hash of their key, and how many posts lost
    their answer. SQLite, committed (synchronous=FULL) before the next post goes out."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS sent (key TEXT PRIMARY KEY, at REAL NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")

    @staticmethod
    def _hash(key: str) -> str:  # the journal holds no patient identifiers
        return hashlib.sha256(key.encode()).hexdigest()

    def sent(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM sent WHERE key = ?", (self._hash(key),)).fetchone() is not None

    def record(self, key: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO sent VALUES (?, ?)", (self._hash(key), time.time()))

    def answer_lost(self) -> None:
        self.db.execute("INSERT INTO counter VALUES ('possible_duplicates', 1) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + 1")

    @property
    def possible_duplicates(self) -> int:
        row = self.db.execute("SELECT value FROM counter WHERE name = 'possible_duplicates'").fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        self.db.close()


# ---------------------------------------------------------------------------------------------- the destination


def c3pro_auth(settings: C3proSettings, client: httpx.AsyncClient) -> httpx.Auth:
    """Client credentials with client_secret_basic at <root>/oauth (form-urlencoded id and secret,
    C3-PRO OAuthServerFilter.java 38-71); the token goes only to the root's origin."""
    from phg.auth.secret import ClientSecret
    from phg.auth.token import ClientCredentials, TokenAuth

    if not settings.client_id or not settings.client_secret:
        raise ConfigError(f"{settings.source}: [destinations.{settings.name}] has no client_id and client_secret: "
                          f"register first (phg register --destination {settings.name})")
    return TokenAuth(ClientCredentials(), ClientSecret(settings.client_id, settings.client_secret), scope=SCOPE,
                     fhir_base=settings.base_url, token_url=f"{settings.base_url}/oauth", client=client,
                     allow_insecure_http=settings.allow_insecure_http)


@asynccontextmanager
async def open_c3pro(settings: C3proSettings, gateway: Gateway) -> AsyncIterator[C3proDestination]:
    from phg.delivery.tls import httpx_options

    section = f"[destinations.{settings.name}]"
    require_secure_url(settings.base_url, f"{section} base_url", allow_insecure_http=settings.allow_insecure_http)
    key = load_public_key(settings.public_key, f"{settings.source}: {section} public_key")
    timeout = httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout))
    journal = await in_thread(Journal, settings.journal)
    try:
        async with httpx.AsyncClient(timeout=timeout, **httpx_options(TlsSettings())) as client:
            auth = c3pro_auth(settings, client)
            client.auth = auth
            try:
                yield C3proDestination(settings, gateway, client, key, journal)
            finally:
                await auth.aclose()  # type: ignore[attr-defined]
    finally:
        journal.close()


class C3proDestination:
    """Posts each resource of each reading once, in C3-PRO's envelope."""

    def __init__(self, settings: C3proSettings, gateway: Gateway, client: httpx.AsyncClient,
                 key: rsa.RSAPublicKey, journal: Journal):
        self.name = settings.name
        self.settings = settings
        self.gateway = gateway
        self.client = client
        self.key = key
        self.journal = journal

    async def send(self, readings: Sequence[Reading]) -> list[Outcome]:
        return [await self._send_one(reading) for reading in readings]

    async def _send_one(self, reading: Reading) -> Outcome:
        try:
            resources = await in_thread(self._envelopes, reading)
        except MappingError as exc:
            return Rejected(f"cannot map to C3-PRO: {exc}")
        except Exception as exc:  # a mapping bug must cost this reading only
            return Rejected(f"cannot map to C3-PRO: {type(exc).__name__}: {exc}")
        sent = []
        for key, kind, body in resources:
            if await in_thread(self.journal.sent, key):
                continue
            refused = await self._post(kind, body)
            if refused:
                return Rejected(refused)
            await in_thread(self.journal.record, key)  # before anything else goes out
            sent.append(kind)
        return Delivered(" ".join(sent) or "already delivered")

    def _envelopes(self, reading: Reading) -> list[tuple[str, str, bytes]]:
        """(journal key, resource type, checked envelope) of each resource this destination sends."""
        found = []
        for key, resource in render(reading, self.gateway):
            if resource["resourceType"] not in self.settings.resources:
                continue
            body = seal(to_json(resource), self.key, self.settings.key_id, self.settings.version)
            check_envelope(body, self.key.key_size // 8)
            found.append((key, resource["resourceType"], body))
        return found

    async def _post(self, kind: str, body: bytes) -> str | None:
        """POST one envelope; None when the server took it (200), else why it refused this one."""
        url = f"{self.settings.base_url}/encfhir/{kind}"
        try:
            response = await exchange(self.client, "POST", url, content=body, headers={"Content-Type": CONTENT_TYPE})
        except httpx.TransportError as exc:
            error = connection_error(exc, url)
            if error.reached:  # it may have arrived: the retry may duplicate it
                await in_thread(self.journal.answer_lost)
                log.warning("%s: the answer to a %s post was lost; its retry may be a duplicate", self.name, kind)
            raise error from exc
        status = response.status_code
        if status == 200:
            return _error_in_200(response)
        if status in TRANSIENT_STATUSES:
            raise transient_error(response, "C3-PRO server")
        if status in (401, 403):
            raise AuthError(f"{url} answered {status} even with a fresh token: {response.text[:200]}")
        if status in (404, 405):
            raise ConfigError(f"{url} answered {status}: is [destinations.{self.name}] base_url the C3-PRO "
                              "context root (such as https://host/c3pro)?")
        raise PermanentDeliveryError(f"{url} answered HTTP {status}: {response.text[:200]}", status)


def _error_in_200(response: httpx.Response) -> str | None:
    """C3-PRO answers 200 with an empty body; a body is its error, written before the status
    (Utils.sendJSONError: "{'error':'JSONObject[...] not found.'}")."""
    text = response.text.strip()
    return f"the C3-PRO server refused the envelope: {text[:200]}" if text else None
