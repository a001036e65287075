"""A trivially fast fake FHIR server for the client-ceiling benchmark (issue 16): loopback, HTTP/1.1
keep-alive, and to every POST of a transaction Bundle a valid transaction-response with one "201
Created" entry per request entry (entries counted by their "fullUrl" members, without parsing the
JSON: the server must cost next to nothing, so that what is measured is the client). A POST of a single
resource is answered 201 with a Location. It runs in its own process (`python bench/fakefhir.py`
prints its port on the first line of stdout, then serves until killed), so its CPU is not the client's.

Use FakeFhir() as a context manager: it starts the process and gives base_url.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from functools import cache

HEAD = b"HTTP/1.1 %d %s\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n%s\r\n"


@cache
def _transaction_response(entries: int) -> bytes:
    entry = b'{"response":{"status":"201 Created","location":"Observation/1/_history/1"}}'
    body = b'{"resourceType":"Bundle","type":"transaction-response","entry":[' + b",".join([entry] * entries) + b"]}"
    return HEAD % (200, b"OK", len(body), b"") + body


SINGLE = HEAD % (201, b"Created", 0, b"Location: Observation/1/_history/1\r\n")


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            line = head.split(b"\r\n", 1)[0]
            path = line.split(b" ")[1].rstrip(b"/")
            if path.endswith(b"/fhir"):
                writer.write(_transaction_response(body.count(b'"fullUrl"')))
            else:
                writer.write(SINGLE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _main() -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


class FakeFhir:
    """The fake server in a child process; base_url is its FHIR base."""

    def __enter__(self) -> FakeFhir:
        self.process = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.base_url = f"http://127.0.0.1:{int(self.process.stdout.readline())}/fhir"
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)


if __name__ == "__main__":
    asyncio.run(_main())
