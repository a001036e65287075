"""Weight Scale Service (WSS 1.0) and Body Composition Service (BCS 1.0): Weight Measurement 0x2A9D,
Weight Scale Feature 0x2A9E and Body Composition Measurement 0x2A9C (with multi-packet reassembly).

Masses travel in fixed steps (0.005 kg or 0.01 lb; height 0.001 m or 0.1 in) whatever the scale's real
resolution; the Weight Scale Feature tells the real one, which the mapping uses to keep the right
number of decimals (a 0.1 kg scale's 70.000 kg becomes 70.0 kg).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from decimal import Decimal

from phg.sources.ble.gatt.numbers import DateTime, Reader, scaled

WEIGHT_MEASUREMENT = 0x2A9D
WEIGHT_SCALE_FEATURE = 0x2A9E
BODY_COMPOSITION_MEASUREMENT = 0x2A9C

UNSUCCESSFUL = 0xFFFF  # WSS/BCS: "measurement unsuccessful"


def _mass(raw: int, imperial: bool) -> Decimal:
    return scaled(raw, -2) if imperial else scaled(raw * 5, -3)


def _height(raw: int, imperial: bool) -> Decimal:
    return scaled(raw, -1) if imperial else scaled(raw, -3)


@dataclass(frozen=True)
class WeightMeasurement:
    """0x2A9D. weight is None when the scale reported "measurement unsuccessful" (0xFFFF)."""

    flags: int
    units: str  # "SI" or "imperial"
    weight: Decimal | None
    weight_unit: str  # "kg" or "lb"
    timestamp: DateTime | None = None
    user_id: int | None = None  # 255 = unknown user
    bmi: Decimal | None = None
    height: Decimal | None = None
    height_unit: str | None = None  # "m" or "in"


def decode_weight_measurement(data: bytes) -> WeightMeasurement:
    r = Reader(data, "0x2A9D Weight Measurement")
    flags = r.u8("Flags")
    imperial = bool(flags & 0x01)
    raw = r.u16("Weight")
    weight = None if raw == UNSUCCESSFUL else _mass(raw, imperial)
    timestamp = r.date_time("Time Stamp") if flags & 0x02 else None
    user = r.u8("User ID") if flags & 0x04 else None
    bmi = height = None
    if flags & 0x08:
        bmi = scaled(r.u16("BMI"), -1)
        height = _height(r.u16("Height"), imperial)
    r.finish()
    return WeightMeasurement(flags, "imperial" if imperial else "SI", weight, "lb" if imperial else "kg", timestamp, user,
                             bmi, height, ("in" if imperial else "m") if flags & 0x08 else None)


# ---------------------------------------------------------------- feature

# WSS 1.0 section 3.1 (Weight Scale Feature): resolution code -> (kg step, lb step) and (m step, in step).
WEIGHT_RESOLUTIONS: dict[int, tuple[str, Decimal | None, Decimal | None]] = {
    0: ("not specified", None, None),
    1: ("0.5 kg / 1 lb", Decimal("0.5"), Decimal("1")),
    2: ("0.2 kg / 0.5 lb", Decimal("0.2"), Decimal("0.5")),
    3: ("0.1 kg / 0.2 lb", Decimal("0.1"), Decimal("0.2")),
    4: ("0.05 kg / 0.1 lb", Decimal("0.05"), Decimal("0.1")),
    5: ("0.02 kg / 0.05 lb", Decimal("0.02"), Decimal("0.05")),
    6: ("0.01 kg / 0.02 lb", Decimal("0.01"), Decimal("0.02")),
    7: ("0.005 kg / 0.01 lb", Decimal("0.005"), Decimal("0.01")),
}
HEIGHT_RESOLUTIONS: dict[int, tuple[str, Decimal | None, Decimal | None]] = {
    0: ("not specified", None, None),
    1: ("0.01 m / 1 in", Decimal("0.01"), Decimal("1")),
    2: ("0.005 m / 0.5 in", Decimal("0.005"), Decimal("0.5")),
    3: ("0.001 m / 0.1 in", Decimal("0.001"), Decimal("0.1")),
}


@dataclass(frozen=True)
class WeightScaleFeature:
    """0x2A9E. The *_step fields are the resolution in the unit named (None: not specified)."""

    raw: int
    time_stamp_supported: bool
    multiple_users_supported: bool
    bmi_supported: bool
    weight_resolution: str
    height_resolution: str
    weight_step_kg: Decimal | None = None
    weight_step_lb: Decimal | None = None
    height_step_m: Decimal | None = None
    height_step_in: Decimal | None = None


def decode_weight_scale_feature(data: bytes) -> WeightScaleFeature:
    r = Reader(data, "0x2A9E Weight Scale Feature")
    raw = r.u32("Weight Scale Feature")
    r.finish()
    weight_code, height_code = raw >> 3 & 0xF, raw >> 7 & 0x7
    if weight_code not in WEIGHT_RESOLUTIONS:
        raise r.error("Weight Measurement Resolution", f"reserved value {weight_code} in Weight Measurement "
                                                       "Resolution (bits 3-6) at byte 0", 0)
    if height_code not in HEIGHT_RESOLUTIONS:
        raise r.error("Height Measurement Resolution", f"reserved value {height_code} in Height Measurement "
                                                       "Resolution (bits 7-9) at byte 0", 0)
    weight_name, kg, lb = WEIGHT_RESOLUTIONS[weight_code]
    height_name, m, inch = HEIGHT_RESOLUTIONS[height_code]
    return WeightScaleFeature(raw, bool(raw & 1), bool(raw & 2), bool(raw & 4), weight_name, height_name, kg, lb, m, inch)


# ---------------------------------------------------------------- body composition


@dataclass(frozen=True)
class BodyCompositionMeasurement:
    """0x2A9C. Masses in mass_unit ("kg"/"lb"), height in height_unit ("m"/"in"), basal metabolism in kJ,
    impedance in ohm. body_fat_pct is None when the analyser reported "measurement unsuccessful".
    multiple_packet_measurement: this value is one half of a measurement (see BodyCompositionAssembler)."""

    flags: int
    units: str
    body_fat_pct: Decimal | None
    mass_unit: str
    height_unit: str
    multiple_packet_measurement: bool = False
    timestamp: DateTime | None = None
    user_id: int | None = None
    basal_metabolism_kj: int | None = None
    muscle_pct: Decimal | None = None
    muscle_mass: Decimal | None = None
    fat_free_mass: Decimal | None = None
    soft_lean_mass: Decimal | None = None
    body_water_mass: Decimal | None = None
    impedance_ohm: Decimal | None = None
    weight: Decimal | None = None
    height: Decimal | None = None


def decode_body_composition_measurement(data: bytes) -> BodyCompositionMeasurement:
    r = Reader(data, "0x2A9C Body Composition Measurement")
    flags = r.u16("Flags")
    imperial = bool(flags & 0x0001)
    fat = r.u16("Body Fat Percentage")
    values: dict = {"body_fat_pct": None if fat == UNSUCCESSFUL else scaled(fat, -1)}
    if flags & 0x0002:
        values["timestamp"] = r.date_time("Time Stamp")
    if flags & 0x0004:
        values["user_id"] = r.u8("User ID")
    if flags & 0x0008:
        values["basal_metabolism_kj"] = r.u16("Basal Metabolism")
    if flags & 0x0010:
        values["muscle_pct"] = scaled(r.u16("Muscle Percentage"), -1)
    for bit, name, label in ((0x0020, "muscle_mass", "Muscle Mass"), (0x0040, "fat_free_mass", "Fat Free Mass"),
                             (0x0080, "soft_lean_mass", "Soft Lean Mass"), (0x0100, "body_water_mass", "Body Water Mass")):
        if flags & bit:
            values[name] = _mass(r.u16(label), imperial)
    if flags & 0x0200:
        values["impedance_ohm"] = scaled(r.u16("Impedance"), -1)
    if flags & 0x0400:
        values["weight"] = _mass(r.u16("Weight"), imperial)
    if flags & 0x0800:
        values["height"] = _height(r.u16("Height"), imperial)
    r.finish()
    return BodyCompositionMeasurement(flags, "imperial" if imperial else "SI", mass_unit="lb" if imperial else "kg",
                                      height_unit="in" if imperial else "m",
                                      multiple_packet_measurement=bool(flags & 0x1000), **values)


_OPTIONAL = tuple(f.name for f in fields(BodyCompositionMeasurement)
                  if f.name not in ("flags", "units", "body_fat_pct", "mass_unit", "height_unit",
                                    "multiple_packet_measurement"))


class BodyCompositionAssembler:
    """Sans-I/O reassembly of a Body Composition Measurement split over two indications (BCS 1.0
    section 3.2.1: when the value exceeds ATT_MTU-3 the server sends it as two values, each with its own
    Flags and Body Fat Percentage and the Multiple Packet Measurement flag set).

    feed() returns the whole measurement, or None while waiting for the second half. A single-packet
    value passes straight through; a single-packet value arriving while a half is pending drops that
    half (its partner was lost) and reports it in `dropped`."""

    def __init__(self) -> None:
        self.pending: BodyCompositionMeasurement | None = None
        self.dropped = 0

    def feed(self, part: BodyCompositionMeasurement) -> BodyCompositionMeasurement | None:
        if not part.multiple_packet_measurement:
            if self.pending is not None:
                self.pending, self.dropped = None, self.dropped + 1
            return part
        if self.pending is None:
            self.pending = part
            return None
        first, self.pending = self.pending, None
        merged = {name: getattr(first, name) if getattr(first, name) is not None else getattr(part, name)
                  for name in _OPTIONAL}
        return replace(first, flags=first.flags | part.flags, **merged)
