"""Continuous Glucose Monitoring Service (CGMS 1.0.1): CGM Measurement 0x2AA7 and CGM Session Start
Time 0x2AAA.

A CGM Measurement notification holds one or more records, each starting with its own Size. A record's
time is a minute offset from the session start, so the gateway reads the Session Start Time (which,
unlike the other health profiles, carries a time zone and DST offset) to place it. When the sensor
supports E2E protection each record ends with an E2E-CRC (CRC-16/MCRF4XX over the record before it);
the Size tells whether it is there. A record whose CRC does not match is refused (CGMS 1.0.1 section
2.5: the collector shall not use the data).

Sensor Status Annunciation: up to three octets, each present when its flag is set (b7 Status, b6
Cal/Temp, b5 Warning), sent in the order Status, Cal/Temp, Warning (their bit order in the 24-bit
field of CGM Status 0x2AA9). Only the octets announced are on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from phg.sources.ble.gatt.numbers import DST_OFFSETS, Bits, DateTime, Number, Reader, crc16_mcrf4xx

CGM_MEASUREMENT = 0x2AA7
CGM_SESSION_START_TIME = 0x2AAA

ANNUNCIATION_STATUS: dict[int, str] = {
    0: "session stopped", 1: "device battery low", 2: "sensor type incorrect for device", 3: "sensor malfunction",
    4: "device specific alert", 5: "general device fault",
}
ANNUNCIATION_CAL_TEMP: dict[int, str] = {
    0: "time synchronization required", 1: "calibration not allowed", 2: "calibration recommended",
    3: "calibration required", 4: "sensor temperature too high", 5: "sensor temperature too low",
    6: "calibration pending",
}
ANNUNCIATION_WARNING: dict[int, str] = {
    0: "result lower than patient low level", 1: "result higher than patient high level",
    2: "result lower than hypo level", 3: "result higher than hyper level", 4: "rate of decrease exceeded",
    5: "rate of increase exceeded", 6: "result lower than device can process", 7: "result higher than device can process",
}


@dataclass(frozen=True)
class CgmRecord:
    """One CGM record. glucose in mg/dL, trend in mg/dL/min, quality in %; time_offset_min counts from
    the session start. e2e_crc is the CRC as sent (already checked) or None when the record has none."""

    size: int
    flags: int
    glucose: Number
    time_offset_min: int
    status: Bits | None = None
    cal_temp: Bits | None = None
    warning: Bits | None = None
    trend: Number | None = None
    quality_pct: Number | None = None
    e2e_crc: int | None = None


@dataclass(frozen=True)
class CgmMeasurement:
    """One 0x2AA7 notification: its records in order."""

    records: tuple[CgmRecord, ...]


def decode_cgm_measurement(data: bytes) -> CgmMeasurement:
    r = Reader(data, "0x2AA7 CGM Measurement")
    if not r.data:
        raise r.error("Size", "empty value: need at least one record (6 bytes)")
    records = []
    while r.remaining:
        records.append(_record(r))
    return CgmMeasurement(tuple(records))


def _record(r: Reader) -> CgmRecord:
    start = r.pos
    size = r.u8("Size")
    if size < 6:
        raise r.error("Size", f"record at byte {start} has Size {size}, below the 6-byte minimum", start)
    if size > len(r.data) - start:
        raise r.error("Size", f"truncated at byte {start}: record Size {size} but only {len(r.data) - start} "
                              f"byte(s) left; too short: need {start + size} bytes, have {len(r.data)}", start)
    rec = Reader(r.data[:start + size], r.characteristic)
    rec.pos = r.pos
    flags = rec.u8("Flags")
    glucose = rec.sfloat("CGM Glucose Concentration")
    offset = rec.u16("Time Offset")
    status = Bits.decode(rec.u8("Sensor Status Annunciation (Status)"), ANNUNCIATION_STATUS, 8) if flags & 0x80 else None
    cal_temp = (Bits.decode(rec.u8("Sensor Status Annunciation (Cal/Temp)"), ANNUNCIATION_CAL_TEMP, 8)
                if flags & 0x40 else None)
    warning = (Bits.decode(rec.u8("Sensor Status Annunciation (Warning)"), ANNUNCIATION_WARNING, 8)
               if flags & 0x20 else None)
    trend = rec.sfloat("CGM Trend Information") if flags & 0x01 else None
    quality = rec.sfloat("CGM Quality") if flags & 0x02 else None
    crc = None
    if rec.remaining == 2:
        at = rec.pos
        crc = rec.u16("E2E-CRC")
        computed = crc16_mcrf4xx(rec.data[start:at])
        if crc != computed:
            raise rec.error("E2E-CRC", f"E2E-CRC mismatch in the record at byte {start}: sent 0x{crc:04X}, "
                                       f"computed 0x{computed:04X}", at)
    elif rec.remaining:
        raise rec.error("Size", f"record at byte {start} has Size {size}, but its flags announce "
                                f"{rec.pos - start} bytes (or {rec.pos - start + 2} with E2E-CRC)", start)
    r.pos = start + size
    return CgmRecord(size, flags, glucose, offset, status, cal_temp, warning, trend, quality, crc)


# ---------------------------------------------------------------- session start time

@dataclass(frozen=True)
class CgmSessionStartTime:
    """0x2AAA: local start time, Time Zone in 15-minute steps (None = unknown) and DST offset in
    15-minute steps (None = unknown)."""

    start: DateTime
    time_zone_quarters: int | None
    dst_quarters: int | None
    e2e_crc: int | None = None

    @property
    def utc_offset(self) -> timedelta | None:
        """Time zone + DST, or None when either is unknown."""
        if self.time_zone_quarters is None or self.dst_quarters is None:
            return None
        return timedelta(minutes=15 * (self.time_zone_quarters + self.dst_quarters))


def decode_cgm_session_start_time(data: bytes) -> CgmSessionStartTime:
    r = Reader(data, "0x2AAA CGM Session Start Time")
    start = r.date_time("Session Start Time")
    zone = r.s8("Time Zone")
    if zone != -128 and not -48 <= zone <= 56:
        raise r.error("Time Zone", f"reserved value {zone} at byte 7 in Time Zone", 7)
    dst = r.u8("DST Offset")
    r.enum(dst, DST_OFFSETS, "DST Offset", 8)
    crc = None
    if r.remaining == 2:
        crc = r.u16("E2E-CRC")
        if crc != (computed := crc16_mcrf4xx(r.data[:9])):
            raise r.error("E2E-CRC", f"E2E-CRC mismatch: sent 0x{crc:04X}, computed 0x{computed:04X}", 9)
    r.end()
    return CgmSessionStartTime(start, None if zone == -128 else zone, None if dst == 255 else dst, crc)
