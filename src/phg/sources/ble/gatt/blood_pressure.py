"""Blood Pressure Service (BLS 1.1): Blood Pressure Measurement 0x2A35 and Intermediate Cuff Pressure
0x2A36, which share one layout (in 0x2A36 the systolic field carries the current cuff pressure and
diastolic/MAP are NaN)."""

from __future__ import annotations

from dataclasses import dataclass

from phg.sources.ble.gatt.numbers import Bits, DateTime, Number, Reader

BLOOD_PRESSURE_MEASUREMENT = 0x2A35
INTERMEDIATE_CUFF_PRESSURE = 0x2A36

# BLS 1.1 / GATT Specification Supplement "Measurement Status" of 0x2A35 (bits 3-4 are a 2-bit field).
MEASUREMENT_STATUS: dict[int, str] = {
    0: "body movement detected", 1: "cuff too loose", 2: "irregular pulse detected",
    5: "improper measurement position",
}
PULSE_RATE_RANGE: dict[int, str] = {0: "within range", 1: "exceeds upper limit", 2: "less than lower limit"}


@dataclass(frozen=True)
class BloodPressureMeasurement:
    """unit is "mmHg" or "kPa" as the cuff sent it; timestamp is local wall-clock time; measurement_status
    keeps the device's status bits (mapped to BITs observations elsewhere), pulse_rate_range its 2-bit field."""

    flags: int
    unit: str
    systolic: Number
    diastolic: Number
    mean_arterial_pressure: Number
    timestamp: DateTime | None = None
    pulse_rate: Number | None = None
    user_id: int | None = None
    measurement_status: Bits | None = None
    pulse_rate_range: str | None = None
    intermediate: bool = False  # True for 0x2A36 Intermediate Cuff Pressure


def _decode(data: bytes, name: str, intermediate: bool) -> BloodPressureMeasurement:
    r = Reader(data, name)
    flags = r.u8("Flags")
    unit = "kPa" if flags & 0x01 else "mmHg"
    systolic = r.sfloat("Systolic" if not intermediate else "Current Cuff Pressure")
    diastolic = r.sfloat("Diastolic")
    mean = r.sfloat("Mean Arterial Pressure")
    timestamp = r.date_time("Time Stamp") if flags & 0x02 else None
    pulse = r.sfloat("Pulse Rate") if flags & 0x04 else None
    user = r.u8("User ID") if flags & 0x08 else None
    status = pulse_range = None
    if flags & 0x10:
        at = r.pos
        raw = r.u16("Measurement Status")
        status = Bits.decode(raw & ~0x18, MEASUREMENT_STATUS, 16)
        status = Bits(raw, status.names)
        pulse_range = r.enum(raw >> 3 & 0x3, PULSE_RATE_RANGE, "Pulse Rate Range Detection", at)
    r.finish()
    return BloodPressureMeasurement(flags, unit, systolic, diastolic, mean, timestamp, pulse, user, status, pulse_range,
                                    intermediate)


def decode_blood_pressure_measurement(data: bytes) -> BloodPressureMeasurement:
    return _decode(data, "0x2A35 Blood Pressure Measurement", intermediate=False)


def decode_intermediate_cuff_pressure(data: bytes) -> BloodPressureMeasurement:
    return _decode(data, "0x2A36 Intermediate Cuff Pressure", intermediate=True)
