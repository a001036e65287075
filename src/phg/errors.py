"""Every error phg raises on purpose, in one hierarchy so callers can decide by type.

    PhgError
     +-- ConfigError          a config file, key or flag is wrong; start-up stops, naming file and key
     +-- ReadingError         an input reading document is invalid; names the field and why
     +-- MappingError         a valid reading cannot be expressed in FHIR / HL7 v2
     +-- AuthError            the authorization server refused us (invalid_client, invalid_scope, ...)
     |    +-- DiscoveryError  no usable SMART configuration at the FHIR base
     +-- StorageError         the outbox file cannot be used: disk full, read-only, unopenable,
     |                        not an SQLite database, or another application's database; names the file
     +-- DeliveryError
          +-- TransientDeliveryError   retry later (connection, timeout, 408, 429, 5xx)
          +-- PermanentDeliveryError   the server rejected this content (4xx); dead-letter it

An AuthError stops delivery but never touches the queue: fixing the credentials and
restarting delivers everything that waited. A StorageError means the write it interrupted was
rolled back: `phg send` stores nothing and says so; the running daemon logs it, waits and retries.
"""

from __future__ import annotations


class PhgError(Exception):
    """Base of all phg errors."""


class ConfigError(PhgError):
    """Configuration is missing or wrong."""


class ReadingError(PhgError):
    """An input reading document is invalid. `where` is a JSON path such as metrics[1].time."""

    def __init__(self, where: str, why: str, source: str | None = None):
        self.where = where
        self.why = why
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{where}: {why}")


class MappingError(PhgError):
    """A reading cannot be mapped to the target format."""


class AuthError(PhgError):
    """The authorization server refused the client; not retried automatically."""


class DiscoveryError(AuthError):
    """The FHIR server does not tell where to get a token."""


class StorageError(PhgError):
    """The outbox database cannot be read or written; `path` is the file. The transaction that
    failed was rolled back, so nothing it was storing is stored."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class DeliveryError(PhgError):
    """Sending to a destination failed."""


class TransientDeliveryError(DeliveryError):
    """Worth retrying later. `retry_after` is the server's Retry-After in seconds, if it gave one.
    `detail` is the peer's own words (an HL7 ERR text, a SOAP fault reason), which may quote the
    reading: it is stored with the queue item and logged only at DEBUG; the message is what is logged.
    `reached` is False when the destination could not be reached at all (nothing about the content)."""

    def __init__(self, message: str, retry_after: float | None = None, detail: str | None = None,
                 reached: bool = True):
        super().__init__(message)
        self.retry_after = retry_after
        self.detail = detail
        self.reached = reached


class PermanentDeliveryError(DeliveryError):
    """The server rejected the content; retrying the same content cannot succeed."""

    def __init__(self, message: str, status: int | None = None, outcome: dict | None = None):
        super().__init__(message)
        self.status = status
        self.outcome = outcome
