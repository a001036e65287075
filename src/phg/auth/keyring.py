"""Several signing keys per gateway, and their rotation.

A key is *published* (in the JWKS the server reads) before it *signs*, and an old key stays
published for a grace period after it stopped signing, so that a server that cached the JWKS
never meets a kid it does not know (SMART client-confidential-asymmetric: the server fetches the
client's JWKS URL and may cache it; oidc-provider, for one, caches it for at least 60 s).

State lives in ``<key_file>.keyring.json`` beside the key files (mode 0600, written atomically):

    {"version": 1, "keys": [
       {"file": "phg-key.pem", "kid": "...", "alg": "ES384", "added": 1764320000,
        "sign_from": 1764320000, "retire_at": 1764406400},
       {"file": "phg-key.20261128T090000.pem", "kid": "...", "alg": "ES384", "added": 1764320000,
        "sign_from": 1764320600, "retire_at": null}]}

Times are Unix seconds. Without a state file the ring is the single key at ``key_file`` (the
behaviour before rotation existed). ``phg keys rotate`` adds a key that signs ``publish_delay``
seconds later and schedules the current keys' retirement ``grace`` seconds after that; retired
keys leave the JWKS and their private key files are deleted at the next rotation.

A running gateway asks :meth:`KeyRing.signing_key` at every token request; the state file is
re-read when its mtime changes, so a rotation done by another process takes effect at once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from phg.auth.keys import SigningKey, generate_key, jwks, load_key
from phg.config import DEFAULT_GRACE, DEFAULT_PUBLISH_DELAY  # [auth] key_publish_delay, key_rotation_grace
from phg.errors import ConfigError
from phg.secretfile import write_private

log = logging.getLogger(__name__)



class KeySource(Protocol):
    def signing_key(self) -> SigningKey: ...

    def published(self) -> list[SigningKey]: ...


@dataclass(frozen=True)
class StaticKey:
    """One fixed key (tests, and callers that hand PrivateKeyJwt a SigningKey)."""

    key: SigningKey

    def signing_key(self) -> SigningKey:
        return self.key

    def published(self) -> list[SigningKey]:
        return [self.key]


@dataclass(frozen=True)
class RingEntry:
    file: str
    kid: str
    alg: str
    added: float
    sign_from: float
    retire_at: float | None

    def published_at(self, now: float) -> bool:
        return self.retire_at is None or now < self.retire_at

    def signs_at(self, now: float) -> bool:
        return self.sign_from <= now and self.published_at(now)


def state_path(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + ".keyring.json")


class KeyRing:
    """The gateway's keys, anchored at the configured ``key_file``. Thread-safe."""

    def __init__(self, key_file: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.key_file = Path(key_file)
        self.state_file = state_path(self.key_file)
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: list[RingEntry] = []
        self._keys: dict[tuple[str, int], SigningKey] = {}

    # ------------------------------------------------------------------ reading
    def entries(self) -> list[RingEntry]:
        with self._lock:
            self._reload()
            return list(self._entries)

    def signing_key(self) -> SigningKey:
        """The newest key allowed to sign now."""
        now = self._clock()
        entries = self.entries()
        signing = [e for e in entries if e.signs_at(now)]
        if not signing:  # a ring whose every key is retired or not yet active: say so, don't guess
            raise ConfigError(f"{self.state_file}: no key may sign now (all retired or not yet active); "
                              "run phg keys rotate --publish-delay 0")
        return self._load(max(signing, key=lambda e: e.sign_from))

    def published(self) -> list[SigningKey]:
        """Every key the JWKS must show now: signing, about to sign, and in their grace period."""
        now = self._clock()
        return [self._load(e) for e in self.entries() if e.published_at(now)]

    def jwks(self) -> dict[str, Any]:
        return jwks(self.published())

    def _reload(self) -> None:
        try:
            st = os.stat(self.state_file)
        except FileNotFoundError:
            if self._stamp != (0, 0):
                key = self._load_file(self.key_file)
                self._entries = [RingEntry(self.key_file.name, key.kid, key.alg, 0.0, 0.0, None)]
                self._stamp = (0, 0)
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._entries = _parse_state(self.state_file)
        self._stamp = stamp

    def _load(self, entry: RingEntry) -> SigningKey:
        key = self._load_file(self.key_file.with_name(entry.file))
        if key.kid != entry.kid:
            raise ConfigError(f"{self.state_file}: {entry.file} holds kid {key.kid}, the ring says {entry.kid}")
        return key

    def _load_file(self, path: Path) -> SigningKey:
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            mtime = -1
        cached = self._keys.get((str(path), mtime))
        if cached is None:
            cached = self._keys[(str(path), mtime)] = load_key(path)
        return cached

    # ------------------------------------------------------------------ rotating
    def rotate(self, alg: str | None = None, *, publish_delay: float = DEFAULT_PUBLISH_DELAY,
               grace: float = DEFAULT_GRACE, publish: Callable[[dict[str, Any]], None] | None = None) -> SigningKey:
        """Add a new key (same alg as the current one unless given): published now, signing after
        ``publish_delay`` s; the keys that sign now retire ``grace`` s after that. Keys already
        retired leave the ring and their files are deleted.

        ``publish(jwks)``, when given, makes the new JWKS known to the server (RFC 7592) before the ring
        changes: a running `phg run` re-reads the ring and signs with the new key as soon as it may (at once
        with publish_delay 0), so the server must know it first, or its token requests fail as
        invalid_client. If publish raises, the ring is left as it was and the new key file removed."""
        if publish_delay < 0 or grace < 0:
            raise ConfigError("publish delay and grace must be >= 0 seconds")
        now = self._clock()
        with self._lock:
            self._stamp = None
            self._reload()
            current = self._entries
        alg = alg or self.signing_key().alg
        name = f"{self.key_file.stem}.{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}{self.key_file.suffix}"
        path = self.key_file.with_name(name)
        n = 1
        while path.exists():
            n += 1
            path = self.key_file.with_name(f"{Path(name).stem}-{n}{self.key_file.suffix}")
        generate_key(path, alg)
        key = load_key(path)
        sign_from = now + publish_delay
        kept: list[RingEntry] = []
        for entry in current:
            if not entry.published_at(now):
                self.key_file.with_name(entry.file).unlink(missing_ok=True)
                log.info("key %s retired and deleted", entry.kid)
                continue
            retire_at = sign_from + grace
            if entry.retire_at is not None:
                retire_at = min(entry.retire_at, retire_at)
            kept.append(RingEntry(entry.file, entry.kid, entry.alg, entry.added, entry.sign_from, retire_at))
        kept.append(RingEntry(path.name, key.kid, key.alg, now, sign_from, None))
        if publish is not None:
            try:
                publish(jwks([self._load(e) for e in kept if e.published_at(now)]))
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        _write_state(self.state_file, kept)
        with self._lock:
            self._stamp = None
        log.info("added key %s (%s): published now, signs from +%.0f s", key.kid, key.alg, publish_delay)
        return key


def _parse_state(path: Path) -> list[RingEntry]:
    try:
        data = json.loads(path.read_text())
        entries = [RingEntry(str(e["file"]), str(e["kid"]), str(e["alg"]), float(e["added"]),
                             float(e["sign_from"]), None if e.get("retire_at") is None else float(e["retire_at"]))
                   for e in data["keys"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a valid key ring state file ({exc})") from exc
    for entry in entries:
        if Path(entry.file).name != entry.file:
            raise ConfigError(f"{path}: key file {entry.file!r} must be a plain file name beside the ring")
    return entries


def _write_state(path: Path, entries: list[RingEntry]) -> None:
    data = {"version": 1, "keys": [e.__dict__ for e in entries]}
    write_private(path, json.dumps(data, indent=2))
