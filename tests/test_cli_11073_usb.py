"""USB PHDC transport with a fake bulk endpoint pair, and the click commands."""

from __future__ import annotations

import json
import threading
from collections import deque

from click.testing import CliRunner

from ieee11073_agent import Agent
from phg.cli.decode import decode_11073
from phg.cli.ieee11073 import ieee11073
from phg.intake import Intake
from phg.model import PatientRef
from phg.outbox import Outbox
from phg.sources.ieee11073.apdu import EventReportResult, Rlre, decode
from phg.sources.ieee11073.tcp import ManagerSettings
from phg.sources.ieee11073.usb import run_usb_manager

H241 = "e7000036003412380101002e0000ffffffff0d1d0024f00000000002001c0001000a00622007120612100000000a000a00482007120612100000"


class FakePhdc:
    """A scripted agent behind bulk endpoints: 64-byte packets IN, whole writes OUT."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self.inbox: deque[bytes] = deque()
        self.out = bytearray()
        self.answers: list = []
        self._queue(agent.aarq())

    def _queue(self, apdu: bytes) -> None:
        self.inbox.extend(apdu[i:i + 64] for i in range(0, len(apdu), 64))

    def read(self, size: int, timeout_ms: int) -> bytes:
        return self.inbox.popleft() if self.inbox else b""

    def write(self, data: bytes) -> int:
        self.out += data
        while len(self.out) >= 4 and len(self.out) >= 4 + int.from_bytes(self.out[2:4], "big"):
            n = 4 + int.from_bytes(self.out[2:4], "big")
            apdu, self.out = decode(bytes(self.out[:n])), self.out[n:]
            self.answers.append(apdu)
            self._react(apdu)
        return len(data)

    def _react(self, apdu) -> None:
        name = type(apdu).__name__
        if name == "Aare":
            return
        if name == "Prst" and type(apdu.message).__name__ == "Get":
            self._queue(self.agent.get_response(apdu.invoke_id))
            for n in range(2):
                self._queue(self.agent.measurement(n)[1])
        elif name == "Prst" and isinstance(apdu.message, EventReportResult) and len(
                [a for a in self.answers if type(a).__name__ == "Prst" and isinstance(a.message, EventReportResult)]) == 2:
            self._queue(self.agent.rlrq())


def test_usb_session_with_a_fake_endpoint(tmp_path):
    link = FakePhdc(Agent("blood_pressure"))
    readings = []
    settings = ManagerSettings(PatientRef("urn:x", "p"), on_reading=readings.append)
    with Outbox(tmp_path / "o.sqlite") as outbox:
        t = threading.Thread(target=run_usb_manager, args=(link, Intake(outbox, ["fhir"]), settings),
                             kwargs={"poll_ms": 1, "until_released": True})
        t.start()
        t.join(10)
        assert not t.is_alive()
        assert outbox.counts("fhir")["queued"] == 2
    assert isinstance(link.answers[-1], Rlre) and len(readings) == 2
    assert readings[0].metrics[0].components[0].value == 120


def test_decode_command_prints_json():
    config = ("e70000a800a61236010100a00000ffffffff0d1c00964000000300900006000100040024092f000400024bb80a46000240c0"
              "0996000202200a55000c000200080a4c0002099000080006000a00040024092f00040002481a0a46000240c0099600020aa00a"
              "55000c000200080a4c0002099000080006000300050030092f000400024bb80a46000240c00996000202200a610008000100"
              "0400024c340a55000c000200080a4c000209900008")
    result = CliRunner().invoke(decode_11073, [H241, "--config", config])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["event-info"]["obs"][0]["values"][0]["value"]["text"] == "98"
    bad = CliRunner().invoke(decode_11073, [H241[:-2]])
    assert bad.exit_code == 1 and "length field" in bad.output


def test_listen_command_is_documented():
    result = CliRunner().invoke(ieee11073, ["listen", "--help"])
    assert result.exit_code == 0 and "--tcp" in result.output
