"""What `phg send --no-deliver` and `phg render` load and write (issue 16): one reading is queued without
importing the HTTP client, the event loop or the JSON Schema validator, and render writes exactly the
bytes delivery would POST for the same readings."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

from phg.demo.sim import simulated_readings
from phg.fhir import build_transaction, to_json
from phg.model import Gateway, PatientRef, from_canonical_json
from test_cli import PHG, READINGS, env  # noqa: F401  (env: the fixture of a user without config)

# What queueing one reading must not load (issue 16: `phg send --no-deliver` at most ~4x the interpreter's
# start-up): the HTTP client, the event loop, the JSON Schema validator, rich; and phg's own delivery side:
# the FHIR and HL7 mappings, the destinations, auth, the JetStream queue, metrics, orjson, TLS and sockets.
HEAVY = ("httpx", "asyncio", "jsonschema", "rich", "phg.fhir", "phg.hl7v2", "phg.delivery", "phg.auth", "phg.daemon",
         "phg.outbox.jetstream", "phg.metrics", "prometheus_client", "orjson", "ssl", "socket", "concurrent.futures",
         "importlib.metadata", "importlib.resources")


def test_send_no_deliver_imports_nothing_heavy(tmp_path, env):  # noqa: F811
    path = tmp_path / "one.json"
    path.write_text(READINGS[0].to_json())
    script = ("import atexit, sys\n"
              f"atexit.register(lambda: print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr))\n"
              f"sys.argv = ['phg', 'send', {str(path)!r}, '--no-deliver']\n"
              "from phg.cli import main\nmain()\n")
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "queued 1 reading(s)" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_render_writes_the_bytes_delivery_sends(tmp_path, env):  # noqa: F811
    """Delivery builds from the stored canonical JSON (from_canonical_json), render from the document:
    the same bundles, byte for byte, batch_size readings each."""
    readings = READINGS + simulated_readings(PatientRef("urn:oid:1.2.3.4.5", "render"),
                                             datetime(2026, 11, 29, 9, tzinfo=UTC), per_device=12)
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(r.to_json() for r in readings) + "\n")
    done = subprocess.run([PHG, "render", str(path)], env={**os.environ, **env}, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    gateway = Gateway(system_id="02AB7FFFFE00C11A")
    stored = [from_canonical_json(r.to_json(), "outbox") for r in readings]
    assert done.stdout.split(b"\n")[:-1] == [to_json(build_transaction(stored[i:i + 50], gateway).bundle)
                                             for i in range(0, len(stored), 50)]
