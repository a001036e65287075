"""A glucose record and its Glucose Measurement Context (0x2A34) arriving in separate notifications, as a
meter sends them: the context is mapped with its record however the session's reads split them, and the
meter's record marker never passes a record that was not stored (issue 17 review).

Through the Collector with a take between the two values, then through the gateway's session (bleak's public
API on the Bumble backend) against an emulated meter that sends each context a moment after its record, and one
that drops the link between a record and its context, into a real outbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import datetime, timedelta
from decimal import Decimal

from phg.demo import emulator as emu
from phg.intake import Intake
from phg.model import Device, PatientRef, parse_reading
from phg.outbox import Outbox
from phg.sources.ble.session import Collector, fetch, marker_name

PATIENT = PatientRef("urn:oid:1.2.3.4.5", "pt-context")
OFFSET = timedelta(hours=1)
T0 = datetime(2026, 11, 28, 8, 0)
MEAL = 8417864
MEALS = {1: 8417868, 2: 8417872, 3: 8417876, 4: 8417880, 5: 8417869}  # GLS meal -> MDC_CTXT_GLU_MEAL_*


def meal_of(reading) -> int | None:
    return next((m.coded for m in reading.metrics if m.code == MEAL), None)


# ------------------------------------------------------------------------------- the Collector


def test_a_context_after_a_take_still_joins_its_record():
    collector = Collector(Device(system_id="00601900010E9234"), PATIENT, None, OFFSET)
    collector.feed(0x2A18, bytes.fromhex("12 0700 E1070602 0F0223 63B0 11"))  # Context Information Follows
    assert collector.take() == [] and collector.last_seq is None  # waiting: neither taken nor in the marker
    collector.feed(0x2A34, bytes.fromhex("02 0700 02"))  # postprandial, a separate notification
    [reading] = collector.take()
    assert meal_of(reading) == 8417872 and collector.last_seq == 7


def test_a_record_whose_context_never_comes_is_handed_over_when_the_procedure_ends():
    collector = Collector(Device(system_id="00601900010E9234"), PATIENT, None, OFFSET)
    collector.feed(0x2A18, bytes.fromhex("12 0700 E1070602 0F0223 63B0 11"))
    assert collector.take() == []
    assert collector.feed(0x2A52, bytes.fromhex("06000101")) is True  # RACP: Report stored records, Success
    [reading] = collector.take()
    assert meal_of(reading) is None and collector.last_seq == 7


# ------------------------------------------------------------------------------- through the session


class SlowContextMeter(emu.GlucoseMeter):
    """Sends each record's context `delay` seconds after the record, as its own notification; drops the link
    between the record `drop_before_context_of` and its context once."""

    def __init__(self, meals: list[int], delay: float = 0.3, drop_before_context_of: int | None = None) -> None:
        super().__init__()
        added = self.add_records([Decimal(100 + k) for k in range(1, len(meals) + 1)], T0)
        self.records = [dataclasses.replace(r, meal=m) for r, m in zip(added, meals, strict=True)]
        self.delay = delay
        self.drop_before_context_of = drop_before_context_of

    async def _upload(self, connection, selected: list) -> bool:
        device = self.device
        assert device is not None
        for record in selected:
            await device.notify_subscriber(connection, self.measurement, emu.glucose_measurement(record))
            self.sent += 1
            if record.seq == self.drop_before_context_of:
                self.drop_before_context_of = None
                await connection.disconnect()
                return False
            await asyncio.sleep(self.delay)
            await device.notify_subscriber(connection, self.context, emu.glucose_context(record))
        return True


async def collect(radio: emu.EmulatedLink, outbox: Outbox, address: str):
    return await fetch(address, intake=Intake(outbox, ["fhir"]), patient=PATIENT, backend=radio.backend,
                       timeout=5, idle_timeout=2, utc_offset=OFFSET)


def stored(outbox: Outbox) -> list[tuple[str, int | None]]:
    readings = [parse_reading(json.loads(i.payload)) for i in outbox.items(destination="fhir", limit=100)]
    return [(str(r.metrics[0].value), meal_of(r)) for r in readings]


def test_each_record_keeps_its_meal_when_the_context_comes_in_a_later_batch(tmp_path, caplog):
    meter = SlowContextMeter([1, 2, 5])

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([meter]) as radio:
            return await collect(radio, outbox, meter.address)

    with Outbox(tmp_path / "outbox.sqlite") as outbox, caplog.at_level(logging.WARNING):
        result = asyncio.run(scenario(outbox))
        assert (result.readings, result.last_seq, result.complete) == (3, 3, True)
        assert stored(outbox) == [("101", MEALS[1]), ("102", MEALS[2]), ("103", MEALS[5])]
        assert outbox.source_state(marker_name(meter.address)) == "3"
    assert "matches no waiting 0x2A18" not in caplog.text


def test_a_link_lost_between_a_record_and_its_context_leaves_the_record_for_the_next_session(tmp_path):
    """Record 2 arrived, its context did not: record 2 is not stored and the marker stays at 1, so the next
    session fetches records 2 and 3 with their contexts; nothing is lost or stored twice."""
    meter = SlowContextMeter([1, 2, 3], delay=0.05, drop_before_context_of=2)

    async def scenario(outbox: Outbox):
        async with emu.EmulatedLink([meter]) as radio:
            first = await collect(radio, outbox, meter.address)
            assert (first.readings, first.complete) == (1, False)
            assert outbox.source_state(marker_name(meter.address)) == "1"
            second = await collect(radio, outbox, meter.address)
            assert (second.readings, second.last_seq, second.complete) == (2, 3, True)

    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        asyncio.run(scenario(outbox))
        assert stored(outbox) == [("101", MEALS[1]), ("102", MEALS[2]), ("103", MEALS[3])]
        assert outbox.source_state(marker_name(meter.address)) == "3"
