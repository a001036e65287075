"""phg.transport.exchange, which every delivery and auth client's requests go through: a whole answer within the
timeout and at most ANSWER_LIMIT bytes decoded (review A findings 3 and 4), against a hostile server on 127.0.0.1:
one that sends a byte a second, one that never stops sending, one that sends a gzip bomb."""

from __future__ import annotations

import asyncio
import gzip
import resource
import time

import httpx
import pytest

from phg.delivery.fhir import FhirDestination
from phg.errors import TransientDeliveryError
from phg.model import Gateway
from phg.transport import ANSWER_LIMIT, exchange
from test_mllp_peers import readings_of_every_type

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
BOMB = gzip.compress(b" " * (ANSWER_LIMIT * 4), compresslevel=9)


async def _answer(mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:"), 0)
    await reader.readexactly(length)
    try:
        if mode == "bomb":
            writer.write(HEAD + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(BOMB) + BOMB)
        else:
            writer.write(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
            for _ in range(600):  # bounded: 600 chunks
                if mode == "trickle":
                    writer.write(b"1\r\n \r\n")
                    await asyncio.sleep(0.1)
                else:
                    writer.write(b"10000\r\n" + b" " * 0x10000 + b"\r\n")
                await writer.drain()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serving(mode: str) -> asyncio.Server:
    return await asyncio.start_server(lambda r, w: _answer(mode, r, w), "127.0.0.1", 0)


@pytest.mark.parametrize("mode, says", [("trickle", "ReadTimeout: no whole answer within 1 s"),
                                        ("flood", f"ReadError: the answer is larger than {ANSWER_LIMIT} bytes"),
                                        ("bomb", f"ReadError: the answer is larger than {ANSWER_LIMIT} bytes")])
async def test_a_hostile_answer_is_a_transient_failure_in_bounded_time_and_memory(mode, says):
    server = await _serving(mode)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/fhir"
    started, peak = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            destination = FhirDestination(client, base, Gateway("02AB7FFFFE000001"))
            with pytest.raises(TransientDeliveryError) as caught:
                await destination.send(readings_of_every_type()[:1])
    finally:
        server.close()
    assert says in str(caught.value) and caught.value.reached
    assert time.monotonic() - started < 10  # the trickle: held for ever before; a second now
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) * 1024
    assert grown < 2 * ANSWER_LIMIT + 96 * 2**20  # the flood and the bomb (one 64 KiB chunk's expansion): 900 MB before


async def test_an_ordinary_answer_is_read_whole():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Accept-Encoding"] == "identity" and request.headers["X-Mine"] == "1"
        return httpx.Response(200, json={"resourceType": "Bundle"}, headers={"X-Seen": request.method})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        response = await exchange(client, "POST", "http://127.0.0.1/fhir", content=b"{}", headers={"X-Mine": "1"})
    assert response.json() == {"resourceType": "Bundle"} and response.headers["X-Seen"] == "POST"
