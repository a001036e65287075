"""A fault-injecting HTTP/1.1 proxy for the reliability tests, in front of a real FHIR server.

It listens on 127.0.0.1 (a free port), runs its own event loop in a thread (so that what it measures
does not depend on the client's event loop), forwards each request to the upstream server with
httpx, and injects faults by a schedule fixed in advance from ``random.Random(seed)``:

==============  =========================  ==================================================
kind            did the server see it?     what the client gets
==============  =========================  ==================================================
pass            yes                        the server's answer
500             no                         500 with an OperationOutcome
502             yes (processed)            502 Bad Gateway instead of the server's answer
503             no                         503 with Retry-After: N (N from the schedule)
429             no                         429 with Retry-After: N
reset_before    no                         TCP RST after the request was read
reset_after     yes (processed)            TCP RST instead of the answer
stall           yes (processed)            nothing until the client gives up (or ``stall`` s)
truncated       yes (processed)            status and headers with the full Content-Length,
                                           half the body, then the connection closes
==============  =========================  ==================================================

Faulted requests are only those ``faulty(method, path)`` selects (default: POSTs, i.e. the FHIR
transactions); everything else passes and is not counted in the schedule. Every request is recorded
(``records``): its number, kind, Retry-After, when it started (request line read) and when the
proxy finished answering (time.monotonic of the proxy thread: the test measures gaps with it).

``refuse(marker)`` makes the proxy answer 422 with an OperationOutcome to any selected request whose
body contains ``marker`` (like an EHR refusing a device it does not know) until ``allow(marker)``:
the poison test's server-side repair.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import httpx

HOST = "127.0.0.1"
KINDS = ("500", "502", "503", "429", "reset_before", "reset_after", "stall", "truncated")
FORWARDED = {"pass", "502", "reset_after", "stall", "truncated"}  # the server processed these
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host",
              "proxy-connection", "te", "upgrade"}


@dataclass
class Fault:
    kind: str
    retry_after: int | None = None


@dataclass
class Record:
    n: int  # position among the selected (faultable) requests; -1 for requests passed unselected
    method: str
    path: str
    kind: str
    retry_after: int | None
    started: float  # monotonic: request line read
    answered: float | None = None  # monotonic: last byte written / connection cut
    upstream_status: int | None = None
    status: int | None = None  # what the client was sent (None: no answer)


def seeded_schedule(seed: int, counts: Mapping[str, int], passes: int,
                    retry_after: Iterable[int] = (1, 2)) -> list[Fault]:
    """``counts[kind]`` faults of each kind and ``passes`` clean answers, in an order (and with
    Retry-After values) drawn from random.Random(seed). Requests past the end of the list pass."""
    rng = random.Random(seed)
    choices = tuple(retry_after)
    faults = [Fault(kind, rng.choice(choices) if kind in ("503", "429") else None)
              for kind, n in counts.items() for _ in range(n)]
    faults += [Fault("pass") for _ in range(passes)]
    rng.shuffle(faults)
    return faults


def _outcome(text: str, code: str = "transient") -> bytes:
    return json.dumps({"resourceType": "OperationOutcome",
                       "issue": [{"severity": "error", "code": code, "diagnostics": text}]}).encode()


class FaultProxy:
    def __init__(self, upstream: str, schedule: Iterable[Fault] = (), *, stall: float = 5.0,
                 faulty: Callable[[str, str], bool] = lambda method, path: method == "POST", port: int = 0):
        url = httpx.URL(upstream)  # requests keep their own path: only scheme://host:port is used
        self.upstream = f"{url.scheme}://{url.netloc.decode()}"
        self.schedule = list(schedule)
        self.stall = stall
        self.faulty = faulty
        self.records: list[Record] = []
        self.refused: set[bytes] = set()
        self.port = port  # 0: a free one; a stopped proxy's port: the same server back after an outage
        self._selected = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ control (any thread)

    def url(self, path: str = "") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def refuse(self, marker: str) -> None:
        with self._lock:
            self.refused.add(marker.encode())

    def allow(self, marker: str) -> None:
        with self._lock:
            self.refused.discard(marker.encode())

    def injected(self) -> list[Record]:
        with self._lock:
            return [r for r in self.records if r.kind != "pass"]

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"fault proxy did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)
            assert not self._thread.is_alive(), "fault proxy thread did not stop"

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the proxy's own loop

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        connections: set[asyncio.Task] = set()

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await self._serve(reader, writer, client)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                connections.discard(task)
                writer.transport.abort()

        async with httpx.AsyncClient(base_url=self.upstream, timeout=30) as client:
            server = await asyncio.start_server(on_connection, HOST, self.port, limit=2**24)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            async with server:
                await self._stopping.wait()
                server.close()
                for task in list(connections):
                    task.cancel()
                await asyncio.gather(*connections, return_exceptions=True)

    def _next(self, method: str, path: str, body: bytes) -> tuple[int, Fault]:
        with self._lock:
            if not self.faulty(method, path):
                return -1, Fault("pass")
            n = self._selected
            self._selected += 1
            if any(marker in body for marker in self.refused):
                return n, Fault("refuse")
            return n, (self.schedule[n] if n < len(self.schedule) else Fault("pass"))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     client: httpx.AsyncClient) -> None:
        while True:  # one request after the other on a kept-alive connection
            line = await reader.readline()
            if not line:
                return
            started = time.monotonic()
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers: list[tuple[str, str]] = []
            while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = h.decode("latin-1").partition(":")
                headers.append((name.strip(), value.strip()))
            length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
            body = await reader.readexactly(length) if length else b""
            n, fault = self._next(method, target, body)
            record = Record(n, method, target, fault.kind, fault.retry_after, started)
            with self._lock:
                self.records.append(record)
            keep_open = await self._answer(fault, record, method, target, headers, body, reader, writer, client)
            record.answered = time.monotonic()
            if not keep_open:
                return

    async def _answer(self, fault: Fault, record: Record, method: str, target: str, headers: list[tuple[str, str]],
                      body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      client: httpx.AsyncClient) -> bool:
        """Answer one request as the fault says; False when the connection is gone."""
        kind = fault.kind
        if kind == "refuse":
            await self._send(writer, record, 422, [("Content-Type", "application/fhir+json")],
                             _outcome("device not registered with this EHR", "business-rule"))
            return True
        if kind == "500":
            await self._send(writer, record, 500, [("Content-Type", "application/fhir+json")], _outcome("injected 500"))
            return True
        if kind in ("503", "429"):
            await self._send(writer, record, int(kind), [("Content-Type", "application/fhir+json"),
                                                         ("Retry-After", str(fault.retry_after))],
                             _outcome(f"injected {kind}"))
            return True
        if kind == "reset_before":
            _reset(writer)
            return False
        forward = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        upstream = await client.request(method, target, headers=forward, content=body)
        record.upstream_status = upstream.status_code
        answer = [(k, v) for k, v in upstream.headers.multi_items() if k.lower() not in HOP_BY_HOP]
        if kind == "pass":
            await self._send(writer, record, upstream.status_code, answer, upstream.content, upstream.reason_phrase)
            return True
        if kind == "502":
            await self._send(writer, record, 502, [("Content-Type", "application/fhir+json")],
                             _outcome("injected 502: upstream answer lost"), "Bad Gateway")
            return True
        if kind == "reset_after":
            _reset(writer)
            return False
        if kind == "stall":
            with contextlib.suppress(TimeoutError):  # the client closing its end ends the stall early
                await asyncio.wait_for(reader.read(1), self.stall)
            return False
        if kind == "truncated":
            content = upstream.content
            head = _head(upstream.status_code, upstream.reason_phrase, answer, len(content))
            writer.write(head + content[: len(content) // 2])
            await writer.drain()
            record.status = upstream.status_code
            return False
        raise AssertionError(f"unknown fault {kind}")

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, record: Record, status: int, headers: list[tuple[str, str]],
                    content: bytes, reason: str = "") -> None:
        writer.write(_head(status, reason, headers, len(content)) + content)
        await writer.drain()
        record.status = status


def _head(status: int, reason: str, headers: list[tuple[str, str]], length: int) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason or 'Status'}", *(f"{k}: {v}" for k, v in headers),
             f"Content-Length: {length}", "Connection: keep-alive"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
