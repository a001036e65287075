"""Decoded GATT measurements -> model Metrics (MDC code, UCUM unit, Decimal value, zoned time, status).

Codes and units per the PHD IG and the Bluetooth SIG PHD transcoding white paper (BLE devices are
mapped as if they were IEEE 11073 devices): HL7 PHD IG 2.0.0, http://hl7.org/fhir/uv/phd/STU2; phg.mdc holds the tables.

Time. The BLE health profiles send local wall-clock time without a zone (GLS, BLS, WSS, BCS, HTS,
PLXS); the gateway knows the zone, so `utc_offset` is either a fixed offset or a function from the
device's wall-clock time to the offset then in force (DST-correct for stored records, e.g.
`offset_in(ZoneInfo("Europe/Berlin"))`). GLS adds its Time Offset (minutes) to the Base Time before the
offset is attached. A measurement without a usable timestamp takes the time of reception (PHD IG:
"no device timestamp -> time of reception"); that is the case when:
  - the profile has no timestamp (PLX Continuous, Heart Rate) or the flag says none was sent;
  - the Date Time says "unknown" (year, month or day 0, e.g. a cuff whose year was never set);
  - the PLX device says its clock is not set (flag bit 4).
CGM records are minute offsets from the CGM Session Start Time (0x2AAA), which carries its own time
zone and DST; without one the offset given here is used; without a session start there is no time.
Times have 1 s resolution (Metric.time_digits 0); the time of reception has 1 ms (time_digits 3): two readings
received in one second are two readings, with two identifiers (the PHD IG 2.0.0 identifier has no value, so two
heart rates received in one second stamped to the second were one, the second dropped as a duplicate; review B
finding 1; the Collector also keeps its receptions apart, phg.model.Receptions).
Each Metric says how its time was reported (Metric.stamp, which the PHD IG identifier encodes): a Date Time
is "local" with the gateway's offset; a CGM time is "local" with the device's offset when the Session Start
Time carries Time Zone and DST, else the gateway's; the time of reception is the gateway's clock (Stamp kind
"received": never corrected by the device clock's offset, phg.fhir.resources.effective_time).

Values. SFLOAT/FLOAT digits are kept (Decimal); unit conversions move the exponent, never round
(0.00120 kg/L -> 120 mg/dL). A special value (NaN, NRes, +/-INF, reserved) or a "measurement
unsuccessful" gives a Metric without value and with status "invalid" (the model has no slot for the
special itself). Profile measurement-status bits (PLXS) become Metric.status names. Device and sensor
status bits become BITs Metrics, the glucose sample location and context (0x2A34, given as glucose_context)
coded and numeric Metrics, each after the measurement it qualifies (gatt/context.py); PLX spot-check metrics
carry Supplemental-Types MDC_MODALITY_SPOT, the continuous fast/slow averages MDC_MODALITY_FAST/_SLOW.

Not mapped to Metrics (kept decoded): intermediate values (0x2A36 cuff pressure, 0x2A1E temperature),
the pulse amplitude index, body composition masses other than weight, BMR and impedance, HR energy and RR
intervals, CGM trend and quality, the glucose context's exercise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal

from phg import mdc
from phg.errors import MappingError
from phg.model import (
    LOCAL,
    MAX_DIGITS,
    RECEIVED,
    RECEIVED_STAMP,
    RECEPTION_DIGITS,
    Component,
    Metric,
    Stamp,
    reception_time,
)
from phg.sources.ble.gatt import context as ble_context
from phg.sources.ble.gatt.blood_pressure import BloodPressureMeasurement
from phg.sources.ble.gatt.cgm import CgmMeasurement, CgmSessionStartTime
from phg.sources.ble.gatt.glucose import GlucoseMeasurement, GlucoseMeasurementContext
from phg.sources.ble.gatt.heart_rate import HeartRateMeasurement
from phg.sources.ble.gatt.numbers import Bits, DateTime, Number, Special
from phg.sources.ble.gatt.pulse_oximeter import PlxContinuousMeasurement, PlxSpotCheckMeasurement
from phg.sources.ble.gatt.thermometer import TemperatureMeasurement, TemperatureType
from phg.sources.ble.gatt.weight import BodyCompositionMeasurement, WeightMeasurement, WeightScaleFeature

UtcOffset = timedelta | Callable[[datetime], timedelta]
Timed = tuple[datetime, Stamp]  # a metric's time and how the device reported it (model.Stamp)
# A legacy profile's Date Time: local wall time without a zone; the offset that places it is the gateway's.
LOCAL_STAMP = Stamp(LOCAL, device_offset=False)

# ---------------------------------------------------------------- tables

# GLS Type -> MDC glucose code (code_map.json; 11073-10417 terms 29112.. in partition 2).
GLUCOSE_CODES: dict[str, int] = {
    "capillary whole blood": 160184, "capillary plasma": 160188, "venous whole blood": 160192,
    "venous plasma": 160196, "arterial whole blood": 160200, "arterial plasma": 160204,
    "undetermined whole blood": 160364, "undetermined plasma": 160368, "control solution": 160208,
    "interstitial fluid": 160212,
}
# GLS concentration unit -> (UCUM unit, power of ten to move the exponent by).
GLUCOSE_UNITS: dict[str, tuple[str, int]] = {"kg/L": ("mg/dL", 5), "mol/L": ("mmol/L", 3)}
CGM_GLUCOSE = 160212  # MDC_CONC_GLU_ISF: a CGM measures interstitial fluid

BP_COMPOUND, BP_SYSTOLIC, BP_DIASTOLIC, BP_MEAN, BP_PULSE = 150020, 150021, 150022, 150023, 149546
BP_UNITS: dict[str, str] = {"mmHg": "mm[Hg]", "kPa": "kPa"}

BODY_WEIGHT, BODY_HEIGHT, BMI, BODY_FAT = 188736, 188740, 188752, 188748
MASS_UNITS: dict[str, str] = {"kg": "kg", "lb": "[lb_av]"}

# HTS Temperature Type -> MDC site code (11073-10408; "body" and no type: MDC_TEMP_BODY).
TEMPERATURE_CODES: dict[str | None, int] = {
    None: 150364, "body": 150364, "armpit": 188452, "ear": 188428, "finger": 188432, "gastrointestinal tract": 188456,
    "mouth": 188424, "rectum": 188420, "toe": 188448, "tympanum": 150392,
}

SPO2, PLX_PULSE, HEART_RATE = 150456, 149530, 147842

# PLXS Measurement Status bit -> IEEE 11073-20601 MeasurementStatus name (mdc.MEASUREMENT_STATUS).
# "fully qualified data" and "data from measurement storage" have no counterpart and stay decoded only.
PLX_STATUS: dict[str, str] = {
    "invalid measurement detected": "invalid", "questionable measurement detected": "questionable",
    "measurement unavailable": "not-available", "calibration ongoing": "calibration-ongoing",
    "data for testing": "test-data", "data for demonstration": "demonstration-data", "validated data": "validated-data",
    "early estimated data": "early-indication", "measurement ongoing": "msmt-ongoing",
}


def offset_in(zone: tzinfo) -> Callable[[datetime], timedelta]:
    """utc_offset for a zone: the offset in force at each device wall-clock time (fold 0 when ambiguous)."""

    def offset(wall: datetime) -> timedelta:
        return zone.utcoffset(wall) or timedelta(0)

    return offset


# ---------------------------------------------------------------- entry point


@dataclass(frozen=True)
class _Context:
    utc_offset: UtcOffset
    received: datetime
    weight_feature: WeightScaleFeature | None
    session_start: CgmSessionStartTime | None
    temperature_type: TemperatureType | None
    glucose_context: GlucoseMeasurementContext | None = None

    @property
    def reception(self) -> Timed:
        """The time of reception, for a measurement without a usable device timestamp: the gateway's clock."""
        return self.received, RECEIVED_STAMP


def to_metrics(measurement: object, *, utc_offset: UtcOffset, received: datetime,
               weight_feature: WeightScaleFeature | None = None, session_start: CgmSessionStartTime | None = None,
               temperature_type: TemperatureType | None = None,
               glucose_context: GlucoseMeasurementContext | None = None) -> list[Metric]:
    """The Metrics of one decoded measurement. Pure: the same inputs give the same Metrics.

    utc_offset: the gateway's offset, fixed or as a function of the device's wall-clock time.
    received: when the gateway received the value (timezone-aware); the time of measurements
    without a usable timestamp (see the module docstring; a Date Time with year, month or day 0 is
    "unknown" and counts as no timestamp).
    weight_feature: 0x2A9E, for the scale's resolution (decimals kept); session_start: 0x2AAA, needed
    for CGM records; temperature_type: 0x2A1D, the site when 0x2A1C does not carry one; glucose_context:
    the 0x2A34 that followed a 0x2A18 (same sequence number), mapped with it (gatt/context.py).
    Status bits and glucose context become coded and BITs Metrics after the measurement's (gatt/context.py).
    A decoded value that is not a measurement (features, RACP, context, intermediate values) gives [].
    MappingError: a CGM record without a usable session start time."""
    if received.tzinfo is None or received.utcoffset() is None:
        raise ValueError("received must be timezone-aware")
    mapper = _MAPPERS.get(type(measurement))
    if mapper is None:
        return []
    ctx = _Context(utc_offset, reception_time(received), weight_feature, session_start, temperature_type,
                   glucose_context)
    return mapper(measurement, ctx)


# ---------------------------------------------------------------- helpers


def _time(ctx: _Context, stamp: DateTime | None, plus: timedelta = timedelta(0)) -> Timed:
    """A Date Time field's wall time placed with the gateway's offset (Stamp "local", offset from the
    gateway), or the time of reception when there is none."""
    wall = stamp.naive if stamp is not None else None
    if wall is None:
        return ctx.reception
    return _zoned(wall + plus, ctx.utc_offset), LOCAL_STAMP


def _zoned(wall: datetime, utc_offset: UtcOffset) -> datetime:
    offset = utc_offset(wall) if callable(utc_offset) else utc_offset
    return wall.replace(tzinfo=timezone(offset))


def _plain(value: Decimal) -> Decimal:
    """120E+1 -> 1200: FHIR and the reading document want plain decimals; digits are not invented
    beyond what the exponent already said. Not beyond model.MAX_DIGITS digits: a FLOAT of 8388607E+12 stays as
    it is (a reading holds at most that many; its plain form, 19 digits, was refused when delivery read the
    stored reading back, dead-lettering it)."""
    if value.as_tuple().exponent > 0 and value.adjusted() < MAX_DIGITS:  # type: ignore[operator]
        return value.quantize(Decimal(1))
    return value


def _number(value: Number | None) -> tuple[Decimal | None, tuple[str, ...]]:
    if value is None or isinstance(value, Special):
        return None, ("invalid",)
    return _plain(value), ()


def _metric(code: int, value: Number | None, unit: str, when: Timed, status: tuple[str, ...] = ()) -> Metric:
    number, extra = _number(value)
    return Metric(code=code, time=when[0], value=number, unit=unit, time_digits=_digits(when),
                  status=_ordered(status + extra), stamp=when[1])


def _digits(when: Timed) -> int:
    """The fractional digits of a metric's time: a time of reception's (milliseconds), else 0 (a Date Time has whole
    seconds)."""
    return RECEPTION_DIGITS if when[1].kind == RECEIVED else 0


def _ordered(names: tuple[str, ...]) -> tuple[str, ...]:
    from phg.mdc import MEASUREMENT_STATUS

    return tuple(name for name in MEASUREMENT_STATUS if name in names)


def _plx_status(bits: Bits | None) -> tuple[str, ...]:
    return tuple(PLX_STATUS[name] for name in bits.names if name in PLX_STATUS) if bits else ()


def _quantize(value: Decimal | None, step: Decimal | None) -> Decimal | None:
    if value is None or step is None:
        return value
    return value.quantize(Decimal(1).scaleb(step.as_tuple().exponent))  # type: ignore[arg-type]


# ---------------------------------------------------------------- per profile


def _glucose(m: GlucoseMeasurement, ctx: _Context) -> list[Metric]:
    if m.concentration is None or m.type is None or m.concentration_unit is None:
        return []
    unit, shift = GLUCOSE_UNITS[m.concentration_unit]
    value = m.concentration.scaleb(shift) if isinstance(m.concentration, Decimal) else m.concentration
    time = _time(ctx, m.base_time, timedelta(minutes=m.time_offset_min or 0))
    glucose = _metric(GLUCOSE_CODES[m.type], value, unit, time)
    metrics = [glucose, *ble_context.glucose_context(glucose, m, ctx.glucose_context)]
    if (status := ble_context.glucose_status(m)) is not None:
        metrics.append(ble_context.qualifier(glucose, mdc.MDC_GLU_METER_DEV_STATUS, bits=status))
    return metrics


def _blood_pressure(m: BloodPressureMeasurement, ctx: _Context) -> list[Metric]:
    if m.intermediate:
        return []
    unit = BP_UNITS[m.unit]
    time = _time(ctx, m.timestamp)
    if isinstance(m.systolic, Decimal) and isinstance(m.diastolic, Decimal):
        parts = [(BP_SYSTOLIC, m.systolic), (BP_DIASTOLIC, m.diastolic)]
        if isinstance(m.mean_arterial_pressure, Decimal):  # MAP is often NaN: the compound goes without it
            parts.append((BP_MEAN, m.mean_arterial_pressure))
        metrics = [Metric(code=BP_COMPOUND, time=time[0], unit=unit, time_digits=_digits(time), stamp=time[1],
                          components=tuple(Component(code, _plain(value), unit) for code, value in parts))]
    else:
        metrics = [Metric(code=BP_COMPOUND, time=time[0], unit=unit, time_digits=_digits(time), stamp=time[1],
                          status=("invalid",))]
    if m.pulse_rate is not None:
        metrics.append(_metric(BP_PULSE, m.pulse_rate, "/min", time))
    if (status := ble_context.blood_pressure_status(m)) is not None:
        metrics.append(ble_context.qualifier(metrics[0], mdc.MDC_BPM_DEV_STATUS, bits=status))
    return metrics


def _weight(m: WeightMeasurement, ctx: _Context) -> list[Metric]:
    time = _time(ctx, m.timestamp)
    feature = ctx.weight_feature
    imperial = m.weight_unit == "lb"
    step = (feature.weight_step_lb if imperial else feature.weight_step_kg) if feature else None
    metrics = [_metric(BODY_WEIGHT, _quantize(m.weight, step), MASS_UNITS[m.weight_unit], time)]
    if m.height is not None:
        metrics.append(_height(m.height, imperial, feature, time))
    if m.bmi is not None:
        metrics.append(_metric(BMI, m.bmi, "kg/m2", time))
    return metrics


def _height(height: Decimal, imperial: bool, feature: WeightScaleFeature | None, time: Timed) -> Metric:
    if imperial:
        return _metric(BODY_HEIGHT, _quantize(height, feature.height_step_in if feature else None), "[in_i]", time)
    step = feature.height_step_m.scaleb(2) if feature and feature.height_step_m else None
    return _metric(BODY_HEIGHT, _quantize(height.scaleb(2), step), "cm", time)  # m -> cm by the exponent


def _body_composition(m: BodyCompositionMeasurement, ctx: _Context) -> list[Metric]:
    time = _time(ctx, m.timestamp)
    imperial = m.mass_unit == "lb"
    metrics = [_metric(BODY_FAT, m.body_fat_pct, "%", time)]
    if m.weight is not None:
        metrics.append(_metric(BODY_WEIGHT, m.weight, MASS_UNITS[m.mass_unit], time))
    if m.height is not None:
        metrics.append(_height(m.height, imperial, None, time))
    return metrics


def _temperature(m: TemperatureMeasurement, ctx: _Context) -> list[Metric]:
    if m.intermediate:
        return []
    site = m.temperature_type or (ctx.temperature_type.temperature_type if ctx.temperature_type else None)
    return [_metric(TEMPERATURE_CODES[site], m.temperature, m.unit, _time(ctx, m.timestamp))]


def _plx_spot_check(m: PlxSpotCheckMeasurement, ctx: _Context) -> list[Metric]:
    time = ctx.reception if m.device_clock_not_set else _time(ctx, m.timestamp)
    status = _plx_status(m.measurement_status)
    spot = (mdc.MDC_MODALITY_SPOT,)  # a spot-check is MDC_MODALITY_SPOT (PHD IG numeric-spotnumeric.json)
    metrics = [_metric(SPO2, m.spo2_pct, "%", time, status)._replace(supplemental=spot),
               _metric(PLX_PULSE, m.pulse_rate_bpm, "/min", time, status)._replace(supplemental=spot)]
    return metrics + _plx_device_status(metrics[0], m.device_and_sensor_status)


def _plx_continuous(m: PlxContinuousMeasurement, ctx: _Context) -> list[Metric]:
    status = _plx_status(m.measurement_status)
    metrics = [_metric(SPO2, m.spo2_pct, "%", ctx.reception, status),
               _metric(PLX_PULSE, m.pulse_rate_bpm, "/min", ctx.reception, status)]
    # The other averaging times: the same metrics with Supplemental-Types MDC_MODALITY_FAST / _SLOW.
    for pair, modality in ((m.fast, mdc.MDC_MODALITY_FAST), (m.slow, mdc.MDC_MODALITY_SLOW)):
        if pair is not None:
            metrics += [_metric(SPO2, pair[0], "%", ctx.reception, status)._replace(supplemental=(modality,)),
                        _metric(PLX_PULSE, pair[1], "/min", ctx.reception, status)._replace(supplemental=(modality,))]
    return metrics + _plx_device_status(metrics[0], m.device_and_sensor_status)


def _plx_device_status(spo2: Metric, bits: Bits | None) -> list[Metric]:
    """MDC_PULS_OXIM_DEV_STATUS for SpO2 and pulse rate alike: no derived_from (bits-observation.json)."""
    status = ble_context.plx_device_status(bits)
    return [] if status is None else [
        ble_context.qualifier(spo2, mdc.MDC_PULS_OXIM_DEV_STATUS, bits=status, derived_from=None)]


def _heart_rate(m: HeartRateMeasurement, ctx: _Context) -> list[Metric]:
    return [_metric(HEART_RATE, Decimal(m.heart_rate_bpm), "/min", ctx.reception)]


def _cgm(m: CgmMeasurement, ctx: _Context) -> list[Metric]:
    session = ctx.session_start
    start = session.start.naive if session else None
    if session is None or start is None:
        raise MappingError("0x2AA7 CGM Measurement: record times are offsets from the CGM Session Start Time "
                           "(0x2AAA); read it first (it is missing or its date is unknown)")
    # The session start is local time; its Time Zone and DST Offset, when the sensor knows them, are the
    # device's offset (appended to the identifier), else the gateway's is used (left out).
    offset: UtcOffset = session.utc_offset if session.utc_offset is not None else ctx.utc_offset
    stamp = Stamp(LOCAL, device_offset=session.utc_offset is not None)
    metrics: list[Metric] = []
    for r in m.records:  # each record's Sensor Status Annunciation follows it, pointing at it
        metrics.append(_metric(CGM_GLUCOSE, r.glucose, "mg/dL",
                               (_zoned(start + timedelta(minutes=r.time_offset_min), offset), stamp)))
        if (status := ble_context.cgm_status(r)) is not None:
            metrics.append(ble_context.qualifier(metrics[-1], mdc.MDC_CGM_DEV_STATUS, bits=status,
                                                 derived_from=len(metrics) - 1))
    return metrics


_MAPPERS: dict[type, Callable[..., list[Metric]]] = {
    GlucoseMeasurement: _glucose,
    BloodPressureMeasurement: _blood_pressure,
    WeightMeasurement: _weight,
    BodyCompositionMeasurement: _body_composition,
    TemperatureMeasurement: _temperature,
    PlxSpotCheckMeasurement: _plx_spot_check,
    PlxContinuousMeasurement: _plx_continuous,
    HeartRateMeasurement: _heart_rate,
    CgmMeasurement: _cgm,
}
