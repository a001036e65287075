"""Health Thermometer Service (HTS 1.0): Temperature Measurement 0x2A1C, Intermediate Temperature
0x2A1E (same layout, a value while measuring) and Temperature Type 0x2A1D (the site, when the
measurement itself does not carry it)."""

from __future__ import annotations

from dataclasses import dataclass

from phg.sources.ble.gatt.numbers import DateTime, Number, Reader

TEMPERATURE_MEASUREMENT = 0x2A1C
TEMPERATURE_TYPE = 0x2A1D
INTERMEDIATE_TEMPERATURE = 0x2A1E

# GATT Specification Supplement, Temperature Type (0 and 10-255 reserved).
TEMPERATURE_TYPES: dict[int, str] = {
    1: "armpit", 2: "body", 3: "ear", 4: "finger", 5: "gastrointestinal tract", 6: "mouth", 7: "rectum", 8: "toe",
    9: "tympanum",
}


@dataclass(frozen=True)
class TemperatureMeasurement:
    """unit is UCUM: "Cel" or "[degF]"; timestamp is local wall-clock time."""

    flags: int
    unit: str
    temperature: Number
    timestamp: DateTime | None = None
    temperature_type: str | None = None
    intermediate: bool = False  # True for 0x2A1E Intermediate Temperature


@dataclass(frozen=True)
class TemperatureType:
    """0x2A1D: the static measurement site of a thermometer."""

    temperature_type: str


def _decode(data: bytes, name: str, intermediate: bool) -> TemperatureMeasurement:
    r = Reader(data, name)
    flags = r.u8("Flags")
    unit = "[degF]" if flags & 0x01 else "Cel"
    value = r.float32("Temperature Measurement Value")
    timestamp = r.date_time("Time Stamp") if flags & 0x02 else None
    kind = None
    if flags & 0x04:
        at = r.pos
        kind = r.enum(r.u8("Temperature Type"), TEMPERATURE_TYPES, "Temperature Type", at)
    r.finish()
    return TemperatureMeasurement(flags, unit, value, timestamp, kind, intermediate)


def decode_temperature_measurement(data: bytes) -> TemperatureMeasurement:
    return _decode(data, "0x2A1C Temperature Measurement", intermediate=False)


def decode_intermediate_temperature(data: bytes) -> TemperatureMeasurement:
    return _decode(data, "0x2A1E Intermediate Temperature", intermediate=True)


def decode_temperature_type(data: bytes) -> TemperatureType:
    r = Reader(data, "0x2A1D Temperature Type")
    kind = r.enum(r.u8("Temperature Type"), TEMPERATURE_TYPES, "Temperature Type", 0)
    r.finish()
    return TemperatureType(kind)
