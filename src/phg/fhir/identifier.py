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

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from urllib.parse import quote

from phg.errors import MappingError
from phg.fhir.ig import data_absent_code, rules_for
from phg.model import BASE_OFFSET, LOCAL, TICKS, UTC_CLOCK, Metric, Reading, Stamp, tick_digits

_EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_EPOCH_2000_WALL = datetime(2000, 1, 1)
# IEEE 11073-20601 Base-Offset-Time counts from the IEEE 1588 epoch, as phg decodes it
# (phg.sources.ieee11073.mder.BO_EPOCH): the 1.1.0 part writes back the seconds the device sent.
_BO_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE = timedelta(minutes=1)
_QUARTER_HOUR = timedelta(minutes=15)
_DOCUMENT = Stamp()  # a reading document's default: a UTC instant with the offset its writer gave


def conditional_identifier(reading: Reading, metric: Metric, ig_version: str = "2.0.0") -> tuple[str | None, str]:
    """(system, value) of the PHD IG duplicate-detection identifier (system None for 1.1.0)."""
    return conditional_identifiers(reading, ig_version, (metric,))[0]


def conditional_identifiers(reading: Reading, ig_version: str = "2.0.0",
                            metrics: Sequence[Metric] | None = None) -> list[tuple[str | None, str]]:
    """`conditional_identifier` of each of the reading's metrics (or of `metrics`), the device and
    patient parts written once."""
    rules = rules_for(ig_version)
    head = f"{reading.device.identity}-{reading.patient.value}-{reading.patient.system}-"
    identifiers = []
    for metric in reading.metrics if metrics is None else metrics:
        if rules.version == "1.1.0":
            parts = [str(metric.code), *_value_units_v1(metric), timestamp_v1(metric.time, metric.stamp)]
        else:
            parts = [str(metric.code), timestamp_v2(metric.time, metric.time_digits, metric.stamp)]
        # "-supplemental types": the Supplemental-Types codes, each joined with a dash (both releases;
        # numeric-spotnumeric.json "...-149530-20181113175903.00-150588").
        parts += map(str, metric.supplemental)
        identifiers.append((rules.identifier_system, head + "-".join(parts)))
    return identifiers


def timestamp_v2(time: datetime, digits: int = 0, stamp: Stamp = _DOCUMENT) -> str:
    """IG 2.0.0 timestamp part: "the reported value" of the device's clock (PHD IG 2.0.0, "Generating the
    PHD Reported Timestamp Identifier", http://hl7.org/fhir/uv/phd/STU2/GeneratingtheTimeStampPartIdentifier.html):
    - a tick counter: the seconds it represents at its resolution ("12345.678" for 12345678 ticks of 1 ms);
    - local or UTC time: the seconds since 2000-01-01T00:00:00 it represents at its resolution: for a
      local clock the seconds of its wall time (`time` as written in its own offset), for a UTC clock (and
      an IEEE 11073 base-offset time) those of the instant;
    - then, only when the device reported a TZ/DST offset (stamp.device_offset), that offset in 15-minute
      units with its sign ("+4" for +01:00, "+0" for UTC), as IEEE 11073-10206 and Bluetooth GHS report it.
    An offset the gateway supplied (a zoneless Bluetooth time) is the gateway's, not the reported value:
    left out, so that two gateways in different zones compute the same identifier.
    A 1 s resolution (digits=0) gives no fraction; N digits print N digits, truncated as
    model.format_time truncates them. Integer arithmetic: the count of units of 10^-digits s, rounded
    down (towards the past, also before 2000), then written with `digits` decimals.
    """
    if stamp.kind == TICKS:
        places = tick_digits(stamp.tick_rate)  # type: ignore[arg-type]  # a TICKS Stamp has a valid rate
        return _decimals(stamp.ticks * 10 ** places // stamp.tick_rate, places)  # type: ignore[operator]
    since = time.replace(tzinfo=None) - _EPOCH_2000_WALL if stamp.kind == LOCAL else time - _EPOCH_2000
    text = _decimals((since // _MICROSECOND) // 10 ** (6 - digits), digits)
    return f"{text}{_offset_quarters(time):+d}" if stamp.device_offset else text


def _decimals(count: int, digits: int) -> str:
    """`count` units of 10^-digits written with `digits` decimals ("690897390.567"; "-1.500" below zero)."""
    if not digits:
        return str(count)
    sign, whole, fraction = "-" if count < 0 else "", *divmod(abs(count), 10 ** digits)
    return f"{sign}{whole}.{fraction:0{digits}d}"


def timestamp_v1(time: datetime, stamp: Stamp = _DOCUMENT) -> str:
    """IG 1.1.0 timestamp part ("Generating the PHD Reported Time Stamp Identifier",
    http://hl7.org/fhir/uv/phd/STU1.1/GeneratingtheReportedTimeStampIdentifier.html): absolute time as
    HL7 DTM YYYYMMDDhhmmss.ss of the wall time the device reported (e.g. 20181113175902.00): a local clock's
    wall time, a UTC clock's time in the device's offset when it reported one, else in UTC; a (high-resolution)
    relative time as the reported tick count, a decimal integer without leading zeros; a base-offset time
    as "seconds.fraction.offset": the Base-Offset-Time's three fields as the device sent them (bo-seconds,
    bo-fraction in 1/65536 s, bo-time-offset in signed minutes; the page's example "3563536440.4884.-300").
    The page counts bo-seconds from 1900, IEEE 1588 (and phg's decoder) from 1970: the epoch phg read them
    with writes back the number the device sent either way."""
    if stamp.kind == TICKS:
        return str(stamp.ticks)
    if stamp.kind == BASE_OFFSET:
        since = time - _BO_EPOCH
        seconds, micro = divmod(since // _MICROSECOND, 1_000_000)
        fraction = min(-(-micro * 65536 // 1_000_000), 65535)  # the decoder floored fraction * 10^6 / 65536
        return f"{seconds}.{fraction}.{time.utcoffset() // _MINUTE:+d}"  # type: ignore[operator]
    if stamp.kind == UTC_CLOCK and not stamp.device_offset:
        time = time.astimezone(UTC)
    return time.strftime("%Y%m%d%H%M%S") + f".{time.microsecond // 10000:02d}"


def if_none_exist(system: str | None, value: str) -> str:
    """The ifNoneExist query `identifier=<system>|<value>`, each side FHIR-escaped then percent-encoded.

    ifNoneExist is a URL query string (FHIR R4 http.html#cond-update): an unencoded '+' arrives as a
    space ("+4" offset -> " 4"), matches nothing, and every retry would create a duplicate. '|' stays
    the token separator; a '|', ',' or '$' inside a part is escaped with '\\' (FHIR search.html#escaping).
    """
    token = _encode(value) if system is None else f"{_encoded_system(system)}|{_encode(value)}"
    return f"identifier={token}"


@lru_cache(maxsize=256)
def _encoded_system(system: str) -> str:
    """A system's part of the query: the same few systems (the IG's, the patient identifier's) come back for
    every entry."""
    return _encode(system)


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
