"""Pulse Oximeter Service (PLXS 1.0): PLX Spot-Check Measurement 0x2A5E, PLX Continuous Measurement
0x2A5F and PLX Features 0x2A60."""

from __future__ import annotations

from dataclasses import dataclass

from phg.sources.ble.gatt.numbers import Bits, DateTime, Number, Reader

PLX_SPOT_CHECK_MEASUREMENT = 0x2A5E
PLX_CONTINUOUS_MEASUREMENT = 0x2A5F
PLX_FEATURES = 0x2A60

# PLXS 1.0 section 3.1.1.3 Measurement Status (bits 0-4 reserved).
MEASUREMENT_STATUS: dict[int, str] = {
    5: "measurement ongoing", 6: "early estimated data", 7: "validated data", 8: "fully qualified data",
    9: "data from measurement storage", 10: "data for demonstration", 11: "data for testing",
    12: "calibration ongoing", 13: "measurement unavailable", 14: "questionable measurement detected",
    15: "invalid measurement detected",
}
# PLXS 1.0 section 3.1.1.4 Device and Sensor Status (24 bits, 16-23 reserved).
DEVICE_AND_SENSOR_STATUS: dict[int, str] = {
    0: "extended display update ongoing", 1: "equipment malfunction detected", 2: "signal processing irregularity detected",
    3: "inadequate signal detected", 4: "poor signal detected", 5: "low perfusion detected", 6: "erratic signal detected",
    7: "nonpulsatile signal detected", 8: "questionable pulse detected", 9: "signal analysis ongoing",
    10: "sensor interference detected", 11: "sensor unconnected to user", 12: "unknown sensor connected",
    13: "sensor displaced", 14: "sensor malfunctioning", 15: "sensor disconnected",
}
SUPPORTED_FEATURES: dict[int, str] = {
    0: "measurement status support", 1: "device and sensor status support",
    2: "measurement storage for spot-check measurements", 3: "timestamp for spot-check measurements",
    4: "SpO2PR-Fast metric", 5: "SpO2PR-Slow metric", 6: "pulse amplitude index", 7: "multiple bonds",
}


@dataclass(frozen=True)
class PlxSpotCheckMeasurement:
    """0x2A5E. SpO2 and PAI in %, pulse rate in /min; timestamp is local wall-clock time.
    device_clock_not_set: the oximeter says its clock is not set, so its timestamp means nothing."""

    flags: int
    spo2_pct: Number
    pulse_rate_bpm: Number
    timestamp: DateTime | None = None
    measurement_status: Bits | None = None
    device_and_sensor_status: Bits | None = None
    pulse_amplitude_index_pct: Number | None = None
    device_clock_not_set: bool = False


@dataclass(frozen=True)
class PlxContinuousMeasurement:
    """0x2A5F: no timestamp (it is "now"). fast/slow are (SpO2, PR) pairs of the other averaging times."""

    flags: int
    spo2_pct: Number
    pulse_rate_bpm: Number
    fast: tuple[Number, Number] | None = None
    slow: tuple[Number, Number] | None = None
    measurement_status: Bits | None = None
    device_and_sensor_status: Bits | None = None
    pulse_amplitude_index_pct: Number | None = None


@dataclass(frozen=True)
class PlxFeatures:
    """0x2A60: what the oximeter supports, and which status bits it can report."""

    supported_features: Bits
    measurement_status_support: Bits | None = None
    device_and_sensor_status_support: Bits | None = None


def decode_plx_spot_check(data: bytes) -> PlxSpotCheckMeasurement:
    r = Reader(data, "0x2A5E PLX Spot-Check Measurement")
    flags = r.u8("Flags")
    spo2 = r.sfloat("SpO2")
    pulse = r.sfloat("PR")
    timestamp = r.date_time("Timestamp") if flags & 0x01 else None
    status = Bits.decode(r.u16("Measurement Status"), MEASUREMENT_STATUS, 16) if flags & 0x02 else None
    device = Bits.decode(r.u24("Device and Sensor Status"), DEVICE_AND_SENSOR_STATUS, 24) if flags & 0x04 else None
    pai = r.sfloat("Pulse Amplitude Index") if flags & 0x08 else None
    r.finish()
    return PlxSpotCheckMeasurement(flags, spo2, pulse, timestamp, status, device, pai, bool(flags & 0x10))


def decode_plx_continuous(data: bytes) -> PlxContinuousMeasurement:
    r = Reader(data, "0x2A5F PLX Continuous Measurement")
    flags = r.u8("Flags")
    spo2 = r.sfloat("SpO2PR-Normal SpO2")
    pulse = r.sfloat("SpO2PR-Normal PR")
    fast = (r.sfloat("SpO2PR-Fast SpO2"), r.sfloat("SpO2PR-Fast PR")) if flags & 0x01 else None
    slow = (r.sfloat("SpO2PR-Slow SpO2"), r.sfloat("SpO2PR-Slow PR")) if flags & 0x02 else None
    status = Bits.decode(r.u16("Measurement Status"), MEASUREMENT_STATUS, 16) if flags & 0x04 else None
    device = Bits.decode(r.u24("Device and Sensor Status"), DEVICE_AND_SENSOR_STATUS, 24) if flags & 0x08 else None
    pai = r.sfloat("Pulse Amplitude Index") if flags & 0x10 else None
    r.finish()
    return PlxContinuousMeasurement(flags, spo2, pulse, fast, slow, status, device, pai)


def decode_plx_features(data: bytes) -> PlxFeatures:
    r = Reader(data, "0x2A60 PLX Features")
    features = Bits.decode(r.u16("Supported Features"), SUPPORTED_FEATURES, 16)
    status = Bits.decode(r.u16("Measurement Status Support"), MEASUREMENT_STATUS, 16) if features.raw & 0x01 else None
    device = (Bits.decode(r.u24("Device and Sensor Status Support"), DEVICE_AND_SENSOR_STATUS, 24)
              if features.raw & 0x02 else None)
    r.finish()
    return PlxFeatures(features, status, device)
