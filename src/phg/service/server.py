"""The service, served by uvicorn inside `phg run`'s event loop: one process, one loop, the sources and
the delivery workers beside it.

phg run owns SIGINT and SIGTERM (they set its `stop` event), so uvicorn's own signal handlers stay off.
On stop the server closes its listening socket, lets the requests in progress finish (an ingest that
is storing answers once its readings are durable; at most GRACE seconds), and returns; `phg run` then
stops the sources and delivery. The socket is bound here, before uvicorn starts, so that an address in
use or not available is a ConfigError naming [api] listen rather than uvicorn's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from phg.errors import ConfigError
from phg.service.app import ServiceContext, create_app

log = logging.getLogger(__name__)

GRACE = 10.0  # seconds the requests in progress get to finish once `phg run` stops
REQUEST_DEADLINE = 30.0  # seconds from a connection (or its previous answer) to the next request's answer
MAX_CONNECTIONS = 256  # API connections open at once; the sources, the outbox and the workers need files too


class _Limited(AutoHTTPProtocol):  # uvicorn's own HTTP protocol (httptools, else h11), with two limits it lacks
    """uvicorn keeps a connection that sends nothing, half its headers or half its body open for ever (a
    slowloris client holds it, and with enough of them every file descriptor of `phg run`). Here each request
    must be sent and answered within `deadline` seconds of the connection or of the previous answer, else the
    connection is closed (a request that was being stored still finishes: an ingest is idempotent by reading
    key, so a client that sends it again doubles nothing); and a connection beyond `max_connections` is closed
    at once."""

    deadline = REQUEST_DEADLINE
    max_connections = MAX_CONNECTIONS
    warned = -60.0  # time.monotonic() of the last warning that the cap was reached

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            now = time.monotonic()
            if now - _Limited.warned >= 60:  # one line a minute, not one per refused connection
                _Limited.warned = now
                log.warning("API: %d connections open, the most allowed: more are closed at once", self.max_connections)
            transport.close()
            return
        self._deadline = self.loop.call_later(self.deadline, self._expired)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = self.loop.call_later(self.deadline, self._expired)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _expired(self) -> None:
        log.info("API: a request not sent and answered within %.0f s: connection closed", self.deadline)
        self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: `phg run` owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(ctx: ServiceContext, stop: asyncio.Event) -> None:
    """Serve the app on [api] listen until `stop` is set."""
    from phg.service.security import server_options

    api = ctx.config.api
    assert api is not None  # called only with [api]
    sock = listen(*api.listen)
    config = uvicorn.Config(create_app(ctx), lifespan="off", log_config=None, access_log=False,  # paths name patients
                            timeout_graceful_shutdown=GRACE, server_header=False, http=_Limited,
                            **server_options(api))
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    log.info("serving the API on %s:%d", *api.listen)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
    finally:
        stopping.cancel()
        sock.close()


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), IPv4 or IPv6 as the host says. Its protocol is given as
    IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so (`sock.proto`), and without it
    every back-to-back request on a keep-alive connection waits ~40 ms for a delayed ACK (Nagle)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise ConfigError(f"[api] listen {host}:{port}: cannot listen there: {exc.strerror or exc}") from None
    return sock
