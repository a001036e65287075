"""phg.process: the collector settings `phg run` applies once started, and where a batch's CPU work runs
(phg.delivery.cpu). Issue 16."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest

from phg.delivery.cpu import INLINE_READINGS, batch_work
from phg.process import GEN0


def test_tune_collector_freezes_start_up_and_raises_generation_0():
    # In a child: the test process's own collector stays as it is.
    code = ("import gc; from phg.process import tune_collector; before = gc.get_threshold(); tune_collector(); "
            "print(gc.get_freeze_count() > 1000, gc.get_threshold()[0], gc.get_threshold()[1:] == before[1:])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", str(GEN0), "True"]


def test_a_small_batch_runs_on_the_loop_and_a_large_one_in_a_thread():
    async def where(readings: int) -> int:
        return await batch_work(readings, threading.get_ident)

    async def main() -> tuple[int, int, int]:
        return threading.get_ident(), await where(INLINE_READINGS), await where(INLINE_READINGS + 1)

    loop_thread, small, large = asyncio.run(main())
    assert small == loop_thread
    assert large != loop_thread


def test_batch_work_passes_arguments_and_raises_what_the_work_raises():
    def work(a: int, b: int) -> int:
        if b == 0:
            raise ZeroDivisionError("b is 0")
        return a // b

    for readings in (1, INLINE_READINGS + 1):
        assert asyncio.run(batch_work(readings, work, 7, 2)) == 3
        with pytest.raises(ZeroDivisionError, match="b is 0"):
            asyncio.run(batch_work(readings, work, 7, 0))
