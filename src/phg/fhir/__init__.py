"""Readings -> FHIR R4 per the HL7 Personal Health Device IG (2.0.0 by default, 1.1.0 selectable).

Pure functions, no I/O. `build_transaction` makes one transaction Bundle of many readings, with
every resource a conditional create so that re-sending is always safe; `conditional_identifier`
is the IG's duplicate-detection identifier; `to_json` writes a bundle keeping decimal precision.
"""

from phg.fhir.bundle import Transaction, build_transaction, to_json
from phg.fhir.identifier import conditional_identifier, if_none_exist
from phg.fhir.ig import IG_VERSIONS

__all__ = ["IG_VERSIONS", "Transaction", "build_transaction", "conditional_identifier", "if_none_exist", "to_json"]
