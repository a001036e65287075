"""An IEEE 11073-20601 agent emulator for the tests: the five standard device types, built with phg's
own APDU encoder but from the agent's side (AARQ, configuration report, MDS GET answer, fixed scan
reports, RLRQ), and an asyncio session runner that plays them against a manager over TCP.

`Agent("pulse_oximeter", grouped="abs" | "bo" | "rel")` is a pulse oximeter with a periodic scanner
(extended configuration, like signove/antidote tests/resources/apdu/pulse_oximeter/*_with_scanner): it
sends MDC_NOTI_BUF_SCAN_REPORT_GROUPED reports of GROUP_SCANS scans each, time-stamped with Absolute-Time,
Base-Offset-Time or Relative-Time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from phg.sources.ieee11073 import nomenclature as nom
from phg.sources.ieee11073.apdu import (
    AVA,
    SYS_TYPE_AGENT,
    Aarq,
    Abrt,
    ConfigObject,
    ConfigReport,
    DataProto,
    EventReport,
    GetResult,
    PhdAssociationInformation,
    Prst,
    Rlrq,
    config_report_bytes,
    decode,
    encode,
    handle_attr_val_map_bytes,
)
from phg.sources.ieee11073.configs import STANDARD
from phg.sources.ieee11073.mder import (
    BO_EPOCH,
    TICKS_PER_SECOND,
    AbsoluteTime,
    BaseOffsetTime,
    counted,
    number,
    octet_string,
    u16,
    u32,
)


@dataclass(frozen=True)
class Kind:
    config_id: int
    system_id: str
    model: str
    values: tuple[tuple[int, bytes], ...]  # (handle, encoded value) in one fixed report


def _sfloat(v: str) -> bytes:
    return number(Decimal(v), 2).encode()


def _float(v: str) -> bytes:
    return number(Decimal(v), 4).encode()


KINDS = {
    "pulse_oximeter": Kind(0x0190, "0A1B2C3D4E5F7005", "Emu Oximeter", ((1, _sfloat("98")), (10, _sfloat("72")))),
    "blood_pressure": Kind(0x02BC, "0A1B2C3D4E5F7002", "Emu BP Cuff", (
        (1, u16(3) + u16(6) + _sfloat("120") + _sfloat("80") + _sfloat("100")), (2, _sfloat("60.0")))),
    "thermometer": Kind(0x0320, "0A1B2C3D4E5F7004", "Emu Thermometer", ((1, _sfloat("36.8")),)),
    "scale": Kind(0x05DC, "0A1B2C3D4E5F7003", "Emu Scale", ((1, _float("76.20")),)),
    "glucose": Kind(0x06A4, "0A1B2C3D4E5F7001", "Emu Glucose", ((1, _sfloat("105")),)),
}
# what the manager must turn those into: (MDC code, value, UCUM unit, components)
EXPECTED = {
    "pulse_oximeter": [(150456, "98", "%"), (149530, "72", "/min")],
    "blood_pressure": [(150020, None, "mm[Hg]", ((150021, "120"), (150022, "80"), (150023, "100"))),
                       (149546, "60.0", "/min")],
    "thermometer": [(150364, "36.8", "Cel")],
    "scale": [(188736, "76.20", "kg")],
    "glucose": [(160184, "105", "mg/dL")],
}


# grouped reports: the periodic scanner and its Scan-Handle-Attr-Val-Map (SpO2 handle 1 with its
# Measurement-Status, pulse rate handle 10), each with a time stamp of the agent's chosen kind
SCANNER_HANDLE = 40
GROUP_SCANS = 2  # scans per grouped report, GROUP_PERIOD_S apart
GROUP_PERIOD_S = 1
TIME_STAMPS = {"abs": (nom.ATTR_TIME_STAMP_ABS, 8), "bo": (nom.ATTR_TIME_STAMP_BO, 8), "rel": (nom.ATTR_TIME_STAMP_REL, 4)}
BO_OFFSET_MIN = 60  # the agent's Base-Offset-Time offset: its clock is UTC+01:00
REL_AT_GET = 0x10000000  # the agent's Relative-Time when it answers the MDS GET (= its `clock`)


def scanner_map(stamp: str) -> tuple:
    ts = TIME_STAMPS[stamp]
    return ((1, ((nom.ATTR_NU_VAL_OBS_BASIC, 2), (nom.ATTR_MSMT_STAT, 2), ts)),
            (10, ((nom.ATTR_NU_VAL_OBS_BASIC, 2), ts)))


@dataclass
class Agent:
    kind_name: str
    extended: bool = False  # report the standard objects under an extended configuration id (0x4000+)
    system_id: str | None = None
    grouped: str | None = None  # "abs" / "bo" / "rel": a pulse oximeter with a periodic scanner, grouped reports
    extended_id: int | None = None  # this extended configuration id instead of the kind's (implies extended)
    extra_objects: int = 0  # copies of the kind's objects (new handles) in the configuration report
    clock: datetime = datetime(2026, 11, 28, 9, 0, 0)
    invoke: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def kind(self) -> Kind:
        return KINDS[self.kind_name]

    @property
    def config_id(self) -> int:
        if self.grouped:
            return 0x4100 + list(TIME_STAMPS).index(self.grouped)
        if self.extended_id is not None:
            return self.extended_id
        return 0x4000 + list(KINDS).index(self.kind_name) if self.extended else self.kind.config_id

    @property
    def sys_id(self) -> bytes:
        return bytes.fromhex(self.system_id or self.kind.system_id)

    def next_invoke(self) -> int:
        self.invoke = (self.invoke + 1) & 0xFFFF
        return self.invoke

    def aarq(self) -> bytes:
        info = PhdAssociationInformation(functional_units=0, system_type=SYS_TYPE_AGENT, system_id=self.sys_id,
                                         dev_config_id=self.config_id, data_req_mode_flags=0x0001,
                                         data_req_init_agent_count=1)
        return encode(Aarq(0x80000000, (DataProto(20601, info),)))

    def config_report(self) -> bytes:
        profile, std = STANDARD[self.kind.config_id]
        objects = std.objects
        if self.grouped:
            objects += (ConfigObject(19, SCANNER_HANDLE, (  # MDC_MOC_SCAN_CFG_PERI
                AVA(nom.ATTR_OP_STAT, u16(0)),
                AVA(nom.ATTR_SCAN_REP_PD_MIN, u32(GROUP_PERIOD_S * GROUP_SCANS * TICKS_PER_SECOND)),
                AVA(nom.ATTR_CONFIRM_MODE, u16(1)),  # confirmed, so that the session sees acknowledgements
                AVA(nom.ATTR_SCAN_HANDLE_ATTR_VAL_MAP, handle_attr_val_map_bytes(scanner_map(self.grouped))),
            )),)
        objects += tuple(ConfigObject(o.obj_class, o.handle + 100 * k, o.attributes)
                         for k in range(1, self.extra_objects + 1) for o in std.objects)
        report = ConfigReport(self.config_id, objects)
        return encode(Prst(self.next_invoke(), EventReport(0, 0xFFFFFFFF, nom.NOTI_CONFIG, config_report_bytes(report))))

    def get_response(self, invoke_id: int) -> bytes:
        profile = STANDARD[self.kind.config_id][0]
        attrs = (
            AVA(nom.ATTR_SYS_TYPE_SPEC_LIST, counted([u16(profile) + u16(1)])),
            AVA(nom.ATTR_ID_MODEL, octet_string(b"Emulated Devices Inc") + octet_string(self.kind.model.encode())),
            AVA(nom.ATTR_SYS_ID, octet_string(self.sys_id)),
            AVA(nom.ATTR_DEV_CONFIG_ID, u16(self.config_id)),
            AVA(nom.ATTR_ID_PROD_SPECN, counted([u16(1) + u16(0) + octet_string(b"SN-" + self.sys_id.hex()[-4:].encode()),
                                                 u16(5) + u16(0) + octet_string(b"2.1.0")])),
            AVA(nom.ATTR_TIME_ABS, AbsoluteTime.from_datetime(self.clock).raw),
            AVA(nom.ATTR_MDS_TIME_INFO, u16(0x8000) + u16(nom.TIME_SYNC_BASE) + u32(0) + u16(100) + u16(0) + u32(0)),
        )
        if self.grouped == "rel":
            attrs += (AVA(nom.ATTR_TIME_REL, u32(REL_AT_GET)),)
        if self.grouped == "bo":
            attrs += (AVA(nom.ATTR_TIME_BO, self.stamp(timedelta(0))),)
        return encode(Prst(invoke_id, GetResult(0, attrs)))

    def stamp(self, after: timedelta) -> bytes:
        """The agent's time stamp (of its `grouped` kind, Absolute-Time otherwise) `after` its clock."""
        local = self.clock + after
        if self.grouped == "bo":  # the clock shows UTC+01:00 wall time
            utc = local.replace(tzinfo=BO_EPOCH.tzinfo) - timedelta(minutes=BO_OFFSET_MIN)
            seconds, micro = divmod((utc - BO_EPOCH) // timedelta(microseconds=1), 1_000_000)
            return BaseOffsetTime(seconds, micro * 65536 // 1_000_000, BO_OFFSET_MIN).encode()
        if self.grouped == "rel":
            return u32((REL_AT_GET + round(after.total_seconds() * TICKS_PER_SECOND)) & 0xFFFFFFFF)
        return AbsoluteTime.from_datetime(local).raw

    def measurement(self, n: int, confirmed: bool = True) -> tuple[int, bytes]:
        """A fixed scan report of every object, taken n minutes after the agent's clock; with `grouped`, a
        buffered grouped report from the periodic scanner: GROUP_SCANS scans, the k-th n min + k s after it."""
        if self.grouped:
            return self.grouped_report(n, confirmed)
        stamp = AbsoluteTime.from_datetime(self.clock + timedelta(minutes=n)).raw
        obs = [u16(h) + octet_string(v + stamp) for h, v in self.kind.values]
        info = u16(0xF000) + u16(n) + counted(obs)
        invoke = self.next_invoke()
        return invoke, encode(Prst(invoke, EventReport(0, 0xFFFFFFFF, nom.NOTI_SCAN_REPORT_FIXED, info, confirmed)))

    def grouped_report(self, n: int, confirmed: bool = True, person_id: int | None = None) -> tuple[int, bytes]:
        values = dict(self.kind.values)
        groups = []
        for k in range(GROUP_SCANS):
            stamp = self.stamp(timedelta(minutes=n, seconds=k * GROUP_PERIOD_S))
            groups.append(values[1] + u16(0) + stamp + values[10] + stamp)  # laid out as scanner_map() says
        head = u16(0xF000) + u16(n)
        if person_id is None:
            event, info = nom.NOTI_BUF_SCAN_REPORT_GROUPED, head + counted(
                [octet_string(g) for g in groups])
        else:  # multi-person: one ObservationScanGrouped per person entry
            event, info = nom.NOTI_BUF_SCAN_REPORT_MP_GROUPED, head + counted(
                [u16(person_id) + octet_string(g) for g in groups])
        invoke = self.next_invoke()
        return invoke, encode(Prst(invoke, EventReport(SCANNER_HANDLE, 0xFFFFFFFF, event, info, confirmed)))

    def rlrq(self) -> bytes:
        return encode(Rlrq(0))


def sent(manager) -> list:
    """The APDUs a manager has to send (Manager.data_to_send), decoded one by one: each is a 2-byte choice, a
    2-byte length and that many bytes (IEEE 11073-20601 APDU)."""
    data, out = manager.data_to_send(), []
    while data:
        size = 4 + int.from_bytes(data[2:4], "big")
        out.append(decode(data[:size]))
        data = data[size:]
    return out


async def read_apdu(reader: asyncio.StreamReader, timeout: float = 5.0):
    head = await asyncio.wait_for(reader.readexactly(4), timeout)
    body = await asyncio.wait_for(reader.readexactly(int.from_bytes(head[2:], "big")), timeout)
    return decode(head + body)


async def associated(port: int, agent: Agent) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the manager on 127.0.0.1:`port` with `agent` (of a standard configuration) associated
    and the manager's GET of the MDS answered: ready for measurements."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(agent.aarq())
    await read_apdu(reader)
    get = await read_apdu(reader)
    writer.write(agent.get_response(get.invoke_id))
    return reader, writer


async def session(host: str, port: int, agent: Agent, reports: int = 3) -> dict:
    """A full agent session; returns what the manager answered, for the test to check."""
    reader, writer = await asyncio.open_connection(host, port)
    seen: dict = {"acks": []}
    try:
        writer.write(agent.aarq())
        aare = await read_apdu(reader)
        seen["aare"] = aare.result
        if aare.result == 3:  # accepted-unknown-config: send the configuration
            writer.write(agent.config_report())
            rsp = await read_apdu(reader)
            seen["config_result"] = int.from_bytes(rsp.message.reply_info[2:4], "big")
        get = await read_apdu(reader)
        seen["get"] = (get.message.obj_handle, get.message.attr_ids)
        writer.write(agent.get_response(get.invoke_id))
        for n in range(reports):
            invoke, apdu = agent.measurement(n)
            writer.write(apdu)
            ack = await read_apdu(reader)
            assert ack.invoke_id == invoke, (ack, invoke)
            seen["acks"].append(ack.message.event_type)
        writer.write(agent.rlrq())
        seen["release"] = type(await read_apdu(reader)).__name__
    finally:
        writer.close()
        await writer.wait_closed()
    return seen


__all__ = ["Abrt", "Agent", "EXPECTED", "GROUP_PERIOD_S", "GROUP_SCANS", "KINDS", "associated", "read_apdu", "session"]
