"""The building blocks every GATT health decoder shares: GattError, IEEE 11073-20601 SFLOAT/FLOAT,
the Bluetooth Date Time, named bit fields and a bounds-checked little-endian Reader.

SFLOAT/FLOAT (IEEE 11073-20601 Annex F.8; GATT Specification Supplement "medfloat16/32"): a signed
mantissa and a signed (two's complement) base-10 exponent. The value is kept as a Decimal with the
device's digits (SFLOAT 0xB078 = 120 x 10^-5 -> Decimal("0.00120")); the five special values
(NaN, NRes, +INF, -INF, reserved) are `Special` members, never floats. Specials are defined with
exponent 0 only, so 0x17FF is the number 2047 x 10^1, not NaN.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum

from phg.errors import PhgError
from phg.sources.ble.gatt import quirks


class GattError(PhgError, ValueError):
    """A GATT characteristic value that cannot be decoded: truncated, over-long, or holding a
    reserved value. The message names the characteristic, the field and the byte offset; the same
    facts are kept as attributes so that a caller can log them without parsing text."""

    def __init__(self, characteristic: str, field: str | None, offset: int | None, why: str):
        self.characteristic = characteristic
        self.field = field
        self.offset = offset
        self.why = why
        super().__init__(f"{characteristic}: {why}")


class Special(Enum):
    """The IEEE 11073-20601 special values of SFLOAT/FLOAT."""

    NAN = "NaN"
    NRES = "NRes"  # not at this resolution
    POSITIVE_INFINITY = "+INF"
    NEGATIVE_INFINITY = "-INF"
    RESERVED = "reserved"


Number = Decimal | Special

_SFLOAT_SPECIALS = {0x07FF: Special.NAN, 0x0800: Special.NRES, 0x07FE: Special.POSITIVE_INFINITY,
                    0x0802: Special.NEGATIVE_INFINITY, 0x0801: Special.RESERVED}
_FLOAT_SPECIALS = {0x007FFFFF: Special.NAN, 0x00800000: Special.NRES, 0x007FFFFE: Special.POSITIVE_INFINITY,
                   0x00800002: Special.NEGATIVE_INFINITY, 0x00800001: Special.RESERVED}


def sfloat(raw: int) -> Number:
    """A 16-bit SFLOAT (as an unsigned int) -> Decimal with its digits, or a Special."""
    if raw in _SFLOAT_SPECIALS:
        return _SFLOAT_SPECIALS[raw]
    mantissa = raw & 0x0FFF
    exponent = raw >> 12
    return _scaled(mantissa - 0x1000 if mantissa & 0x0800 else mantissa, exponent - 16 if exponent & 0x8 else exponent)


def float32(raw: int) -> Number:
    """A 32-bit FLOAT (as an unsigned int) -> Decimal with its digits, or a Special."""
    if raw in _FLOAT_SPECIALS:
        return _FLOAT_SPECIALS[raw]
    mantissa = raw & 0x00FFFFFF
    exponent = raw >> 24
    signed = mantissa - 0x1000000 if mantissa & 0x800000 else mantissa
    return _scaled(signed, exponent - 256 if exponent & 0x80 else exponent)


def _scaled(mantissa: int, exponent: int) -> Decimal:
    # Decimal((sign, digits, exponent)) is exact: no context rounding can touch the device's digits.
    return Decimal((1 if mantissa < 0 else 0, tuple(int(d) for d in str(abs(mantissa))), exponent))


def scaled(raw: int, exponent: int) -> Decimal:
    """An integer field with a fixed decimal exponent (e.g. weight in 0.005 kg steps is handled by the
    caller; BMI in 0.1 steps is scaled(raw, -1))."""
    return _scaled(raw, exponent)


# ---------------------------------------------------------------- named bits


@dataclass(frozen=True)
class Bits:
    """A bit field as sent (raw) plus the names of its set bits, in bit order. Bits the profile
    reserves are named "reserved bit N" rather than dropped, so nothing sent is lost."""

    raw: int
    names: tuple[str, ...]

    def __contains__(self, name: object) -> bool:
        return name in self.names

    @classmethod
    def decode(cls, raw: int, table: dict[int, str], width: int) -> Bits:
        names = tuple(table.get(bit, f"reserved bit {bit}") for bit in range(width) if raw >> bit & 1)
        return cls(raw, names)


# ---------------------------------------------------------------- Date Time


@dataclass(frozen=True)
class DateTime:
    """Bluetooth Date Time (0x2A08 layout, 7 bytes): local wall-clock time without zone. A zero year,
    month or day means "not known" and is kept as None."""

    year: int | None
    month: int | None
    day: int | None
    hours: int
    minutes: int
    seconds: int

    @property
    def iso(self) -> str:
        return (f"{self.year or 0:04d}-{self.month or 0:02d}-{self.day or 0:02d}"
                f"T{self.hours:02d}:{self.minutes:02d}:{self.seconds:02d}")

    @property
    def naive(self) -> datetime | None:
        """The wall-clock time, or None when year, month or day is unknown (such a stamp cannot be
        placed on a timeline; callers use the time of reception instead)."""
        if self.year is None or self.month is None or self.day is None:
            return None
        return datetime(self.year, self.month, self.day, self.hours, self.minutes, self.seconds)


# DST Offset (GATT Specification Supplement), in 15-minute steps; 255 = unknown. Used by 0x2A0F and 0x2AAA.
DST_OFFSETS: dict[int, str] = {0: "standard time", 2: "half an hour daylight time", 4: "daylight time",
                               8: "double daylight time", 255: "unknown"}


# ---------------------------------------------------------------- reader


class Reader:
    """Reads little-endian fields off one characteristic value, naming the field and offset in every
    error. `characteristic` is the text that starts each message, e.g. "0x2A35 Blood Pressure Measurement"."""

    def __init__(self, data: bytes | bytearray | memoryview, characteristic: str):
        self.data = bytes(data)
        self.pos = 0
        self.characteristic = characteristic

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def error(self, field: str | None, why: str, offset: int | None = None) -> GattError:
        at = self.pos if offset is None else offset
        return GattError(self.characteristic, field, at, why)

    def take(self, n: int, field: str) -> bytes:
        have = self.remaining
        if have < n:
            raise self.error(field, f"truncated at byte {self.pos} reading {field} (need {n} bytes, have {have}); "
                                    f"too short: need {self.pos + n} bytes, have {len(self.data)}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def s8(self, field: str) -> int:
        return struct.unpack("<b", self.take(1, field))[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def s16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little", signed=True)

    def u24(self, field: str) -> int:
        return int.from_bytes(self.take(3, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "little")

    def sfloat(self, field: str) -> Number:
        return sfloat(self.u16(field))

    def float32(self, field: str) -> Number:
        return float32(self.u32(field))

    def enum(self, raw: int, table: dict[int, str], field: str, offset: int) -> str:
        """The name of an enumerated value; a value the profile reserves is refused."""
        if raw not in table:
            raise self.error(field, f"reserved value {raw} at byte {offset} in {field}", offset)
        return table[raw]

    def date_time(self, field: str = "Date Time") -> DateTime:
        start = self.pos
        raw = self.take(7, field)
        year = int.from_bytes(raw[:2], "little")
        month, day, hours, minutes, seconds = raw[2:]
        checks = ((year == 0 or 1582 <= year <= 9999, "year", year), (month <= 12, "month", month),
                  (day <= 31, "day", day), (hours <= 23, "hours", hours), (minutes <= 59, "minutes", minutes),
                  (seconds <= 59, "seconds", seconds))
        for ok, part, value in checks:
            if not ok:
                raise self.error(field, f"reserved value {value} for {part} at byte {start} in {field}", start)
        stamp = DateTime(year or None, month or None, day or None, hours, minutes, seconds)
        if stamp.year and stamp.month and stamp.day:
            try:
                stamp.naive  # noqa: B018 - validates the calendar date (e.g. 30 February)
            except ValueError:
                raise self.error(field, f"{stamp.iso} at byte {start} in {field} is not a calendar date", start) from None
        return stamp

    def end(self) -> None:
        """Refuse bytes the layout did not announce (an over-long value): for length-delimited structures
        and where extra bytes could be an E2E-CRC, so that their meaning is ambiguous."""
        if self.remaining:
            raise self.error(None, f"{self.remaining} unexpected byte(s) at byte {self.pos}: "
                                   f"too long: need {self.pos} bytes, have {len(self.data)}")


    def finish(self) -> None:
        """The end of a characteristic value whose flags lay out every field: bytes after the last one
        are padding some devices send (to a fixed length); they are logged as quirk:trailing-bytes and
        ignored, and the fields keep what they decoded (see quirks)."""
        if self.remaining:
            quirks.warn(quirks.TRAILING_BYTES, self.characteristic,
                        f"{self.remaining} byte(s) after the last field (at byte {self.pos}) ignored")
            self.pos = len(self.data)


def crc16_mcrf4xx(data: bytes) -> int:
    """CRC-16/MCRF4XX (poly 0x1021 reflected, init 0xFFFF, no final xor): the E2E-CRC of CGMS
    (CGMS 1.0.1 section 2.5) and other SIG medical services. Bit-wise: values are a few bytes long."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc
