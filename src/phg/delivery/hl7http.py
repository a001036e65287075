"""PCD-01 over HTTP(S): each ER7 message POSTed as text/plain, the ACK read from the response body
(the "HL7 over HTTP" style that HIEs and interface engines accept; ../shared/docs/pcd01-facts.md).

One request per reading, so that one ACK answers exactly one reading; the pooled httpx client keeps
the connection open between them. Answers:
- a body holding an ACK: classified like MLLP (phg.hl7v2.ack), whatever the status code;
- 401/403: AuthError (credentials are fixed by a person; the queue is untouched);
- a connection that cannot be made (refused, DNS, connect timeout, TLS handshake): TransientDeliveryError
  with reached=False, an outage that says nothing about the readings;
- 408, 429, 5xx or a connection error after the request went out, without an ACK: not delivered,
  retried. A Retry-After on any message of a batch ends the batch there: the messages before keep
  their ACK, the rest are Retry with that retry_after, for which the worker holds the whole
  destination (RFC 9110 section 10.2.3);
- any other answer without an ACK: not delivered, retried (the receiver's state is unknown).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from phg.delivery.mllp import send_each, tls_context
from phg.delivery.outcome import Outcome, Retry
from phg.errors import AuthError, TransientDeliveryError
from phg.hl7v2.ack import UNBOUNDED, AckError, outcome, parse_ack
from phg.hl7v2.pcd01 import render_batch
from phg.model import Gateway, Reading
from phg.transport import TRANSIENT_STATUSES, require_secure_url, retry_after

ER7_CONTENT_TYPE = "text/plain; charset=utf-8"


class HttpHl7Destination:
    """POSTs one PCD-01 message per reading to `url`. Pass an httpx.AsyncClient to share a pool (and
    its auth); else one is made from ca_file / client_cert / client_key / timeout."""

    def __init__(self, *, url: str, gateway: Gateway, name: str = "http", client: httpx.AsyncClient | None = None,
                 ca_file: str | Path | None = None, client_cert: str | Path | None = None,
                 client_key: str | Path | None = None, timeout: float = 30.0, ae_retries: int = 3,
                 headers: Mapping[str, str] | None = None, allow_insecure_http: bool = False,
                 receiving_application: str = "", receiving_facility: str = ""):
        require_secure_url(url, f"destination {name} url", allow_insecure_http=allow_insecure_http)
        self.name = name
        self.url = url
        self.gateway = gateway
        self.ae_retries = ae_retries
        self.headers = dict(headers or {})
        self.receiving_application = receiving_application
        self.receiving_facility = receiving_facility
        self._own_client = client is None
        if client is None:
            verify: ssl.SSLContext | bool = tls_context(ca_file, client_cert, client_key)
            client = httpx.AsyncClient(verify=verify, timeout=timeout)
        self.client = client

    async def send(self, readings: Sequence[Reading]) -> list[Outcome]:
        rendered = await asyncio.to_thread(render_batch, readings, self.gateway,
                                           receiving_application=self.receiving_application,
                                           receiving_facility=self.receiving_facility)
        return await send_each(self.name, self.url, rendered, self.exchange)

    async def post(self, content: bytes, headers: Mapping[str, str], what: str,
                   control_id: str) -> httpx.Response | Retry:
        """POST one message: the response, a Retry when no answer came, AuthError on 401/403,
        TransientDeliveryError(reached=False) when no connection could be made."""
        try:
            response = await self.client.post(self.url, content=content, headers={**headers, **self.headers})
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # TLS handshake failures are ConnectError
            raise TransientDeliveryError(f"cannot connect to {self.url}: {exc.__class__.__name__}: {exc}",
                                         reached=False) from exc
        except httpx.HTTPError as exc:
            return Retry(f"{self.url}: {exc.__class__.__name__}: {exc} (no ACK for {control_id})", UNBOUNDED)
        if response.status_code in (401, 403):
            raise AuthError(f"{self.url} answered HTTP {response.status_code} to {what}")
        return response

    async def exchange(self, message: str, control_id: str) -> Outcome:
        response = await self.post(message.encode("utf-8"), {"Content-Type": ER7_CONTENT_TYPE,
                                                              "Accept": "text/plain, */*"},
                                   "an HL7 v2 message", control_id)
        if isinstance(response, Retry):
            return response
        try:
            ack = parse_ack(response.content)
        except AckError as exc:
            return self.unanswered(response, f"without a usable ACK for {control_id}: {exc}")
        return outcome(ack, control_id, self.ae_retries)

    def unanswered(self, response: httpx.Response, why: str) -> Retry:
        """A response without an answer to the message: not delivered (Retry). When the status is
        transient and carries a Retry-After, TransientDeliveryError(retry_after) instead: send_each
        ends the batch there and carries the wait to the worker."""
        text = f"{self.url} answered HTTP {response.status_code} {why}"
        wait = retry_after(response) if response.status_code in TRANSIENT_STATUSES else None
        if wait is None:
            return Retry(text, UNBOUNDED)
        raise TransientDeliveryError(text, retry_after=wait)

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()
