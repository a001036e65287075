"""`phg hl7 ...`: HL7 v2 tools. `phg hl7 check FILE` runs the PCD-01 checker (and, with --strict,
hl7apy's v2.6 structure validation) on every message of an ER7 file (CR or LF line ends; '-' = stdin)."""

from __future__ import annotations

import sys

import click

from phg.cli.common import EXIT_INPUT, fail


@click.group("hl7")
def hl7() -> None:
    """HL7 v2.6 IHE PCD-01 tools."""


@hl7.command("check")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--strict/--no-strict", default=False, help="Also validate the v2.6 structure with hl7apy (strict).")
def check_command(file, strict: bool) -> None:
    """Check the ER7 message(s) in FILE against the PCD-01 rules; exit status 1 when any rule is broken."""
    from phg.hl7v2.checker import check, split_messages

    text = file.read()
    messages = split_messages(text) if text.strip() else []
    if not messages:
        fail(f"{file.name}: no message found", EXIT_INPUT)
    failed = 0
    for n, message in enumerate(messages, 1):
        problems = [str(p) for p in check(message)]
        if strict:
            problems += hl7apy_problems(message)
        label = f"{file.name}" + (f" message {n}" if len(messages) > 1 else "")
        if problems:
            failed += 1
            for problem in problems:
                click.echo(f"{label}: {problem}")
        else:
            click.echo(f"{label}: OK")
    sys.exit(1 if failed else 0)


def hl7apy_problems(message: str) -> list[str]:
    """hl7apy strict v2.6 validation of one message: [] or the first error it reports."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    try:
        parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
    except Exception as exc:  # hl7apy raises ValidationError, ValueError, ParserError, ...
        return [f"hl7apy strict: {exc.__class__.__name__}: {exc}"]
    return []
