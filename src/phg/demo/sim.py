"""Simulated devices: plausible readings from the five standard device types, for `phg demo`,
benchmarks and tests. Deterministic for a given seed and start time."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from phg.model import Component, Device, Metric, PatientRef, Reading, Specialization

# (name, EUI-64 system id, model, IEEE 11073 specialization MDC_DEV_SPEC_PROFILE_*)
DEVICES = {
    "glucose": ("0A1B2C3D4E5F6001", "Sim Glucose Meter", 528401),
    "blood_pressure": ("0A1B2C3D4E5F6002", "Sim BP Cuff", 528391),
    "scale": ("0A1B2C3D4E5F6003", "Sim Scale", 528399),
    "thermometer": ("0A1B2C3D4E5F6004", "Sim Thermometer", 528392),
    "pulse_oximeter": ("0A1B2C3D4E5F6005", "Sim Pulse Oximeter", 528388),
}


def _d(rng: random.Random, low: float, high: float, places: int) -> Decimal:
    return Decimal(f"{rng.uniform(low, high):.{places}f}")


def _glucose(rng: random.Random, t: datetime) -> list[Metric]:
    return [Metric(160184, t, _d(rng, 4.2, 9.5, 1), "mmol/L")]


def _blood_pressure(rng: random.Random, t: datetime) -> list[Metric]:
    sys_, dia = rng.randint(105, 150), rng.randint(65, 95)
    mean = Decimal(round((sys_ + 2 * dia) / 3))
    bp = Metric(150020, t, unit="mm[Hg]", components=(
        Component(150021, Decimal(sys_), "mm[Hg]"), Component(150022, Decimal(dia), "mm[Hg]"),
        Component(150023, mean, "mm[Hg]")))
    return [bp, Metric(149546, t, Decimal(rng.randint(55, 95)), "/min")]


def _scale(rng: random.Random, t: datetime) -> list[Metric]:
    weight, height = _d(rng, 55, 110, 1), Decimal("172.0")
    bmi = (weight / (height / 100) ** 2).quantize(Decimal("0.1"))
    return [Metric(188736, t, weight, "kg"), Metric(188740, t, height, "cm"), Metric(188752, t, bmi, "kg/m2")]


def _thermometer(rng: random.Random, t: datetime) -> list[Metric]:
    return [Metric(150364, t, _d(rng, 36.1, 37.8, 2), "Cel")]


def _pulse_oximeter(rng: random.Random, t: datetime) -> list[Metric]:
    return [Metric(150456, t, Decimal(rng.randint(93, 99)), "%"), Metric(149530, t, Decimal(rng.randint(55, 95)), "/min")]


MEASURE: dict[str, Callable[[random.Random, datetime], list[Metric]]] = {
    "glucose": _glucose, "blood_pressure": _blood_pressure, "scale": _scale,
    "thermometer": _thermometer, "pulse_oximeter": _pulse_oximeter,
}


def simulated_readings(patient: PatientRef, start: datetime, per_device: int = 1, seed: int = 0,
                       devices: tuple[str, ...] = tuple(DEVICES)) -> list[Reading]:
    """`per_device` readings from each device, one minute apart from `start` (timezone-aware)."""
    rng = random.Random(seed)
    start = start.replace(microsecond=0)
    readings = []
    for n in range(per_device):
        for name in devices:
            system_id, model, profile = DEVICES[name]
            device = Device(system_id=system_id, manufacturer="phg simulator", model=model,
                            serial=f"SIM-{system_id[-4:]}", firmware="1.0", specializations=(Specialization(profile, 1),))
            t = start + timedelta(minutes=n)
            readings.append(Reading(device, patient, tuple(MEASURE[name](rng, t))))
    return readings
