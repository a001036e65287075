"""An IEEE 11073-20601 agent emulator for the tests: the five standard device types, built with phg's
own APDU encoder but from the agent's side (AARQ, configuration report, MDS GET answer, fixed scan
reports, RLRQ), and an asyncio session runner that plays them against a manager over TCP."""

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
)
from phg.sources.ieee11073.configs import STANDARD
from phg.sources.ieee11073.mder import AbsoluteTime, counted, number, octet_string, u16, u32


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


@dataclass
class Agent:
    kind_name: str
    extended: bool = False  # report the standard objects under an extended configuration id (0x4000+)
    system_id: str | None = None
    clock: datetime = datetime(2026, 11, 28, 9, 0, 0)
    invoke: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def kind(self) -> Kind:
        return KINDS[self.kind_name]

    @property
    def config_id(self) -> int:
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
        report = ConfigReport(self.config_id, std.objects)
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
        return encode(Prst(invoke_id, GetResult(0, attrs)))

    def measurement(self, n: int, confirmed: bool = True) -> tuple[int, bytes]:
        """A fixed scan report of every object, taken n minutes after the agent's clock."""
        stamp = AbsoluteTime.from_datetime(self.clock + timedelta(minutes=n)).raw
        obs = [u16(h) + octet_string(v + stamp) for h, v in self.kind.values]
        info = u16(0xF000) + u16(n) + counted(obs)
        invoke = self.next_invoke()
        return invoke, encode(Prst(invoke, EventReport(0, 0xFFFFFFFF, nom.NOTI_SCAN_REPORT_FIXED, info, confirmed)))

    def rlrq(self) -> bytes:
        return encode(Rlrq(0))


async def read_apdu(reader: asyncio.StreamReader, timeout: float = 5.0):
    head = await asyncio.wait_for(reader.readexactly(4), timeout)
    body = await asyncio.wait_for(reader.readexactly(int.from_bytes(head[2:], "big")), timeout)
    return decode(head + body)


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


__all__ = ["Abrt", "Agent", "EXPECTED", "KINDS", "read_apdu", "session"]
