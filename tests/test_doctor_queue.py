"""`phg doctor` on the JetStream queue (issue 15): the servers reached and their version (a warning below
2.10.14), phg's streams led and replicated as configured, each destination's consumer (a warning until a
worker has leased from it). On a real 3-node cluster (tests/nats_cluster.py)."""

from __future__ import annotations

import uuid

from nats_cluster import nats_cluster  # noqa: F401  (a fixture)
from phg.config import load_config
from phg.doctor import run_checks
from phg.intake import Intake
from phg.outbox import open_queue
from test_routes import reading


def config(cluster, tmp_path, replicas: int = 3):
    return load_config(env={}, document={
        "outbox": {"path": str(tmp_path / "o.sqlite")},
        "destinations": {"clinic_a": {"type": "fhir", "base_url": "http://127.0.0.1:9/fhir"}},
        "queue": {"engine": "jetstream", "servers": cluster.urls, "stream_replicas": replicas,
                  "prefix": f"d{uuid.uuid4().hex[:10]}"}})


def queue_checks(results: list[dict]) -> list[tuple[str, str]]:
    return [(r["status"], r["what"]) for r in results if r["step"] == "queue"]


async def test_doctor_reports_server_streams_and_consumers(nats_cluster, tmp_path):  # noqa: F811
    settings = config(nats_cluster, tmp_path)
    results: list[dict] = []
    await run_checks(settings, lambda line: None, results=results)
    found = queue_checks(results)
    assert found[0][0] == "ok" and found[0][1].startswith("JetStream reached at nats://127.0.0.1:")
    with open_queue(settings) as queue:
        supported = queue.inspect(["clinic_a"]).server_supported
    assert any(status == "warn" and "older than 2.10.14" in what for status, what in found) == (not supported)
    prefix = settings.queue.prefix
    assert ("ok", f"stream {prefix}_queue: 0 message(s), 3 replica(s)") in [(s, w.split(", leader")[0])
                                                                            for s, w in found]
    assert ("warn", "destination clinic_a: no worker has leased from it yet (its consumer is made by the first "
            "`phg run --role worker` or `all`)") in found

    with open_queue(settings) as queue:  # an intake stores two readings, a worker leases one
        Intake(queue, settings.destination_names).store([reading(spo2="97"), reading(spo2="98")])
        assert len(queue.lease("clinic_a", 1, 30)) == 1
        results.clear()
        await run_checks(settings, lambda line: None, results=results)
    consumer = [what for status, what in queue_checks(results) if what.startswith("destination clinic_a")]
    assert consumer == ["destination clinic_a: 1 waiting, 1 being delivered, lease 30 s"]

