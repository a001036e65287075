"""The client path's CPU against the tree before issue 16 (the issue's title: "a client path three times
cheaper"; its 0.1 CPU s per 1,000 readings was a third of what it measured on its machine, and CPU seconds
differ 2-3x between this workplace's machines: docs/benchmarks.md, section 5). Both trees run the same
harness (bench/clientside.py) in alternating child processes on this interpreter, each with its own phg on
PYTHONPATH: the tree of BEFORE (a git worktree made in a temporary directory from this checkout's history)
and this checkout's src. Ratio: the before tree's CPU per reading over this one's (target >= 3)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# The parent of 8ecb0d8, issue 16's first commit ("fhir: cheaper mapping, same bytes").
BEFORE = "f8f0590"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _side(src: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{HERE}"}
    out = subprocess.run([sys.executable, str(HERE / "clientside.py"), str(n)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def bench_client_before(pairs: int = 3) -> dict:
    n = 2_000 if os.environ.get("PHG_BENCH_QUICK") else 10_000
    with tempfile.TemporaryDirectory(prefix="phg-bench-before-") as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), BEFORE], check=True)
        try:
            before, now = [], []
            for i in range(pairs):  # alternating, the order swapped each pair
                sides = [(before, tree / "src"), (now, ROOT / "src")]
                for runs, src in sides if i % 2 == 0 else sides[::-1]:
                    runs.append(_side(src, n))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    per_1000 = {name: statistics.median(r["phg"] for r in runs) / n * 1000 for name, runs in (("before", before),
                                                                                             ("now", now))}
    bare = statistics.median(r["bare"] for r in before + now) / n * 1000
    ratio = per_1000["before"] / per_1000["now"]
    return {"name": "client CPU vs before #16", "ratio": ratio, "target": ">= 3", "ok": ratio >= 3,
            "figure": f"now {per_1000['now']:.3f} CPU s per 1,000 readings (phg/bare {per_1000['now'] / bare:.1f}; "
                      f"medians of {pairs}, {n:,} readings each)",
            "baseline": f"{BEFORE} (before issue 16) {per_1000['before']:.3f} (phg/bare {per_1000['before'] / bare:.1f}); "
                        f"the bare httpx loop {bare:.3f}"}
