"""Where a batch's CPU work runs: on the event loop when it is small, else in a thread (issue 16).

Parsing stored readings and rendering a batch are pure Python: under the GIL a thread runs them no
faster, and hands the GIL back and forth with the loop thread (the delivery path spent about 13% of its
CPU on those hand-offs). A thread keeps the loop answering only because the interpreter switches threads
every sys.getswitchinterval() (5 ms), so work that takes about that long runs on the loop directly; larger
work goes to a thread, so that nothing else on the loop (the API, the sources, lease renewals) waits
longer for it. The bounds are in what sets the cost, measured on the simulator's readings (Python 3.11):
- parsing: the stored text, 0.045 us a character (0.065 through the checks of a text not plainly within
  the bounds): INLINE_CHARS, about 5 ms (a batch of 50 usual readings is about 21,000 characters);
- rendering: the metrics, about 17 us each (FHIR; HL7 v2 costs less): INLINE_METRICS, about 5 ms (a batch of
  50 usual readings has about 90).
Cryptography (c3pro's envelopes, FHIR's encrypt_to, the SMART assertion) and blocking I/O (SQLite, files)
always go to a thread.

Which threads: phg.process.in_thread's, delivery's own pool (phg.process.POOL, set by phg.daemon.deliver for its
workers' tasks), not the event loop's default executor, which the Intake's calls fill while the view store hangs:
delivery never waits behind intake.
"""

from __future__ import annotations

from phg.process import in_thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TypeVar

    from phg.model import Reading
    from phg.outbox import Item

    _T = TypeVar("_T")

INLINE_CHARS = 100_000
INLINE_METRICS = 300


def parse_inline(items: Sequence[Item]) -> bool:
    """Whether parsing these stored readings stays within the bound above (their characters)."""
    return sum(len(item.payload) for item in items) <= INLINE_CHARS


def render_inline(readings: Sequence[Reading]) -> bool:
    """Whether rendering these readings stays within the bound above (their metrics)."""
    return sum(len(reading.metrics) for reading in readings) <= INLINE_METRICS


async def batch_work(inline: bool, work: Callable[..., _T], /, *args: object) -> _T:
    """work(*args): on the loop when `inline` (the caller's bound above holds), else in a thread."""
    if inline:
        return work(*args)
    return await in_thread(work, *args)
