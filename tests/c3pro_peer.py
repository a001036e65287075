"""A C3-PRO server and consumer for tests, built from ../shared/docs/c3pro-facts.md (not from phg).

One Starlette app on 127.0.0.1 (a free port, uvicorn in a thread), context root ``/c3pro``
(S ``jboss-web.xml`` 3), playing both halves of a C3-PRO deployment:

- the server (S = C3-PRO/c3-pro-server): ``POST /register`` behind the Antispam check, ``POST /oauth``
  behind the Basic filter answering 202, the Bearer filter on ``/encfhir`` and ``/encfhir/*``, and
  ``POST /encfhir/<anything>`` taking the JSON envelope and answering 200 with an empty body, or 200
  with a non-JSON error body when a field is missing (``Utils.sendJSONError`` flushes before it sets 400);
- the consumer (C = C3-PRO/c3-pro-consumer ``SQSListener``), run at once on every envelope: lenient
  Base64, the RSA key chosen by ``key_id.trim()``, ``RSA/ECB/OAEPWithSHA1AndMGF1Padding`` to unwrap the
  AES key, ``AES/CBC/PKCS5Padding`` with 16 zero bytes as IV, a FHIR JSON resource in the clear text.

Every envelope is kept as a :class:`Submission`; one the consumer could not process carries its
``problem`` (the real consumer stores such a message with processed=<error> and acknowledges it), so a
test asserts ``peer.problems == []`` to prove the client never sent one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ROOT = "/c3pro"
NO_APP_RECEIPT = "NO-APP-RECEIPT"  # accepted as is (S RegisterServer.java 261)
TOKEN_LIFETIME = 1800  # seconds (S web.xml 47-50)
ZERO_IV = bytes(16)  # C SQSListener.java 448-458; I AESUtility.swift 64-73
ENVELOPE_FIELDS = ("message", "symmetric_key", "key_id", "version")  # S FHIREncServlet.java 21-24, 36-51

# The iOS framework's published AES test vector (I Tests/EncryptionTests.swift 22-24, 55-66):
# AES-CBC, PKCS#7, zero IV, the 16-byte key "why-is-this-here".
VECTOR_KEY = b"why-is-this-here"
VECTOR_PLAINTEXT = b"Let's encrypt!"
VECTOR_CIPHERTEXT = "Iy8Mbj2ye1fI0yUWvyzwWw=="

_TOKEN_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._"  # S OAuth2Server.java 200-208
_OAEP_SHA1 = OAEP(mgf=MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
_B64_CHARS = re.compile(r"[^A-Za-z0-9+/\-_]")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")

# The 201 answer, byte for byte as S RegisterServer.java JSON_RESPONSE (67-73) formats it: the
# trailing comma is C3-PRO's, and makes the body invalid JSON.
REGISTRATION_ANSWER = (
    '{{\n  "client_id":"{client_id}",\n  "client_secret": "{client_secret}",\n'
    '  "grant_types": ["client_credentials"],\n  "token_endpoint_auth_method":"client_secret_basic",\n}}'
)
# The 202 answer as S OAuth2Server.java JSON_OUTPUT (50-55) formats it: expires_in a number.
TOKEN_ANSWER = '{{\n    "access_token": "{token}",\n    "expires_in": {expires_in},\n    "token_type": "bearer"\n}}'


def sha1_base64(text: str) -> str:
    """JBoss ``Util.createPasswordHash("SHA1", BASE64, ...)``: how the server stores antispam tokens and
    secrets (S RegisterServer.java 139, 278-292; generate_hashed_token.sh)."""
    return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()


def aes_cbc_zero_iv_encrypt(key: bytes, clear: bytes) -> bytes:
    """What the iOS app does (I AESUtility.swift; CryptoSwift AES CBC, PKCS7, zero IV)."""
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(ZERO_IV)).encryptor()
    return encryptor.update(padder.update(clear) + padder.finalize()) + encryptor.finalize()


def aes_cbc_zero_iv_decrypt(key: bytes, data: bytes) -> bytes:
    """What the consumer does: ``AES/CBC/PKCS5Padding``, IV = 16 zero bytes (C SQSListener.java 448-458)."""
    decryptor = Cipher(algorithms.AES(key), modes.CBC(ZERO_IV)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(decryptor.update(data) + decryptor.finalize()) + unpadder.finalize()


def lenient_b64decode(text: str) -> bytes:
    """commons-codec ``Base64.decodeBase64`` as the consumer uses it (C SQSListener.java 98, 112): both
    alphabets, characters outside them skipped, decoding stops at the first '=', a dangling char dropped."""
    kept = _B64_CHARS.sub("", text.split("=", 1)[0]).translate(str.maketrans("-_", "+/"))
    kept = kept[: len(kept) - (len(kept) % 4 == 1)]
    return base64.b64decode(kept + "=" * (-len(kept) % 4))


def make_envelope(resource: dict[str, Any], public_key: rsa.RSAPublicKey, key_id: str, version: str,
                  key_length: int = 32) -> dict[str, str]:
    """An envelope as the iOS app builds it (I EncryptedDataQueue.swift, AESUtility.swift, RSAUtility.swift
    78-85): a fresh AES key (32 bytes on iOS), wrapped with RSA-OAEP SHA-1. For the peer's own tests."""
    key = secrets.token_bytes(key_length)
    return {"message": base64.b64encode(aes_cbc_zero_iv_encrypt(key, json.dumps(resource).encode())).decode(),
            "symmetric_key": base64.b64encode(public_key.encrypt(key, _OAEP_SHA1)).decode(),
            "key_id": key_id, "version": version}


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c3pro test peer")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))


@dataclass
class Submission:
    """One POST to /encfhir: what arrived and what the consumer made of it."""

    path: str  # the part after /encfhir (the server ignores it; the app puts the resource type there)
    body: str
    key_id: str | None = None
    version: str | None = None
    key_length: int | None = None  # bytes of the unwrapped AES key
    resource: dict[str, Any] | None = None
    problem: str | None = None  # why the server or the consumer could not take it; None = processed


@dataclass
class Registration:
    headers: dict[str, str]
    body: str
    client_id: str | None  # None: refused


def _error(status: int, error: str, description: str | None = None) -> Response:
    """S ErrorReturn.java 55-69, 109-116."""
    body = {"error": error} | ({"error_description": description} if description else {})
    return Response(json.dumps(body, separators=(",", ":")), status, media_type="application/json")


class C3ProPeer:
    """The peer. ``with C3ProPeer() as peer:`` (or the ``c3pro_peer`` fixture); ``peer.base_url`` is the
    context root phg is pointed at, ``peer.antispam`` the clear Antispam token, ``peer.key_id`` and
    ``peer.certificate_der``/``certificate_pem`` what a deployment hands out."""

    def __init__(self, *, antispam: str = "c3pro-antispam-test-token", key_id: str = "c3pro-test-key",
                 token_lifetime: int = TOKEN_LIFETIME) -> None:
        self.antispam = antispam
        self._antispam_hashes = {sha1_base64(antispam)}  # the AntiSpamToken table
        self.key_id = key_id
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # S/C key-generator.sh
        self._keys = {key_id: self.private_key}  # <basepath>/<key_id>/private-c3pro.der (C 477-490)
        self.certificate = _self_signed(self.private_key)
        self.token_lifetime = token_lifetime
        self.clients: dict[str, str] = {}  # client_id -> SHA1/Base64 of the secret (Users table)
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (client_id, expiry in time.time())
        self.registrations: list[Registration] = []
        self.submissions: list[Submission] = []
        self.token_requests = 0
        self._hold: tuple[int, bool] | None = None  # (after how many posts, lose the answer)
        self.holding = threading.Event()  # set while a post is held (see hold_after)
        self.dropped = threading.Event()  # set when the client of a held post went away
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def __enter__(self) -> C3ProPeer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto set: asyncio sets TCP_NODELAY
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(Starlette(routes=_routes(self)), log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="c3pro-peer")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the C3-PRO peer did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------------------------- for tests

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{ROOT}"

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write_certificate(self, path: Path, encoding: str = "der") -> Path:
        """The certificate as a deployment hands it out (``public.crt``, DER) or as PEM."""
        path.write_bytes(self.certificate_der if encoding == "der" else self.certificate_pem)
        return path

    def resources(self, resource_type: str | None = None) -> list[dict[str, Any]]:
        """The resources the consumer decrypted, in arrival order (one per accepted envelope)."""
        with self._lock:
            return [s.resource for s in self.submissions if s.resource is not None and s.problem is None
                    and (resource_type is None or s.resource.get("resourceType") == resource_type)]

    @property
    def problems(self) -> list[Submission]:
        """Envelopes the server or the consumer could not process (answered 200 all the same)."""
        with self._lock:
            return [s for s in self.submissions if s.problem is not None]

    def register_client(self) -> tuple[str, str]:
        """A client registered directly (as /register would), for tests that start after registration."""
        client_id, secret = str(uuid.uuid4()), base64.b64encode(secrets.token_bytes(64)).decode()
        with self._lock:
            self.clients[client_id] = sha1_base64(secret)
        return client_id, secret

    def hold_after(self, count: int, *, lose_answer: bool = False) -> None:
        """Hold the next post once ``count`` envelopes are kept (one post; ``holding`` is set meanwhile).
        By default it is held before it is taken, until ``release()``: if its client is gone by then, it
        is dropped untaken (to a test that kills the client while ``holding``, the kill fell between two
        posts). With ``lose_answer`` it is taken and never answered, until its client gives up waiting:
        the client lost the answer to a post the server took."""
        self._release.clear()
        self._hold = (count, lose_answer)

    def release(self) -> None:
        self._hold = None
        self._release.set()

    def expire_tokens(self) -> None:
        """Every issued token expires now (the UserTokens rows pass their expirationDate)."""
        with self._lock:
            self.tokens = {token: (client, 0.0) for token, (client, _) in self.tokens.items()}

    # ------------------------------------------------------------------------------------- the routes

    async def _register(self, request: Request) -> Response:
        """S RegisterServer.java: Antispam first (46, 86-95), then the body (98-112), then the receipt."""
        body = (await request.body()).decode("utf-8", "replace")
        record = Registration(dict(request.headers), body, None)
        with self._lock:
            self.registrations.append(record)
        if sha1_base64(request.headers.get("antispam", "\0")) not in self._antispam_hashes:
            return _error(401, "unauthorized_client", "Antispam token not validated")
        try:
            receipt = json.loads(body)["receipt-data"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "invalid_request")
        if not isinstance(receipt, str):
            return _error(400, "invalid_request")
        if receipt != NO_APP_RECEIPT:  # would go to Apple's verifyReceipt, which this peer cannot reach
            return _error(401, "unauthorized_client", "Apple receipt not valid")
        client_id, secret = self.register_client()
        record.client_id = client_id
        return Response(REGISTRATION_ANSWER.format(client_id=client_id, client_secret=secret), 201,
                        media_type="application/json")

    def _basic_login(self, header: str | None) -> str | None:
        """S OAuthServerFilter.java 38-71: 'Basic' case-insensitive, two space-separated parts, Base64,
        URLDecoder.decode of the whole string, split(':'), JAAS login against the Users table."""
        if header is None or header[:5].lower() != "basic":
            return None
        parts = _java_split(header, " ")
        if len(parts) != 2:
            return None
        try:
            decoded = base64.b64decode(parts[1], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if _PERCENT.search(decoded):  # java.net.URLDecoder throws on an incomplete escape
            return None
        cred = _java_split(_url_decode(decoded), ":")
        if len(cred) < 2:
            return None
        with self._lock:
            stored = self.clients.get(cred[0])
        return cred[0] if stored is not None and stored == sha1_base64(cred[1]) else None

    async def _oauth(self, request: Request) -> Response:
        """S OAuth2Server.java 73-116: grant_type by getParameter (query or form), 202 with the token."""
        client_id = self._basic_login(request.headers.get("authorization"))
        if client_id is None:
            return _error(401, "unauthorized_client")
        if request.method != "POST":
            return Response(status_code=405)
        grant = request.query_params.get("grant_type")
        if grant is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            grant = (parse_qs((await request.body()).decode("utf-8", "replace")).get("grant_type") or [None])[0]
        if grant is None:
            return _error(400, "invalid_request", "Grant type is null")
        if grant.lower() != "client_credentials":
            return _error(400, "unsupported_grant_type")
        token = "".join(_TOKEN_CHARS[b & 0x3F] for b in secrets.token_bytes(64))
        with self._lock:
            self.tokens[token] = (client_id, time.time() + self.token_lifetime)
            self.token_requests += 1
        return Response(TOKEN_ANSWER.format(token=token, expires_in=self.token_lifetime), 202,
                        media_type="application/json")

    def _bearer_ok(self, header: str | None) -> bool:
        """S OAuthFilter.java 32-46, OAuth2LoginModule.java 61-106: 'Bearer' case-insensitive, exactly
        one token, valid while expirationDate > sysdate."""
        if header is None or header[:6].lower() != "bearer":
            return False
        parts = _java_split(header, " ")
        if len(parts) != 2:
            return False
        with self._lock:
            entry = self.tokens.get(parts[1])
        return entry is not None and entry[1] > time.time()

    async def _encfhir(self, request: Request) -> Response:
        if not self._bearer_ok(request.headers.get("authorization")):
            return _error(401, "unauthorized_client")
        if request.method != "POST":
            return Response(status_code=405)
        body = (await request.body()).decode("utf-8", "replace")
        lose_answer = self._claim_hold()
        if lose_answer is False and not await self._client_still_there(request, self._release.is_set):
            return Response(status_code=200)  # nobody is listening: the post was never taken
        answer = self._take(request.path_params.get("rest", ""), body)
        if lose_answer:
            await self._client_still_there(request, lambda: False)
        return answer

    def _take(self, path: str, body: str) -> Response:
        """S FHIREncServlet.java 36-59: the four fields, then (here at once) the consumer."""
        submission = Submission(path, body)
        with self._lock:
            self.submissions.append(submission)
        envelope, missing = _read_envelope(body)
        if missing:
            submission.problem = missing
            # Utils.sendJSONError writes, flushes (committing 200), then sets 400 too late (S Utils.java 182-188).
            return Response("{'error':'" + missing + "'}", 200, media_type="application/json")
        submission.key_id, submission.version = envelope["key_id"], envelope["version"]
        self._consume(submission, envelope)
        return Response(status_code=200)

    def _claim_hold(self) -> bool | None:
        """None: this post is not held; else whether its answer is to be lost (see hold_after)."""
        with self._lock:
            if self._hold is None or len(self.submissions) < self._hold[0]:
                return None
            (_, lose_answer), self._hold = self._hold, None
        self.holding.set()
        return lose_answer

    async def _client_still_there(self, request: Request, done: Callable[[], bool]) -> bool:
        """Wait (60 s at most) until `done()` or the client is gone; False (and ``dropped`` set) if gone."""
        deadline = time.monotonic() + 60
        while True:
            if await request.is_disconnected():
                self.dropped.set()
                return False
            if done() or time.monotonic() > deadline:
                return True
            await asyncio.sleep(0.02)

    def _consume(self, submission: Submission, envelope: dict[str, str]) -> None:
        """C SQSListener.java 98-131, 156-215, 448-490: decrypt, then check what processing needs."""
        private_key = self._keys.get(envelope["key_id"].strip())
        if private_key is None:
            submission.problem = f"no private key for key_id {envelope['key_id']!r}"
            return
        try:
            key = private_key.decrypt(lenient_b64decode(envelope["symmetric_key"]), _OAEP_SHA1)
            submission.key_length = len(key)
            clear = aes_cbc_zero_iv_decrypt(key, lenient_b64decode(envelope["message"]))
            resource = json.loads(clear)
        except ValueError as exc:  # wrong wrap, key size, padding, UTF-8 or JSON
            submission.problem = f"cannot decrypt: {exc.__class__.__name__}: {exc}"
            return
        submission.resource = resource if isinstance(resource, dict) else None
        submission.problem = _unprocessable(resource)


def _java_split(text: str, separator: str) -> list[str]:
    """Java's ``String.split``: as Python's, but trailing empty strings are dropped."""
    parts = text.split(separator)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _url_decode(text: str) -> str:
    """java.net.URLDecoder.decode(text, "UTF-8"): '+' is a space, %XX sequences are UTF-8 bytes."""
    return re.sub(r"(%[0-9A-Fa-f]{2})+", lambda m: bytes.fromhex(m.group().replace("%", "")).decode("utf-8", "replace"),
                  text.replace("+", " "))


def _read_envelope(body: str) -> tuple[dict[str, str], str | None]:
    """S FHIREncServlet.java 36-51: a JSON object, each field read with getString in this order."""
    try:
        envelope = json.loads(body)
    except ValueError:
        return {}, "A JSONObject text must begin with '{'"
    if not isinstance(envelope, dict):
        return {}, "A JSONObject text must begin with '{'"
    for field in ENVELOPE_FIELDS:
        if field not in envelope:
            return {}, f'JSONObject["{field}"] not found.'
        if not isinstance(envelope[field], str):
            return {}, f'JSONObject["{field}"] not a string.'
    return envelope, None


def _unprocessable(resource: Any) -> str | None:
    """What the consumer's processing needs (C SQSListener.java 156-215, 395-406): a resource with a
    resourceType; a Patient with an id (PUT by id); any other type a subject.reference "Type/id"."""
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return "the clear text is not a FHIR resource (no resourceType)"
    if resource["resourceType"] == "Patient":
        return None if resource.get("id") else "a Patient without id cannot be PUT"
    if resource["resourceType"] == "Contract":
        return None
    subject = resource.get("subject")
    reference = subject.get("reference") if isinstance(subject, dict) else None
    if not isinstance(reference, str) or "/" not in reference:
        return "subject.reference is not Type/id"
    return None


def _routes(peer: C3ProPeer) -> list[Route]:
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    return [Route(f"{ROOT}/register", peer._register, methods=["POST"]),
            Route(f"{ROOT}/oauth", peer._oauth, methods=methods),
            Route(f"{ROOT}/encfhir", peer._encfhir, methods=methods),
            Route(ROOT + "/encfhir/{rest:path}", peer._encfhir, methods=methods)]
