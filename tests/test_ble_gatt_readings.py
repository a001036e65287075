"""Decoded GATT measurements -> model Metrics -> a FHIR transaction the mapping accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.bundle import Bundle

from phg.errors import MappingError
from phg.fhir import build_transaction, to_json
from phg.model import Device, Gateway, PatientRef, Reading, from_canonical_json, parse_reading
from phg.sources.ble.gatt import decode, to_metrics
from phg.sources.ble.gatt.readings import offset_in

PLUS_1 = timedelta(hours=1)
RECEIVED = datetime(2026, 11, 28, 9, 0, 0, 123456, tzinfo=timezone(PLUS_1))
RECEPTION = RECEIVED.replace(microsecond=123000)  # the time of reception a metric takes: milliseconds kept
GATEWAY = Gateway("02AB7FFFFE000001")
PATIENT = PatientRef("urn:oid:2.999.1", "patient-1")


def metrics(uuid: int, hex_: str, **kwargs):
    return to_metrics(decode(uuid, bytes.fromhex(hex_)), utc_offset=kwargs.pop("utc_offset", PLUS_1),
                      received=RECEIVED, **kwargs)


def doc(metric) -> dict:
    return Reading(Device(system_id="FEEDABEEDEAD77C3"), PATIENT, (metric,)).to_document()["metrics"][0]


# ---------------------------------------------------------------- glucose

GLUCOSE_120_MG_DL = "03" "0100" "ea07" "0b1c" "090000" "0000" "78b0" "11"  # offset 0, 0xB078 kg/L, cap. WB, finger
GLUCOSE_5_5_MMOL = "07" "0200" "ea07" "0b1c" "090000" "1e00" "37c0" "12"  # offset +30 min, 0xC037 mol/L, cap. plasma


def test_glucose_kg_per_l_becomes_exact_mg_per_dl() -> None:
    m, *_ = metrics(0x2A18, GLUCOSE_120_MG_DL)
    assert (m.code, m.unit, str(m.value), m.time_digits) == (160184, "mg/dL", "120", 0)
    assert m.time == datetime(2026, 11, 28, 9, 0, tzinfo=timezone(PLUS_1))


def test_glucose_mol_per_l_becomes_mmol_per_l_and_time_offset_is_added() -> None:
    m, *_ = metrics(0x2A18, GLUCOSE_5_5_MMOL)
    assert (m.code, m.unit, str(m.value)) == (160188, "mmol/L", "5.5")
    assert doc(m)["time"] == "2026-11-28T09:30:00+01:00"


def test_glucose_vector_sample_type_and_offset() -> None:
    m, *_ = metrics(0x2A18, "1b0100e307021b0b0a1efbff1e00120501")
    assert m.code == 160188 and m.unit == "mg/dL" and m.value == Decimal(3000000)  # 30 kg/L, as sent
    assert m.time.isoformat() == "2019-02-27T11:05:30+01:00"  # 11:10:30 - 5 min


def test_glucose_nan_is_invalid_without_value() -> None:
    m, *_ = metrics(0x2A18, GLUCOSE_120_MG_DL.replace("78b0", "ff07"))
    assert m.value is None and m.status == ("invalid",)


# ---------------------------------------------------------------- blood pressure

BP_VECTOR = "1e8a00580078000000041114293b3c00012700"  # year unknown -> time of reception
BP_DATED = "06" "7400" "4700" "5600" "ea070b1c080000" "3e00"  # 116/71/86 mmHg, 2026-11-28 08:00, pulse 62


def test_blood_pressure_is_compound_and_pulse_its_own() -> None:
    bp, pulse = metrics(0x2A35, BP_DATED)
    assert (bp.code, bp.value, bp.unit) == (150020, None, "mm[Hg]")
    assert [(c.code, str(c.value), c.unit) for c in bp.components] == [
        (150021, "116", "mm[Hg]"), (150022, "71", "mm[Hg]"), (150023, "86", "mm[Hg]")]
    assert (pulse.code, str(pulse.value), pulse.unit) == (149546, "62", "/min")
    assert bp.time == pulse.time == datetime(2026, 11, 28, 8, 0, tzinfo=timezone(PLUS_1))


def test_blood_pressure_unknown_year_takes_time_of_reception() -> None:
    bp, *_ = metrics(0x2A35, BP_VECTOR)
    assert bp.time == RECEPTION


def test_blood_pressure_nan_mean_is_left_out_and_kpa_kept() -> None:
    (bp,) = metrics(0x2A35, "01" "9ff0" "5bf0" "ff07")  # kPa 15.9 / 9.1 / NaN
    assert bp.unit == "kPa" and [(c.code, str(c.value)) for c in bp.components] == [(150021, "15.9"), (150022, "9.1")]


def test_a_failed_blood_pressure_is_stored_delivered_as_absent_and_its_pulse_kept() -> None:
    """Review B finding 2: a cuff that sends NaN systolic and diastolic (BLS: the measurement failed) gives a compound
    without components, status invalid; the outbox's text of it was refused by delivery ("is compound: give its
    components"), dead-lettering the pulse rate with it."""
    bp, pulse = metrics(0x2A35, "06" "ff07" "ff07" "ff07" "ea070b1c080000" "4800")
    assert (bp.code, bp.components, bp.status) == (150020, (), ("invalid",)) and str(pulse.value) == "72"
    reading = Reading(Device(bt_address="00-1C-05-00-78-25"), PatientRef("urn:oid:1.2.3.4", "pt-1"), (bp, pulse))
    stored = from_canonical_json(reading.to_json(), "outbox item 1")
    assert stored == reading
    observation = build_transaction([stored], Gateway(system_id="02AB7FFFFE00C1C1")).bundle["entry"][-2]["resource"]
    assert observation["dataAbsentReason"]["coding"][0]["code"] == "error" and "component" not in observation


def test_intermediate_cuff_pressure_gives_no_metrics() -> None:
    assert metrics(0x2A36, "00" "5000" "ff07" "ff07") == []


# ---------------------------------------------------------------- weight

def test_weight_resolution_from_feature() -> None:
    feature = decode(0x2A9E, bytes.fromhex("8f000000"))  # 0.5 kg, 0.01 m
    weight, height, bmi = metrics(0x2A9D, "08b036f500d606", weight_feature=feature)
    assert (weight.code, str(weight.value), weight.unit) == (188736, "70.0", "kg")
    assert (height.code, str(height.value), height.unit) == (188740, "175", "cm")
    assert (bmi.code, str(bmi.value), bmi.unit) == (188752, "24.5", "kg/m2")
    without = metrics(0x2A9D, "08b036f500d606")
    assert [str(m.value) for m in without] == ["70.000", "175.0", "24.5"]


def test_weight_imperial_and_unsuccessful() -> None:
    (w,) = metrics(0x2A9D, "01" "606d")  # 28000 x 0.01 lb
    assert (str(w.value), w.unit) == ("280.00", "[lb_av]")
    (failed,) = metrics(0x2A9D, "00ffff")
    assert failed.value is None and failed.status == ("invalid",)


def test_body_composition_body_fat() -> None:
    (fat,) = metrics(0x2A9C, "00003200")
    assert (fat.code, str(fat.value), fat.unit) == (188748, "5.0", "%")


def test_body_composition_two_packets_are_assembled() -> None:
    from phg.sources.ble.gatt.weight import BodyCompositionAssembler

    assembler = BodyCompositionAssembler()
    first = decode(0x2A9C, bytes.fromhex("4010" "5000" "e02e"))  # multi-packet, fat-free mass 60 kg
    second = decode(0x2A9C, bytes.fromhex("0014" "5000" "b036"))  # multi-packet, weight 70 kg
    assert assembler.feed(first) is None
    whole = assembler.feed(second)
    assert whole is not None and whole.fat_free_mass == Decimal(60) and whole.weight == Decimal(70)
    assert assembler.pending is None


# ---------------------------------------------------------------- thermometer, oximeter, heart rate, CGM

def test_temperature_site_and_unit() -> None:
    (t,) = metrics(0x2A1C, "06b00e00fedc070c050b321b04")
    assert (t.code, str(t.value), t.unit) == (188432, "37.60", "Cel")  # MDC_TEMP_FINGER
    (body,) = metrics(0x2A1C, "01" "760300ff")  # 88.6 degF, no type -> MDC_TEMP_BODY, time of reception
    assert (body.code, str(body.value), body.unit, body.time) == (150364, "88.6", "[degF]", RECEPTION)


def test_plx_spot_check_status_maps_to_measurement_status() -> None:
    spo2, pulse, *_ = metrics(0x2A5E, "0facf3bef5e8070b1d170839204022000066e3")  # + device status bits
    assert (spo2.code, str(spo2.value), spo2.unit) == (150456, "94.0", "%")
    assert (pulse.code, str(pulse.value), pulse.unit) == (149530, "147.0", "/min")
    assert spo2.status == pulse.status == ("questionable", "msmt-ongoing")
    assert spo2.time.isoformat() == "2024-11-29T23:08:57+01:00"


def test_plx_clock_not_set_takes_time_of_reception() -> None:
    spo2, _ = metrics(0x2A5E, "11" "6200" "4800" "e8070b1d170839")
    assert spo2.time == RECEPTION and spo2.status == ()


def test_heart_rate() -> None:
    (hr,) = metrics(0x2A37, "1e5532002100")
    assert (hr.code, str(hr.value), hr.unit, hr.time) == (147842, "85", "/min", RECEPTION)


def test_cgm_needs_session_start_and_uses_its_zone() -> None:
    with pytest.raises(MappingError, match="Session Start Time"):
        metrics(0x2AA7, "06000c1005000600 0c100600".replace(" ", ""))
    session = decode(0x2AAA, bytes.fromhex("ea070b1c080000" "08" "04"))  # 08:00, UTC+2 + 1 h DST
    first, second = metrics(0x2AA7, "06000c10050006000c100600", session_start=session)
    assert (first.code, str(first.value), first.unit) == (160212, "120", "mg/dL")
    assert first.time.isoformat() == "2026-11-28T08:05:00+03:00" and second.time.minute == 6


def test_zone_function_gives_offset_per_wall_clock_time() -> None:
    berlin = offset_in(ZoneInfo("Europe/Berlin"))
    (summer,) = metrics(0x2A1C, "02" "6e0100ff" "ea07070f0c0000", utc_offset=berlin)
    (winter,) = metrics(0x2A1C, "02" "6e0100ff" "ea070b1c0c0000", utc_offset=berlin)
    assert summer.time.utcoffset() == timedelta(hours=2) and winter.time.utcoffset() == timedelta(hours=1)


def test_received_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        to_metrics(decode(0x2A37, b"\x00\x40"), utc_offset=PLUS_1, received=datetime(2026, 1, 1))


def test_non_measurements_give_no_metrics() -> None:
    for uuid, hex_ in ((0x2A52, "06000101"), (0x2A34, "0200" "00" "01"), (0x2A9E, "00000000"), (0x2A19, "64")):
        assert to_metrics(decode(uuid, bytes.fromhex(hex_)), utc_offset=PLUS_1, received=RECEIVED) == []


# ---------------------------------------------------------------- through the model and FHIR mapping

def test_metrics_build_a_valid_fhir_transaction() -> None:
    session = decode(0x2AAA, bytes.fromhex("ea070b1c080000" "04" "00"))
    all_metrics = (
        metrics(0x2A18, GLUCOSE_120_MG_DL) + metrics(0x2A18, GLUCOSE_5_5_MMOL) + metrics(0x2A35, BP_DATED)
        + metrics(0x2A9D, "0ab036ea070b1c091e00f500d606", weight_feature=decode(0x2A9E, bytes.fromhex("8f000000")))
        + metrics(0x2A5E, "0facf3bef5e8070b1d170839204022000066e3") + metrics(0x2A5F, "1c5f005a00200000000057f0")
        + metrics(0x2A1C, "06b00e00fedc070c050b321b04") + metrics(0x2A37, "0055")
        + metrics(0x2A9C, "00003200") + metrics(0x2AA7, "06000c10050006000c100600", session_start=session)
        + metrics(0x2A35, "01" "9ff0" "5bf0" "ff07") + metrics(0x2A9D, "00ffff")
    )
    reading = Reading(Device(system_id="FEEDABEEDEAD77C3", manufacturer="Acme"), PATIENT, tuple(all_metrics))
    assert parse_reading(json.loads(reading.to_json(), parse_float=Decimal)) == reading  # the model accepts them
    transaction = build_transaction([reading], GATEWAY)
    bundle = json.loads(to_json(transaction.bundle), parse_float=Decimal)
    Bundle.model_validate(bundle)
    observations = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert len(observations) == len(all_metrics)
    glucose = next(o for o in observations if o["code"]["coding"][0]["code"] == "160184")
    assert glucose["valueQuantity"] == {"value": Decimal("120"), "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                        "code": "mg/dL"}
    assert glucose["effectiveDateTime"] == "2026-11-28T09:00:00+01:00"


def test_received_in_utc_is_fine() -> None:
    (hr,) = to_metrics(decode(0x2A37, b"\x00\x40"), utc_offset=PLUS_1, received=datetime(2026, 1, 1, tzinfo=UTC))
    assert hr.time.utcoffset() == timedelta(0)
