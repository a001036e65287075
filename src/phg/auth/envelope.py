"""Encrypted envelopes for servers that require payload encryption (the C3-PRO flow from the field).

The resource is encrypted with a fresh AES key, that key is wrapped with the server's RSA public
key, and the key id travels with it so the server knows which private key unwraps it. That is
exactly JWE (RFC 7516) with alg RSA-OAEP-256 (RFC 7518 section 4.3) and enc A256GCM (section 5.3),
so the standard compact serialisation is what phg sends (content type ``application/jose``;
protected header ``{"alg", "enc", "kid", "cty": "application/fhir+json"}``). joserfc does the JOSE
work; a new content-encryption key and IV are drawn for every message.

``[auth] encrypt_to``: the server's public key as a PEM file, a JWK or JWKS file, or an https URL
of a JWKS (fetched once when the destination opens). ``[auth] encrypt_kid`` picks one key of a
JWKS; otherwise the JWKS must hold exactly one RSA key usable for encryption.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwe
from joserfc.jwk import RSAKey

from phg import config
from phg.errors import ConfigError
from phg.transport import connection_error, redact_url

ALG = "RSA-OAEP-256"
ENC = "A256GCM"
JOSE = "application/jose"
FHIR_JSON = "application/fhir+json"
_ALGORITHMS = [ALG, ENC]  # joserfc lists RSA-OAEP-256 as "not recommended" unless named


@dataclass(frozen=True)
class Envelope:
    """The server's RSA public key and its kid; :meth:`seal` makes one JWE per body."""

    kid: str
    key: RSAKey = field(repr=False)
    content_type: str = FHIR_JSON

    def seal(self, body: bytes) -> tuple[bytes, str]:
        header = {"alg": ALG, "enc": ENC, "kid": self.kid, "cty": self.content_type}
        token = jwe.encrypt_compact(header, body, self.key, algorithms=_ALGORITHMS)
        return token.encode("ascii"), JOSE


def seal(body: bytes, envelope: Envelope | None) -> tuple[bytes, str]:
    """The bytes to send and their Content-Type: the JWE envelope when one is configured, else the
    clear FHIR JSON body as is. CPU work (RSA): call it in a thread."""
    if envelope is None:
        return body, FHIR_JSON
    return envelope.seal(body)


def open_envelope(token: bytes | str, private_key: Any) -> tuple[bytes, dict[str, Any]]:
    """Decrypt an envelope with the server's private key (a joserfc RSAKey or a PEM/JWK it can
    import): ``(plaintext, protected header)``. For receivers and tests."""
    key = private_key if isinstance(private_key, RSAKey) else RSAKey.import_key(private_key)
    text = token.decode("ascii") if isinstance(token, bytes) else token
    decrypted = jwe.decrypt_compact(text, key, algorithms=_ALGORITHMS)
    return decrypted.plaintext or b"", dict(decrypted.protected)


def envelope_from_jwks(document: Any, kid: str | None, source: str) -> Envelope:
    if isinstance(document, dict) and "keys" not in document:
        document = {"keys": [document]}
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ConfigError(f"{source}: expected a JWK or JWKS")
    candidates = [
        k for k in document["keys"]
        if isinstance(k, dict) and k.get("kty") == "RSA" and k.get("use", "enc") == "enc"
        and k.get("alg", ALG) == ALG and (kid is None or k.get("kid") == kid)
    ]
    if len(candidates) != 1:
        which = f"kid {kid!r}" if kid else "an RSA encryption key (use enc, alg RSA-OAEP-256 or none)"
        raise ConfigError(f"{source}: expected exactly one {which}, found {len(candidates)}; "
                          "set [auth] encrypt_kid to choose")
    public = {k: v for k, v in candidates[0].items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
    try:
        key = RSAKey.import_key(public)
    except Exception as exc:  # joserfc raises several types for malformed members
        raise ConfigError(f"{source}: not a valid RSA JWK ({exc})") from None
    return _checked(key, public.get("kid") or key.thumbprint(), source)


def envelope_from_file(path: Path, kid: str | None = None, where: str = "[auth] encrypt_to") -> Envelope:
    """`where`: the setting that named the file (a destination's own auth table says so: load_envelope)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where} {path}: cannot read ({exc.strerror})") from None
    except ValueError:  # the one other refusal of a file name
        raise ConfigError(f"{where}: {str(path)!r:.80} is not a file name (it holds a NUL character)") from None
    source = f"{where} {path}"
    if data.lstrip().startswith(b"{"):
        try:
            return envelope_from_jwks(json.loads(data), kid, source)
        except ValueError as exc:
            raise ConfigError(f"{source}: not valid JSON ({exc})") from None
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError:
        try:  # an X.509 certificate of the server's encryption key is fine too
            from cryptography import x509

            public = x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            raise ConfigError(f"{source}: not a PEM public key, certificate, JWK or JWKS") from None
    if not isinstance(public, rsa.RSAPublicKey):
        raise ConfigError(f"{source}: the envelope needs an RSA public key (RSA-OAEP-256)")
    key = RSAKey.import_key(public)
    return _checked(key, kid or key.thumbprint(), source)


async def load_envelope(encrypt_to: str | None, client: httpx.AsyncClient, kid: str | None = None,
                        table: str = "[auth]") -> Envelope | None:
    """The Envelope for ``[auth] encrypt_to`` (None when not configured); `table` is the auth table that set it
    (``[destinations.NAME.auth]`` for another FHIR destination), which errors name. A JWKS URL is fetched
    through ``client`` (so the configured TLS settings apply)."""
    if not encrypt_to:
        return None
    if not encrypt_to.startswith(("https://", "http://")):
        return envelope_from_file(config.path(encrypt_to, f"{table} encrypt_to"), kid, f"{table} encrypt_to")
    where = f"{table} encrypt_to {redact_url(encrypt_to)}"
    try:
        response = await client.get(encrypt_to, headers={"Accept": "application/json"}, auth=None)
    except httpx.TransportError as exc:
        raise connection_error(exc, f"{where}: cannot fetch the JWKS") from exc
    if response.status_code != 200:
        raise ConfigError(f"{where}: HTTP {response.status_code}")
    try:
        document = response.json()
    except ValueError:
        raise ConfigError(f"{where}: not JSON") from None
    return envelope_from_jwks(document, kid, where)


def _checked(key: RSAKey, kid: str, source: str) -> Envelope:
    size = key.raw_value.key_size if hasattr(key.raw_value, "key_size") else 0
    if size < 2048:
        raise ConfigError(f"{source}: RSA key of {size} bits is too small (minimum 2048)")
    return Envelope(kid=kid, key=key)
