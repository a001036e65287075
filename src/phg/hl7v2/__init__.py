"""Readings -> HL7 v2.6 IHE PCD-01 ORU^R01 (ER7), the PCD-01 checker and ACK parsing. Pure, no I/O.

`render_messages(readings, gateway)` gives one ER7 message per reading (CR segment separators);
`check(text)` lists the PCD-01 rules a message breaks; `parse_ack(answer)` reads a peer's ACK
(what it means for delivery: phg.delivery.hl7).
"""

from phg.hl7v2.ack import Ack, AckError, parse_ack
from phg.hl7v2.checker import Problem, check
from phg.hl7v2.pcd01 import PCD01_PROFILE, control_id, render_message, render_messages

__all__ = ["PCD01_PROFILE", "Ack", "AckError", "Problem", "check", "control_id", "parse_ack",
           "render_message", "render_messages"]
