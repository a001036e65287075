"""`phg run` as a child process of a test: started with a config file, waited for until its API answers,
stopped with SIGTERM (a clean exit asserted), and killed when the test ends with it still running."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

PHG = str(Path(sys.executable).parent / "phg")


class PhgRun:
    """``async with PhgRun(config, "--role", "worker", api="http://127.0.0.1:PORT") as run:`` runs
    ``phg run ARGS`` with PHG_CONFIG=config (and ``env`` on top of this process's environment)."""

    def __init__(self, config: Path, *args: str, api: str = "", env: Mapping[str, str] | None = None) -> None:
        self.args, self.api = args, api
        self.env = {**os.environ, "PHG_CONFIG": str(config), **(env or {})}
        self.child: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> PhgRun:
        self.child = await asyncio.create_subprocess_exec(PHG, "run", *self.args, env=self.env,
                                                          stdout=asyncio.subprocess.PIPE,
                                                          stderr=asyncio.subprocess.PIPE)
        return self

    async def ready(self, path: str) -> None:
        """Until GET api + path answers 200 (15 s at most); else the child is killed and its stderr shown."""
        assert self.child is not None
        async with httpx.AsyncClient(base_url=self.api) as client:
            for _ in range(150):
                try:
                    if (await client.get(path)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        self.child.kill()
        raise AssertionError(f"phg run {' '.join(self.args)} does not answer {self.api}{path}: "
                             f"{(await self.child.communicate())[1].decode()[-2000:]}")

    async def logged(self, text: str, timeout: float = 30) -> str:
        """Until a line of stderr holds `text` (`timeout` s at most); the lines read, that one included (a later
        ``stop()`` returns only what follows)."""
        assert self.child is not None and self.child.stderr is not None
        lines: list[str] = []

        async def read() -> None:
            while text not in (line := (await self.child.stderr.readline()).decode()):
                assert line, f"phg run exited without logging {text!r}: {''.join(lines)[-2000:]}"
                lines.append(line)
            lines.append(line)

        await asyncio.wait_for(read(), timeout)
        return "".join(lines)

    async def stop(self, timeout: float = 30) -> str:
        """SIGTERM; the exit must be clean (0). Its stderr."""
        assert self.child is not None
        self.child.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(self.child.communicate(), timeout)
        assert self.child.returncode == 0, err.decode()[-2000:]
        return err.decode()

    async def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        assert self.child is not None
        self.child.kill()
        await self.child.wait()

    async def __aexit__(self, *exc_info: object) -> None:
        if self.child is not None and self.child.returncode is None:
            await self.kill()
