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
from collections.abc import Iterator

import uvicorn

from phg.errors import ConfigError
from phg.service.app import ServiceContext, create_app

log = logging.getLogger(__name__)

GRACE = 10.0  # seconds the requests in progress get to finish once `phg run` stops


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
                            timeout_graceful_shutdown=GRACE, server_header=False, **server_options(api))
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
