"""SFLOAT/FLOAT (IEEE 11073-20601 Annex F.8), Date Time and the Reader's error messages."""

from __future__ import annotations

from decimal import Decimal

import pytest

from phg.sources.ble.gatt import GattError, Special, float32, sfloat
from phg.sources.ble.gatt.numbers import Bits, Reader, crc16_mcrf4xx


@pytest.mark.parametrize(("raw", "special"), [
    (0x07FF, Special.NAN), (0x0800, Special.NRES), (0x07FE, Special.POSITIVE_INFINITY),
    (0x0802, Special.NEGATIVE_INFINITY), (0x0801, Special.RESERVED),
])
def test_sfloat_specials(raw: int, special: Special) -> None:
    assert sfloat(raw) is special


@pytest.mark.parametrize(("raw", "special"), [
    (0x007FFFFF, Special.NAN), (0x00800000, Special.NRES), (0x007FFFFE, Special.POSITIVE_INFINITY),
    (0x00800002, Special.NEGATIVE_INFINITY), (0x00800001, Special.RESERVED),
])
def test_float_specials(raw: int, special: Special) -> None:
    assert float32(raw) is special


@pytest.mark.parametrize(("raw", "text"), [
    (0xB078, "0.00120"),  # 120 x 10^-5: 120 mg/dL as kg/L, trailing zero kept
    (0xC037, "0.0055"),  # 55 x 10^-4: 5.5 mmol/L as mol/L
    (0xF0BD, "18.9"),
    (0x0000, "0"),
    (0xE000, "0.00"),  # zero with two decimals stays 0.00
    (0x0FFF, "-1"),  # mantissa two's complement
    (0x0801 | 0x1000, "-2047E+1"),  # reserved pattern only with exponent 0: 0x1801 is a number
    (0x17FF, "2.047E+4"),  # 0x7FF mantissa with exponent 1 is 20470, not NaN
    (0x8001, "1E-8"),  # most negative exponent
    (0x7001, "1E+7"),  # most positive exponent
    (0xF800, "-204.8"),  # most negative mantissa
])
def test_sfloat_values_keep_their_digits(raw: int, text: str) -> None:
    value = sfloat(raw)
    assert isinstance(value, Decimal)
    assert value == Decimal(text)
    assert value.as_tuple() == Decimal(text).as_tuple()


@pytest.mark.parametrize(("raw", "text"), [
    (0xFE000EB0, "37.60"),  # HTS vector: 3760 x 10^-2
    (0xFF800000 | 0x000001, "-838860.7"),  # mantissa 0x800001 = -8388607, exponent -1
    (0x80000001, "1E-128"),
    (0x7F000001, "1E+127"),
    (0x00000000, "0"),
    (0xFD000064, "0.100"),
])
def test_float_values_keep_their_digits(raw: int, text: str) -> None:
    value = float32(raw)
    assert isinstance(value, Decimal)
    assert value.as_tuple() == Decimal(text).as_tuple()


def test_specials_are_never_floats() -> None:
    for raw in (0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801):
        assert not isinstance(sfloat(raw), float | Decimal)


def test_reader_truncation_message_names_characteristic_field_offset() -> None:
    r = Reader(b"\x01\x02\x03", "0x2A35 Blood Pressure Measurement")
    r.u16("Systolic")
    with pytest.raises(GattError) as caught:
        r.u16("Diastolic")
    assert str(caught.value) == ("0x2A35 Blood Pressure Measurement: truncated at byte 2 reading Diastolic "
                                 "(need 2 bytes, have 1); too short: need 4 bytes, have 3")
    assert (caught.value.characteristic, caught.value.field, caught.value.offset) == (
        "0x2A35 Blood Pressure Measurement", "Diastolic", 2)


def test_reader_refuses_trailing_bytes() -> None:
    r = Reader(b"\x00\x01", "0x2A19 Battery Level")
    r.u8("Battery Level")
    with pytest.raises(GattError, match=r"1 unexpected byte\(s\) at byte 1: too long: need 1 bytes, have 2"):
        r.end()


@pytest.mark.parametrize("raw", [
    "e8070d01000000",  # month 13
    "e8070120000000",  # day 32
    "e8070101180000",  # hour 24
    "e807010100003c",  # second 60
    "e807021e000000",  # 30 February
    "0100010100000000"[:14],  # year 1
])
def test_date_time_reserved_values_are_refused(raw: str) -> None:
    with pytest.raises(GattError, match="Date Time"):
        Reader(bytes.fromhex(raw), "0x2A08 Date Time").date_time()


def test_date_time_unknown_parts() -> None:
    stamp = Reader(bytes.fromhex("000004111429" + "3b"), "x").date_time()
    assert (stamp.year, stamp.month, stamp.day, stamp.iso, stamp.naive) == (None, 4, 17, "0000-04-17T20:41:59", None)


def test_bits_name_reserved_bits() -> None:
    assert Bits.decode(0b101, {0: "a"}, 8).names == ("a", "reserved bit 2")


def test_crc16_mcrf4xx_check_value() -> None:
    assert crc16_mcrf4xx(b"123456789") == 0x6F91  # the catalogue check value of CRC-16/MCRF4XX
