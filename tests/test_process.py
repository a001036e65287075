"""phg.process: the collector settings `phg run` applies once started, and where a batch's CPU work runs
(phg.delivery.cpu). Issue 16."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from datetime import UTC, datetime

import pytest

from phg.delivery.cpu import INLINE_METRICS, batch_work
from phg.delivery.fhir import FhirDestination
from phg.demo.sim import simulated_readings
from phg.model import Gateway, PatientRef
from phg.process import GEN0


def test_tune_collector_freezes_start_up_and_raises_generation_0():
    # In a child: the test process's own collector stays as it is.
    code = ("import gc; from phg.process import tune_collector; before = gc.get_threshold(); tune_collector(); "
            "print(gc.get_freeze_count() > 1000, gc.get_threshold()[0], gc.get_threshold()[1:] == before[1:])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", str(GEN0), "True"]


def test_batch_work_runs_on_the_loop_or_in_a_thread():
    async def main() -> tuple[int, int, int]:
        return (threading.get_ident(), await batch_work(True, threading.get_ident),
                await batch_work(False, threading.get_ident))

    loop_thread, inline, threaded = asyncio.run(main())
    assert inline == loop_thread
    assert threaded != loop_thread


def test_batch_work_passes_arguments_and_raises_what_the_work_raises():
    def work(a: int, b: int) -> int:
        if b == 0:
            raise ZeroDivisionError("b is 0")
        return a // b

    for inline in (True, False):
        assert asyncio.run(batch_work(inline, work, 7, 2)) == 3
        with pytest.raises(ZeroDivisionError, match="b is 0"):
            asyncio.run(batch_work(inline, work, 7, 0))


def _rendered_where(readings: list) -> tuple[int, int]:
    """(the loop's thread, the thread FhirDestination.send rendered `readings` in)."""
    seen: list[int] = []

    def render_each(self, batch):
        seen.append(threading.get_ident())
        return None, b"", {i: "not sent" for i in range(len(batch))}

    async def main() -> int:
        destination = FhirDestination(None, "http://127.0.0.1:9/fhir", Gateway(system_id="02AB7FFFFE00C11A"))
        await destination.send(readings)
        return threading.get_ident()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FhirDestination, "render_each", render_each)
        loop_thread = asyncio.run(main())
    return loop_thread, seen[0]


def test_a_batch_with_many_metrics_renders_in_a_thread():
    """The bound is the batch's metrics, not its readings: a few readings of hundreds of metrics each (a
    stored-records upload) would hold the loop for tens of milliseconds."""
    reading = simulated_readings(PatientRef("urn:oid:1.2.3", "p"), datetime(2026, 12, 1, tzinfo=UTC), per_device=1)[0]
    small = [reading] * 2
    heavy = [reading._replace(metrics=reading.metrics * (INLINE_METRICS // len(reading.metrics) + 1))] * 2
    loop_thread, where = _rendered_where(small)
    assert where == loop_thread
    loop_thread, where = _rendered_where(heavy)
    assert where != loop_thread
