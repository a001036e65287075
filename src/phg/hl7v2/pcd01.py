"""Reading -> HL7 v2.6 ORU^R01 per IHE PCD TF-2 PCD-01 with the Continua (PCHA H.812) WAN rules.

Pure: no I/O, no clock read unless `now` is omitted. One message per reading, so that one ACK
answers exactly one reading (its MSA-2 must equal the message's MSH-10; see ack.py).

Shape (IHE PCD TF-2 transaction PCD-01, https://www.ihe.net/resources/technical_frameworks/#pcd;
the PCD-01 example request of the IPF project, https://github.com/oehf/ipf):

    MSH  MSH-3 <ns>^<gateway EUI-64>^EUI-64, ORU^R01^ORU_R01, MSH-11 P (T for test data, below), 2.6,
         NE/AL, MSH-21 = PCD-01 profile
    PID  PID-3 from the patient binding, PID-5 (name type U "unspecified" when the name is unknown)
    OBR  OBR-2/3 EIs in the gateway's EUI-64 namespace, OBR-4 monitoring of patient, OBR-7/8
    OBX  0         the gateway's MDS: MDC_MOC_VMS_MDS_AHD (the application hosting device), OBX-18 = its EUI-64
    OBX  0.0.0.n   its attributes: MDC_TIME_SYNC_PROTOCOL (always 0.0.0.1), then model, serial, firmware, software
    OBX  1         the device's MDS: its specialization (MDC_DEV_SPEC_PROFILE_*), OBX-18 = device EUI-64
    OBX  1.0.0.n   MDS attributes (time sync, system id, model, serial, firmware, MDC_ATTR_TIME_ABS when the
                   device clock is known), then simple metrics: NM numbers, CWE codes and status bits
    OBX  1.0.c     compound metric c (blood pressure), its components at 1.0.c.1..k
    OBX  ....1     a metric's attribute one level below it: Supplemental-Types (1.0.0.n.1, 1.0.c.0.1)

OBX-4 is MDS.VMD.CHAN.METRIC (PCD TF-2 "OBX-4 sub-id"; 0 = level not applicable): the gateway is MDS 0
(Continua WAN: 0.0.0.1 is the gateway's time-sync row), the device MDS 1, its metrics and attributes in
MDS 1 with the VMD and, for simple metrics, the channel level not applicable. Device attributes follow
the IEEE 11073-20601 MDS object (System-Id, System-Model, Production-Specification, time sync) with
their IEEE 11073-10101 terms, one OBX each, as the Continua WAN fixtures write MDS-level rows.
Times: OBX-14, OBR-7/8 and MSH-7 in UTC (+0000); the device's own wall clock, when known, rides in a DTM row.

Measurement status (IEEE 11073-20601 MeasurementStatus) goes to OBX-8 and OBX-11 per the IHE PCD TF-2
measurement-status table (OBX-8 Abnormal Flags; restated in the HL7 Point-of-Care Device IG's v2
mapping, https://build.fhir.org/ig/HL7/uv-pocd/mappingv2.html): see `STATUS_FLAGS`. A reading whose
every metric is test or demonstration data is sent with MSH-11 = T (HL7 v2.6 section 2.14.9.11,
table 0103: P production, T training, D debugging; demonstration data is not a debugging run), so that
a receiver does not file it as a patient's; its OBX-8 flags still say which of the two it is.

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
from phg.model import MDC_ATTR_TIME_ABS, Gateway, Metric, Reading, device_specializations

PCD01_PROFILE = "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"
# IEEE 11073-10101 terms of the MDS attributes the device rows carry (partition 1 attributes: 1 * 65536 + id;
# partition 8 infrastructure: 8 * 65536 + id). mdc holds the gateway's (AHD, time sync, firmware).
MDC_ATTR_SYS_ID = 67972  # System-Id (2436)
# System-Model's two fields, each its own ST row (ST has no components): the PHD IG's "PHG Product Information"
# table (System-Model: model number 531969 MDC_ID_MODEL_NUMBER, manufacturer name 531970 MDC_ID_MODEL_MANUFACTURER).
MDC_ID_MODEL_NUMBER = 531969  # (7681)
MDC_ID_MODEL_MANUFACTURER = 531970  # (7682)
MDC_ID_PROD_SPEC_SERIAL = 531972  # Production-Specification spec-type serial-number (7684)
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
           f"ORU^R01^ORU_R01|{msh10}|{processing_id(reading)}|2.6|||NE|AL||UNICODE UTF-8|||{PCD01_PROFILE}")
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


# IHE PCD TF-2, OBX-8 Abnormal Flags, measurement-status table (IEEE 11073-10201/-20601 MeasurementStatus ->
# OBX-8 flag, OBX-11 result status); restated in https://build.fhir.org/ig/HL7/uv-pocd/mappingv2.html.
# Status name (mdc.MEASUREMENT_STATUS) -> OBX-8 flag. validated-data has no flag: it is OBX-11 F. The flags
# repeat (OBX-8 is IS, repeating) in bit order.
STATUS_FLAGS: dict[str, str] = {
    "invalid": "INV",  # OBX-11 X
    "questionable": "QUES",
    "not-available": "NAV",  # OBX-11 X
    "calibration-ongoing": "CAL",
    "test-data": "TEST",
    "demonstration-data": "DEMO",
    "early-indication": "EARLY",
    "msmt-ongoing": "BUSY",  # OBX-11 X: a new measurement is just being taken
}
# The statuses whose OBX-11 is X (HL7 table 0085: results cannot be obtained): the value is not sent, as the
# FHIR mapping sends none (dataAbsentReason error / not-performed / temp-unknown).
ABSENT = frozenset({"invalid", "not-available", "msmt-ongoing"})
TEST_DATA = frozenset({"test-data", "demonstration-data"})


def _result_status(metric: Metric) -> str:
    """OBX-11 (HL7 table 0085) per the PCD TF-2 measurement-status table: X when the value cannot be
    obtained, F for data the device marked validated, R (raw device data, not verified) otherwise,
    early indications included."""
    if ABSENT & set(metric.status):
        return "X"
    return "F" if "validated-data" in metric.status else "R"


def _flags(metric: Metric) -> str:
    """OBX-8: the metric's measurement-status flags, repeated with ~ in MeasurementStatus bit order."""
    return "~".join(STATUS_FLAGS[name] for name in mdc.MEASUREMENT_STATUS if name in metric.status
                    and name in STATUS_FLAGS)


def processing_id(reading: Reading) -> str:
    """MSH-11: T (HL7 table 0103, training) when every metric of the reading is test or demonstration
    data (IEEE 11073-20601 MeasurementStatus test-data / demo-data), else P (production)."""
    return "T" if all(TEST_DATA & set(m.status) for m in reading.metrics) else "P"


def _obx(value_type: str, ident: str, sub_id: str, value: str = "", units: str = "", status: str = "R",
         time: str = "", equipment: str = "", flags: str = "") -> str:
    """OBX-2..18 (OBX-1 is added by the caller)."""
    fields = [value_type, ident, sub_id, value, units, "", flags, "", "", status, "", "", time, "", "", "", equipment]
    return "|".join(fields).rstrip("|")


def _ident(code: int, ref: str) -> str:
    return f"{code}^{ref}^MDC"


def _attributes(sub_id: str, *, system_id: str | None, manufacturer: str | None, model: str | None,
                serial: str | None, firmware: str | None, sync: int | None, software: str | None = None) -> list[str]:
    """An MDS's attribute rows at <sub_id>.0.0.n, n from 1, each present only when known: the
    time-synchronisation protocol (MDC_TIME_SYNC_PROTOCOL, a CWE of an MDC_TIME_SYNC_* term), System-Id
    (MDC_ATTR_SYS_ID, the EUI-64 as 16 hex digits), System-Model (its two IEEE 11073-20601 fields, one ST row
    each: MDC_ID_MODEL_MANUFACTURER, MDC_ID_MODEL_NUMBER), Production-Specification entries
    (MDC_ID_PROD_SPEC_SERIAL, _FW, _SW: the spec-type term as OBX-3)."""
    values: list[tuple[str, str, str]] = []
    if sync is not None:
        values.append(("CWE", _ident(mdc.MDC_TIME_SYNC_PROTOCOL, "MDC_TIME_SYNC_PROTOCOL"),
                       _ident(sync, mdc.TIME_SYNC.get(sync, ""))))
    if system_id:
        values.append(("ST", _ident(MDC_ATTR_SYS_ID, "MDC_ATTR_SYS_ID"), escape(system_id)))
    if manufacturer:
        values.append(("ST", _ident(MDC_ID_MODEL_MANUFACTURER, "MDC_ID_MODEL_MANUFACTURER"), escape(manufacturer)))
    if model:
        values.append(("ST", _ident(MDC_ID_MODEL_NUMBER, "MDC_ID_MODEL_NUMBER"), escape(model)))
    if serial:
        values.append(("ST", _ident(MDC_ID_PROD_SPEC_SERIAL, "MDC_ID_PROD_SPEC_SERIAL"), escape(serial)))
    if firmware:
        values.append(("ST", _ident(mdc.MDC_ID_PROD_SPEC_FW, "MDC_ID_PROD_SPEC_FW"), escape(firmware)))
    if software:
        values.append(("ST", _ident(mdc.MDC_ID_PROD_SPEC_SW, "MDC_ID_PROD_SPEC_SW"), escape(software)))
    return [_obx(kind, ident, f"{sub_id}.0.0.{n}", value) for n, (kind, ident, value) in enumerate(values, 1)]


def _gateway_rows(gateway: Gateway) -> list[str]:
    """MDS 0, the gateway as the application hosting device (MDC_MOC_VMS_MDS_AHD, the PHD IG PhgDevice
    type) with its EUI-64 in OBX-18, then its attributes; the time-sync protocol first, at 0.0.0.1
    where the Continua WAN fixtures have it; its software revision is phg's version."""
    mds = _obx("", _ident(mdc.MDC_MOC_VMS_MDS_AHD, "MDC_MOC_VMS_MDS_AHD"), "0", status="X",
               equipment=f"{gateway.system_id}^EUI-64")
    return [mds, *_attributes("0", system_id=None, manufacturer=gateway.manufacturer, model=gateway.model,
                              serial=gateway.serial, firmware=gateway.firmware, sync=gateway.time_sync,
                              software=gateway.software)]


def _device_rows(reading: Reading) -> list[str]:
    """MDS 1, the device: its specialization as the MDS row's OBX-3 (the first of model.device_specializations,
    the rule the FHIR PhdDevice follows: what the source reported, else what the metric codes say, else
    MDC_DEV_SPEC_PROFILE_GENERIC) with OBX-18 its EUI-64 (or, without one, its Bluetooth address as EUI-48),
    then its attributes and the device clock."""
    device, clock = reading.device, reading.clock
    spec = device_specializations(device, reading.metrics)[0].code
    ident = _ident(spec, mdc.SPECIALIZATIONS.get(spec, ("",))[0])
    if device.system_id:
        equipment = f"{device.system_id}^EUI-64"
    elif device.bt_address:
        equipment = f"{device.bt_address.replace('-', '')}^EUI-48"
    else:
        raise MappingError("device has neither an EUI-64 system id nor a transport address")
    rows = [_obx("", ident, "1", status="X", equipment=equipment)]
    rows += _attributes("1", system_id=device.system_id, manufacturer=device.manufacturer, model=device.model,
                        serial=device.serial, firmware=device.firmware, sync=clock.sync if clock else None)
    if clock is not None and clock.device_time is not None and clock.clock_type == MDC_ATTR_TIME_ABS:
        rows.append(_obx("DTM", _ident(MDC_ATTR_TIME_ABS, "MDC_ATTR_TIME_ABS"), f"1.0.0.{len(rows)}",
                         local_dtm(clock.device_time), time=dtm(clock.gateway_time)))
    return rows


def _observations(reading: Reading, gateway: Gateway, now: datetime) -> list[str]:
    rows = _gateway_rows(gateway)
    device_rows = _device_rows(reading)
    rows += device_rows
    metric_n = len(device_rows) - 1  # the device's attribute rows come first in 1.0.0.n
    chan = 0
    for i, m in enumerate(reading.metrics):
        where = f"metrics[{i}]"
        when = dtm(m.time, m.time_digits)
        absent = bool(ABSENT & set(m.status))
        status, flags = _result_status(m), _flags(m)
        if m.components or (m.value is None and m.code in mdc.MEASUREMENTS and mdc.MEASUREMENTS[m.code].components):
            chan += 1
            sub_id = f"1.0.{chan}"
            rows.append(_obx("", _code(m.code), sub_id, status="X", time=when, flags=flags))
            if not absent:  # an invalid compound reports no components (value cannot be obtained)
                for j, c in enumerate(m.components, 1):
                    rows.append(_obx("NM", _code(c.code), f"{sub_id}.{j}", number(c.value),
                                     _unit(c.unit, f"{where}.components[{j - 1}]"), status, when, flags=flags))
            rows += _supplemental(m, f"{sub_id}.0")
            continue
        metric_n += 1
        sub_id = f"1.0.0.{metric_n}"
        value_type, value, units = _value(m, where)
        if not value_type or absent:  # invalid / not-available / ongoing: no value, X (cannot be obtained)
            rows.append(_obx("", _code(m.code), sub_id, status="X", time=when, flags=flags))
        else:
            rows.append(_obx(value_type, _code(m.code), sub_id, value, units, status, when, flags=flags))
        rows += _supplemental(m, sub_id)
    return rows


def _value(m: Metric, where: str) -> tuple[str, str, str]:
    """A simple metric's OBX-2, OBX-5 and OBX-6; ("", "", "") when it has no value. A number is NM with
    its unit; an MDC code as the value (a coded enumeration: meal context, sample location) is a CWE of
    that code; a BITs value (device and measurement status) is a CWE with one repetition per reported bit
    in bit order, <1 set, 0 cleared>^<ASN.1 name>(<bit number>), as the Continua WAN glucose fixture writes
    MDC_GLU_METER_DEV_STATUS (1^sensor-strip-insertion(3)); a bit whose name phg does not know is
    written with its number alone."""
    if m.coded is not None:
        return "CWE", _ident(m.coded, mdc.CODED_VALUES.get(m.coded, ("",))[0]), ""
    if m.bits is not None:
        names = mdc.ASN1_BITS.get(m.code, {})
        return "CWE", "~".join(f"{int(b.set)}^{escape(b.name or names.get(b.bit, ''))}({b.bit})"
                               for b in sorted(m.bits.bits, key=lambda b: b.bit)), ""
    if m.value is None:
        return "", "", ""
    return "NM", number(m.value), _unit(m.unit, where)


def _supplemental(m: Metric, metric: str) -> list[str]:
    """The metric's Supplemental-Types attribute (MDC_ATTR_SUPPLEMENTAL_TYPES, a CWE repeated per type) as
    the row one level below the metric, <metric>.1: PCD TF-2's extra OBX-4 level for a metric attribute
    (the Continua glucose fixture's 1.0.0.2.1). A compound's attribute is at 1.0.c.0.1: no metric level."""
    if not m.supplemental:
        return []
    types = "~".join(_ident(code, mdc.SUPPLEMENTAL_TYPES.get(code, "")) for code in m.supplemental)
    return [_obx("CWE", _ident(mdc.MDC_ATTR_SUPPLEMENTAL_TYPES, "MDC_ATTR_SUPPLEMENTAL_TYPES"), f"{metric}.1", types)]
