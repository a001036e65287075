"""`phg queue ls|show|retry|purge` and the API's /v1/queue, /v1/items/{id} and retry on both engines
(issue 15): the same commands and answers on the SQLite outbox and on a 3-node JetStream cluster, where
a dead reading queued again waits under a new id."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from nats_cluster import nats_cluster  # noqa: F401  (a fixture: the JetStream engine's cluster)
from phg.cli import main
from phg.config import load_config
from phg.intake import Intake
from phg.outbox import open_queue
from phg.service.app import ServiceContext, create_app
from test_routes import CLINIC_A, reading


@pytest.fixture(params=["sqlite", "jetstream"])
def config_file(request, tmp_path) -> Path:
    """A config with one destination (never reached here) on the engine of the parameter."""
    queue = ""
    if request.param == "jetstream":
        cluster = request.getfixturevalue("nats_cluster")
        queue = (f'[queue]\nengine = "jetstream"\nservers = {json.dumps(cluster.urls)}\n'
                 f'prefix = "c{uuid.uuid4().hex[:10]}"\n')
    path = tmp_path / "phg.toml"
    path.write_text(f'[outbox]\npath = "{tmp_path / "o.sqlite"}"\n[api]\n'
                    '[destinations.clinic_a]\ntype = "fhir"\nbase_url = "http://127.0.0.1:9/fhir"\n' + queue)
    return path


def dead_letter(path: Path, n: int = 3) -> int:
    """`n` readings stored through the Intake, the first leased and dead with a reason; its id."""
    config = load_config(path, env={})
    with open_queue(config) as queue:
        Intake(queue, config.destination_names).store([reading(CLINIC_A, f"A-{i}") for i in range(n)])
        [item] = queue.lease("clinic_a", 1, 30)
        queue.dead([item.id], "HTTP 422: Observation.subject: no such patient", token=item.lease)
        return item.id


def phg(path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(path), "queue", *args])
    return result.exit_code, result.output


def test_queue_commands_on_both_engines(config_file):
    dead = dead_letter(config_file)
    code, out = phg(config_file, "ls", "--state", "dead", "--json")
    listing = json.loads(out)
    assert code == 0 and listing["counts"]["dead"] == 1 and listing["counts"]["queued"] == 2
    [row] = listing["items"]
    assert (row["id"], row["destination"], row["state"], row["patient"]) == (dead, "clinic_a", "dead", f"{CLINIC_A}|A-0")
    assert row["last_error"] == "HTTP 422: Observation.subject: no such patient" and row["type"] == "Oxygen saturation"

    code, out = phg(config_file, "show", str(dead), "--json")
    shown = json.loads(out)
    assert code == 0 and shown["state"] == "dead" and shown["payload"]["patient"]["value"] == "A-0"
    assert "lease" not in shown

    code, out = phg(config_file, "retry", str(dead))
    engine = load_config(config_file, env={}).queue.engine
    if engine == "sqlite":
        assert (code, out) == (0, f"item {dead} queued\n")
        again = dead
    else:  # published anew: a new id
        assert code == 0 and out.startswith(f"item {dead} queued as item "), out
        again = int(out.split()[-1])
        assert again != dead and phg(config_file, "show", str(dead))[0] == 1
    assert json.loads(phg(config_file, "ls", "--json")[1])["counts"] == {"queued": 3, "inflight": 0, "delivered": 0,
                                                                          "dead": 0}
    assert json.loads(phg(config_file, "show", str(again), "--json")[1])["state"] == "queued"
    assert phg(config_file, "retry", "987654")[0] == 1

    dead_letter(config_file, n=1)  # a known reading: the queue keeps one item of it, dead now
    code, out = phg(config_file, "purge", "--dead")
    assert code == 0 and out == "removed 1 dead item(s)\n"
    assert json.loads(phg(config_file, "ls", "--json")[1])["counts"]["dead"] == 0


def test_the_api_queue_endpoints_on_both_engines(config_file):
    dead = dead_letter(config_file)
    config = load_config(config_file, env={})
    with open_queue(config) as queue:
        ctx = ServiceContext(config, queue, Intake(queue, config.destination_names))
        client = TestClient(create_app(ctx), base_url="http://127.0.0.1:8470", client=("127.0.0.1", 50000))
        counts = client.get("/v1/queue").json()
        assert counts["destinations"]["clinic_a"]["dead"] == 1 and counts["total"]["queued"] == 2
        item = client.get(f"/v1/items/{dead}").json()
        assert item["state"] == "dead" and item["last_error"].startswith("HTTP 422") and "payload" not in item
        retried = client.post(f"/v1/items/{dead}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["state"] == "queued" and retried.json()["attempts"] == 0
        assert client.get(f"/v1/items/{retried.json()['id']}").json()["state"] == "queued"
        assert client.post("/v1/items/987654/retry").status_code == 404
        assert client.get("/v1/queue").json()["total"]["dead"] == 0
