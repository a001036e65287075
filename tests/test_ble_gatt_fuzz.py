"""Every GATT decoder, fed arbitrary bytes, either decodes or raises GattError: nothing else, no hang.
Decoded values also go through to_metrics, which may only refuse a CGM record without session start, and the
reading they make survives the outbox: parsed back from its stored text, the same reading."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phg.errors import MappingError
from phg.model import Device, PatientRef, Reading, from_canonical_json
from phg.sources.ble.gatt import CHARACTERISTICS, Characteristic, GattError, to_metrics
from phg.sources.ble.gatt.weight import BodyCompositionAssembler, decode_body_composition_measurement

RECEIVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DEVICE, PATIENT = Device(bt_address="00-1C-05-00-78-25"), PatientRef("urn:oid:1.2.3.4", "pt-fuzz")

# Random bytes rarely get past a flags byte that announces fields; also try every flag set and a
# plausible leading byte pattern so that the deep paths are reached.
payloads = st.one_of(
    st.binary(max_size=48),
    st.builds(lambda flags, rest: bytes([flags]) + rest, st.integers(0, 255), st.binary(max_size=40)),
    st.builds(lambda rest: b"\xff\xff" + rest, st.binary(max_size=40)),
)


def _check(char: Characteristic, data: bytes) -> None:
    try:
        decoded = char.decode(data)
    except GattError as exc:
        assert str(exc).startswith(f"0x{char.uuid16:04X} "), str(exc)
        return
    try:
        metrics = to_metrics(decoded, utc_offset=timedelta(hours=1), received=RECEIVED)
    except MappingError:
        assert char.uuid16 == 0x2AA7
        return
    for metric in metrics:
        assert metric.time.utcoffset() is not None
        assert metric.value is None or metric.value.is_finite()
    if metrics:  # what the outbox stores is what delivery reads back: never a reading delivery refuses
        reading = Reading(DEVICE, PATIENT, tuple(metrics))
        assert from_canonical_json(reading.to_json(), "fuzz") == reading


@pytest.mark.parametrize("char", CHARACTERISTICS, ids=lambda c: f"0x{c.uuid16:04X}")
@settings(max_examples=60, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(data=payloads)
def test_decoder_raises_only_gatt_error(char: Characteristic, data: bytes) -> None:
    _check(char, data)


@settings(max_examples=100, deadline=500)
@given(st.lists(st.builds(lambda flags, rest: flags.to_bytes(2, "little") + rest,
                          st.integers(0, 0x1FFF), st.binary(max_size=30)), max_size=4))
def test_body_composition_assembler_never_crashes(parts: list[bytes]) -> None:
    assembler = BodyCompositionAssembler()
    for raw in parts:
        try:
            assembler.feed(decode_body_composition_measurement(raw))
        except GattError:
            pass
