"""Readings -> one FHIR R4 transaction Bundle, and its exact JSON.

Every entry is a conditional create (PHD IG 2.0.0: Patient, PhgDevice and PhdDevice POSTed with
ifNoneExist=identifier=<system>|<value>, vectors/phd/v2.0.0/bundle-example-1.json; Observations with
the conditional-create identifier, PhdBaseObservation "PHD Observation Identifier"; the Coincident Time
Stamp with phg's own name-based identifier, resources.clock_identifier), so re-sending a bundle is always safe.
fullUrls are urn:uuid:uuid5(<type>?<query>): the same readings give the same bundle, and an entry wanted
twice (a Patient, Device or Coincident Time Stamp shared by readings, or a measurement a device re-sent in
a later upload of the same batch) appears once.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from phg.fhir import resources
from phg.fhir.identifier import conditional_identifiers, if_none_exist
from phg.fhir.ig import rules_for
from phg.model import Gateway, Reading


@dataclass
class Transaction:
    """A transaction Bundle and which of its entries belong to which reading.

    reading_entries[i] are the indices in bundle["entry"] of readings[i]'s Observations; an index can
    appear under two readings when both carried the same measurement (same conditional identifier).
    shared_entries are the Patient and Device entries and the Coincident Time Stamp Observations (one per
    device clock reading, referenced by the Observations of every reading that carried that clock)."""

    bundle: dict
    reading_entries: list[list[int]]
    shared_entries: list[int]


@dataclass
class _Entries:
    """Bundle entries keyed by fullUrl, each added once."""

    entries: list[dict] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    added: dict[tuple[str, str | None, str], tuple[str, int]] = field(default_factory=dict)

    def add(self, resource_type: str, identifier: tuple[str | None, str], build: Callable[..., dict], /,
            *args: Any, **kwargs: Any) -> tuple[str, int]:
        """Add a conditional create (unless present), its resource build(*args, **kwargs); return its fullUrl
        and entry index. An identifier seen before in this bundle (the Patient and Devices of every reading)
        costs one lookup."""
        if (known := self.added.get((resource_type, *identifier))) is not None:
            return known
        query = if_none_exist(*identifier)
        full_url = _full_url(resource_type, identifier, query)
        if full_url not in self.index:
            self.index[full_url] = len(self.entries)
            self.entries.append({
                "fullUrl": full_url,
                "resource": build(*args, **kwargs),
                "request": {"method": "POST", "url": resource_type, "ifNoneExist": query},
            })
        found = self.added[(resource_type, *identifier)] = full_url, self.index[full_url]
        return found


def _full_url(resource_type: str, identifier: tuple[str | None, str], query: str | None = None) -> str:
    """The fullUrl of a conditional create: also how an Observation names another of the same reading
    (derivedFrom) before that one is added."""
    return f"urn:uuid:{uuid5_url(f'{resource_type}?{query or if_none_exist(*identifier)}')}"


_NAMESPACE_URL = uuid.NAMESPACE_URL.bytes


def uuid5_url(name: str) -> str:
    """str(uuid.uuid5(uuid.NAMESPACE_URL, name)) without the UUID object (RFC 9562 section 5.5: SHA-1 of
    namespace and name, the first 16 bytes, version 5 and the RFC variant set)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_URL + name.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50
    digest[8] = digest[8] & 0x3F | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def build_transaction(readings: Sequence[Reading], gateway: Gateway, ig_version: str = "2.0.0") -> Transaction:
    """One transaction Bundle for many readings: shared Patient/Device/Coincident Time Stamp entries first
    (the order of vectors/phd/v2.0.0/bundle-example-1.json), then the Observations of each reading in order."""
    rules = rules_for(ig_version)
    entries = _Entries()
    shared: list[int] = []
    refs: list[tuple[str, str, str | None]] = []  # per reading: (patient, PhdDevice, CTS or None) fullUrls
    phg_url, phg_identifier = "", resources.phg_identifier(gateway)
    for reading in readings:
        patient_url, i = entries.add("Patient", (reading.patient.system, reading.patient.value), resources.patient,
                                     reading.patient, rules)
        phg_url, j = entries.add("Device", phg_identifier, resources.phg_device, gateway, rules)
        phd_url, k = entries.add("Device", resources.phd_identifier(reading.device), resources.phd_device,
                                 reading.device, rules, reading.metrics)
        shared.extend(n for n in (i, j, k) if n not in shared)
        cts_url = None
        if reading.clock is not None:
            identifier = resources.clock_identifier(reading, rules)
            cts_url, n = entries.add("Observation", identifier, resources.coincident_time_stamp, reading.clock, gateway,
                                     rules, identifier=identifier, patient_url=patient_url, phd_url=phd_url,
                                     phg_url=phg_url)
            if n not in shared:
                shared.append(n)
        refs.append((patient_url, phd_url, cts_url))

    reading_entries: list[list[int]] = []
    for reading, (patient_url, phd_url, cts_url) in zip(readings, refs, strict=True):
        indices: list[int] = []
        correction = resources.time_correction(reading.clock, gateway)
        identifiers = conditional_identifiers(reading, ig_version)
        for metric, identifier in zip(reading.metrics, identifiers, strict=True):
            derived = None if metric.derived_from is None else _full_url("Observation", identifiers[metric.derived_from])
            _, n = entries.add("Observation", identifier, resources.observation, metric, rules, identifier=identifier,
                               patient_url=patient_url, phd_url=phd_url, phg_url=phg_url, cts_url=cts_url,
                               time_correction=correction, derived_from_url=derived)
            if n not in indices:
                indices.append(n)
        reading_entries.append(indices)

    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries.entries}
    return Transaction(bundle=bundle, reading_entries=reading_entries, shared_entries=shared)


def to_json(bundle: dict) -> bytes:
    """Compact UTF-8 JSON in which Decimals are JSON numbers with exactly their digits (2.00 -> 2.00).

    The FHIR JSON format requires decimals to keep their precision (R4 datatypes.html#decimal), and
    a JSON encoder writes Decimals through float (2.00 -> 2.0) or not at all. orjson writes each
    Decimal as a Fragment of its own digits, inserted as they are; the output is byte for byte what
    `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` would write with the Decimals' digits
    (tests/test_fhir_mapping.py compares the two). This runs once per batch on the delivery path."""
    try:
        return orjson.dumps(bundle, default=_number)
    except orjson.JSONEncodeError as exc:  # what _number refused, as it said it (NaN: ValueError)
        if isinstance(exc.__cause__, ValueError | TypeError):
            raise exc.__cause__ from None
        raise


def _number(value: Any) -> orjson.Fragment:
    if not isinstance(value, Decimal):
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    if not value.is_finite():
        raise ValueError(f"{value} is not a JSON number")
    return orjson.Fragment(str(value))
