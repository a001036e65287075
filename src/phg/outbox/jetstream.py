"""The queue on NATS JetStream (`[queue] engine = "jetstream"`, hub mode): many intake and worker
processes on many machines share one queue, with the guarantees of the SQLite outbox (phg.outbox.queue.Queue).

Layout, named by `[queue] prefix` P (JetStream: https://docs.nats.io/nats-concepts/jetstream):
- `P_queue`, a work-queue stream (retention=workqueue: a message is removed once acknowledged) on the
  subjects `P.q.DESTINATION`, file storage, `stream_replicas` replicas, `max_age`, `max_bytes` (discard
  new: a full stream refuses intake, it never drops a waiting reading), `duplicate_window`. One durable
  pull consumer per destination, named after it: explicit acks, AckWait = the worker's lease_seconds,
  MaxAckPending = `max_in_flight` (readings of the destination leased at once by all workers).
- `P_dead`, the dead letters (limits retention, kept until purged): subject `P.dead.DESTINATION.SEQ`, the
  reading as body, the reason (JSON string), the original sequence, key, time and attempts in headers.
- Key-value buckets: `P_state` (source progress markers), `P_pause` (a Retry-After per destination, so
  every worker waits), and per destination `P_done_DESTINATION` (a delivered marker per reading key, kept
  `marker_age`, by default `max_age`) and `P_tries_DESTINATION` (attempts, refusals and the last error of a
  reading that was put back).

How the Queue maps onto it:
- enqueue publishes each reading with Nats-Msg-Id "DESTINATION:KEY" (deduplicated within
  duplicate_window: the same reading sent again is stored once), waits for every PubAck (at most
  PUBLISH_PENDING at once; publishing again, for up to LEADER_WAIT, what got none: the id makes that safe;
  one given up is cancelled, which frees its nats-py permit), and only then writes the
  progress markers: a marker is never ahead of the readings it covers.
- lease fetches up to `limit` messages with a short pull (PULL_TIMEOUT: a pull request lives on the
  consumer leader only and is silently lost when leadership changes, so phg pulls again rather than
  wait), checks each against the delivered markers BEFORE handing it out (a redelivered, long-acked message
  is acknowledged and skipped), and returns the rest under one token naming the messages this process
  holds. Item.id is the stream sequence; Item.attempts the deliveries, releases not counted. A message
  that reached this process after its pull had timed out waits in the subscription for the next pull;
  one not pulled within half an AckWait is dropped with the subscription (it may be another's by then).
  A consumer has one AckWait: every worker of a destination runs with the same lease_seconds (the last
  one to lease sets it).
- Claims: before handing a message out (after the delivered-marker check), lease claims its reading in the
  key-value bucket `P_claim_DESTINATION` (history 1, kept CLAIM_TTL): key = the reading key, value = the
  lease's token and the claim's end (wall clock: a third of a lease after the lease's own end, _claim_end). A consumer's new
  leader may not know the old one just delivered a message (its delivery state not yet replicated) and
  hand it to another worker at once, not after AckWait: without claims both send it (issue 15, seen in
  the hub leader test). Only key-value creates decide, as they are atomic on the bucket's leader: the
  first claim is a create; a claim that has run out (its holder died, or it was put back) at revision R
  is taken over by whoever creates the ticket "key.R" first, which then writes the claim (a ticket whose
  winner died before that is taken over the same way, CLAIM_DEPTH deep). Compare-and-set updates do not
  decide: nats-server 2.9.10 let both of two concurrent updates at the same revision succeed on an R3
  bucket (14 of 30 races; creates: 0 of 30). A claim that ran out by time keeps other leases away for a
  grace after its end (_claim_grace: as long as its holder's delivered markers may still be written, when
  the claim bucket had no leader to extend it while the marker bucket had none to take the markers):
  only its holder may claim it again meanwhile, so another lease takes it over once the marker is there
  or its holder gave up. A claim given up on purpose (_unclaim) has no grace. A message another lease's
  claim holds is put back (-NAK) with the claim's remaining time and grace (+CLAIM_NAK_MARGIN) as delay:
  by then its holder's delivered marker stops it, or the claim may be taken over. Hosts' clocks must agree
  within CLAIM_SKEW (NTP). A lease whose claims could not be extended ends when they would (less the
  third): renew then answers 0.
- renew sends an in-progress ack (+WPI) for each held message, which restarts its AckWait; 0 once this
  process's lease has run out unrenewed (the messages may be another worker's by now). It extends the
  lease's claims too (a compare-and-set each, only while they surely run: another cannot be taking them
  over then).
- delivered writes the markers (published at once, each PubAck awaited), keeping the lease's claims and
  AckWait meanwhile (a bucket without a leader can hold them for seconds), then acknowledges: +ACK published
  for each, the last as a request; without its answer each is sent as a request, retried while unanswered
  (acks sent while the consumer has no leader are lost; a message no longer stored counts as settled).
- retry_later records attempts/refusals/error, then naks with the delay (-NAK {"delay": ns}); release naks
  at once; dead publishes to the dead-letter stream, then terminates (+TERM, which removes it here). Each
  first gives up its readings' claims (due again, or retried, they must not wait for the claim or its
  grace). A delivered reading's claim is left to CLAIM_TTL: its marker already stops it.
- retry(id) publishes a dead reading to its work subject again (a new id) and deletes the dead letter.

Facts of nats-server this is built for (measured on Debian's 2.9.10 by issue 15):
- A message that reaches the consumer's MaxDeliver stays stored but is neither pending nor ack-pending:
  lost in limbo. So the consumer has no MaxDeliver; phg counts itself: a reading put back on its
  `max_deliver`-th delivery goes to the dead letters instead, and one handed out a time more (its worker
  died each time) is dead-lettered at lease.
- Deduplication is per replica and a restarted node rebuilds it only from what it still stores: a reading
  published again after a node restart can be stored (and delivered) again, long after it was delivered
  (fixed in 2.10.14). The delivered markers make that copy harmless; phg warns at connect below 2.10.14.
- A late ack from an earlier delivery still removes a message, and an answered ack does not say which
  delivery it settled: a report after the lease's local deadline (the lease not renewed in time) is
  stale, and only `delivered` still applies (the reading did reach the destination).

Durability: a PubAck means the message is stored on a quorum of replicas (R3: two nodes), not that it
is fsynced (nats-server syncs its files periodically: `sync_interval`, 2 min by default): the replicas
on separate machines are what survives a power cut of one, which is why production runs R3.

What it cannot answer (and answers instead):
- Delivered readings keep no payload, only a marker: items(state="delivered") is empty, purge_delivered
  erases nothing (returns 0), get(id) of a delivered reading is None, counts()["delivered"] counts markers.
- Per-reading state outside a lease: a stored message already handed out at least once is "inflight"
  (ack-pending, or waiting out a Nak delay), the others "queued"; states(keys) knows only "delivered".
- stored_keys: keys delivered at every destination (markers), or published by this process within the
  duplicate window; another intake's recent readings are not known (they are deduplicated all the same).
- latest_per_device, kept_payloads, activity: [] (the status page's queue charts stay empty). Its devices
  and per-patient charts and the API's GET /v1/devices and /v1/patients/{p}/readings read the view store
  instead when [view] is configured (phg.service.readings; `[view] url`: one PostgreSQL database that
  every intake of the hub shares).
- A progress marker written alone (heartbeat) is a key-value put; with readings, it follows their acks.

Threads: the methods are synchronous (as with SQLite, the delivery workers call them in a pool of their
own, phg.daemon.deliver, and the Intake through asyncio.to_thread). They run coroutines on this object's
own event loop in one background thread (asyncio.run_coroutine_threadsafe) and wait a bounded time.
Idempotent requests are made again while JetStream elects a leader (LEADER_WAIT); JetStream that still
cannot be reached raises StorageError, which pauses a worker (it retries) and tells a source to keep its
readings: some may be stored already, and storing them again within duplicate_window stores nothing twice.
Opening fails fast (CONNECT_TRIES) when no server answers, with ConfigError when the credentials are
refused; once connected, nats-py reconnects until closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api
from nats.js.kv import KeyValue

from phg.config import QueueSettings
from phg.errors import ConfigError, StorageError
from phg.outbox.sqlite import DEAD, DELIVERED, INFLIGHT, QUEUED, STATES, Item, delivery_results
from phg.secretfile import require_private

log = logging.getLogger(__name__)

MIN_SERVER = (2, 10, 14)  # deduplication kept across node restarts (issue 15; nats-server 2.10.14 release notes)
CONNECT_TRIES = 2  # each server is tried this often more before opening the queue fails
CONNECT_DEADLINE = 20.0  # seconds opening may take at most, whatever the servers do
PULL_TIMEOUT = 0.5  # seconds one pull waits for messages; short: a pull lost in a leader change is redone soon
REQUEST_TIMEOUT = 5.0  # one JetStream API request
CALL_TIMEOUT = 60.0  # the longest a method waits for its work on the loop (several requests, retried)
ACK_TRIES = 5  # an +ACK/+TERM without an answer is sent again this often (acks without a leader are lost)
ACK_TIMEOUT = 2.0
PUBLISH_PENDING = 4000  # PubAcks awaited at once (nats-py's publish_async_max_pending, its default)
CLAIM_TTL = 7200.0  # seconds a claim is kept: longer than any lease ([delivery] lease_seconds is at most 3600)
CLAIM_SKEW = 0.2  # seconds another host's claim is still honoured past its expiry (clocks kept by NTP)
CLAIM_DEPTH = 4  # tickets of tickets followed at most (a takeover's winner that died before writing the claim)
CLAIM_NAK_MARGIN = 1.0  # a reading claimed by another comes back this long after the claim and its grace end
LEADER_WAIT = 20.0  # seconds an idempotent request is tried again while JetStream elects a leader (4-9 s here)
ABANDONED = 3600.0  # seconds past its deadline after which an unreported lease is forgotten
POLL = 1.0  # next_due while messages are handed out but unsettled: look again this soon
SEEN_LIMIT = 100_000  # keys this process remembers publishing (stored_keys), oldest forgotten first
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")  # base64url header.claims.signature (RFC 7519)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a destination as a subject token, consumer and bucket name

H_KEY, H_CREATED, H_SEQ, H_ATTEMPTS, H_REASON = "Phg-Key", "Phg-Created", "Phg-Seq", "Phg-Attempts", "Phg-Reason"
ACK, TERM, PROGRESS = b"+ACK", b"+TERM", b"+WPI"

T = TypeVar("T")
K = TypeVar("K")
_FAILURES = (nats.errors.Error, TimeoutError, OSError)
# What a leader change, or a reconnection to another node, looks like to one request: no answer, no
# responder (no leader yet), 503, or a connection being re-established.
_TRANSIENT = (TimeoutError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError,
              nats.js.errors.ServiceUnavailableError, nats.errors.ConnectionReconnectingError,
              nats.errors.StaleConnectionError)


@dataclass
class _Lease:
    """Messages this process holds under one token, and until when (time.monotonic) they are surely ours;
    `claims`: stream seq -> the revision of its reading's claim, which runs until `until` (wall clock; module
    docstring, "Claims")."""

    destination: str
    messages: dict[int, Msg]
    deadline: float
    ack_wait: float
    claims: dict[int, int] = field(default_factory=dict)
    until: float = 0.0


class _Claimed(NamedTuple):
    """What claiming a reading gave: ours at `revision` (None: another lease's), running until `until` (wall
    clock); `taken_over`: ours through a ticket, over a claim that had run out."""

    revision: int | None
    until: float
    taken_over: bool = False


@dataclass(frozen=True)
class StreamReport:
    """One of phg's streams as JetStream reports it (for `phg doctor`)."""

    name: str
    replicas: int
    messages: int
    bytes: int
    leader: str | None  # the server name of its leader; None while there is none


@dataclass(frozen=True)
class ConsumerReport:
    """A destination's durable consumer: None fields when no worker has leased from it yet."""

    destination: str
    exists: bool
    pending: int | None = None  # never handed out
    ack_pending: int | None = None  # handed out, not settled
    ack_wait: float | None = None  # the lease, in seconds
    paused_until: float | None = None  # a shared Retry-After (wall clock), if one runs


@dataclass(frozen=True)
class Inspection:
    """What `JetStreamQueue.inspect` found: the server, phg's streams, and each destination's consumer."""

    server_version: str
    server_supported: bool  # at least MIN_SERVER (module docstring: deduplication across node restarts)
    connected_url: str
    streams: tuple[StreamReport, ...]
    consumers: tuple[ConsumerReport, ...]


@dataclass
class _Consumer:
    ack_wait: float
    subscription: Any = field(repr=False)  # nats.js.JetStreamContext.PullSubscription
    pulled: float = 0.0  # time.monotonic() when its last pull ended


def _headers(msg: Any) -> dict[str, str]:
    return dict(msg.headers or {})


def _epoch(value: Any) -> float:
    return value.timestamp() if value is not None else 0.0


class JetStreamQueue:
    """phg's queue (phg.outbox.queue.Queue) on NATS JetStream: module docstring."""

    def __init__(self, settings: QueueSettings):
        self.settings = settings
        p = settings.prefix
        self.stream, self.dead_stream = f"{p}_queue", f"{p}_dead"
        self._where = f"JetStream at {', '.join(settings.servers)}"
        self._leases: dict[str, _Lease] = {}
        self._consumers: dict[str, _Consumer] = {}
        self._buckets: dict[str, Any] = {}
        self._seen: OrderedDict[str, float] = OrderedDict()  # "destination:key" -> monotonic time published
        self._closing = False
        self._last_error: Exception | None = None  # the last error nats-py reported (why a connect failed)
        self._refused = False  # a server answered "Authorization Violation" (it may then reset the connection)
        self._untrusted = False  # a server's TLS certificate failed verification
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="phg-jetstream", daemon=True)
        self._thread.start()
        try:
            self._call(self._open(), "connect")
        except BaseException:
            self._stop_loop()
            raise

    # -------------------------------------------------------------------------------- the loop thread

    def _call(self, work: Awaitable[T], what: str) -> T:
        """Run `work` on the loop and wait (bounded); JetStream failures become StorageError."""
        try:
            future = asyncio.run_coroutine_threadsafe(work, self._loop)  # type: ignore[arg-type]
        except RuntimeError:  # the loop is closed: a call from a thread that outlived close()
            work.close()  # type: ignore[attr-defined]
            raise StorageError(f"{self._where}: {what}: the queue is closed") from None
        try:
            return future.result(CALL_TIMEOUT)
        except _FAILURES as exc:  # (concurrent.futures.TimeoutError is TimeoutError too: which one is it?)
            if not future.done():
                future.cancel()
                raise StorageError(f"{self._where}: {what}: no answer in {CALL_TIMEOUT:g} s") from None
            raise StorageError(f"{self._where}: {what} failed: {type(exc).__name__}: {exc}") from exc

    def _stop_loop(self) -> None:
        """End what still runs on the loop (nats-py's reader and pinger, a pull), then the loop and its thread."""
        async def cancel_the_rest() -> None:
            rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_the_rest(), self._loop).result(REQUEST_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    # -------------------------------------------------------------------------------- connection, layout

    def _connect_options(self) -> dict[str, Any]:
        """nats.connect's keyword arguments for the settings: servers, credentials, TLS (never logged)."""
        s = self.settings
        options: dict[str, Any] = {
            "servers": list(s.servers), "name": "phg", "allow_reconnect": True, "max_reconnect_attempts": CONNECT_TRIES,
            "reconnect_time_wait": 1, "connect_timeout": 5,
            "error_cb": self._on_error, "disconnected_cb": self._on_disconnected, "reconnected_cb": self._on_reconnected,
        }
        if s.creds_file is not None or s.nkey_seed_file is not None:
            try:
                import nkeys  # noqa: F401  (nats-py signs the server's nonce with it)
            except ImportError:
                raise ConfigError("[queue] creds_file / nkey_seed_file need the nkeys package: "
                                  "pip install 'nats-py[nkeys]'") from None
            if s.creds_file is not None:
                _check_creds_file(s.creds_file)
                options["user_credentials"] = str(s.creds_file)
            else:
                _check_seed(_read_secret(s.nkey_seed_file, "[queue] nkey_seed_file").strip(),
                            f"[queue] nkey_seed_file {s.nkey_seed_file}")
                options["nkeys_seed"] = str(s.nkey_seed_file)
        if s.user is not None:
            options["user"], options["password"] = s.user, s.password
        if s.ca_file is not None or s.cert_file is not None or any(u.startswith("tls://") for u in s.servers):
            context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if s.cert_file is not None and s.key_file is not None:
                context.load_cert_chain(str(s.cert_file), str(s.key_file))
            options["tls"] = context
        return options

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc
        self._refused |= isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower()
        if isinstance(exc, ssl.SSLCertVerificationError):
            self._untrusted = True
            self._hopeless.set()
        log.warning("%s: %s: %s", self._where, type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("%s: disconnected; reconnecting", self._where)

    async def _on_reconnected(self) -> None:
        log.info("%s: reconnected to %s", self._where, self._nc.connected_url.netloc if self._nc.connected_url else "?")

    async def _open(self) -> None:
        self._nc, self._hopeless = nats.NATS(), asyncio.Event()
        connecting = asyncio.ensure_future(self._nc.connect(**self._connect_options()))
        hopeless = asyncio.ensure_future(self._hopeless.wait())
        # Bounded, and ended by a certificate that failed verification (nats-py may then wait without end).
        await asyncio.wait({connecting, hopeless}, timeout=CONNECT_DEADLINE, return_when=asyncio.FIRST_COMPLETED)
        hopeless.cancel()
        try:
            if not connecting.done():
                raise TimeoutError
            connecting.result()
        except (nats.errors.NoServersError, TimeoutError):
            connecting.cancel()
            with contextlib.suppress(*_FAILURES, asyncio.CancelledError):
                await asyncio.wait_for(self._nc.close(), REQUEST_TIMEOUT)
            if self._refused:
                raise ConfigError(f"{self._where} refused phg's credentials ({_credentials_keys(self.settings)})"
                                  ) from None
            if self._untrusted:
                raise ConfigError(f"{self._where}: the server's certificate is not trusted ([queue] ca_file: the "
                                  f"CA that signed it; {self._last_error})") from None
            raise StorageError(f"{self._where}: cannot connect to any server: {self._last_error}") from None
        self._nc.options["max_reconnect_attempts"] = -1  # once connected, never give up: reconnect until closed
        version = self._nc.connected_server_version
        found = (version.major, version.minor, version.patch)
        if found < MIN_SERVER:
            log.warning("%s: nats-server %s is older than %s: it can store and deliver again a reading published "
                        "again after a node restart (issue 15, fixed in 2.10.14); phg's delivered markers keep it "
                        "from being sent twice, but use 2.10.14 or newer in production", self._where,
                        ".".join(map(str, found)), ".".join(map(str, MIN_SERVER)))
        self._js = self._nc.jetstream(timeout=REQUEST_TIMEOUT, publish_async_max_pending=PUBLISH_PENDING)
        s = self.settings
        common = {"storage": api.StorageType.FILE, "num_replicas": s.stream_replicas, "discard": api.DiscardPolicy.NEW,
                  "duplicate_window": s.duplicate_window, "max_bytes": s.max_bytes or -1}
        await self._stream(api.StreamConfig(name=self.stream, subjects=[self._subject("*")],
                                            retention=api.RetentionPolicy.WORK_QUEUE, max_age=s.max_age, **common))
        await self._stream(api.StreamConfig(name=self.dead_stream, subjects=[f"{s.prefix}.dead.>"],
                                            retention=api.RetentionPolicy.LIMITS, **common))
        if s.duplicate_window < 60:
            log.warning("%s: [queue] duplicate_window is %g s: a reading a source sends again later than that is "
                        "queued again (never delivered twice: the delivered markers stop it)", self._where,
                        s.duplicate_window)

    async def _stream(self, config: api.StreamConfig) -> None:
        """Create the stream, or bring an existing one to `config` (what JetStream lets change)."""
        try:
            await _again(lambda: self._js.add_stream(config))  # idempotent: processes start together
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # "stream name already in use with a different configuration"
                raise
            try:
                await _again(lambda: self._js.update_stream(config))
            except nats.js.errors.BadRequestError as update:
                raise ConfigError(f"{self._where}: stream {config.name} exists with settings phg cannot change "
                                  f"({update.description}); delete it or set another [queue] prefix") from None

    async def _bucket(self, name: str, ttl: float | None = None) -> Any:
        """The key-value bucket `P_name`, created on first use (history 1, the stream's replicas), read
        through its leader: nats-py creates buckets that allow direct gets, which any replica answers,
        and a replica not yet caught up answers "not found" for a delivered marker or a claim written a
        moment ago (a leader kill makes that likely)."""
        bucket = f"{self.settings.prefix}_{name}"
        if bucket not in self._buckets:
            try:
                await _again(lambda: self._js.key_value(bucket))
            except nats.js.errors.BucketNotFoundError:
                await _again(lambda: self._js.create_key_value(
                    bucket=bucket, history=1, ttl=ttl, replicas=self.settings.stream_replicas,
                    storage=api.StorageType.FILE))
            self._buckets[bucket] = KeyValue(name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=self._js,
                                             direct=False)
        return self._buckets[bucket]

    async def _done(self, destination: str) -> Any:
        """The destination's delivered markers, each kept [queue] marker_age (default max_age). The age is set
        when the bucket is created: changing it later applies to a new prefix or a recreated bucket."""
        settings = self.settings
        return await self._bucket(f"done_{destination}",
                                  settings.max_age if settings.marker_age is None else settings.marker_age)

    def _subject(self, destination: str) -> str:
        return f"{self.settings.prefix}.q.{destination}"

    def _dead_subject(self, destination: str, seq: int | str) -> str:
        return f"{self.settings.prefix}.dead.{destination}.{seq}"

    @staticmethod
    def _check(destination: str) -> str:
        if not _NAME.fullmatch(destination):
            raise ConfigError(f"destination {destination!r:.80}: on JetStream a destination's name is 1..64 "
                              "letters, digits, _ or - (it names a subject, a consumer and buckets); rename it")
        return destination

    async def _consumer(self, destination: str, ack_wait: float) -> Any:
        """The destination's durable pull consumer (created, or its AckWait set to `ack_wait`), bound."""
        found = self._consumers.get(destination)
        if found is not None and found.ack_wait == ack_wait:
            if not (found.subscription.pending_msgs and time.monotonic() - found.pulled > ack_wait / 2):
                return found.subscription
            # Messages that came after a pull had timed out wait in the subscription until the next pull; so
            # long after, their AckWait may have run out and another worker may hold them: drop them with
            # this subscription (they are redelivered), never hand them out.
            log.debug("%s: %d messages that came late to a pull dropped", destination, found.subscription.pending_msgs)
        config = api.ConsumerConfig(
            durable_name=destination, filter_subject=self._subject(destination), ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL, ack_wait=ack_wait, max_deliver=-1,
            max_ack_pending=self.settings.max_in_flight)
        await _again(lambda: self._js.add_consumer(self.stream, config))  # creates, or sets AckWait: idempotent
        if found is not None:
            with contextlib.suppress(*_FAILURES):
                await found.subscription.unsubscribe()
        subscription = await _again(lambda: self._js.pull_subscribe_bind(durable=destination, stream=self.stream))
        self._consumers[destination] = _Consumer(ack_wait, subscription)
        return subscription

    async def _consumer_info(self, destination: str) -> api.ConsumerInfo | None:
        try:
            return await _again(lambda: self._js.consumer_info(self.stream, destination))
        except nats.js.errors.NotFoundError:
            return None

    # -------------------------------------------------------------------------------- intake

    def enqueue(self, destination: str | Sequence[str], items: Sequence[tuple[str, str]],
                state: Mapping[str, str] | None = None) -> list[int]:
        """Publish `(key, payload)` pairs for one destination or several and return their stream sequences
        (input order, destination by destination; a reading already stored within the duplicate window
        gets its existing sequence); then commit `state` (source name -> value)."""
        destinations = [destination] if isinstance(destination, str) else list(destination)
        for name in destinations:
            self._check(name)
        return self._call(self._enqueue(destinations, items, state or {}), "storing readings")

    async def _enqueue(self, destinations: list[str], items: Sequence[tuple[str, str]],
                       state: Mapping[str, str]) -> list[int]:
        now = time.time()
        pending = {(d, key): (self._subject(d), payload.encode(),
                              {"Nats-Msg-Id": f"{d}:{key}", H_KEY: key, H_CREATED: f"{now:.6f}"})
                   for d in destinations for key, payload in items}
        acks = await self._publish_all(pending, "readings")
        seen = time.monotonic()
        for d, key in pending:
            self._seen[f"{d}:{key}"] = seen
            self._seen.move_to_end(f"{d}:{key}")
        while len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)
        if state:
            bucket = await self._bucket("state")
            for name, value in state.items():
                await _put(bucket, _state_key(name), value.encode())
        return [acks[(d, key)].seq for d in destinations for key, _ in items]

    async def _publish_all(self, messages: Mapping[K, tuple[str, bytes, dict[str, str]]], what: str) -> dict[K, api.PubAck]:
        """Publish every (subject, payload, headers) at once and wait for each PubAck, publishing again, for
        up to LEADER_WAIT, what got none: only for what is stored once however often it is published (a
        Nats-Msg-Id within the duplicate window, a key-value put). No round starts past LEADER_WAIT, and
        the last one's wait for a permit (_stall) and for its PubAcks ends REQUEST_TIMEOUT after it: the whole
        returns or raises within LEADER_WAIT + REQUEST_TIMEOUT of its start, which _claim_grace relies on."""
        acks: dict[K, api.PubAck] = {}
        end = time.monotonic() + LEADER_WAIT
        limit = end + REQUEST_TIMEOUT
        while len(acks) < len(messages):
            waiting: dict[K, asyncio.Future[api.PubAck]] = {}
            try:
                for name, (subject, payload, headers) in messages.items():
                    if name not in acks:
                        try:
                            waiting[name] = await self._js.publish_async(subject, payload, headers=headers,
                                                                         wait_stall=self._stall(limit))
                        except nats.js.errors.TooManyStalledMsgsError:
                            if asyncio.current_task().cancelling():  # (nats-py turns a cancellation into this)
                                raise asyncio.CancelledError from None
                            break  # every permit held (no PubAck for seconds): the rest in the next round
                if waiting:
                    await asyncio.wait(waiting.values(),
                                       timeout=min(REQUEST_TIMEOUT, max(limit - time.monotonic(), 0.0)))
                for name, future in waiting.items():
                    if future.done() and future.exception() is None:
                        acks[name] = future.result()
                    elif future.done() and not isinstance(future.exception(), _TRANSIENT):
                        raise future.exception()  # a refusal (stream full, ...): publishing again will not help
            finally:
                for future in waiting.values():  # an unanswered one would hold one of nats-py's permits for good
                    future.cancel()
            if len(acks) < len(messages):
                if time.monotonic() + 0.25 > end:  # (the next round would start past LEADER_WAIT)
                    raise nats.errors.TimeoutError
                log.debug("%s: %d of %d %s without a PubAck; publishing them again", self._where,
                          len(messages) - len(acks), len(messages), what)
                await asyncio.sleep(0.25)
        return acks

    def _stall(self, limit: float) -> float | None:
        """publish_async's wait_stall: none while one of its PUBLISH_PENDING permits is free. With one,
        nats-py takes its semaphore through asyncio.wait_for, a task that yields to the loop after each
        message, which then leaves in a socket write of its own (measured: one send(2) per reading).
        Else REQUEST_TIMEOUT, but never past `limit` (time.monotonic; 0 past it: a permit now, or none)."""
        if self._js.publish_async_pending() < PUBLISH_PENDING:
            return None
        return min(REQUEST_TIMEOUT, max(limit - time.monotonic(), 0.0))

    def source_state(self, name: str) -> str | None:
        """The progress marker last committed under `name`, or None."""
        return self._call(self._source_state(name), "reading a progress marker")

    async def _source_state(self, name: str) -> str | None:
        bucket = await self._bucket("state")
        try:
            entry = await bucket.get(_state_key(name))
        except nats.js.errors.KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value is not None else None

    def stored_keys(self, destinations: Sequence[str], keys: Sequence[str]) -> set[str]:
        """The keys among `keys` known at every one of `destinations`: delivered (markers), or published by
        this process within the duplicate window (module docstring, "What it cannot answer")."""
        return self._call(self._stored_keys(list(destinations), list(keys)), "looking up readings")

    async def _stored_keys(self, destinations: list[str], keys: list[str]) -> set[str]:
        recent = time.monotonic() - self.settings.duplicate_window
        known = set(keys)
        for destination in destinations:
            self._check(destination)
            fresh = {k for k in known if self._seen.get(f"{destination}:{k}", -1.0) > recent}
            known = fresh | await self._delivered_keys(destination, sorted(known - fresh))
        return known

    async def _delivered_keys(self, destination: str, keys: Sequence[str]) -> set[str]:
        """The keys among `keys` with a delivered marker at `destination`."""
        if not keys:
            return set()
        bucket = await self._done(destination)
        found = await asyncio.gather(*(_get(bucket, key) for key in keys))
        return {key for key, entry in zip(keys, found, strict=True) if entry is not None}

    # -------------------------------------------------------------------------------- delivery

    def lease(self, destination: str, limit: int, lease_seconds: float, now: float | None = None,
              horizon: float | None = None) -> list[Item]:
        """Up to `limit` readings of `destination` under one new token (none while it is paused). `now` is
        not used (JetStream keeps the times); `horizon` bounds a stored pause as in SQLite's next_due."""
        self._check(destination)
        return self._call(self._lease(destination, limit, lease_seconds, horizon), "leasing readings")

    async def _lease(self, destination: str, limit: int, lease_seconds: float, horizon: float | None) -> list[Item]:
        if await self._paused_until(destination, horizon) is not None:
            return []
        subscription = await self._consumer(destination, lease_seconds)
        await self._claims(destination)  # (created on first use: before the lease's time starts)
        # Before the pull: the AckWait of what comes runs from its delivery. The claims run a third of a
        # lease longer than this process holds the messages (_claim_end).
        started, until = time.monotonic(), _claim_end(time.time(), lease_seconds)
        try:
            messages = await subscription.fetch(limit, timeout=PULL_TIMEOUT)
        except TimeoutError:  # nothing came (nats-py raises its own subclass or asyncio's)
            return []
        finally:
            self._consumers[destination].pulled = time.monotonic()
        keys = [_headers(m).get(H_KEY, "") for m in messages]
        delivered = await self._delivered_keys(destination, [k for k in keys if k])
        settled = [m for m, k in zip(messages, keys, strict=True) if k in delivered or not k]
        if settled:
            log.debug("%s: %d already delivered (or without key): acknowledged, not sent again", destination,
                      len(settled))
        await self._settle_all(settled, ACK)
        fresh = [(m, k) for m, k in zip(messages, keys, strict=True) if k and k not in delivered]
        token = secrets.token_hex(8)
        claims = await asyncio.gather(*(self._claim(destination, k, token, until) for _, k in fresh))
        now, grace = time.time(), _claim_grace()  # put back until the claim may be taken over
        others = [(m, k, c.until + CLAIM_SKEW + grace - now) for (m, k), c in zip(fresh, claims, strict=True)
                  if c.revision is None]
        ours = [(m, k, c.revision) for (m, k), c in zip(fresh, claims, strict=True) if c.revision is not None]
        # A claim taken over had run out: its holder may have written its marker since the look above (it
        # was waiting for a bucket's leader). Looked for again: such a reading is settled, not sent.
        late = await self._delivered_keys(destination, [k for (_, k), c in zip(fresh, claims, strict=True)
                                                        if c.taken_over])
        if late:
            log.info("%s: %d readings whose claims had run out were delivered meanwhile: acknowledged, not sent "
                     "again", destination, len(late))
            await self._settle_all([m for m, k, _ in ours if k in late], ACK)
            ours = [(m, k, revision) for m, k, revision in ours if k not in late]
        # Only a reading handed out before can have a record of its tries (a first delivery has none).
        tried = (await asyncio.gather(
            *(self._tried(destination, k) if m.metadata.num_delivered > 1 else _no_record() for m, k, _ in ours),
            *(self._leave(destination, m, k, left) for m, k, left in others)))[:len(ours)]
        held, claimed, items = {}, {}, []
        for (msg, _, revision), record in zip(ours, tried, strict=True):
            meta = msg.metadata
            attempts = meta.num_delivered - record.get("released", 0)
            if self.settings.max_deliver and attempts > self.settings.max_deliver:
                await self._dead_letter(destination, msg, f"handed out {attempts - 1} times without an outcome (a "
                                        f"worker stopped or died each time); last error: {record.get('error')}")
                await self._unclaim([(destination, msg, (token, revision))])
                continue
            held[meta.sequence.stream], claimed[meta.sequence.stream] = msg, revision
            items.append(_item(destination, msg, INFLIGHT, attempts=attempts, deadline=time.time() + lease_seconds,
                               lease=token, tried=record))
        self._forget_abandoned()
        if held:
            self._leases[token] = _Lease(destination, held, started + lease_seconds, lease_seconds, claimed, until)
        return items

    async def _claims(self, destination: str) -> Any:
        """The destination's claims: reading key -> the lease holding it (module docstring, "Claims")."""
        return await self._bucket(f"claim_{destination}", CLAIM_TTL)

    async def _claim(self, destination: str, key: str, token: str, until: float) -> _Claimed:
        """Claim the reading `key` for the lease `token` until `until` (wall clock). Only key-value creates
        decide (module docstring, "Claims"): a claim run out at revision R (another lease's past its grace,
        or this one's, which could not be extended in time) is taken over by whoever creates the ticket
        "key.R" first, and the winner then writes the claim."""
        bucket = await self._claims(destination)
        value = json.dumps({"token": token, "until": round(until, 3)}).encode()
        name = key  # the claim, then the ticket of its takeover, the ticket's ticket (its winner died)...
        for _ in range(CLAIM_DEPTH):
            try:
                revision, expiry = await _again(lambda name=name: bucket.create(name, value)), until
            except nats.js.errors.KeyWrongLastSequenceError:
                entry = await _get(bucket, name)
                if entry is None:  # run out of the bucket (CLAIM_TTL) meanwhile
                    continue
                holder, expiry = _claim_value(entry)
                if holder != token and expiry + CLAIM_SKEW + _claim_grace() > time.time():  # (given up: 0, past)
                    return _Claimed(None, expiry)
                if holder != token or expiry <= time.time() + CLAIM_SKEW:  # run out: its ticket decides
                    name = f"{name}.{entry.revision}"
                    continue
                revision = entry.revision  # ours and running: our own create, whose answer was lost
            if name == key:
                return _Claimed(revision, expiry)
            return _Claimed(await _again(lambda: bucket.put(key, value)), until, taken_over=True)  # the ticket's ours
        return _Claimed(None, until)  # contested all the way: another lease won; it runs about as long

    async def _leave(self, destination: str, msg: Msg, key: str, left: float) -> dict[str, Any]:
        """A reading another lease has claimed (JetStream handed it out again at once after a leader change,
        or after AckWait while its holder still writes the delivered markers): put back, due once that claim
        and its grace have run out (by then delivered, or its holder gone). Recorded as a release: no attempt
        of its own (max_deliver)."""
        log.info("%s: stream seq %d is claimed by another worker's lease for %.1f s more (its end and grace; handed "
                 "out again after a consumer leader change or AckWait): put back", destination,
                 msg.metadata.sequence.stream, left)
        record = await self._tried(destination, key)
        record["released"] = record.get("released", 0) + 1
        await _put(await self._bucket(f"tries_{destination}", self.settings.max_age), key, json.dumps(record).encode())
        await self._nc.publish(msg.reply, b"-NAK " + json.dumps({"delay": int((left + CLAIM_NAK_MARGIN) * 1e9)}).encode())
        return record

    async def _unclaim(self, taken: Sequence[tuple[str, Msg, tuple[str, int] | None]]) -> None:
        """Give up the claims (token, revision) of readings put back (due again before the claim would run
        out): marked run out on purpose (until 0: no grace, _claim_grace), at the claim's revision while it
        is still ours (a claim another lease took since is left alone); the next lease takes it over at
        once. (Not deleted: creating a deleted key again is a compare-and-set, which nats-server 2.9 does not
        decide atomically in a cluster.)"""
        async def one(destination: str, msg: Msg, token: str, revision: int) -> None:
            bucket, key = await self._claims(destination), _headers(msg)[H_KEY]
            with contextlib.suppress(*_FAILURES):  # not marked: it runs its course
                for _ in range(2):
                    try:
                        await _again(lambda last=revision: bucket.update(key, b'{"token": "", "until": 0}', last=last))
                        return
                    except nats.js.errors.KeyWrongLastSequenceError:  # an extension whose answer came too late?
                        entry = await _get(bucket, key)
                        if entry is None or _claim_value(entry)[0] != token:
                            return
                        revision = entry.revision

        await asyncio.gather(*(one(d, m, *claim) for d, m, claim in taken if claim is not None))

    def _forget_abandoned(self) -> None:
        """Drop leases whose deadline passed long ago (never reported: their worker failed in this process);
        their messages went back to the stream after AckWait."""
        long_ago = time.monotonic() - ABANDONED
        for token in [t for t, held in self._leases.items() if held.deadline < long_ago]:
            del self._leases[token]

    async def _tried(self, destination: str, key: str) -> dict[str, Any]:
        """The record of a reading's earlier tries at `destination` (attempts, error, refusals, released)."""
        record = await _get(await self._bucket(f"tries_{destination}", self.settings.max_age), key)
        return json.loads(record.value) if record is not None and record.value else {}

    async def _record_try(self, destination: str, key: str, **changes: Any) -> None:
        record = await self._tried(destination, key)
        record.update(changes)
        await _put(await self._bucket(f"tries_{destination}", self.settings.max_age), key, json.dumps(record).encode())

    def renew(self, token: str, lease_seconds: float) -> int:
        """Restart the AckWait of every message held under `token` (+WPI); how many are still held (0: all
        reported, or the lease ran out before it was renewed and another worker may have them)."""
        return self._call(self._renew(token), "renewing a lease")

    async def _renew(self, token: str) -> int:
        held = self._leases.get(token)
        if held is None:
            return 0
        asked, wall = time.monotonic(), time.time()  # AckWait restarts when +WPI arrives: after this, never before
        if asked > held.deadline:
            # Redelivered by now, perhaps to another worker: no longer ours. Kept for a delivered report all the
            # same (a send may have ended just now): its markers must be written (_take_leases, stale_too).
            return 0
        for msg in held.messages.values():
            await self._nc.publish(msg.reply, PROGRESS)
        await self._nc.flush(timeout=REQUEST_TIMEOUT)
        await self._extend_claims(token, held, _claim_end(wall, held.ack_wait))
        # Ours while both hold: the AckWait, and the claims less their margin (a claim not extended runs out:
        # then this process lets the messages go a third of a lease before another may take them over).
        held.deadline = min(asked + held.ack_wait, asked + held.until - wall - held.ack_wait / 3)
        return len(held.messages)

    async def _extend_claims(self, token: str, held: _Lease, until: float) -> None:
        """The claims of a renewed lease run until `until` too (one compare-and-set each, all at once, one try
        within a third of the lease: a claim not extended still runs its course). A claim another lease took
        meanwhile (ours had run out) makes that reading no longer ours: dropped from the lease. Claims that
        have run out, or nearly (CLAIM_SKEW), are left so: another lease may be taking them over right now."""
        if time.time() + CLAIM_SKEW >= held.until:
            return
        bucket = await self._claims(held.destination)
        value = json.dumps({"token": token, "until": round(until, 3)}).encode()
        seqs = [seq for seq in held.messages if seq in held.claims]
        updates = [asyncio.ensure_future(bucket.update(_headers(held.messages[seq])[H_KEY], value,
                                                       last=held.claims[seq])) for seq in seqs]
        if not updates:
            return
        await asyncio.wait(updates, timeout=min(REQUEST_TIMEOUT, held.ack_wait / 3))
        extended = True
        for seq, update in zip(seqs, updates, strict=True):
            if not update.done():
                update.cancel()
                extended = False
            elif update.exception() is None:
                held.claims[seq] = update.result()
            elif isinstance(update.exception(), nats.js.errors.KeyWrongLastSequenceError):
                entry = await _get(bucket, _headers(held.messages[seq])[H_KEY])
                if entry is not None and _claim_value(entry)[0] == token:  # an extension whose answer came late
                    held.claims[seq] = entry.revision
                    extended = False  # (until when, of our extensions, is not known)
                    continue
                log.warning("%s: stream seq %d was claimed by another worker once this lease's claim had run out",
                            held.destination, seq)
                held.messages.pop(seq, None)
                held.claims.pop(seq, None)
            else:
                extended = False
        if extended:
            held.until = until

    def _take_leases(self, ids: Sequence[int], token: str | None, *, stale_too: bool = False) -> list[tuple[str, _Lease]]:
        """The held messages among `ids` (under `token`, or any token when None), no longer held: per token, a
        lease of its own with their claims; a lease past its deadline is stale and yields nothing unless
        `stale_too`."""
        wanted, taken = set(ids), []
        for name, held in list(self._leases.items()):
            if token is not None and name != token:
                continue
            if time.monotonic() > held.deadline and not stale_too:
                continue
            seqs = wanted & held.messages.keys()
            if seqs:
                taken.append((name, _Lease(held.destination, {seq: held.messages.pop(seq) for seq in seqs},
                                           held.deadline, held.ack_wait,
                                           {seq: held.claims.pop(seq) for seq in seqs if seq in held.claims},
                                           held.until)))
            if not held.messages:
                del self._leases[name]
        return taken

    def _take(self, ids: Sequence[int], token: str | None) -> list[tuple[str, Msg, tuple[str, int] | None]]:
        """_take_leases, message by message: (destination, message, its claim (token, revision) or None)."""
        return [(part.destination, msg, (name, part.claims[seq]) if seq in part.claims else None)
                for name, part in self._take_leases(ids, token) for seq, msg in part.messages.items()]

    def delivered(self, ids: Sequence[int], results: Sequence[str | None] | None = None, *,
                  token: str | None = None) -> None:
        """The destination accepted them: write each delivered marker, then acknowledge."""
        self._call(self._delivered(list(ids), delivery_results(ids, results), token), "recording deliveries")

    async def _delivered(self, ids: list[int], results: list[str | None], token: str | None) -> None:
        result_of = dict(zip(ids, results, strict=True))
        parts = self._take_leases(ids, token, stale_too=True)
        now = time.time()
        markers: dict[str, str] = {}  # destination -> where its markers go: a key-value put is "$KV.<bucket>." + key
        for destination in {part.destination for _, part in parts}:
            markers[destination] = (await self._done(destination))._pre  # (the bucket created on first use)
        # Every marker stored before any ack (never an ack without its marker), and the claims kept meanwhile.
        keepers = [asyncio.ensure_future(self._keep_claims(name, replace(part, messages=dict(part.messages),
                                                                         claims=dict(part.claims))))
                   for name, part in parts]
        try:
            await self._publish_all({seq: (markers[part.destination] + _headers(msg)[H_KEY],
                                           json.dumps({"seq": seq, "at": now, "result": result_of[seq]}).encode(), {})
                                     for _, part in parts for seq, msg in part.messages.items()}, "delivered markers")
        finally:
            for keeper in keepers:
                keeper.cancel()
            for outcome in await asyncio.gather(*keepers, return_exceptions=True):
                if isinstance(outcome, Exception):  # not JetStream failing (a keeper outlives those): a bug
                    log.error("%s: keeping the claims of delivered readings failed", self._where, exc_info=outcome)
        await self._settle_all([msg for _, part in parts for msg in part.messages.values()], ACK)

    async def _keep_claims(self, token: str, held: _Lease) -> None:
        """While the delivered markers of `held` are being written (a bucket without a leader can hold them
        for seconds), keep its claims and restart its AckWait (+WPI), six times a lease: no other worker is
        handed these readings to find neither a marker nor a live claim (issue 15, the leader test). A claim
        that ran out meanwhile (its bucket had no leader either) is claimed again as any claim that ran out
        is, through its ticket: only one lease can win it, and during the claim's grace (_claim_grace) no
        other lease tries."""
        while held.messages:
            await asyncio.sleep(held.ack_wait / 6)
            try:
                await self._keep_round(token, held)
            except _FAILURES as exc:  # (a key-value request still unanswered after LEADER_WAIT): next round
                log.warning("%s: keeping the claims of %d delivered readings while their markers are written "
                            "failed this time (%s: %s); trying again", held.destination, len(held.messages),
                            type(exc).__name__, exc)

    async def _keep_round(self, token: str, held: _Lease) -> None:
        """One round of _keep_claims: +WPI for each message, then its claims extended or claimed again."""
        with contextlib.suppress(*_FAILURES):
            for msg in held.messages.values():
                await self._nc.publish(msg.reply, PROGRESS)
        until = _claim_end(time.time(), held.ack_wait)
        if time.time() + CLAIM_SKEW < held.until:
            await self._extend_claims(token, held, until)
            return
        seqs = list(held.messages)
        claims = await asyncio.gather(*(self._claim(held.destination, _headers(held.messages[seq])[H_KEY],
                                                    token, until) for seq in seqs), return_exceptions=True)
        for seq, claim in zip(seqs, claims, strict=True):
            if isinstance(claim, _Claimed) and claim.revision is None:
                log.warning("%s: stream seq %d was delivered, but its claim ran out before its delivered "
                            "marker could be written and another worker took it over: it may be sent twice",
                            held.destination, seq)
                held.messages.pop(seq)
            elif isinstance(claim, _Claimed):
                held.claims[seq] = claim.revision
        if all(isinstance(claim, _Claimed) for claim in claims):  # else: claimed again next time
            held.until = min((claim.until for claim in claims if claim.revision is not None), default=held.until)

    def retry_later(self, ids: Sequence[int], delay: float, error: str, refused: bool = False, *,
                    token: str | None = None) -> None:
        """Put them back, due in `delay` seconds (-NAK with delay); on their max_deliver-th delivery they go
        to the dead letters instead. `refused`: the destination refused them for now (counted)."""
        self._call(self._retry_later(list(ids), delay, error, refused, token), "putting readings back")

    async def _retry_later(self, ids: list[int], delay: float, error: str, refused: bool, token: str | None) -> None:
        taken = self._take(ids, token)
        await self._unclaim(taken)  # before the Nak: due again, it must find no claim of ours in its way
        for destination, msg, _ in taken:
            key = _headers(msg)[H_KEY]
            before = await self._tried(destination, key)
            attempts = msg.metadata.num_delivered - before.get("released", 0)
            if self.settings.max_deliver and attempts >= self.settings.max_deliver:
                await self._dead_letter(destination, msg, f"{error} (after {attempts} deliveries)")
                continue
            await self._record_try(destination, key, attempts=attempts, error=error,
                                   refusals=before.get("refusals", 0) + int(refused))
            await self._nc.publish(msg.reply, b"-NAK " + json.dumps({"delay": int(max(0.0, delay) * 1e9)}).encode())
        await self._nc.flush(timeout=REQUEST_TIMEOUT)

    def release(self, ids: Sequence[int], *, token: str | None = None) -> None:
        """Give them back at once (-NAK): delivery stopped for a reason not theirs. JetStream counts the
        delivery all the same; phg records the release, so that it counts as no attempt (max_deliver)."""
        self._call(self._release(list(ids), token), "giving readings back")

    async def _release(self, ids: list[int], token: str | None) -> None:
        taken = self._take(ids, token)
        await self._unclaim(taken)
        for destination, msg, _ in taken:
            before = await self._tried(destination, _headers(msg)[H_KEY])
            await self._record_try(destination, _headers(msg)[H_KEY], released=before.get("released", 0) + 1)
            await self._nc.publish(msg.reply, b"-NAK")
        await self._nc.flush(timeout=REQUEST_TIMEOUT)

    def dead(self, ids: Sequence[int], reason: str, *, token: str | None = None) -> None:
        """A permanent failure: to the dead-letter stream with `reason`, then terminated here (+TERM)."""
        self._call(self._dead(list(ids), reason, token), "dead-lettering readings")

    async def _dead(self, ids: list[int], reason: str, token: str | None) -> None:
        taken = self._take(ids, token)
        await self._unclaim(taken)  # `phg queue retry` may bring it back long before the claim runs out
        for destination, msg, _ in taken:
            await self._dead_letter(destination, msg, reason)

    async def _dead_letter(self, destination: str, msg: Msg, reason: str) -> None:
        """Publish `msg` with `reason` to the dead letters (idempotent: Nats-Msg-Id), then +TERM it."""
        meta, headers = msg.metadata, _headers(msg)
        seq = meta.sequence.stream
        letter = {"Nats-Msg-Id": f"dead:{destination}:{seq}", H_KEY: headers.get(H_KEY, ""),
                  H_CREATED: headers.get(H_CREATED, f"{_epoch(meta.timestamp):.6f}"), H_SEQ: str(seq),
                  H_ATTEMPTS: str(meta.num_delivered), H_REASON: json.dumps(reason)}
        await _again(lambda: self._js.publish(self._dead_subject(destination, seq), msg.data, headers=dict(letter)))
        await self._settle(msg, TERM)
        if headers.get(H_KEY):
            tries = await self._bucket(f"tries_{destination}", self.settings.max_age)
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                await tries.purge(headers[H_KEY])

    async def _settle_all(self, msgs: Sequence[Msg], kind: bytes) -> None:
        """+ACK or +TERM several messages: published, the last one as a request. The consumer's leader
        answers it after the others, sent before it on this connection, have reached it; without an answer
        (a leader change), each is settled on its own (_settle). One lost all the same (sent to a leader that
        died) comes back after AckWait, and its delivered marker settles it then."""
        for msg in msgs[:-1]:
            await self._nc.publish(msg.reply, kind)
        if msgs:
            try:
                await self._nc.request(msgs[-1].reply, kind, timeout=ACK_TIMEOUT)
            except _TRANSIENT:
                await asyncio.gather(*(self._settle(msg, kind) for msg in msgs))

    async def _settle(self, msg: Msg, kind: bytes) -> bool:
        """+ACK or +TERM `msg` as a request, sent again while unanswered (an ack sent while the consumer has
        no leader is lost); settled too once the message is no longer stored. False if still unsure: the
        message then comes back after AckWait, and a delivered one is stopped by its marker."""
        seq = msg.metadata.sequence.stream
        for _ in range(ACK_TRIES):
            try:
                await self._nc.request(msg.reply, kind, timeout=ACK_TIMEOUT)
                return True
            except _TRANSIENT:
                pass
            try:
                await self._js.get_msg(self.stream, seq)
            except nats.js.errors.NotFoundError:
                return True
            except _FAILURES:
                pass
        log.warning("%s: %s of stream seq %d got no answer after %d tries; it may be handed out again (a "
                    "delivered one is then skipped)", self._where, kind.decode(), seq, ACK_TRIES)
        return False

    def pause(self, destination: str, seconds: float) -> None:
        """Every worker of `destination` waits `seconds` (a Retry-After): shared through `P_pause`."""
        self._check(destination)
        self._call(self._pause(destination, seconds), "pausing a destination")

    async def _pause(self, destination: str, seconds: float) -> None:
        bucket = await self._bucket("pause")
        until = time.time() + seconds
        if (await self._paused_until(destination, None) or 0.0) < until:
            await _put(bucket, destination, f"{until:.3f}".encode())

    async def _paused_until(self, destination: str, horizon: float | None) -> float | None:
        """The wall-clock end of the destination's pause, if it is paused now (a time further than now +
        horizon is a clock error: not a pause)."""
        entry = await _get(await self._bucket("pause"), destination)
        if entry is None or not entry.value:
            return None
        until, now = float(entry.value), time.time()
        return until if now < until <= now + (horizon if horizon is not None else float("inf")) else None

    def next_due(self, destination: str, horizon: float | None = None) -> float | None:
        """When to lease again: the pause's end, now while readings wait, soon while some are handed out
        but unsettled (they may come back), else None (nothing waiting)."""
        self._check(destination)
        return self._call(self._next_due(destination, horizon), "looking for due readings")

    async def _next_due(self, destination: str, horizon: float | None) -> float | None:
        paused = await self._paused_until(destination, horizon)
        if paused is not None:
            return paused
        queued, inflight = await self._waiting(destination)
        now = time.time()
        return now if queued else now + POLL if inflight else None

    async def _waiting(self, destination: str) -> tuple[int, int]:
        """(queued, inflight) of a destination: never handed out, and handed out but not settled."""
        info = await self._consumer_info(destination)
        if info is not None:
            return info.num_pending or 0, info.num_ack_pending or 0
        subject = self._subject(destination)
        stream = await self._js.stream_info(self.stream, subjects_filter=subject)
        return (stream.state.subjects or {}).get(subject, 0), 0

    # -------------------------------------------------------------------------------- inspection and repair

    def get(self, id: int) -> Item | None:
        """The waiting or dead reading with this id (dead: its original sequence), else None."""
        return self._call(self._get(id), "reading the queue")

    async def _get(self, id: int) -> Item | None:
        try:
            msg = await self._js.get_msg(self.stream, id)
        except nats.js.errors.NotFoundError:
            return await self._get_dead(id)
        destination = msg.subject.rsplit(".", 1)[-1]
        info = await self._consumer_info(destination)
        return await self._stored_item(destination, msg, info)

    async def _stored_item(self, destination: str, msg: Any, info: api.ConsumerInfo | None) -> Item:
        """An Item for a stored work message outside any lease of ours (state from the consumer's position)."""
        for token, held in self._leases.items():
            if msg.seq in held.messages:
                meta = held.messages[msg.seq].metadata
                return _item(destination, msg, INFLIGHT, attempts=meta.num_delivered, deadline=time.time(), lease=token)
        handed_out = info is not None and info.delivered is not None and msg.seq <= info.delivered.stream_seq
        key = _headers(msg).get(H_KEY, "")
        tried = await self._tried(destination, key) if key else {}
        return _item(destination, msg, INFLIGHT if handed_out else QUEUED, attempts=tried.get("attempts", 0),
                     deadline=time.time(), tried=tried)

    async def _get_dead(self, id: int) -> Item | None:
        subjects = (await self._js.stream_info(self.dead_stream, subjects_filter=self._dead_subject("*", id))).state
        for subject in subjects.subjects or {}:
            msg = await self._js.get_last_msg(self.dead_stream, subject)
            return _dead_item(msg)
        return None

    def items(self, destination: str | None = None, state: str | None = None, limit: int = 100) -> list[Item]:
        """Waiting and dead readings, oldest first (delivered ones keep no payload: none listed)."""
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        if destination is not None:
            self._check(destination)
        return self._call(self._items(destination, state, limit), "listing the queue")

    async def _items(self, destination: str | None, state: str | None, limit: int) -> list[Item]:
        found: list[Item] = []
        if state in (None, QUEUED, INFLIGHT):
            infos: dict[str, api.ConsumerInfo | None] = {}
            async for msg in self._scan(self.stream, self._subject(destination or "*"), limit):
                name = msg.subject.rsplit(".", 1)[-1]
                if name not in infos:
                    infos[name] = await self._consumer_info(name)
                item = await self._stored_item(name, msg, infos[name])
                if state in (None, item.state):
                    found.append(item)
                if len(found) >= limit:
                    return found
        if state in (None, DEAD):
            async for msg in self._scan(self.dead_stream, self._dead_subject(destination or "*", "*"), limit - len(found)):
                found.append(_dead_item(msg))
        return found

    async def _scan(self, stream: str, subject: str, limit: int) -> Any:
        """Stored messages of `stream` on `subject` (wildcards allowed), oldest first, at most `limit` (direct
        gets: next by subject)."""
        seq = 0
        for _ in range(max(0, limit) * 4 + 1):  # bounded even if the stream changes under the scan
            try:
                msg = await self._js.get_msg(stream, seq + 1, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return
            seq = msg.seq
            yield msg
            limit -= 1
            if limit <= 0:
                return

    def states(self, keys: Sequence[str]) -> dict[str, dict[str, str]]:
        """Per key among `keys`: "delivered" at each destination that has its marker (JetStream cannot say
        more per key: module docstring)."""
        return self._call(self._states(list(keys)), "reading delivery states")

    async def _states(self, keys: list[str]) -> dict[str, dict[str, str]]:
        states: dict[str, dict[str, str]] = {}
        for destination in await self._destinations():
            for key in await self._delivered_keys(destination, keys):
                states.setdefault(key, {})[destination] = DELIVERED
        return states

    async def _destinations(self) -> list[str]:
        """Every destination with a consumer (a worker has leased from it) or a reading waiting."""
        names = {info.name for info in await self._js.consumers_info(self.stream)}
        subjects = (await self._js.stream_info(self.stream, subjects_filter=self._subject("*"))).state.subjects or {}
        return sorted(names | {subject.rsplit(".", 1)[-1] for subject in subjects})

    def counts(self, destination: str | None = None) -> dict[str, int]:
        """Readings in each state (every state, zero included); delivered: markers still kept."""
        if destination is not None:
            self._check(destination)
        return self._call(self._counts(destination), "counting the queue")

    async def _counts(self, destination: str | None) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for name in [destination] if destination is not None else await self._destinations():
            queued, inflight = await self._waiting(name)
            counts[QUEUED] += queued
            counts[INFLIGHT] += inflight
            try:
                done = await self._js.stream_info(f"KV_{self.settings.prefix}_done_{name}")
                counts[DELIVERED] += done.state.messages
            except nats.js.errors.NotFoundError:
                pass
        dead = await self._js.stream_info(self.dead_stream, subjects_filter=self._dead_subject(destination or "*", "*"))
        counts[DEAD] = sum((dead.state.subjects or {}).values())
        return counts

    def retry(self, id: int) -> int | None:
        """Queue a dead reading again: published anew (a new id, attempts from zero), then its dead letter
        deleted; returns the new id. A reading waiting and never handed out: its own id. Else None."""
        return self._call(self._retry(id), "queueing a dead reading again")

    async def _retry(self, id: int) -> int | None:
        try:
            msg = await self._js.get_msg(self.stream, id)
        except nats.js.errors.NotFoundError:
            pass
        else:
            destination = msg.subject.rsplit(".", 1)[-1]
            item = await self._stored_item(destination, msg, await self._consumer_info(destination))
            return id if item.state == QUEUED else None
        subjects = (await self._js.stream_info(self.dead_stream, subjects_filter=self._dead_subject("*", id))).state
        subject = next(iter(subjects.subjects or {}), None)
        if subject is None:
            return None
        letter = await self._js.get_last_msg(self.dead_stream, subject)
        destination, headers = subject.split(".")[-2], _headers(letter)
        again = {"Nats-Msg-Id": f"retry:{destination}:{id}:{letter.seq}", H_KEY: headers.get(H_KEY, ""),
                 H_CREATED: headers.get(H_CREATED, "")}
        ack = await _again(lambda: self._js.publish(self._subject(destination), letter.data or b"", headers=dict(again)))
        with contextlib.suppress(nats.js.errors.NotFoundError):  # deleted by a first try whose answer was lost
            await _again(lambda: self._js.delete_msg(self.dead_stream, letter.seq))
        return ack.seq

    def purge_dead(self, destination: str | None = None) -> int:
        """Delete dead letters (of one destination); return how many."""
        if destination is not None:
            self._check(destination)
        return self._call(self._purge_dead(destination), "purging dead letters")

    async def _purge_dead(self, destination: str | None) -> int:
        subject = self._dead_subject(destination or "*", "*")
        info = await self._js.stream_info(self.dead_stream, subjects_filter=subject)
        count = sum((info.state.subjects or {}).values())
        if count:
            await self._js.purge_stream(self.dead_stream, subject=subject)
        return count

    def purge_delivered(self, destination: str | None = None) -> int:
        """Nothing to erase: JetStream keeps no delivered payload (only markers, which must stay). 0."""
        return 0

    # What the status page and the API read from kept payloads: JetStream keeps none ([view] does).

    def latest_per_device(self) -> list[tuple[float, str]]:
        return []

    def kept_payloads(self, patient: tuple[str, str] | None = None, limit: int = 1000) -> list[tuple[float, str]]:
        return []

    def activity(self, ends: Sequence[float], step: float) -> list[tuple[str, float, int, int]]:
        return []

    def inspect(self, destinations: Sequence[str]) -> Inspection:
        """The server's version and the connection, phg's two streams (replicas, size, leader) and the
        consumer of each of `destinations`: read-only, for `phg doctor`."""
        for name in destinations:
            self._check(name)
        return self._call(self._inspect(list(destinations)), "inspecting JetStream")

    async def _inspect(self, destinations: list[str]) -> Inspection:
        version = self._nc.connected_server_version
        streams = []
        for name in (self.stream, self.dead_stream):
            info = await self._js.stream_info(name)
            streams.append(StreamReport(name, info.config.num_replicas or 1, info.state.messages, info.state.bytes,
                                        info.cluster.leader if info.cluster is not None else None))
        consumers = []
        for name in destinations:
            info = await self._consumer_info(name)
            paused = await self._paused_until(name, None)
            consumers.append(ConsumerReport(name, False, paused_until=paused) if info is None else ConsumerReport(
                name, True, info.num_pending or 0, info.num_ack_pending or 0, info.config.ack_wait, paused))
        url = self._nc.connected_url
        return Inspection(f"{version.major}.{version.minor}.{version.patch}",
                          (version.major, version.minor, version.patch) >= MIN_SERVER,
                          f"{url.scheme}://{url.hostname}:{url.port}" if url is not None else "",
                          tuple(streams), tuple(consumers))

    # -------------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Flush the connection (acks and publishes sent go out), close it and stop the loop thread. What
        is still held comes back to other workers after AckWait."""
        if not self._thread.is_alive():
            return
        self._closing = True
        with contextlib.suppress(StorageError):
            self._call(self._close(), "closing")
        self._stop_loop()

    async def _close(self) -> None:
        with contextlib.suppress(*_FAILURES):
            await self._nc.flush(timeout=REQUEST_TIMEOUT)
        if not self._nc.is_closed:
            await self._nc.close()

    def __enter__(self) -> JetStreamQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _credentials_keys(settings: QueueSettings) -> str:
    """The [queue] keys that hold the credentials in use (what a refusal names; never their values)."""
    if settings.creds_file is not None:
        return "[queue] creds_file"
    if settings.nkey_seed_file is not None:
        return "[queue] nkey_seed_file"
    if settings.user is not None:
        return "[queue] user and password"
    return "none given: [queue] creds_file, nkey_seed_file or user and password"


def _read_secret(path: Any, key: str) -> str:
    """A credentials file's text, refused unless private (mode 0600, as at load_config: it may have changed)."""
    require_private(path, key)
    try:
        return Path(path).read_bytes().decode("ascii")  # bytes: line ends as nats-py will read them
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key} {path}: cannot read it as ASCII text ({type(exc).__name__})") from None


def _check_seed(seed: str, where: str) -> None:
    """Refuse anything but an nkey user seed ("SU" + base32 of the ed25519 seed and a CRC-16; nkeys'
    decode_seed), naming where it is and never the seed: nats-py would fail later, less clearly."""
    import nkeys

    try:
        prefix, raw = nkeys.decode_seed(bytearray(seed.encode("ascii")))
        intact = nkeys.encode_seed(bytes(raw), prefix).decode("ascii") == seed  # the CRC-16 too
    except (nkeys.NkeysError, ValueError, TypeError, UnicodeError):
        prefix, intact = None, False
    if prefix != nkeys.PREFIX_BYTE_USER or not intact:
        raise ConfigError(f"{where}: not an nkey user seed (one line starting with SU, as `nsc` or `nk -gen user` "
                          "write it)")


def _check_creds_file(path: Any) -> None:
    """A NATS credentials file as nats-io/jwt v2 formats it (creds_utils.go FormatUserConfig): the line after
    "-----BEGIN NATS USER JWT-----" holds the user JWT (three base64url parts), the line after
    "-----BEGIN USER NKEY SEED-----" the user's seed. Checked before nats-py reads it: without the JWT
    marker its reader loops for ever."""
    where = f"[queue] creds_file {path}"
    text = _read_secret(path, "[queue] creds_file")
    if "\r" in text:  # nats-py cuts one "\n" off each line: a "\r" would stay in the JWT and the seed
        raise ConfigError(f"{where}: Windows line ends (CRLF); convert the file to \\n line ends (dos2unix)")
    lines = text.split("\n")

    def after(marker: str) -> str:
        found = next((i for i, line in enumerate(lines) if marker in line), None)
        if found is None or found + 1 >= len(lines):
            raise ConfigError(f"{where}: no line after {marker!r} (not a .creds file: `nsc generate creds` writes one)")
        return lines[found + 1]

    if not _JWT.fullmatch(after("BEGIN NATS USER JWT")):
        raise ConfigError(f"{where}: the line after 'BEGIN NATS USER JWT' is not a JWT (header.claims.signature)")
    _check_seed(after("BEGIN USER NKEY SEED"), where)


def _state_key(name: str) -> str:
    """A progress marker's name as a key-value key (keys allow [-/_=.a-zA-Z0-9]: the name hex-encoded)."""
    return "s." + name.encode().hex()


async def _again(request: Callable[[], Awaitable[T]]) -> T:
    """`request()`, made again while it fails as a leader change makes it fail (_TRANSIENT), for at most
    LEADER_WAIT seconds: only for idempotent requests (a key-value put or get, a publish with a Nats-Msg-Id)."""
    end, wait = time.monotonic() + LEADER_WAIT, 0.25
    while True:
        try:
            return await request()
        except _TRANSIENT:
            if time.monotonic() + wait > end:
                raise
            await asyncio.sleep(wait)
            wait = min(2 * wait, 2.0)


async def _put(bucket: Any, key: str, value: bytes) -> None:
    await _again(lambda: bucket.put(key, value))


async def _get(bucket: Any, key: str) -> Any:
    """The bucket's entry for `key`, or None (absent or deleted)."""
    try:
        return await _again(lambda: bucket.get(key))
    except nats.js.errors.KeyNotFoundError:
        return None


def _claim_end(now: float, lease_seconds: float) -> float:
    """When a claim taken (or extended) at wall-clock `now` runs out: a third of a lease after the lease it
    covers, so that its holder learns at a renewal (three per lease: phg.delivery.worker) that the lease
    is gone, and stops sending, before another worker may take the claim over."""
    return now + lease_seconds * 4 / 3


def _claim_grace() -> float:
    """Seconds past its end (and CLAIM_SKEW) a claim that ran out by time still keeps other leases away. Its
    holder may be writing the delivered markers of a send that ended before the claim did, with the claim
    bucket too long without a leader to extend the claim. The bound has two parts: the send ends by its
    lease's end, a third of a lease (lease_seconds/3, _claim_end) before its claims', and that slack is what
    lets the report reach _publish_all before the claims end; _publish_all then returns or raises within
    LEADER_WAIT + REQUEST_TIMEOUT of its start (no round starts past LEADER_WAIT, and the last round's waits
    for a permit and for its PubAcks end REQUEST_TIMEOUT after). So the markers are written, or the holder
    gave up (a StorageError from delivered), within this grace of the claims' end. Only then may another
    lease take the claim over and look for the marker. The holder itself may claim it again meanwhile
    (_keep_claims). The cost: a dead worker's readings are taken over this much later."""
    return LEADER_WAIT + REQUEST_TIMEOUT


def _claim_value(entry: Any) -> tuple[str | None, float]:
    """A claim's holder and expiry (its JSON value {"token", "until"}); (None, 0) = a claim that has run
    out, when it cannot be read; ("", 0): given up on purpose (_unclaim)."""
    try:
        value = json.loads(entry.value or b"{}")
        return str(value["token"]), float(value["until"])
    except (ValueError, TypeError, KeyError):
        return None, 0.0


async def _no_record() -> dict[str, Any]:
    return {}


def _item(destination: str, msg: Any, state: str, *, attempts: int, deadline: float, lease: str | None = None,
          tried: Mapping[str, Any] | None = None) -> Item:
    """An Item for a work message (`msg`: a delivered Msg or a stored RawStreamMsg)."""
    headers = _headers(msg)
    seq = msg.metadata.sequence.stream if isinstance(msg, Msg) else msg.seq
    stored = _epoch(msg.metadata.timestamp) if isinstance(msg, Msg) else _epoch(getattr(msg, "time", None))
    created = float(headers.get(H_CREATED) or stored)
    tried = tried or {}
    return Item(id=seq, destination=destination, key=headers.get(H_KEY, ""), payload=(msg.data or b"").decode(),
                state=state, attempts=attempts, next_attempt=deadline, created=created, updated=stored or created,
                last_error=tried.get("error"), result=None, refusals=tried.get("refusals", 0), lease=lease)


def _dead_item(msg: Any) -> Item:
    """An Item for a dead letter: its id is the reading's original sequence in the work stream."""
    headers = _headers(msg)
    stored = _epoch(getattr(msg, "time", None))
    return Item(id=int(headers.get(H_SEQ, msg.seq)), destination=msg.subject.split(".")[-2],
                key=headers.get(H_KEY, ""), payload=(msg.data or b"").decode(), state=DEAD,
                attempts=int(headers.get(H_ATTEMPTS, 0)), next_attempt=stored,
                created=float(headers.get(H_CREATED) or stored), updated=stored,
                last_error=json.loads(headers[H_REASON]) if H_REASON in headers else None, result=None)
