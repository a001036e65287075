"""Emulated Bluetooth LE health devices: Bumble peripherals on a virtual link.

They power `phg demo`, `phg simulate`, `phg ble ... --emulated` and the tests: the gateway's real
Bluetooth session (bleak's public API) talks to them through the Bumble backend
(phg.demo.bumble_backend) exactly as it would to hardware.

Each device has Device Information (0x180A: manufacturer, model, serial, firmware, System ID) and
Current Time (0x1805, 0x2A2B read), and its health service:

- GlucoseMeter: Glucose Service 0x1808 with stored records and the Record Access Control Point
  (GLS 1.0.1: 0x2A18 notify, 0x2A34 notify, 0x2A51 read, RACP 0x2A52 write + indicate). Records
  stream as notifications, then the RACP indication 06 00 01 01. `add_records` stores more later;
  `drop_after = k` drops the link after the k-th record of the next download; `garbage_after = k`
  sends one malformed notification after the k-th record.
- CgmSensor: Continuous Glucose Monitoring Service 0x181F with a running sensor session and stored
  records (CGMS 1.0.1: 0x2AA7 notify, 0x2AA8 Feature, 0x2AA9 Status, 0x2AAA Session Start Time with
  time zone and DST, 0x2AAB Session Run Time, RACP 0x2A52 with filter type 0x01 = Time Offset; E2E-CRC
  on every value by default). Same `add_records`, `drop_after`, `garbage_after` as the glucose meter;
  `new_session` starts a new sensor session. Not one of demo_devices().
- BloodPressureCuff (0x1810, 0x2A35 indicate), Scale (0x181D, 0x2A9D indicate, 0x2A9E read),
  Thermometer (0x1809, 0x2A1C indicate), PulseOximeter (0x1822, 0x2A5E indicate, 0x2A60 read): they
  indicate their stored measurements once the gateway enables indications, forget each one the
  gateway confirmed, and then end the link, as most real devices do.

`bonding=True` makes the readable characteristics and the RACP require an encrypted link, so the
gateway must pair ("just works" on both sides) and, once bonded, re-encrypt on every connection.

The payloads are ENCODED here (the test side of the formats of the
Bluetooth SIG GATT Specification Supplement, https://www.bluetooth.com/specifications/gss/);
the gateway's decoders live in phg.sources.ble.gatt and share no code with these encoders.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from phg.errors import ConfigError

try:
    from bumble import gatt, hci, pairing
    from bumble.controller import Controller
    from bumble.core import AdvertisingData
    from bumble.device import Connection, Device
    from bumble.host import Host
    from bumble.link import LocalLink
    from bumble.transport.common import AsyncPipeSink
except ModuleNotFoundError as exc:  # Bumble comes with the [demo] extra, not with the gateway itself
    raise ConfigError("the emulated Bluetooth devices need Bumble: pip install 'phg[demo]'") from exc

from phg.demo.bumble_backend import BumbleBackend, bumble_backend
from phg.model import PatientRef

if TYPE_CHECKING:
    from phg.intake import Intake
    from phg.sources.ble.session import FetchResult

logger = logging.getLogger(__name__)

ADVERTISING_INTERVAL_MS = 20  # fast discovery on the virtual link (Bumble's default of 1 s adds ~2 s per scan)

# ------------------------------------------------------------------------------------------ encoders


def _mantissa_exponent(value: Decimal) -> tuple[int, int]:
    sign, digits, exponent = value.as_tuple()
    mantissa = int("".join(map(str, digits)) or "0")
    return (-mantissa if sign else mantissa), int(exponent)


def sfloat(value: Decimal) -> bytes:
    """IEEE 11073-20601 16-bit SFLOAT keeping the Decimal's precision (12-bit mantissa, 4-bit exponent)."""
    mantissa, exponent = _mantissa_exponent(value)
    if not (-2046 < mantissa < 2046 and -8 <= exponent <= 7):  # +-2046..2048 are the special values
        raise ValueError(f"{value} does not fit an SFLOAT")
    return struct.pack("<H", ((exponent & 0xF) << 12) | (mantissa & 0xFFF))


def float32(value: Decimal) -> bytes:
    """IEEE 11073-20601 32-bit FLOAT (24-bit mantissa, 8-bit exponent)."""
    mantissa, exponent = _mantissa_exponent(value)
    if not (abs(mantissa) < 2**23 - 2 and -128 <= exponent <= 127):  # the rest are special values
        raise ValueError(f"{value} does not fit a FLOAT")
    return struct.pack("<I", ((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF))


def date_time(t: datetime) -> bytes:
    """Date Time (0x2A08): year u16, month, day, hours, minutes, seconds."""
    return struct.pack("<HBBBBB", t.year, t.month, t.day, t.hour, t.minute, t.second)


def current_time(t: datetime) -> bytes:
    """Current Time (0x2A2B): Exact Time 256 (Date Time, day of week 1 = Monday, 1/256 s) + adjust reason."""
    return date_time(t) + bytes([t.isoweekday(), t.microsecond * 256 // 1_000_000, 0])


def system_id(eui64: str) -> bytes:
    """System ID (0x2A23): the EUI-64's 40-bit manufacturer identifier then its 24-bit OUI, both little-endian,
    i.e. the EUI-64 (OUI first) byte-reversed."""
    return bytes.fromhex(eui64)[::-1]


# ------------------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class GlucoseRecord:
    """One stored glucose record. `time` is the meter's local wall-clock time (naive)."""

    seq: int
    time: datetime
    value: Decimal
    unit: str = "mg/dL"  # or "mmol/L"
    type: int = 1  # capillary whole blood
    location: int = 1  # finger
    status: int = 0  # sensor status annunciation bits, sent when non-zero
    time_offset: int = 0  # minutes, sent when non-zero
    meal: int | None = None  # context: 1 preprandial, 2 postprandial, 3 fasting, ...


def glucose_measurement(r: GlucoseRecord) -> bytes:
    flags = 0x02 | (0x04 if r.unit == "mmol/L" else 0) | (0x01 if r.time_offset else 0)
    flags |= (0x08 if r.status else 0) | (0x10 if r.meal is not None else 0)
    out = struct.pack("<BH", flags, r.seq) + date_time(r.time)
    if r.time_offset:
        out += struct.pack("<h", r.time_offset)
    si = r.value.scaleb(-5) if r.unit == "mg/dL" else r.value.scaleb(-3)  # kg/L or mol/L
    out += sfloat(si) + bytes([(r.location << 4) | r.type])
    if r.status:
        out += struct.pack("<H", r.status)
    return out


def glucose_context(r: GlucoseRecord) -> bytes:
    return struct.pack("<BHB", 0x02, r.seq, r.meal or 0)


@dataclass(frozen=True)
class BloodPressure:
    time: datetime
    systolic: Decimal
    diastolic: Decimal
    mean: Decimal
    pulse: Decimal | None = None
    status: int = 0


def blood_pressure_measurement(m: BloodPressure) -> bytes:
    flags = 0x02 | (0x04 if m.pulse is not None else 0) | (0x10 if m.status else 0)  # mmHg, time stamp
    out = bytes([flags]) + sfloat(m.systolic) + sfloat(m.diastolic) + sfloat(m.mean) + date_time(m.time)
    if m.pulse is not None:
        out += sfloat(m.pulse)
    if m.status:
        out += struct.pack("<H", m.status)
    return out


@dataclass(frozen=True)
class Weight:
    time: datetime
    kg: Decimal  # multiple of 0.005
    bmi: Decimal | None = None  # multiple of 0.1, sent with height
    height_m: Decimal | None = None  # multiple of 0.001


def weight_measurement(m: Weight) -> bytes:
    with_bmi = m.bmi is not None and m.height_m is not None
    out = bytes([0x02 | (0x08 if with_bmi else 0)]) + struct.pack("<H", int(m.kg / Decimal("0.005"))) + date_time(m.time)
    if with_bmi:
        out += struct.pack("<HH", int(m.bmi * 10), int(m.height_m * 1000))  # type: ignore[operator]
    return out


@dataclass(frozen=True)
class Temperature:
    time: datetime
    celsius: Decimal
    site: int | None = 6  # mouth


def temperature_measurement(m: Temperature) -> bytes:
    flags = 0x02 | (0x04 if m.site is not None else 0)  # Celsius, time stamp
    out = bytes([flags]) + float32(m.celsius) + date_time(m.time)
    return out + (bytes([m.site]) if m.site is not None else b"")


@dataclass(frozen=True)
class SpotCheck:
    time: datetime
    spo2: Decimal
    pulse: Decimal


def spot_check_measurement(m: SpotCheck) -> bytes:
    return bytes([0x01]) + sfloat(m.spo2) + sfloat(m.pulse) + date_time(m.time)


def crc16_mcrf4xx(data: bytes) -> bytes:
    """The E2E-CRC of CGMS 1.0.1 section 2.5 (CRC-16/MCRF4XX: poly 0x1021 reflected, init 0xFFFF), little-endian."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


@dataclass(frozen=True)
class CgmRecord:
    """One stored CGM record: minutes since the session start and the glucose in mg/dL (SFLOAT digits kept).
    `status` is the 24-bit Sensor Status Annunciation: Status (bits 0-7), Cal/Temp (8-15), Warning (16-23);
    only its non-zero octets are sent."""

    offset: int
    value: Decimal
    status: int = 0
    trend: Decimal | None = None  # mg/dL/min
    quality: Decimal | None = None  # %


def cgm_record(r: CgmRecord, *, e2e: bool = False) -> bytes:
    """One record of a CGM Measurement (0x2AA7): Size, Flags, glucose, Time Offset, the annunciation octets
    present (Status b7, Cal/Temp b6, Warning b5, in that order), [trend], [quality], [E2E-CRC over the record]."""
    octets = [(0x80, r.status & 0xFF), (0x40, r.status >> 8 & 0xFF), (0x20, r.status >> 16 & 0xFF)]
    flags = (0x01 if r.trend is not None else 0) | (0x02 if r.quality is not None else 0)
    flags |= sum(bit for bit, octet in octets if octet)
    body = bytes([flags]) + sfloat(r.value) + struct.pack("<H", r.offset) + bytes(o for _, o in octets if o)
    body += (sfloat(r.trend) if r.trend is not None else b"") + (sfloat(r.quality) if r.quality is not None else b"")
    out = bytes([1 + len(body) + (2 if e2e else 0)]) + body
    return out + crc16_mcrf4xx(out) if e2e else out


def cgm_measurement(records: Sequence[CgmRecord], *, e2e: bool = False) -> bytes:
    """One 0x2AA7 notification carrying one or more records."""
    return b"".join(cgm_record(r, e2e=e2e) for r in records)


def _with_crc(value: bytes, e2e: bool) -> bytes:
    return value + crc16_mcrf4xx(value) if e2e else value


def cgm_session_start_time(start: datetime, time_zone_quarters: int, dst_quarters: int, *, e2e: bool = False) -> bytes:
    """CGM Session Start Time (0x2AAA): local Date Time, Time Zone (s8, 15-minute steps, -128 unknown),
    DST Offset (u8: 0, 2, 4, 8 quarters; 255 unknown), [E2E-CRC]."""
    return _with_crc(date_time(start) + struct.pack("<bB", time_zone_quarters, dst_quarters), e2e)


CGM_TYPE_ISF_SUBCUTANEOUS = 0x59  # CGM Feature Type-Sample Location: type 9 interstitial fluid, location 5 subcutaneous


def cgm_feature(features: int, *, e2e: bool = False) -> bytes:
    """CGM Feature (0x2AA8): 24-bit features (b12 = E2E-CRC supported), Type-Sample Location, then the E2E-CRC,
    which is always there: 0xFFFF when the sensor does not support E2E-CRC (CGMS 1.0.1 3.2)."""
    value = struct.pack("<I", features | (0x1000 if e2e else 0))[:3] + bytes([CGM_TYPE_ISF_SUBCUTANEOUS])
    return value + (crc16_mcrf4xx(value) if e2e else b"\xff\xff")


def cgm_status(offset: int, status: int, *, e2e: bool = False) -> bytes:
    """CGM Status (0x2AA9): Time Offset (u16 minutes), the 24-bit annunciation, [E2E-CRC]."""
    return _with_crc(struct.pack("<H", offset) + status.to_bytes(3, "little"), e2e)


def cgm_session_run_time(hours: int, *, e2e: bool = False) -> bytes:
    """CGM Session Run Time (0x2AAB): expected run time of the session in hours (u16), [E2E-CRC]."""
    return _with_crc(struct.pack("<H", hours), e2e)


# ---------------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceInformation:
    manufacturer: str = "phg emulator"
    model: str = "Emulated"
    serial: str = "EMU-0001"
    firmware: str = "1.0.0"
    system_id: str | None = "0A1B2C3D4E5F6001"  # EUI-64, 16 hex digits


def _uuid(n: int) -> gatt.UUID:
    return gatt.UUID.from_16_bits(n)


class EmulatedDevice:
    """A Bumble peripheral with Device Information and Current Time; subclasses add their service."""

    SERVICE = 0

    def __init__(self, address: str, name: str, info: DeviceInformation, *, bonding: bool = False,
                 clock_skew: timedelta = timedelta(0)) -> None:
        self.address = address
        self.name = name
        self.info = info
        self.bonding = bonding
        self.clock_skew = clock_skew
        self.device: Device | None = None
        self._tasks: set[asyncio.Task] = set()

    # permissions of readable and writable characteristics: encrypted when the device requires bonding
    @property
    def _read(self) -> gatt.Attribute.Permissions:
        p = gatt.Attribute.Permissions
        return p.READABLE | (p.READ_REQUIRES_ENCRYPTION if self.bonding else p(0))

    @property
    def _write(self) -> gatt.Attribute.Permissions:
        p = gatt.Attribute.Permissions
        return p.WRITEABLE | (p.WRITE_REQUIRES_ENCRYPTION if self.bonding else p(0))

    def now(self) -> datetime:
        """The device's own local wall clock (the gateway's local time plus the configured skew)."""
        return datetime.now() + self.clock_skew

    def _readable(self, uuid: int, value: bytes | None = None, read=None) -> gatt.Characteristic:
        v = gatt.CharacteristicValue(read=read) if read else value
        return gatt.Characteristic(_uuid(uuid), gatt.Characteristic.Properties.READ, self._read, v)

    def _services(self) -> list[gatt.Service]:
        info = self.info
        dis = [self._readable(0x2A29, info.manufacturer.encode()), self._readable(0x2A24, info.model.encode()),
               self._readable(0x2A25, info.serial.encode()), self._readable(0x2A26, info.firmware.encode())]
        if info.system_id:
            dis.append(self._readable(0x2A23, system_id(info.system_id)))
        cts = self._readable(0x2A2B, read=lambda _c: current_time(self.now()))
        cts.properties |= gatt.Characteristic.Properties.NOTIFY  # CTS 1.1: Current Time is read + notify
        return [gatt.Service(_uuid(0x180A), dis), gatt.Service(_uuid(0x1805), [cts]), *self.health_services()]

    def health_services(self) -> list[gatt.Service]:
        raise NotImplementedError

    async def start(self, link: LocalLink) -> None:
        """Power on a controller on `link` and advertise (20 ms interval)."""
        controller = Controller(f"emu-{self.name}", link=link)
        device = Device(name=self.name, address=hci.Address(self.address), host=Host(controller, AsyncPipeSink(controller)))
        device.pairing_config_factory = _just_works
        device.add_services(self._services())
        await device.power_on()
        self.device = device
        ad = AdvertisingData([
            (AdvertisingData.FLAGS, bytes([0x06])),
            (AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, struct.pack("<H", self.SERVICE)),
            (AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()),
        ])
        await device.start_advertising(advertising_data=bytes(ad), auto_restart=True,
                                       advertising_interval_min=ADVERTISING_INTERVAL_MS,
                                       advertising_interval_max=ADVERTISING_INTERVAL_MS)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.device is not None:
            await self.device.stop_advertising()
            for connection in list(self.device.connections.values()):
                await connection.disconnect()
            await self.device.power_off()

    def _spawn(self, coro) -> None:
        """Run `coro` after the current ATT exchange (so a write response goes out before what it triggers)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def bonds(self) -> list[str]:
        """Addresses of the centrals this device is bonded with."""
        if self.device is None or self.device.keystore is None:
            return []
        return [name for name, _ in await self.device.keystore.get_all()]


def _just_works(_connection: Connection) -> pairing.PairingConfig:
    io = pairing.PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT
    return pairing.PairingConfig(sc=True, mitm=False, bonding=True, delegate=pairing.PairingDelegate(io))


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("emulator task ended: %r", task.exception())


# RACP (GLS 1.0.1 section 4.11; GATT Specification Supplement): op codes, operators, response codes
REPORT, DELETE, ABORT, REPORT_NUMBER, NUMBER_RESPONSE, RESPONSE = 1, 2, 3, 4, 5, 6
ALL, LE, GE, RANGE, FIRST, LAST = 1, 2, 3, 4, 5, 6
SUCCESS, OP_NOT_SUPPORTED, INVALID_OPERATOR, OPERATOR_NOT_SUPPORTED, INVALID_OPERAND, NO_RECORDS = 1, 2, 3, 4, 5, 6
OPERAND_NOT_SUPPORTED = 9


def _racp_select(records: list, key, operator: int, operand: bytes) -> list | int:
    """The records a RACP operator selects, or a RACP response code. Filter type 0x01 is the only
    one supported: the sequence number (GLS) or the time offset in minutes (CGMS), given by `key`."""
    if operator == ALL:
        return list(records)
    if operator == FIRST:
        return records[:1]
    if operator == LAST:
        return records[-1:]
    if operator not in (LE, GE, RANGE):
        return OPERATOR_NOT_SUPPORTED if operator else INVALID_OPERATOR
    if not operand or operand[0] != 0x01:
        return OPERAND_NOT_SUPPORTED
    try:
        if operator == RANGE:
            low, high = struct.unpack_from("<HH", operand, 1)
        else:
            (bound,) = struct.unpack_from("<H", operand, 1)
            low, high = (bound, 0xFFFF) if operator == GE else (0, bound)
    except struct.error:
        return INVALID_OPERAND
    return [r for r in records if low <= key(r) <= high]


class _RacpDevice(EmulatedDevice):
    """A device with stored records behind a Record Access Control Point (GLS 1.0 / CGMS 1.0.1, RACP
    0x2A52): report stored records / number of records, abort; records go out as notifications from a
    task, after the write response (the order a real stack keeps), then the RACP response indication.
    Subclasses say which records an operator selects and how they are uploaded."""

    racp: gatt.Characteristic

    def _select(self, operator: int, operand: bytes) -> list | int:
        raise NotImplementedError

    async def _upload(self, connection: Connection, selected: list) -> bool:
        """Send the selected records; False when the link was dropped on purpose half-way."""
        raise NotImplementedError

    def _on_racp(self, connection: Connection, value: bytes) -> None:
        self._spawn(self._racp(connection, bytes(value)))

    async def _respond(self, connection: Connection, request_op: int, code: int) -> None:
        await self.device.indicate_subscriber(connection, self.racp, bytes([RESPONSE, 0, request_op, code]))  # type: ignore[union-attr]

    async def _racp(self, connection: Connection, request: bytes) -> None:
        device = self.device
        assert device is not None
        if len(request) < 2:
            return await self._respond(connection, request[0] if request else 0, INVALID_OPERATOR)
        op, operator, operand = request[0], request[1], request[2:]
        if op == ABORT:
            return await self._respond(connection, op, SUCCESS)
        if op not in (REPORT, REPORT_NUMBER):
            return await self._respond(connection, op, OP_NOT_SUPPORTED)
        selected = self._select(operator, operand)
        if isinstance(selected, int):
            return await self._respond(connection, op, selected)
        if op == REPORT_NUMBER:
            return await device.indicate_subscriber(connection, self.racp,
                                                    struct.pack("<BBH", NUMBER_RESPONSE, 0, len(selected)))
        if not selected:
            return await self._respond(connection, op, NO_RECORDS)
        if await self._upload(connection, selected):
            await self._respond(connection, op, SUCCESS)


class GlucoseMeter(_RacpDevice):
    """Glucose Service with stored records and RACP (see module docstring)."""

    SERVICE = 0x1808

    def __init__(self, address: str = "C0:00:00:00:18:08", name: str = "Emu Glucose",
                 info: DeviceInformation | None = None, records: list[GlucoseRecord] | None = None, **kwargs) -> None:
        super().__init__(address, name, info or DeviceInformation(model="Emu Glucose Meter", serial="EMU-GL-1",
                                                                   system_id="0A1B2C3D4E5F6001"), **kwargs)
        self.records: list[GlucoseRecord] = list(records or [])
        self.drop_after: int | None = None  # drop the link after the k-th record of the next download
        self.garbage_after: int | None = None  # one malformed notification after the k-th record
        self.sent = 0  # records sent, all downloads together

    def add_records(self, values: list[Decimal], start: datetime | None = None, *, unit: str = "mg/dL",
                    step: timedelta = timedelta(minutes=30)) -> list[GlucoseRecord]:
        """Store new records with the next sequence numbers (times `step` apart, ending now by default)."""
        seq = self.records[-1].seq + 1 if self.records else 1
        start = start or self.now().replace(microsecond=0) - step * (len(values) - 1)
        new = [GlucoseRecord(seq + i, start + step * i, v, unit) for i, v in enumerate(values)]
        self.records += new
        return new

    def health_services(self) -> list[gatt.Service]:
        props = gatt.Characteristic.Properties
        self.measurement = gatt.Characteristic(_uuid(0x2A18), props.NOTIFY, gatt.Attribute.Permissions(0))
        self.context = gatt.Characteristic(_uuid(0x2A34), props.NOTIFY, gatt.Attribute.Permissions(0))
        feature = self._readable(0x2A51, struct.pack("<H", 0x0003))  # low battery, sensor malfunction detection
        self.racp = gatt.Characteristic(_uuid(0x2A52), props.WRITE | props.INDICATE, self._write,
                                        gatt.CharacteristicValue(write=self._on_racp))
        return [gatt.Service(_uuid(0x1808), [self.measurement, self.context, feature, self.racp])]

    def _select(self, operator: int, operand: bytes) -> list[GlucoseRecord] | int:
        """The records an operator selects (by sequence number), or a RACP response code."""
        return _racp_select(self.records, lambda r: r.seq, operator, operand)

    async def _upload(self, connection: Connection, selected: list) -> bool:
        device = self.device
        assert device is not None
        for n, record in enumerate(selected, 1):
            await device.notify_subscriber(connection, self.measurement, glucose_measurement(record))
            if record.meal is not None:
                await device.notify_subscriber(connection, self.context, glucose_context(record))
            self.sent += 1
            if self.garbage_after == n:
                self.garbage_after = None
                await device.notify_subscriber(connection, self.measurement, b"\x1f\x01")
            if self.drop_after == n:
                self.drop_after = None
                await connection.disconnect()
                return False
        return True


def _local_zone_quarters() -> tuple[int, int]:
    """(Time Zone, DST Offset) of the gateway's local time, in 15-minute steps, as a CGM would be set."""
    now = time.localtime()
    standard = -time.timezone
    return standard // 900, max(0, (now.tm_gmtoff - standard) // 900)


class CgmSensor(_RacpDevice):
    """Continuous Glucose Monitoring Service 0x181F (CGMS 1.0.1) with a running session and stored records:
    CGM Measurement 0x2AA7 notify, CGM Feature 0x2AA8 read, CGM Status 0x2AA9 read, Session Start Time
    0x2AAA read, Session Run Time 0x2AAB read, RACP 0x2A52 write + indicate (filter type 0x01 = Time
    Offset). The CGM Specific Ops Control Point (0x2AAC) is left out: the emulated session is already
    running, and the gateway neither starts sessions nor calibrates. `e2e=True` puts an E2E-CRC on every
    value and sets the Feature bit. `drop_after = k`: drop the link after the k-th record of the next
    download; `garbage_after = k`: after the k-th record, one extra notification whose record has a wrong
    E2E-CRC (a copy of record k); `per_notification`: at most this many records in one notification, as
    many as fit the ATT payload."""

    SERVICE = 0x181F
    FEATURES = 0x0000_8240  # trend information, low battery detection, sensor malfunction detection

    def __init__(self, address: str = "C0:00:00:00:18:1F", name: str = "Emu CGM", info: DeviceInformation | None = None,
                 records: list[CgmRecord] | None = None, *, session_start: datetime | None = None,
                 time_zone_quarters: int | None = None, dst_quarters: int | None = None, e2e: bool = True,
                 run_time_hours: int = 14 * 24, **kwargs) -> None:
        super().__init__(address, name, info or DeviceInformation(model="Emu CGM Sensor", serial="EMU-CGM-1",
                                                                   system_id="0A1B2C3D4E5F6006"), **kwargs)
        zone, dst = _local_zone_quarters()
        self.session_start = session_start or self.now().replace(second=0, microsecond=0) - timedelta(hours=3)
        self.time_zone_quarters = zone if time_zone_quarters is None else time_zone_quarters
        self.dst_quarters = dst if dst_quarters is None else dst_quarters
        self.e2e = e2e
        self.run_time_hours = run_time_hours
        self.records: list[CgmRecord] = list(records or [])
        self.status = 0
        self.drop_after: int | None = None
        self.garbage_after: int | None = None
        self.per_notification = 1
        self.sent = 0  # records sent, all downloads together

    def add_records(self, values: list[Decimal], *, first_offset: int | None = None,
                    step: int = 5) -> list[CgmRecord]:
        """Store new records `step` minutes apart (the CGM Communication Interval), after the last one
        (from offset 0 in an empty session, or from `first_offset`)."""
        if first_offset is None:
            first_offset = self.records[-1].offset + step if self.records else 0
        new = [CgmRecord(first_offset + step * i, v) for i, v in enumerate(values)]
        self.records += new
        return new

    def new_session(self, start: datetime) -> None:
        """A new sensor session (a new sensor, or a restart): offsets count from `start` again, and the
        records of the old session are gone."""
        self.session_start = start
        self.records = []

    def health_services(self) -> list[gatt.Service]:
        props = gatt.Characteristic.Properties
        self.measurement = gatt.Characteristic(_uuid(0x2AA7), props.NOTIFY, gatt.Attribute.Permissions(0))
        e2e = self.e2e
        chars = [
            self.measurement,
            self._readable(0x2AA8, read=lambda _c: cgm_feature(self.FEATURES, e2e=e2e)),
            self._readable(0x2AA9, read=lambda _c: cgm_status(self._run_offset(), self.status, e2e=e2e)),
            self._readable(0x2AAA, read=lambda _c: cgm_session_start_time(
                self.session_start, self.time_zone_quarters, self.dst_quarters, e2e=e2e)),
            self._readable(0x2AAB, read=lambda _c: cgm_session_run_time(self.run_time_hours, e2e=e2e)),
        ]
        self.racp = gatt.Characteristic(_uuid(0x2A52), props.WRITE | props.INDICATE, self._write,
                                        gatt.CharacteristicValue(write=self._on_racp))
        return [gatt.Service(_uuid(self.SERVICE), [*chars, self.racp])]

    def _packed(self, records: list[CgmRecord], room: int) -> list[list[CgmRecord]]:
        """Records in notifications of up to `per_notification` records that fit the ATT payload
        (ATT_MTU - 3 bytes: 20 on a link whose MTU was not raised); always at least one each."""
        chunks: list[list[CgmRecord]] = []
        size = 0
        for record in records:
            length = len(cgm_record(record, e2e=self.e2e))
            if chunks and len(chunks[-1]) < self.per_notification and size + length <= room:
                chunks[-1].append(record)
                size += length
            else:
                chunks.append([record])
                size = length
        return chunks

    def _run_offset(self) -> int:
        minutes = int((self.now() - self.session_start).total_seconds() // 60)
        return max(0, min(minutes, 0xFFFF))

    def _select(self, operator: int, operand: bytes) -> list[CgmRecord] | int:
        """The records an operator selects (by time offset, filter type 0x01), or a RACP response code."""
        return _racp_select(self.records, lambda r: r.offset, operator, operand)

    async def _upload(self, connection: Connection, selected: list) -> bool:
        device = self.device
        assert device is not None
        n = 0
        for chunk in self._packed(selected, connection.att_mtu - 3):
            await device.notify_subscriber(connection, self.measurement, cgm_measurement(chunk, e2e=self.e2e))
            n += len(chunk)
            self.sent += len(chunk)
            if self.garbage_after is not None and n >= self.garbage_after:
                self.garbage_after = None
                bad = bytearray(cgm_record(chunk[-1], e2e=True))
                bad[-1] ^= 0xFF
                await device.notify_subscriber(connection, self.measurement, bytes(bad))
            if self.drop_after is not None and n >= self.drop_after:
                self.drop_after = None
                await connection.disconnect()
                return False
        return True


class _IndicatingDevice(EmulatedDevice):
    """A device that indicates its stored measurements once the gateway subscribes, then ends the link (NOTIFIES:
    notifies them instead, as a streaming sensor does, INTERVAL seconds apart)."""

    MEASUREMENT = 0
    FEATURES: tuple[tuple[int, bytes], ...] = ()
    NOTIFIES, INTERVAL = False, 0.0

    def __init__(self, address: str, name: str, info: DeviceInformation, measurements: list | None = None, *,
                 disconnect_when_done: bool = True, **kwargs) -> None:
        super().__init__(address, name, info, **kwargs)
        self.measurements = list(measurements or [])
        self.disconnect_when_done = disconnect_when_done

    @staticmethod
    def encode(measurement) -> bytes:
        raise NotImplementedError

    def health_services(self) -> list[gatt.Service]:
        kind = gatt.Characteristic.Properties.NOTIFY if self.NOTIFIES else gatt.Characteristic.Properties.INDICATE
        self.measurement = gatt.Characteristic(_uuid(self.MEASUREMENT), kind, gatt.Attribute.Permissions(0))
        self.measurement.on(self.measurement.EVENT_SUBSCRIPTION, self._on_subscription)
        chars = [self.measurement] + [self._readable(uuid, value) for uuid, value in self.FEATURES]
        return [gatt.Service(_uuid(self.SERVICE), chars)]

    def _on_subscription(self, connection: Connection, notify: bool, indicate: bool) -> None:
        if notify if self.NOTIFIES else indicate:
            self._spawn(self._upload(connection))

    async def _upload(self, connection: Connection) -> None:
        await asyncio.sleep(0)
        send = self.device.notify_subscriber if self.NOTIFIES else self.device.indicate_subscriber  # type: ignore[union-attr]
        for m in list(self.measurements):
            await send(connection, self.measurement, self.encode(m))
            self.measurements.remove(m)  # confirmed by the gateway (a notification: sent): forget it
            await asyncio.sleep(self.INTERVAL)
        if self.disconnect_when_done:
            await connection.disconnect()


class BloodPressureCuff(_IndicatingDevice):
    SERVICE, MEASUREMENT = 0x1810, 0x2A35
    FEATURES = ((0x2A49, struct.pack("<H", 0x0001)),)  # Blood Pressure Feature: body movement detection
    encode = staticmethod(blood_pressure_measurement)

    def __init__(self, address: str = "C0:00:00:00:18:10", name: str = "Emu BP", info: DeviceInformation | None = None,
                 measurements: list[BloodPressure] | None = None, **kwargs) -> None:
        super().__init__(address, name, info or DeviceInformation(model="Emu BP Cuff", serial="EMU-BP-1",
                                                                  system_id="0A1B2C3D4E5F6002"), measurements, **kwargs)


class Scale(_IndicatingDevice):
    SERVICE, MEASUREMENT = 0x181D, 0x2A9D
    # Weight Scale Feature: time stamp, BMI, weight resolution 0.005 kg (7 << 3), height resolution 0.001 m (3 << 7)
    FEATURES = ((0x2A9E, struct.pack("<I", 0x01 | 0x04 | (7 << 3) | (3 << 7))),)
    encode = staticmethod(weight_measurement)

    def __init__(self, address: str = "C0:00:00:00:18:1D", name: str = "Emu Scale", info: DeviceInformation | None = None,
                 measurements: list[Weight] | None = None, **kwargs) -> None:
        super().__init__(address, name, info or DeviceInformation(model="Emu Scale", serial="EMU-WS-1",
                                                                  system_id="0A1B2C3D4E5F6003"), measurements, **kwargs)


class Thermometer(_IndicatingDevice):
    SERVICE, MEASUREMENT = 0x1809, 0x2A1C
    encode = staticmethod(temperature_measurement)

    def __init__(self, address: str = "C0:00:00:00:18:09", name: str = "Emu Thermo", info: DeviceInformation | None = None,
                 measurements: list[Temperature] | None = None, **kwargs) -> None:
        super().__init__(address, name, info or DeviceInformation(model="Emu Thermometer", serial="EMU-TH-1",
                                                                  system_id="0A1B2C3D4E5F6004"), measurements, **kwargs)


class PulseOximeter(_IndicatingDevice):
    SERVICE, MEASUREMENT = 0x1822, 0x2A5E
    FEATURES = ((0x2A60, struct.pack("<H", 0x0000)),)  # PLX Features: no optional fields
    encode = staticmethod(spot_check_measurement)

    def __init__(self, address: str = "C0:00:00:00:18:22", name: str = "Emu PulseOx", info: DeviceInformation | None = None,
                 measurements: list[SpotCheck] | None = None, **kwargs) -> None:
        super().__init__(address, name, info or DeviceInformation(model="Emu Pulse Oximeter", serial="EMU-PO-1",
                                                                  system_id="0A1B2C3D4E5F6005"), measurements, **kwargs)


def heart_rate_measurement(bpm: int) -> bytes:
    """0x2A37 (HRS 1.0 section 3.1.1.1): flags 0 (a UINT8 value, no contact, energy or RR fields), the value."""
    return bytes([0x00, bpm])


class HeartRateMonitor(_IndicatingDevice):
    """A heart rate sensor: notifies one value a beat-ish apart (HRS: notify only), no time stamps."""

    SERVICE, MEASUREMENT = 0x180D, 0x2A37
    NOTIFIES, INTERVAL = True, 0.05
    encode = staticmethod(heart_rate_measurement)

    def __init__(self, address: str = "C0:00:00:00:18:0D", name: str = "Emu HR", info: DeviceInformation | None = None,
                 measurements: list[int] | None = None, **kwargs) -> None:
        super().__init__(address, name, info or DeviceInformation(model="Emu HR Strap", serial="EMU-HR-1",
                                                                  system_id="0A1B2C3D4E5F6006"), measurements, **kwargs)


def demo_devices(now: datetime | None = None) -> list[EmulatedDevice]:
    """The five emulated devices with a few plausible stored measurements each (local times before `now`)."""
    now = (now or datetime.now()).replace(second=0, microsecond=0)
    meter = GlucoseMeter()
    meter.add_records([Decimal(v) for v in ("98", "132", "117", "105", "141")], now - timedelta(hours=2))
    return [
        meter,
        BloodPressureCuff(measurements=[BloodPressure(now - timedelta(minutes=20), Decimal(128), Decimal(82),
                                                      Decimal(97), Decimal(71))]),
        Scale(measurements=[Weight(now - timedelta(minutes=15), Decimal("72.400"), Decimal("24.5"), Decimal("1.720"))]),
        Thermometer(measurements=[Temperature(now - timedelta(minutes=10), Decimal("36.85"))]),
        PulseOximeter(measurements=[SpotCheck(now - timedelta(minutes=5), Decimal(97), Decimal(68))]),
    ]


@dataclass
class EmulatedLink:
    """A virtual radio: a fresh LocalLink with the emulated devices on it and a Bumble central for the gateway.

    Use inside the running event loop (Bumble controllers must be created there)::

        async with EmulatedLink(demo_devices()) as radio:
            await session.fetch(radio.devices[0].address, ..., backend=radio.backend)
    """

    devices: list[EmulatedDevice] = field(default_factory=list)
    central_address: str = "C0:FE:00:00:00:01"
    link: LocalLink | None = None
    central: Device | None = None
    backend: BumbleBackend | None = None

    async def __aenter__(self) -> EmulatedLink:
        self.link = LocalLink()
        for device in self.devices:
            await device.start(self.link)
        controller = Controller("gateway", link=self.link)
        self.central = Device(name="phg", address=hci.Address(self.central_address),
                              host=Host(controller, AsyncPipeSink(controller)))
        self.central.pairing_config_factory = _just_works
        await self.central.power_on()
        self.backend = bumble_backend(self.central)
        return self

    async def add(self, device: EmulatedDevice) -> None:
        """Bring one more device onto the link."""
        assert self.link is not None
        await device.start(self.link)
        self.devices.append(device)

    async def __aexit__(self, *exc_info) -> None:
        for device in self.devices:
            await device.stop()
        if self.central is not None:
            await self.central.power_off()


async def collect_emulated(intake: Intake, patient: PatientRef, now: datetime | None = None) -> list[FetchResult]:
    """One session with each of the five demo devices (demo_devices(now)) on a fresh virtual link,
    through the gateway's real Bluetooth session code: what `phg demo` and `phg simulate` collect."""
    from phg.sources.ble.session import fetch

    async with EmulatedLink(demo_devices(now)) as radio:
        return [await fetch(device.address, intake=intake, patient=patient, backend=radio.backend)
                for device in radio.devices]
