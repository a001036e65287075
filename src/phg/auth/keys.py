"""The gateway's private signing keys for SMART Backend Services client assertions.

SMART App Launch 2.2.0, client-confidential-asymmetric: a client SHALL support RS384 and ES384
and publish its public keys as a JWKS in which every key has a ``kid``. We use the RFC 7638 JWK
thumbprint (SHA-256, base64url) as the ``kid``, so it is stable and derived from the key alone.

Private keys live in PEM (PKCS#8, unencrypted) or private-JWK files that must be mode 0600: the
gateway refuses a key that other local users could read. JOSE work is done by joserfc; key
generation and PEM parsing by cryptography.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey

from phg.errors import ConfigError

SUPPORTED_ALGS = ("ES384", "RS384")

# NIST SP 800-57 Part 1 rev. 5: RSA-2048 gives 112-bit security (acceptable until 2030), RSA-3072
# gives 128 bits, the level P-384 already exceeds. We generate 3072 so a key made today outlives
# the 2030 cut-off; we still load 2048-bit keys that a server or an operator supplied, never less.
RSA_GENERATE_BITS = 3072
RSA_MIN_BITS = 2048

_PUBLIC_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y")}


@dataclass(frozen=True)
class SigningKey:
    """A private key able to sign client assertions, with its JWS ``alg`` and ``kid``."""

    alg: str
    kid: str
    _key: RSAKey | ECKey = field(repr=False)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any], source: str = "JWK") -> SigningKey:
        """Build from a private JWK (RFC 7517); ``kid`` is the JWK's own if it has one, else the
        RFC 7638 thumbprint. A JWK ``alg`` that disagrees with the key type is refused."""
        if "d" not in jwk:
            raise ConfigError(f"{source}: the JWK has no private part ('d'); a private key is needed")
        try:
            if jwk.get("kty") == "RSA":
                key: RSAKey | ECKey = RSAKey.import_key(dict(jwk))
            elif jwk.get("kty") == "EC":
                key = ECKey.import_key(dict(jwk))
            else:
                raise ConfigError(f"{source}: unsupported key type {jwk.get('kty')!r}; use RSA or EC P-384")
        except ConfigError:
            raise
        except Exception as exc:  # joserfc raises several types for malformed members
            raise ConfigError(f"{source}: not a valid private JWK ({exc})") from exc
        signing_key = _signing_key(key, source, kid=jwk.get("kid"))
        if jwk.get("alg") not in (None, signing_key.alg):
            raise ConfigError(f"{source}: JWK alg {jwk['alg']!r} does not match its key (expected {signing_key.alg})")
        return signing_key

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK to register with the server: kty, kid, alg, use and n/e or crv/x/y only
        (no key_ops/ext noise). ``alg`` is included because some servers require it to equal the
        assertion header's alg."""
        public = self._key.as_dict(private=False)
        jwk: dict[str, Any] = {"kty": public["kty"], "kid": self.kid, "alg": self.alg, "use": "sig"}
        jwk.update({name: public[name] for name in _PUBLIC_MEMBERS[public["kty"]]})
        return jwk

    def sign(self, claims: Mapping[str, Any], *, jku: str | None = None) -> str:
        """Sign ``claims`` as a JWT in JWS compact serialisation (RFC 7515 section 7.1).

        The protected header is exactly ``{"alg", "kid", "typ": "JWT"}`` in that order and both
        header and payload are compact JSON, as in the SMART spec's worked example; ``jku`` is
        appended when given. joserfc's ``jws.serialize_compact`` keeps the header's key order
        (``jwt.encode`` would put ``typ`` first), so no hand-assembled serialisation is needed.
        """
        header = {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        if jku is not None:  # SMART: optional; must equal the client's registered JWKS URL
            header["jku"] = jku
        payload = json.dumps(dict(claims), separators=(",", ":"), ensure_ascii=True).encode()
        # joserfc marks RS384 "not recommended" and refuses it unless explicitly allowed.
        return jws.serialize_compact(header, payload, self._key, algorithms=[self.alg])


def _signing_key(key: RSAKey | ECKey, source: str, kid: str | None = None) -> SigningKey:
    if not key.is_private:
        raise ConfigError(f"{source}: this is a public key; the gateway needs the private key")
    return SigningKey(alg=_alg_for(key.raw_value, source), kid=kid or key.thumbprint(), _key=key)


def _alg_for(private: object, source: str) -> str:
    """The JWS alg of a private RSA (>= 2048 bit) or EC P-384 key; anything else is refused."""
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < RSA_MIN_BITS:
            raise ConfigError(f"{source}: RSA key of {private.key_size} bits is too small (minimum {RSA_MIN_BITS})")
        return "RS384"
    if isinstance(private, ec.EllipticCurvePrivateKey):
        if not isinstance(private.curve, ec.SECP384R1):
            raise ConfigError(f"{source}: EC curve {private.curve.name} is not supported; ES384 needs P-384")
        return "ES384"
    raise ConfigError(f"{source}: unsupported key type; use RSA (RS384) or EC P-384 (ES384)")


def generate_key(path: Path, alg: str = "ES384") -> None:
    """Create a new private key at ``path`` as unencrypted PEM PKCS#8, mode 0600.

    The file is created with O_CREAT|O_EXCL and mode 0600 in one system call, so it is never
    readable by others, not even for a moment, and an existing key is never overwritten.
    """
    if alg == "ES384":
        private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = ec.generate_private_key(ec.SECP384R1())
    elif alg == "RS384":
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_GENERATE_BITS)
    else:
        raise ConfigError(f"unsupported key algorithm {alg!r}; choose one of {', '.join(SUPPORTED_ALGS)}")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise ConfigError(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create key file ({exc.strerror})") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def load_key(path: Path) -> SigningKey:
    """Load a private key from a PEM file or a private JWK / JWKS JSON file.

    Refused with a ConfigError naming the file: group- or other-accessible files (mode & 0o077),
    unreadable files, encrypted PEM, public keys, RSA under 2048 bits, EC curves other than P-384.
    A JWKS file must hold exactly one private key.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such private key file; `phg keys generate` writes one there (then register "
                          "its JWKS with the server), or set key_file to where the key is") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read private key ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as file:
        # fstat on the opened file: the mode checked is the mode of the bytes we read.
        mode = os.fstat(file.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{path}: not a regular file")
        if mode & 0o077:
            raise ConfigError(
                f"{path}: private key file is accessible by group/others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        data = file.read()
    if data.lstrip().startswith(b"{"):
        return _load_jwk_file(data, str(path))
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise ConfigError(f"{path}: encrypted private keys are not supported; store it unencrypted, mode 0600") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM private key") from exc
    # Checked before joserfc sees the key (it only warns about small RSA keys).
    alg = _alg_for(private, str(path))
    key = RSAKey.import_key(private) if alg == "RS384" else ECKey.import_key(private)  # type: ignore[arg-type]
    return SigningKey(alg=alg, kid=key.thumbprint(), _key=key)


def _load_jwk_file(data: bytes, source: str) -> SigningKey:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a JWK or JWKS object")
    if "keys" not in document:
        return SigningKey.from_jwk(document, source)
    private = [jwk for jwk in document["keys"] if isinstance(jwk, dict) and "d" in jwk]
    if len(private) != 1:
        raise ConfigError(f"{source}: a JWKS key file must hold exactly one private key, found {len(private)}")
    return SigningKey.from_jwk(private[0], source)


def jwks(keys: Iterable[SigningKey]) -> dict[str, Any]:
    """The public JWK Set (RFC 7517 section 5) to publish at the client's registered JWKS URL.

    ``kid`` must be unique in the set (SMART client-confidential-asymmetric); duplicates are refused.
    """
    entries = [key.public_jwk() for key in keys]
    kids = [entry["kid"] for entry in entries]
    duplicates = sorted({kid for kid in kids if kids.count(kid) > 1})
    if duplicates:
        raise ConfigError(f"duplicate kid in JWKS: {', '.join(duplicates)}")
    return {"keys": entries}
