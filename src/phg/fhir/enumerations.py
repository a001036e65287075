"""The parts of a PHD Observation that are not numbers: coded values, BITs values and supplemental types.

- Coded enumeration (PHD IG PhdCodedEnumerationObservation, http://hl7.org/fhir/uv/phd/STU2/StructureDefinition-
  PhdCodedEnumerationObservation.html; example vectors/phd/v2.0.0/meal-context-observation.json): the value is an
  MDC code, valueCodeableConcept with the reference id as display and a text a clinician reads.
- BITs enumeration (PhdBitsEnumerationObservation; bits-observation.json, bpm-status.json): no value[x]; one
  component per reported bit, coded "<MDC code>.<MDER bit>" in the ASN1ToHL7 code system. 2.0.0: valueBoolean
  (true = set); 1.1.0 (bits-1.0.0.40.json): valueCodeableConcept v2-0136 Y/N, the name as code.text. Event bits
  are reported only when set, state bits set or cleared ("Mapping BITs Enumerations to FHIR"). A measurement
  status saying the value failed (dataAbsentReason) leaves the bits out (component:bitsComponent definition).
- Supplemental types (PhdBaseObservation component:supplementalTypesComponent; numeric-spotnumeric.json): one
  component per code, code MDC 68193 MDC_ATTR_SUPPLEMENTAL_TYPES, valueCodeableConcept the MDC code.
"""

from __future__ import annotations

from typing import Any

from phg import mdc
from phg.fhir.ig import IgRules
from phg.model import BitString

# ASN1ToHL7 moved to terminology.hl7.org in 2.0.0 (CodeSystem-ASN1ToHL7.json url); 1.1.0 has it in the IG.
ASN1_SYSTEM: dict[str, str] = {"2.0.0": "http://terminology.hl7.org/CodeSystem/ASN1ToHL7",
                               "1.1.0": "http://hl7.org/fhir/uv/phd/CodeSystem/ASN1ToHL7"}
V2_BINARY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0136"  # 1.1.0: Y / N


def coded_value(code: int) -> dict[str, Any]:
    """valueCodeableConcept of a coded enumeration: the MDC code, its reference id and text when known."""
    ref_id, text = mdc.CODED_VALUES.get(code, (None, None))
    coding: dict[str, Any] = {"system": mdc.MDC_SYSTEM, "code": str(code)}
    if ref_id:
        coding["display"] = ref_id
    return {"coding": [coding]} | ({"text": text} if text else {})


def bits_components(code: int, bits: BitString, rules: IgRules) -> list[dict[str, Any]]:
    """One component per reported bit, in bit order."""
    system = ASN1_SYSTEM[rules.version]
    components = []
    for bit in sorted(bits.bits, key=lambda b: b.bit):
        coding: dict[str, Any] = {"system": system, "code": f"{code}.{bit.bit}"}
        if rules.version == "1.1.0":
            concept: dict[str, Any] = {"coding": [coding]} | ({"text": bit.name} if bit.name else {})
            components.append({"code": concept, "valueCodeableConcept": {
                "coding": [{"system": V2_BINARY_SYSTEM, "code": "Y" if bit.set else "N"}]}})
        else:
            if bit.name:
                coding["display"] = bit.name
            components.append({"code": {"coding": [coding]}, "valueBoolean": bit.set})
    return components


def supplemental_components(codes: tuple[int, ...], rules: IgRules) -> list[dict[str, Any]]:
    """One supplementalTypesComponent per Supplemental-Types code: reference ids as display (2.0.0
    numeric-spotnumeric.json) or as text (1.1.0 spotnumeric-1.0.0.3.json)."""
    label = "text" if rules.version == "1.1.0" else "display"
    components = []
    for code in codes:
        attribute: dict[str, Any] = {"system": mdc.MDC_SYSTEM, "code": str(mdc.MDC_ATTR_SUPPLEMENTAL_TYPES)}
        value: dict[str, Any] = {"system": mdc.MDC_SYSTEM, "code": str(code)}
        ref_id = mdc.SUPPLEMENTAL_TYPES.get(code)
        if label == "display":
            attribute["display"] = "MDC_ATTR_SUPPLEMENTAL_TYPES"
            if ref_id:
                value["display"] = ref_id
            components.append({"code": {"coding": [attribute]}, "valueCodeableConcept": {"coding": [value]}})
        else:
            components.append({"code": {"coding": [attribute], "text": "MDC_ATTR_SUPPLEMENTAL_TYPES"},
                               "valueCodeableConcept": {"coding": [value]} | ({"text": ref_id} if ref_id else {})})
    return components
