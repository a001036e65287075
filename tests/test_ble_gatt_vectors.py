"""Every vector of shared/vectors/gatt/vectors.json: valid ones decode to each documented field,
negatives are refused with a GattError that states the reason."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from phg.sources.ble.gatt import Bits, DateTime, GattError, decode
from shared_vectors import VECTORS as SHARED

VECTORS = json.loads((SHARED / "gatt" / "vectors.json").read_text())

# Keys that annotate a vector rather than name a decoded field (checked separately below).
ANNOTATIONS = {"note"}


def _status_dict(m) -> dict[str, Any]:
    s = m.measurement_status
    return {
        "body_movement_detected": "body movement detected" in s,
        "cuff_too_loose": "cuff too loose" in s,
        "irregular_pulse_detected": "irregular pulse detected" in s,
        "pulse_rate_range": m.pulse_rate_range,
        "improper_measurement_position": "improper measurement position" in s,
    }


def _octet(bits: Bits | None) -> dict[str, Any] | None:
    return None if bits is None else {"octet": bits.raw, "bits": list(bits.names)}


def _crc(record, data: bytes) -> dict[str, Any]:
    from phg.sources.ble.gatt.numbers import crc16_mcrf4xx

    return {"present": record.e2e_crc is not None, "value": f"0x{record.e2e_crc:04X}",
            "computed": f"0x{crc16_mcrf4xx(data[:record.size - 2]):04X}", "valid": True}  # a mismatch raises


# Vector key -> accessor on the decoded value, where the names differ.
FIELDS: dict[str, dict[str, Any]] = {
    "0x2A18": {"sensor_status_bits": lambda m, d: list(m.sensor_status.names)},
    "0x2A34": {
        "HbA1c_pct": lambda m, d: m.hba1c_pct,
        # The decoder refuses bytes its flags do not announce, so a successful decode has none left over.
        "unparsed_trailing_bytes": lambda m, d: 0,
    },
    "0x2A52": {
        "operand_len": lambda m, d: len(m.operand),
        "operands_uint16": lambda m, d: list(m.operands),
    },
    "0x2A35": {
        "pulse_rate_bpm": lambda m, d: m.pulse_rate,
        "status": lambda m, d: _status_dict(m),
    },
    "0x2A37": {
        "energy_expended_kJ": lambda m, d: m.energy_expended_kj,
        "rr_intervals_1_1024_s": lambda m, d: list(m.rr_intervals),
        "rr_intervals_ms": lambda m, d: [ms.quantize(Decimal("0.1")) for ms in m.rr_intervals_ms],
    },
    "0x2AA7": {
        "glucose_mg_dL": lambda m, d: m.glucose,
        "trend_mg_dL_per_min": lambda m, d: m.trend,
        "sensor_status_annunciation": lambda m, d: {"status": _octet(m.status), "cal_temp": _octet(m.cal_temp),
                                                    "warning": _octet(m.warning)},
        "e2e_crc": _crc,
    },
    "0x2A5E": {
        "measurement_status_bits": lambda m, d: list(m.measurement_status.names),
        "device_and_sensor_status_bits": lambda m, d: list(m.device_and_sensor_status.names),
    },
    "0x2A60": {
        "supported_features_bits": lambda m, d: list(m.supported_features.names),
        "measurement_status_support_bits": lambda m, d: list(m.measurement_status_support.names),
        "device_and_sensor_status_support_bits": lambda m, d: list(m.device_and_sensor_status_support.names),
    },
    "0x2A9C": {
        "basal_metabolism_kJ": lambda m, d: m.basal_metabolism_kj,
        "fat_free_mass_unit": lambda m, d: m.mass_unit,
        "soft_lean_mass_unit": lambda m, d: m.mass_unit,
        "body_water_mass_unit": lambda m, d: m.mass_unit,
    },
}
FIELDS["0x2A5F"] = FIELDS["0x2A5E"]


def same(expected: Any, actual: Any) -> bool:
    """Expected JSON value vs decoded value: numbers compare as decimals, a Bits field against its raw
    value (int) or its names (list), a DateTime field by field (with its ISO text)."""
    if isinstance(actual, Bits):
        return expected == (list(actual.names) if isinstance(expected, list) else actual.raw)
    if isinstance(actual, DateTime):
        return isinstance(expected, dict) and all(same(v, getattr(actual, k)) for k, v in expected.items())
    if isinstance(expected, dict):
        return isinstance(actual, dict) and expected.keys() <= actual.keys() and all(
            same(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list | tuple) and len(expected) == len(actual) and all(
            same(e, a) for e, a in zip(expected, actual, strict=True))
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        return expected == actual
    if isinstance(expected, int | float):
        return isinstance(actual, Decimal | int) and not isinstance(actual, bool) and Decimal(str(expected)) == actual
    return expected == actual


def check_fields(uuid: str, expected: dict, decoded: Any, data: bytes) -> None:
    for key, want in expected.items():
        if key in ANNOTATIONS:
            continue
        accessor = FIELDS.get(uuid, {}).get(key)
        if accessor is not None:
            got = accessor(decoded, data)
        else:
            assert hasattr(decoded, key), f"{uuid}: decoded value has no field for {key!r}"
            got = getattr(decoded, key)
        assert same(want, got), f"{uuid} {key}: expected {want!r}, decoded {got!r}"


def _id(v: dict) -> str:
    return f"{v['characteristic'].split()[0]}-{v['hex']}"


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["valid"]], ids=_id)
def test_valid_vector_decodes_to_expected_fields(vector: dict) -> None:
    uuid = vector["characteristic"].split()[0]
    data = bytes.fromhex(vector["hex"])
    decoded = decode(uuid, data)
    if isinstance(vector["expected"], list):  # CGM: one expectation per record
        assert len(decoded.records) == len(vector["expected"])
        for record, expected in zip(decoded.records, vector["expected"], strict=True):
            check_fields(uuid, expected, record, data)
    else:
        check_fields(uuid, vector["expected"], decoded, data)


@pytest.mark.parametrize("vector", [v for v in VECTORS if not v["valid"]], ids=_id)
def test_negative_vector_is_refused_with_its_reason(vector: dict) -> None:
    uuid = vector["characteristic"].split()[0]
    with pytest.raises(GattError) as caught:
        decode(uuid, bytes.fromhex(vector["hex"]))
    message = str(caught.value)
    assert message.startswith(vector["characteristic"])
    assert vector["expected"]["decode_error"].lower() in message.lower()
    assert caught.value.offset is not None and caught.value.field is not None


def test_every_vector_is_exercised() -> None:
    assert len(VECTORS) == 35
    assert sum(1 for v in VECTORS if not v["valid"]) == 4


def test_weight_note_default_resolution_is_kept() -> None:
    """The weight vectors' note: without the Weight Scale Feature the 0.005 kg step is assumed, so
    the decoded value carries three decimals; readings.py narrows it with the feature."""
    for v in VECTORS:
        if v["characteristic"].startswith("0x2A9D"):
            assert "default resolution" in v["expected"]["note"]
            assert str(decode("2A9D", bytes.fromhex(v["hex"])).weight) == "70.000"


def test_bp_negative_names_field_and_offset() -> None:
    with pytest.raises(GattError) as caught:
        decode(0x2A35, bytes.fromhex("03020304050607"))
    assert str(caught.value) == ("0x2A35 Blood Pressure Measurement: truncated at byte 7 reading Time Stamp "
                                 "(need 7 bytes, have 0); too short: need 14 bytes, have 7")
    assert (caught.value.field, caught.value.offset) == ("Time Stamp", 7)
