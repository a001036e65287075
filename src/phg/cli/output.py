"""How commands print: ISO 8601 times, JSON for scripts (`--json`), progress for a person on a
terminal and nothing extra in a pipe. Imported by `phg send`: no click, asyncio or rich at import time."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from phg.cli.common import echo

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue 16: `phg send` starts without it)
if TYPE_CHECKING:
    from typing import Any


def iso(epoch: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC (RFC 3339 5.6), e.g. 2026-11-28T09:00:00Z."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def print_json(data: Any) -> None:
    echo(json.dumps(data, indent=2, ensure_ascii=False))


@contextlib.asynccontextmanager
async def progress(waiting: Callable[[], int], what: str, *, show: bool) -> AsyncIterator[None]:
    """While the body runs, a progress bar on stderr of the readings done out of those waiting at the
    start, polled from ``waiting()`` (a blocking call: run off the event loop). Shown only when
    ``show`` and stderr is a terminal: a pipe or a log file gets nothing extra."""
    if not (show and sys.stderr.isatty()):
        yield
        return
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = await asyncio.to_thread(waiting)
    bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)

    async def poll(task: Any) -> None:
        while True:
            bar.update(task, completed=max(0, total - await asyncio.to_thread(waiting)))
            await asyncio.sleep(0.2)

    with bar:
        poller = asyncio.create_task(poll(bar.add_task(what, total=total)))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
