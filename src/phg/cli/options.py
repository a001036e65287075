"""Options every command shares: `--json`, one patient form (`--patient SYSTEM|VALUE`) and one UTC
offset form (`+HH:MM`, ISO 8601-1:2019 5.3.4.2 with `Z` for UTC)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import click

_OFFSET = re.compile(r"(?:Z|([+-])([0-9]{2}):?([0-9]{2}))")


def parse_utc_offset(text: str) -> timedelta:
    """"+01:00", "-0530", "Z" -> timedelta; ValueError otherwise (offsets stay within +-14:00)."""
    match = _OFFSET.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a UTC offset such as +01:00 or -05:30")
    if text.strip() == "Z":
        return timedelta(0)
    sign, hours, minutes = match.groups()
    if int(hours) > 14 or int(minutes) > 59:
        raise ValueError(f"{text!r} is not a UTC offset such as +01:00 or -05:30")
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    return -delta if sign == "-" else delta


class UtcOffset(click.ParamType):
    name = "+HH:MM"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_utc_offset(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Patient(click.ParamType):
    """SYSTEM|VALUE, split at the last bar (a FHIR token search's form: the system may be any URI)."""

    name = "SYSTEM|VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from phg.model import PatientRef

        if isinstance(value, PatientRef):
            return value
        system, sep, text = value.rpartition("|")
        if not sep and ctx is not None and ctx.meta.get("patient_system"):  # the deprecated two-flag form
            system, sep, text = ctx.meta["patient_system"], "|", value
        if not sep or not system or not text:
            self.fail("give SYSTEM|VALUE, e.g. urn:oid:1.2.3.4.5|pt-42", param, ctx)
        if bad := next((c for c in value if not c.isprintable()), None):
            # a control character would make every reading of this patient unreadable in the queue
            self.fail(f"the patient holds the character U+{ord(bad):04X}: give printable text", param, ctx)
        return PatientRef(system, text)


JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
UTC_OFFSET = UtcOffset()
PATIENT = Patient()


def patient_option(help: str = "Whose readings these are, as the EHR knows the patient "
                   "(default: [patient] in the config).") -> Any:
    return click.option("--patient", type=PATIENT, help=help)


def utc_offset_option(help: str) -> Any:
    return click.option("--utc-offset", type=UTC_OFFSET, help=help)
