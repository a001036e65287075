"""Bluetooth status bits and glucose context -> model Metrics (coded and BITs values), per the PHD IG.

The PHD IG maps Bluetooth SIG devices "as if they were IEEE 11073 devices" (PHD IG 2.0.0, Non11073PHDDevices;
Bluetooth SIG Personal Health Devices Transcoding white paper), so each Bluetooth field becomes the IEEE 11073
object it transcodes to:
- status bit fields -> a BITs observation (PhdBitsEnumerationObservation) of the specialization's status
  attribute, each Bluetooth bit (bit 0 = least significant) moved to its IEEE 11073 MDER bit (bit 0 = most
  significant), named as the IG's ASN1ToHL7 code system names `<code>.<bit>` (mdc.ASN1_BITS);
- Glucose sample location, and the context's meal, tester and health -> coded observations
  (PhdCodedEnumerationObservation) of MDC_CTXT_GLU_SAMPLELOCATION / _MEAL / _TESTER / _HEALTH (IEEE 11073-10417).
Each such Metric has the time of the measurement it qualifies and points at it (Metric.derived_from: the
IG's meal-context example "should contain a derived-from reference pointing to the measurement containing the
glucose concentration"; bpm-status.json points at the blood pressure), except the oximeter's device and
sensor status, which qualifies SpO2 and pulse rate alike (bits-observation.json has no derivedFrom).

Bluetooth -> MDER bits (by the meaning each names; the ASN1ToHL7 displays in mdc.ASN1_BITS):
- BLS Measurement Status (0x2A35): bits 0-2 and 5 keep their numbers (body-movement, cuff-too-loose,
  irregular-pulse, improper-body-position); the Pulse Rate Range field 1 / 2 is bit 3 / 4
  (pulse-over-range-limit / pulse-under-range-limit).
- GLS Sensor Status Annunciation (0x2A18): bits 0-10 keep their numbers (device-battery-low ...
  device-gen-fault). Bit 11 "time fault" has no MDC_GLU_METER_DEV_STATUS bit (8417752.11 is
  sensor-temp-out-of-range): not mapped.
- PLXS Device and Sensor Status (0x2A5E/0x2A5F): Bluetooth bit n is MDER bit 15 - n (bit 0 "extended display
  update ongoing" = device-extended-update(15) ... bit 15 "sensor disconnected" = sensor-disconnected(0));
  bits 16-23 are reserved.
- CGMS Sensor Status Annunciation (0x2AA7: Status, Cal/Temp and Warning octets, CGMS 1.0.1 CGM Measurement,
  bit n of each octet as gatt/cgm.py names it) -> MDC_CGM_DEV_STAT 8418060, one explicit table per octet
  (CGM_STATUS_BITS, CGM_CAL_TEMP_BITS, CGM_WARNING_BITS) by the meaning ASN1ToHL7 gives each 8418060.<bit>:
  Status 0 session stopped -> 0, 2 sensor type incorrect -> 2, 3 sensor malfunction -> 3, 4 device specific
  alert -> 4; Cal/Temp 1 calibration not allowed -> 7, 2 recommended -> 8, 3 required -> 9, 4 temperature too
  high -> 10, 5 too low -> 11; Warning n -> 12 + n (below patient low ... higher than the device can process).
  Dropped, for want of an ASN1ToHL7 code: Status 1 device battery low and 5 general device fault (8418060.1
  and .5 are not in the code system), Cal/Temp 0 time synchronization required (.6 is not) and 6 calibration
  pending. Reserved bits (Status 6-7, Cal/Temp 7) are ignored.
Every one of these bits is an event (ASN1ToHL7 eventOrState), so only set bits are reported.

- the context's carbohydrate, medication and HbA1c -> numeric observations whose code is the 10417 Metric-Id
  (MDC_CTXT_GLU_CARB_BREAKFAST ..., MDC_CTXT_MEDICATION_RAPIDACTING ...; PHD IG "Obtaining the Observation.code":
  the term comes from the Metric-Id) or MDC_CONC_HBA1C, in g, mg or mL (the SFLOAT's exponent moved: kg -> g,
  kg -> mg, L -> mL) and %.
Not mapped (kept decoded): the context's exercise (its duration is a Measure-Active-Period, which the model
does not hold).
"""

from __future__ import annotations

from decimal import Decimal

from phg import mdc
from phg.model import Bit, BitString, Metric
from phg.sources.ble.gatt.blood_pressure import BloodPressureMeasurement
from phg.sources.ble.gatt.cgm import CgmRecord
from phg.sources.ble.gatt.glucose import GlucoseMeasurement, GlucoseMeasurementContext
from phg.sources.ble.gatt.numbers import Bits, Number

BP_STATUS_BITS: dict[str, int] = {"body movement detected": 0, "cuff too loose": 1, "irregular pulse detected": 2,
                                  "improper measurement position": 5}
BP_PULSE_RANGE_BITS: dict[str, int] = {"exceeds upper limit": 3, "less than lower limit": 4}
GLUCOSE_STATUS_BITS = range(11)  # Bluetooth bit n = MDER bit n; bit 11 (time fault) has no counterpart
# CGMS Sensor Status Annunciation bit (per octet) -> MDC_CGM_DEV_STAT MDER bit; a bit not listed is dropped.
CGM_STATUS_BITS: dict[int, int] = {0: 0, 2: 2, 3: 3, 4: 4}  # 1 battery low, 5 general fault: no code; 6-7 reserved
CGM_CAL_TEMP_BITS: dict[int, int] = {1: 7, 2: 8, 3: 9, 4: 10, 5: 11}  # 0 time sync, 6 cal. pending: no code; 7 reserved
CGM_WARNING_BITS: dict[int, int] = {n: 12 + n for n in range(8)}
CGM_OCTETS: dict[str, dict[int, int]] = {"status": CGM_STATUS_BITS, "cal_temp": CGM_CAL_TEMP_BITS,
                                         "warning": CGM_WARNING_BITS}

SAMPLE_LOCATIONS: dict[str, int] = {"finger": 8417848, "alternate site test": 8417852, "earlobe": 8417856,
                                    "control solution": 8417860}  # "not available": no observation
MEALS: dict[str, int] = {"preprandial": 8417868, "postprandial": 8417872, "fasting": 8417876, "casual": 8417880,
                         "bedtime": 8417869}
TESTERS: dict[str, int] = {"self": 8417888, "health care professional": 8417892, "lab test": 8417896}
HEALTH: dict[str, int] = {"minor health issues": 8417824, "major health issues": 8417828, "during menses": 8417832,
                          "under stress": 8417836, "no health issues": 8417840}
CARBOHYDRATES: dict[str, int] = {"breakfast": 8417768, "lunch": 8417772, "dinner": 8417776, "snack": 8417780,
                                 "drink": 8417784, "supper": 8417788, "brunch": 8417792}
MEDICATIONS: dict[str, int] = {"rapid acting insulin": 8417800, "short acting insulin": 8417804,
                               "intermediate acting insulin": 8417808, "long acting insulin": 8417812,
                               "pre-mixed insulin": 8417816}
MEDICATION_UNITS: dict[str, tuple[str, int]] = {"kg": ("mg", 6), "L": ("mL", 3)}  # GLS unit -> (UCUM, exponent shift)
_KEPT_STATUS = ("test-data", "demonstration-data")  # what the qualified measurement passes on (meta.security HTEST)


def qualifier(of: Metric, code: int, *, coded: int | None = None, bits: BitString | None = None,
              derived_from: int | None = 0) -> Metric:
    """A Metric qualifying `of` (index derived_from in the same reading): its time, time resolution and stamp,
    a coded or BITs value, and of's test/demonstration status."""
    return of._replace(code=code, value=None, unit=None, components=(), supplemental=(), coded=coded, bits=bits,
                   derived_from=derived_from, status=tuple(s for s in of.status if s in _KEPT_STATUS))


def bits_value(code: int, numbers: set[int]) -> BitString | None:
    """The BITs value of the set MDER bits that ASN1ToHL7 names, or None when none is set."""
    names = mdc.ASN1_BITS[code]
    kept = sorted(n for n in numbers if n in names)
    return BitString(mdc.BITS_LENGTH[code], tuple(Bit(n, names[n]) for n in kept)) if kept else None


def _set(bits: Bits | None) -> list[int]:
    return [n for n in range(bits.raw.bit_length()) if bits.raw >> n & 1] if bits else []


def blood_pressure_status(m: BloodPressureMeasurement) -> BitString | None:
    numbers = {BP_STATUS_BITS[name] for name in (m.measurement_status.names if m.measurement_status else ())
               if name in BP_STATUS_BITS}
    if m.pulse_rate_range in BP_PULSE_RANGE_BITS:
        numbers.add(BP_PULSE_RANGE_BITS[m.pulse_rate_range])
    return bits_value(mdc.MDC_BPM_DEV_STATUS, numbers)


def glucose_status(m: GlucoseMeasurement) -> BitString | None:
    return bits_value(mdc.MDC_GLU_METER_DEV_STATUS, {n for n in _set(m.sensor_status) if n in GLUCOSE_STATUS_BITS})


def plx_device_status(bits: Bits | None) -> BitString | None:
    return bits_value(mdc.MDC_PULS_OXIM_DEV_STATUS, {15 - n for n in _set(bits) if n < 16})


def cgm_status(record: CgmRecord) -> BitString | None:
    numbers = {table[n] for octet, table in CGM_OCTETS.items() for n in _set(getattr(record, octet)) if n in table}
    return bits_value(mdc.MDC_CGM_DEV_STATUS, numbers)


def glucose_context(glucose: Metric, m: GlucoseMeasurement, context: GlucoseMeasurementContext | None) -> list[Metric]:
    """Coded Metrics for the sample location (0x2A18) and the meal, tester and health (0x2A34) of a glucose
    Metric, each pointing at it (derived_from 0: the glucose is the reading's first metric)."""
    coded = [(mdc.MDC_CTXT_GLU_SAMPLELOCATION, SAMPLE_LOCATIONS.get(m.sample_location or ""))]
    if context is not None:
        coded += [(mdc.MDC_CTXT_GLU_MEAL, MEALS.get(context.meal or "")),
                  (mdc.MDC_CTXT_GLU_TESTER, TESTERS.get(context.tester or "")),
                  (mdc.MDC_CTXT_GLU_HEALTH, HEALTH.get(context.health or ""))]
    metrics = [qualifier(glucose, code, coded=value) for code, value in coded if value is not None]
    if context is not None:
        numbers = [(CARBOHYDRATES.get(context.carbohydrate_id or ""), context.carbohydrate_kg, "g", 3),
                   (mdc.MDC_CONC_HBA1C, context.hba1c_pct, "%", 0)]
        if context.medication_unit in MEDICATION_UNITS:
            unit, shift = MEDICATION_UNITS[context.medication_unit]
            numbers.append((MEDICATIONS.get(context.medication_id or ""), context.medication, unit, shift))
        metrics += [numeric(glucose, code, value, unit, shift) for code, value, unit, shift in numbers
                    if code is not None and value is not None]
    return metrics


def numeric(of: Metric, code: int, value: Number, unit: str, shift: int) -> Metric:
    """A numeric Metric qualifying `of`: the value with its exponent moved by `shift` (no rounding), or no value
    and status invalid for an SFLOAT special (NaN, NRes, ...)."""
    metric = qualifier(of, code)
    if not isinstance(value, Decimal):
        return metric._replace(unit=unit, status=("invalid", *metric.status))
    moved = value.scaleb(shift)
    return metric._replace(value=moved.quantize(Decimal(1)) if moved.as_tuple().exponent > 0 else moved, unit=unit)
