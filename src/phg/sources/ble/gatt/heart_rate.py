"""Heart Rate Service (HRS 1.0): Heart Rate Measurement 0x2A37."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from phg.sources.ble.gatt.numbers import Reader

HEART_RATE_MEASUREMENT = 0x2A37

# Flags bits 1-2: bit 2 = contact feature supported, bit 1 = contact detected.
SENSOR_CONTACT: dict[int, str] = {0: "not supported", 1: "not supported", 2: "not detected", 3: "detected"}


@dataclass(frozen=True)
class HeartRateMeasurement:
    """heart_rate_bpm in beats per minute; rr_intervals in units of 1/1024 s as sent."""

    flags: int
    heart_rate_bpm: int
    sensor_contact: str
    energy_expended_kj: int | None = None
    rr_intervals: tuple[int, ...] = ()

    @property
    def rr_intervals_ms(self) -> tuple[Decimal, ...]:
        """RR intervals in milliseconds, exact (33/1024 s = 32.2265625 ms)."""
        return tuple(Decimal(rr) * 1000 / 1024 for rr in self.rr_intervals)


def decode_heart_rate_measurement(data: bytes) -> HeartRateMeasurement:
    r = Reader(data, "0x2A37 Heart Rate Measurement")
    flags = r.u8("Flags")
    rate = r.u16("Heart Rate Measurement Value (uint16)") if flags & 0x01 else r.u8("Heart Rate Measurement Value (uint8)")
    energy = r.u16("Energy Expended") if flags & 0x08 else None
    rr: tuple[int, ...] = ()
    if flags & 0x10:
        if r.remaining == 0:
            raise r.error("RR-Interval", f"RR-interval flag set but no RR values (at byte {r.pos})")
        if r.remaining % 2:
            raise r.error("RR-Interval", f"truncated at byte {len(r.data) - 1} reading RR-Interval "
                                         f"(need 2 bytes, have 1): RR values are uint16")
        rr = tuple(r.u16("RR-Interval") for _ in range(r.remaining // 2))
    r.finish()
    return HeartRateMeasurement(flags, rate, SENSOR_CONTACT[flags >> 1 & 0x3], energy, rr)
