"""The hub acceptance tests' harness (issue 15): what the peers saw, and `phg run` processes to kill.

- :class:`CountingProxy`: tests/faultproxy.py's proxy in front of a FHIR server, which also counts, per
  Observation identifier (the PHD IG conditional-create identifier, ``phg.fhir.conditional_identifier``)
  and per conditional create (resource type + ``ifNoneExist``), the POSTs the server stored: those it
  answered 2xx. It counts when the server's answer arrives, before the client is sent it, so a client
  killed while the answer is on its way still counts as a delivery. ``hold`` keeps every POST's answer
  back that many seconds after the server has stored it (a slow EHR: longer than the queue's AckWait).
- :class:`MllpRecorder`: python-hl7's MLLP server in a thread of its own, recording each message's MSH-10
  and ACKing it (AA), optionally ``delay`` seconds late.
- :func:`write_config`: a phg TOML file, created 0600 (it may hold the queue's credentials).
- :class:`PhgProcess`: `phg run --role ROLE --config FILE` as a subprocess (log to a file), SIGKILLed,
  restarted, stopped; :class:`Chaos`: SIGKILLs of one of several processes at moments drawn from
  ``random.Random(seed)`` while a drain runs, each followed by a restart.
- :func:`stream_messages`: how many messages a JetStream stream holds (its leader's /jsz);
  :func:`stream_views`: what every node says.
- :func:`wait_until`: a bounded wait that fails with what it waited for and the last state seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp

from faultproxy import FaultProxy, Record
from phg.fhir import conditional_identifier
from phg.model import Reading

PHG = str(Path(sys.executable).parent / "phg")
Identifier = tuple[str, str]


def observation_ids(readings: Iterable[Reading]) -> set[Identifier]:
    """The Observation identifier (system, value) of every metric of the readings: what the server
    must hold once each."""
    return {conditional_identifier(r, m) for r in readings for m in r.metrics}


def _stored_by(body: bytes) -> tuple[list[Identifier], list[tuple[str, str]]]:
    """The Observation identifiers and the conditional creates a POST body asks the server to store:
    every entry of a transaction Bundle (FHIR R4 3.1.0.11.2: request.url, request.ifNoneExist), or the
    one resource of a single create (its If-None-Exist header is not seen here: its identifier stands in)."""
    try:
        document = json.loads(body)
    except ValueError:
        return [], []
    if not isinstance(document, dict):
        return [], []
    if document.get("resourceType") == "Bundle":
        pairs = [(e.get("resource") or {}, e.get("request") or {}) for e in document.get("entry", [])]
    else:
        first = (document.get("identifier") or [{}])[0]
        pairs = [(document, {"url": document.get("resourceType"),
                             "ifNoneExist": f"identifier={first.get('system')}|{first.get('value')}"})]
    observations = [(i.get("system"), i.get("value")) for resource, _ in pairs
                    if resource.get("resourceType") == "Observation" for i in resource.get("identifier", [])]
    creates = [(request.get("url"), request.get("ifNoneExist")) for _, request in pairs if request.get("ifNoneExist")]
    return observations, creates


class CountingProxy(FaultProxy):
    """A FaultProxy (schedule, refuse/allow as there) that counts what the server stored; see the module
    docstring. Counters are read from any thread under the proxy's lock (``delivered()``, ``creates()``)."""

    def __init__(self, upstream: str, *, hold: float = 0.0, **kwargs: Any):
        super().__init__(upstream, **kwargs)
        self.hold = hold
        self._bodies: dict[int, tuple[list[Identifier], list[tuple[str, str]]]] = {}
        self._observations: Counter[Identifier] = Counter()
        self._creates: Counter[tuple[str, str]] = Counter()
        self.stored_posts = 0

    def _next(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        n, fault = super()._next(method, path, body)
        if n >= 0:
            parsed = _stored_by(body)
            with self._lock:
                self._bodies[n] = parsed
        return n, fault

    async def _send(self, writer: asyncio.StreamWriter, record: Record, status: int,  # type: ignore[override]
                    headers: list[tuple[str, str]], content: bytes, reason: str = "") -> None:
        if record.n >= 0 and record.upstream_status is not None and 200 <= record.upstream_status < 300:
            with self._lock:
                observations, creates = self._bodies.pop(record.n, ([], []))
                self._observations.update(observations)
                self._creates.update(creates)
                self.stored_posts += 1
            if self.hold:
                await asyncio.sleep(self.hold)
        await FaultProxy._send(writer, record, status, headers, content, reason)

    def delivered(self) -> Counter[Identifier]:
        """Observation identifier -> how many POSTs the server answered 2xx carried it."""
        with self._lock:
            return Counter(self._observations)

    def creates(self) -> Counter[tuple[str, str]]:
        """(resource type, ifNoneExist) -> how many stored POSTs carried that conditional create."""
        with self._lock:
            return Counter(self._creates)

    def seen(self, wanted: set[Identifier]) -> int:
        """How many of the wanted identifiers the server has stored at least once."""
        with self._lock:
            return sum(1 for key in wanted if self._observations[key])


@dataclass
class MllpRecorder:
    """python-hl7's asyncio MLLP server on 127.0.0.1 (a free port) in its own thread; ``received``: the
    MSH-10 of every message, in order. Each message is ACKed AA (HL7 v2.6 2.9.2, original mode) after
    ``delay`` seconds."""

    delay: float = 0.0
    port: int = 0
    received: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    def controls(self) -> Counter[str]:
        with self._lock:
            return Counter(self.received)

    def start(self) -> MllpRecorder:
        ready = threading.Event()
        errors: list[BaseException] = []

        async def handle(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
            try:
                while True:
                    message = await reader.readmessage()
                    with self._lock:
                        self.received.append(str(message.segment("MSH")[10]))
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    writer.writemessage(message.create_ack("AA"))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, hl7.mllp.InvalidBlockError):
                pass
            finally:
                writer.close()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = await hl7.mllp.start_hl7_server(handle, "127.0.0.1", 0, encoding="utf-8")
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await self._stop.wait()
                server.close()

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # surfaced by start()
                errors.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="mllp-recorder", daemon=True)
        self._thread.start()
        if not ready.wait(10) or errors:
            raise RuntimeError(f"MLLP recorder did not start: {errors!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> MllpRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stream_messages(cluster: Any, stream: str) -> int | None:
    """How many messages `stream` holds as its leader reports it in /jsz (a tests/nats_cluster.NatsCluster;
    a follower's view can lag, and a restarted replica's can differ) or, for a stream without a cluster
    (R1 on one node), its one node; None while no running node leads it. On a work-queue stream: the
    readings not yet acknowledged."""
    return stream_views(cluster, stream).get("leader")


def stream_views(cluster: Any, stream: str) -> dict[str, int]:
    """Node name -> messages of `stream` in that node's /jsz, and "leader" -> the leader's figure."""
    views: dict[str, int] = {}
    for node in cluster.nodes:
        if not node.running:
            continue
        try:
            accounts = node.jsz("accounts=true&streams=true").get("account_details", [])
        except OSError:
            continue
        for account in accounts:
            for detail in account.get("stream_detail", []):
                if detail.get("name") == stream:
                    views[node.name] = detail["state"]["messages"]
                    if (detail.get("cluster") or {}).get("leader", node.name) == node.name:
                        views["leader"] = detail["state"]["messages"]
    return views


# ---------------------------------------------------------------------------------------------- config


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string with raw non-ASCII is a TOML basic string (TOML 1.0 "String": the same escapes),
        # once DEL, which TOML wants escaped and JSON does not, is escaped too.
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    raise TypeError(f"{where}: no TOML form for {type(value).__name__}")


def toml(document: Mapping[str, Any], prefix: str = "") -> str:
    """TOML text of a document of tables (nested dicts), scalars and arrays of scalars."""
    scalars = [f"{k} = {_toml_value(v, prefix + k)}" for k, v in document.items() if not isinstance(v, Mapping)]
    parts = [("\n".join(scalars) + "\n") if scalars else ""]
    for key, value in document.items():
        if isinstance(value, Mapping):
            name = f"{prefix}{json.dumps(key) if not key.replace('_', '').replace('-', '').isalnum() else key}"
            body = toml(value, name + ".")
            has_scalars = any(not isinstance(v, Mapping) for v in value.values())
            parts.append((f"[{name}]\n" if has_scalars or not value else "") + body)
    return "".join(parts)


def write_config(path: Path, document: Mapping[str, Any]) -> Path:
    """Write `document` as TOML to `path`, created with mode 0600 (phg refuses a config file holding a
    secret that others can read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(toml(document))
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------------------------------------- processes


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               state: Callable[[], object] = lambda: None, every: float = 0.1,
               alive: Callable[[], None] = lambda: None) -> None:
    """Poll `predicate` until true, at most `timeout` s; `alive()` may raise (a process died), and the
    failure names `what` and the last `state()`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s; last state: {state()}")
        time.sleep(every)


class PhgProcess:
    """`phg run --role ROLE` with its own config file and log; the same object is restarted."""

    def __init__(self, name: str, role: str | None, config: Path, log: Path, env: Mapping[str, str] | None = None,
                 args: Iterable[str] = ()):
        self.name, self.role, self.config, self.log = name, role, config, log
        self.env = {**os.environ, "PHG_CONFIG": str(config), **(env or {})}
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> PhgProcess:
        assert not self.running, f"{self.name} is already running"
        with self.log.open("ab") as log:
            log.write(f"\n===== {self.name}: start {self.starts + 1} =====\n".encode())
            log.flush()
            role = ["--role", self.role] if self.role else []  # None: phg run's default (every role)
            self.process = subprocess.Popen([PHG, "--config", str(self.config), "run", *role, *self.args],
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        self.starts += 1
        return self

    def check(self) -> None:
        """Raise when the process exited by itself (it should run until killed or stopped)."""
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"{self.name} ({self.role}) exited by itself with {self.process.returncode}: "
                                 f"{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed, nothing acknowledged."""
        self._end(signal.SIGKILL)
        self.kills += 1

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s; the exit code (None when it was not running)."""
        return self._end(signal.SIGTERM, timeout)

    def _end(self, sig: int, timeout: float = 20.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self.process = None
        return code


@dataclass
class Kill:
    at: float  # seconds since the chaos began
    process: str
    progress: int  # what `progress()` said just before


class Chaos:
    """SIGKILL one of `processes` (drawn from random.Random(seed)) each time progress() reaches the next of
    `kills` targets, spread at random over what is left to do when run() starts (from progress() then to
    `total * spread`), plus a random delay of up to `jitter` s; restart it at once. Progress is e.g. the
    readings the server has stored. Bounded by `timeout`."""

    def __init__(self, processes: list[PhgProcess], seed: int, kills: int, total: int, *,
                 jitter: float = 0.7, spread: float = 0.9):
        self.processes = processes
        self.rng = random.Random(seed)
        self.kills, self.total, self.spread = kills, total, spread
        self.jitter = jitter
        self.done: list[Kill] = []

    def run(self, progress: Callable[[], int], timeout: float, alive: Callable[[], None] = lambda: None) -> list[Kill]:
        began = time.monotonic()
        start, end = progress(), int(self.total * self.spread)
        assert end - start > self.kills, f"too little left to kill during: {start} of {self.total} done already"
        for target in sorted(self.rng.sample(range(start + 1, end), self.kills)):
            wait_until(lambda t=target: progress() >= t, timeout - (time.monotonic() - began),
                       f"progress to {target} before kill {len(self.done) + 1}", progress, every=0.05, alive=alive)
            time.sleep(self.rng.uniform(0.0, self.jitter))
            victim = self.rng.choice(self.processes)
            self.done.append(Kill(round(time.monotonic() - began, 2), victim.name, progress()))
            victim.kill()
            victim.start()
        return self.done
