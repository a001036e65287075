"""phg: a Personal Health Gateway.

Readings from personal health devices become HL7 FHIR resources per the Personal Health Device
Implementation Guide (and HL7 v2.6 IHE PCD-01 messages) and reach the EHR through a durable queue
with SMART Backend Services auth. The pipeline: sources -> model -> mapping -> outbox -> delivery
(docs/architecture.md).

The library API, for programs that only want the mapping (no I/O)::

    import phg

    readings, refused = phg.parse_documents(open("reading.json", "rb").read(), "reading.json")
    gateway = phg.Gateway(system_id="0102030405060708")
    bundle = phg.build_transaction(readings, gateway).bundle   # a FHIR transaction Bundle (dict)
    body = phg.to_json(bundle)                                  # the bytes phg would POST
    messages = phg.render_messages(readings, gateway)           # PCD-01 ER7, one per reading

The names are imported on first use, so `import phg` (and `phg --help`) stays light.
"""

from __future__ import annotations

from importlib import import_module

# name -> module that defines it
_API = {
    "Reading": "phg.model", "Device": "phg.model", "Metric": "phg.model", "Component": "phg.model",
    "PatientRef": "phg.model", "Gateway": "phg.model", "parse_reading": "phg.model",
    "parse_documents": "phg.model",
    "build_transaction": "phg.fhir", "to_json": "phg.fhir", "conditional_identifier": "phg.fhir",
    "render_messages": "phg.hl7v2",
    "PhgError": "phg.errors", "ReadingError": "phg.errors", "MappingError": "phg.errors",
    "__version__": "phg.version",
}
__all__ = [  # the names of _API, spelled out for readers and linters
    "Component", "Device", "Gateway", "MappingError", "Metric", "PatientRef", "PhgError", "Reading", "ReadingError",
    "__version__", "build_transaction", "conditional_identifier", "parse_documents", "parse_reading",
    "render_messages", "to_json",
]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue 16: `phg send` starts without it)
if TYPE_CHECKING:
    from typing import Any

    from phg.errors import MappingError, PhgError, ReadingError
    from phg.fhir import build_transaction, conditional_identifier, to_json
    from phg.hl7v2 import render_messages
    from phg.model import Component, Device, Gateway, Metric, PatientRef, Reading, parse_documents, parse_reading
    from phg.version import __version__


def __getattr__(name: str) -> Any:
    """PEP 562: the API names, imported when first used."""
    if name not in _API:
        raise AttributeError(f"module 'phg' has no attribute {name!r}")
    value = getattr(import_module(_API[name]), name)
    globals()[name] = value
    return value
