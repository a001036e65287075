"""`phg decode ble CHAR HEX` through click's CliRunner."""

from __future__ import annotations

import json

from click.testing import CliRunner

from phg.cli.decode import decode_ble
from phg.cli.options import parse_utc_offset


def test_decode_blood_pressure_vector() -> None:
    result = CliRunner().invoke(decode_ble, ["0x2A35", "06 7400 4700 5600 ea070b1c080000 3e00", "--utc-offset", "+01:00"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["characteristic"] == "0x2A35 Blood Pressure Measurement"
    assert out["decoded"]["systolic"] == "116" and out["decoded"]["timestamp"]["iso"] == "2026-11-28T08:00:00"
    assert out["metrics"] == [  # a Bluetooth Date Time is local wall time; +01:00 is the gateway's (issue 17)
        {"code": 150020, "time": "2026-11-28T08:00:00+01:00", "unit": "mm[Hg]", "components": [
            {"code": 150021, "value": "116", "unit": "mm[Hg]"}, {"code": 150022, "value": "71", "unit": "mm[Hg]"},
            {"code": 150023, "value": "86", "unit": "mm[Hg]"}], "time_kind": "local"},
        {"code": 149546, "time": "2026-11-28T08:00:00+01:00", "value": "62", "unit": "/min", "time_kind": "local"},
    ]


def test_decode_glucose_default_offset_and_precision() -> None:
    result = CliRunner().invoke(decode_ble, ["2a18", "030100ea070b1c0900000000" "78b0" "11"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["decoded"]["concentration"] == "0.00120"
    assert out["metrics"][0]["value"] == "120" and out["metrics"][0]["unit"] == "mg/dL"


def test_malformed_payload_is_one_error_line() -> None:
    result = CliRunner().invoke(decode_ble, ["2A35", "03020304050607"])
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: 0x2A35 Blood Pressure Measurement: truncated at byte 7 reading Time Stamp "
                                     "(need 7 bytes, have 0); too short: need 14 bytes, have 7")


def test_unknown_characteristic_bad_hex_and_offset() -> None:
    for args, why, code in ((["2A00", "00"], "no decoder", 1), (["2A35", "zz"], "not hex", 1),
                            (["2A37", "0055", "--utc-offset", "1h"], "not a UTC offset", 2)):  # 2: a usage error
        result = CliRunner().invoke(decode_ble, args)
        assert result.exit_code == code and why in result.stderr


def test_parse_utc_offset() -> None:
    assert parse_utc_offset("-05:30").total_seconds() == -19800
    assert parse_utc_offset("Z").total_seconds() == 0
