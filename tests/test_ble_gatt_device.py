"""Device Information, Current Time, Battery, RACP requests, CGM records and the UUID registry."""

from __future__ import annotations

import pytest

from phg.sources.ble.gatt import REGISTRY, GattError, decode, full_uuid, lookup
from phg.sources.ble.gatt import glucose as gls


def test_system_id_is_reversed_into_eui64() -> None:
    # DIS 1.1: Manufacturer Identifier (40 bits) then OUI (24 bits), each LSO first; EUI-64 = OUI || id.
    sid = decode(0x2A23, bytes.fromhex("c377addeeeabedfe"))
    assert sid.eui64 == "FEEDABEEDEAD77C3"
    assert (sid.oui, sid.manufacturer_identifier) == (0xFEEDAB, 0xEEDEAD77C3)
    with pytest.raises(GattError, match="0x2A23 System ID: truncated at byte 5"):
        decode(0x2A23, bytes(7))


def test_strings_are_utf8_without_padding() -> None:
    assert decode(0x2A29, b"A&D Medical\x00\x00").value == "A&D Medical"
    assert decode("00002a26-0000-1000-8000-00805f9b34fb", "r2.1 ✓".encode()).value == "r2.1 ✓"
    with pytest.raises(GattError, match="0x2A25 Serial Number String: not UTF-8 at byte 1"):
        decode(0x2A25, b"A\xff")


def test_regulatory_certification_data_list_continua() -> None:
    # count 2, length 16; Continua version struct 1.0 with device class list [4]; Continua reg struct: unregulated.
    data = bytes.fromhex("0002" "0012" "0201" "0008" "0100" "0001" "0002" "0004" "0202" "0002" "8000")
    regs = decode(0x2A2A, data)
    assert regs.continua_version == (1, 0) and regs.entries[0].certified_device_classes == (4,)
    assert regs.unregulated is True
    with pytest.raises(GattError, match="length 18 at byte 2 does not match"):
        decode(0x2A2A, data + b"\x00")


def test_current_time_and_battery() -> None:
    now = decode(0x2A2B, bytes.fromhex("ea070b1c090000" "06" "80" "01"))
    assert now.date_time.iso == "2026-11-28T09:00:00" and now.day_of_week == "Saturday"
    assert now.fractions256 == 128 and now.adjust_reason.names == ("manual time update",)
    assert decode(0x2A19, b"\x64").percent == 100
    with pytest.raises(GattError, match="reserved value 101 at byte 0 in Battery Level"):
        decode(0x2A19, b"\x65")


def test_racp_request_builders_match_vectors() -> None:
    assert gls.report_first_record() == bytes.fromhex("0105")
    assert gls.report_records_from(12) == bytes.fromhex("0103010c00")
    assert gls.delete_all_records() == bytes.fromhex("0201")
    assert gls.report_number_of_records() == bytes.fromhex("0401")
    assert gls.report_all_records() == bytes.fromhex("0101")
    assert gls.abort_operation() == bytes.fromhex("0300")
    assert gls.racp_request("Report stored records", "Within range of (inclusive)", 3, 9) == bytes.fromhex("01040103000900")
    with pytest.raises(ValueError, match="takes 1 operand"):
        gls.racp_request("Report stored records", "Less than or equal to")
    ranged = gls.racp_request("Delete stored records", "Within range of (inclusive)", 1, 2)
    for request in (gls.report_records_from(12), ranged):
        assert not decode(0x2A52, request).is_response


def test_racp_refusals() -> None:
    with pytest.raises(GattError, match="reserved value 7 at byte 0 in Op Code"):
        decode(0x2A52, b"\x07\x00")
    with pytest.raises(GattError, match="operator must be Null"):
        decode(0x2A52, bytes.fromhex("05010100"))
    with pytest.raises(GattError, match="needs an operator"):
        decode(0x2A52, bytes.fromhex("0100"))


def test_cgm_crc_mismatch_and_bad_size_are_refused() -> None:
    good = bytes.fromhex("0fe3d2e405000214ff02f0e5f38e3f")
    with pytest.raises(GattError, match="E2E-CRC mismatch in the record at byte 0: sent 0x3F8F, computed 0x3F8E"):
        decode(0x2AA7, good[:-2] + bytes.fromhex("8f3f"))
    with pytest.raises(GattError, match="Size 5, below the 6-byte minimum"):
        decode(0x2AA7, bytes.fromhex("05000c100500"))
    with pytest.raises(GattError, match="record Size 15 but only 14"):
        decode(0x2AA7, good[:-1])


def test_cgm_partial_annunciation_octets_follow_their_flags() -> None:
    # Only the Warning octet (flag b5): it is the only annunciation byte on the wire.
    (record,) = decode(0x2AA7, bytes.fromhex("07200c100500" "01")).records
    assert record.status is None and record.cal_temp is None
    assert record.warning is not None and record.warning.names == ("result lower than patient low level",)


def test_registry_keys() -> None:
    assert REGISTRY[0x2A18] is REGISTRY["00002a18-0000-1000-8000-00805f9b34fb"] is lookup("0x2A18") is lookup("2a18")
    assert full_uuid(0x2A35) == "00002a35-0000-1000-8000-00805f9b34fb"
    with pytest.raises(KeyError, match="no decoder for characteristic"):
        lookup("2A00")
