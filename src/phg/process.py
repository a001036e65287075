"""Settings of a long-running phg process itself: its cyclic garbage collector (issue 16), and the threads its
delivery work runs in (POOL, in_thread, below).

What phg works with are trees (a batch's Readings, its Bundle's dicts and lists) that reference counting
frees as soon as the batch is done; they hold no cycles. CPython's collector still counts them: its
youngest generation is collected whenever 700 more container objects exist than at the last collection,
and a batch of 50 readings builds several thousand, so it ran several times a batch, and about every tenth
time the oldest generation, which walks every object of the process (modules, configuration, HTTP
clients). Measured in `bench/run.py client`: 12% of the delivery path's CPU (0.43 s of 3.4 s for 20,000
readings), 0.02 s after `tune_collector()`.

`tune_collector()`, called by `phg run` once it has read its configuration: what exists then is collected once and
then frozen (gc.freeze: the permanent generation, never walked again), and the youngest generation may
grow to GEN0 objects, more than a batch makes. Cyclic garbage (rare here: an exception with its traceback,
say) is still collected, a little later.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
from concurrent.futures import Executor
from functools import partial

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    _T = TypeVar("_T")

GEN0 = 10_000


def tune_collector() -> None:
    """Freeze what start-up made and let a batch's objects come and go between collections (above)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0, older, oldest)


# Which threads a long-running process's delivery work runs in: delivery's own pool, set by phg.daemon.deliver for
# its workers' tasks (which inherit it), not the event loop's default executor, which the Intake's calls fill while
# the view store hangs: delivery never waits behind intake. Here, below `auth` and `delivery`, so that both use it.
POOL: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("phg_delivery_pool", default=None)


async def in_thread(work: Callable[..., _T], /, *args: object) -> _T:
    """work(*args) in a thread of delivery's pool (POOL; unset, as in `phg render` or doctor: the default executor),
    in a copy of the caller's context, as asyncio.to_thread runs it."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(POOL.get(), partial(context.run, work, *args))
