"""HL7 v2 destinations: ONE class, the PCD-01 renderer composed with an exchange (MLLP, HTTP, SOAP),
and the ACK classification every exchange uses (HL7 v2.6 chapter 2, MSA-1 acknowledgment codes, as
interface engines apply them):

    AA / CA                      Delivered (only when MSA-2 equals the message's MSH-10)
    AR / CR                      Rejected: dead-lettered with the ERR / MSA-3 text
    AE / CE                      Deferred, a refusal: retried `ae_retries` times, then dead
    no ACK, garbled ACK,         Deferred, no answer: retried as long as it takes
    MSA-2 != MSH-10

One message per reading, so that one ACK answers exactly one reading, sent in order. After a
message whose fate is unknown (no usable ACK, no connection, a Retry-After) nothing more is sent in
the batch: when it was the first message, the whole batch is a TransientDeliveryError (the worker's
backoff or circuit); otherwise the readings already answered keep their outcome and the rest are
Deferred (with the server's retry_after).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from typing import Protocol

from phg.config import Hl7Settings
from phg.delivery.cpu import batch_work, render_inline
from phg.delivery.outcome import Deferred, Delivered, Interrupted, Outcome, Rejected
from phg.errors import MappingError, TransientDeliveryError
from phg.hl7v2.ack import Ack, AckError, parse_ack
from phg.hl7v2.pcd01 import render_batch
from phg.model import Gateway, Reading

log = logging.getLogger(__name__)


def classify(answer: bytes | str | None, control_id: str, ae_retries: int = 3) -> Outcome:
    """The outcome of one message from the peer's answer (None: no answer at all)."""
    if answer is None:
        return Deferred(f"no ACK for {control_id}")
    try:
        ack = parse_ack(answer)
    except AckError as exc:
        return Deferred(f"garbled ACK for {control_id}: {exc}")
    return ack_outcome(ack, control_id, ae_retries)


def ack_outcome(ack: Ack, control_id: str, ae_retries: int = 3) -> Outcome:
    if ack.control_id != control_id:
        return Deferred(f"ACK MSA-2 {ack.control_id[:40]!r} does not match MSH-10 {control_id}")
    if ack.accepted:
        return Delivered(f"{ack.code} {control_id}")
    reason = f"{ack.code} for {control_id}: {ack.text or 'no error text'}"
    if ack.code in ("AR", "CR"):
        return Rejected(reason)
    return Deferred(reason, refusals=1 + max(0, ae_retries))


def unanswered(result: Outcome) -> bool:
    """No usable answer (no ACK, garbled, wrong MSA-2, no connection): the link, not the content, failed."""
    return isinstance(result, Deferred) and not result.counts_as_refusal


class Exchange(Protocol):
    """Moves one ER7 message to the receiver and gives its Outcome (classified with `classify` /
    `ack_outcome`). No connection at all: Deferred(reached=False); a Retry-After: Deferred(retry_after).
    AuthError / ConfigError when the receiver refuses who we are or where we sent."""

    where: str

    async def __call__(self, message: str, control_id: str) -> Outcome: ...

    async def aclose(self) -> None: ...


class Hl7Destination:
    """PCD-01 messages (phg.hl7v2.pcd01) through an exchange; an async context manager that closes it."""

    def __init__(self, settings: Hl7Settings, gateway: Gateway, exchange: Exchange):
        self.name = settings.name
        self.settings = settings
        self.gateway = gateway
        self.exchange = exchange

    async def send(self, readings: Sequence[Reading]) -> list[Outcome]:
        rendered = await batch_work(render_inline(readings),
                                    partial(render_batch, readings, self.gateway,
                                            receiving_application=self.settings.receiving_application,
                                            receiving_facility=self.settings.receiving_facility))
        outcomes: list[Outcome] = []
        for n, item in enumerate(rendered):
            if isinstance(item, MappingError):
                outcomes.append(Rejected(f"cannot map to HL7 v2 PCD-01: {item}"))
                continue
            control_id, message = item
            exchange = asyncio.ensure_future(self.exchange(message, control_id))
            try:
                result = await asyncio.shield(exchange)
            except asyncio.CancelledError:
                raise await self._interrupted(exchange, outcomes) from None
            if not unanswered(result):
                outcomes.append(result)
                continue
            assert isinstance(result, Deferred)
            if not outcomes:
                raise self._batch_error(result, control_id)
            outcomes.append(result)
            outcomes += [Deferred("not sent: an earlier message of the batch was not acknowledged",
                                  result.retry_after)] * (len(rendered) - n - 1)
            break
        accepted = sum(1 for o in outcomes if isinstance(o, Delivered))
        log.info("%s: %d of %d messages acknowledged (AA/CA)", self.name, accepted, len(rendered))
        return outcomes

    @staticmethod
    async def _interrupted(exchange: asyncio.Future, outcomes: list[Outcome]) -> asyncio.CancelledError:
        """The send was cancelled (its lease lost, say) while a message was on the wire: its exchange ends
        first, within its own ack_timeout, so that an acknowledged message is reported with those before it
        (Interrupted) and the next holder of the batch does not send it again (issue 15's leader test: one
        MSH-10 twice). A second cancellation ends the exchange at once (the exchange drops its connection)."""
        try:
            result = await exchange
        except (asyncio.CancelledError, Exception):  # the batch ends here all the same: report what came before
            result = None
        if result is not None and not unanswered(result):
            outcomes.append(result)
        return Interrupted(outcomes) if outcomes else asyncio.CancelledError()

    def _batch_error(self, result: Deferred, control_id: str) -> TransientDeliveryError:
        """The first message went unanswered: the batch as a whole waits (backoff, Retry-After, circuit)."""
        if not result.reached or result.retry_after is not None:
            return TransientDeliveryError(result.reason, reached=result.reached, retry_after=result.retry_after)
        return TransientDeliveryError(f"{self.exchange.where}: message {control_id} not acknowledged",
                                      detail=result.reason)

    async def aclose(self) -> None:
        await self.exchange.aclose()

    async def __aenter__(self) -> Hl7Destination:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
