"""HL7 v2 over MLLP (HL7 v2.x Transport Specification: MLLP Release 1): <VT> message <FS><CR>.

`MllpCodec` is the framing, sans I/O (like h11; https://sans-io.readthedocs.io/): bytes in (`receive_data`, b"" = the
peer closed), messages out (`next_message`), every malformed input an MllpError. `MllpExchange`
moves its bytes over asyncio streams, optionally TLS (phg.delivery.tls), one message at a time, for
phg.delivery.hl7.Hl7Destination:

- the connection is kept open while the peer keeps it; a peer that closes after each ACK is
  followed (reconnect per message; a stale connection found closed before any answer is retried once
  on a fresh one, which is safe because the receiver never saw the message);
- ACKs are classified by phg.delivery.hl7; no answer within `ack_timeout`, a garbled answer, a wrong
  MSA-2 or a close mid-frame = not delivered: the connection is dropped (its state is unknown);
- a connection that cannot be made at all (refused, DNS, connect timeout, TLS handshake) is
  Deferred(reached=False): an outage says nothing about the readings.
"""

from __future__ import annotations

import asyncio
import ssl

from phg.config import MllpSettings
from phg.delivery.hl7 import classify, unanswered
from phg.delivery.outcome import Deferred, Outcome
from phg.delivery.tls import client_context
from phg.errors import ConfigError
from phg.transport import is_loopback

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


class _Stale(Exception):
    """A reused connection turned out closed before the peer answered anything."""


class MllpExchange:
    """One MLLP connection (optionally TLS), kept while the peer keeps it. Plain MLLP is refused
    except to loopback unless the settings say allow_insecure: PID-3 and OBX-5 are patient data."""

    def __init__(self, settings: MllpSettings):
        self.settings = settings
        self.host, self.port = settings.host, settings.port
        self.ssl = client_context(settings.tls_settings) if settings.tls or settings.tls_settings.custom else None
        if self.ssl is None and not (settings.allow_insecure or is_loopback(settings.host)):
            raise ConfigError(f"{settings.source}: [destinations.{settings.name}] MLLP without TLS to {settings.host}, "
                              "which is not loopback; set tls = true (ca_file, client_cert, client_key as needed), "
                              "or allow_insecure = true on a network you trust")
        self.connect_timeout = settings.connect_timeout
        self.ack_timeout = settings.ack_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._codec = MllpCodec()
        self.connections = 0  # connections opened so far (observability, tests)

    @property
    def where(self) -> str:
        return f"mllp{'s' if self.ssl else ''}://{self.host}:{self.port}"

    async def __call__(self, message: str, control_id: str) -> Outcome:
        """Send one message and classify the answer; Deferred(reached=False) when no connection can be made."""
        data = message.encode("utf-8")
        for _ in range(2):
            try:
                reused = await self.connect()
            except (OSError, TimeoutError, ssl.SSLError) as exc:  # refused, DNS, timeout, TLS handshake
                return Deferred(f"cannot connect to {self.where}: {exc.__class__.__name__}: {exc}", reached=False)
            try:
                answer = await self._round_trip(data, reused)
            except _Stale:
                await self.aclose()
                continue
            except asyncio.CancelledError:  # the message may be on the wire: its ACK must not answer the next
                self._abandon()
                raise
            except TimeoutError:
                await self.aclose()
                return classify(None, control_id)
            except (MllpError, OSError, ssl.SSLError) as exc:
                await self.aclose()
                return Deferred(f"{self.where}: {exc.__class__.__name__}: {exc} (no ACK for {control_id})")
            result = classify(answer, control_id, self.settings.ae_retries)
            if unanswered(result):
                await self.aclose()  # out of step with the peer: start afresh
            elif self._reader is not None and self._reader.at_eof():
                await self.aclose()  # the peer closes after each ACK
            return result
        return Deferred(f"{self.where} closed the connection before answering {control_id}")

    async def connect(self) -> bool:
        """Open a connection unless one is open; True when an existing one is reused."""
        if self._writer is not None and self._reader is not None and not self._reader.at_eof() \
                and not self._writer.is_closing():
            return True
        await self.aclose()
        async with asyncio.timeout(self.connect_timeout):
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ssl,
                server_hostname=(self.settings.server_hostname or self.host) if self.ssl else None)
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

    def _abandon(self) -> asyncio.StreamWriter | None:
        """Drop the connection at once (closing, not waiting): the next message opens a new one."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
        return writer

    async def aclose(self) -> None:
        writer = self._abandon()
        if writer is not None:
            try:
                async with asyncio.timeout(2):
                    await writer.wait_closed()
            except (OSError, TimeoutError, ssl.SSLError):
                pass
