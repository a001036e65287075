"""What differs between PHD IG releases, and the IG's measurement-status table, as data.

2.0.0 (STU 2, IEEE 11073-10206 ACOM) is the default; 1.1.0 (STU 1.1, IEEE 11073-20601) stays
selectable. Sources: the IG's source (https://github.com/HL7/phd: input/fsh, input/pagecontent and
input/examples) at each release, published at http://hl7.org/fhir/uv/phd/STU2 and .../STU1.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IG_VERSIONS = ("2.0.0", "1.1.0")

PROFILE_BASE = "http://hl7.org/fhir/uv/phd/StructureDefinition/"
PHD_CATEGORY_SYSTEM = "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories"
VITAL_SIGNS_CATEGORY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]
}
GATEWAY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
SYSID_SYSTEM = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"  # IEEE EUI-64 system id
BTMAC_SYSTEM = "http://hl7.org/fhir/sid/eui-48/bluetooth"
ZERO_SYSID = "00-00-00-00-00-00-00-00"
# The patient identifier's type: v2-0203 MR, as every PhdPatient of the IG's examples (1.1.0 and 2.0.0
# patientExample-1, bundle-example-1, nonin-hdp-*): the identifier the EHR knows the patient by.
PATIENT_IDENTIFIER_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                                       "display": "Medical record number"}]}
# What a PHD profile requires and the device did not report (PhdDevice manufacturer, modelNumber, a
# specialization's version, a version value): FHIR R4 data-absent-reason on the primitive
# (http://hl7.org/fhir/R4/extension-data-absent-reason.html), code "unknown", as the IG marks an unknown
# device time (PhdCoincidentTimeStampObservation dataAbsentReason[TimeFault] = data-absent-reason#unknown).
UNKNOWN = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}


@dataclass(frozen=True)
class IgRules:
    """The parts of the mapping that depend on the IG release."""

    version: str
    category_code: str  # PhdObservationCategories code: "phd" (2.0.0), "phd-observation" (1.x)
    identifier_system: str | None  # identifier[conditionalCreate].system; 1.x: "system ..0"
    device_identifier_types: str  # ContinuaDeviceIdentifiers code system (moved to THO in 2.0.0)
    loinc_overrides: dict[int, str] = field(default_factory=dict)  # MDC code -> LOINC where it differs
    # PhdCoincidentTimeStampObservation shape, see "Coincident Time Stamp" below.
    coincident_link: str = "extension"  # Observation -> CTS: "extension" (CoincidentTimeStampReference) or "derivedFrom"
    coincident_subject: str = "device"  # CTS subject: "device" (PhdDevice; device = PhgDevice) or "patient"
    coincident_sync_component: bool = True  # CTS component clockSyncMethod 68220 (2.0.0 only)
    # PhdPatient.identifier.type (1.x: 1..1 with a v2-0203 coding; 2.0.0: 0..1), see PATIENT_IDENTIFIER_TYPE.
    patient_identifier_type: bool = False
    # A PhdDevice without a system id carries SYSID 00-00-00-00-00-00-00-00 (1.x: systemIdIdentifier 1..1).
    zero_sysid: bool = False

    @property
    def phd_category(self) -> dict:
        return {"coding": [{"system": PHD_CATEGORY_SYSTEM, "code": self.category_code}]}


RULES: dict[str, IgRules] = {
    "2.0.0": IgRules(
        version="2.0.0",
        category_code="phd",
        identifier_system=PROFILE_BASE + "PhdBaseObservation",
        device_identifier_types="http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers",
    ),
    "1.1.0": IgRules(
        version="1.1.0",
        category_code="phd-observation",
        identifier_system=None,
        device_identifier_types="http://hl7.org/fhir/uv/phd/CodeSystem/ContinuaDeviceIdentifiers",
        # SpO2: v1.1.0 bundle-continuousnonin.json codes 59408-5; 2.0.0 bundle-example-1.json codes 2708-6.
        loinc_overrides={150456: "59408-5"},
        # v1.1.0 coin-*.json: subject Patient, device PhdDevice, gatewayDevice extension; the measurements
        # point at it with derivedFrom (bloodPress-1.0.1.json, glucose-1.0.0.4.json, nonin-hdp-*.json).
        coincident_link="derivedFrom",
        coincident_subject="patient",
        coincident_sync_component=False,  # 1.x profile page: "no additional information reported in component elements"
        patient_identifier_type=True,  # 1.1.0 PhdPatient: identifier.type 1..1, coding v2Coding 1..1
        # 1.1.0 PhdDevice: identifier:systemIdIdentifier 1..1; PhdDeviceProfile.html "System Identifier": "When a
        # PHG encounters such a device it shall enter 00-00-00-00-00-00-00-00" (2.0.0 makes the slice 0..1).
        zero_sysid=True,
    ),
}


def rules_for(ig_version: str) -> IgRules:
    """The rules of one IG release; ValueError names the supported ones."""
    try:
        return RULES[ig_version]
    except KeyError:
        raise ValueError(f"unsupported PHD IG version {ig_version!r}; use one of {', '.join(IG_VERSIONS)}") from None


# ---------------------------------------------------------------- measurement status
# PHD IG, PhdBaseObservation "Measurement Status" table (http://hl7.org/fhir/uv/phd/STU2/BaseObservationProfile.html):
# each IEEE 11073-20601 MeasurementStatus bit lands in dataAbsentReason, interpretation or meta.security.
DATA_ABSENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
MEASUREMENT_STATUS_SYSTEM = "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status"  # PoCD IG
HTEST = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"}

# status -> dataAbsentReason code, in priority order (the value is then left out: FHIR obs-6).
DATA_ABSENT: dict[str, str] = {"invalid": "error", "not-available": "not-performed", "msmt-ongoing": "temp-unknown"}
# status -> PoCD measurement-status interpretation code.
INTERPRETATION: dict[str, str] = {
    "questionable": "questionable",
    "calibration-ongoing": "calibration-ongoing",
    "validated-data": "validated-data",
    "early-indication": "early-indication",
}
# test or demonstration data -> meta.security HTEST (PhdBaseObservation meta.security[PhdHtest]).
TEST_DATA = frozenset({"test-data", "demonstration-data"})
# PhdBaseObservation.status: "final unless a Measurement-Status ... indicates that the measurement is preliminary".
PRELIMINARY = frozenset({"early-indication"})


def data_absent_code(status: tuple[str, ...]) -> str | None:
    """The dataAbsentReason code for a metric's status bits, or None when the value is present."""
    for name, code in DATA_ABSENT.items() if status else ():
        if name in status:
            return code
    return None


# ---------------------------------------------------------------- Coincident Time Stamp
# 2.0.0: input/fsh/StructureDefinition.PhdCoincidentTimeStampObservation.fsh (code from MDCClockTypes,
# subject only Reference(PhdDevice), device only Reference(PhgDevice), component clockSyncMethod 68220,
# dataAbsentReason[TimeFault] = data-absent-reason#unknown) and StructureDefinition.CoincidentTimeStampReference.fsh
# (the extension on a PHD Observation); examples vectors/phd/v2.0.0/coin-*.json, bundle-example-1.json.
COINCIDENT_EXTENSION = PROFILE_BASE + "CoincidentTimeStampReference"
CLOCK_TYPES: dict[int, tuple[str, str]] = {  # MDC code -> (reference id, text as in coin-*.json)
    67975: ("MDC_ATTR_TIME_ABS", "Absolute time"),
    67983: ("MDC_ATTR_TIME_REL", "Relative time"),
    68072: ("MDC_ATTR_TIME_REL_HI_RES", "High resolution relative time"),
}
TIME_SYNC_NONE = 532224  # MDC_TIME_SYNC_NONE: the clock is not externally synchronised
# The IG gives the CTS no identifier ("created every connection", CoincidentTimeStampObservationProfile.html;
# coin-example-1 "has no identifier ... always 'created'"). phg gives it one anyway, only so that a re-sent
# transaction does not create it twice: a name-based urn:uuid of its content, an RFC 3986 URI.
URI_SYSTEM = "urn:ietf:rfc:3986"
