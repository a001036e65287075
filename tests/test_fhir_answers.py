"""Issue 10, findings 2, 4, 11 and 12 for the FHIR destination:

- an OperationOutcome (or any answer) of an odd shape never raises anything but phg's DeliveryError
  types (hypothesis over JSON shapes);
- a reading whose entries cannot be built is Rejected alone, the others go in the transaction (sekmet);
- a server holding two copies of the gateway's Device or of the Patient (made by another client): 412
  on every transaction, so ConfigError naming the identifier and the fix, and the queue stays intact
  (sekmet and Medplum, whose texts differ);
- 409 on a transaction (a conditional-create race another writer won) is posted once more at once.
"""

from __future__ import annotations

import json
import logging
import secrets
from decimal import Decimal

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phg.delivery.fhir import FhirDestination, _json, outcome_text
from phg.delivery.outcome import Delivered, Rejected
from phg.delivery.worker import DeliveryWorker
from phg.errors import AuthError, ConfigError, DeliveryError, PermanentDeliveryError, TransientDeliveryError
from phg.fhir.bundle import Transaction
from phg.fhir.resources import phg_identifier
from phg.model import Gateway, Metric
from phg.outbox import Outbox
from test_mllp_peers import readings_of_every_type

BASE = "http://fhir.test/fhir"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)


def odd(keys: dict) -> st.SearchStrategy:
    """A dict with some of the given keys, each with its expected strategy or any JSON value."""
    return st.fixed_dictionaries({}, optional={k: v | json_values for k, v in keys.items()})


issues = odd({"severity": st.just("error"), "code": st.just("invalid"), "diagnostics": st.text(max_size=20),
              "details": odd({"text": st.text(max_size=20)}),
              "expression": st.lists(st.text(max_size=10), max_size=2), "location": st.lists(st.text(max_size=10))})
operation_outcomes = st.fixed_dictionaries({"resourceType": st.just("OperationOutcome")},
                                           optional={"issue": st.lists(issues | json_values, max_size=3) | json_values})
entries = odd({"response": odd({"status": st.sampled_from(["201 Created", "200 OK", "422", "412"]),
                                "location": st.just("Observation/1/_history/1"), "outcome": operation_outcomes})})
bundles = st.fixed_dictionaries({"resourceType": st.just("Bundle")},
                                optional={"type": st.just("transaction-response"),
                                          "entry": st.lists(entries | json_values, min_size=0, max_size=5)})


@settings(max_examples=300, deadline=None)
@given(body=operation_outcomes | bundles | json_values,
       status=st.sampled_from([200, 201, 400, 409, 412, 422, 500, 503]))
def test_odd_answers_are_delivery_errors_or_outcomes(body, status):
    dest = FhirDestination(httpx.AsyncClient(), BASE, Gateway("02AB7FFFFE000001"))
    response = httpx.Response(status, content=json.dumps(body).encode(), request=httpx.Request("POST", BASE))
    try:
        outcomes = dest._outcomes(dest._answers(response, 5), Transaction({}, [[3], [4]], [0, 1, 2]))
    except DeliveryError:
        return
    assert len(outcomes) == 2 and all(isinstance(o, Delivered | Rejected) for o in outcomes)


@given(json_values | operation_outcomes)
def test_outcome_text_is_always_text(value):
    assert isinstance(outcome_text(value), str)


def test_non_string_expression_is_shown_not_raised():
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"diagnostics": "bad value", "expression": 42}, {"code": 7, "location": "Observation.value"}]}
    assert outcome_text(outcome) == "bad value (at 42); 7 (at Observation.value)"


def transaction_response(request: httpx.Request) -> httpx.Response:
    bundle = json.loads(request.content)
    answers = [{"response": {"status": "201 Created", "location": f"{e['request']['url']}/{i}"}}
               for i, e in enumerate(bundle["entry"])]
    return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": answers})


@pytest.mark.parametrize("conflicts, delivered", [(1, True), (2, False)])
async def test_409_is_posted_once_more_at_once(conflicts, delivered):
    posts = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        if len(posts) <= conflicts:
            return httpx.Response(409, json={"resourceType": "OperationOutcome",
                                             "issue": [{"code": "duplicate", "diagnostics": "already exists"}]})
        return transaction_response(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        dest = FhirDestination(client, BASE, Gateway("02AB7FFFFE000001"))
        if delivered:
            outcomes = await dest.send(readings_of_every_type()[:2])
            assert all(isinstance(o, Delivered) for o in outcomes)
        else:
            with pytest.raises(PermanentDeliveryError, match="409"):
                await dest.send(readings_of_every_type()[:2])
    assert len(posts) == 2 and posts[0].content == posts[1].content


@pytest.mark.peers
async def test_a_reading_that_cannot_be_rendered_is_rejected_alone(sekmet):
    good = readings_of_every_type()
    metric = good[3].metrics[0]
    nan = good[3]._replace(metrics=(Metric(metric.code, metric.time, Decimal("NaN"), metric.unit),))
    async with httpx.AsyncClient(timeout=30) as client:
        dest = FhirDestination(client, sekmet.base_url, Gateway("02AB7FFFFE00A001"))
        outcomes = await dest.send([good[0], nan, good[2]])
    assert isinstance(outcomes[0], Delivered) and isinstance(outcomes[2], Delivered)
    assert isinstance(outcomes[1], Rejected) and "cannot map to FHIR" in outcomes[1].reason


@pytest.mark.peers
@pytest.mark.parametrize("server", ["sekmet", "medplum"])
async def test_duplicate_gateway_device_on_the_server_stops_and_keeps_the_queue(server, request, tmp_path):
    base = request.getfixturevalue(server).base_url
    gateway = Gateway("02AB7FFFFE" + secrets.token_hex(3).upper())
    system, value = phg_identifier(gateway)
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(2):  # another client, without conditional create
            made = await client.post(f"{base}/Device", json={"resourceType": "Device",
                                                             "identifier": [{"system": system, "value": value}]})
            assert made.status_code == 201, made.text
        box = Outbox(tmp_path / "o.sqlite")
        readings = readings_of_every_type()
        box.enqueue("fhir", [(r.key, r.to_json()) for r in readings])
        worker = DeliveryWorker(box, FhirDestination(client, base, gateway), batch_size=4)
        with pytest.raises(ConfigError) as info:
            await worker.run_once()
    assert f"Device with identifier {system}|{value}" in str(info.value)
    assert "merge or delete" in str(info.value)
    assert {i.state for i in box.items("fhir")} == {"queued"} and worker.summary.dead == 0


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"resourceType":"Bundle","total":2}', {"resourceType": "Bundle", "total": 2}),  # orjson
    (b'\xef\xbb\xbf{"total":2}', {"total": 2}),  # a byte-order mark: what orjson refuses, httpx reads
    ('{"total":2}'.encode("utf-16"), {"total": 2}),  # another charset
    (b'{"total":2,"x":NaN}', {"total": 2, "x": float("nan")}),
    (b"<html>bad gateway</html>", None),
    (b"", None),
    (b"[" * 100_000 + b"]" * 100_000, None),  # deeper than either parser goes (3.13's json takes 5,000)
], ids=["utf-8", "bom", "utf-16", "nan", "html", "empty", "deep"])
def test_an_answer_is_read_as_json_or_none(content, expected):
    found = _json(httpx.Response(200, content=content))
    if expected is not None and "x" in expected:  # NaN != NaN: compare its text
        assert json.dumps(found) == json.dumps(expected)
    else:
        assert found == expected


# ------------------------------------------------------------------ review A: answers that are not FHIR's

HTML = httpx.Response(200, headers={"Content-Type": "text/html"}, content=b"<html>Please log in to the proxy</html>")
ERROR_200 = httpx.Response(200, json={"resourceType": "OperationOutcome",
                                      "issue": [{"severity": "error", "code": "exception", "diagnostics": "not stored"}]})


@pytest.mark.parametrize("answer", [HTML, ERROR_200, httpx.Response(201), httpx.Response(204),
                                    httpx.Response(201, json={"resourceType": "OperationOutcome", "id": "x"})],
                         ids=["200 html", "200 error outcome", "bare 201", "204", "201 with another type's id"])
async def test_a_single_create_answered_without_where_it_is_is_retried_not_delivered(answer):
    """Review A finding 1: with single creates (strategy single, or auto once it chose them) any 2xx counted as
    delivered: a proxy's HTML page, an error OperationOutcome, a bare 201 (whose empty location then went into the
    references of the next entries). Now only a Location, or the POSTed type with an id, says the resource is
    stored; anything else is transient: the readings stay queued."""
    posts = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        dest = FhirDestination(client, BASE, Gateway("02AB7FFFFE000001"), strategy="single")
        with pytest.raises(TransientDeliveryError, match=r"without saying where it is"):
            await dest.send(readings_of_every_type()[:1])
    assert len(posts) == 1 and not dest.fit.located


async def test_single_creates_located_by_header_or_body_are_delivered():
    def handler(request: httpx.Request) -> httpx.Response:
        kind = request.url.path.rsplit("/", 1)[-1]
        if kind == "Observation":
            return httpx.Response(201, json={"resourceType": "Observation", "id": "o1"})
        return httpx.Response(201, headers={"Location": f"{BASE}/{kind}/9/_history/1"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        dest = FhirDestination(client, BASE, Gateway("02AB7FFFFE000001"), strategy="single")
        outcomes = await dest.send(readings_of_every_type()[:1])
    assert isinstance(outcomes[0], Delivered) and outcomes[0].result.startswith("Observation/o1")


@pytest.mark.parametrize("strategy", ["single", "transaction"])
async def test_a_redirected_post_stops_the_destination_naming_where_it_points(strategy):
    """Review A finding 6: a 3xx dead-lettered the reading with single creates and was retried for ever as a
    transaction; like a 404 it is about the endpoint: ConfigError saying where it points (no password shown)."""
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(301, headers={"Location": "https://u:s3cr3t@ehr.example.org/fhir/"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        dest = FhirDestination(client, BASE, Gateway("02AB7FFFFE000001"), strategy=strategy)
        with pytest.raises(ConfigError, match=r"answered 301 to a POST, redirecting to https://\*\*\*@ehr") as caught:
            await dest.send(readings_of_every_type()[:1])
    assert "s3cr3t" not in str(caught.value)


async def test_a_transaction_response_entry_without_its_response_status_is_malformed_not_a_refusal():
    """Review A finding 7: entries without `response` (1..1 in R4) read as refused Patient/Device entries, so every
    reading went dead; a malformed answer is transient."""
    def handler(request: httpx.Request) -> httpx.Response:
        entries = json.loads(request.content)["entry"]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response",
                                         "entry": [{} for _ in entries]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        dest = FhirDestination(client, BASE, Gateway("02AB7FFFFE000001"))
        with pytest.raises(TransientDeliveryError, match="malformed transaction-response"):
            await dest.send(readings_of_every_type()[:1])


@pytest.mark.parametrize("status", [401, 403, 404, 405])
async def test_a_refusal_that_stops_the_destination_keeps_the_servers_words_at_debug(status, caplog):
    """Review A finding 5: the server's text of a 401/403/404/405 (which may echo the POSTed values) went into the
    message logged at ERROR and shown as the destination's status (systemd STATUS=); now only at DEBUG."""
    echo = {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": 'cannot process "value":97.123'}]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=echo)

    caplog.set_level(logging.DEBUG, "phg.delivery.fhir")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        dest = FhirDestination(client, BASE, Gateway("02AB7FFFFE000001"))
        with pytest.raises(ConfigError if status >= 404 else AuthError) as caught:
            await dest.send(readings_of_every_type()[:1])
    assert "97.123" not in str(caught.value) and "logged at DEBUG" in str(caught.value)
    assert [r.levelno for r in caplog.records if "97.123" in r.getMessage()] == [logging.DEBUG]
