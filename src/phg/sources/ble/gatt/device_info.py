"""Device facts: Device Information Service (DIS 1.1) strings, System ID 0x2A23 and IEEE 11073-20601
Regulatory Certification Data List 0x2A2A; Current Time Service (CTS 1.1) Current Time 0x2A2B, Date Time
0x2A08 and Local Time Information 0x2A0F; Battery Service Battery Level 0x2A19.

System ID (DIS 1.1 section 3.9): a 40-bit Manufacturer Identifier then a 24-bit Organizationally Unique
Identifier, each least significant octet first. The EUI-64 is OUI followed by the manufacturer
identifier, most significant octet first, so it is the 8 bytes reversed: 0x2A23 value
C3 77 AD DE EE AB ED FE -> EUI-64 FEEDABEEDEAD77C3.

The Regulatory Certification Data List is not little-endian GATT data but an IEEE 11073-20601 MDER
structure (big-endian): RegCertDataList = count u16, length u16, then RegCertData entries
{auth-body u8, auth-body-struc-type u8, length u16, data}. Continua entries (auth-body 2) are decoded:
struct type 1 = ContinuaVersionStruct (major, minor, certified device class list), 2 = ContinuaRegStruct
(regulation bit field; MDER bit 0 = most significant = unregulated-device).
"""

from __future__ import annotations

from dataclasses import dataclass

from phg.sources.ble.gatt.numbers import DST_OFFSETS, Bits, DateTime, Reader

MANUFACTURER_NAME = 0x2A29
MODEL_NUMBER = 0x2A24
SERIAL_NUMBER = 0x2A25
FIRMWARE_REVISION = 0x2A26
HARDWARE_REVISION = 0x2A27
SOFTWARE_REVISION = 0x2A28
SYSTEM_ID = 0x2A23
REGULATORY_CERTIFICATION_DATA_LIST = 0x2A2A
CURRENT_TIME = 0x2A2B
DATE_TIME = 0x2A08
LOCAL_TIME_INFORMATION = 0x2A0F
BATTERY_LEVEL = 0x2A19

STRING_CHARACTERISTICS: dict[int, str] = {
    MANUFACTURER_NAME: "Manufacturer Name String", MODEL_NUMBER: "Model Number String",
    SERIAL_NUMBER: "Serial Number String", FIRMWARE_REVISION: "Firmware Revision String",
    HARDWARE_REVISION: "Hardware Revision String", SOFTWARE_REVISION: "Software Revision String",
}


@dataclass(frozen=True)
class DeviceString:
    """One DIS string (manufacturer, model, serial, firmware, hardware, software)."""

    characteristic: int
    value: str


def decode_string(uuid: int, data: bytes) -> DeviceString:
    """UTF-8; trailing NULs (devices that pad to a fixed length) are dropped."""
    name = f"0x{uuid:04X} {STRING_CHARACTERISTICS[uuid]}"
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Reader(data, name).error(STRING_CHARACTERISTICS[uuid], f"not UTF-8 at byte {exc.start}", exc.start) from None
    return DeviceString(uuid, text.rstrip("\x00"))


def _string_decoder(uuid: int):
    def decode(data: bytes) -> DeviceString:
        return decode_string(uuid, data)

    decode.__name__ = f"decode_{STRING_CHARACTERISTICS[uuid].lower().replace(' ', '_')}"
    return decode


decode_manufacturer_name = _string_decoder(MANUFACTURER_NAME)
decode_model_number = _string_decoder(MODEL_NUMBER)
decode_serial_number = _string_decoder(SERIAL_NUMBER)
decode_firmware_revision = _string_decoder(FIRMWARE_REVISION)
decode_hardware_revision = _string_decoder(HARDWARE_REVISION)
decode_software_revision = _string_decoder(SOFTWARE_REVISION)


@dataclass(frozen=True)
class SystemId:
    """0x2A23 as an EUI-64: 16 hex digits upper case, as model.Device.system_id wants it."""

    eui64: str
    manufacturer_identifier: int
    oui: int


def decode_system_id(data: bytes) -> SystemId:
    r = Reader(data, "0x2A23 System ID")
    manufacturer = int.from_bytes(r.take(5, "Manufacturer Identifier"), "little")
    oui = int.from_bytes(r.take(3, "Organizationally Unique Identifier"), "little")
    r.finish()
    return SystemId(bytes(data)[7::-1].hex().upper(), manufacturer, oui)


# ---------------------------------------------------------------- regulatory certification data list

AUTH_BODIES: dict[int, str] = {0: "empty", 1: "ieee-11073", 2: "continua", 254: "experimental", 255: "reserved"}


@dataclass(frozen=True)
class RegCertData:
    """One RegCertData entry; the Continua fields are filled for auth-body continua."""

    auth_body: int
    struct_type: int
    data: bytes
    continua_version: tuple[int, int] | None = None  # (major, minor)
    certified_device_classes: tuple[int, ...] = ()
    unregulated: bool | None = None  # ContinuaRegStruct unregulated-device bit


@dataclass(frozen=True)
class RegulatoryCertificationDataList:
    entries: tuple[RegCertData, ...]

    @property
    def unregulated(self) -> bool | None:
        """The Continua regulation status, if the device gave one (MDC 532354 regulation status)."""
        return next((e.unregulated for e in self.entries if e.unregulated is not None), None)

    @property
    def continua_version(self) -> tuple[int, int] | None:
        return next((e.continua_version for e in self.entries if e.continua_version is not None), None)


def _be(r: Reader, n: int, field: str) -> int:
    return int.from_bytes(r.take(n, field), "big")


def decode_regulatory_certification_data_list(data: bytes) -> RegulatoryCertificationDataList:
    r = Reader(data, "0x2A2A IEEE 11073-20601 Regulatory Certification Data List")
    count = _be(r, 2, "RegCertDataList count")
    length = _be(r, 2, "RegCertDataList length")
    if length != r.remaining:
        raise r.error("RegCertDataList length", f"length {length} at byte 2 does not match the {r.remaining} "
                                                "byte(s) that follow", 2)
    entries = []
    for i in range(count):
        auth_body = r.u8(f"RegCertData[{i}] auth-body")
        struct_type = r.u8(f"RegCertData[{i}] auth-body-struc-type")
        body = r.take(_be(r, 2, f"RegCertData[{i}] length"), f"RegCertData[{i}] auth-body-data")
        entry = RegCertData(auth_body, struct_type, body)
        if auth_body == 2:
            entry = _continua(r, i, entry)
        entries.append(entry)
    r.end()
    return RegulatoryCertificationDataList(tuple(entries))


def _continua(outer: Reader, i: int, entry: RegCertData) -> RegCertData:
    r = Reader(entry.data, f"{outer.characteristic} (RegCertData[{i}] Continua struct)")
    if entry.struct_type == 1:
        major, minor = r.u8("major-IG-version"), r.u8("minor-IG-version")
        count, length = _be(r, 2, "certified-device-class-list count"), _be(r, 2, "certified-device-class-list length")
        if length != 2 * count:
            raise r.error("certified-device-class-list", f"length {length} does not match count {count} (2 bytes each)", 4)
        classes = tuple(_be(r, 2, "certified device class") for _ in range(count))
        r.end()
        return RegCertData(entry.auth_body, entry.struct_type, entry.data, (major, minor), classes)
    if entry.struct_type == 2:
        bits = _be(r, 2, "regulation-bit-field")
        r.end()
        return RegCertData(entry.auth_body, entry.struct_type, entry.data, unregulated=bool(bits & 0x8000))
    return entry


# ---------------------------------------------------------------- time and battery

ADJUST_REASONS: dict[int, str] = {0: "manual time update", 1: "external reference time update",
                                  2: "change of time zone", 3: "change of DST"}
DAYS_OF_WEEK: dict[int, str] = {0: "unknown", 1: "Monday", 2: "Tuesday", 3: "Wednesday", 4: "Thursday", 5: "Friday",
                                6: "Saturday", 7: "Sunday"}


@dataclass(frozen=True)
class CurrentTime:
    """0x2A2B: the device's clock (local wall-clock time) with 1/256 s fractions."""

    date_time: DateTime
    day_of_week: str
    fractions256: int
    adjust_reason: Bits


def decode_current_time(data: bytes) -> CurrentTime:
    r = Reader(data, "0x2A2B Current Time")
    stamp = r.date_time("Date Time")
    day = r.enum(r.u8("Day of Week"), DAYS_OF_WEEK, "Day of Week", 7)
    fractions = r.u8("Fractions256")
    reason = Bits.decode(r.u8("Adjust Reason"), ADJUST_REASONS, 8)
    r.finish()
    return CurrentTime(stamp, day, fractions, reason)


def decode_date_time(data: bytes) -> DateTime:
    r = Reader(data, "0x2A08 Date Time")
    stamp = r.date_time("Date Time")
    r.finish()
    return stamp


@dataclass(frozen=True)
class LocalTimeInformation:
    """0x2A0F: time zone and DST offset in 15-minute steps (None = unknown)."""

    time_zone_quarters: int | None
    dst_quarters: int | None


def decode_local_time_information(data: bytes) -> LocalTimeInformation:
    r = Reader(data, "0x2A0F Local Time Information")
    zone = r.s8("Time Zone")
    if zone != -128 and not -48 <= zone <= 56:
        raise r.error("Time Zone", f"reserved value {zone} at byte 0 in Time Zone", 0)
    dst = r.u8("DST Offset")
    r.enum(dst, DST_OFFSETS, "DST Offset", 1)
    r.finish()
    return LocalTimeInformation(None if zone == -128 else zone, None if dst == 255 else dst)


@dataclass(frozen=True)
class BatteryLevel:
    percent: int


def decode_battery_level(data: bytes) -> BatteryLevel:
    r = Reader(data, "0x2A19 Battery Level")
    level = r.u8("Battery Level")
    r.finish()
    if level > 100:
        raise r.error("Battery Level", f"reserved value {level} at byte 0 in Battery Level (percent, 0-100)", 0)
    return BatteryLevel(level)
