"""What a destination says about each reading of a batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from phg.model import Reading


@dataclass(frozen=True)
class Delivered:
    """The server stored (or already had) the reading. result: the server ids, e.g. 'Observation/17'."""

    result: str


@dataclass(frozen=True)
class Rejected:
    """The server refused this reading on its own; reason is the server's explanation."""

    reason: str


@dataclass(frozen=True)
class Retry:
    """The server could not take this reading now but may later (e.g. an HL7 v2 AE ACK): retry it
    with backoff until the server has answered so `max_attempts` times (outages in between do not
    count), then it goes dead with `reason`. `retry_after`: the server asked that nothing be sent to
    it for this many seconds (an HTTP Retry-After in the middle of an HL7 v2 batch)."""

    reason: str
    max_attempts: int
    retry_after: float | None = None


UNBOUNDED = 2**31  # Retry.max_attempts of "no answer" retries: as many as it takes, like any outage

Outcome = Delivered | Rejected | Retry


class Destination(Protocol):
    """A place readings go. `name` keys its queue in the outbox."""

    name: str

    async def send(self, readings: Sequence[Reading]) -> list[Outcome]:
        """Send one batch; one Outcome per reading, in order."""
        ...
