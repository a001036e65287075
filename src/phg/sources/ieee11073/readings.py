"""Manager events -> phg Readings (pure functions; the caller supplies the clock and the UTC offset).

Device identity comes from the MDS (System-Id EUI-64, System-Model, Production-Specification, System-Type-
Spec-List); metric codes are 32-bit MDC codes, units UCUM. Device timestamps:
- Absolute-Time is local wall-clock time without zone (20601 §6.3.2.1): the gateway attaches `utc_offset`
  (its own zone, as the BLE source does) -> aware datetime; 1/100 s digits kept when the device gave them.
- Base-Offset-Time carries its own offset.
Each Metric's stamp says which (model.Stamp): the PHD IG identifier encodes the reported value, not the placing.
- Relative / high-resolution ticks are placed on the gateway's timeline through the MDS Relative-Time read
  at association (gateway time then + elapsed ticks); without that read, or with no timestamp at all, the
  time of reception is used (PHD IG: no device timestamp -> time of reception), to the millisecond, each scan
  or person of a report and each report of an association RECEPTION_STEP after the last (phg.model.Receptions, as
  Bluetooth's): two undated readings are two readings, not one PHD IG 2.0.0 identifier twice.
The Reading's DeviceClock (PHD IG coincident time stamp) is the MDS Date-and-Time as read at association.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from phg import mdc
from phg.model import (
    BASE_OFFSET,
    LOCAL,
    RECEIVED_STAMP,
    RECEPTION_DIGITS,
    RECEPTION_STEP,
    TICKS,
    Bit,
    BitString,
    Component,
    Device,
    DeviceClock,
    Metric,
    PatientRef,
    Reading,
    Receptions,
    Specialization,
    Stamp,
    reception_time,
)
from phg.sources.ieee11073 import nomenclature as nom
from phg.sources.ieee11073.apdu import ApduError
from phg.sources.ieee11073.manager import MdsInfo, Measurements, Observation
from phg.sources.ieee11073.mder import HI_RES_TICKS_PER_SECOND, TICKS_PER_SECOND, AbsoluteTime, BaseOffsetTime

log = logging.getLogger(__name__)

MDC_ATTR_TIME_ABS_CODE = 67975  # clock-type codes of PHD IG coincident time stamps (partition OBJ: 1 << 16 | attr id)
MDC_ATTR_TIME_REL_CODE = 67983
MDC_ATTR_TIME_REL_HI_RES_CODE = 68072


def device_of(mds: MdsInfo) -> Device:
    return Device(
        system_id=mds.system_id or None,
        manufacturer=mds.manufacturer or None,
        model=mds.model or None,
        serial=mds.serial or None,
        firmware=mds.firmware or None,
        specializations=tuple(Specialization(nom.code32(nom.PART_INFRA, t), v) for t, v in mds.specializations),
    )


def device_clock(mds: MdsInfo, read_at: datetime | None, utc_offset: timedelta) -> DeviceClock | None:
    """The device's absolute clock as read with the MDS attributes (None if it has none or was not read)."""
    if read_at is None or mds.time_abs is None:
        return None
    sync = nom.code32(nom.PART_INFRA, mds.time_info.sync_protocol) if mds.time_info else None
    try:
        device_time = None if mds.time_abs.unset else mds.time_abs.local.replace(tzinfo=timezone(utc_offset))
    except ApduError:
        device_time = None  # time fault: the device clock holds no valid date
    return DeviceClock(gateway_time=read_at, device_time=device_time, clock_type=MDC_ATTR_TIME_ABS_CODE, sync=sync)


# How each 20601 time stamp is reported (model.Stamp, the PHD IG identifier's time part): Absolute-Time is
# local wall time without a zone (the offset that places it is the gateway's); Base-Offset-Time a UTC instant
# with the device's own offset ("base-offset"); Relative-Time and HighResRelativeTime tick counters.
ABSOLUTE_STAMP = Stamp(LOCAL, device_offset=False)
BASE_OFFSET_STAMP = Stamp(BASE_OFFSET, device_offset=True)


def metric_time(obs: Observation, mds: MdsInfo, utc_offset: timedelta, received_at: datetime,
                read_at: datetime | None) -> tuple[datetime, int, Stamp]:
    """(aware device timestamp, fractional digits, how the device reported it) of one observation. A tick
    counter's time stays its ticks in the Stamp even when it cannot be placed (the time of reception)."""
    t = obs.time
    if isinstance(t, AbsoluteTime) and not t.unset:
        return t.local.replace(tzinfo=timezone(utc_offset)), 2 if t.hundredths else 0, ABSOLUTE_STAMP
    if isinstance(t, BaseOffsetTime):
        return t.datetime, 3 if t.fraction else 0, BASE_OFFSET_STAMP
    if isinstance(t, tuple):
        kind, ticks = t
        rate = TICKS_PER_SECOND if kind == "rel" else HI_RES_TICKS_PER_SECOND
        stamp = Stamp(TICKS, device_offset=False, ticks=ticks, tick_rate=rate)
        if kind == "rel" and read_at is not None and mds.time_rel is not None:
            delta = ((ticks - mds.time_rel + 2**31) % 2**32 - 2**31) / TICKS_PER_SECOND  # u32 wraps every 6.2 days
            return read_at + timedelta(seconds=delta), 3, stamp
        if kind == "hi-res" and read_at is not None and mds.time_hi_res is not None:
            return read_at + timedelta(seconds=(ticks - mds.time_hi_res) / HI_RES_TICKS_PER_SECOND), 6, stamp
        return received_at, 0, stamp
    return reception_time(received_at), RECEPTION_DIGITS, RECEIVED_STAMP


def _status(obs: Observation) -> tuple[str, ...]:
    names = [name for bit, name in nom.MEASUREMENT_STATUS_BITS.items() if obs.status & (0x8000 >> bit)]
    special = obs.value.special if obs.value is not None else None
    if special and not names:
        names.append("not-available" if special == "NaN" else "invalid")
    return tuple(names)


def enumerated_of(code: int, value: int, length: int) -> dict:
    """An enumeration's value (of type `code`) as Metric keywords, per the PHD IG 2.0.0: an
    Enum-Observed-Value-Simple-OID is a coded value whose partition is the Type's
    (CodedEnumerationObservationProfile: "The partition is obtained from the Type attribute"); a
    Basic/Simple-Bit-Str is a BITs value of 16/32 bits, its set bits by MDER number (bit 0 the most
    significant) with the ASN1ToHL7 names phg knows. Only set bits are reported: the status attributes
    phg names are all events (mdc.ASN1_BITS)."""
    if not length:
        return {"coded": nom.code32(code >> 16, value)}
    names = mdc.ASN1_BITS.get(code, {})
    return {"bits": BitString(length, tuple(Bit(n, names.get(n)) for n in range(length) if value >> (length - 1 - n) & 1))}


def metric_of(obs: Observation, mds: MdsInfo, utc_offset: timedelta, received_at: datetime,
              read_at: datetime | None) -> Metric | None:
    """A Metric (numeric, compound, coded or BITs, with its Supplemental-Types), or None for what the neutral
    model cannot hold yet (strings, unknown units)."""
    if obs.type is not None and obs.enum_value is not None:
        time, digits, stamp = metric_time(obs, mds, utc_offset, received_at, read_at)
        return Metric(code=obs.type, time=time, time_digits=digits, status=_status(obs), stamp=stamp,
                      supplemental=obs.supplemental, **enumerated_of(obs.type, obs.enum_value, obs.enum_length))
    unit = nom.UNITS.get(obs.unit or -1, (None, None))[1]
    if obs.type is None or unit is None or (obs.value is None and not obs.components):
        return None
    time, digits, stamp = metric_time(obs, mds, utc_offset, received_at, read_at)
    components = tuple(Component(code, n.decimal, unit) for code, n in obs.components if n.decimal is not None)
    return Metric(code=obs.type, time=time, value=obs.value.decimal if obs.value is not None else None,
                  unit=unit, time_digits=digits, status=_status(obs), components=components, stamp=stamp,
                  supplemental=obs.supplemental)


def readings_of(m: Measurements, patient: PatientRef, utc_offset: timedelta, received_at: datetime,
                mds_read_at: datetime | None = None) -> list[Reading]:
    """One Reading per person in the report (most reports have one), and for grouped reports one per person
    and scan (each ObservationScanGrouped is one scan of the scanner's objects). An observation without a time
    stamp takes `received_at`, RECEPTION_STEP later for each person or scan before its own."""
    device = device_of(m.mds)
    clock = device_clock(m.mds, mds_read_at, utc_offset)
    by_person: dict[tuple[int | None, int | None], list[Metric]] = {}
    receptions: dict[tuple[int | None, int | None], datetime] = {}  # each person's or scan's, in order of appearance
    for obs in m.observations:
        key = (obs.person_id, obs.group)
        metrics = by_person.setdefault(key, [])
        reception = receptions.setdefault(key, received_at + RECEPTION_STEP * len(receptions))
        metric = metric_of(obs, m.mds, utc_offset, reception, mds_read_at)
        if metric is None:
            log.debug("observation of handle %s (type %s) not mapped to a metric", obs.handle, obs.type)
            continue
        metrics.append(metric)
    return [Reading(device, patient, tuple(metrics), clock=clock) for metrics in by_person.values() if metrics]


@dataclass
class ReadingBuilder:
    """Keeps per-association facts (when the MDS was read) between the events of one manager."""

    patient: PatientRef
    utc_offset: timedelta
    mds_read_at: datetime | None = None
    receptions: Receptions = field(default_factory=Receptions)  # the association's times of reception

    def device_attributes(self, at: datetime) -> None:
        self.mds_read_at = at

    def readings(self, m: Measurements, received_at: datetime) -> list[Reading]:
        groups = len({(obs.person_id, obs.group) for obs in m.observations})
        received_at = self.receptions.take(received_at, max(1, groups))
        return readings_of(m, self.patient, self.utc_offset, received_at, self.mds_read_at)
