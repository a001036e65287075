"""The client path of issue 16, each against a baseline measured in the same run (bench/run.py mapping, render,
send; docs/benchmarks.md "5. The client path").

- mapping: build_transaction + to_json of 5,000 readings in batches of 50 (what a delivery batch pays) vs
  `json.dumps` of the same finished Bundle dicts (Decimals as floats: the stdlib cannot write them otherwise).
  Rounds interleaved, the best of each side. Target <= 2.
- render: `phg render` of 5,000 readings (JSON Lines) as a subprocess: median wall time, and the peak RSS
  (VmHWM) of one more run of phg's main in a child. Targets <= 1 s and <= 100 MB; the ratio is to the 1 s budget.
- send: `phg send one.json --no-deliver` (a new reading each run, into an existing outbox, no config file)
  vs `python -c pass`, medians of interleaved runs. Target <= 4.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from phg.demo.sim import simulated_readings
from phg.fhir import build_transaction, to_json
from phg.model import Gateway, PatientRef

PHG = str(Path(sys.executable).parent / "phg")
GATEWAY = Gateway(system_id="02AB7FFFFE00C11A")


def _readings(n: int, patient: str = "bench") -> list:
    start = datetime(2026, 11, 28, 9, tzinfo=UTC)
    return simulated_readings(PatientRef("urn:oid:1.2.3.4.5", patient), start, per_device=(n + 4) // 5)[:n]


def _floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    return float(value) if isinstance(value, Decimal) else value


def _best(work: Callable[[], object]) -> float:
    gc.collect()
    t = time.perf_counter()
    work()
    return time.perf_counter() - t


def bench_mapping(n: int = 5000, batch: int = 50, rounds: int = 7) -> dict:
    batches = [_readings(n)[i:i + batch] for i in range(0, n, batch)]
    finished = [_floats(build_transaction(b, GATEWAY).bundle) for b in batches]

    def mapping() -> None:
        for readings in batches:
            to_json(build_transaction(readings, GATEWAY).bundle)

    def dumps() -> None:
        for bundle in finished:
            json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()

    ours, base = [], []
    for _ in range(rounds):
        ours.append(_best(mapping))
        base.append(_best(dumps))
    observations = sum(len(r.metrics) for b in batches for r in b)
    ratio = min(ours) / min(base)
    return {"name": "mapping (build + encode)", "figure": f"{min(ours) / observations * 1e6:.1f} us/Observation "
            f"({n:,} readings, {observations:,} Observations)",
            "baseline": f"json.dumps of the finished dicts {min(base) / observations * 1e6:.1f} us/Observation",
            "ratio": ratio, "target": "<= 2", "ok": ratio <= 2}


def _env(tmp: str) -> dict[str, str]:
    """A user without a config file: everything under tmp. Bytecode is cached (under tmp), as an installed
    package has it: with PYTHONDONTWRITEBYTECODE=1, as set here for the test suites, every start would
    compile phg's modules from source again."""
    inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**inherited, "PYTHONPYCACHEPREFIX": f"{tmp}/pycache",
            "HOME": tmp, "XDG_CONFIG_HOME": f"{tmp}/config", "XDG_DATA_HOME": f"{tmp}/data",
            "PHG_CONFIG": "", "PHG_OUTBOX": f"{tmp}/outbox.sqlite", "PHG_GATEWAY_SYSTEM_ID": GATEWAY.system_id,
            "PHG_FHIR_BASE_URL": ""}


def _run(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


# phg's own main in a child that writes its peak RSS (VmHWM, which exec resets, unlike ru_maxrss of a
# forked child: that counts the parent's pages shared at fork) to the file named by its first argument.
_PEAK = """import atexit, sys
out = sys.argv[1]
def peak():
    with open("/proc/self/status") as status:
        open(out, "w").write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(peak)
sys.argv = ["phg", *sys.argv[2:]]
from phg.cli import main
main()
"""


def bench_render(n: int = 5000, runs: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path, peak_file = Path(tmp) / "readings.jsonl", Path(tmp) / "peak"
        path.write_text("\n".join(r.to_json() for r in _readings(n)) + "\n")
        env = _env(tmp)
        seconds = statistics.median(_run([PHG, "render", str(path)], env) for _ in range(runs))
        _run([sys.executable, "-c", _PEAK, str(peak_file), "render", str(path)], env)
        peak = int(peak_file.read_text()) / 1024
    return {"name": f"phg render {n:,}", "figure": f"{seconds:.2f} s, peak RSS {peak:.0f} MiB",
            "baseline": "budget 1 s, 100 MB", "ratio": seconds, "target": "<= 1 s",
            "ok": seconds <= 1 and peak <= 100}


def bench_send(runs: int = 11) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = _env(tmp)
        files = []
        for n, reading in enumerate(_readings(runs + 1, "send")):
            files.append(Path(tmp) / f"r{n}.json")
            files[-1].write_text(reading.to_json())
        _run([PHG, "send", str(files[0]), "--no-deliver"], env)  # the outbox exists, as it does for a user
        ours, base = [], []
        for path in files[1:]:
            base.append(_run([sys.executable, "-c", "pass"], env))
            ours.append(_run([PHG, "send", str(path), "--no-deliver"], env))
    ratio = statistics.median(ours) / statistics.median(base)
    return {"name": "phg send one --no-deliver", "figure": f"{statistics.median(ours) * 1000:.0f} ms",
            "baseline": f"python -c pass {statistics.median(base) * 1000:.0f} ms", "ratio": ratio,
            "target": "<= 4", "ok": ratio <= 4}
