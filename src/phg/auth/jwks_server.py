"""Publish the gateway's public JWKS at a URL (for jwks_uri / jku deployments).

SMART client-confidential-asymmetric prefers a JWKS URL over an inline JWKS: the server fetches
it (TLS, no authentication, Cache-Control honoured). ``phg serve-jwks`` runs this tiny asyncio HTTP
server; the daemon's own web server may mount :func:`jwks_response` instead. The key ring is read
at every request, so a key added by ``phg keys rotate`` is published at once. Only GET/HEAD of the
one path are answered; it binds to loopback unless told otherwise (put a TLS-terminating reverse
proxy in front, or give it a certificate, when the server fetches it over the network).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from types import TracebackType

from phg.auth.keyring import KeySource
from phg.auth.keys import jwks

log = logging.getLogger(__name__)

DEFAULT_PATH = "/.well-known/jwks.json"
CACHE_SECONDS = 60  # short: a rotated-in key must reach the server well within the publish delay
MAX_HEADER = 16384


def jwks_response(keys: KeySource) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the JWKS document (blocking: reads the ring's state file)."""
    body = json.dumps(jwks(keys.published()), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "Cache-Control": f"public, max-age={CACHE_SECONDS}",
               "Content-Length": str(len(body))}
    return 200, headers, body


class JwksServer:
    """``async with JwksServer(ring, port=0) as server: server.url``."""

    def __init__(self, keys: KeySource, *, host: str = "127.0.0.1", port: int = 0, path: str = DEFAULT_PATH,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.keys = keys
        self.host = host
        self.port = port
        self.path = path if path.startswith("/") else "/" + path
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.path}"

    async def start(self) -> JwksServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("publishing the JWKS at %s", self.url)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> JwksServer:
        return await self.start()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            if len(head) > MAX_HEADER:
                raise ValueError("header too large")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, headers, body = 405, {"Allow": "GET, HEAD"}, b""
            elif path != self.path:
                status, headers, body = 404, {}, b""
            else:
                status, headers, body = await asyncio.to_thread(jwks_response, self.keys)
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
            headers = {"Content-Length": str(len(body)), **headers, "Connection": "close"}
            lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError, ConnectionError):
            pass
        except Exception:  # noqa: BLE001 - one bad request must not stop publication
            log.exception("JWKS server: request failed")
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        finally:
            writer.close()
