"""What a destination says about each reading of a batch: a closed set of three outcomes.

Every destination (FHIR, MLLP, HL7 over HTTP, SOAP) answers with these; the worker maps them onto
the outbox (delivered, dead, retry later) without knowing which destination spoke.
"""

from __future__ import annotations

import asyncio
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
class Deferred:
    """Not delivered now, perhaps later.

    - `refusals`: the server answered and refused it for now (an HL7 v2 AE/CE ACK): after that many
      such answers it goes dead with `reason`. None: no answer (no ACK, garbled, an outage): as many
      tries as it takes, spaced by the worker's backoff.
    - `retry_after`: the server asked that nothing be sent to it for this many seconds (an HTTP
      Retry-After, RFC 9110 section 10.2.3): the worker holds the whole destination.
    - `reached`: False when no connection could be made at all (the worker's circuit opens)."""

    reason: str
    retry_after: float | None = None
    reached: bool = True
    refusals: int | None = None

    @property
    def counts_as_refusal(self) -> bool:
        return self.refusals is not None


Outcome = Delivered | Rejected | Deferred


class Interrupted(asyncio.CancelledError):
    """A send cancelled part way through its batch (the worker cancels it when its lease is lost), raised
    by a destination that sends reading by reading (an HL7 exchange): `outcomes` are those of the readings
    it finished, the batch's first len(outcomes), so that what the receiver acknowledged is still reported
    and not sent again by the worker that takes the batch over. A cancellation all the same."""

    def __init__(self, outcomes: list[Outcome]):
        super().__init__(f"cancelled after {len(outcomes)} readings")
        self.outcomes = outcomes


class Destination(Protocol):
    """A place readings go, opened as an async context manager (phg.delivery.registry). `name` keys
    its queue in the outbox."""

    name: str

    async def send(self, readings: Sequence[Reading]) -> list[Outcome]:
        """Send one batch; one Outcome per reading, in order. A batch-wide failure raises a
        DeliveryError (phg.errors) instead: transient (retry the batch), permanent (split it), auth."""
        ...
