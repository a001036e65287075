"""What differs between PHD IG releases, and the IG's measurement-status table, as data.

2.0.0 (STU 2, IEEE 11073-10206 ACOM) is the default; 1.1.0 (STU 1.1, IEEE 11073-20601) stays
selectable. Sources: HL7/phd input/fsh and input/pagecontent at each release, and the examples in
../shared/vectors/phd/v2.0.0 and v1.1.0.
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


@dataclass(frozen=True)
class IgRules:
    """The parts of the mapping that depend on the IG release."""

    version: str
    category_code: str  # PhdObservationCategories code: "phd" (2.0.0), "phd-observation" (1.x)
    identifier_system: str | None  # identifier[conditionalCreate].system; 1.x: "system ..0"
    device_identifier_types: str  # ContinuaDeviceIdentifiers code system (moved to THO in 2.0.0)
    loinc_overrides: dict[int, str] = field(default_factory=dict)  # MDC code -> LOINC where it differs

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
    ),
}


def rules_for(ig_version: str) -> IgRules:
    """The rules of one IG release; ValueError names the supported ones."""
    try:
        return RULES[ig_version]
    except KeyError:
        raise ValueError(f"unsupported PHD IG version {ig_version!r}; use one of {', '.join(IG_VERSIONS)}") from None


# ---------------------------------------------------------------- measurement status
# PHD IG, PhdBaseObservation "Measurement Status" table (input/pagecontent/BaseObservationProfile.md):
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
    return next((code for name, code in DATA_ABSENT.items() if name in status), None)
