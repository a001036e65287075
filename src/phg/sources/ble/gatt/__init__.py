"""Sans-I/O decoders for the Bluetooth SIG health profiles (GLS, BLS, WSS, BCS, HTS, PLXS, HRS, CGMS) and
the device facts around them (DIS, CTS, Battery): bytes in, frozen dataclasses out, GattError for
anything malformed. No Bluetooth stack is imported here; the session code moves bytes to these.

    decode(0x2A35, payload)            -> BloodPressureMeasurement   (registry.REGISTRY / lookup)
    to_metrics(measurement, utc_offset=..., received=...)  -> [model.Metric, ...]   (readings)
"""

from phg.sources.ble.gatt.numbers import Bits, DateTime, GattError, Special, float32, sfloat
from phg.sources.ble.gatt.readings import to_metrics
from phg.sources.ble.gatt.registry import CHARACTERISTICS, REGISTRY, Characteristic, decode, full_uuid, lookup

__all__ = [
    "CHARACTERISTICS", "REGISTRY", "Bits", "Characteristic", "DateTime", "GattError", "Special", "decode", "float32",
    "full_uuid", "lookup", "sfloat", "to_metrics",
]
