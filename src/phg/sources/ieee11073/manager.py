"""The IEEE 11073-20601 manager state machine, sans I/O (20601 §8, Figure 8-x manager state table).

Bytes in, events out, bytes to send:

    manager = Manager(system_id=bytes.fromhex("02AB7FFFFE00C1C1"))
    events = manager.receive_data(chunk, now=time.monotonic())   # any chunking; APDUs framed by their header
    transport.write(manager.data_to_send())
    ...
    manager.acknowledge(measurements)    # after the readings are durable: the confirmed-event-report response
    events += manager.tick(now)          # timeouts; `manager.deadline` says when the next one is due

States: unassociated -> (AARQ, known configuration) operating, or (unknown) configuring -> (configuration
accepted) operating -> (RLRQ from the agent, or `release()`) disassociating/unassociated. In operating the
manager reads the MDS attributes once (GET on handle 0) and turns scan reports into Measurements; reports
that arrive before the GET answer are held until it arrives. Anything malformed, unexpected in the current
state, or late ends in an ABRT and an `Aborted` event with the reason; nothing raises out of the machine.
The clock is the caller's: every entry point takes `now` (seconds, monotonic).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from phg import metrics
from phg.sources.ieee11073 import nomenclature as nom
from phg.sources.ieee11073.apdu import (
    ABORT_CONFIGURATION_TIMEOUT,
    ABORT_RESPONSE_TIMEOUT,
    ABORT_UNDEFINED,
    ACCEPTED,
    ACCEPTED_CONFIG,
    ACCEPTED_UNKNOWN_CONFIG,
    AVA,
    DATA_PROTO_ID_20601,
    MDER,
    REJECTED_NO_COMMON_PARAMETER,
    REJECTED_NO_COMMON_PROTOCOL,
    REJECTED_UNSUPPORTED_ASSOC_VERSION,
    SYS_TYPE_AGENT,
    SYS_TYPE_MANAGER,
    UNSUPPORTED_CONFIG,
    Aare,
    Aarq,
    Abrt,
    Action,
    ApduError,
    ConfigReportRsp,
    DataProto,
    ErrorResult,
    EventReport,
    EventReportResult,
    Get,
    GetResult,
    MdsTimeInfo,
    PhdAssociationInformation,
    Prst,
    RejectResult,
    Rlre,
    Rlrq,
    Set,
    config_report_rsp_bytes,
    decode,
    decode_attribute,
    decode_config_report,
    decode_fixed_values,
    decode_grouped_values,
    decode_scan_report,
    encode,
)
from phg.sources.ieee11073.configs import ConfigStore, Configuration, MemoryConfigStore, standard
from phg.sources.ieee11073.mder import AbsoluteTime, BaseOffsetTime, MderNumber

A = nom


class State(enum.Enum):
    UNASSOCIATED = "unassociated"
    ASSOCIATING = "associating"  # only while a manager-initiated association would wait (not used by agents)
    CONFIGURING = "configuring"
    OPERATING = "operating"
    DISASSOCIATING = "disassociating"


@dataclass(frozen=True)
class Timeouts:
    """20601 §8 timers (seconds): TO_config 10 s, response to a GET/confirmed request 3 s (TO_get,
    TO_confirmed-action), TO_release 3 s; `association` is TO_assoc (10 s), which the transports apply to
    a connection on which no AARQ arrives; `partial` bounds how long a started but incomplete APDU may wait
    for its remaining bytes."""

    association: float = 10.0
    configuration: float = 10.0
    response: float = 3.0
    release: float = 3.0
    partial: float = 5.0


# ------------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class Associated:
    system_id: str  # EUI-64, hex upper case
    config_id: int
    known_configuration: bool


@dataclass(frozen=True)
class Configured:
    system_id: str
    configuration: Configuration


@dataclass(frozen=True)
class MdsInfo:
    """What the MDS told about itself (GET on handle 0)."""

    system_id: str
    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None
    production: tuple[tuple[int, str], ...] = ()  # (ProdSpecEntry spec-type, text)
    specializations: tuple[tuple[int, int], ...] = ()  # (profile term, version)
    config_id: int | None = None
    time_abs: AbsoluteTime | None = None
    time_rel: int | None = None  # RelativeTime ticks (1/8 ms) when read
    time_hi_res: int | None = None  # µs
    time_bo: BaseOffsetTime | None = None
    time_info: MdsTimeInfo | None = None


@dataclass(frozen=True)
class DeviceAttributes:
    mds: MdsInfo


@dataclass(frozen=True)
class Observation:
    """One object's measured values from a scan report, typed but not yet a Reading."""

    handle: int
    type: int | None  # 32-bit MDC code
    unit: int | None  # unit term (partition DIM)
    person_id: int | None = None
    value: MderNumber | None = None
    components: tuple[tuple[int, MderNumber], ...] = ()  # (32-bit code, value) for compound numerics
    enum_value: int | None = None  # ENUM OID term (its partition is the type's) / bit string as sent
    enum_length: int = 0  # 0: enum_value is an OID; 16 / 32: a BITs value (Basic-Bit-Str / Simple-Bit-Str)
    status: int = 0  # MeasurementStatus bits
    time: AbsoluteTime | BaseOffsetTime | tuple[str, int] | None = None  # ("rel", ticks) / ("hi-res", µs)
    supplemental: tuple[int, ...] = ()
    group: int | None = None  # grouped reports: index of the ObservationScanGrouped (one scan) it came from


@dataclass(frozen=True)
class Measurements:
    """A scan report turned into observations. If `needs_ack`, call `Manager.acknowledge(this)` once the
    readings are durable; the agent is told only then (durable before acknowledged)."""

    invoke_id: int
    report: EventReport
    observations: tuple[Observation, ...]
    mds: MdsInfo
    configuration: Configuration
    needs_ack: bool


@dataclass(frozen=True)
class Released:
    by: str  # "agent" or "manager"


@dataclass(frozen=True)
class Aborted:
    reason: str
    by: str  # "agent" or "manager"


Event = Associated | Configured | DeviceAttributes | Measurements | Released | Aborted


class _Abort(Exception):
    def __init__(self, reason: str, code: int = ABORT_UNDEFINED):
        self.reason, self.code = reason, code


# ------------------------------------------------------------------------------------ manager


@dataclass
class Manager:
    system_id: bytes = bytes.fromhex("0000000000000001")  # the manager's own EUI-64 (goes into the AARE)
    store: ConfigStore = field(default_factory=MemoryConfigStore)
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        self.state = State.UNASSOCIATED
        self._buffer = bytearray()
        self._partial_since: float | None = None
        self._out = bytearray()
        self._deadline: tuple[float, str, int] | None = None
        self._invoke = 0
        self._get_invoke: int | None = None
        self._held: list[tuple[int, EventReport]] = []
        self.agent_id: str | None = None
        self.config_id: int | None = None
        self.configuration: Configuration | None = None
        self.mds: MdsInfo | None = None

    # ---- public interface

    @property
    def deadline(self) -> float | None:
        """When `tick` must next be called (monotonic seconds), or None when nothing is timed."""
        times = [t for t in (self._deadline and self._deadline[0], self._partial_deadline) if t is not None]
        return min(times) if times else None

    def data_to_send(self) -> bytes:
        data, self._out = bytes(self._out), bytearray()
        return data

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the transport (any chunking); returns the events they complete."""
        events: list[Event] = []
        self._buffer += data
        while True:
            if len(self._buffer) >= 2 and (not 0xE2 <= self._buffer[0] <= 0xE7 or self._buffer[1]):
                events += self._abort(f"not an APDU: starts with 0x{bytes(self._buffer[:2]).hex().upper()}",
                                      ABORT_UNDEFINED)
                self._buffer.clear()
                break
            if len(self._buffer) < 4:
                break
            size = 4 + int.from_bytes(self._buffer[2:4], "big")
            if len(self._buffer) < size:
                break
            raw, self._buffer = bytes(self._buffer[:size]), self._buffer[size:]
            events += self._handle_bytes(raw, now)
        self._partial_since = (self._partial_since or now) if self._buffer else None
        return events

    def tick(self, now: float) -> list[Event]:
        """Fire due timeouts."""
        if self._partial_deadline is not None and now >= self._partial_deadline:
            self._buffer.clear()
            self._partial_since = None
            return self._abort("incomplete APDU: its remaining bytes never came", ABORT_UNDEFINED)
        if self._deadline and now >= self._deadline[0]:
            _, what, code = self._deadline
            return self._abort(f"timeout: {what}", code)
        return []

    def acknowledge(self, m: Measurements) -> None:
        """Queue the rors-cmip-confirmed-event-report for a confirmed report (no-op if the association
        ended meanwhile: the agent then keeps the data and sends it again)."""
        if m.needs_ack and self.state is State.OPERATING:
            rsp = EventReportResult(m.report.obj_handle, 0, m.report.event_type, b"")
            self._send(Prst(m.invoke_id, rsp))

    def release(self, now: float) -> None:
        """Ask the agent to release the association (RLRQ normal)."""
        if self.state in (State.OPERATING, State.CONFIGURING):
            self._send(Rlrq(0))
            self.state = State.DISASSOCIATING
            self._deadline = (now + self.timeouts.release, "no release response (RLRE)", ABORT_RESPONSE_TIMEOUT)

    def abort(self, reason: str) -> list[Event]:
        return self._abort(reason, ABORT_UNDEFINED)

    # ---- internals

    @property
    def _partial_deadline(self) -> float | None:
        return None if self._partial_since is None else self._partial_since + self.timeouts.partial

    def _send(self, apdu) -> None:
        self._out += encode(apdu)

    def _abort(self, reason: str, code: int) -> list[Event]:
        was = self.state
        self._send(Abrt(code))
        self._reset()
        return [Aborted(reason if was is not State.UNASSOCIATED else f"{reason} (while unassociated)", "manager")]

    def _reset(self) -> None:
        self.state = State.UNASSOCIATED
        self._deadline = None
        self._get_invoke = None
        self._held = []
        self.configuration = None
        self.mds = None

    def _handle_bytes(self, raw: bytes, now: float) -> list[Event]:
        try:
            apdu = decode(raw)
        except ApduError as exc:
            metrics.DECODE_ERRORS.labels("11073").inc()
            return self._abort(f"malformed APDU: {exc}", ABORT_UNDEFINED)
        try:
            return self._handle(apdu, now)
        except _Abort as exc:
            return self._abort(exc.reason, exc.code)
        except ApduError as exc:
            metrics.DECODE_ERRORS.labels("11073").inc()
            return self._abort(f"malformed {type(apdu).__name__.upper()} content: {exc}", ABORT_UNDEFINED)

    def _handle(self, apdu, now: float) -> list[Event]:
        if isinstance(apdu, Abrt):
            was = self.state
            self._reset()
            return [] if was is State.UNASSOCIATED else [Aborted(f"agent aborted (reason {apdu.reason})", "agent")]
        match self.state:
            case State.UNASSOCIATED:
                if isinstance(apdu, Aarq):
                    return self._associate(apdu, now)
                raise _Abort(f"{type(apdu).__name__.upper()} received while unassociated")
            case State.DISASSOCIATING:
                if isinstance(apdu, Rlre):
                    self._reset()
                    return [Released("manager")]
                if isinstance(apdu, Rlrq):
                    self._send(Rlre(0))
                    self._reset()
                    return [Released("agent")]
                if isinstance(apdu, Prst):
                    return []  # 20601: data received while disassociating is dropped
                raise _Abort(f"{type(apdu).__name__.upper()} received while disassociating")
        # configuring / operating
        if isinstance(apdu, Rlrq):
            self._send(Rlre(0))
            self._reset()
            return [Released("agent")]
        if not isinstance(apdu, Prst):
            raise _Abort(f"{type(apdu).__name__.upper()} received while {self.state.value}")
        if self.state is State.CONFIGURING:
            return self._configuring(apdu, now)
        return self._operating(apdu, now)

    def _associate(self, aarq: Aarq, now: float) -> list[Event]:
        proto = next((p for p in aarq.protocols if p.proto_id == DATA_PROTO_ID_20601), None)
        result = None
        if proto is None or isinstance(proto.info, bytes):
            result = REJECTED_NO_COMMON_PROTOCOL
        elif not aarq.assoc_version & 0x80000000:
            result = REJECTED_UNSUPPORTED_ASSOC_VERSION
        else:
            info = proto.info
            if (not info.protocol_version & 0x80000000 or not info.encoding_rules & MDER
                    or not info.nomenclature_version & 0x80000000 or not info.system_type & SYS_TYPE_AGENT
                    or len(info.system_id) != 8):
                result = REJECTED_NO_COMMON_PARAMETER
        if result is not None:
            self._send(Aare(result, DataProto(DATA_PROTO_ID_20601, self._own_info())))
            return [Aborted(f"association rejected ({result})", "manager")]
        info = proto.info
        assert isinstance(info, PhdAssociationInformation)
        self.agent_id = info.system_id.hex().upper()
        self.config_id = info.dev_config_id
        config = standard(info.dev_config_id) or self.store.get(self.agent_id, info.dev_config_id)
        known = config is not None
        self._send(Aare(ACCEPTED if known else ACCEPTED_UNKNOWN_CONFIG, DataProto(DATA_PROTO_ID_20601, self._own_info())))
        events: list[Event] = [Associated(self.agent_id, info.dev_config_id, known)]
        if known:
            self.configuration = config
            self._start_operating(now)
        else:
            self.state = State.CONFIGURING
            self._deadline = (now + self.timeouts.configuration, "no configuration report from the agent",
                              ABORT_CONFIGURATION_TIMEOUT)
        return events

    def _own_info(self) -> PhdAssociationInformation:
        return PhdAssociationInformation(system_type=SYS_TYPE_MANAGER, system_id=self.system_id)

    def _next_invoke(self) -> int:
        self._invoke = (self._invoke + 1) & 0xFFFF
        return self._invoke

    def _start_operating(self, now: float) -> None:
        self.state = State.OPERATING
        self._get_invoke = self._next_invoke()
        self._send(Prst(self._get_invoke, Get(0, ())))
        self._deadline = (now + self.timeouts.response, "no answer to the MDS attribute GET", ABORT_RESPONSE_TIMEOUT)

    def _configuring(self, prst: Prst, now: float) -> list[Event]:
        m = prst.message
        if not (isinstance(m, EventReport) and m.event_type == A.NOTI_CONFIG and m.obj_handle == 0):
            raise _Abort(f"{type(m).__name__} before the configuration was agreed")
        if not m.confirmed:
            raise _Abort("configuration report must be confirmed")
        report = decode_config_report(m.info)
        try:
            config = Configuration.from_report(report)
        except ApduError:
            config = None
        if config is None or report.config_id != self.config_id or not 0 < report.config_id < 0x8000:
            rsp = ConfigReportRsp(report.config_id, UNSUPPORTED_CONFIG)
            self._send(Prst(prst.invoke_id, EventReportResult(0, 0, A.NOTI_CONFIG, config_report_rsp_bytes(rsp))))
            self._deadline = (now + self.timeouts.configuration, "no acceptable configuration report",
                              ABORT_CONFIGURATION_TIMEOUT)
            return []
        rsp = ConfigReportRsp(report.config_id, ACCEPTED_CONFIG)
        self._send(Prst(prst.invoke_id, EventReportResult(0, 0, A.NOTI_CONFIG, config_report_rsp_bytes(rsp))))
        assert self.agent_id is not None
        self.store.put(self.agent_id, config)
        self.configuration = config
        self._start_operating(now)
        return [Configured(self.agent_id, config)]

    def _operating(self, prst: Prst, now: float) -> list[Event]:
        m = prst.message
        match m:
            case GetResult() if prst.invoke_id == self._get_invoke:
                self.mds = self._mds_info(m.attributes)
                return [DeviceAttributes(self.mds), *self._flush()]
            case ErrorResult() | RejectResult() if prst.invoke_id == self._get_invoke:
                self.mds = MdsInfo(self.agent_id or "")
                return [DeviceAttributes(self.mds), *self._flush()]
            case EventReport() if m.event_type in A.SCAN_LAYOUT:
                if self._get_invoke is not None:
                    if len(self._held) >= 64:
                        raise _Abort("too many reports before the MDS attributes arrived")
                    self._held.append((prst.invoke_id, m))
                    return []
                return [self._measurements(prst.invoke_id, m)]
            case EventReport() if m.event_type == A.NOTI_CONFIG:
                raise _Abort("configuration report while operating")
            case EventReport():
                raise _Abort(f"unsupported event type {m.event_type}")
            case Get() | Set() | Action():
                if getattr(m, "confirmed", True):  # the manager has no object model to offer: no-such-object-instance
                    self._send(Prst(prst.invoke_id, ErrorResult(1, b"")))
                return []
        raise _Abort(f"unexpected {type(m).__name__} (invoke id {prst.invoke_id})")

    def _flush(self) -> list[Event]:
        self._get_invoke = None
        self._deadline = None
        held, self._held = self._held, []
        return [self._measurements(i, r) for i, r in held]

    def _mds_info(self, attributes: tuple[AVA, ...]) -> MdsInfo:
        values: dict[int, Any] = {a.attr_id: decode_attribute(a.attr_id, a.value) for a in attributes}
        model = values.get(A.ATTR_ID_MODEL)
        prod = tuple((t, _text(s)) for t, _c, s in values.get(A.ATTR_ID_PROD_SPECN, ()))
        by_type = dict(prod)
        sys_id = values.get(A.ATTR_SYS_ID)
        return MdsInfo(
            system_id=sys_id.hex().upper() if isinstance(sys_id, bytes) and len(sys_id) == 8 else (self.agent_id or ""),
            manufacturer=_text(model[0]) if model else None,
            model=_text(model[1]) if model else None,
            serial=by_type.get(1),
            firmware=by_type.get(5) or by_type.get(4),
            production=prod,
            specializations=tuple(values.get(A.ATTR_SYS_TYPE_SPEC_LIST, ())),
            config_id=values.get(A.ATTR_DEV_CONFIG_ID),
            time_abs=values.get(A.ATTR_TIME_ABS),
            time_rel=values.get(A.ATTR_TIME_REL),
            time_hi_res=values.get(A.ATTR_TIME_REL_HI_RES),
            time_bo=values.get(A.ATTR_TIME_BO),
            time_info=values.get(A.ATTR_MDS_TIME_INFO),
        )

    def _measurements(self, invoke_id: int, report: EventReport) -> Measurements:
        config = self.configuration
        assert config is not None
        try:
            observations = scan_observations(config, report)
        except NotInConfiguration as exc:
            raise _Abort(exc.reason) from None
        return Measurements(invoke_id, report, observations, self.mds or MdsInfo(self.agent_id or ""), config,
                            report.confirmed)


class NotInConfiguration(ApduError):
    """A scan report that names an object its configuration does not have (or no scanner for a grouped one)."""


def scan_observations(config: Configuration, report: EventReport) -> tuple[Observation, ...]:
    """The observations of a scan report (any SCAN_LAYOUT event type), typed by its configuration. Raises
    NotInConfiguration, or ApduError when values do not fit the configuration's Attribute-Value-Maps."""
    scan = decode_scan_report(report.event_type, report.info)
    observations: list[Observation] = []
    scans = 0  # grouped: every ObservationScanGrouped in the report is one scan (MP: one per person entry)
    for person in scan.persons:
        if person.grouped:
            observations += _grouped(config, report.obj_handle, person.person_id, person.grouped, scans)
            scans += len(person.grouped)
        for o in person.observations:
            obj = config.objects.get(o.handle)
            if obj is None:
                raise NotInConfiguration(f"scan report names object {o.handle}, absent from configuration "
                                         f"{config.config_id:#06x}")
            if o.data is not None:
                values = decode_fixed_values(o.data, obj.value_map)
            else:
                values = [(a.attr_id, decode_attribute(a.attr_id, a.value)) for a in o.attributes]
            observations.append(_observation(obj, person.person_id, values))
    return tuple(observations)


def _grouped(config: Configuration, scanner_handle: int, person_id: int | None,
             groups: tuple[bytes, ...], first: int = 0) -> list[Observation]:
    """Grouped scan reports (ScanReportInfoGrouped / ScanReportInfoMPGrouped, 20601 Annex A) come from a
    scanner object (the event report's obj-handle) and carry bare values: each ObservationScanGrouped is one
    scan, laid out by that scanner's Scan-Handle-Attr-Val-Map (20601 §6.3.9, signove/antidote
    src/dim/cfg_scanner.c). One Observation per map entry per group; `group` keeps the scans apart."""
    scanner = config.objects.get(scanner_handle)
    if scanner is None or not scanner.handle_map:
        raise NotInConfiguration(f"grouped scan report from object {scanner_handle}, which is no scanner with a "
                                 f"Scan-Handle-Attr-Val-Map in configuration {config.config_id:#06x}")
    return [_observation(config.objects[handle], person_id, values, group=i)
            for i, group in enumerate(groups, first)
            for handle, values in decode_grouped_values(group, scanner.handle_map)]


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace").rstrip("\x00 ")


def _observation(obj, person_id: int | None, values: list[tuple[int, Any]], group: int | None = None) -> Observation:
    kw: dict[str, Any] = {"handle": obj.handle, "type": obj.type, "unit": obj.unit, "person_id": person_id,
                          "supplemental": obj.supplemental, "group": group}
    for attr, v in values:
        match attr:
            case A.ATTR_NU_VAL_OBS_BASIC | A.ATTR_NU_VAL_OBS_SIMP:
                kw["value"] = v
            case A.ATTR_NU_CMPD_VAL_OBS_BASIC | A.ATTR_NU_CMPD_VAL_OBS_SIMP:
                codes = obj.components or tuple(range(len(v)))
                kw["components"] = tuple(zip(codes, v, strict=False))
            case A.ATTR_NU_VAL_OBS:
                kw.update(value=v.value, status=v.status, unit=v.unit)
            case A.ATTR_TIME_STAMP_ABS | A.ATTR_TIME_STAMP_BO:
                kw["time"] = v
            case A.ATTR_TIME_STAMP_REL:
                kw["time"] = ("rel", v)
            case A.ATTR_TIME_STAMP_REL_HI_RES:
                kw["time"] = ("hi-res", v)
            case A.ATTR_MSMT_STAT:
                kw["status"] = v
            case A.ATTR_ID_TYPE:
                kw["type"] = v
            case A.ATTR_UNIT_CODE:
                kw["unit"] = v
            case A.ATTR_ENUM_OBS_VAL_SIMP_OID:
                kw["enum_value"] = v
            case A.ATTR_ENUM_OBS_VAL_SIMP_BIT_STR:
                kw.update(enum_value=v, enum_length=32)
            case A.ATTR_ENUM_OBS_VAL_BASIC_BIT_STR:
                kw.update(enum_value=v, enum_length=16)
            case A.ATTR_SUPPLEMENTAL_TYPES:
                kw["supplemental"] = v
    return Observation(**kw)
