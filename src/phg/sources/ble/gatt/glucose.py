"""Glucose Service (GLS 1.0): Glucose Measurement 0x2A18, Glucose Measurement Context 0x2A34 and the
Record Access Control Point 0x2A52 (request builders and a parser for both directions).

Glucose records are stored on the meter and fetched with RACP: the collector writes "report stored
records", the meter notifies 0x2A18 (+ 0x2A34 when the Context Information Follows flag is set,
linked by sequence number) and ends with the RACP indication 06 00 01 01 (success).
"""

from __future__ import annotations

from dataclasses import dataclass

from phg.sources.ble.gatt import quirks
from phg.sources.ble.gatt.numbers import Bits, DateTime, Number, Reader

GLUCOSE_MEASUREMENT = 0x2A18
GLUCOSE_MEASUREMENT_CONTEXT = 0x2A34
RECORD_ACCESS_CONTROL_POINT = 0x2A52

_MEASUREMENT = "0x2A18 Glucose Measurement"
_CONTEXT = "0x2A34 Glucose Measurement Context"
_RACP = "0x2A52 Record Access Control Point"

# GLS 1.0 section 3.106 (GATT Specification Supplement, Glucose Measurement): Type and Sample Location nibbles.
GLUCOSE_TYPES: dict[int, str] = {
    1: "capillary whole blood", 2: "capillary plasma", 3: "venous whole blood", 4: "venous plasma",
    5: "arterial whole blood", 6: "arterial plasma", 7: "undetermined whole blood", 8: "undetermined plasma",
    9: "interstitial fluid", 10: "control solution",
}
SAMPLE_LOCATIONS: dict[int, str] = {
    1: "finger", 2: "alternate site test", 3: "earlobe", 4: "control solution", 15: "not available",
}
SENSOR_STATUS: dict[int, str] = {
    0: "device battery low", 1: "sensor malfunction", 2: "sample size insufficient", 3: "strip insertion error",
    4: "strip type incorrect", 5: "result higher than device can process", 6: "result lower than device can process",
    7: "sensor temperature too high", 8: "sensor temperature too low", 9: "sensor read interrupted",
    10: "general device fault", 11: "time fault",
}


@dataclass(frozen=True)
class GlucoseMeasurement:
    """0x2A18. concentration is in concentration_unit ("kg/L" or "mol/L") as sent; base_time is local
    wall-clock time, time_offset_min (if present) is added to it by the mapping."""

    flags: int
    sequence_number: int
    base_time: DateTime
    time_offset_min: int | None = None
    concentration: Number | None = None
    concentration_unit: str | None = None
    type: str | None = None
    sample_location: str | None = None
    sensor_status: Bits | None = None
    context_information_follows: bool = False


def decode_glucose_measurement(data: bytes) -> GlucoseMeasurement:
    r = Reader(data, _MEASUREMENT)
    flags = r.u8("Flags")
    sequence = r.u16("Sequence Number")
    base_time = r.date_time("Base Time")
    offset = r.s16("Time Offset") if flags & 0x01 else None
    concentration = unit = kind = location = None
    if flags & 0x02:
        concentration = r.sfloat("Glucose Concentration")
        unit = "mol/L" if flags & 0x04 else "kg/L"
        at = r.pos
        nibbles = r.u8("Type-Sample Location")
        kind = r.enum(nibbles & 0x0F, GLUCOSE_TYPES, "Type", at)
        location = r.enum(nibbles >> 4, SAMPLE_LOCATIONS, "Sample Location", at)
    status = Bits.decode(r.u16("Sensor Status Annunciation"), SENSOR_STATUS, 16) if flags & 0x08 else None
    r.finish()
    return GlucoseMeasurement(flags, sequence, base_time, offset, concentration, unit, kind, location, status,
                              bool(flags & 0x10))


# ---------------------------------------------------------------- context

CARBOHYDRATE_IDS: dict[int, str] = {1: "breakfast", 2: "lunch", 3: "dinner", 4: "snack", 5: "drink", 6: "supper",
                                    7: "brunch"}
MEALS: dict[int, str] = {1: "preprandial", 2: "postprandial", 3: "fasting", 4: "casual", 5: "bedtime"}
TESTERS: dict[int, str] = {1: "self", 2: "health care professional", 3: "lab test", 15: "not available"}
HEALTH: dict[int, str] = {1: "minor health issues", 2: "major health issues", 3: "during menses", 4: "under stress",
                          5: "no health issues", 15: "not available"}
MEDICATION_IDS: dict[int, str] = {1: "rapid acting insulin", 2: "short acting insulin", 3: "intermediate acting insulin",
                                  4: "long acting insulin", 5: "pre-mixed insulin"}


@dataclass(frozen=True)
class GlucoseMeasurementContext:
    """0x2A34, linked to a 0x2A18 record by sequence_number. Carbohydrate in kg; medication in
    medication_unit ("kg" or "L"); HbA1c in %; exercise duration in s (65535 = overrun)."""

    flags: int
    sequence_number: int
    extended_flags: int | None = None
    carbohydrate_id: str | None = None
    carbohydrate_kg: Number | None = None
    meal: str | None = None
    tester: str | None = None
    health: str | None = None
    exercise_duration_s: int | None = None
    exercise_intensity_pct: int | None = None
    medication_id: str | None = None
    medication: Number | None = None
    medication_unit: str | None = None
    hba1c_pct: Number | None = None


def decode_glucose_context(data: bytes) -> GlucoseMeasurementContext:
    r = Reader(data, _CONTEXT)
    flags = r.u8("Flags")
    fields: dict = {"flags": flags, "sequence_number": r.u16("Sequence Number")}
    if flags & 0x80:
        fields["extended_flags"] = r.u8("Extended Flags")
    if flags & 0x01:
        at = r.pos
        fields["carbohydrate_id"] = r.enum(r.u8("Carbohydrate ID"), CARBOHYDRATE_IDS, "Carbohydrate ID", at)
        fields["carbohydrate_kg"] = r.sfloat("Carbohydrate")
    if flags & 0x02:
        at = r.pos
        fields["meal"] = r.enum(r.u8("Meal"), MEALS, "Meal", at)
    if flags & 0x04:
        at = r.pos
        nibbles = r.u8("Tester-Health")
        fields["tester"] = r.enum(nibbles & 0x0F, TESTERS, "Tester", at)
        fields["health"] = r.enum(nibbles >> 4, HEALTH, "Health", at)
    if flags & 0x08:
        fields["exercise_duration_s"] = r.u16("Exercise Duration")
        at = r.pos
        intensity = r.u8("Exercise Intensity")
        if intensity > 100:
            raise r.error("Exercise Intensity", f"reserved value {intensity} at byte {at} in Exercise Intensity "
                                                "(percent, 0-100)", at)
        fields["exercise_intensity_pct"] = intensity
    if flags & 0x10:
        at = r.pos
        fields["medication_id"] = r.enum(r.u8("Medication ID"), MEDICATION_IDS, "Medication ID", at)
        fields["medication"] = r.sfloat("Medication")
        fields["medication_unit"] = "L" if flags & 0x20 else "kg"
    if flags & 0x40:
        fields["hba1c_pct"] = r.sfloat("HbA1c")
    r.finish()
    return GlucoseMeasurementContext(**fields)


# ---------------------------------------------------------------- Record Access Control Point
# GLS 1.0 section 3.3.2 / CGMS 1.0.1 section 3.7: op codes, operators, filter types and response codes.

OP_CODES: dict[int, str] = {
    1: "Report stored records", 2: "Delete stored records", 3: "Abort operation",
    4: "Report number of stored records", 5: "Number of stored records response", 6: "Response code",
}
OPERATORS: dict[int, str] = {
    0: "Null", 1: "All records", 2: "Less than or equal to", 3: "Greater than or equal to",
    4: "Within range of (inclusive)", 5: "First record", 6: "Last record",
}
FILTER_TYPES: dict[int, str] = {1: "sequence number (Glucose) / time offset (CGM)", 2: "user facing time"}
RESPONSE_CODES: dict[int, str] = {
    1: "Success", 2: "Op code not supported", 3: "Invalid operator", 4: "Operator not supported",
    5: "Invalid operand", 6: "No records found", 7: "Abort unsuccessful", 8: "Procedure not completed",
    9: "Operand not supported",
}
_CODE = {name: code for code, name in OP_CODES.items()}
_OPERATOR = {name: code for code, name in OPERATORS.items()}


@dataclass(frozen=True)
class RacpMessage:
    """One RACP value, request (op codes 1-4) or response (5-6). operands: the filter values of a
    request (ints for sequence number / time offset, DateTime for user facing time). A response naming
    a request op code or a response code the specification reserves keeps it as "reserved op code N" /
    "reserved response code N" (see quirks)."""

    op_code: str
    operator: str
    operand: bytes = b""
    filter_type: str | None = None
    operands: tuple[int | DateTime, ...] = ()
    request_op_code: str | None = None
    response_code: str | None = None
    number_of_records: int | None = None

    @property
    def is_response(self) -> bool:
        return self.op_code in (OP_CODES[5], OP_CODES[6])

    @property
    def succeeded(self) -> bool:
        return self.response_code == "Success"


def decode_racp(data: bytes) -> RacpMessage:
    r = Reader(data, _RACP)
    op = r.enum(r.u8("Op Code"), OP_CODES, "Op Code", 0)
    operator = r.enum(r.u8("Operator"), OPERATORS, "Operator", 1)
    operand = r.data[2:]
    if op == "Response code":
        request, code = r.u8("Request Op Code"), r.u8("Response Code Value")
        _null_operator(r, operator)
        if request not in OP_CODES:
            quirks.warn(quirks.RACP_RESERVED_REQUEST_OP_CODE, _RACP, f"response to the reserved op code {request} "
                        "(byte 2) taken as the answer to the procedure in progress")
        if code not in RESPONSE_CODES:
            quirks.warn(quirks.RACP_RESERVED_RESPONSE_CODE, _RACP, f"reserved response code {code} (byte 3) "
                        "taken as: the procedure ended, not successfully")
        r.finish()
        return RacpMessage(op, operator, operand, request_op_code=OP_CODES.get(request, f"reserved op code {request}"),
                           response_code=RESPONSE_CODES.get(code, f"reserved response code {code}"))
    if op == "Number of stored records response":
        if r.remaining == 1:
            quirks.warn(quirks.RACP_SHORT_OPERAND, _RACP, "Number of Records in 1 byte (uint16 expected) read as uint8")
            count = r.u8("Number of Records")
        else:
            count = r.u16("Number of Records")
        _null_operator(r, operator)
        r.finish()
        return RacpMessage(op, operator, operand, number_of_records=count)
    if op == "Abort operation":
        _null_operator(r, operator)
        r.finish()
        return RacpMessage(op, operator, operand)
    if operator == "Null":
        raise r.error("Operator", f"{op} needs an operator, got Null at byte 1", 1)
    values = {"Less than or equal to": 1, "Greater than or equal to": 1, "Within range of (inclusive)": 2}.get(operator, 0)
    if not values:
        r.finish()
        return RacpMessage(op, operator, operand)
    at = r.pos
    kind = r.enum(r.u8("Filter Type"), FILTER_TYPES, "Filter Type", at)
    if kind == FILTER_TYPES[1]:
        operands: tuple = tuple(r.u16("Operand") for _ in range(values))
    else:
        operands = tuple(r.date_time("Operand (user facing time)") for _ in range(values))
    r.finish()
    return RacpMessage(op, operator, operand, filter_type=kind, operands=operands)


def _null_operator(r: Reader, operator: str) -> None:
    if operator != "Null":
        raise r.error("Operator", f"operator must be Null for this op code, got {operator!r} at byte 1", 1)


def racp_request(op_code: str, operator: str, *values: int, filter_type: int = 0x01) -> bytes:
    """Encode a request: racp_request("Report stored records", "Greater than or equal to", 12) ->
    01 03 01 0C 00. Values are uint16 filter operands (sequence number for GLS, time offset for CGMS)."""
    if op_code not in ("Report stored records", "Delete stored records", "Abort operation",
                       "Report number of stored records"):
        raise ValueError(f"{op_code!r} is not a request op code")
    need = {"Less than or equal to": 1, "Greater than or equal to": 1, "Within range of (inclusive)": 2}.get(operator, 0)
    if len(values) != need:
        raise ValueError(f"operator {operator!r} takes {need} operand(s), got {len(values)}")
    if op_code == "Abort operation" and operator != "Null":
        raise ValueError("Abort operation takes the Null operator")
    body = bytes([_CODE[op_code], _OPERATOR[operator]])
    if need:
        body += bytes([filter_type]) + b"".join(v.to_bytes(2, "little") for v in values)
    return body


def report_all_records() -> bytes:
    return racp_request("Report stored records", "All records")


def report_records_from(sequence_number: int) -> bytes:
    """Records with sequence number >= the given one: how a gateway fetches only what is new."""
    return racp_request("Report stored records", "Greater than or equal to", sequence_number)


def report_first_record() -> bytes:
    return racp_request("Report stored records", "First record")


def report_last_record() -> bytes:
    return racp_request("Report stored records", "Last record")


def report_number_of_records() -> bytes:
    return racp_request("Report number of stored records", "All records")


def delete_all_records() -> bytes:
    return racp_request("Delete stored records", "All records")


def abort_operation() -> bytes:
    return racp_request("Abort operation", "Null")

