"""Issue 16, batches that fit the server: the entry limit learned from Medplum's refusal, [fhir]
max_entries, transactions in parts whose references stay resolvable, single conditional creates, and
the strategy chosen by measurement.

Against the real Medplum router (peers fixtures): a reading of 6 metrics (10 entries with its Patient,
Devices and Coincident Time Stamp; Medplum takes at most 8 with a conditional create) is delivered, not
dead-lettered; after the one refusal that teaches the limit, no POST is refused again.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

import httpx
import pytest

from phg.config import load_config
from phg.daemon import deliver
from phg.delivery import fhir
from phg.delivery.fhir import FhirDestination
from phg.delivery.outcome import Delivered
from phg.delivery.worker import DeliveryWorker
from phg.demo.sim import simulated_readings
from phg.model import Gateway, Reading, parse_reading
from phg.outbox import Outbox
from test_flow_fhir import START, count_everywhere, enqueue, make_config, patient

GATEWAY = Gateway(system_id="02AB7FFFFE00C1C1", serial="TEST-GW")
SCALE = {"system_id": "0011223344556677", "specializations": [{"code": 528399, "version": 2}]}
CLOCK = {"gateway_time": "2026-11-28T09:10:00.000+01:00", "device_time": "2026-11-28T09:10:02.000+01:00"}


def six_metrics(who: dict | None = None) -> Reading:
    """A scale uploading six stored weights, with its clock: Patient, 2 Devices, 1 CTS and 6 Observations."""
    metrics = [{"type": "body_weight", "value": f"72.{i}0", "unit": "kg", "time": f"2026-11-28T0{i}:00:00+01:00"}
               for i in range(1, 7)]
    who = who or {"system": "urn:oid:1.2.3.4.5", "value": f"pt-{uuid.uuid4().hex[:12]}"}
    doc = {"device": SCALE, "patient": who, "metrics": metrics, "clock": CLOCK}
    return parse_reading(json.loads(json.dumps(doc), parse_float=Decimal))


def counting_client() -> tuple[httpx.AsyncClient, list[int]]:
    """A client that records the status of every answer."""
    statuses: list[int] = []

    async def record(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    return httpx.AsyncClient(timeout=30, event_hooks={"response": [record]}), statuses


# ------------------------------------------------------------------------------------------ real Medplum


@pytest.mark.peers
def test_medplum_six_metric_reading_is_delivered_not_dead(medplum_gate, oauth, tmp_path):
    """Through the SMART gate, as `phg run` sends (config, outbox, worker): today's code dead-letters it."""
    config = make_config(tmp_path, medplum_gate.base_url, oauth)
    reading = six_metrics()
    with Outbox(config.outbox_path) as outbox:
        enqueue(outbox, [reading])
        summary = asyncio.run(deliver(config, outbox, until_idle=True))
        assert (summary.delivered, summary.dead) == (1, 0)
        [item] = outbox.items(state="delivered")
        assert item.result is not None and len(item.result.split()) == 6
    assert count_everywhere(medplum_gate.upstream, [reading]) == [1] * 6


@pytest.mark.peers
@pytest.mark.parametrize("strategy", ["transaction", "auto"])
def test_medplum_learned_limit_stops_refusals(medplum, strategy, tmp_path):
    """One refusal teaches the limit (8); every later batch, whatever its size, is sent within it at
    once: no refused POST again, nothing dead, every Observation once on the server."""
    readings = simulated_readings(patient(), START, per_device=8) + [six_metrics()]

    async def run(outbox: Outbox) -> tuple[FhirDestination, list[int]]:
        client, statuses = counting_client()
        async with client:
            destination = FhirDestination(client, medplum.base_url, GATEWAY, strategy=strategy)
            worker = DeliveryWorker(outbox, destination, batch_size=10)
            summary = await worker.run(until_idle=True)
            assert (summary.delivered, summary.dead) == (len(readings), 0)
        return destination, statuses

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        enqueue(outbox, readings)
        destination, statuses = asyncio.run(run(outbox))
    if strategy == "transaction":
        assert statuses.count(400) == 1 and statuses[0] == 400, statuses
    else:  # refused once if ever a whole batch went as transactions (the samples, of 8, fit), never twice
        assert statuses.count(400) <= 1, statuses
        assert set(destination.fit.cost) == {"transaction", "single"}
    assert len(destination.fit.refused_at) == statuses.count(400)
    assert destination.fit.max_entries == (fhir.MEDPLUM_ENTRIES if statuses.count(400) else None)
    assert count_everywhere(medplum.base_url, readings) == [1] * sum(len(r.metrics) for r in readings)


ATTEMPTS = 3  # runs of a timing-based choice before a test says it is wrong (see the sekmet test)


def deliver_auto(base_url: str, readings: list, tmp_path) -> tuple[FhirDestination, list[int]]:
    """The readings delivered under strategy auto in batches of 30, and what each POST carried: a Bundle's
    number of entries, 0 for a single resource."""
    async def run(outbox: Outbox) -> tuple[FhirDestination, list[int]]:
        sizes: list[int] = []

        async def record(request: httpx.Request) -> None:
            body = json.loads(request.content)
            sizes.append(len(body["entry"]) if body.get("resourceType") == "Bundle" else 0)

        # 120 s, as bench/delivery.py's: on a loaded machine Medplum's router can take over 30 s to refuse a
        # transaction of 38 entries (CI, 2026-12-01), and a timeout teaches no limit, so the next POST is over it too
        async with httpx.AsyncClient(timeout=120, event_hooks={"request": [record]}) as client:
            destination = FhirDestination(client, base_url, GATEWAY, strategy="auto")
            summary = await DeliveryWorker(outbox, destination, batch_size=30).run(until_idle=True)
            assert (summary.delivered, summary.dead) == (len(readings), 0)
        return destination, sizes

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        enqueue(outbox, readings)
        return asyncio.run(run(outbox))


@pytest.mark.peers
def test_medplum_auto_chooses_single_posts_after_one_sample(medplum, tmp_path):
    """On Medplum's router (a store that is not empty) single conditional creates cost less per entry than
    transactions of 8: auto ends up sending singles, and transactions in its samples (SAMPLE Observations,
    one transaction within Medplum's limit); at most one POST is refused as too many."""
    for attempt in range(ATTEMPTS):
        readings = simulated_readings(patient(), START, per_device=12)  # 60 readings: 2 batches of 30
        destination, sizes = deliver_auto(medplum.base_url, readings, tmp_path / str(attempt))
        bundles = [n for n in sizes if n]
        assert bundles[0] == fhir.SAMPLE and sum(1 for n in bundles if n > fhir.MEDPLUM_ENTRIES) <= 1, bundles
        assert count_everywhere(medplum.base_url, readings) == [1] * sum(len(r.metrics) for r in readings)
        if destination.fit.cost["single"] < destination.fit.cost["transaction"]:
            return
    pytest.fail(f"transactions timed cheaper than single POSTs on Medplum in {ATTEMPTS} runs: {destination.fit.cost}")


@pytest.mark.peers
def test_sekmet_auto_chooses_transactions_after_one_sample(sekmet, tmp_path):
    """On sekmet-fhir a transaction costs far less per entry than single POSTs: each batch sends SAMPLE
    Observations as single POSTs in its sample (both batches here: 1 and 2 are compared), the rest as one
    transaction. The choice rests on timings: a stall of the machine during one sample can reverse it
    (seen under CI load), so the claim is that auto chooses transactions in one of ATTEMPTS runs (a
    comparison that never favoured the cheaper way, or a cost kept under the wrong way, fails every run)."""
    for attempt in range(ATTEMPTS):
        readings = simulated_readings(patient(), START, per_device=12)  # 60 readings: 2 batches of 30
        destination, sizes = deliver_auto(sekmet.base_url, readings, tmp_path / str(attempt))
        assert count_everywhere(sekmet.base_url, readings) == [1] * sum(len(r.metrics) for r in readings)
        if destination.fit.cost["transaction"] < destination.fit.cost["single"] and transactions_after_samples(sizes):
            return
    pytest.fail(f"auto did not choose transactions on sekmet in {ATTEMPTS} runs: {destination.fit.cost}, {sizes}")


def transactions_after_samples(sizes: list[int]) -> bool:
    """The shared entries first, as single POSTs; then in each of the two batches its samples (SAMPLE
    Observations in one transaction, SAMPLE as single POSTs) and the rest as one transaction."""
    shared = sizes.index(fhir.SAMPLE) if fhir.SAMPLE in sizes else 0
    sample = [fhir.SAMPLE] + [0] * fhir.SAMPLE
    after = sizes[shared:]
    return (sizes[:shared] == [0] * shared and len(after) == 2 * (len(sample) + 1)
            and after[:len(sample)] == after[len(sample) + 1:-1] == sample and after[len(sample)] > 0 and after[-1] > 0)


@pytest.mark.peers
def test_sekmet_single_conditional_creates_arrive_once(sekmet, tmp_path):
    """strategy = "single" on sekmet-fhir: every resource its own conditional create, references to the
    ids the server answered; sending the same readings again adds nothing."""
    readings = simulated_readings(patient(), START, per_device=2) + [six_metrics()]

    async def run() -> list:
        async with httpx.AsyncClient(timeout=30) as client:
            return await FhirDestination(client, sekmet.base_url, GATEWAY, strategy="single").send(readings)

    for _ in range(2):
        outcomes = asyncio.run(run())
        assert all(isinstance(o, Delivered) and o.result.startswith("Observation/") for o in outcomes), outcomes
    assert count_everywhere(sekmet.base_url, readings) == [1] * sum(len(r.metrics) for r in readings)


# ------------------------------------------------------------------------------------------ unit (mock server)


def answering(posted: list[httpx.Request], limit: int | None = None):
    """A mock FHIR server: transactions answered entry by entry (refused as Medplum does above `limit`
    entries), single POSTs answered 201 with a Location."""
    ids = iter(range(1, 10**6))

    def handle(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        body = json.loads(request.content)
        if body.get("resourceType") != "Bundle":
            return httpx.Response(201, headers={"Location": f"{request.url.path.rsplit('/', 1)[1]}/{next(ids)}"})
        entries = body["entry"]
        if limit is not None and len(entries) > limit:
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": [{
                "severity": "error", "code": "invalid",
                "details": {"text": "Transaction requires strict isolation but has too many entries"}}]})
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "201 Created", "location": f"{e['request']['url']}/{next(ids)}/_history/1"}}
            for e in entries]})
    return handle


def send(readings: list[Reading], posted: list[httpx.Request], limit: int | None = None, **options):
    async def run() -> tuple[list, FhirDestination]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answering(posted, limit))) as client:
            destination = FhirDestination(client, "http://fhir.test/fhir", GATEWAY, **options)
            return [await destination.send(readings) for _ in range(2)], destination
    return asyncio.run(run())


def references(value) -> list[str]:
    if isinstance(value, dict):
        return [v for k, v in value.items() if k == "reference"] + [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def test_parts_within_max_entries_keep_references_resolvable():
    """max_entries = 4: each transaction holds at most 4 entries; a reference is a urn:uuid of its own
    part or the literal Type/id the server answered for an earlier part (never a dangling urn:uuid)."""
    posted: list[httpx.Request] = []
    (first, second), _ = send([six_metrics()], posted, fit=fhir.Fit(max_entries=4))
    assert all(isinstance(o, Delivered) for o in first + second)
    bundles = [json.loads(r.content) for r in posted]
    assert [len(b["entry"]) for b in bundles] == [4, 4, 2] * 2
    for bundle in bundles:
        own = {e["fullUrl"] for e in bundle["entry"]}
        for ref in references(bundle):
            assert ref in own or (not ref.startswith("urn:") and ref.count("/") == 1), ref


def test_parts_send_the_patient_and_devices_first():
    """Issue 17 (server limits): split across transactions, the first part holds the Patient, the
    device's and the gateway's Device and the Coincident Time Stamp, before any measurement refers to them."""
    posted: list[httpx.Request] = []
    send([six_metrics()], posted, fit=fhir.Fit(max_entries=4))
    kinds = [[(e["resource"]["resourceType"], e["resource"].get("code", {}).get("coding", [{}])[0].get("code"))
              for e in json.loads(r.content)["entry"]] for r in posted[:3]]
    assert kinds[0] == [("Patient", None), ("Device", None), ("Device", None), ("Observation", "67975")]  # CTS
    assert kinds[1:] == [[("Observation", "188736")] * 4, [("Observation", "188736")] * 2]  # the 6 weights


def test_refusal_teaches_limit_and_is_resent_at_once():
    """The refused transaction of 10 entries is sent again at once in parts of 8 at most; the next batch
    goes within the limit from the start (one refusal in all)."""
    posted: list[httpx.Request] = []
    (first, second), destination = send([six_metrics()], posted, limit=8)
    assert all(isinstance(o, Delivered) for o in first + second)
    assert destination.fit.max_entries == 8
    assert [len(json.loads(r.content)["entry"]) for r in posted] == [10, 8, 2, 8, 2]


def test_a_limit_below_medplums_is_learned_too():
    """A server that takes fewer: each refusal lowers the limit by one (the answer does not say how
    many), once per process; the next batch is not refused."""
    posted: list[httpx.Request] = []
    (first, second), destination = send([six_metrics()], posted, limit=3)
    assert all(isinstance(o, Delivered) for o in first + second)
    assert destination.fit.max_entries == 3
    assert [len(json.loads(r.content)["entry"]) for r in posted] == [10, 8, 7, 6, 5, 4, 3, 3, 3, 1, 3, 3, 3, 1]


def test_single_posts_conditional_creates_with_literal_references():
    posted: list[httpx.Request] = []
    (first, _), _ = send([six_metrics()], posted, strategy="single")
    assert all(isinstance(o, Delivered) for o in first)
    assert len(posted) == 10 + 6  # the second batch: its Patient, Devices and clock are known, not sent again
    assert all(r.headers["If-None-Exist"].startswith("identifier=") for r in posted)
    for request in posted:
        assert all(not ref.startswith("urn:") for ref in references(json.loads(request.content))), request.content


def test_auto_samples_until_both_ways_are_timed_then_keeps_the_cheaper_and_rechecks():
    destination = FhirDestination(httpx.AsyncClient(), "http://fhir.test/fhir", GATEWAY, strategy="auto")
    assert destination.way() == "sample"  # until both are timed
    destination.fit.cost["transaction"] = 0.002
    assert destination.way() == "sample"
    destination.fit.cost["single"] = 0.001
    ways = {n: destination.way() for n in range(3, 3 + 2 * fhir.RECHECK)}  # batch numbers 3, 4, ...
    assert [n for n, way in ways.items() if way == "sample"] == [4, 8, 16, 32, 64, 128, 200, 400]
    assert {way for way in ways.values() if way != "sample"} == {"single"}


def slow(handle, bundle_seconds: float, single_seconds: float):
    """`handle` (answering) behind a delay per POST: a transaction of any size, or a single resource."""
    async def delayed(request: httpx.Request) -> httpx.Response:
        single = json.loads(request.content).get("resourceType") != "Bundle"
        await asyncio.sleep(single_seconds if single else bundle_seconds)
        return handle(request)
    return delayed


def sampled(bundle_seconds: float, single_seconds: float) -> tuple[list[httpx.Request], list, FhirDestination]:
    """Two batches of 40 readings (72 Observations, 7 shared entries) under "auto" against a server
    whose answers take the given time per transaction and per single POST."""
    posted: list[httpx.Request] = []
    readings = simulated_readings(patient(), START, per_device=8)

    async def run() -> tuple[list, FhirDestination]:
        transport = httpx.MockTransport(slow(answering(posted), bundle_seconds, single_seconds))
        async with httpx.AsyncClient(transport=transport) as client:
            destination = FhirDestination(client, "http://fhir.test/fhir", GATEWAY, strategy="auto")
            return [await destination.send(readings) for _ in range(2)], destination
    outcomes, destination = asyncio.run(run())
    assert all(isinstance(o, Delivered) for batch in outcomes for o in batch)
    return posted, outcomes, destination


def shape(posted: list[httpx.Request]) -> list[int]:
    """Each POST: the entries of a transaction, or 0 for a single resource."""
    return [len(body["entry"]) if body.get("resourceType") == "Bundle" else 0
            for body in map(json.loads, (r.content for r in posted))]


def test_auto_compares_equal_samples_then_sends_the_rest_the_cheaper_way():
    """Where a single POST costs far less than a transaction: the first batch sends its shared entries
    as singles, SAMPLE Observations in one transaction and the next SAMPLE as singles, then the rest as
    singles; the second batch is compared again, without its known Patient and Devices; the third goes
    as singles."""
    posted, outcomes, destination = sampled(bundle_seconds=0.2, single_seconds=0.001)
    assert shape(posted) == [0] * 7 + [fhir.SAMPLE] + [0] * (72 - fhir.SAMPLE) + [fhir.SAMPLE] + [0] * (72 - fhir.SAMPLE)
    assert destination.fit.cost["single"] < destination.fit.cost["transaction"]
    assert destination.way() == "single"
    for request in posted[7:]:  # every reference to a shared entry is its Type/id on the server
        assert all(not ref.startswith("urn:") for ref in references(json.loads(request.content)))


def test_auto_sends_the_rest_as_one_transaction_where_that_is_cheaper():
    posted, _, destination = sampled(bundle_seconds=0.001, single_seconds=0.02)
    rest = 72 - 2 * fhir.SAMPLE
    batch = [fhir.SAMPLE] + [0] * fhir.SAMPLE + [rest]
    assert shape(posted) == [0] * 7 + batch + batch  # the second batch compared again, its shared entries known
    assert destination.way() == "transaction"
    rest_bundle = json.loads(posted[7 + 1 + fhir.SAMPLE].content)
    own = {e["fullUrl"] for e in rest_bundle["entry"]}
    assert all(ref in own or ref.count("/") == 1 for ref in references(rest_bundle))


def test_auto_samples_a_small_batch_in_halves():
    """Six Observations: samples of three each way, nothing left for the cheaper way."""
    posted: list[httpx.Request] = []
    send([six_metrics()], posted, strategy="auto")
    assert shape(posted)[:8] == [0] * 4 + [3] + [0] * 3  # Patient, 2 Devices, clock; 3 in a transaction; 3 single
    assert json.loads(posted[0].content)["resourceType"] == "Patient"


def test_auto_sends_a_batch_without_two_observations_as_one_transaction():
    """Nothing to compare on: one transaction, untimed, and the next batch is sampled again."""
    posted: list[httpx.Request] = []
    one = parse_reading(json.loads(json.dumps({"device": SCALE, "metrics": [
        {"type": "body_weight", "value": "70.5", "unit": "kg", "time": "2026-11-28T09:00:00+01:00"}],
        "patient": {"system": "urn:oid:1.2.3.4.5", "value": "pt-one"}}), parse_float=Decimal))
    (first, second), destination = send([one], posted, strategy="auto")
    assert all(isinstance(o, Delivered) for o in first + second)
    assert shape(posted) == [4, 4] and destination.fit.cost == {}
    assert destination.way() == "sample"


def test_encrypted_destination_sends_transactions_only():
    destination = FhirDestination(httpx.AsyncClient(), "http://fhir.test/fhir", GATEWAY,
                                  envelope=object(), strategy="auto")  # type: ignore[arg-type]
    assert {destination.way() for _ in range(fhir.RECHECK + 1)} == {"transaction"}


def test_config_rows():
    base = {"gateway": {"system_id": GATEWAY.system_id}, "fhir": {"base_url": "https://fhir.test/fhir"}}
    [settings] = load_config(env={}, document=base).destinations
    assert (settings.max_entries, settings.strategy) == (0, "auto")
    document = base | {"fhir": {"base_url": "https://fhir.test/fhir", "max_entries": 8, "strategy": "single"}}
    [settings] = load_config(env={}, document=document).destinations
    assert (settings.max_entries, settings.strategy) == (8, "single")
    table = {"type": "fhir", "base_url": "https://x.test/fhir", "strategy": "transaction", "max_entries": 20}
    found = load_config(env={}, document=base | {"destinations": {"x": table}}).destinations
    assert [(s.max_entries, s.strategy) for s in found if s.name == "x"] == [(20, "transaction")]


@pytest.mark.parametrize("bad", [{"strategy": "fastest"}, {"max_entries": -1}])
def test_config_rows_refuse_bad_values(bad):
    from phg.errors import ConfigError

    with pytest.raises(ConfigError, match="fhir"):
        load_config(env={}, document={"gateway": {"system_id": GATEWAY.system_id},
                                      "fhir": {"base_url": "https://fhir.test/fhir"} | bad})



def test_what_is_learned_lasts_for_the_process():
    """Every delivery run of a process (each `phg send`, phg run's worker) starts from what an earlier
    one learned about that destination; [fhir] max_entries is where it starts."""
    document = {"gateway": {"system_id": GATEWAY.system_id},
                "fhir": {"base_url": f"https://{uuid.uuid4().hex}.test/fhir", "max_entries": 6}}
    [settings] = load_config(env={}, document=document).destinations
    fit = fhir.fit_of(settings)
    assert fit.max_entries == 6 and fhir.fit_of(settings) is fit


def test_single_sends_known_resources_again_when_the_server_lost_one():
    """A Patient deleted on the server after phg sent it: the Observation referring to it is refused, so
    what this process remembered is forgotten and the batch goes whole (Patient first): delivered."""
    posted: list[httpx.Request] = []
    handle = answering(posted)
    deleted: set[str] = set()

    def forgetful(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Observation") and set(references(json.loads(request.content))) & deleted:
            posted.append(request)
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "invalid", "diagnostics": "reference not found"}]})
        return handle(request)

    async def run() -> list:
        async with httpx.AsyncClient(transport=httpx.MockTransport(forgetful)) as client:
            destination = FhirDestination(client, "http://fhir.test/fhir", GATEWAY, strategy="single")
            reading = six_metrics()
            await destination.send([reading])
            deleted.update(v for v in destination.fit.located.values() if v.startswith("Patient/"))
            return await destination.send([reading])

    outcomes = asyncio.run(run())
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert [r.url.path.rsplit("/", 1)[1] for r in posted[10:12]] == ["Observation", "Patient"]
