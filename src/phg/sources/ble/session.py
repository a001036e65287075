"""The gateway's Bluetooth LE session: find a health device, connect (pairing when it demands it),
read Device Information and Current Time, subscribe to its measurements, fetch what is new, and put
Readings in the Intake (phg.intake). Only bleak's public API (BleakScanner, BleakClient) is used; `backend`
selects custom bleak backend classes (tests and demos pass the Bumble backend of
phg.demo.emulator.EmulatedLink; production uses bleak's platform default).

Nothing lost, nothing doubled. Readings are stored as they arrive, in small groups (whatever
arrived together), each group in one durable step. For a glucose meter the same step
stores the highest sequence number collected (`ble:<address>:glucose_seq`), so the marker is never
ahead of the readings it covers; the next session asks RACP for "records with sequence number >=
marker + 1" (GLS 1.0 4.11; all records when no marker is stored). A glucose record whose context
(0x2A34) is announced is collected only with it (or once something else shows it is not coming): a
link lost in between leaves that record, and the marker before it, for the next session. A link lost
after record 7 of 20 leaves records 1..7 durable and the marker at 7, and the next session fetches
8..20. A CGM (CGMS 1.0.1) works the same way with its records' Time Offsets (minutes since the sensor
session started; RACP filter type 0x01 is the Time Offset for CGMS): the marker `ble:<address>:cgm_offset` holds the
highest offset collected, and `ble:<address>:cgm_session` (same step) the session it belongs
to, so that a new sensor session, whose offsets start again from 0, is fetched from its start (one
record strategy per profile says how: GlucoseRecords, CgmRecords). Devices without RACP (BLS, WSS,
HTS, PLXS) indicate stored measurements on subscription and forget each one the stack confirms;
bleak (and every OS stack) confirms an indication as soon as our callback has queued the value, so
only a gateway crash in the milliseconds before the next store could lose one, a limit of the
Bluetooth API rather than of this code. A malformed notification (the decoder raises
GattError) is logged without its bytes and skipped; everything else continues.

Times. Bluetooth health measurements carry the device's local wall-clock time without offset; the
gateway's UTC offset is attached (the Date Time characteristic, GATT Specification Supplement). The
device clock read from Current Time Service 0x2A2B goes with every reading as a DeviceClock, for the
PHD IG coincident time stamp.
CGM records are placed with the CGM Session Start Time 0x2AAA, which carries the sensor's own time
zone and DST offset (used instead of the gateway's when known).

E2E-CRC (CGMS 1.0.1 section 2.5). A CGM record whose CRC does not match is malformed (skipped and
logged, like any other). When CGM Feature 0x2AA8 announces E2E-CRC support, a record without a CRC
is refused too, so that a sensor promising protection cannot silently deliver unprotected values.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from phg import metrics
from phg.errors import MappingError, StorageError
from phg.intake import Intake
from phg.model import (
    MDC_DEV_SPEC_PROFILE_BCA,
    MDC_DEV_SPEC_PROFILE_BP,
    MDC_DEV_SPEC_PROFILE_CGM,
    MDC_DEV_SPEC_PROFILE_GLUCOSE,
    MDC_DEV_SPEC_PROFILE_PULS_OXIM,
    MDC_DEV_SPEC_PROFILE_SCALE,
    MDC_DEV_SPEC_PROFILE_TEMP,
    MDC_DEV_SUB_SPEC_PROFILE_HR,
    Device,
    DeviceClock,
    PatientRef,
    Reading,
    Receptions,
    Specialization,
)
from phg.sources.ble.gatt import GattError, decode, lookup, quirks, to_metrics
from phg.sources.ble.gatt.cgm import CgmMeasurement, CgmSessionStartTime
from phg.sources.ble.gatt.glucose import (
    GlucoseMeasurement,
    GlucoseMeasurementContext,
    RacpMessage,
    racp_request,
    report_all_records,
    report_records_from,
)
from phg.sources.ble.gatt.numbers import crc16_mcrf4xx
from phg.sources.ble.gatt.readings import UtcOffset
from phg.sources.ble.gatt.weight import BodyCompositionAssembler, BodyCompositionMeasurement

if TYPE_CHECKING:
    from bleak import BleakClient
    from bleak.backends.device import BLEDevice

logger = logging.getLogger(__name__)


def uuid16(n: int) -> str:
    """A Bluetooth SIG 16-bit UUID in bleak's 128-bit lower-case form."""
    return f"0000{n:04x}-0000-1000-8000-00805f9b34fb"


class GlucoseRecords:
    """A glucose meter's stored records, fetched with RACP by sequence number (GLS 1.0 4.11: operand
    filter type 0x01 is the sequence number). The marker `ble:<address>:glucose_seq` holds the highest
    sequence number collected."""

    marker = "glucose_seq"
    what = "glucose records after sequence number"
    reads_e2e_feature = False

    def context(self, address: str, facts: dict[str, Any]) -> dict[str, str] | None:
        return {}

    def request_after(self, marker: int) -> bytes:
        return report_records_from(marker + 1)


class CgmRecords:
    """A CGM's records, fetched with RACP by Time Offset (CGMS 1.0.1 3.7: operand filter type 0x01 is
    the Time Offset, minutes since the sensor session started). The marker `ble:<address>:cgm_offset`
    holds the highest offset collected, and `ble:<address>:cgm_session` (stored with it) the session it
    counts in: a new sensor session, whose offsets start again from 0, is fetched from its start. The
    records are placed in time with the Session Start Time 0x2AAA. A CGM without a usable one when the
    session starts (quirk:cgm-before-session-start) has all its records fetched and held, and 0x2AAA read
    again at the end: the records are stored once it is usable, else left on the sensor for the next
    session. Its CGM Feature 0x2AA8 says whether records carry an E2E-CRC (CGMS 1.0.1 2.5)."""

    marker = "cgm_offset"
    what = "CGM records after time offset"
    reads_e2e_feature = True

    def context(self, address: str, facts: dict[str, Any]) -> dict[str, str] | None:
        """The session the offsets count in; None while no usable Session Start Time is known."""
        start = facts.get("session_start")
        if not usable_session_start(start):
            return None
        return {marker_name(address, "cgm_session"): cgm_session_id(start)}

    def request_after(self, marker: int) -> bytes:
        return racp_request("Report stored records", "Greater than or equal to", marker + 1, filter_type=0x01)


RecordStrategy = GlucoseRecords | CgmRecords


@dataclass(frozen=True)
class Profile:
    """A Bluetooth health profile: its service, the characteristics to subscribe to (the profile
    says notify or indicate; the stack uses what the characteristic offers), readable
    characteristics the decoders need (to_metrics keyword -> UUID), the IEEE 11073 specialization
    (MDC_DEV_SPEC_PROFILE_*), and, for a device storing records that are fetched with RACP 0x2A52, how
    to ask for what is new (its record strategy)."""

    name: str
    service: int
    measurements: tuple[int, ...]
    specialization: int
    records: RecordStrategy | None = None
    reads: tuple[tuple[str, int], ...] = ()


RACP = 0x2A52
# Service (Bluetooth Assigned Numbers) -> the IEEE 11073-10101 specialization it maps to, as the PHD IG asks of
# Bluetooth SIG devices ("mapped as if they had come from a compliant IEEE 11073 device", Non11073PHDDevices.html;
# the codes of PhdDeviceProfile "System Type Spec List"): 11073-10417 glucose, -10407 blood pressure, -10415
# weighing scale, -10420 body composition analyzer, -10408 thermometer, -10404 pulse oximeter, -10425 CGM, -10406
# heart rate. README "Device specialization: the rule". The first profile whose service the device offers is its
# profile; each of its measurements the device has is subscribed to, in whatever service it lies (a scale's Body
# Composition Measurement is in the Body Composition Service, 0x181B; a pulse oximeter's continuous 0x2A5F is
# optional, PLXS 1.0 section 3). A device that streams (heart rate, continuous oximetry) has its values stored as they
# arrive (`_collect`), for as long as the link lasts.
PROFILES: tuple[Profile, ...] = (
    Profile("glucose", 0x1808, (0x2A18, 0x2A34), MDC_DEV_SPEC_PROFILE_GLUCOSE, records=GlucoseRecords()),
    Profile("blood_pressure", 0x1810, (0x2A35,), MDC_DEV_SPEC_PROFILE_BP),
    Profile("scale", 0x181D, (0x2A9D, 0x2A9C), MDC_DEV_SPEC_PROFILE_SCALE, reads=(("weight_feature", 0x2A9E),)),
    Profile("body_composition", 0x181B, (0x2A9C,), MDC_DEV_SPEC_PROFILE_BCA),
    Profile("thermometer", 0x1809, (0x2A1C,), MDC_DEV_SPEC_PROFILE_TEMP, reads=(("temperature_type", 0x2A1D),)),
    Profile("pulse_oximeter", 0x1822, (0x2A5E, 0x2A5F), MDC_DEV_SPEC_PROFILE_PULS_OXIM),
    Profile("cgm", 0x181F, (0x2AA7,), MDC_DEV_SPEC_PROFILE_CGM, records=CgmRecords(),
            reads=(("session_start", 0x2AAA),)),
    Profile("heart_rate", 0x180D, (0x2A37,), MDC_DEV_SUB_SPEC_PROFILE_HR),
)
HEALTH_SERVICES: tuple[str, ...] = tuple(uuid16(p.service) for p in PROFILES)
DIS_STRINGS = {"manufacturer": 0x2A29, "model": 0x2A24, "serial": 0x2A25, "firmware": 0x2A26}
SYSTEM_ID, CURRENT_TIME, CGM_SESSION_START_TIME = 0x2A23, 0x2A2B, 0x2AAA
CGM_FEATURE, CGM_E2E_CRC_SUPPORTED = 0x2AA8, 1 << 12  # CGMS 1.0.1 3.2: CGM Feature bit 12
_SECURITY_ERRORS = {0x05, 0x0F}  # ATT Insufficient Authentication / Insufficient Encryption


class DeviceNotFound(LookupError):
    """No device with this address advertised within the scan time."""


@dataclass
class FetchResult:
    """What one session collected. `complete`: the device said it had sent everything (glucose:
    RACP success or "no records found"; others: it ended the link or went quiet after its upload).
    False after a lost link or a failed RACP procedure: the next session resumes."""

    address: str
    profile: str | None = None
    readings: int = 0
    skipped: int = 0  # malformed notifications, logged and skipped
    last_seq: int | None = None  # the marker after this session: glucose sequence number / CGM time offset
    complete: bool = False


@dataclass
class BleSettings:
    """The Bluetooth source's configuration: which devices to collect from (addresses as bleak
    reports them), whether to accept and pair any health device in range ("pair new devices now"),
    the patient they belong to, and the scan window."""

    allow: tuple[str, ...]
    pair_new: bool
    patient: PatientRef
    user: int | None = None  # [ble] user: the patient's User ID on shared devices (Collector.for_patient)
    scan_seconds: float = 5.0
    rest_seconds: float = 5.0  # pause between scan windows
    retry_seconds: float = 30.0  # no new session with a device sooner than this after the last one


def normalise_address(address: str) -> str:
    """"aa:bb:cc:dd:ee:ff" -> "AA-BB-CC-DD-EE-FF" (the PHD IG form of an EUI-48)."""
    return address.replace(":", "-").upper()


def device_of(profile: Profile, address: str, *, system_id: str | None, manufacturer: str | None = None,
              model: str | None = None, serial: str | None = None, firmware: str | None = None) -> Device:
    """The Device of a Bluetooth health device: the Device Information Service strings and System ID, the
    transport address, and the specialization its health service maps to (Profile.specialization, the PHD IG
    treating Bluetooth SIG devices as if they were IEEE 11073 devices: Non11073PHDDevices.html). The service
    carries no version of that specialization, so its version is unknown (None): the FHIR mapping says so
    with data-absent-reason (phg.fhir.resources.phd_device)."""
    return Device(system_id=system_id, bt_address=normalise_address(address), manufacturer=manufacturer, model=model,
                  serial=serial, firmware=firmware, specializations=(Specialization(profile.specialization),))


def marker_name(address: str, kind: str = "glucose_seq") -> str:
    """The Intake progress-marker name of a device's progress marker: "glucose_seq" (a glucose meter's last
    collected sequence number), "cgm_offset" (a CGM's last collected time offset), "cgm_session" (the
    CGM session that offset counts in)."""
    return f"ble:{address.upper()}:{kind}"


def usable_session_start(start: CgmSessionStartTime | None) -> bool:
    """Whether a CGM Session Start Time can place records in time (it was read and its date is known)."""
    return start is not None and start.start.naive is not None


def cgm_session_id(start: CgmSessionStartTime) -> str:
    """The CGM session a time offset counts in, as stored next to the offset marker: the Session Start
    Time, with its UTC offset when the sensor knows it ("2026-11-28T08:00:00+02:00")."""
    naive = start.start.naive
    text = naive.isoformat() if naive is not None else "unknown"
    offset = start.utc_offset
    return naive.replace(tzinfo=timezone(offset)).isoformat() if naive is not None and offset is not None else text


def local_utc_offset(wall: datetime) -> timedelta:
    """The gateway's UTC offset in force at a local wall-clock time (the system zone, DST-aware)."""
    return wall.astimezone().utcoffset() or timedelta(0)


def _classes(backend: Any) -> tuple[Any, Any]:
    """(scanner class, client class) for bleak's `backend=`; None = bleak's platform default."""
    return (backend.scanner, backend.client) if backend is not None else (None, None)


def _zoned(wall: datetime, utc_offset: UtcOffset) -> datetime:
    return wall.replace(tzinfo=timezone(utc_offset(wall) if callable(utc_offset) else utc_offset))


class Collector:
    """Sans-I/O: characteristic values in (in arrival order), Readings out, one Reading per
    measurement. `feed` raises GattError/MappingError for a value it cannot use (the caller logs
    and skips it) and returns True/False when the RACP procedure ended (success or no records /
    any other response code), None otherwise. A Glucose Measurement whose Context Information Follows flag
    is set waits for its Glucose Measurement Context (0x2A34, same Sequence Number; GLS 1.0 section 3.1.2.1:
    it follows immediately, but as a notification of its own, often read after the measurement was), which is
    mapped with it (meal, tester, health: gatt/context.py); whatever else comes next (another measurement, the
    RACP response ending the procedure) maps it without one. While it waits it is neither taken nor counted in
    `last_seq`, the marker stored with what `take` returns: a record is in the marker only once handed over.
    `user`: the [patient]'s User ID on a shared cuff or scale ([ble] user); other users' measurements are not
    taken (for_patient)."""

    def __init__(self, device: Device, patient: PatientRef, clock: DeviceClock | None, utc_offset: UtcOffset, *,
                 user: int | None = None, **facts: Any) -> None:
        self.device = device
        self.patient = patient
        self.user = user
        self.users: set[int] = set()  # the User IDs this connection's measurements carried
        self.clock = clock
        self.utc_offset = utc_offset
        self.facts = facts  # to_metrics keywords: weight_feature, temperature_type
        self.readings: list[Reading] = []
        self.last_seq: int | None = None  # glucose: sequence number; CGM: time offset
        self.cgm_e2e = False  # CGM Feature says E2E-CRC supported: records without one are refused
        self.held: list[CgmMeasurement] = []  # CGM records waiting for a usable Session Start Time
        self.glucose: GlucoseMeasurement | None = None  # waiting for its 0x2A34 context
        self.body_composition = BodyCompositionAssembler()  # a 0x2A9C value sent in two halves: one measurement
        self.receptions = Receptions()  # the times of reception of undated measurements: kept apart

    def feed(self, uuid: int, data: bytes) -> bool | None:
        value = decode(uuid, data)
        if isinstance(value, GlucoseMeasurementContext):
            self._glucose_context(value)
            return None
        self._glucose_without_context()
        if isinstance(value, CgmSessionStartTime):
            self.session_start(value)
            return None
        if isinstance(value, RacpMessage):
            if not value.is_response:
                return None
            if value.number_of_records is not None:
                return None
            return value.succeeded or value.response_code == "No records found"
        if isinstance(value, CgmMeasurement) and self.cgm_e2e and any(r.e2e_crc is None for r in value.records):
            raise MappingError("0x2AA7 CGM Measurement: a record without E2E-CRC from a sensor whose CGM Feature "
                               "announces E2E-CRC (CGMS 1.0.1 section 2.5): refused")
        if isinstance(value, CgmMeasurement):
            if not usable_session_start(self.facts.get("session_start")):
                quirks.warn(quirks.CGM_BEFORE_SESSION_START, "0x2AA7 CGM Measurement",
                            f"{len(value.records)} record(s) held until a usable CGM Session Start Time (0x2AAA) is read")
                self.held.append(value)
                return None
            self._cgm(value)
            return None
        if isinstance(value, GlucoseMeasurement) and value.context_information_follows:
            self.glucose = value
            return None
        if isinstance(value, BodyCompositionMeasurement):
            value = self.body_composition.feed(value)  # BCS 1.0 section 3.2.1: the first half waits for the second
            if value is None:
                return None
        if isinstance(value, GlucoseMeasurement):
            self._glucose(value)
        elif self.for_patient(uuid, value):
            self._add(value)
        return None

    def for_patient(self, uuid: int, value: object) -> bool:
        """Whether a measurement is the [patient]'s. Blood Pressure (BLS 1.1), Weight (WSS 1.0) and Body Composition
        (BCS 1.0) Measurements of a shared device may carry a User ID (the User Data Service index; 255: unknown
        user). With [ble] user set, one of another user (255 too) is not taken (review B: user 2's weight landed in
        user 1's record), logged once per User ID and connection without its values; one without a User ID (a
        single-user device) is. Without it everything is the [patient]'s, as before, but a second User ID is
        logged: readings of several people are being sent as one."""
        user = getattr(value, "user_id", None)
        if user is None:
            return True
        first = user not in self.users
        self.users.add(user)
        what = f"0x{uuid:04X} {lookup(uuid).name}"
        if self.user is None:
            if first and len(self.users) == 2:
                logger.warning("BLE %s: %s: the device reports several users (User IDs %s), all sent as [patient]: "
                               "set [ble] user = N (the patient's user number on the device) to send only theirs",
                               self.device.bt_address, what, " and ".join(map(str, sorted(self.users))))
            return True
        if user != self.user and first:
            logger.warning("BLE %s: %s of %s skipped (and this user's others on this connection): not "
                           "[ble] user = %d, the [patient]", self.device.bt_address, what,
                           "an unknown user (User ID 255)" if user == 255 else f"device user {user}", self.user)
        return user == self.user

    def _add(self, value: object, **context: Any) -> None:
        received = self.receptions.take(datetime.now(UTC))  # used only by a measurement the device did not time
        metrics = to_metrics(value, utc_offset=self.utc_offset, received=received, **self.facts, **context)
        if metrics:
            self.readings.append(Reading(self.device, self.patient, tuple(metrics), clock=self.clock))

    def _glucose(self, measurement: GlucoseMeasurement, context: GlucoseMeasurementContext | None = None) -> None:
        """Hand a glucose record over (with its context, if any): its reading, and its sequence number into the
        marker."""
        self._add(measurement, **({"glucose_context": context} if context is not None else {}))
        self._advance(measurement.sequence_number)

    def _glucose_context(self, context: GlucoseMeasurementContext) -> None:
        """The context of the waiting measurement; one for another sequence number (or none waiting) is logged
        and dropped: which measurement it describes is unknown."""
        measurement, self.glucose = self.glucose, None
        if measurement is not None and measurement.sequence_number == context.sequence_number:
            self._glucose(measurement, context)
            return
        logger.warning("0x2A34 Glucose Measurement Context for sequence number %d matches no waiting 0x2A18: dropped",
                       context.sequence_number)
        if measurement is not None:
            self._glucose(measurement)

    def _glucose_without_context(self) -> None:
        measurement, self.glucose = self.glucose, None
        if measurement is not None:
            self._glucose(measurement)

    def session_start(self, start: CgmSessionStartTime) -> None:
        """A CGM Session Start Time (read or notified); a usable one places the records held so far."""
        self.facts["session_start"] = start
        if usable_session_start(start):
            held, self.held = self.held, []
            for measurement in held:
                self._cgm(measurement)

    def _cgm(self, value: CgmMeasurement) -> None:
        """One Reading per record: each has its own time; the marker is the highest Time Offset placed."""
        for record in value.records:  # with its Sensor Status Annunciation, if any (gatt/context.py)
            self._add(CgmMeasurement((record,)))
        self._advance(max(r.time_offset_min for r in value.records))

    def _advance(self, position: int) -> None:
        self.last_seq = position if self.last_seq is None else max(self.last_seq, position)

    def take(self) -> list[Reading]:
        """The readings collected since the last call; a glucose measurement still waiting for its context is
        not among them (nor in `last_seq`) until its context, or whatever shows none is coming, arrives."""
        readings, self.readings = self.readings, []
        return readings


_LINK_ENDED = object()


class _Session:
    def __init__(self, address: str, intake: Intake, patient: PatientRef, *,
                 pair: bool, idle_timeout: float, utc_offset: UtcOffset, user: int | None = None) -> None:
        self.address = address
        self.intake = intake
        self.patient = patient
        self.user = user
        self.pair = pair
        self.paired = False
        self.idle_timeout = idle_timeout
        self.utc_offset = utc_offset
        self.queue: asyncio.Queue = asyncio.Queue()
        self.result = FetchResult(address)
        self.marker = marker_name(address)  # the name of the progress marker (the profile's)
        self.marker_context: dict[str, str] = {}  # stored with every marker (the CGM session)

    async def _gatt(self, client: BleakClient, operation: Callable, *args, **kwargs):
        """Run a GATT operation; when the device answers Insufficient Authentication/Encryption,
        pair (just works, or the OS pairing agent) once and try again. The stack re-encrypts a
        bonded device on later connections, so this happens once per device."""
        from bleak.exc import BleakGATTProtocolError

        try:
            return await operation(*args, **kwargs)
        except BleakGATTProtocolError as exc:
            if exc.args[0] not in _SECURITY_ERRORS or self.paired or not self.pair:
                raise
        logger.info("BLE %s requires pairing: pairing", self.address)
        await client.pair()
        self.paired = True
        return await operation(*args, **kwargs)

    async def _read(self, client: BleakClient, uuid: int) -> Any:
        """Read and decode a characteristic; None when absent or malformed (logged)."""
        char = client.services.get_characteristic(uuid16(uuid))
        if char is None:
            return None
        raw = bytes(await self._gatt(client, client.read_gatt_char, char))
        try:
            return decode(uuid, raw)
        except GattError as exc:
            logger.warning("BLE %s: unusable 0x%04X ignored: %s", self.address, uuid, exc)
            return None

    async def _device(self, client: BleakClient, profile: Profile) -> Device:
        strings = {name: await self._read(client, uuid) for name, uuid in DIS_STRINGS.items()}
        system_id = await self._read(client, SYSTEM_ID)
        return device_of(profile, self.address, system_id=system_id.eui64 if system_id is not None else None,
                         **{name: (s.value or None) if s is not None else None for name, s in strings.items()})

    async def _clock(self, client: BleakClient) -> DeviceClock | None:
        """The device clock (CTS 0x2A2B) against ours, for the PHD IG coincident time stamp."""
        current = await self._read(client, CURRENT_TIME)
        gateway_time = datetime.now(UTC)
        if current is None:
            return None
        naive = current.date_time.naive
        if naive is not None:
            naive = naive.replace(microsecond=current.fractions256 * 1_000_000 // 256)
        return DeviceClock(gateway_time=gateway_time,
                           device_time=_zoned(naive, self.utc_offset) if naive is not None else None)

    async def _cgm_e2e(self, client: BleakClient) -> bool:
        """Whether CGM Feature 0x2AA8 announces E2E-CRC support (bit 12). The Feature always ends
        with an E2E-CRC (0xFFFF when unsupported); a Feature announcing E2E whose own CRC does not
        match is not trusted (logged; the records' CRCs are still checked wherever they are sent)."""
        char = client.services.get_characteristic(uuid16(CGM_FEATURE))
        if char is None:
            return False
        raw = bytes(await self._gatt(client, client.read_gatt_char, char))
        if len(raw) != 6:
            logger.warning("BLE %s: unusable 0x2AA8 CGM Feature ignored: %d bytes, expected 6", self.address, len(raw))
            return False
        if not int.from_bytes(raw[:3], "little") & CGM_E2E_CRC_SUPPORTED:
            return False
        if int.from_bytes(raw[4:6], "little") != crc16_mcrf4xx(raw[:4]):
            logger.warning("BLE %s: 0x2AA8 CGM Feature E2E-CRC mismatch: feature ignored", self.address)
            return False
        return True

    async def _racp_request(self, records: RecordStrategy) -> bytes | None:
        """The RACP request for what is new since the stored marker (None: nothing can be new). A
        marker stored with another context (another CGM session) does not count."""
        stored = await asyncio.to_thread(self.intake.progress, self.marker)
        for name, value in self.marker_context.items():
            if stored is not None and await asyncio.to_thread(self.intake.progress, name) != value:
                logger.info("BLE %s: new %s %s: fetching it from its start", self.address, name.rsplit(":", 1)[1], value)
                stored = None
        marker = self.result.last_seq = int(stored) if stored is not None else None
        logger.info("BLE %s: asking for %s %s", self.address, records.what, marker)
        if marker is None:
            return report_all_records()
        if marker >= 0xFFFF:  # the u16 operand cannot ask for more
            return None
        return records.request_after(marker)

    # ------------------------------------------------------------------ the session

    async def run(self, target: BLEDevice | str, client_class: Any, timeout: float) -> FetchResult:
        from bleak import BleakClient

        def on_disconnect(_client: BleakClient) -> None:
            self.queue.put_nowait(_LINK_ENDED)

        async with BleakClient(target, disconnected_callback=on_disconnect, timeout=timeout,
                               backend=client_class) as client:
            metrics.DEVICES_CONNECTED.labels("ble").inc()
            profile = next((p for p in PROFILES if client.services.get_service(uuid16(p.service))), None)
            if profile is None:
                raise LookupError(f"BLE {self.address} offers none of the health services phg knows")
            self.result.profile = profile.name
            device = await self._device(client, profile)
            clock = await self._clock(client)
            facts = {name: await self._read(client, uuid) for name, uuid in profile.reads}
            collector = Collector(device, self.patient, clock, self.utc_offset, user=self.user,
                                  **{k: v for k, v in facts.items() if v is not None})
            records = profile.records
            context = None
            if records is not None:
                self.marker = marker_name(self.address, records.marker)
                context = records.context(self.address, facts)
                self.marker_context = context or {}
                if records.reads_e2e_feature:
                    collector.cgm_e2e = await self._cgm_e2e(client)
            for uuid in profile.measurements:
                if client.services.get_characteristic(uuid16(uuid)) is not None:
                    await self._gatt(client, client.start_notify, uuid16(uuid), self._on_value(uuid))
            if records is None:
                await self._collect(collector, None, racp=False)
            else:
                await self._gatt(client, client.start_notify, uuid16(RACP), self._on_value(RACP))
                if context is None:  # which session a stored marker counts in is unknown: ask for every record
                    logger.warning("BLE %s: no usable CGM Session Start Time (0x2AAA) yet: fetching every record, "
                                   "held until it is read again at the end", self.address)
                    request = report_all_records()
                else:
                    request = await self._racp_request(records)
                marker = collector.last_seq = self.result.last_seq
                if request is None:  # the marker is at the end of what the operand can ask for
                    self.result.complete = True
                else:
                    await self._gatt(client, client.write_gatt_char, uuid16(RACP), request, response=True)
                    await self._collect(collector, marker, racp=True)
                    if collector.held:
                        await self._late_session_start(client, records, collector)
        logger.info("BLE %s %s: %d readings, %d malformed values skipped, %s", self.address, self.result.profile,
                    self.result.readings, self.result.skipped, "complete" if self.result.complete else "incomplete")
        return self.result

    async def _late_session_start(self, client: BleakClient, records: RecordStrategy, collector: Collector) -> None:
        """CGM records that came before a usable Session Start Time (quirk:cgm-before-session-start): 0x2AAA
        is read once more. Usable, it places them and they are stored with their marker and session; still
        unusable, they are not stored and the marker does not move, so the next session fetches them again."""
        start = await self._read(client, CGM_SESSION_START_TIME)
        if start is not None:
            collector.session_start(start)
        context = records.context(self.address, {"session_start": start})
        if context is None or collector.held:
            logger.warning("BLE %s: %d CGM record(s) not stored: still no usable CGM Session Start Time (0x2AAA); "
                           "the next session fetches them again", self.address,
                           sum(len(m.records) for m in collector.held))
            self.result.complete = False
            return
        self.marker_context = context
        await self._store(collector.take(), collector.last_seq)

    def _on_value(self, uuid: int) -> Callable[[Any, bytearray], None]:
        def callback(_char: Any, data: bytearray) -> None:
            self.queue.put_nowait((uuid, bytes(data)))

        return callback

    async def _collect(self, collector: Collector, marker: int | None, *, racp: bool) -> None:
        """Take values as they arrive; store what arrived together in one durable step (with the
        record marker), until the procedure ends, the link ends, or nothing comes for idle_timeout."""
        ended: bool | None = None  # True/False: RACP outcome; None: still running
        while ended is None:
            try:
                items = [await asyncio.wait_for(self.queue.get(), self.idle_timeout)]
            except TimeoutError:
                logger.info("BLE %s: nothing received for %.1f s", self.address, self.idle_timeout)
                items = [_LINK_ENDED]
            while not self.queue.empty():
                items.append(self.queue.get_nowait())
            for item in items:
                if item is _LINK_ENDED:
                    ended = not racp  # a device without RACP ends the link when its upload is done
                    break
                uuid, data = item
                try:
                    outcome = collector.feed(uuid, data)
                except (GattError, MappingError) as exc:  # logged without the bytes: no values in logs
                    self.result.skipped += 1
                    metrics.DECODE_ERRORS.labels("ble").inc()
                    logger.warning("BLE %s: malformed 0x%04X value skipped: %s", self.address, uuid, exc)
                    continue
                if outcome is not None:
                    ended = outcome
                    break
            readings = collector.take()
            if readings or collector.last_seq != marker:
                await self._store(readings, collector.last_seq if collector.last_seq != marker else None)
                marker = collector.last_seq
        if collector.glucose is not None:  # the link ended between a record and its announced context
            logger.warning("BLE %s: glucose record %d not stored: its context (0x2A34) did not arrive; the next "
                           "session fetches it again", self.address, collector.glucose.sequence_number)
        self.result.complete = ended

    async def _store(self, readings: list[Reading], last_seq: int | None) -> None:
        progress = {self.marker: str(last_seq)} | self.marker_context if last_seq is not None else None
        await asyncio.to_thread(self.intake.store, readings, progress)
        self.result.readings += len(readings)
        metrics.RECORDS_FETCHED.labels("ble").inc(len(readings))
        if last_seq is not None:
            self.result.last_seq = last_seq


async def fetch(address: str, *, intake: Intake, patient: PatientRef, backend: Any = None,
                device: BLEDevice | None = None, pair: bool = True, timeout: float = 20.0, idle_timeout: float = 10.0,
                utc_offset: UtcOffset = local_utc_offset, user: int | None = None) -> FetchResult:
    """One session with the device at `address`: scan for it (unless `device` was found already),
    connect, collect and store in `intake`. Raises DeviceNotFound, bleak.exc.BleakError
    (connection or GATT failure) or LookupError (not a health device); whatever was stored
    before an error stays stored. `pair`: allow pairing when the device demands it. `user`: the
    patient's User ID on a shared device ([ble] user, Collector.for_patient)."""
    from bleak import BleakScanner

    scanner_class, client_class = _classes(backend)
    if device is None:
        device = await BleakScanner.find_device_by_address(address, timeout=timeout, backend=scanner_class)
        if device is None:
            raise DeviceNotFound(f"BLE device {address} not found within {timeout:g} s")
    session = _Session(device.address, intake, patient, pair=pair, idle_timeout=idle_timeout,
                       utc_offset=utc_offset, user=user)
    return await session.run(device, client_class, timeout)


@dataclass
class ScanEntry:
    address: str
    name: str | None
    rssi: int
    services: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)


async def scan(seconds: float = 5.0, *, backend: Any = None, health_only: bool = True) -> list[ScanEntry]:
    """Devices advertising around us, with their services (health devices only by default)."""
    from bleak import BleakScanner

    scanner_class, _ = _classes(backend)
    found = await BleakScanner.discover(timeout=seconds, return_adv=True, backend=scanner_class,
                                        service_uuids=list(HEALTH_SERVICES) if health_only else None)
    names = {uuid16(p.service): p.name for p in PROFILES}
    entries = [ScanEntry(device.address, adv.local_name or device.name, adv.rssi, list(dict.fromkeys(adv.service_uuids)),
                         [names[u] for u in dict.fromkeys(adv.service_uuids) if u in names])
               for device, adv in found.values()]
    return sorted(entries, key=lambda e: e.address)


async def run_source(settings: BleSettings, *, intake: Intake, stop: asyncio.Event,
                     backend: Any = None, utc_offset: UtcOffset = local_utc_offset) -> None:
    """The Bluetooth source of `phg run`: scan windows for allowed health devices (any health device
    in "pair new" mode), one session task per device found, several at once. A failing device is
    logged and tried again after `retry_seconds`; nothing stops the loop but `stop`."""
    scanner_class, _ = _classes(backend)
    allowed = {a.upper() for a in settings.allow}
    busy: dict[str, asyncio.Task] = {}
    next_try: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    def wanted(device: BLEDevice, adv: Any) -> bool:
        address = device.address.upper()
        if address in busy or next_try.get(address, 0.0) > loop.time():
            return False
        if not any(u in HEALTH_SERVICES for u in adv.service_uuids):
            return False
        return address in allowed or settings.pair_new

    async def session(device: BLEDevice) -> None:
        address = device.address.upper()
        try:
            await fetch(address, intake=intake, patient=settings.patient,
                        backend=backend, device=device, utc_offset=utc_offset, user=settings.user)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one device's trouble never stops the source
            logger.warning("BLE %s: session failed: %s: %s", address, type(exc).__name__, exc)
        finally:
            busy.pop(address, None)
            next_try[address] = loop.time() + settings.retry_seconds * random.uniform(0.9, 1.1)

    try:
        while not stop.is_set():
            if not await _can_store(intake):
                # Devices without RACP forget what they indicated once the stack confirms it: collecting
                # now would lose readings. Wait for the disk instead of talking to devices.
                await _wait(stop, settings.retry_seconds)
                continue
            found = await _scan_window(settings.scan_seconds, wanted, scanner_class, stop)
            for address, device in found.items():
                if address not in busy:
                    busy[address] = asyncio.create_task(session(device), name=f"ble-{address}")
            await _wait(stop, settings.rest_seconds)
    finally:
        for task in list(busy.values()):
            task.cancel()
        await asyncio.gather(*busy.values(), return_exceptions=True)


@dataclass(frozen=True)
class BleSource:
    """The Bluetooth source as a source of `phg run` (phg.sources.supervisor): run_source."""

    settings: BleSettings
    backend: Any = None
    name: str = "ble"

    async def run(self, intake: Intake, stop: asyncio.Event) -> None:
        await run_source(self.settings, intake=intake, stop=stop, backend=self.backend)


async def _can_store(intake: Intake) -> bool:
    """Whether readings can be stored now (a heartbeat marker is)."""
    try:
        await asyncio.to_thread(intake.heartbeat, "ble")
        return True
    except StorageError as exc:
        logger.error("BLE: not collecting: readings cannot be stored: %s", exc)
        return False


async def _scan_window(seconds: float, wanted: Callable[[Any, Any], bool], scanner_class: Any,
                       stop: asyncio.Event) -> dict[str, BLEDevice]:
    """Health devices seen during one scan window that `wanted` accepts, by upper-case address."""
    from bleak import BleakScanner

    found: dict[str, BLEDevice] = {}

    def detected(device: BLEDevice, adv: Any) -> None:
        if wanted(device, adv):
            found.setdefault(device.address.upper(), device)

    try:
        async with BleakScanner(detected, service_uuids=list(HEALTH_SERVICES), backend=scanner_class):
            await _wait(stop, seconds)
    except Exception as exc:  # an adapter that went away: log, try again next window
        logger.warning("BLE scan failed: %s: %s", type(exc).__name__, exc)
    return found


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
