"""Reading parts -> FHIR R4 resources as plain dicts, per the PHD IG (2.0.0 default, 1.1.0 selectable).

PhdPatient, PhgDevice (the gateway), PhdDevice (the measuring device) and one Phd*Observation per
metric. References between them are urn:uuid fullUrls chosen by the caller (bundle.py), as in
vectors/phd/v2.0.0/bundle-example-1.json. Decimals stay Decimals so their digits survive to_json.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from phg import mdc
from phg.errors import MappingError
from phg.fhir import ig
from phg.fhir.ig import IgRules
from phg.model import Component, Device, Gateway, Metric, PatientRef, format_time

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


def eui(hex_id: str) -> str:
    """EUI-64/EUI-48 as PhdDevice.identifier writes it: upper-case hex pairs joined by '-'
    (PhdDevice.fsh: "FE-ED-AB-EE-DE-AD-77-C3")."""
    digits = hex_id.replace("-", "").replace(":", "").upper()
    return "-".join(digits[i:i + 2] for i in range(0, len(digits), 2))


def _device_identifier(kind: str, system: str, value: str, rules: IgRules) -> dict:
    """A Device.identifier typed from ContinuaDeviceIdentifiers (SYSID, BTMAC)."""
    return {
        "type": {"coding": [{"system": rules.device_identifier_types, "code": kind}]},
        "system": system,
        "value": value,
    }


def _names(resource: Resource, manufacturer: str | None, model: str | None, serial: str | None) -> None:
    """System-Model / Production-Specification fields shared by PhdDevice and PhgDevice
    (PhdDevice.fsh: manufacturer, modelNumber "from System-Model.model", serialNumber,
    version typed MDC_ID_PROD_SPEC_FW); the model is also given as deviceName model-name."""
    if manufacturer:
        resource["manufacturer"] = manufacturer
    if serial:
        resource["serialNumber"] = serial
    if model:
        resource["deviceName"] = [{"name": model, "type": "model-name"}]
        resource["modelNumber"] = model


def _firmware(firmware: str | None) -> list[dict]:
    if not firmware:
        return []
    return [{"type": _mdc_concept(mdc.MDC_ID_PROD_SPEC_FW, "MDC_ID_PROD_SPEC_FW", "Firmware revision"), "value": firmware}]


# ---------------------------------------------------------------- Patient and devices


def patient(ref: PatientRef) -> Resource:
    """PhdPatient: just the identifier the EHR knows the patient by (PhdPatientProfile.md)."""
    return {
        "resourceType": "Patient",
        "meta": _profile("PhdPatient"),
        "identifier": [{"system": ref.system, "value": ref.value}],
    }


def phg_device(gateway: Gateway, rules: IgRules) -> Resource:
    """PhgDevice: type MDC_MOC_VMS_MDS_AHD, SYSID identifier and the time-sync property 68220,
    both required (PhgDevice.fsh; example vectors/phd/v2.0.0/phg-example.json)."""
    resource: Resource = {
        "resourceType": "Device",
        "meta": _profile("PhgDevice"),
        "identifier": [_device_identifier("SYSID", ig.SYSID_SYSTEM, eui(gateway.system_id), rules)],
    }
    _names(resource, gateway.manufacturer, gateway.model, gateway.serial)
    resource["type"] = _mdc_concept(mdc.MDC_MOC_VMS_MDS_AHD, "MDC_MOC_VMS_MDS_AHD", "Application Hosting Device, a.k.a. PHG")
    if versions := _firmware(gateway.firmware):
        resource["version"] = versions
    resource["property"] = [{
        "type": _mdc_concept(mdc.MDC_TIME_SYNC_PROTOCOL, "MDC_TIME_SYNC_PROTOCOL"),
        "valueCode": [_mdc_concept(gateway.time_sync, mdc.TIME_SYNC.get(gateway.time_sync))],
    }]
    return resource


def phg_identifier(gateway: Gateway) -> tuple[str, str]:
    """(system, value) for the PhgDevice's conditional create."""
    return ig.SYSID_SYSTEM, eui(gateway.system_id)


def phd_device(device: Device, rules: IgRules) -> Resource:
    """PhdDevice: SYSID from the system id and BTMAC from the Bluetooth address, whichever are known
    (a BLE device without a system id is identified by its transport address, PHD IG 2.0.0
    PhdDevice profile); type MDC_MOC_VMS_MDS_SIMP; one specialization per System-Type-Spec-List entry."""
    identifiers = []
    if device.system_id:
        identifiers.append(_device_identifier("SYSID", ig.SYSID_SYSTEM, eui(device.system_id), rules))
    if device.bt_address:
        identifiers.append(_device_identifier("BTMAC", ig.BTMAC_SYSTEM, eui(device.bt_address), rules))
    resource: Resource = {"resourceType": "Device", "meta": _profile("PhdDevice"), "identifier": identifiers}
    _names(resource, device.manufacturer, device.model, device.serial)
    resource["type"] = _mdc_concept(mdc.MDC_MOC_VMS_MDS_SIMP, "MDC_MOC_VMS_MDS_SIMP", "Personal Health Device")
    if device.specializations:
        resource["specialization"] = [_specialization(s.code, s.version) for s in device.specializations]
    if versions := _firmware(device.firmware):
        resource["version"] = versions
    return resource


def phd_identifier(device: Device) -> tuple[str, str]:
    """(system, value) for the PhdDevice's conditional create: the system id, else the BT address."""
    if device.system_id:
        return ig.SYSID_SYSTEM, eui(device.system_id)
    if device.bt_address:
        return ig.BTMAC_SYSTEM, eui(device.bt_address)
    raise MappingError("device has neither system_id nor bt_address")


def _specialization(code: int, version: int | None) -> dict:
    ref_id, text = mdc.SPECIALIZATIONS.get(code, (None, None))
    spec: dict[str, Any] = {"systemType": _mdc_concept(code, ref_id, text)}
    if version is not None:
        spec["version"] = str(version)
    return spec


# ---------------------------------------------------------------- Observations


def observation(metric: Metric, rules: IgRules, *, identifier: tuple[str | None, str], patient_url: str,
                phd_url: str, phg_url: str) -> Resource:
    """One PhdNumericObservation, or a PhdCompoundNumericObservation when the metric has components
    (blood pressure: systolic/diastolic/mean as components, PhdCompoundNumericObservation.fsh).
    Elements per PhdBaseObservation: gatewayDevice extension, conditional-create identifier, PHD (+ vital
    signs) category, MDC + LOINC code, subject, device, effectiveDateTime = the device time as given."""
    known = mdc.MEASUREMENTS.get(metric.code)
    absent = ig.data_absent_code(metric.status)
    meta: dict[str, Any] = _profile("PhdCompoundNumericObservation" if metric.components else "PhdNumericObservation")
    if ig.TEST_DATA.intersection(metric.status):
        meta["security"] = [dict(ig.HTEST)]
    system, value = identifier
    loinc = _loinc(metric.code, rules)
    resource: Resource = {
        "resourceType": "Observation",
        "meta": meta,
        "extension": [{"url": ig.GATEWAY_EXTENSION, "valueReference": {"reference": phg_url}}],
        "identifier": [{"system": system, "value": value} if system else {"value": value}],
        "status": "preliminary" if ig.PRELIMINARY.intersection(metric.status) else "final",
        "category": [rules.phd_category] + ([ig.VITAL_SIGNS_CATEGORY] if loinc else []),
        "code": _code(metric.code, known, loinc),
        "subject": {"reference": patient_url},
        "effectiveDateTime": format_time(metric.time, metric.time_digits),
    }
    if absent is not None:
        # FHIR obs-6: no value with a dataAbsentReason; IG: an overall failure needs no components.
        resource["dataAbsentReason"] = {"coding": [{"system": ig.DATA_ABSENT_SYSTEM, "code": absent}]}
    elif metric.value is not None:
        resource["valueQuantity"] = _quantity(metric.value, metric.unit)
    if interpretations := [ig.INTERPRETATION[s] for s in metric.status if s in ig.INTERPRETATION]:
        resource["interpretation"] = [
            {"coding": [{"system": ig.MEASUREMENT_STATUS_SYSTEM, "code": code}]} for code in interpretations
        ]
    resource["device"] = {"reference": phd_url}
    if metric.components and absent is None:
        resource["component"] = [_component(c, rules) for c in metric.components]
    return resource


def _loinc(code: int, rules: IgRules) -> str | None:
    """The vital-signs LOINC code, if the measurement is a FHIR vital sign (PhdBaseObservation
    code.coding[LoincCoding]: "Required if the measurement is a vital sign")."""
    known = mdc.MEASUREMENTS.get(code)
    return rules.loinc_overrides.get(code) or (known.loinc if known else None)


def _code(code: int, known: mdc.Measurement | None, loinc: str | None) -> dict:
    concept = _mdc_concept(code, known.ref_id if known else None, known.display if known else None)
    if loinc:
        concept["coding"].append({"system": mdc.LOINC_SYSTEM, "code": loinc})
    return concept


def _component(component: Component, rules: IgRules) -> dict:
    known = mdc.MEASUREMENTS.get(component.code)
    return {
        "code": _code(component.code, known, _loinc(component.code, rules)),
        "valueQuantity": _quantity(component.value, component.unit),
    }


def _quantity(value: Decimal, unit: str | None) -> dict:
    """valueQuantity with the device's precision (Decimal kept) and its UCUM unit
    (PHD IG "Mder FLOATs and SFLOATs": 2.00 stays 2.00)."""
    if not value.is_finite():
        raise MappingError(f"value {value} is not a finite number")
    quantity: dict[str, Any] = {"value": value}
    if unit:
        quantity |= {"unit": mdc.UNIT_DISPLAY.get(unit, unit), "system": mdc.UCUM_SYSTEM, "code": unit}
    return quantity
