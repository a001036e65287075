"""Which decoder reads which characteristic: one table, keyed by the 16-bit UUID and by the 128-bit
string form bleak reports ("00002a18-0000-1000-8000-00805f9b34fb")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from phg.sources.ble.gatt import blood_pressure, cgm, device_info, glucose, heart_rate, pulse_oximeter, thermometer, weight

BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"


@dataclass(frozen=True)
class Characteristic:
    uuid16: int
    name: str
    decode: Callable[[bytes], Any]

    @property
    def uuid(self) -> str:
        return full_uuid(self.uuid16)


def full_uuid(uuid16: int) -> str:
    """The Bluetooth Base UUID form of a 16-bit UUID, lower case as bleak gives it."""
    return f"0000{uuid16:04x}{BASE_UUID_SUFFIX}"


CHARACTERISTICS: tuple[Characteristic, ...] = (
    Characteristic(0x2A18, "Glucose Measurement", glucose.decode_glucose_measurement),
    Characteristic(0x2A34, "Glucose Measurement Context", glucose.decode_glucose_context),
    Characteristic(0x2A52, "Record Access Control Point", glucose.decode_racp),
    Characteristic(0x2A35, "Blood Pressure Measurement", blood_pressure.decode_blood_pressure_measurement),
    Characteristic(0x2A36, "Intermediate Cuff Pressure", blood_pressure.decode_intermediate_cuff_pressure),
    Characteristic(0x2A9D, "Weight Measurement", weight.decode_weight_measurement),
    Characteristic(0x2A9E, "Weight Scale Feature", weight.decode_weight_scale_feature),
    Characteristic(0x2A9C, "Body Composition Measurement", weight.decode_body_composition_measurement),
    Characteristic(0x2A1C, "Temperature Measurement", thermometer.decode_temperature_measurement),
    Characteristic(0x2A1D, "Temperature Type", thermometer.decode_temperature_type),
    Characteristic(0x2A1E, "Intermediate Temperature", thermometer.decode_intermediate_temperature),
    Characteristic(0x2A5E, "PLX Spot-Check Measurement", pulse_oximeter.decode_plx_spot_check),
    Characteristic(0x2A5F, "PLX Continuous Measurement", pulse_oximeter.decode_plx_continuous),
    Characteristic(0x2A60, "PLX Features", pulse_oximeter.decode_plx_features),
    Characteristic(0x2A37, "Heart Rate Measurement", heart_rate.decode_heart_rate_measurement),
    Characteristic(0x2AA7, "CGM Measurement", cgm.decode_cgm_measurement),
    Characteristic(0x2AAA, "CGM Session Start Time", cgm.decode_cgm_session_start_time),
    Characteristic(0x2A29, "Manufacturer Name String", device_info.decode_manufacturer_name),
    Characteristic(0x2A24, "Model Number String", device_info.decode_model_number),
    Characteristic(0x2A25, "Serial Number String", device_info.decode_serial_number),
    Characteristic(0x2A26, "Firmware Revision String", device_info.decode_firmware_revision),
    Characteristic(0x2A27, "Hardware Revision String", device_info.decode_hardware_revision),
    Characteristic(0x2A28, "Software Revision String", device_info.decode_software_revision),
    Characteristic(0x2A23, "System ID", device_info.decode_system_id),
    Characteristic(0x2A2A, "IEEE 11073-20601 Regulatory Certification Data List",
                   device_info.decode_regulatory_certification_data_list),
    Characteristic(0x2A2B, "Current Time", device_info.decode_current_time),
    Characteristic(0x2A08, "Date Time", device_info.decode_date_time),
    Characteristic(0x2A0F, "Local Time Information", device_info.decode_local_time_information),
    Characteristic(0x2A19, "Battery Level", device_info.decode_battery_level),
)

# The registry: 16-bit UUID (int) and 128-bit UUID (str, lower case) -> Characteristic.
REGISTRY: dict[int | str, Characteristic] = {
    key: c for c in CHARACTERISTICS for key in (c.uuid16, c.uuid)
}


def lookup(uuid: int | str) -> Characteristic:
    """The characteristic for 0x2A18, "2A18", "0x2a18" or "00002a18-0000-1000-8000-00805f9b34fb";
    KeyError names the UUID when phg has no decoder for it."""
    key: int | str
    if isinstance(uuid, int):
        key = uuid
    elif len(uuid) == 36:
        key = uuid.lower()
    else:
        try:
            key = int(uuid.lower().removeprefix("0x"), 16)
        except ValueError:
            raise KeyError(f"{uuid!r} is not a characteristic UUID") from None
    try:
        return REGISTRY[key]
    except KeyError:
        raise KeyError(f"no decoder for characteristic {uuid!r}; known: "
                       + ", ".join(f"0x{c.uuid16:04X}" for c in CHARACTERISTICS)) from None


def decode(uuid: int | str, data: bytes) -> Any:
    """Decode one characteristic value; GattError when the bytes are malformed."""
    return lookup(uuid).decode(data)
