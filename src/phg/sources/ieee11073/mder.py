"""MDER primitives of IEEE 11073-20601 (Annex F, Medical Device Encoding Rules): big-endian
INT-U8/16/32, INT-I16, OCTET STRING (16-bit length prefix), FLOAT-Type and SFLOAT-Type, the three
time formats (Absolute-Time BCD, Base-Offset-Time, Relative/High-Res-Relative ticks).

Decoding is strict: every read is bounds-checked and a failure raises ApduError naming what was being
read and where, never IndexError or struct.error. Numbers become Decimals with the device's precision
(FLOAT 62.40 stays 62.40), special values (NaN, NRes, +/-INF) are named, not turned into floats.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from phg.errors import PhgError


class ApduError(PhgError):
    """An APDU (or part of one) is malformed. `offset` is the byte offset in the buffer being read."""

    def __init__(self, reason: str, offset: int | None = None):
        self.reason = reason
        self.offset = offset
        super().__init__(reason if offset is None else f"{reason} (at byte {offset})")


class Reader:
    """A bounds-checked cursor over a byte buffer; `sub(n)` gives a reader limited to the next n bytes."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise ApduError(f"truncated {what}: needs {n} bytes, {self.remaining} left", self.pos)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def i16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big", signed=True)

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")

    def octet_string(self, what: str) -> bytes:
        return self.take(self.u16(f"{what} length"), what)

    def sub(self, n: int, what: str) -> Reader:
        if n > self.remaining:
            raise ApduError(f"{what} declares {n} bytes but only {self.remaining} follow", self.pos)
        reader = Reader(self.data, self.pos, self.pos + n)
        self.pos += n
        return reader

    def done(self, what: str) -> None:
        if self.remaining:
            raise ApduError(f"{self.remaining} unexpected bytes after {what}", self.pos)


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def i16(value: int) -> bytes:
    return value.to_bytes(2, "big", signed=True)


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def octet_string(value: bytes) -> bytes:
    return u16(len(value)) + value


def counted(items: list[bytes]) -> bytes:
    """A SEQUENCE OF in MDER: count, length (in bytes), then the encoded items."""
    body = b"".join(items)
    return u16(len(items)) + u16(len(body)) + body


# ------------------------------------------------------------------------------------ numbers

SPECIALS_SFLOAT = {0x07FF: "NaN", 0x0800: "NRes", 0x07FE: "+INF", 0x0802: "-INF", 0x0801: "reserved"}
SPECIALS_FLOAT = {0x007FFFFF: "NaN", 0x00800000: "NRes", 0x007FFFFE: "+INF", 0x00800002: "-INF",
                  0x00800001: "reserved"}


@dataclass(frozen=True)
class MderNumber:
    """A FLOAT-Type or SFLOAT-Type value: mantissa * 10**exponent, or a special value (NaN, NRes, ...)."""

    mantissa: int
    exponent: int
    special: str | None = None
    width: int = 4  # 2 = SFLOAT, 4 = FLOAT

    @property
    def decimal(self) -> Decimal | None:
        """The value with the device's precision (mantissa 624, exponent -1 -> Decimal('62.4'));
        a positive exponent gives an integer (no exponent notation downstream). None for specials."""
        if self.special:
            return None
        if self.exponent >= 0:
            return Decimal(self.mantissa * 10**self.exponent)
        return Decimal(self.mantissa).scaleb(self.exponent)

    @property
    def text(self) -> str:
        value = self.decimal
        return self.special if value is None else format(value, "f")

    def encode(self) -> bytes:
        if self.width == 2:
            return u16(((self.exponent & 0xF) << 12) | (self.mantissa & 0xFFF))
        return u32(((self.exponent & 0xFF) << 24) | (self.mantissa & 0xFFFFFF))


def decode_sfloat(raw: int) -> MderNumber:
    """SFLOAT-Type: 4-bit two's-complement exponent, 12-bit two's-complement mantissa."""
    mantissa, exponent = raw & 0xFFF, raw >> 12
    if mantissa in (0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801) and exponent == 0:
        return MderNumber(mantissa, 0, SPECIALS_SFLOAT[mantissa], 2)
    if mantissa >= 0x800:
        mantissa -= 0x1000
    if exponent >= 0x8:
        exponent -= 0x10
    return MderNumber(mantissa, exponent, None, 2)


def decode_float(raw: int) -> MderNumber:
    """FLOAT-Type: 8-bit two's-complement exponent, 24-bit two's-complement mantissa."""
    mantissa, exponent = raw & 0xFFFFFF, raw >> 24
    if mantissa in SPECIALS_FLOAT and exponent == 0:
        return MderNumber(mantissa, 0, SPECIALS_FLOAT[mantissa], 4)
    if mantissa >= 0x800000:
        mantissa -= 0x1000000
    if exponent >= 0x80:
        exponent -= 0x100
    return MderNumber(mantissa, exponent, None, 4)


def number(value: Decimal | int | str, width: int = 4) -> MderNumber:
    """Encode a decimal as FLOAT (width 4) or SFLOAT (width 2), keeping its precision."""
    d = Decimal(str(value))
    sign, digits, exp = d.as_tuple()
    mantissa = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    limit = 2047 if width == 2 else 8388607
    while abs(mantissa) > limit and exp < (7 if width == 2 else 127):
        mantissa, exp = round(mantissa / 10), exp + 1
    return MderNumber(mantissa, int(exp), None, width)


# ------------------------------------------------------------------------------------ time

def _bcd(byte: int, what: str, offset: int | None) -> int:
    hi, lo = byte >> 4, byte & 0xF
    if hi > 9 or lo > 9:
        raise ApduError(f"{what}: 0x{byte:02X} is not BCD", offset)
    return hi * 10 + lo


@dataclass(frozen=True)
class AbsoluteTime:
    """Absolute-Time (20601 §6.3.2.1 / Annex A): local wall-clock time without zone, 8 BCD bytes
    (century, year, month, day, hour, minute, second, 1/100 s). All 0xFF = no time set."""

    raw: bytes

    @property
    def unset(self) -> bool:
        return self.raw == b"\xff" * 8

    def fields(self) -> tuple[int, ...]:
        return tuple(_bcd(b, "Absolute-Time", None) for b in self.raw)

    @property
    def local(self) -> datetime:
        """The naive local date-time the device gave (raises ApduError if no valid date)."""
        return _local_datetime(self)

    @property
    def iso(self) -> str:
        t = self.local
        return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{t.microsecond // 10_000:02d}"

    @property
    def hundredths(self) -> int:
        return self.raw[7] and _bcd(self.raw[7], "Absolute-Time", None)

    @classmethod
    def from_datetime(cls, t: datetime) -> AbsoluteTime:
        parts = (t.year // 100, t.year % 100, t.month, t.day, t.hour, t.minute, t.second, t.microsecond // 10_000)
        return cls(bytes((p // 10) << 4 | (p % 10) for p in parts))


def _local_datetime(t: AbsoluteTime) -> datetime:
    c, y, mo, d, h, mi, s, f = t.fields()
    try:
        return datetime(c * 100 + y, mo, d, h, mi, s, f * 10_000)
    except ValueError as exc:
        raise ApduError(f"Absolute-Time {t.raw.hex()}: {exc}") from None


def decode_absolute_time(raw: bytes, offset: int | None = None, date: bool = False) -> AbsoluteTime:
    """Validate the BCD digits (an all-0xFF 'unset' time is allowed) and wrap the 8 bytes. With `date`
    (time stamps of observations) the digits must also name a real date and time: 31 February or hour 25
    raise ApduError, so such a report is refused while it is decoded. The MDS clock is read without it: a
    clock holding no valid date is a time fault of the device, not a malformed APDU."""
    if len(raw) != 8:
        raise ApduError(f"Absolute-Time needs 8 bytes, got {len(raw)}", offset)
    t = AbsoluteTime(raw)
    if not t.unset:
        for i, b in enumerate(raw):
            _bcd(b, "Absolute-Time", None if offset is None else offset + i)
        if date:
            _local_datetime(t)
    return t


# Base-Offset-Time epoch. IEEE 11073-20601a-2010 (Amendment 1, folded into 20601-2014) took Base-Offset-Time
# from IEEE 1588 (PTP): BaseOffsetTime ::= SEQUENCE { bo-seconds INT-U32, bo-fraction INT-U16 (1/65536 s),
# bo-time-offset INT-I16 (minutes) }. The IEEE 1588 epoch is 1970-01-01T00:00:00; PTP counts it on the TAI scale,
# but 20601 uses the pair as "wall-clock time with offset to some base time, often UTC" (HL7 PHD IG, Coincident
# Time Stamp, MDC_ATTR_TIME_BO 68226), so bo-seconds are read as UTC seconds without leap-second (TAI-UTC, now
# 37 s) correction, as phg does for every other UTC source.
# Not verified against the normative text (not public). Note that the informative HL7 PHD IG STU 1 page
# "Generating the PHD Reported Time Stamp Identifier" (hl7.org/fhir/uv/phd/2019Jan/..., kept in v1.1.0) says
# instead "the first four bytes are the seconds since 1900/01/01 00:00:00 (not the Unix Epoch!)"; STU 2 dropped
# that text. Were 1900 right, every time here would be 70 years (2208988800 s) late. Kept at 1588's 1970.
BO_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class BaseOffsetTime:
    """Base-Offset-Time (20601a-2010): bo-seconds since BO_EPOCH (1970-01-01T00:00:00, IEEE 1588 epoch, read
    as UTC), bo-fraction in 1/65536 s, bo-time-offset: the local offset in minutes added to get local time."""

    seconds: int
    fraction: int
    offset_minutes: int

    @property
    def datetime(self) -> datetime:
        """The instant, expressed in the device's own offset."""
        tz = timedelta(minutes=self.offset_minutes)
        from datetime import timezone

        t = BO_EPOCH + timedelta(seconds=self.seconds, microseconds=self.fraction * 1_000_000 // 65536)
        return t.astimezone(timezone(tz))

    def encode(self) -> bytes:
        return u32(self.seconds) + u16(self.fraction) + i16(self.offset_minutes)


def decode_base_offset_time(raw: bytes, offset: int | None = None) -> BaseOffsetTime:
    if len(raw) != 8:
        raise ApduError(f"Base-Offset-Time needs 8 bytes, got {len(raw)}", offset)
    secs, frac, off = struct.unpack(">IHh", raw)
    if not -1440 < off < 1440:
        raise ApduError(f"Base-Offset-Time offset {off} min is out of range", offset)
    return BaseOffsetTime(secs, frac, off)


TICKS_PER_SECOND = 8000  # RelativeTime: 1/8 ms
HI_RES_TICKS_PER_SECOND = 1_000_000  # HighResRelativeTime: 1 µs, 8 octets
