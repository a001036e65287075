"""Typed APDUs of IEEE 11073-20601 and their MDER codec: `decode(bytes) -> Apdu`, `encode(Apdu) -> bytes`.

The APDUs a manager meets (20601 Annex A, §8): AARQ 0xE200, AARE 0xE300, RLRQ 0xE400, RLRE 0xE500,
ABRT 0xE600 and PRST 0xE700 carrying a DATA-apdu (invoke id + one of the ROIV/RORS/ROER/RORJ choices).
ANY DEFINED BY fields (event-info, action arguments, attribute values) stay bytes in the APDU so that
encode(decode(x)) == x holds byte for byte; `decode_event_info`, `decode_attribute` and friends turn
them into typed values, and the `*_bytes` builders go the other way.

Every length field is checked against what it encloses; anything inconsistent, truncated, trailing
or unknown raises ApduError with the reason and the byte offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from phg.sources.ieee11073 import nomenclature as nom
from phg.sources.ieee11073.mder import (
    ApduError,
    MderNumber,
    Reader,
    counted,
    decode_absolute_time,
    decode_base_offset_time,
    decode_float,
    decode_sfloat,
    octet_string,
    u16,
    u32,
)

__all__ = ["ApduError", "decode", "encode"]

AARQ, AARE, RLRQ, RLRE, ABRT, PRST = 0xE200, 0xE300, 0xE400, 0xE500, 0xE600, 0xE700
DATA_PROTO_ID_20601 = 20601
ASSOC_VERSION_1 = 0x80000000
PROTOCOL_VERSION_1 = 0x80000000
NOMENCLATURE_VERSION_1 = 0x80000000
MDER = 0x8000  # EncodingRules bit 0
SYS_TYPE_MANAGER, SYS_TYPE_AGENT = 0x80000000, 0x00800000

ASSOCIATE_RESULTS = ("accepted", "rejected-permanent", "rejected-transient", "accepted-unknown-config",
                     "rejected-no-common-protocol", "rejected-no-common-parameter", "rejected-unknown",
                     "rejected-unauthorized", "rejected-unsupported-assoc-version")
ACCEPTED, REJECTED_PERMANENT, ACCEPTED_UNKNOWN_CONFIG, REJECTED_NO_COMMON_PROTOCOL = 0, 1, 3, 4
REJECTED_NO_COMMON_PARAMETER, REJECTED_UNSUPPORTED_ASSOC_VERSION = 5, 8
RELEASE_REQUEST_REASONS = ("normal", "no-more-configurations", "configuration-changed")
ABORT_REASONS = ("undefined", "buffer-overflow", "response-timeout", "configuration-timeout")
ABORT_UNDEFINED, ABORT_BUFFER_OVERFLOW, ABORT_RESPONSE_TIMEOUT, ABORT_CONFIGURATION_TIMEOUT = 0, 1, 2, 3
CONFIG_RESULTS = ("accepted-config", "unsupported-config", "standard-config-unknown")
ACCEPTED_CONFIG, UNSUPPORTED_CONFIG, STANDARD_CONFIG_UNKNOWN = 0, 1, 2

MAX_APDU = 0xFFFF + 4


# ------------------------------------------------------------------------------------ association


@dataclass(frozen=True)
class AVA:
    """AVA-Type: one attribute id with its (still encoded) value."""

    attr_id: int
    value: bytes


@dataclass(frozen=True)
class PhdAssociationInformation:
    protocol_version: int = PROTOCOL_VERSION_1
    encoding_rules: int = MDER
    nomenclature_version: int = NOMENCLATURE_VERSION_1
    functional_units: int = 0
    system_type: int = SYS_TYPE_MANAGER
    system_id: bytes = b""
    dev_config_id: int = 0
    data_req_mode_flags: int = 0
    data_req_init_agent_count: int = 0
    data_req_init_manager_count: int = 0
    options: tuple[AVA, ...] = ()


@dataclass(frozen=True)
class DataProto:
    proto_id: int
    info: PhdAssociationInformation | bytes  # bytes for protocols other than 20601


@dataclass(frozen=True)
class Aarq:
    assoc_version: int
    protocols: tuple[DataProto, ...]


@dataclass(frozen=True)
class Aare:
    result: int
    protocol: DataProto


@dataclass(frozen=True)
class Rlrq:
    reason: int = 0


@dataclass(frozen=True)
class Rlre:
    reason: int = 0


@dataclass(frozen=True)
class Abrt:
    reason: int = 0


# ------------------------------------------------------------------------------------ DATA messages


@dataclass(frozen=True)
class EventReport:
    """roiv-cmip-event-report (0x0100) or roiv-cmip-confirmed-event-report (0x0101)."""

    obj_handle: int
    event_time: int
    event_type: int
    info: bytes
    confirmed: bool = True


@dataclass(frozen=True)
class EventReportResult:
    """rors-cmip-confirmed-event-report (0x0201)."""

    obj_handle: int
    current_time: int
    event_type: int
    reply_info: bytes = b""


@dataclass(frozen=True)
class Get:
    """roiv-cmip-get (0x0103); an empty id list asks for all attributes."""

    obj_handle: int
    attr_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GetResult:
    """rors-cmip-get (0x0203)."""

    obj_handle: int
    attributes: tuple[AVA, ...]


@dataclass(frozen=True)
class Set:
    """roiv-cmip-set (0x0104) / roiv-cmip-confirmed-set (0x0105); modifications: (modify-operator, AVA)."""

    obj_handle: int
    modifications: tuple[tuple[int, AVA], ...]
    confirmed: bool = True


@dataclass(frozen=True)
class SetResult:
    """rors-cmip-confirmed-set (0x0205)."""

    obj_handle: int
    attributes: tuple[AVA, ...]


@dataclass(frozen=True)
class Action:
    """roiv-cmip-action (0x0106) / roiv-cmip-confirmed-action (0x0107)."""

    obj_handle: int
    action_type: int
    args: bytes
    confirmed: bool = True


@dataclass(frozen=True)
class ActionResult:
    """rors-cmip-confirmed-action (0x0207)."""

    obj_handle: int
    action_type: int
    args: bytes


@dataclass(frozen=True)
class ErrorResult:
    """roer (0x0300): error-value (e.g. 1 no-such-object, 17 no-such-action) and its parameter."""

    error_value: int
    parameter: bytes = b""


@dataclass(frozen=True)
class RejectResult:
    """rorj (0x0400): problem (0 unrecognized-apdu, 2 badly-structured-apdu, 101 unrecognized-operation, ...)."""

    problem: int


Message = (EventReport | EventReportResult | Get | GetResult | Set | SetResult | Action | ActionResult
           | ErrorResult | RejectResult)

MESSAGE_NAMES = {
    0x0100: "roiv-cmip-event-report", 0x0101: "roiv-cmip-confirmed-event-report", 0x0103: "roiv-cmip-get",
    0x0104: "roiv-cmip-set", 0x0105: "roiv-cmip-confirmed-set", 0x0106: "roiv-cmip-action",
    0x0107: "roiv-cmip-confirmed-action", 0x0201: "rors-cmip-confirmed-event-report", 0x0203: "rors-cmip-get",
    0x0205: "rors-cmip-confirmed-set", 0x0207: "rors-cmip-confirmed-action", 0x0300: "roer", 0x0400: "rorj",
}


@dataclass(frozen=True)
class Prst:
    """PRST-apdu: a DATA-apdu with its invoke id."""

    invoke_id: int
    message: Message

    @property
    def choice(self) -> int:
        return message_choice(self.message)


Apdu = Aarq | Aare | Rlrq | Rlre | Abrt | Prst


def message_choice(m: Message) -> int:
    match m:
        case EventReport():
            return 0x0101 if m.confirmed else 0x0100
        case Get():
            return 0x0103
        case Set():
            return 0x0105 if m.confirmed else 0x0104
        case Action():
            return 0x0107 if m.confirmed else 0x0106
        case EventReportResult():
            return 0x0201
        case GetResult():
            return 0x0203
        case SetResult():
            return 0x0205
        case ActionResult():
            return 0x0207
        case ErrorResult():
            return 0x0300
        case RejectResult():
            return 0x0400
    raise TypeError(f"not a DATA-apdu message: {m!r}")


# ------------------------------------------------------------------------------------ lists


def read_list(r: Reader, what: str, item) -> tuple:
    """SEQUENCE OF: count, length, items; the items must fill `length` exactly."""
    count = r.u16(f"{what} count")
    body = r.sub(r.u16(f"{what} length"), what)
    items = tuple(item(body) for _ in range(count))
    body.done(f"{count} {what} entries")
    return items


def read_ava(r: Reader) -> AVA:
    attr = r.u16("attribute id")
    return AVA(attr, r.octet_string(f"value of attribute {attr}"))


def read_attribute_list(r: Reader, what: str = "attribute list") -> tuple[AVA, ...]:
    return read_list(r, what, read_ava)


def ava_bytes(a: AVA) -> bytes:
    return u16(a.attr_id) + octet_string(a.value)


def attribute_list_bytes(avas: Sequence[AVA]) -> bytes:
    return counted([ava_bytes(a) for a in avas])


# ------------------------------------------------------------------------------------ decode


def decode(data: bytes) -> Apdu:
    """Decode exactly one APDU. Raises ApduError (with reason and offset) for anything malformed."""
    data = bytes(data)
    r = Reader(data)
    choice = r.u16("APDU choice")
    length = r.u16("APDU length")
    if length != r.remaining:
        raise ApduError(f"APDU length field says {length} bytes but {r.remaining} follow", 2)
    match choice:
        case 0xE200:
            apdu: Apdu = _decode_aarq(r)
        case 0xE300:
            result = r.u16("association result")
            apdu = Aare(result, _read_data_proto(r))
        case 0xE400:
            apdu = Rlrq(r.u16("release reason"))
        case 0xE500:
            apdu = Rlre(r.u16("release reason"))
        case 0xE600:
            apdu = Abrt(r.u16("abort reason"))
        case 0xE700:
            apdu = _decode_prst(r)
        case _:
            raise ApduError(f"unknown APDU choice 0x{choice:04X}", 0)
    r.done(f"the {type(apdu).__name__.upper()} APDU")
    return apdu


def _decode_aarq(r: Reader) -> Aarq:
    version = r.u32("assoc-version")
    return Aarq(version, read_list(r, "data-proto-list", _read_data_proto))


def _read_data_proto(r: Reader) -> DataProto:
    proto_id = r.u16("data-proto-id")
    info = r.sub(r.u16("data-proto-info length"), "data-proto-info")
    if proto_id != DATA_PROTO_ID_20601:
        return DataProto(proto_id, info.take(info.remaining, "data-proto-info"))
    pai = PhdAssociationInformation(
        protocol_version=info.u32("protocol-version"),
        encoding_rules=info.u16("encoding-rules"),
        nomenclature_version=info.u32("nomenclature-version"),
        functional_units=info.u32("functional-units"),
        system_type=info.u32("system-type"),
        system_id=info.octet_string("system-id"),
        dev_config_id=info.u16("dev-config-id"),
        data_req_mode_flags=info.u16("data-req-mode-flags"),
        data_req_init_agent_count=info.u8("data-req-init-agent-count"),
        data_req_init_manager_count=info.u8("data-req-init-manager-count"),
        options=read_attribute_list(info, "option-list"),
    )
    info.done("PhdAssociationInformation")
    return DataProto(proto_id, pai)


def _decode_prst(r: Reader) -> Prst:
    body = r.sub(r.u16("PRST octet string length"), "PRST octet string")
    invoke_id = body.u16("invoke-id")
    choice = body.u16("DATA-apdu choice")
    m = body.sub(body.u16("DATA-apdu message length"), f"message 0x{choice:04X}")
    body.done("the DATA-apdu")
    match choice:
        case 0x0100 | 0x0101:
            message: Message = EventReport(m.u16("obj-handle"), m.u32("event-time"), m.u16("event-type"),
                                           m.octet_string("event-info"), confirmed=choice == 0x0101)
        case 0x0201:
            message = EventReportResult(m.u16("obj-handle"), m.u32("currentTime"), m.u16("event-type"),
                                        m.octet_string("event-reply-info"))
        case 0x0103:
            message = Get(m.u16("obj-handle"), read_list(m, "attribute-id-list", lambda x: x.u16("attribute id")))
        case 0x0203:
            message = GetResult(m.u16("obj-handle"), read_attribute_list(m))
        case 0x0104 | 0x0105:
            handle = m.u16("obj-handle")
            mods = read_list(m, "modification-list", lambda x: (x.u16("modify-operator"), read_ava(x)))
            message = Set(handle, mods, confirmed=choice == 0x0105)
        case 0x0205:
            message = SetResult(m.u16("obj-handle"), read_attribute_list(m))
        case 0x0106 | 0x0107:
            message = Action(m.u16("obj-handle"), m.u16("action-type"), m.octet_string("action-info-args"),
                             confirmed=choice == 0x0107)
        case 0x0207:
            message = ActionResult(m.u16("obj-handle"), m.u16("action-type"), m.octet_string("action-info-args"))
        case 0x0300:
            message = ErrorResult(m.u16("error-value"), m.octet_string("parameter"))
        case 0x0400:
            message = RejectResult(m.u16("problem"))
        case _:
            raise ApduError(f"unknown DATA-apdu choice 0x{choice:04X}", m.pos - 4)
    m.done(f"the {MESSAGE_NAMES[choice]} message")
    return Prst(invoke_id, message)


# ------------------------------------------------------------------------------------ encode


def encode(apdu: Apdu) -> bytes:
    """The MDER bytes of an APDU (length fields computed)."""
    match apdu:
        case Aarq():
            body = u32(apdu.assoc_version) + counted([_data_proto_bytes(p) for p in apdu.protocols])
            return _apdu(AARQ, body)
        case Aare():
            return _apdu(AARE, u16(apdu.result) + _data_proto_bytes(apdu.protocol))
        case Rlrq():
            return _apdu(RLRQ, u16(apdu.reason))
        case Rlre():
            return _apdu(RLRE, u16(apdu.reason))
        case Abrt():
            return _apdu(ABRT, u16(apdu.reason))
        case Prst():
            m = _message_bytes(apdu.message)
            data = u16(apdu.invoke_id) + u16(apdu.choice) + octet_string(m)
            return _apdu(PRST, octet_string(data))
    raise TypeError(f"not an APDU: {apdu!r}")


def _apdu(choice: int, body: bytes) -> bytes:
    if len(body) > 0xFFFF:
        raise ApduError(f"APDU body of {len(body)} bytes does not fit a 16-bit length")
    return u16(choice) + octet_string(body)


def _data_proto_bytes(p: DataProto) -> bytes:
    if isinstance(p.info, bytes):
        return u16(p.proto_id) + octet_string(p.info)
    i = p.info
    info = (u32(i.protocol_version) + u16(i.encoding_rules) + u32(i.nomenclature_version)
            + u32(i.functional_units) + u32(i.system_type) + octet_string(i.system_id) + u16(i.dev_config_id)
            + u16(i.data_req_mode_flags) + bytes([i.data_req_init_agent_count, i.data_req_init_manager_count])
            + attribute_list_bytes(i.options))
    return u16(p.proto_id) + octet_string(info)


def _message_bytes(m: Message) -> bytes:
    match m:
        case EventReport():
            return u16(m.obj_handle) + u32(m.event_time) + u16(m.event_type) + octet_string(m.info)
        case EventReportResult():
            return u16(m.obj_handle) + u32(m.current_time) + u16(m.event_type) + octet_string(m.reply_info)
        case Get():
            return u16(m.obj_handle) + counted([u16(a) for a in m.attr_ids])
        case GetResult() | SetResult():
            return u16(m.obj_handle) + attribute_list_bytes(m.attributes)
        case Set():
            return u16(m.obj_handle) + counted([u16(op) + ava_bytes(a) for op, a in m.modifications])
        case Action() | ActionResult():
            return u16(m.obj_handle) + u16(m.action_type) + octet_string(m.args)
        case ErrorResult():
            return u16(m.error_value) + octet_string(m.parameter)
        case RejectResult():
            return u16(m.problem)
    raise TypeError(f"not a DATA-apdu message: {m!r}")


# ------------------------------------------------------------------------------------ event info


@dataclass(frozen=True)
class ConfigObject:
    obj_class: int
    handle: int
    attributes: tuple[AVA, ...]

    def attribute(self, attr_id: int) -> bytes | None:
        return next((a.value for a in self.attributes if a.attr_id == attr_id), None)


@dataclass(frozen=True)
class ConfigReport:
    """ConfigReport (event-info of MDC_NOTI_CONFIG)."""

    config_id: int
    objects: tuple[ConfigObject, ...]


@dataclass(frozen=True)
class ConfigReportRsp:
    config_id: int
    result: int


@dataclass(frozen=True)
class ObservationScan:
    """One object's observation: `data` (fixed format, laid out by its Attribute-Value-Map) or
    `attributes` (variable format, self-describing); `groups` holds nothing here."""

    handle: int
    data: bytes | None = None
    attributes: tuple[AVA, ...] = ()


@dataclass(frozen=True)
class PersonScan:
    person_id: int | None
    observations: tuple[ObservationScan, ...] = ()
    grouped: tuple[bytes, ...] = ()  # ObservationScanGrouped octet strings (laid out by the scanner's handle map)


@dataclass(frozen=True)
class ScanReport:
    """Any ScanReportInfo* (fixed / var / MP / grouped): layout says which; single-person reports have
    one PersonScan with person_id None."""

    layout: str
    data_req_id: int
    scan_report_no: int
    persons: tuple[PersonScan, ...] = field(default_factory=tuple)


def decode_config_report(info: bytes) -> ConfigReport:
    r = Reader(info)
    config_id = r.u16("config-report-id")
    objects = read_list(r, "config-obj-list", lambda x: ConfigObject(
        x.u16("obj-class"), x.u16("obj-handle"), read_attribute_list(x, "object attribute list")))
    r.done("ConfigReport")
    return ConfigReport(config_id, objects)


def config_report_bytes(report: ConfigReport) -> bytes:
    return u16(report.config_id) + counted(
        [u16(o.obj_class) + u16(o.handle) + attribute_list_bytes(o.attributes) for o in report.objects])


def decode_config_report_rsp(info: bytes) -> ConfigReportRsp:
    r = Reader(info)
    rsp = ConfigReportRsp(r.u16("config-report-id"), r.u16("config-result"))
    r.done("ConfigReportRsp")
    return rsp


def config_report_rsp_bytes(rsp: ConfigReportRsp) -> bytes:
    return u16(rsp.config_id) + u16(rsp.result)


def _fixed(r: Reader) -> ObservationScan:
    return ObservationScan(r.u16("obj-handle"), data=r.octet_string("obs-val-data"))


def _var(r: Reader) -> ObservationScan:
    return ObservationScan(r.u16("obj-handle"), attributes=read_attribute_list(r, "observation attributes"))


def decode_scan_report(event_type: int, info: bytes) -> ScanReport:
    layout = nom.SCAN_LAYOUT.get(event_type)
    if layout is None:
        raise ApduError(f"event type {event_type} is not a scan report")
    r = Reader(info)
    req, no = r.u16("data-req-id"), r.u16("scan-report-no")
    match layout:
        case "fixed":
            persons = (PersonScan(None, read_list(r, "obs-scan-fixed", _fixed)),)
        case "var":
            persons = (PersonScan(None, read_list(r, "obs-scan-var", _var)),)
        case "mp-fixed":
            persons = read_list(r, "scan-per-fixed", lambda x: PersonScan(
                x.u16("person-id"), read_list(x, "obs-scan-fixed", _fixed)))
        case "mp-var":
            persons = read_list(r, "scan-per-var", lambda x: PersonScan(
                x.u16("person-id"), read_list(x, "obs-scan-var", _var)))
        case "grouped":
            persons = (PersonScan(None, grouped=read_list(r, "obs-scan-grouped", lambda x: x.octet_string("group"))),)
        case _:  # mp-grouped
            persons = read_list(r, "scan-per-grouped", lambda x: PersonScan(
                x.u16("person-id"), grouped=(x.octet_string("obs-scan-grouped"),)))
    r.done("ScanReportInfo")
    return ScanReport(layout, req, no, persons)


def scan_report_bytes(report: ScanReport) -> bytes:
    def obs(o: ObservationScan) -> bytes:
        if report.layout in ("fixed", "mp-fixed"):
            return u16(o.handle) + octet_string(o.data or b"")
        return u16(o.handle) + attribute_list_bytes(o.attributes)

    head = u16(report.data_req_id) + u16(report.scan_report_no)
    if report.layout in ("fixed", "var"):
        return head + counted([obs(o) for o in report.persons[0].observations])
    if report.layout in ("mp-fixed", "mp-var"):
        return head + counted([u16(p.person_id or 0) + counted([obs(o) for o in p.observations])
                               for p in report.persons])
    if report.layout == "grouped":
        return head + counted([octet_string(g) for g in report.persons[0].grouped])
    return head + counted([u16(p.person_id or 0) + octet_string(p.grouped[0]) for p in report.persons])


@dataclass(frozen=True)
class DataRequest:
    data_req_id: int
    mode: int
    time: int
    person_id: int
    obj_class: int
    handles: tuple[int, ...]


def decode_data_request(args: bytes) -> DataRequest:
    r = Reader(args)
    req = DataRequest(r.u16("data-req-id"), r.u16("data-req-mode"), r.u32("data-req-time"),
                      r.u16("data-req-person-id"), r.u16("data-req-class"),
                      read_list(r, "data-req-obj-handle-list", lambda x: x.u16("handle")))
    r.done("DataRequest")
    return req


@dataclass(frozen=True)
class DataResponse:
    rel_time_stamp: int
    result: int
    event_type: int
    event_info: bytes


def decode_data_response(args: bytes) -> DataResponse:
    r = Reader(args)
    rsp = DataResponse(r.u32("rel-time-stamp"), r.u16("data-req-result"), r.u16("event-type"),
                       r.octet_string("event-info"))
    r.done("DataResponse")
    return rsp


# ------------------------------------------------------------------------------------ attribute values


@dataclass(frozen=True)
class MdsTimeInfo:
    """MDS-Time-Info (20601 §6.3.2): capabilities (BITS-16, bit 0 = MSB), time-sync protocol (term in
    partition INFRA), sync accuracy (1/8 ms), resolutions (abs 1/100 s, rel 1/8 ms, hi-res µs)."""

    capabilities: int
    sync_protocol: int
    sync_accuracy: int
    resolution_abs: int
    resolution_rel: int
    resolution_hi_res: int


@dataclass(frozen=True)
class NuObsValue:
    """NuObsValue (MDC_ATTR_NU_VAL_OBS): metric id, measurement status, unit, FLOAT value."""

    metric_id: int
    status: int
    unit: int
    value: MderNumber


def _fixed_len(raw: bytes, n: int, what: str) -> Reader:
    if len(raw) != n:
        raise ApduError(f"{what} needs {n} bytes, got {len(raw)}")
    return Reader(raw)


def _numbers(r: Reader, what: str, width: int) -> tuple[MderNumber, ...]:
    dec = decode_sfloat if width == 2 else decode_float
    read = (lambda x: dec(x.u16(what))) if width == 2 else (lambda x: dec(x.u32(what)))
    return read_list(r, what, read)


def _whole(raw: bytes, what: str, parse):
    r = Reader(raw)
    value = parse(r)
    r.done(what)
    return value


def decode_attribute(attr_id: int, raw: bytes):
    """The typed value of one attribute; bytes unchanged for attributes the manager does not interpret."""
    a = nom
    match attr_id:
        case a.ATTR_NU_VAL_OBS_BASIC:
            return decode_sfloat(_fixed_len(raw, 2, "NU-Val-Obs-Basic (SFLOAT)").u16("SFLOAT"))
        case a.ATTR_NU_VAL_OBS_SIMP | a.ATTR_TIME_PD_MSMT_ACTIVE | a.ATTR_NU_ACCUR_MSMT:
            return decode_float(_fixed_len(raw, 4, f"{a.ATTRIBUTES[attr_id]} (FLOAT)").u32("FLOAT"))
        case a.ATTR_NU_CMPD_VAL_OBS_BASIC:
            return _whole(raw, "compound SFLOATs", lambda r: _numbers(r, "SFLOAT", 2))
        case a.ATTR_NU_CMPD_VAL_OBS_SIMP:
            return _whole(raw, "compound FLOATs", lambda r: _numbers(r, "FLOAT", 4))
        case a.ATTR_NU_VAL_OBS:
            return _whole(raw, "NuObsValue", lambda r: NuObsValue(r.u16("metric-id"), r.u16("state"),
                                                                  r.u16("unit-code"), decode_float(r.u32("value"))))
        case a.ATTR_NU_CMPD_VAL_OBS:
            return _whole(raw, "NuObsValueCmp", lambda r: read_list(r, "NuObsValueCmp", lambda x: NuObsValue(
                x.u16("metric-id"), x.u16("state"), x.u16("unit-code"), decode_float(x.u32("value")))))
        case a.ATTR_TIME_STAMP_ABS:
            return decode_absolute_time(raw, date=True)
        case a.ATTR_TIME_ABS:
            return decode_absolute_time(raw)
        case a.ATTR_TIME_STAMP_BO | a.ATTR_TIME_BO:
            return decode_base_offset_time(raw)
        case a.ATTR_TIME_STAMP_REL | a.ATTR_TIME_REL:
            return _fixed_len(raw, 4, "RelativeTime").u32("RelativeTime")
        case a.ATTR_TIME_STAMP_REL_HI_RES | a.ATTR_TIME_REL_HI_RES:
            return int.from_bytes(_fixed_len(raw, 8, "HighResRelativeTime").take(8, "ticks"), "big")
        case a.ATTR_ID_TYPE:
            r = _fixed_len(raw, 4, "TYPE")
            return nom.code32(r.u16("partition"), r.u16("term"))
        case (a.ATTR_UNIT_CODE | a.ATTR_METRIC_SPEC_SMALL | a.ATTR_DEV_CONFIG_ID | a.ATTR_MSMT_STAT
              | a.ATTR_ENUM_OBS_VAL_SIMP_OID | a.ATTR_ENUM_OBS_VAL_BASIC_BIT_STR | a.ATTR_SOURCE_HANDLE_REF
              | a.ATTR_OP_STAT | a.ATTR_POWER_STAT | a.ATTR_ID_HANDLE):
            return _fixed_len(raw, 2, a.ATTRIBUTES[attr_id]).u16("value")
        case a.ATTR_ENUM_OBS_VAL_SIMP_BIT_STR:
            return _fixed_len(raw, 4, "BITS-32").u32("value")
        case a.ATTR_ATTRIBUTE_VAL_MAP:
            return _whole(raw, "AttrValMap", lambda r: read_list(
                r, "AttrValMap", lambda x: (x.u16("attribute-id"), x.u16("attribute-len"))))
        case a.ATTR_SCAN_HANDLE_ATTR_VAL_MAP:
            return _whole(raw, "HandleAttrValMap", lambda r: read_list(r, "HandleAttrValMap", lambda x: (
                x.u16("obj-handle"), read_list(x, "AttrValMap", lambda y: (y.u16("attribute-id"), y.u16("attribute-len"))))))
        case a.ATTR_METRIC_STRUCT_SMALL:
            r = _fixed_len(raw, 2, "MetricStructureSmall")
            return r.u8("ms-struct"), r.u8("ms-comp-no")
        case a.ATTR_ID_PHYSIO_LIST:
            return _whole(raw, "MetricIdList", lambda r: read_list(r, "MetricIdList", lambda x: x.u16("OID")))
        case a.ATTR_SUPPLEMENTAL_TYPES:
            return _whole(raw, "SupplementalTypeList", lambda r: read_list(
                r, "SupplementalTypeList", lambda x: nom.code32(x.u16("partition"), x.u16("term"))))
        case a.ATTR_SYS_ID:
            return _whole(raw, "System-Id", lambda r: r.octet_string("System-Id"))
        case a.ATTR_ID_MODEL:
            return _whole(raw, "SystemModel", lambda r: (r.octet_string("manufacturer"), r.octet_string("model-number")))
        case a.ATTR_ID_PROD_SPECN:
            return _whole(raw, "ProductionSpec", lambda r: read_list(r, "ProductionSpec", lambda x: (
                x.u16("spec-type"), x.u16("component-id"), x.octet_string("prod-spec"))))
        case a.ATTR_SYS_TYPE_SPEC_LIST:
            return _whole(raw, "TypeVerList", lambda r: read_list(
                r, "TypeVerList", lambda x: (x.u16("type"), x.u16("version"))))
        case a.ATTR_MDS_TIME_INFO:
            return _whole(raw, "MdsTimeInfo", lambda r: MdsTimeInfo(
                r.u16("mds-time-cap-state"), r.u16("time-sync-protocol"), r.u32("time-sync-accuracy"),
                r.u16("time-resolution-abs-time"), r.u16("time-resolution-rel-time"),
                r.u32("time-resolution-high-res-time")))
        case a.ATTR_VAL_BATT_CHARGE:
            return _fixed_len(raw, 2, "battery charge").u16("value")
    return raw


def _mapped_values(r: Reader, value_map: Sequence[tuple[int, int]], what: str) -> list[tuple[int, object]]:
    return [(attr_id, decode_attribute(attr_id, r.take(length, f"attribute {attr_id} of {what}")))
            for attr_id, length in value_map]


def decode_fixed_values(data: bytes, value_map: Sequence[tuple[int, int]]) -> list[tuple[int, object]]:
    """Split a fixed-format observation by its Attribute-Value-Map and decode each attribute."""
    r = Reader(data)
    out = _mapped_values(r, value_map, "a fixed report")
    r.done("the fixed-format observation (its length disagrees with the Attribute-Value-Map)")
    return out


HandleAttrValMap = Sequence[tuple[int, Sequence[tuple[int, int]]]]


def decode_grouped_values(group: bytes, handle_map: HandleAttrValMap) -> list[tuple[int, list[tuple[int, object]]]]:
    """Split one ObservationScanGrouped (20601 Annex A: an OCTET STRING with no handles or attribute ids)
    by the scanner's Scan-Handle-Attr-Val-Map: for each entry in order, that object's attribute values in
    its AttrValMap order, back to back. Returns (handle, [(attribute id, value)]) per entry; the group must
    be exactly as long as the map says."""
    r = Reader(group)
    out = [(handle, _mapped_values(r, vmap, f"object {handle} in a grouped report")) for handle, vmap in handle_map]
    r.done("the grouped observation (its length disagrees with the scanner's Scan-Handle-Attr-Val-Map)")
    return out


def handle_attr_val_map_bytes(handle_map: HandleAttrValMap) -> bytes:
    return counted([u16(h) + counted([u16(a) + u16(n) for a, n in vmap]) for h, vmap in handle_map])
