"""HL7 v2 over HTTP(S) for phg.delivery.hl7.Hl7Destination: one POST per message, the ACK read from
the response. Two bindings share the exchange: `Er7Binding`, each ER7 message as text/plain (the
"HL7 over HTTP" style that HIEs and interface engines accept:
https://hapifhir.github.io/hapi-hl7v2/hapi-hl7overhttp/specification.html), and
phg.delivery.soap.SoapBinding (IHE DEC / Continua WAN SOAP 1.2). Answers:

- a body holding an ACK: classified by phg.delivery.hl7, whatever the status code;
- 401/403: AuthError (credentials are fixed by a person; the queue is untouched);
- a connection that cannot be made (refused, DNS, connect timeout, TLS handshake): Deferred with
  reached=False, an outage that says nothing about the readings;
- 408, 429, 5xx or a connection error after the request went out, without an ACK: not delivered,
  retried; a Retry-After on a transient status is carried in the Deferred, for which the worker
  holds the whole destination (RFC 9110 section 10.2.3);
- any other answer without an ACK: not delivered, retried (the receiver's state is unknown).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import httpx

from phg.config import HttpHl7Settings
from phg.delivery.hl7 import ack_outcome
from phg.delivery.outcome import Deferred, Outcome, Rejected
from phg.delivery.tls import httpx_options
from phg.errors import AuthError
from phg.hl7v2.ack import Ack, AckError, parse_ack
from phg.transport import NEVER_SENT, TRANSIENT_STATUSES, exchange, require_secure_url, retry_after


class NoAck(ValueError):
    """The response holds no answer to the message (its status code then tells what to do)."""


class Binding(Protocol):
    """How a message travels in an HTTP request and its ACK in the response."""

    headers: Mapping[str, str]
    what: str  # for messages: "an HL7 v2 message", "CommunicatePCDData"

    def body(self, message: str, url: str) -> bytes: ...

    def read(self, content: bytes, url: str, control_id: str) -> Ack | Outcome:
        """The ACK, an Outcome the response decides by itself (a SOAP fault), or NoAck."""
        ...


class Er7Binding:
    """The ER7 message as the body, the ACK as the response body."""

    headers = {"Content-Type": "text/plain; charset=utf-8", "Accept": "text/plain, */*"}
    what = "an HL7 v2 message"

    def body(self, message: str, url: str) -> bytes:
        return message.encode("utf-8")

    def read(self, content: bytes, url: str, control_id: str) -> Ack:
        try:
            return parse_ack(content)
        except AckError as exc:
            raise NoAck(f"without a usable ACK for {control_id}: {exc}") from None


class HttpExchange:
    """POSTs one message per request to the settings' url through one pooled client (TLS policy of
    phg.delivery.tls, the settings' extra headers)."""

    def __init__(self, settings: HttpHl7Settings, binding: Binding):
        require_secure_url(settings.url, f"{settings.source}: [destinations.{settings.name}] url",
                           allow_insecure_http=settings.allow_insecure_http)
        self.settings = settings
        self.binding = binding
        self.where = settings.url
        self.client = httpx.AsyncClient(timeout=settings.timeout, **httpx_options(settings.tls_settings))

    async def __call__(self, message: str, control_id: str) -> Outcome:
        try:
            body = self.binding.body(message, self.where)
        except Exception as exc:  # e.g. lxml refusing text XML 1.0 cannot carry: this reading's problem only
            return Rejected(f"cannot render the request for {control_id}: {exc.__class__.__name__}: {exc}")
        try:
            response = await exchange(self.client, "POST", self.where, content=body,
                                      headers={**self.binding.headers, **dict(self.settings.headers)})
        except httpx.HTTPError as exc:  # TLS handshake failures are ConnectError
            if isinstance(exc, NEVER_SENT):
                return Deferred(f"cannot connect to {self.where}: {exc.__class__.__name__}: {exc}", reached=False)
            return Deferred(f"{self.where}: {exc.__class__.__name__}: {exc} (no ACK for {control_id})")
        if response.status_code in (401, 403):
            raise AuthError(f"{self.where} answered HTTP {response.status_code} to {self.binding.what}")
        try:
            answer = self.binding.read(response.content, self.where, control_id)
        except NoAck as exc:
            wait = retry_after(response) if response.status_code in TRANSIENT_STATUSES else None
            return Deferred(f"{self.where} answered HTTP {response.status_code} {exc}", retry_after=wait)
        if isinstance(answer, Ack):
            return ack_outcome(answer, control_id, self.settings.ae_retries)
        return answer

    async def aclose(self) -> None:
        await self.client.aclose()
