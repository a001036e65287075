"""Issue 10, findings 2, 3, 7 and 12 for the HL7 v2 destinations (MLLP, HL7 over HTTP, SOAP), against
the real receivers the other HL7 suites use (python-hl7's MLLP server, the spyne PCD-01 SOAP receiver, the
WSGI HL7-over-HTTP receiver):

- readings an older phg stored (bypassing today's intake) with control characters in patient.value, a
  value of 1e999999999 or one longer than NM allows, between good readings: one worker round delivers
  every other reading once and the poison goes dead with its reason; control characters that reach the
  renderer travel escaped (\\X0B\\, HL7 v2.6 ch. 2.7);
- a destination that cannot be connected to is unreachable (reached=False), not "answered";
- a Retry-After in the middle of an HL7-over-HTTP batch ends the batch there and holds the destination.
"""

from __future__ import annotations

import io
import json

import hl7
import pytest

from hl7_destinations import http_destination, mllp_destination, soap_destination
from phg.config import MllpSettings
from phg.delivery import worker as worker_module
from phg.delivery.hl7 import Hl7Destination
from phg.delivery.outcome import Deferred, Delivered, Rejected
from phg.delivery.worker import DeliveryWorker
from phg.errors import TransientDeliveryError
from phg.outbox import Outbox
from test_hl7v2_http import HttpReceiver, wsgi_server
from test_mllp_peers import GATEWAY, python_hl7_server, readings_of_every_type
from test_soap import Dec, dec_server


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(worker_module, "backoff", lambda attempts, base=1.0, cap=300.0: 0.0)


def stored(reading, key: str, patient_value: str | None = None, value: str | None = None) -> tuple[str, str]:
    """An outbox row as an older phg would have stored it (no intake bounds)."""
    doc = json.loads(reading.to_json())
    if patient_value is not None:
        doc["patient"]["value"] = patient_value
    if value is not None:
        doc["metrics"][0]["value"] = value
    return key, json.dumps(doc)


def poisoned_queue(box: Outbox, name: str) -> None:
    good = readings_of_every_type()
    box.enqueue(name, [(r.key, r.to_json()) for r in good[:2]] + [
        stored(good[3], "control", patient_value="ab\x0bcd\x1c\x00"),
        stored(good[3], "huge", value="1e999999999"),
        stored(good[3], "long", value="1e100"),  # a number the model holds, but longer than NM's 16 characters
    ] + [(r.key, r.to_json()) for r in good[4:6]])


def assert_poison_isolated(box: Outbox, name: str, received: list[str]) -> None:
    """Every good reading delivered once; the poison dead with its reason (refused when the stored row is
    read back, or by the renderer), or, for the control characters, delivered escaped."""
    items = {i.key: i for i in box.items(name)}
    assert items["long"].state == "dead" and "NM" in items["long"].last_error
    assert items["huge"].state == "dead" and "exponent" in items["huge"].last_error
    assert items["control"].state == "delivered" or "U+000B" in items["control"].last_error
    delivered = [i for k, i in items.items() if k not in ("long", "huge", "control")]
    assert {i.state for i in delivered} == {"delivered"}, [(i.state, i.last_error) for i in items.values()]
    assert len(received) == len(set(received)) == sum(i.state == "delivered" for i in items.values())


@pytest.mark.peers
async def test_soap_control_character_and_huge_exponent_do_not_stop_the_queue(tmp_path):
    dec = Dec()
    with dec_server(dec) as url:
        dest = soap_destination(url=url, gateway=GATEWAY, timeout=5)
        box = Outbox(tmp_path / "o.sqlite")
        poisoned_queue(box, "soap")
        assert await DeliveryWorker(box, dest).run_once()
        await dest.aclose()
    assert_poison_isolated(box, "soap", dec.received)
    assert all(dec.clean)


@pytest.mark.peers
async def test_mllp_control_character_and_huge_exponent_do_not_stop_the_queue(tmp_path):
    async with python_hl7_server() as receiver:
        dest = mllp_destination(host="127.0.0.1", port=receiver.port, gateway=GATEWAY, ack_timeout=5)
        box = Outbox(tmp_path / "o.sqlite")
        poisoned_queue(box, "mllp")
        assert await DeliveryWorker(box, dest).run_once()
        await dest.aclose()
    assert_poison_isolated(box, "mllp", receiver.received)


async def test_control_characters_arrive_escaped_and_unescape_to_themselves():
    """Rendering, not intake: a Reading holding VT, FS and NUL (as an older phg stored it) goes out as
    \\Xhh\\ escapes; the receiver's python-hl7 unescapes them back."""
    bodies: list[str] = []
    receiver = HttpReceiver()

    def app(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        bodies.append(body.decode("utf-8"))
        environ["wsgi.input"] = io.BytesIO(body)
        return receiver(environ, start_response)

    reading = readings_of_every_type()[3]
    reading = reading._replace(patient=reading.patient._replace(value="ab\x0bcd\x1c\x00"))
    with wsgi_server(app) as url:
        dest = http_destination(url=url, gateway=GATEWAY, timeout=5)
        assert isinstance((await dest.send([reading]))[0], Delivered)
        await dest.aclose()
    message = hl7.parse(bodies[0])
    assert "ab\\X0B\\cd\\X1C\\\\X00\\" in bodies[0] and not set("\x0b\x1c\x00") & set(bodies[0])
    assert message.unescape(str(message.segment("PID")[3][0][0])) == "ab\x0bcd\x1c\x00"


async def test_soap_envelope_that_cannot_be_built_rejects_that_reading_only():
    dest = soap_destination(url="http://127.0.0.1:9/pcd01", gateway=GATEWAY)
    outcome = await dest.exchange("MSH|^~\\&|raw \x0b control", "CTRL1")  # lxml refuses it; nothing is sent
    assert isinstance(outcome, Rejected) and "cannot render the request" in outcome.reason
    await dest.aclose()


async def test_closed_port_is_unreachable_for_every_hl7_destination(unused_tcp_port):
    readings = readings_of_every_type()[:2]
    url = f"http://127.0.0.1:{unused_tcp_port}/pcd01"
    for dest in (mllp_destination(host="127.0.0.1", port=unused_tcp_port, gateway=GATEWAY, connect_timeout=2),
                 http_destination(url=url, gateway=GATEWAY, timeout=2),
                 soap_destination(url=url, gateway=GATEWAY, timeout=2)):
        with pytest.raises(TransientDeliveryError) as info:
            await dest.send(readings)
        assert info.value.reached is False, dest.name
        await dest.aclose()


async def test_an_answer_without_ack_still_counts_as_reached(tmp_path):
    with wsgi_server(HttpReceiver(["garbage"])) as url:
        dest = http_destination(url=url, gateway=GATEWAY, timeout=5)
        with pytest.raises(TransientDeliveryError) as info:
            await dest.send(readings_of_every_type()[:2])
        await dest.aclose()
    assert info.value.reached is True


async def test_retry_after_mid_batch_is_honoured(tmp_path):
    readings = readings_of_every_type()[:4]
    receiver = HttpReceiver(["AA", "503"])  # the 503 carries Retry-After: 7
    with wsgi_server(receiver) as url:
        dest = http_destination(url=url, gateway=GATEWAY, timeout=5)
        outcomes = await dest.send(readings)
        await dest.aclose()
    assert isinstance(outcomes[0], Delivered)
    assert all(isinstance(o, Deferred) and o.retry_after == 7.0 for o in outcomes[1:])
    assert len(receiver.received) == 2

    receiver = HttpReceiver(["AA", "503"])
    with wsgi_server(receiver) as url:
        dest = http_destination(url=url, gateway=GATEWAY, timeout=5)
        box = Outbox(tmp_path / "o.sqlite")
        box.enqueue("http", [(r.key, r.to_json()) for r in readings])
        worker = DeliveryWorker(box, dest)
        for _ in range(3):  # nothing more may be sent before the 7 s have passed
            await worker.run(until_idle=True)
        await dest.aclose()
    assert len(receiver.received) == 2
    assert [i.state for i in box.items("http")] == ["delivered", "queued", "queued", "queued"]


async def test_connection_lost_mid_batch_keeps_the_acks_already_obtained():
    """A peer that closes after each ACK and then cannot be connected to: the first reading stays
    delivered, the rest are Deferred; only a failure before any outcome is the batch's TransientDeliveryError."""
    calls = []

    class Exchange:
        where = "mllp://x"

        async def __call__(self, message: str, control_id: str):
            calls.append(control_id)
            if len(calls) == 1:
                return Delivered(f"AA {control_id}")
            return Deferred("cannot connect", reached=False)

        async def aclose(self) -> None:
            pass

    readings = readings_of_every_type()[:3]
    dest = Hl7Destination(MllpSettings(name="mllp", source="test", host="127.0.0.1", port=9), GATEWAY, Exchange())
    outcomes = await dest.send(readings)
    assert isinstance(outcomes[0], Delivered) and all(isinstance(o, Deferred) for o in outcomes[1:])
    assert len(calls) == 2
    with pytest.raises(TransientDeliveryError) as info:
        await dest.send(readings[1:])
    assert info.value.reached is False
