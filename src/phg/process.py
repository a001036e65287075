"""Settings of a long-running phg process itself: its cyclic garbage collector (issue 16).

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

import gc

GEN0 = 10_000


def tune_collector() -> None:
    """Freeze what start-up made and let a batch's objects come and go between collections (above)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0, older, oldest)
