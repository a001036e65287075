"""HL7 v2 ACK parsing (HL7 v2.6 chapter 2: MSH, MSA, ERR). What an ACK means for delivery
(delivered, rejected, retried) is decided in phg.delivery.hl7, not here: this is a format module.

`parse_ack` reads whatever bytes a peer sent and never raises anything but AckError: it is
written by hand rather than with python-hl7 because only MSH-1/2, MSA and ERR matter here and
arbitrary garbage must end in one exception type (the fuzz test holds it to that).
"""

from __future__ import annotations

from dataclasses import dataclass

ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})


class AckError(ValueError):
    """The peer's answer is not a usable ACK (garbled, no MSA, unknown code)."""


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2: the MSH-10 of the message being acknowledged
    text: str  # MSA-3 and ERR texts joined, "" when none
    message_control_id: str = ""  # the ACK's own MSH-10

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")


def parse_ack(data: bytes | str) -> Ack:
    """The MSA (and ERR) of an ACK message; AckError when there is none to read."""
    try:
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
    except Exception as exc:  # pragma: no cover - decode with errors=replace does not raise
        raise AckError(f"undecodable: {exc}") from None
    segments = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s.strip()]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise AckError("answer does not start with an MSH segment")
    msh = segments[0]
    field_sep, component_sep = msh[3], msh[4]
    if field_sep.isalnum() or component_sep.isalnum() or field_sep == component_sep:
        raise AckError("MSH delimiters are not valid")
    msh_fields = msh.split(field_sep)
    own_id = msh_fields[9] if len(msh_fields) > 9 else ""  # fields[n - 1] is MSH-n (MSH-1 is the separator)
    msa = None
    errors = []
    for segment in segments[1:]:
        fields = segment.split(field_sep)
        if fields[0] == "MSA" and msa is None:
            msa = fields
        elif fields[0] == "ERR":
            errors.append(_err_text(fields, component_sep))
    if msa is None:
        raise AckError("no MSA segment")
    code = msa[1].strip().upper() if len(msa) > 1 else ""
    if code not in ACK_CODES:
        raise AckError(f"MSA-1 {code[:10]!r} is not an acknowledgment code")
    control = msa[2].strip() if len(msa) > 2 else ""
    texts = [msa[3].strip()] if len(msa) > 3 and msa[3].strip() else []
    texts += [e for e in errors if e]
    return Ack(code, control, "; ".join(texts)[:1000], own_id)


def _err_text(fields: list[str], component_sep: str) -> str:
    """ERR-8 user message, else ERR-3 (HL7 error code: code^text), else ERR-1 (v2.4 style); with ERR-2."""
    def get(n: int) -> str:
        return fields[n].strip() if len(fields) > n else ""

    code = get(3).split(component_sep)
    text = get(8) or (code[1] if len(code) > 1 and code[1] else code[0]) or get(1).replace(component_sep, " ").strip()
    location = get(2).replace(component_sep, ".").strip(".")
    return f"{text} (at {location})" if text and location else text
