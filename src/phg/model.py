"""The neutral measurement model: everything downstream of a source reads only this.

A Reading is one device's upload unit: the device identity, the patient it belongs to, and the
metrics it measured. Values are Decimals so that a device's precision survives ("2.00" stays 2.00,
PHD IG: FLOAT/SFLOAT precision is kept). Times are timezone-aware and remember how many fractional
digits the device gave, which the PHD IG 2.0.0 duplicate-detection identifier needs.

`parse_reading` turns a reading document (README, "The reading document"; JSON Schema in
reading.schema.json) into a Reading, or raises ReadingError naming the field and why; `parse_documents`
does it for a whole file (one document, an array, or JSON Lines), refusing what is bad and keeping the
rest. Every document is held to bounds (`check_bounds`) before anything else reads it.
`Reading.to_document()` is the canonical form that the outbox stores; parsing it gives the same Reading.
A Reading may carry a DeviceClock: what the gateway learned of the device's clock at collection time,
from which the FHIR mapping builds the PHD IG Coincident Time Stamp Observation.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cache

from phg import mdc
from phg.errors import ReadingError
from phg.frozen import Frozen, field
from phg.version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue 16: `phg send` starts without it)
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any, TypeVar

    _T = TypeVar("_T")


class Specialization(Frozen):
    """An IEEE 11073 device specialization (MDC_DEV_SPEC_PROFILE_*) and its version."""

    code: int
    version: int | None = None


class Device(Frozen):
    """The measuring device. system_id is EUI-64 hex upper case without separators (16 chars);
    bt_address is EUI-48 written as PHD IG does: upper case hex pairs joined by '-'."""

    system_id: str | None = None
    bt_address: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None
    specializations: tuple[Specialization, ...] = ()

    @property
    def identity(self) -> str:
        """The device part of the PHD IG conditional-create identifier: the system id, or the
        transport address for a BLE device without one (hex upper case, no separators)."""
        return self.system_id or (self.bt_address or "").replace("-", "")


# ---------------------------------------------------------------- a device's specializations: the rule
# IEEE 11073-10101 MDC_DEV_SPEC_PROFILE_* codes (partition INFRA 8: 8 * 65536 + term), as PHD IG PhdDevice lists
# them (1.1.0 PhdDeviceProfile.html "System Type Spec List"; 2.0.0 ValueSet DeviceTypes11073MDC).
MDC_DEV_SPEC_PROFILE_PULS_OXIM, MDC_DEV_SPEC_PROFILE_BP, MDC_DEV_SPEC_PROFILE_TEMP = 528388, 528391, 528392
MDC_DEV_SPEC_PROFILE_SCALE, MDC_DEV_SPEC_PROFILE_GLUCOSE, MDC_DEV_SPEC_PROFILE_BCA = 528399, 528401, 528404
MDC_DEV_SPEC_PROFILE_CGM = mdc.MDC_DEV_SPEC_PROFILE_CGM  # 528409, IEEE 11073-10425
MDC_DEV_SUB_SPEC_PROFILE_HR = 528525  # IEEE 11073-10406 basic ECG, the heart-rate-only sub-specialization
MDC_DEV_SPEC_PROFILE_GENERIC = 528457  # a device following the standard without a specific specialization

# Metric code -> the specialization standard that defines it (11073-104xx: 10404 pulse oximeter, 10407 blood
# pressure, 10408 thermometer, 10415 weighing scale, 10417 glucose meter, 10420 body composition, 10425 CGM,
# 10406 basic ECG); the status BITs and context codes of those standards with them.
_SPECIALIZATION_OF_METRIC: dict[int, int] = {
    **dict.fromkeys((150456, 149530, 150604), MDC_DEV_SPEC_PROFILE_PULS_OXIM),
    **dict.fromkeys((150020, 150021, 150022, 150023, 149546, 8410608), MDC_DEV_SPEC_PROFILE_BP),
    **dict.fromkeys((150364, 150392, 188420, 188424, 188428, 188432, 188448, 188452, 188456), MDC_DEV_SPEC_PROFILE_TEMP),
    **dict.fromkeys((188736, 188740, 188752), MDC_DEV_SPEC_PROFILE_SCALE),
    188748: MDC_DEV_SPEC_PROFILE_BCA,
    **dict.fromkeys((160184, 160188, 160192, 160196, 160200, 160204, 160208, 160364, 160368, 160220,  # + HbA1c
                     8417752, 8417864, 8417844, 8417884, 8417820,  # status; meal, sample location, tester, health
                     *range(8417768, 8417793, 4), *range(8417800, 8417817, 4)),  # carbohydrate, medication
                    MDC_DEV_SPEC_PROFILE_GLUCOSE),
    **dict.fromkeys((160212, 8418060), MDC_DEV_SPEC_PROFILE_CGM),
    147842: MDC_DEV_SUB_SPEC_PROFILE_HR,
}
# What phg maps: the specializations the gateway reports supporting (PhgDevice.specialization).
GATEWAY_SPECIALIZATIONS: tuple[int, ...] = tuple(sorted(set(_SPECIALIZATION_OF_METRIC.values())))


def device_specializations(device: Device, metrics: Iterable[Metric]) -> tuple[Specialization, ...]:
    """A device's specializations (PHD IG PhdDevice.specialization 1..*), by the rule in README "Device
    specialization: the rule": what the source reported (an IEEE 11073 agent's System-Type-Spec-List with
    its versions; a Bluetooth health service's specialization, version unknown; a reading document's
    "specializations"), else what the metric codes say (the standard that defines each, first seen first,
    version unknown), else MDC_DEV_SPEC_PROFILE_GENERIC, version unknown."""
    if device.specializations:
        return device.specializations
    codes = dict.fromkeys(_SPECIALIZATION_OF_METRIC[m.code] for m in metrics if m.code in _SPECIALIZATION_OF_METRIC)
    return tuple(Specialization(code) for code in codes) or (Specialization(MDC_DEV_SPEC_PROFILE_GENERIC),)


class PatientRef(Frozen):
    """A patient identifier as known to the EHR."""

    system: str
    value: str


class Component(Frozen):
    """One component of a compound metric (e.g. systolic of a blood pressure)."""

    code: int
    value: Decimal
    unit: str


class Bit(Frozen):
    """One reported bit of an IEEE 11073 BITs value (Enum-Observed-Value-Simple/Basic-Bit-Str).

    bit is the MDER bit number: bit 0 is the most significant bit (IEEE 11073-20601 MDER; PHD IG
    ASN1ToHL7 code system, http://hl7.org/fhir/uv/phd/STU2/CodeSystem-ASN1ToHL7.html, "<code>.<bit>").
    name is its ASN.1 name (the code system's display, e.g. "body-movement"), None when unknown.
    set: an event bit is reported only when set; a state bit is reported set or cleared (PHD IG
    BITs Enumeration Observation profile)."""

    bit: int
    name: str | None = None
    set: bool = True


class BitString(Frozen):
    """An IEEE 11073 ASN.1 BITS-8/16/32 value as the PHD IG PhdBitsEnumerationObservation needs it:
    its length and the bits reported (with their meaning)."""

    length: int
    bits: tuple[Bit, ...]

    @property
    def raw(self) -> int:
        """The integer as MDER sends it (bit 0 = the most significant of `length` bits)."""
        return sum(1 << (self.length - 1 - b.bit) for b in self.bits if b.set)


# Stamp.kind: the kind of clock a metric's time stamp was reported by.
LOCAL, UTC_CLOCK, BASE_OFFSET, TICKS, RECEIVED = "local", "utc", "base-offset", "ticks", "received"
TIME_KINDS = (LOCAL, UTC_CLOCK, BASE_OFFSET, TICKS, RECEIVED)


class Stamp(Frozen):
    """What the device reported as a metric's time stamp, which the PHD IG duplicate-detection identifier encodes
    exactly (PHD IG 2.0.0, "Generating the PHD Reported Timestamp Identifier",
    http://hl7.org/fhir/uv/phd/STU2/GeneratingtheTimeStampPartIdentifier.html: "the reported value").

    kind "local": wall-clock time without a zone (Bluetooth legacy profiles, IEEE 11073-20601 Absolute-Time);
    Metric.time holds that wall time with the offset that places it on the timeline. kind "utc": a UTC instant.
    kind "base-offset": IEEE 11073-20601 Base-Offset-Time, a UTC instant with the device's own offset (always
    reported; IG 1.1.0 writes it in its own form). kind "ticks": a tick counter; `ticks` is its value and
    `tick_rate` its resolution in ticks per second (8000 for 20601 Relative-Time, 1000000 for
    HighResRelativeTime); Metric.time is then the gateway's placing of it. kind "received": the device gave no
    time stamp, and Metric.time is when the gateway received the measurement (PHD IG: "no device timestamp -> time
    of reception"): the gateway's own clock, so no correction of the device's clock applies to it
    (phg.fhir.resources.effective_time); its identifier part is a UTC clock's with the gateway's offset appended,
    as before this kind existed. device_offset: whether the TZ/DST offset in Metric.time's offset came from the
    device (appended to the identifier) or from the gateway (left out). The default is a reading document's: an
    RFC 3339 time is a UTC instant with the offset its writer stated."""

    kind: str = UTC_CLOCK
    device_offset: bool = True
    ticks: int | None = None
    tick_rate: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in TIME_KINDS:
            raise ValueError(f"time kind {self.kind!r} is not one of {', '.join(TIME_KINDS)}")
        if (self.kind == TICKS) != (self.ticks is not None) or (self.ticks is None) != (self.tick_rate is None):
            raise ValueError("a 'ticks' stamp needs ticks and tick_rate, and only it has them")
        if self.kind in (BASE_OFFSET, RECEIVED) and not self.device_offset:
            raise ValueError(f"a {self.kind} time carries its offset (device_offset True)")
        if self.kind == TICKS and (self.device_offset or self.ticks < 0 or tick_digits(self.tick_rate) is None):  # type: ignore[operator, arg-type]
            raise ValueError(f"a tick counter has no offset, ticks >= 0 and a tick_rate whose tick is a finite "
                             f"decimal fraction of a second (got {self.tick_rate})")


def tick_digits(rate: int) -> int | None:
    """The decimals that write every count of a `rate`-per-second counter in seconds exactly: 0 for 1/s,
    3 for 1000/s, 6 for 8000/s (0.000125 s); None when a tick is no finite decimal fraction (a rate with a
    prime factor other than 2 and 5, e.g. 3/s), or rate < 1."""
    if rate < 1:
        return None
    twos = fives = 0
    while rate % 2 == 0:
        rate, twos = rate // 2, twos + 1
    while rate % 5 == 0:
        rate, fives = rate // 5, fives + 1
    return max(twos, fives) if rate == 1 else None


# The time of reception (PHD IG: no device timestamp -> time of reception): the gateway is then the clock that
# reports, a UTC clock with its TZ/DST offset. With the offset, it never equals a zoneless local time's part.
RECEIVED_STAMP = Stamp(RECEIVED, device_offset=True)
# A time of reception has milliseconds, and those one connection or association gives are kept RECEPTION_STEP apart
# (Receptions): the coarsest identifier time part, IG 1.1.0's hundredths of a second (2.0.0 writes the milliseconds).
# Two measurements received together without time stamps are then two readings, not one PHD IG identifier twice
# (review B finding 1).
RECEPTION_DIGITS, RECEPTION_STEP = 3, timedelta(milliseconds=10)


def reception_time(at: datetime) -> datetime:
    """`at` to the millisecond (RECEPTION_DIGITS), as a time of reception is written."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


class Receptions:
    """The times of reception one source connection (a Bluetooth session, an IEEE 11073 association) gives the
    measurements its device did not time: each at least RECEPTION_STEP after the one before."""

    def __init__(self) -> None:
        self._next: datetime | None = None  # the earliest time the next measurement may take

    def take(self, now: datetime, count: int = 1) -> datetime:
        """The time of reception of `count` measurements (or groups of them) received `now`: the first one's, the
        others following RECEPTION_STEP apart."""
        start = now if self._next is None or now >= self._next else self._next
        self._next = start + RECEPTION_STEP * count
        return start


class Metric(Frozen):
    """One measurement. value is None for compound metrics (components carry the values)."""

    code: int
    time: datetime  # device timestamp, timezone-aware
    value: Decimal | None = None
    unit: str | None = None
    time_digits: int = 0  # fractional-second digits the device gave (its time resolution)
    status: tuple[str, ...] = ()  # IEEE 11073-20601 MeasurementStatus names (mdc.MEASUREMENT_STATUS)
    components: tuple[Component, ...] = ()
    stamp: Stamp = Stamp()  # how the device reported `time` (the identifier's time part)
    # Values that are not numbers (PHD IG 2.0.0 profiles; README "The reading document"):
    coded: int | None = None  # an MDC code as the value (Enum-Observed-Value-Simple-OID): meal context -> preprandial
    bits: BitString | None = None  # a BITs value: device/measurement status (PhdBitsEnumerationObservation)
    supplemental: tuple[int, ...] = ()  # Supplemental-Types MDC codes, e.g. 150588 MDC_MODALITY_SPOT
    derived_from: int | None = None  # index in Reading.metrics of the metric this one qualifies (status, context)


class Gateway(Frozen):
    """The gateway itself (PHD IG PhgDevice), from config. system_id: EUI-64, 16 hex upper case.
    time_sync: MDC time-sync protocol code (68220 property), 532226 = MDC_TIME_SYNC_NTPV4.
    software: phg's own version (PhgDevice.version MDC_ID_PROD_SPEC_SW); firmware: the host's, if configured."""

    system_id: str
    manufacturer: str = "phg project"
    model: str = "phg"
    serial: str | None = None
    firmware: str | None = None
    time_sync: int = 532226
    software: str = __version__


# PHD IG PhdCoincidentTimeStampObservation.code (ValueSet MDCClockTypes): the device's clock type.
MDC_ATTR_TIME_ABS = 67975  # absolute (wall-clock) time: IEEE 11073 Date-and-Time, Bluetooth date-time
MDC_ATTR_TIME_REL = 67983  # relative time, a tick counter (1/8 ms in 11073-20601)
MDC_ATTR_TIME_REL_HI_RES = 68072  # high-resolution relative time, a tick counter in microseconds
CLOCK_TYPES: dict[str, int] = {"absolute": MDC_ATTR_TIME_ABS, "relative": MDC_ATTR_TIME_REL,
                               "hi-res": MDC_ATTR_TIME_REL_HI_RES}


class DeviceClock(Frozen):
    """What the gateway learned of the device's clock when it collected the reading (PHD IG, Time).

    Only absolute clocks are mapped for now: a tick clock's current time is a count, not a
    datetime, and the reading document accepts "type": "absolute" only (see `parse_reading`)."""

    gateway_time: datetime  # the gateway's own time when it read the device clock (aware)
    device_time: datetime | None  # the device's current time as read, aware with the offset the gateway
    #                               attached; None = time fault / not readable
    clock_type: int = MDC_ATTR_TIME_ABS  # MDC_ATTR_TIME_ABS 67975; MDC_ATTR_TIME_REL (tick) 67983; ..._HI_RES 68072
    sync: int | None = None  # MDC_TIME_SYNC_* the device reports (532224 none ... 532229 BTv1)


class Reading(Frozen):
    """One device's upload: who measured (device), whom (patient), and what (metrics); clock is
    the device clock as the gateway read it while collecting, when known."""

    device: Device
    patient: PatientRef
    metrics: tuple[Metric, ...] = field(default_factory=tuple)
    clock: DeviceClock | None = None

    def to_document(self) -> dict[str, Any]:
        """The canonical reading document (values as strings, codes not aliases)."""
        dev: dict[str, Any] = {}
        for name in ("system_id", "bt_address", "manufacturer", "model", "serial", "firmware"):
            if (v := getattr(self.device, name)) is not None:
                dev[name] = v
        if self.device.specializations:
            dev["specializations"] = [
                {"code": s.code} | ({"version": s.version} if s.version is not None else {})
                for s in self.device.specializations
            ]
        doc: dict[str, Any] = {
            "device": dev,
            "patient": {"system": self.patient.system, "value": self.patient.value},
            "metrics": [_metric_document(m) for m in self.metrics],
        }
        if self.clock is not None:  # absent key when unknown: readings without a clock keep their key
            doc["clock"] = _clock_document(self.clock)
        return doc

    def to_json(self) -> str:
        """Canonical JSON: stable across runs, so equal readings give equal text and key."""
        return json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def key(self) -> str:
        """Content hash of the canonical JSON without the device clock: the same measurement handed
        over twice, even in two sessions that read the device clock at different times (a Bluetooth
        cuff re-sending an unconfirmed indication, an 11073 agent re-sending an unacknowledged
        report), has the same key, so it is one outbox item and one HL7 v2 control id (MSH-10).
        Nor how its time was reported (Metric.stamp): a measurement queued before phg knew its clock's
        kind, fetched again after an upgrade, is recognised, not queued and sent a second time."""
        document = self.to_document()
        document.pop("clock", None)
        for metric in document["metrics"]:
            if metric.keys() & _STAMP_KEYS:
                for name in _STAMP_KEYS:
                    metric.pop(name, None)
        return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":"),
                                         ensure_ascii=False).encode()).hexdigest()


def _metric_document(m: Metric) -> dict[str, Any]:
    doc: dict[str, Any] = {"code": m.code, "time": format_time(m.time, m.time_digits)}
    if m.value is not None:
        doc["value"] = str(m.value)
    if m.unit is not None:
        doc["unit"] = m.unit
    if m.status:
        doc["status"] = list(m.status)
    if m.components:
        doc["components"] = [{"code": c.code, "value": str(c.value), "unit": c.unit} for c in m.components]
    if m.coded is not None:
        doc["coded"] = m.coded
    if m.bits is not None:
        doc["bits"] = {"length": m.bits.length, "bits": [
            {"bit": b.bit} | ({"name": b.name} if b.name else {}) | ({} if b.set else {"set": False})
            for b in m.bits.bits]}
    if m.supplemental:
        doc["supplemental"] = list(m.supplemental)
    if m.derived_from is not None:
        doc["derived_from"] = m.derived_from
    if m.stamp != _DEFAULT_STAMP:  # the default writes no key: readings stored before stamps keep their text
        doc.update(_stamp_document(m.stamp))
    return doc


_DEFAULT_STAMP = Stamp()
# Where a document's TZ/DST offset comes from when it does not say ("offset_from"): a UTC time states its
# writer's offset, a local wall time has the gateway's (the device reported none).
_DEVICE_OFFSET_DEFAULT = {UTC_CLOCK: True, LOCAL: False, BASE_OFFSET: True, TICKS: False, RECEIVED: True}


def _stamp_document(stamp: Stamp) -> dict[str, Any]:
    doc: dict[str, Any] = {} if stamp.kind == UTC_CLOCK else {"time_kind": stamp.kind}
    if stamp.kind == TICKS:
        doc |= {"ticks": stamp.ticks, "tick_rate": stamp.tick_rate}
    elif stamp.device_offset != _DEVICE_OFFSET_DEFAULT[stamp.kind]:
        doc["offset_from"] = "device" if stamp.device_offset else "gateway"
    return doc


def _clock_document(clock: DeviceClock) -> dict[str, Any]:
    names = {code: name for name, code in CLOCK_TYPES.items()}
    if clock.clock_type not in names:
        raise ValueError(f"clock type {clock.clock_type} is not one of {', '.join(map(str, names))}")
    doc: dict[str, Any] = {
        "gateway_time": format_time(clock.gateway_time, time_digits(clock.gateway_time)),
        "device_time": None if clock.device_time is None else format_time(clock.device_time,
                                                                          time_digits(clock.device_time)),
        "type": names[clock.clock_type],
    }
    if clock.sync is not None:
        doc["sync"] = clock.sync
    return doc


def time_digits(t: datetime) -> int:
    """The fewest fractional-second digits (0, 3 or 6) that write t exactly: a clock reading has no
    stated resolution, so its canonical text is the shortest exact one."""
    return 0 if not t.microsecond else 3 if not t.microsecond % 1000 else 6


def format_time(t: datetime, digits: int) -> str:
    """RFC 3339 / FHIR dateTime with the device's own offset and fractional digits."""
    text = t.isoformat(timespec="seconds")
    if digits:
        frac = f"{t.microsecond:06d}"[:digits]
        text = text[:19] + "." + frac + text[19:]
    return text


# ---------------------------------------------------------------- bounds

# What a reading document may hold (README, "The reading document"; reading.schema.json states the same).
# A value is an integer coefficient of at most MAX_DIGITS digits times 10^e, e in MIN_EXPONENT..MAX_EXPONENT:
# FHIR decimals have 18 digits of precision (FHIR R4 datatypes 2.24.0.1: the XML Schema decimal limit),
# and the exponent range is the IEEE 11073-20601 FLOAT-Type's (8-bit exponent; it contains SFLOAT's -8..7),
# so every value a device can send fits while no value makes a renderer write more than ~150 digits.
MAX_DIGITS, MIN_EXPONENT, MAX_EXPONENT = 18, -128, 127
MAX_STRING = 1024  # characters in any string
MAX_DEPTH = 8  # nested objects and arrays (a valid document needs 5)
MAX_SIZE = 1_000_000  # per document: the characters of its strings and keys plus one per value
MAX_INPUT_BYTES = 16 * 2**20  # one file or stdin
# Refused in every string: C0 controls (none excepted), DEL, C1 controls, lone surrogates (not Unicode
# scalar values, RFC 8259 section 8.2) and U+FFFE/U+FFFF (not XML 1.0 Chars, section 2.2: SOAP needs XML).
# As a pattern's text, compiled by `re` when first searched (re caches it): its ranges beyond Latin-1 cost
# compiling more than parsing a document does, and ASCII text is checked without it (issue 16: `phg send`).
_FORBIDDEN_CHARS = "\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff"
_FORBIDDEN = f"[{_FORBIDDEN_CHARS}]"
_ASCII_FORBIDDEN = bytes(range(32)) + b"\x7f"  # its ASCII characters, for bytes.translate
_BOUNDS = (f"a value is at most {MAX_DIGITS} significant digits times 10^{MIN_EXPONENT}..10^{MAX_EXPONENT} "
           "(FHIR decimal precision, IEEE 11073 FLOAT exponent)")


def check_bounds(doc: Any) -> None:
    """Refuse (ReadingError naming the field) a document beyond the bounds above: too deep, too large,
    a string too long or holding a forbidden character, a number that is NaN, infinite or out of range.
    A document plainly within them (`_plainly_bounded`, one cheap pass) is done; any other is walked
    field by field (`_check_fields`), which names what is wrong."""
    if not _plainly_bounded(doc):
        _check_fields(doc)


def _plainly_bounded(doc: Any) -> bool:
    """Whether `doc` is certainly within the bounds: one pass level by level that gathers the strings
    and keys, then one length check and one search for a forbidden character over all of them together
    (bytes.translate for ASCII text; issue 16: the per-field walk cost more than parsing). Anything unusual
    (a float, a subclass) answers False."""
    size, depth, level, strings = 0, -1, [[doc]], []
    while level:
        depth += 1
        if depth >= MAX_DEPTH + 1:
            return False
        below = []
        for container in level:
            size += len(container)
            if type(container) is dict:
                strings += container
                children = container.values()
            else:
                children = container
            for child in children:
                kind = type(child)
                if kind is str:
                    strings.append(child)
                elif kind is dict or kind is list:
                    below.append(child)
                elif kind is int:
                    if not -10**MAX_DIGITS < child < 10**MAX_DIGITS:
                        return False
                elif kind is Decimal:
                    if not _plain_decimal(child):
                        return False
                elif child is not None and kind is not bool:
                    return False
        if size > MAX_SIZE:
            return False
        level = below
    try:
        text = "".join(strings)  # keys that are not strings: TypeError
    except TypeError:
        return False
    if size + len(text) > MAX_SIZE or (strings and max(map(len, strings)) > MAX_STRING):
        return False
    if text.isascii():
        data = text.encode()
        return len(data.translate(None, _ASCII_FORBIDDEN)) == len(data)
    return re.search(_FORBIDDEN, text) is None


def _plain_decimal(value: Decimal) -> bool:
    try:
        check_number(value, "")
    except ReadingError:
        return False
    return True


def _check_fields(doc: Any) -> None:
    """check_bounds field by field, without recursion: a field's path (parent, key) is joined only for
    containers and for a refusal."""
    size = 1
    stack: list[tuple[Any, tuple[str | int, ...], str | int | None]] = [(doc, (), None)]
    while stack:
        value, parent, key = stack.pop()
        if isinstance(value, str):
            size += len(value)
            _check_text(value, parent, key, "the text")
        elif isinstance(value, dict | list):
            path = _at(parent, key)
            if len(path) >= MAX_DEPTH:
                raise ReadingError(_path(path), f"nested deeper than {MAX_DEPTH} levels")
            size += len(value)  # counted before they are stacked: a huge array costs no memory here
            _check_size(size)
            if isinstance(value, list):
                stack += ((item, path, n) for n, item in enumerate(value))
                continue
            for name, item in value.items():
                if isinstance(name, str):
                    size += len(name)
                    _check_text(name, path, None, "a key")
                stack.append((item, path, name))
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):  # codes, mostly: an int is in bounds below 10^MAX_DIGITS
            if not -10**MAX_DIGITS < value < 10**MAX_DIGITS:
                check_number(Decimal(value), _path(_at(parent, key)))
        elif isinstance(value, float | Decimal):
            check_number(value if isinstance(value, Decimal) else Decimal(str(value)), _path(_at(parent, key)))
        else:
            raise ReadingError(_path(_at(parent, key)), f"a {type(value).__name__} is not a JSON value")
        _check_size(size)


def _at(parent: tuple[str | int, ...], key: str | int | None) -> tuple[str | int, ...]:
    return parent if key is None else (*parent, key)


def _check_size(size: int) -> None:
    if size > MAX_SIZE:
        raise ReadingError("(document)", f"larger than {MAX_SIZE:,} characters of strings and values")


def _check_text(text: str, parent: tuple[str | int, ...], key: str | int | None, what: str) -> None:
    if len(text) > MAX_STRING:
        raise ReadingError(_path(_at(parent, key)), f"{what} is {len(text):,} characters long; at most {MAX_STRING}")
    if match := re.search(_FORBIDDEN, text):
        raise ReadingError(_path(_at(parent, key)),
                           f"{what} holds the character U+{ord(match[0]):04X} at position {match.start()}: "
                           "strings may not hold C0 or C1 control characters, DEL, surrogates, U+FFFE or U+FFFF")


def check_number(value: Decimal, where: str) -> None:
    """Refuse NaN, infinities and values beyond MAX_DIGITS / MIN_EXPONENT..MAX_EXPONENT."""
    if not value.is_finite():
        raise ReadingError(where, f"{value} is not a number: JSON has no NaN or Infinity (RFC 8259 section 6)")
    _, digits, exponent = value.as_tuple()
    if len(digits) > MAX_DIGITS:
        raise ReadingError(where, f"{len(digits):,} significant digits are too many: {_BOUNDS}")
    if not MIN_EXPONENT <= exponent <= MAX_EXPONENT:  # type: ignore[operator]  # finite: an int
        raise ReadingError(where, f"the exponent is out of range: {_BOUNDS}")


# ---------------------------------------------------------------- parsing


@cache
def _validator():
    from importlib import resources  # both imported here: most documents never need the validator

    import jsonschema

    schema = json.loads(resources.files("phg").joinpath("reading.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _path(parts) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "(document)"


_DECIMAL = r"[+-]?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z"  # a pattern's text (as _FORBIDDEN): for messages
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.(\d{1,6}))?(Z|[+-]\d{2}:\d{2})$")


def _parse_time(text: str, where: str) -> tuple[datetime, int]:
    match = _TIME_RE.match(text)
    if not match:
        raise ReadingError(where, f"{text!r} is not a date-time with seconds and a UTC offset "
                                  "(e.g. 2026-11-28T09:00:00+01:00)")
    try:
        return datetime.fromisoformat(text), len(match.group(2) or "")
    except ValueError as exc:
        raise ReadingError(where, f"{text!r} is not a valid date-time: {exc}") from None


def _code(item: dict, where: str) -> int:
    if "code" in item:
        return item["code"]
    alias = item["type"]
    if alias not in mdc.ALIASES:
        raise ReadingError(f"{where}.type", f"unknown type {alias!r}; known: {', '.join(sorted(mdc.ALIASES))}")
    return mdc.ALIASES[alias]


def _unit(code: int, given: str | None, where: str) -> str:
    known = mdc.MEASUREMENTS.get(code)
    if given is None:
        if known is None or not known.units:
            raise ReadingError(f"{where}.unit", f"required for MDC code {code}")
        if len(known.units) > 1 and code in (160184, 160188):
            raise ReadingError(f"{where}.unit", f"required for glucose: one of {', '.join(known.units)}")
        return known.units[0]
    if known is not None and known.units and given not in known.units:
        raise ReadingError(f"{where}.unit", f"{given!r} is not a unit of {known.ref_id}; use one of "
                                            f"{', '.join(known.units)} (UCUM)")
    return given


def _decimal(value: Any, where: str) -> Decimal:
    number = value if isinstance(value, Decimal) else Decimal(str(value))
    if type(value) is str and len(value) <= MAX_DIGITS and "e" not in value and "E" not in value \
            and number.is_finite():
        return number  # the common case: at most MAX_DIGITS digits and an exponent of -MAX_DIGITS..0
    check_number(number, where)
    return number


def _hex_id(text: str) -> str:
    return text.replace("-", "").replace(":", "").upper()


def parse_reading(doc: Any, source: str | None = None) -> Reading:
    """Validate a reading document and build the Reading. Numbers are best parsed from JSON with
    parse_float=Decimal (see `loads`) so that 2.00 keeps its two decimals."""
    try:
        check_bounds(doc)  # first: the schema pass must not meet an unbounded document
        if not plainly_valid(doc):  # only then the JSON Schema validator: it explains what is wrong
            errors = sorted(_validator().iter_errors(doc),
                            key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
            if errors:
                raise ReadingError(_path(errors[0].absolute_path), _schema_message(errors[0]))
        return _build(doc)
    except ReadingError as exc:
        raise ReadingError(exc.where, exc.why, source) from None


# ---------------------------------------------------------------- reading.schema.json, the common case
# `plainly_valid` says True only for a document that reading.schema.json accepts, checked directly (40 times
# faster than the validator, which then only runs to name what is wrong). Applied after check_bounds, which
# holds every string to $defs/text (length, characters); the patterns are the schema's own, searched with
# re as jsonschema searches them. A form it does not know (a float, a Decimal code) falls to the validator.
_SYSTEM_ID = re.compile("^[0-9A-Fa-f]{2}([-:]?[0-9A-Fa-f]{2}){7}$")
_BT_ADDRESS = re.compile("^[0-9A-Fa-f]{2}([-:]?[0-9A-Fa-f]{2}){5}$")
_PATIENT_SYSTEM, _PATIENT_VALUE = re.compile(r"^\S+$"), re.compile(r"^\S(.*\S)?$")
_UNIT = re.compile(r"^[^\s]+(\s[^\s]+)*$")
_VALUE_TEXT = re.compile(r"^[+-]?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]{1,3})?$")
_DEVICE_TEXT = ("manufacturer", "model", "serial", "firmware")
_STAMP_KEYS = ("time_kind", "offset_from", "ticks", "tick_rate")
_VALUE_KEYS = ("coded", "bits", "supplemental", "derived_from")
_STAMP_KEY_SET, _VALUE_KEY_SET = frozenset(_STAMP_KEYS), frozenset(_VALUE_KEYS)
_KEYS = {"reading": {"device", "patient", "metrics", "clock"}, "patient": {"system", "value"},
         "device": {"system_id", "bt_address", *_DEVICE_TEXT, "specializations"}, "specialization": {"code", "version"},
         "metric": {"code", "type", "value", "unit", "time", "status", "components", *_STAMP_KEYS, *_VALUE_KEYS},
         "component": {"code", "type", "value", "unit"}, "clock": {"gateway_time", "device_time", "type", "sync"}}
_UINT32 = 2**32 - 1


def plainly_valid(doc: Any) -> bool:
    """Whether reading.schema.json certainly accepts `doc` (a document within `check_bounds`)."""
    return (_object(doc, "reading") and {"device", "patient", "metrics"} <= doc.keys()
            and _device(doc["device"]) and _patient(doc["patient"])
            and isinstance(metrics := doc["metrics"], list) and 1 <= len(metrics) <= 4096
            and all(_metric(m) for m in metrics) and ("clock" not in doc or _clock(doc["clock"])))


def _object(value: Any, kind: str) -> bool:
    return type(value) is dict and value.keys() <= _KEYS[kind]


def _int(value: Any, high: int | None = _UINT32) -> bool:
    return type(value) is int and 0 <= value and (high is None or value <= high)


def _string(value: Any, pattern: re.Pattern | None = None, minimum: int = 0) -> bool:
    return type(value) is str and len(value) >= minimum and (pattern is None or pattern.search(value) is not None)


def _device(d: Any) -> bool:
    return (_object(d, "device") and ("system_id" in d or "bt_address" in d)
            and ("system_id" not in d or _string(d["system_id"], _SYSTEM_ID))
            and ("bt_address" not in d or _string(d["bt_address"], _BT_ADDRESS))
            and all(_string(d[k], minimum=1) for k in _DEVICE_TEXT if k in d)
            and ("specializations" not in d or (
                type(specs := d["specializations"]) is list and len(specs) <= 16
                and all(_object(s, "specialization") and "code" in s and _int(s["code"])
                        and ("version" not in s or _int(s["version"], None)) for s in specs))))


def _patient(p: Any) -> bool:
    return (_object(p, "patient") and p.keys() == _KEYS["patient"]
            and _string(p["system"], _PATIENT_SYSTEM) and _string(p["value"], _PATIENT_VALUE))


def patient_fits(name: str, text: str) -> bool:
    """Whether `text` can be a reading document's patient `name` ("system" or "value"): reading.schema.json's
    pattern for it (no white space in the system, none at the value's ends) and $defs/text (at most MAX_STRING
    characters, none forbidden). For the API's patient parameter: no answer names a patient no reading can have."""
    pattern = _PATIENT_SYSTEM if name == "system" else _PATIENT_VALUE
    return len(text) <= MAX_STRING and re.search(_FORBIDDEN, text) is None and pattern.search(text) is not None


def _coded(item: dict) -> bool:
    """Exactly one of code and type (the schema's oneOf), and it well-formed."""
    if "code" in item:
        return "type" not in item and _int(item["code"])
    return "type" in item and _string(item["type"])


def _value(value: Any) -> bool:
    if type(value) is str:
        return _VALUE_TEXT.search(value) is not None
    return type(value) in (int, Decimal) and -_VALUE_LIMIT < value < _VALUE_LIMIT


_VALUE_LIMIT = Decimal("1e146")


def _metric(m: Any) -> bool:
    return (_object(m, "metric") and _coded(m) and "time" in m and _string(m["time"])
            and ("value" not in m or _value(m["value"])) and ("unit" not in m or _string(m["unit"], _UNIT))
            and ("status" not in m or (type(status := m["status"]) is list and len(status) <= 16
                                       and all(type(s) is str for s in status) and len(set(status)) == len(status)))
            and ("components" not in m or (type(parts := m["components"]) is list and 1 <= len(parts) <= 16
                                           and all(_component(c) for c in parts)))
            and (not m.keys() & _STAMP_KEYS or _stamp(m)) and (not m.keys() & _VALUE_KEYS or _enumerated(m)))


def _enumerated(m: dict) -> bool:
    """The schema's rules for coded, bits, supplemental and derived_from (the cross-field ones are `_build`'s)."""
    bits = m.get("bits")
    return (("coded" not in m or _int(m["coded"])) and ("derived_from" not in m or _int(m["derived_from"], 4095))
            and ("supplemental" not in m or (type(codes := m["supplemental"]) is list and 1 <= len(codes) <= 16
                                             and all(_int(c) for c in codes)))
            and (bits is None or (type(bits) is dict and bits.keys() == {"length", "bits"}
                                  and bits["length"] in (8, 16, 32) and type(bits["length"]) is int
                                  and type(listed := bits["bits"]) is list and len(listed) <= 32
                                  and all(_bit(b) for b in listed))))


def _bit(b: Any) -> bool:
    return (type(b) is dict and "bit" in b and b.keys() <= {"bit", "name", "set"} and _int(b["bit"], 31)
            and ("name" not in b or _string(b["name"], minimum=1)) and ("set" not in b or type(b["set"]) is bool))


def _stamp(m: dict) -> bool:
    """The schema's time_kind rules: "ticks" needs ticks and tick_rate; "ticks", "base-offset" and "received" have
    no offset_from; the others may have offset_from and have neither ticks nor tick_rate."""
    kind = m.get("time_kind", UTC_CLOCK)
    if kind == TICKS:
        return ("offset_from" not in m and "ticks" in m and "tick_rate" in m and _int(m["ticks"], None)
                and _int(m["tick_rate"], None) and m["tick_rate"] >= 1)
    return (kind in (LOCAL, UTC_CLOCK, BASE_OFFSET, RECEIVED) and "ticks" not in m and "tick_rate" not in m
            and (kind not in (BASE_OFFSET, RECEIVED) or "offset_from" not in m)
            and m.get("offset_from", "device") in ("device", "gateway"))


def _component(c: Any) -> bool:
    return (_object(c, "component") and _coded(c) and "value" in c and _value(c["value"])
            and ("unit" not in c or _string(c["unit"], _UNIT)))


def _clock(c: Any) -> bool:
    return (_object(c, "clock") and "gateway_time" in c and "device_time" in c and _string(c["gateway_time"])
            and (c["device_time"] is None or _string(c["device_time"]))
            and c.get("type", "absolute") in ("absolute", "relative", "hi-res")
            and ("sync" not in c or _int(c["sync"])))


def _schema_message(err) -> str:
    if err.validator == "anyOf" and list(err.absolute_path) == ["device"]:
        return "needs system_id or bt_address"
    if err.validator == "oneOf" and err.validator_value and "required" in err.validator_value[0]:
        return "needs exactly one of 'code' or 'type'"
    if err.validator == "oneOf" and err.absolute_path and err.absolute_path[-1] == "value":
        return _value_message(err.instance)
    if err.validator == "pattern":
        return f"{err.instance!r} is not in the expected format"
    if err.validator == "additionalProperties" and isinstance(err.instance, dict) and err.validator_value is False:
        return _unknown_fields(err.instance, err.schema.get("properties", {}))
    if err.validator == "not" and isinstance(err.validator_value, dict) and "required" in err.validator_value:
        return (f"{err.validator_value['required'][0]!r} does not go with time_kind "
                f"{err.instance.get('time_kind', UTC_CLOCK)!r}: ticks and tick_rate belong to 'ticks'; "
                "'ticks', 'base-offset' and 'received' take no offset_from")
    message = err.message  # it quotes the instance, which may be long: keep its start and the verdict
    return message if len(message) <= 200 else f"{message[:80]} ... {message[-100:]}"


def _unknown_fields(instance: dict, known: dict) -> str:
    """An object's fields the schema does not have, each with the known one it most likely misspells: an app's
    typo ('valeu') is the usual cause, and the known names are what it needs to see."""
    import difflib  # here: only a refused document needs it

    def named(field: str) -> str:
        close = difflib.get_close_matches(field, list(known), n=1)
        return f"{field!r:.60}" + (f" (did you mean {close[0]!r}?)" if close else "")

    unknown = [named(str(field)) for field in instance if field not in known]
    fields = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    return f"unknown field{'s' if len(unknown) > 1 else ''} {fields}; known here: {', '.join(known)}"


def _value_message(value: Any) -> str:
    """Why a metric or component value is refused: out of bounds, or not a decimal at all."""
    if isinstance(value, str) and re.match(_DECIMAL, value):
        try:
            check_number(Decimal(value), "value")
        except ReadingError as exc:
            return exc.why
    return f"{value!r} is not a decimal number (give a number or a string such as \"2.00\")"


def _build(doc: dict) -> Reading:
    d = doc["device"]
    device = _frozen(Device, {
        "system_id": _hex_id(d["system_id"]) if "system_id" in d else None,
        "bt_address": "-".join(_hex_id(d["bt_address"])[i:i + 2] for i in range(0, 12, 2)) if "bt_address" in d else None,
        "manufacturer": d.get("manufacturer"),
        "model": d.get("model"),
        "serial": d.get("serial"),
        "firmware": d.get("firmware"),
        "specializations": tuple([_frozen(Specialization, {"code": s["code"], "version": s.get("version")})
                                  for s in d["specializations"]]) if "specializations" in d else (),
    })
    patient = _frozen(PatientRef, {"system": doc["patient"]["system"], "value": doc["patient"]["value"]})
    metrics = []
    for i, m in enumerate(doc["metrics"]):
        where = f"metrics[{i}]"
        code = _code(m, where)
        time, digits = _parse_time(m["time"], f"{where}.time")
        status = tuple(m["status"]) if "status" in m else ()
        for s in status:
            if s not in mdc.MEASUREMENT_STATUS:
                raise ReadingError(f"{where}.status", f"unknown status {s!r}; known: {', '.join(mdc.MEASUREMENT_STATUS)}")
        unit = None if ("coded" in m or "bits" in m) and "unit" not in m else _unit(code, m.get("unit"), where)
        components = []
        for j, c in enumerate(m.get("components", ())):
            cwhere = f"{where}.components[{j}]"
            ccode = _code(c, cwhere)
            components.append(_frozen(Component, {"code": ccode, "value": _decimal(c["value"], f"{cwhere}.value"),
                                                  "unit": _unit(ccode, c.get("unit", unit), cwhere)}))
        failed = "invalid" in status or "not-available" in status  # a failed measurement: nothing to report
        if "value" not in m and not components and "coded" not in m and "bits" not in m and not failed:
            raise ReadingError(where, "needs a value, components, or status invalid/not-available")
        known = mdc.MEASUREMENTS.get(code)
        if known is not None and known.components and not components and not failed:
            raise ReadingError(f"{where}.components", f"{known.ref_id} is compound: give its components, or status "
                               "invalid/not-available for a failed measurement")
        fields = {"code": code, "time": time, "value": _decimal(m["value"], f"{where}.value") if "value" in m else None,
                  "unit": unit, "time_digits": digits, "status": status, "components": tuple(components),
                  "stamp": _DEFAULT_STAMP if _STAMP_KEY_SET.isdisjoint(m) else _build_stamp(m, where),
                  "coded": None, "bits": None, "supplemental": (), "derived_from": None}
        if not _VALUE_KEY_SET.isdisjoint(m):
            fields |= _build_values(m, code, where, i)
        metrics.append(_frozen(Metric, fields))
    clock = _build_clock(doc["clock"]) if "clock" in doc else None
    return _frozen(Reading, {"device": device, "patient": patient, "metrics": tuple(metrics), "clock": clock})


def _frozen(cls: type[_T], fields: dict[str, Any]) -> _T:
    """An instance of the frozen record `cls` holding `fields`, every one of its fields, without its
    __init__ (which checks its arguments and fills defaults: 1.3 us for a Metric, 0.2 us this way; issue 16).
    Only for values the parser has checked: __post_init__ does not run."""
    instance = object.__new__(cls)
    instance.__dict__.update(fields)
    return instance


def _build_values(m: dict, code: int, where: str, index: int) -> dict[str, Any]:
    """A metric's coded, bits, supplemental and derived_from (README, "The reading document"): a coded or
    bits value stands alone (no value, unit or components); a bit appears once and lies within the length;
    derived_from names an earlier metric of the same reading (delivery.fhir sends a Bundle's entries in parts,
    each referencing only entries before it). A bit without a name takes the ASN.1 name the
    PHD IG's ASN1ToHL7 code system gives `<code>.<bit>` (mdc.ASN1_BITS), when it has one. Numbers are ints
    (the schema's integers may arrive as 16.0 or Decimal("16"))."""
    values: dict[str, Any] = {}
    if "coded" in m or "bits" in m:
        kind = "coded" if "coded" in m else "bits"
        if extra := [k for k in ("value", "unit", "components", "bits") if k in m and k != kind]:
            raise ReadingError(where, f"a {kind} value stands alone: remove {', '.join(extra)}")
    if "coded" in m:
        values["coded"] = int(m["coded"])
    if "bits" in m:
        length, seen, bits = int(m["bits"]["length"]), set(), []
        for j, b in enumerate(m["bits"]["bits"]):
            number = int(b["bit"])
            if number >= length or number in seen:
                raise ReadingError(f"{where}.bits.bits[{j}].bit", f"bit {number} is "
                                   + ("given twice" if number in seen else f"beyond a {length}-bit value"))
            seen.add(number)
            bits.append(Bit(number, b.get("name") or mdc.ASN1_BITS.get(code, {}).get(number), b.get("set", True)))
        values["bits"] = BitString(length, tuple(bits))
    if "supplemental" in m:
        if len(set(m["supplemental"])) != len(m["supplemental"]):
            raise ReadingError(f"{where}.supplemental", "a code is given twice")
        values["supplemental"] = tuple(map(int, m["supplemental"]))
    if "derived_from" in m:
        if not 0 <= m["derived_from"] < index:  # earlier: a Bundle's entries reference only entries before them
            raise ReadingError(f"{where}.derived_from", f"{m['derived_from']} is not the index of an earlier metric "
                                                        f"of this reading (0..{index - 1})" if index else
                               "the first metric qualifies no other (derived_from names an earlier metric)")
        values["derived_from"] = int(m["derived_from"])
    return values


def _build_stamp(m: dict, where: str) -> Stamp:
    """A metric's Stamp from time_kind, offset_from, ticks and tick_rate (README, "The reading document")."""
    kind = m.get("time_kind", UTC_CLOCK)
    offset = m.get("offset_from")
    if kind == TICKS and (offset is not None or "ticks" not in m or "tick_rate" not in m):
        raise ReadingError(f"{where}.time_kind", "a 'ticks' time needs ticks and tick_rate, and has no offset_from")
    if kind != TICKS and ("ticks" in m or "tick_rate" in m):
        raise ReadingError(f"{where}.time_kind", f"ticks and tick_rate belong to time_kind 'ticks', not {kind!r}")
    if kind == BASE_OFFSET and offset is not None:
        raise ReadingError(f"{where}.offset_from", "a base-offset time carries the device's offset: no offset_from")
    if kind == RECEIVED and offset is not None:
        raise ReadingError(f"{where}.offset_from", "a time of reception carries the gateway's offset: no offset_from")
    device_offset = _DEVICE_OFFSET_DEFAULT[kind] if offset is None else offset == "device"
    if kind == TICKS and tick_digits(m["tick_rate"]) is None:
        raise ReadingError(f"{where}.tick_rate", f"{m['tick_rate']} ticks per second: a tick must be a finite "
                                                 "decimal fraction of a second (a rate of the form 2^a * 5^b)")
    return Stamp(kind, device_offset, m.get("ticks"), m.get("tick_rate"))


def _build_clock(c: dict) -> DeviceClock:
    kind = c.get("type", "absolute")
    if kind != "absolute":
        raise ReadingError("clock.type", f"{kind!r} clocks are not supported yet: only 'absolute' "
                                         "(the device's current date-time; tick counters have no date-time)")
    gateway_time, _ = _parse_time(c["gateway_time"], "clock.gateway_time")
    device_time = None if c["device_time"] is None else _parse_time(c["device_time"], "clock.device_time")[0]
    return DeviceClock(gateway_time, device_time, CLOCK_TYPES[kind], c.get("sync"))


def from_canonical_json(text: str, source: str) -> Reading:
    """A Reading from canonical JSON (Reading.to_json, as the outbox stores it). That text was
    validated at intake, so the JSON Schema pass, which costs 20 times the rest of parsing, is
    skipped; the bounds and the semantic checks still run and anything unexpected is a ReadingError.
    A text plainly within the bounds (`_plainly_canonical`: phg's own canonical JSON, nearly always) is
    read in one pass; any other through `loads` and `check_bounds`, which name what is wrong."""
    try:
        doc = _plainly_canonical(text)
        if doc is None:
            doc = loads(text)
            check_bounds(doc)
        return _build(doc)
    except ReadingError as exc:
        raise ReadingError(exc.where, exc.why, source) from None
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        raise ReadingError("(document)", f"not a canonical reading: {exc.__class__.__name__}: {exc}", source) from None


def _plainly_canonical(text: str) -> Any:
    """The document `text` holds when it is certainly within the bounds, else None (issue 16: the outbox's
    texts were parsed with Decimal hooks and walked by check_bounds again at every delivery). Checked on the
    text itself: no escape (so every string of the document is verbatim in the text, and quotes alternate
    between strings and what lies outside them), no forbidden character, no string too long; outside the
    strings, no float (a '.' or an exponent: orjson would give a float, `loads` a Decimal), no integer of
    MAX_DIGITS + 1 digits, and brackets nested at most MAX_DEPTH deep (each pass of two str.replace calls
    removes at most two levels). The size needs no count: every member of a container takes at least one
    character of the text besides the strings'. Then orjson reads it: the same values `loads` gives."""
    if len(text) > MAX_SIZE:
        return None
    if text.isascii():  # C0 controls, DEL and the backslash are the ASCII characters to find: no regex needed
        data = text.encode()
        if len(data.translate(None, _ASCII_REFUSED)) != len(data):
            return None
    elif re.search(_FORBIDDEN_OR_ESCAPE, text):
        return None
    pieces = text.split('"')
    if len(text) > MAX_STRING and max(map(len, pieces[1::2]), default=0) > MAX_STRING:
        return None
    shape = "".join(pieces[::2]).translate(_SHAPE)
    if "." in shape or "e" in shape or "E" in shape or _LONG_INTEGER in shape:
        return None
    nesting = shape.replace("0", "").replace(",", "")
    for _ in range(MAX_DEPTH // 2):
        nesting = nesting.replace("{}", "").replace("[]", "")
    if nesting:
        return None
    import orjson  # here: `phg send` never reads the outbox, and starts without it

    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


_ASCII_REFUSED = _ASCII_FORBIDDEN + b"\\"
_FORBIDDEN_OR_ESCAPE = f"[{_FORBIDDEN_CHARS}\\\\]"  # and the backslash (a pattern's text, as _FORBIDDEN)
# What lies outside the strings, reduced to its shape: each digit as 0, brackets, commas (between numbers), the
# marks of a float (also the e of true and false: a document with booleans takes the long way); the rest dropped.
_SHAPE = {c: "0" if chr(c).isdigit() else chr(c) if chr(c) in "[]{},.eE" else None for c in range(128)}
_LONG_INTEGER = "0" * (MAX_DIGITS + 1)


def _json_number(text: str) -> int | Decimal:
    """A JSON number as int (short integers: codes stay ints) or Decimal (precision kept). Never raises:
    Python's int() refuses more than 4,300 digits, and Decimal() an exponent beyond 10^18, so those
    become a Decimal that `check_number` refuses, naming the field."""
    if len(text) <= MAX_DIGITS + 1 and "." not in text and "e" not in text.lower():
        return int(text)
    try:
        return Decimal(text)
    except InvalidOperation:
        return Decimal("1E+999999999999999999")


def loads(text: str) -> Any:
    """JSON text to Python values, numbers as `_json_number`; malformed JSON, or an object that repeats a
    member name (`_parse`), is a ReadingError."""
    doc, repeated = _parse(text)
    if repeated and (error := _repeated_member(doc)):
        raise error
    return doc


class _Repeated:
    """What `_parse` puts in place of an object that repeats a member name: `name`, the first name repeated."""

    __slots__ = ("name",)

    def __init__(self, pairs: list[tuple[str, Any]]):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                break
            seen.add(name)
        self.name = name


def _parse(text: str) -> tuple[Any, bool]:
    """`loads`, keeping in place of each object that repeats a member name a _Repeated, and whether there is
    one: a document holding one is refused (RFC 8259 section 4: names SHOULD be unique, and readers disagree
    on which value counts; json keeps the last, so an app or a proxy that checked the first patient would
    have the reading stored for another: review A), and a multi-document text refuses only that document.
    The check is json's object_pairs_hook; only a text with a repeated name is walked again (issue 16)."""
    repeated: list[_Repeated] = []

    def members(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Repeated:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        repeated.append(_Repeated(pairs))
        return repeated[-1]

    try:
        doc = json.loads(text, parse_int=_json_number, parse_float=_json_number, object_pairs_hook=members)
    except json.JSONDecodeError as exc:
        raise ReadingError(f"line {exc.lineno} column {exc.colno}", f"not JSON: {exc.msg}") from None
    except RecursionError:
        raise ReadingError("(document)", f"not readable: nested far deeper than {MAX_DEPTH} levels") from None
    return doc, bool(repeated)


def _repeated_member(doc: Any, source: str | None = None) -> ReadingError | None:
    """The refusal of the first object in `doc` (in document order) that repeats a member name, naming its
    path and the name, both cut short when long (the refusal is answered and logged). Each stacked value links
    to its parent's link (no path copied per value: a deep text costs no more)."""
    stack: list[tuple[Any, tuple | None]] = [(doc, None)]
    while stack:
        value, link = stack.pop()
        if isinstance(value, _Repeated):
            parts = []
            while link:
                link, key = link
                parts.append(key)
            where = _path(reversed(parts))  # deeper, or through longer names, than a valid document: its ends
            return ReadingError(where if len(where) <= 200 else f"{where[:80]} ... {where[-100:]}",
                                f"duplicate member {value.name!r:.60}: a name may appear once in an object "
                                "(RFC 8259 section 4: readers disagree on which value counts)", source)
        if isinstance(value, dict | list):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack += reversed([(item, (link, key)) for key, item in items])
    return None


def parse_documents(data: bytes | str, source: str) -> tuple[list[Reading], list[ReadingError]]:
    """The Readings of one file (or stdin), and a refusal for each document, line or file that is
    bad: a bad document or JSON Lines line never costs the others. Refusals name the document as
    `source`, `source[3]` (the fourth of an array) or `source line 3` (JSON Lines)."""
    readings, errors = [], []
    for parsed in parse_each(data, source):
        (errors if isinstance(parsed, ReadingError) else readings).append(parsed)
    return readings, errors


def parse_each(data: bytes | str, source: str) -> Iterator[Reading | ReadingError]:
    """`parse_documents` one document at a time, in order: each document's Reading or refusal (the
    ingest API answers per document). A file refused as a whole (too large, not UTF-8, not JSON)
    is one ReadingError naming `source`."""
    try:
        for label, doc in _documents(data, source):
            yield doc if isinstance(doc, ReadingError) else _reading_or_error(doc, label)
    except ReadingError as exc:
        yield ReadingError(exc.where, exc.why, source)


def _reading_or_error(doc: Any, label: str) -> Reading | ReadingError:
    try:
        return parse_reading(doc, label)
    except ReadingError as exc:
        return exc


def _documents(data: bytes | str, source: str) -> Iterator[tuple[str, Any]]:
    """(label, document) for one document, an array of them, or JSON Lines: a text that is not one
    JSON value is read as JSON Lines (jsonlines.org: one value per line, lines split at \\n only)
    when its first or second non-blank line is a JSON value on its own; a line that is not JSON, or a
    document that repeats a member name, then comes as (label, its ReadingError)."""
    text = _text(data)
    try:
        docs, repeated = _parse(text)
    except ReadingError:
        lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
        if len(lines) < 2 or not any(_is_json(line) for _, line in lines[:2]):
            raise
        for n, line in lines:
            try:
                yield f"{source} line {n}", _unrepeated(*_parse(line), f"{source} line {n}")
            except ReadingError as exc:  # where: "line 1 column 7" of the line alone, or "(document)"
                column = exc.where.removeprefix("line 1") if exc.where.startswith("line 1 ") else ""
                yield f"{source} line {n}", ReadingError(f"line {n}{column}", exc.why, source)
        return
    if not isinstance(docs, list):
        yield source, _unrepeated(docs, repeated, source)
        return
    for n, doc in enumerate(docs):
        label = source if len(docs) == 1 else f"{source}[{n}]"
        yield label, _unrepeated(doc, repeated, label)


def _unrepeated(doc: Any, repeated: bool, label: str) -> Any:
    """`doc`, or its refusal when it holds an object that repeats a member name (`_parse`)."""
    error = _repeated_member(doc, label) if repeated else None
    return doc if error is None else error


def _text(data: bytes | str) -> str:
    """The text of a file: at most MAX_INPUT_BYTES of UTF-8 (RFC 8259 section 8.1; a BOM is ignored)."""
    if len(data) > MAX_INPUT_BYTES:
        raise ReadingError("(file)", f"larger than {MAX_INPUT_BYTES // 2**20} MiB: split it")
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReadingError("(file)", f"not UTF-8 at byte {exc.start}") from None


def _is_json(line: str) -> bool:
    try:
        _parse(line)
    except ReadingError:
        return False
    return True
