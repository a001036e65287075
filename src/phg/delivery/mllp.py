"""HL7 v2 over MLLP (HL7 v2.x Transport Specification: MLLP Release 1): <VT> message <FS><CR>.

`MllpCodec` is the framing, sans I/O (design: style.md, h11): bytes in (`receive_data`, b"" = the
peer closed), messages out (`next_message`), every malformed input an MllpError. `MllpDestination`
moves its bytes over asyncio streams, optionally TLS, one PCD-01 message per reading:

- the connection is kept open while the peer keeps it; a peer that closes after each ACK is
  followed (reconnect per message; a stale connection found closed before any answer is retried once
  on a fresh one, which is safe because the receiver never saw the message);
- ACKs are classified by phg.hl7v2.ack (AA/CA delivered only when MSA-2 == MSH-10; AR/CR dead;
  AE/CE retried `ae_retries` times); no answer within `ack_timeout`, a garbled answer, a wrong MSA-2
  or a close mid-frame = not delivered: the connection is dropped (its state is unknown) and the
  rest of the batch waits for the worker's backoff. Nothing is sent after such a failure in a batch;
- a connection that cannot be made at all (refused, DNS, connect timeout, TLS handshake) is a
  TransientDeliveryError with reached=False: an outage says nothing about the readings.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from phg.delivery.outcome import Outcome, Rejected, Retry
from phg.errors import ConfigError, MappingError, TransientDeliveryError
from phg.hl7v2.ack import UNBOUNDED, classify, is_transient
from phg.hl7v2.pcd01 import render_batch
from phg.model import Gateway, Reading
from phg.secretfile import require_private
from phg.transport import is_loopback

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\r"
MAX_MESSAGE = 1 << 20


class MllpError(Exception):
    """The byte stream breaks MLLP framing (garbage between frames, close mid-frame, oversize)."""


class MllpClosed(MllpError):
    """The peer closed the connection between frames (no partial message pending)."""


def frame(message: bytes | str) -> bytes:
    """One MLLP block."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    return START_BLOCK + data + END_BLOCK


class MllpCodec:
    """Incremental MLLP de-framer. Whitespace (CR/LF) between blocks is tolerated, as receivers do;
    any other byte outside a block is garbage and raises MllpError."""

    def __init__(self, max_message: int = MAX_MESSAGE):
        self.max_message = max_message
        self._buffer = bytearray()
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; b"" means the peer closed its side."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    @property
    def in_frame(self) -> bool:
        """A block has started and is not finished."""
        return bool(self._buffer.lstrip(b"\r\n"))

    def next_message(self) -> bytes | None:
        """The next complete message (without framing), or None when more bytes are needed.
        Raises MllpClosed after a clean close, MllpError on a framing error."""
        stripped = self._buffer.lstrip(b"\r\n")
        if stripped and stripped[:1] != START_BLOCK:
            raise MllpError(f"{len(stripped)} bytes outside an MLLP block (expected <VT>)")
        end = stripped.find(END_BLOCK)
        if end >= 0:
            message = bytes(stripped[1:end])
            self._buffer = bytearray(stripped[end + len(END_BLOCK):])
            if START_BLOCK in message:
                raise MllpError("<VT> inside an MLLP block")
            return message
        if len(stripped) > self.max_message:
            raise MllpError(f"MLLP block longer than {self.max_message} bytes")
        if self._eof:
            if stripped:
                raise MllpError("connection closed mid-frame")
            raise MllpClosed("connection closed")
        self._buffer = bytearray(stripped)
        return None


def tls_context(ca_file: str | Path | None = None, client_cert: str | Path | None = None,
                client_key: str | Path | None = None) -> ssl.SSLContext:
    """A verifying client context (system CAs, or the CA bundle given), with an optional client
    certificate for mutual TLS. The key file must not be group/other accessible (design.md)."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{ca_file}: cannot load CA bundle: {exc}") from exc
    if client_cert:
        require_private(client_key or client_cert, "client key")
        try:
            context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{client_cert}: cannot load client certificate/key: {exc}") from exc
    return context


async def send_each(name: str, where: str, rendered: Sequence[tuple[str, str] | MappingError],
                    exchange: Callable[[str, str], Awaitable[Outcome]]) -> list[Outcome]:
    """Send a batch's messages one at a time, in order, and collect one Outcome per reading
    (shared by the MLLP, HTTP and SOAP destinations). A reading that cannot be rendered is Rejected.
    `exchange` gives one message's Outcome, or raises TransientDeliveryError when the peer cannot be
    reached (reached=False) or asked us to wait (retry_after). After a message whose fate is unknown
    (no usable ACK, no connection, Retry-After) nothing more is sent in this batch: if no reading had an
    outcome yet, the whole batch is that TransientDeliveryError (the worker's backoff); otherwise the
    readings already answered keep their outcome and the rest are Retry (with the server's retry_after)."""
    outcomes: list[Outcome] = []
    for n, item in enumerate(rendered):
        if isinstance(item, MappingError):
            outcomes.append(Rejected(f"cannot map to HL7 v2 PCD-01: {item}"))
            continue
        control_id, message = item
        try:
            result = await exchange(message, control_id)
        except TransientDeliveryError as exc:
            if not outcomes:
                raise
            result = Retry(str(exc), UNBOUNDED, exc.retry_after)
        if not is_transient(result):
            outcomes.append(result)
            continue
        if not outcomes:
            raise TransientDeliveryError(f"{where}: message {control_id} not acknowledged",
                                         detail=result.reason)  # type: ignore[union-attr]
        outcomes.append(result)
        wait = result.retry_after  # type: ignore[union-attr]
        outcomes += [Retry("not sent: an earlier message of the batch was not acknowledged", UNBOUNDED, wait)
                     ] * (len(rendered) - n - 1)
        break
    accepted = sum(1 for o in outcomes if not isinstance(o, Retry | Rejected))
    log.info("%s: %d of %d messages acknowledged (AA/CA)", name, accepted, len(rendered))
    return outcomes


class _Stale(Exception):
    """A reused connection turned out closed before the peer answered anything."""


class MllpDestination:
    """PCD-01 over MLLP (optionally TLS). One message per reading; one connection, kept while the
    peer keeps it. `tls` may be True (system CAs), or an ssl.SSLContext; ca_file/client_cert/client_key
    build one (see tls_context)."""

    def __init__(self, *, host: str, port: int, gateway: Gateway, name: str = "mllp",
                 tls: bool | ssl.SSLContext = False, ca_file: str | Path | None = None,
                 client_cert: str | Path | None = None, client_key: str | Path | None = None,
                 server_hostname: str | None = None, connect_timeout: float = 10.0, ack_timeout: float = 30.0,
                 ae_retries: int = 3, receiving_application: str = "", receiving_facility: str = "",
                 allow_insecure: bool = False):
        self.name = name
        self.host = host
        self.port = port
        self.gateway = gateway
        if isinstance(tls, ssl.SSLContext):
            self.ssl: ssl.SSLContext | None = tls
        elif tls or ca_file or client_cert:
            self.ssl = tls_context(ca_file, client_cert, client_key)
        else:
            self.ssl = None
        if self.ssl is None and not (allow_insecure or is_loopback(host)):
            # PID-3 and OBX-5 are patient data: TLS, as for FHIR, unless the operator says otherwise.
            raise ConfigError(f"destination {name}: MLLP without TLS to {host}, which is not loopback; set tls = true "
                              "(ca_file, client_cert, client_key as needed), or allow_insecure = true on a network "
                              "you trust")
        self.server_hostname = server_hostname
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.ae_retries = ae_retries
        self.receiving_application = receiving_application
        self.receiving_facility = receiving_facility
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._codec = MllpCodec()
        self.connections = 0  # connections opened so far (observability, tests)

    @property
    def where(self) -> str:
        return f"mllp{'s' if self.ssl else ''}://{self.host}:{self.port}"

    async def send(self, readings: Sequence[Reading]) -> list[Outcome]:
        rendered = await asyncio.to_thread(render_batch, readings, self.gateway,
                                           receiving_application=self.receiving_application,
                                           receiving_facility=self.receiving_facility)
        return await send_each(self.name, self.where, rendered,
                               lambda message, control_id: self.exchange(message.encode("utf-8"), control_id))

    async def exchange(self, message: bytes, control_id: str) -> Outcome:
        """Send one message and classify the answer. Raises TransientDeliveryError(reached=False) when
        no connection can be made; any trouble after that is a Retry outcome."""
        for _ in range(2):
            try:
                reused = await self._connect()
            except (OSError, TimeoutError, ssl.SSLError) as exc:  # refused, DNS, timeout, TLS handshake
                raise TransientDeliveryError(f"cannot connect to {self.where}: {exc.__class__.__name__}: {exc}",
                                             reached=False) from exc
            try:
                answer = await self._round_trip(message, reused)
            except _Stale:
                await self.aclose()
                continue
            except TimeoutError:
                await self.aclose()
                return classify(None, control_id)
            except (MllpError, OSError, ssl.SSLError) as exc:
                await self.aclose()
                return Retry(f"{self.where}: {exc.__class__.__name__}: {exc} (no ACK for {control_id})", UNBOUNDED)
            result = classify(answer, control_id, self.ae_retries)
            if is_transient(result):
                await self.aclose()  # out of step with the peer: start afresh
            elif self._reader is not None and self._reader.at_eof():
                await self.aclose()  # the peer closes after each ACK
            return result
        return Retry(f"{self.where} closed the connection before answering {control_id}", UNBOUNDED)

    async def _connect(self) -> bool:
        """Open a connection unless one is open; True when an existing one is reused."""
        if self._writer is not None and self._reader is not None and not self._reader.at_eof() \
                and not self._writer.is_closing():
            return True
        await self.aclose()
        async with asyncio.timeout(self.connect_timeout):
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ssl,
                server_hostname=(self.server_hostname or self.host) if self.ssl else None)
        self._codec = MllpCodec()
        self.connections += 1
        return False

    async def _round_trip(self, message: bytes, reused: bool) -> bytes:
        assert self._reader is not None and self._writer is not None
        try:
            self._writer.write(frame(message))
            await self._writer.drain()
        except (ConnectionError, OSError):
            if reused:
                raise _Stale() from None
            raise
        async with asyncio.timeout(self.ack_timeout):
            received = False
            while True:
                try:
                    answer = self._codec.next_message()
                except MllpClosed:
                    if reused and not received:
                        raise _Stale() from None
                    raise
                if answer is not None:
                    return answer
                try:
                    data = await self._reader.read(65536)
                except ConnectionResetError:
                    if reused and not received:
                        raise _Stale() from None
                    raise
                received = received or bool(data)
                self._codec.receive_data(data)

    async def aclose(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                async with asyncio.timeout(2):
                    await writer.wait_closed()
            except (OSError, TimeoutError, ssl.SSLError):
                pass
