"""Where a batch's CPU work runs: on the event loop when the batch is small, else in a thread.

Parsing stored readings and rendering a batch are pure Python: under the GIL a thread runs them no
faster, and hands the GIL back and forth with the loop thread (issue 16: the delivery path spent about
13% of its CPU on those hand-offs). A thread keeps the loop answering only because the interpreter
switches threads every sys.getswitchinterval() (5 ms); a batch of up to INLINE_READINGS readings maps in
about that long (about 50 us a reading), so it runs on the loop directly. A larger batch (batch_size goes
up to 1,000) goes to a thread, so that nothing else on the loop (the API, lease renewals) waits for it.
Blocking I/O (SQLite, files) always goes to a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

INLINE_READINGS = 100

_T = TypeVar("_T")


async def batch_work(readings: int, work: Callable[..., _T], /, *args: object) -> _T:
    """work(*args), the CPU work of a batch of `readings` readings: on the loop or in a thread (above)."""
    if readings <= INLINE_READINGS:
        return work(*args)
    return await asyncio.to_thread(work, *args)
