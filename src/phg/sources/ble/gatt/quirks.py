"""Real devices' deviations from the Bluetooth SIG profiles that phg accepts, because their meaning is
unambiguous: the value is decoded, the deviation is logged at WARNING under a stable name (the quirk
and the characteristic; never a measured value), and the device's data is kept. What is really
malformed (a mandatory field cut short, a length that contradicts the flags, a CRC that does not
match) is still refused with GattError. docs/device-quirks.md lists them for users.

The widely used collector libraries accept the same values. NordicSemiconductor/Android-BLE-Common-
Library (ble-common/src/main/java/no/nordicsemi/android/ble/common/callback/, e.g.
glucose/GlucoseMeasurementDataCallback.java at b4be22aa and RecordAccessControlPointDataCallback.java
at 65494326) checks a value's minimum length only, so bytes after the fields are ignored; reads a
Number of Stored Records of 1, 2 or 4 bytes; and hands any request op code and any response code of a
RACP Response Code indication to the application. Its CGM Measurement callback delivers a record's
Time Offset as such: the application places it once it knows the Session Start Time.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

TRAILING_BYTES = "quirk:trailing-bytes"
"""Bytes after the last field the flags announce (padding to a fixed length): ignored."""
RACP_SHORT_OPERAND = "quirk:racp-short-operand"
"""A RACP Number of Stored Records response with a 1-byte count (GLS 1.0 / CGMS 1.0.1: uint16): read as uint8."""
RACP_RESERVED_REQUEST_OP_CODE = "quirk:racp-reserved-request-op-code"
"""A RACP Response Code naming a request op code the specification reserves: it answers the one RACP
procedure in progress (GLS 1.0 and CGMS 1.0.1 run one at a time: a request written while one runs gets
the Procedure Already In Progress error), so its response code counts."""
RACP_RESERVED_RESPONSE_CODE = "quirk:racp-reserved-response-code"
"""A RACP Response Code value the specification reserves: the procedure ended, not successfully."""
CGM_BEFORE_SESSION_START = "quirk:cgm-before-session-start"
"""A CGM Measurement before a usable CGM Session Start Time: its records are held until one is known."""

QUIRKS = (TRAILING_BYTES, RACP_SHORT_OPERAND, RACP_RESERVED_REQUEST_OP_CODE, RACP_RESERVED_RESPONSE_CODE,
          CGM_BEFORE_SESSION_START)


def warn(quirk: str, characteristic: str, what: str) -> None:
    """Log one quirk: "quirk:NAME: 0x2A35 Blood Pressure Measurement: what was accepted"."""
    logger.warning("%s: %s: %s", quirk, characteristic, what)
