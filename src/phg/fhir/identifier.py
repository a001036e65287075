"""The PHD IG duplicate-detection identifier (Observation.identifier[conditionalCreate]) and the
ifNoneExist query that carries it.

PHD IG 2.0.0, "The Observation Identifier" and "Generating the Time Stamp Part of the Identifier"
(http://hl7.org/fhir/uv/phd/STU2/ObservationIdentifier.html,
http://hl7.org/fhir/uv/phd/STU2/GeneratingtheTimeStampPartIdentifier.html):
    device-patient-type-timestamp[..duration][-supplemental...]
PHD IG 1.1.0, Numeric Observation profile, "Conditional Create Identifier Generation":
    device-patient-type-value-units-timestamp[-supplemental...]

Parts that are absent are left out together with their dash: the IG's own identifiers end with
the last present part ("...-20170602150227.00" in meal-context-observation.json, no trailing "-"),
and the duration is glued to the timestamp with "..", not joined with "-".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from phg.errors import MappingError
from phg.fhir.ig import data_absent_code, rules_for
from phg.model import Metric, Reading

_EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_QUARTER_HOUR = timedelta(minutes=15)


def conditional_identifier(reading: Reading, metric: Metric, ig_version: str = "2.0.0") -> tuple[str | None, str]:
    """(system, value) of the PHD IG duplicate-detection identifier (system None for 1.1.0)."""
    rules = rules_for(ig_version)
    patient = f"{reading.patient.value}-{reading.patient.system}"
    head = [reading.device.identity, patient, str(metric.code)]
    if rules.version == "1.1.0":
        parts = head + _value_units_v1(metric) + [timestamp_v1(metric.time)]
    else:
        parts = head + [timestamp_v2(metric.time, metric.time_digits)]
    # "-supplemental types": the Supplemental-Types codes, each joined with a dash (both releases;
    # numeric-spotnumeric.json "...-149530-20181113175903.00-150588").
    return rules.identifier_system, "-".join(parts + [str(code) for code in metric.supplemental])


def timestamp_v2(time: datetime, digits: int = 0) -> str:
    """IG 2.0.0 timestamp part: seconds since 2000-01-01T00:00:00 at the device's resolution,
    then the TZ/DST offset in 15-minute units with its sign ("+4" for +01:00, "+0" for UTC).

    The count is of UTC seconds: the model keeps an instant plus its offset, which is what a
    UTC-aligned clock with a TZ/DST offset reports (Bluetooth GHS / IEEE 11073-10206 timestamp),
    and the offset is appended on its own, so local wall time is recoverable from the two.
    A 1 s resolution (digits=0) gives no fraction; N digits print N digits, truncated as
    model.format_time truncates them. Integer arithmetic: the count of units of 10^-digits s, rounded
    down (towards the past, also before 2000), then written with `digits` decimals.
    """
    count = ((time - _EPOCH_2000) // _MICROSECOND) // 10 ** (6 - digits)
    if digits:
        sign, whole, fraction = "-" if count < 0 else "", *divmod(abs(count), 10 ** digits)
        return f"{sign}{whole}.{fraction:0{digits}d}{_offset_quarters(time):+d}"
    return f"{count}{_offset_quarters(time):+d}"


def timestamp_v1(time: datetime) -> str:
    """IG 1.1.0 timestamp part: the device's wall-clock time as HL7 DTM YYYYMMDDhhmmss.ss
    ("Generating the PHD Reported Time Stamp Identifier"; e.g. 20181113175902.00)."""
    return time.strftime("%Y%m%d%H%M%S") + f".{time.microsecond // 10000:02d}"


def if_none_exist(system: str | None, value: str) -> str:
    """The ifNoneExist query `identifier=<system>|<value>`, each side FHIR-escaped then percent-encoded.

    ifNoneExist is a URL query string (FHIR R4 http.html#cond-update): an unencoded '+' arrives as a
    space ("+4" offset -> " 4"), matches nothing, and every retry would create a duplicate. '|' stays
    the token separator; a '|', ',' or '$' inside a part is escaped with '\\' (FHIR search.html#escaping).
    """
    token = _encode(value) if system is None else f"{_encode(system)}|{_encode(value)}"
    return f"identifier={token}"


def _encode(part: str) -> str:
    if part.isascii():  # one pass over a table: the same text as the general path below
        return part.translate(_ASCII_ENCODED)
    escaped = part.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")
    return quote(escaped, safe=":/")


def _ascii_encoded() -> dict[int, str]:
    """Each ASCII character as `_encode` writes it: FHIR-escaped, then percent-encoded as urllib.parse.quote
    does with safe=":/" (letters, digits, "_.-~" and ":/" kept, everything else %XX in upper case)."""
    kept = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~:/")
    table = {c: chr(c) if chr(c) in kept else f"%{c:02X}" for c in range(128)}
    for special in "\\|,$":
        table[ord(special)] = "%5C" + table[ord(special)]
    return table


_ASCII_ENCODED = _ascii_encoded()


def _offset_quarters(time: datetime) -> int:
    offset = time.utcoffset()
    if offset is None:
        raise MappingError(f"time {time.isoformat()} has no UTC offset")
    if offset % _QUARTER_HOUR:
        raise MappingError(f"UTC offset of {time.isoformat()} is not a whole number of 15 minutes, "
                           "which a PHD timestamp's TZ/DST offset always is")
    return offset // _QUARTER_HOUR


def _value_units_v1(metric: Metric) -> list[str]:
    """IG 1.1.0 value and units parts: valueQuantity.value and its UCUM code, or the dataAbsentReason
    code when the value is absent. A compound metric (no IG 1.1.0 rule found) gives value and units
    of each component in order."""
    absent = data_absent_code(metric.status)
    # Coded and BITs enumerations have no units part: "device-patient-type-value-reported PHD timestamp-
    # supplemental types", the value being the MDC code (or dataAbsentReason code) or the raw 16/32-bit integer
    # (1.1.0 CodedEnumerationObservationProfile / BITsEnumerationObservationProfile, "Conditional Create
    # Identifier Generation").
    if metric.coded is not None or metric.bits is not None:
        return [absent or (str(metric.coded) if metric.coded is not None else str(metric.bits.raw))]  # type: ignore[union-attr]
    if absent is not None:
        return [absent, metric.unit or ""]
    if metric.components:
        return [text for c in metric.components for text in (str(c.value), c.unit)]
    return [str(metric.value), metric.unit or ""]
