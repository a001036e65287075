"""Reading -> HL7 v2.6 ORU^R01 per IHE PCD TF-2 PCD-01 with the Continua (PCHA H.812) WAN rules.

Pure: no I/O, no clock read unless `now` is omitted. One message per reading, so that one ACK
answers exactly one reading (its MSA-2 must equal the message's MSH-10; see ack.py).

Shape (IHE PCD TF-2 transaction PCD-01, https://www.ihe.net/resources/technical_frameworks/#pcd;
the PCD-01 example request of the IPF project, https://github.com/oehf/ipf):

    MSH  MSH-3 <ns>^<gateway EUI-64>^EUI-64, ORU^R01^ORU_R01, 2.6, NE/AL, MSH-21 = PCD-01 profile
    PID  PID-3 from the patient binding, PID-5 (name type U "unspecified" when the name is unknown)
    OBR  OBR-2/3 EIs in the gateway's EUI-64 namespace, OBR-4 monitoring of patient, OBR-7/8
    OBX  0.0.0.1   the gateway: MDC_TIME_SYNC_PROTOCOL (OBX-18 = gateway EUI-64)
    OBX  1         the device's MDS: its specialization (MDC_DEV_SPEC_PROFILE_*), OBX-18 = device EUI-64
    OBX  1.0.0.n   MDS attributes (MDC_ATTR_TIME_ABS when the device clock is known), then simple metrics
    OBX  1.0.c     compound metric c (blood pressure), its components at 1.0.c.1..k

OBX-4 is MDS.VMD.CHAN.METRIC (PCD TF-2 "OBX-4 sub-id"; 0 = level not applicable). Times: OBX-14,
OBR-7/8 and MSH-7 in UTC (+0000); the device's own wall clock, when known, rides in a DTM row.

ER7 is written here rather than built with hl7apy's element tree: the message has one fixed shape,
escaping is a few substitutions (HL7 v2.6 ch. 2.7), and hl7apy's tree is ~100x slower. The tests run
every rendered message through hl7apy strict validation and the PCD-01 checker (checker.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

from phg import mdc
from phg.errors import MappingError
from phg.model import MDC_ATTR_TIME_ABS, Gateway, Metric, Reading

PCD01_PROFILE = "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"
MONITORING_OF_PATIENT = "182777000^monitoring of patient^SNOMED-CT"
SEGMENT_SEPARATOR = "\r"


# What ER7 cannot carry raw: the C0 controls (CR ends a segment; VT and FS are MLLP's block
# characters, so a raw one breaks the frame) and DEL, plus U+FFFE/U+FFFF, which XML 1.0 (the SOAP
# binding) cannot carry. A lone surrogate is no character at all and has no UTF-8 encoding.
_UNSAFE = re.compile("[\x00-\x1f\x7f\ufffe\uffff\ud800-\udfff]")
NM_MAX_LENGTH = 16  # HL7 v2.6 ch. 2A, NM: maximum length 16 (hl7apy's NM enforces the same)


def _hex_escape(match: re.Match[str]) -> str:
    char = match.group()
    if "\ud800" <= char <= "\udfff":
        raise MappingError(f"text holds a lone surrogate U+{ord(char):04X}, which is not a character and "
                           "cannot be sent as UTF-8 (MSH-18 UNICODE UTF-8)")
    return f"\\X{char.encode('utf-8').hex().upper()}\\"


def escape(text: str) -> str:
    """ER7 text: the delimiters as their escape sequences (HL7 v2.6 section 2.7.4, \\ first), and every
    character ER7 cannot carry raw as a hexadecimal-data escape \\Xhh..\\ of its UTF-8 bytes (section
    2.7: "\\Xdddd...\\ hexadecimal data"; MSH-18 is UNICODE UTF-8). A lone surrogate, which no
    escape can express, is refused with MappingError."""
    text = (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\"))
    return _UNSAFE.sub(_hex_escape, text)


def dtm(t: datetime, digits: int = 0) -> str:
    """HL7 DTM in UTC: YYYYMMDDHHMMSS[.SSSS]+0000 (DTM allows at most 4 fractional digits)."""
    u = t.astimezone(UTC)
    text = u.strftime("%Y%m%d%H%M%S")
    if digits:
        text += "." + f"{u.microsecond:06d}"[:min(digits, 4)]
    return text + "+0000"


def local_dtm(t: datetime, digits: int = 0) -> str:
    """HL7 DTM keeping the clock's own UTC offset (the device's wall clock)."""
    text = t.strftime("%Y%m%d%H%M%S")
    if digits:
        text += "." + f"{t.microsecond:06d}"[:min(digits, 4)]
    offset = t.utcoffset()
    if offset is not None:
        minutes = int(offset.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        text += f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    return text


def number(value: Decimal) -> str:
    """An NM value: plain decimal notation (never 1E+2), precision kept. A value that is not finite, or
    whose plain notation would exceed NM's 16 characters, is refused (MappingError) before any string is
    built: 1E+999999999 would otherwise be a gigabyte of zeros."""
    if not value.is_finite():
        raise MappingError(f"{value} is not a number HL7 v2 NM can carry")
    if max(value.adjusted(), -value.as_tuple().exponent) > NM_MAX_LENGTH:  # type: ignore[operator]
        raise MappingError(f"a value with exponent {value.adjusted()} does not fit NM's {NM_MAX_LENGTH} characters")
    text = format(value, "f")
    if len(text) > NM_MAX_LENGTH:
        raise MappingError(f"a value of {len(text)} characters does not fit NM's {NM_MAX_LENGTH}")
    return "0" if text in ("-0", "+0") else text


def control_id(reading: Reading, gateway: Gateway, occurrence: int = 0) -> str:
    """MSH-10: 20 upper-case hex chars of SHA-256 over the gateway id, the reading's content key and
    the occurrence counter. Deterministic: a re-send of the same reading carries the same control id,
    so a receiver that de-duplicates on MSH-10 stores it once, and an ACK is matched to its reading by
    MSA-2 alone. 80 bits make a collision between different readings negligible; 20 characters fit
    every receiver (MSH-10 was ST(20) before v2.6)."""
    seed = f"{gateway.system_id}|{reading.key}|{occurrence}"
    return hashlib.sha256(seed.encode()).hexdigest()[:20].upper()


def render_messages(readings: Sequence[Reading], gateway: Gateway, *, now: datetime | None = None,
                    receiving_application: str = "", receiving_facility: str = "") -> list[str]:
    """One PCD-01 ORU^R01 ER7 message per reading (segments separated by CR), in order.
    MSH-10 is unique within the list: a reading given twice gets a second occurrence counter.
    Raises MappingError when a reading cannot be expressed (e.g. a unit without an MDC code)."""
    out = []
    for item in render_batch(readings, gateway, now=now, receiving_application=receiving_application,
                             receiving_facility=receiving_facility):
        if isinstance(item, MappingError):
            raise item
        out.append(item[1])
    return out


def render_batch(readings: Sequence[Reading], gateway: Gateway, *, now: datetime | None = None,
                 receiving_application: str = "", receiving_facility: str = "") -> list[tuple[str, str] | MappingError]:
    """Per reading: (MSH-10, ER7 message), or a MappingError saying why that reading alone cannot be
    rendered. Any exception while rendering one reading is that reading's problem, never the batch's."""
    now = now or datetime.now(UTC)
    seen: dict[str, int] = {}
    out: list[tuple[str, str] | MappingError] = []
    for reading in readings:
        occurrence = seen.get(reading.key, 0)
        seen[reading.key] = occurrence + 1
        msh10 = control_id(reading, gateway, occurrence)
        try:
            out.append((msh10, render_message(reading, gateway, msh10, now=now,
                                              receiving_application=receiving_application,
                                              receiving_facility=receiving_facility)))
        except MappingError as exc:
            out.append(exc)
        except Exception as exc:  # a renderer bug must cost this reading only
            out.append(MappingError(f"{exc.__class__.__name__}: {exc}"))
    return out


def render_message(reading: Reading, gateway: Gateway, msh10: str, *, now: datetime,
                   receiving_application: str = "", receiving_facility: str = "") -> str:
    if not reading.metrics:
        raise MappingError("a reading without metrics cannot be sent as PCD-01 (no OBX to report)")
    gw_hd = f"{escape(_namespace(gateway))}^{gateway.system_id}^EUI-64"
    msh = ("MSH|^~\\&|" + gw_hd + f"||{escape(receiving_application)}|{escape(receiving_facility)}|{dtm(now)}||"
           f"ORU^R01^ORU_R01|{msh10}|P|2.6|||NE|AL||UNICODE UTF-8|||{PCD01_PROFILE}")
    times = [m.time for m in reading.metrics]
    ns = f"{escape(_namespace(gateway))}^{gateway.system_id}^EUI-64"
    obr = (f"OBR|1|{msh10}^{ns}|{msh10}^{ns}|{MONITORING_OF_PATIENT}|||{dtm(min(times))}|{dtm(max(times))}")
    segments = [msh, _pid(reading), obr]
    rows = _observations(reading, gateway, now)
    segments += [f"OBX|{i}|{row}" for i, row in enumerate(rows, 1)]
    return SEGMENT_SEPARATOR.join(segments)


def _namespace(gateway: Gateway) -> str:
    """MSH-3.1 / EI namespace: the gateway's model name, short (HD.1 is IS, 20 characters)."""
    return (gateway.model or "phg")[:20]


def _pid(reading: Reading) -> str:
    """PID-3 CX: value^^^<assigning authority HD>^PI. An urn:oid: system becomes an ISO OID, any other
    URI a URI-typed HD. PID-5 is required by PCD-01 when PID is sent: the model has no name, so the
    name type code U (HL7 table 0200, unspecified) is sent alone."""
    system = reading.patient.system
    if system.startswith("urn:oid:"):
        authority = f"&{escape(system[8:])}&ISO"
    else:
        authority = f"&{escape(system)}&URI"
    name = getattr(reading.patient, "name", None)
    pid5 = escape(name) if name else "^^^^^^U"
    return f"PID|||{escape(reading.patient.value)}^^^{authority}^PI||{pid5}"


def _code(code: int) -> str:
    known = mdc.MEASUREMENTS.get(code)
    ref = known.ref_id if known else ""
    return f"{code}^{ref}^MDC"


def _unit(ucum: str | None, where: str) -> str:
    if ucum is None:
        raise MappingError(f"{where}: no unit")
    if ucum not in mdc.UNITS_MDC:
        raise MappingError(f"{where}: unit {ucum!r} has no MDC unit code for OBX-6")
    code, ref = mdc.UNITS_MDC[ucum]
    return f"{code}^{ref}^MDC^{escape(ucum)}^{escape(ucum)}^UCUM"


ABSENT = frozenset({"invalid", "not-available"})  # MeasurementStatus bits that void the value (as the FHIR mapping)


def _result_status(metric: Metric) -> str:
    """OBX-11 (HL7 table 0085): F for data the device marked validated, P for an early indication,
    R (raw device data, not verified) otherwise."""
    if "validated-data" in metric.status:
        return "F"
    return "P" if "early-indication" in metric.status else "R"


def _obx(value_type: str, ident: str, sub_id: str, value: str = "", units: str = "", status: str = "R",
         time: str = "", equipment: str = "") -> str:
    """OBX-2..18 (OBX-1 is added by the caller)."""
    fields = [value_type, ident, sub_id, value, units, "", "", "", "", status, "", "", time, "", "", "", equipment]
    return "|".join(fields).rstrip("|")


def _observations(reading: Reading, gateway: Gateway, now: datetime) -> list[str]:
    device = reading.device
    sync = gateway.time_sync
    rows = [_obx("CWE", f"{mdc.MDC_TIME_SYNC_PROTOCOL}^MDC_TIME_SYNC_PROTOCOL^MDC", "0.0.0.1",
                 f"{sync}^{mdc.TIME_SYNC.get(sync, '')}^MDC", equipment=f"{gateway.system_id}^EUI-64")]
    if device.specializations:
        spec = device.specializations[0].code
        spec_text = f"{spec}^{mdc.SPECIALIZATIONS.get(spec, ('',))[0]}^MDC"
    else:
        spec_text = f"{mdc.MDC_MOC_VMS_MDS_SIMP}^{mdc.MDC_MOC_VMS_MDS_SIMP_REF}^MDC"
    if device.system_id:
        equipment = f"{device.system_id}^EUI-64"
    elif device.bt_address:
        equipment = f"{device.bt_address.replace('-', '')}^EUI-48"
    else:
        raise MappingError("device has neither an EUI-64 system id nor a transport address")
    rows.append(_obx("", spec_text, "1", status="X", equipment=equipment))
    metric_n = 0
    clock = reading.clock  # the device's clock as the gateway read it at upload, when a source knows it
    if clock is not None and clock.device_time is not None and clock.clock_type == MDC_ATTR_TIME_ABS:
        metric_n += 1
        rows.append(_obx("DTM", f"{MDC_ATTR_TIME_ABS}^MDC_ATTR_TIME_ABS^MDC", f"1.0.0.{metric_n}",
                         local_dtm(clock.device_time), time=dtm(clock.gateway_time)))
    chan = 0
    for i, m in enumerate(reading.metrics):
        where = f"metrics[{i}]"
        when = dtm(m.time, m.time_digits)
        absent = bool(ABSENT & set(m.status))
        if m.components or (m.value is None and m.code in mdc.MEASUREMENTS and mdc.MEASUREMENTS[m.code].components):
            chan += 1
            rows.append(_obx("", _code(m.code), f"1.0.{chan}", status="X", time=when))
            if absent:  # an invalid compound reports no components (value cannot be obtained)
                continue
            for j, c in enumerate(m.components, 1):
                rows.append(_obx("NM", _code(c.code), f"1.0.{chan}.{j}", number(c.value),
                                 _unit(c.unit, f"{where}.components[{j - 1}]"), _result_status(m), when))
            continue
        metric_n += 1
        sub_id = f"1.0.0.{metric_n}"
        if m.value is None or absent:  # invalid / not-available: no value, result status X (cannot be obtained)
            rows.append(_obx("", _code(m.code), sub_id, status="X", time=when))
        else:
            rows.append(_obx("NM", _code(m.code), sub_id, number(m.value), _unit(m.unit, where),
                             _result_status(m), when))
    return rows
