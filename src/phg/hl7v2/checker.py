"""The PCD-01 rules hl7apy's v2.6 structure validation does not check (IHE PCD TF-2 PCD-01 / Continua WAN).

hl7apy (strict) checks segment order, required v2.6 fields and data-type formats. This checker adds
the profile's own rules (IHE PCD TF-2 transaction PCD-01, https://www.ihe.net/resources/technical_frameworks/#pcd;
Continua Design Guidelines, ITU-T H.812 WAN interface):

- MSH-1, 2, 7, 9, 10, 11, 12, 15, 16 and 21 present (IPF's Continua WAN validator's list);
  MSH-9 ORU^R01^ORU_R01, MSH-12 2.6.
- PID, when present, has PID-3 and PID-5; at least one OBR, with OBR-4; every OBX follows an OBR.
- OBX: OBX-1 counts 1, 2, ... under its OBR; OBX-3 and OBX-4 present; OBX-3 and OBX-6 (when valued)
  in coding system MDC; OBX-4 a dotted containment sub-id (MDS.VMD.CHAN.METRIC, at most one extra
  level) unique within the message; OBX-2 present when OBX-5 is; NM values numeric, NA values
  numeric per component; OBX-11 present.

Messages are split into segments and fields by python-hl7 (delimiters taken from MSH-1/2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import hl7

MSH_REQUIRED = (1, 2, 7, 9, 10, 11, 12, 15, 16, 21)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_SUB_ID = re.compile(r"\d+(\.\d+){0,4}")


@dataclass(frozen=True)
class Problem:
    """One broken rule: where (e.g. 'OBX[3]-4', segment position counted from 1) and what."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def normalize(text: str) -> str:
    """ER7 with CR separators, whatever line endings a file used."""
    return "\r".join(line for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if line.strip())


def split_messages(text: str) -> list[str]:
    """Several messages in one file: each starts at an MSH segment."""
    messages: list[list[str]] = []
    for segment in normalize(text).split("\r"):
        if segment.startswith("MSH") or not messages:
            messages.append([])
        messages[-1].append(segment)
    return ["\r".join(m) for m in messages]


class _Segment:
    def __init__(self, segment: hl7.Segment, components: str):
        self.segment = segment
        self.components = components

    def field(self, n: int) -> str:
        return str(self.segment[n]) if n < len(self.segment) else ""

    def component(self, n: int, c: int) -> str:
        parts = self.field(n).split(self.components)
        return parts[c - 1] if c <= len(parts) else ""


def check(text: str) -> list[Problem]:
    """Every PCD-01 rule one ER7 message breaks; [] when clean."""
    text = normalize(text)
    if not text.startswith("MSH"):
        return [Problem("message", "does not start with an MSH segment")]
    try:
        message = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises several types on malformed input
        return [Problem("message", f"cannot be parsed as ER7: {exc}")]
    components = str(message.segment("MSH")[2])[:1] or "^"
    segments = [(str(seg[0]), _Segment(seg, components)) for seg in message]
    problems: list[Problem] = []
    problems += _check_msh(segments[0][1])
    names = [name for name, _ in segments]
    if "OBR" not in names:
        problems.append(Problem("message", "no OBR segment"))
    sub_ids: dict[str, str] = {}
    in_obr = False
    obx_count = 0
    for i, (name, seg) in enumerate(segments, 1):
        where = f"{name}[{i}]"
        if name == "PID":
            for n in (3, 5):
                if not seg.field(n).strip(components + " "):
                    problems.append(Problem(f"{where}-{n}", "required when PID is present"))
        elif name == "OBR":
            in_obr, obx_count = True, 0
            if not seg.field(4):
                problems.append(Problem(f"{where}-4", "universal service identifier missing"))
        elif name == "OBX":
            obx_count += 1
            if not in_obr:
                problems.append(Problem(where, "OBX before any OBR"))
            problems += _check_obx(seg, where, obx_count, sub_ids)
    return problems


def _check_msh(msh: _Segment) -> list[Problem]:
    problems = [Problem(f"MSH-{n}", "required field missing") for n in MSH_REQUIRED if not msh.field(n)]
    if msh.field(9) and [msh.component(9, c) for c in (1, 2, 3)] != ["ORU", "R01", "ORU_R01"]:
        problems.append(Problem("MSH-9", f"{msh.field(9)!r} is not ORU^R01^ORU_R01"))
    if msh.field(12) and msh.component(12, 1) != "2.6":
        problems.append(Problem("MSH-12", f"version {msh.component(12, 1)!r} is not 2.6"))
    return problems


def _check_obx(obx: _Segment, where: str, count: int, sub_ids: dict[str, str]) -> list[Problem]:
    problems = []
    if obx.field(1) != str(count):
        problems.append(Problem(f"{where}-1", f"set id {obx.field(1)!r}, expected {count}"))
    if not obx.field(3):
        problems.append(Problem(f"{where}-3", "observation identifier missing"))
    elif obx.component(3, 3) != "MDC":
        problems.append(Problem(f"{where}-3", f"coding system {obx.component(3, 3)!r} is not MDC"))
    sub_id = obx.field(4)
    if not sub_id:
        problems.append(Problem(f"{where}-4", "containment sub-id missing"))
    elif not _SUB_ID.fullmatch(sub_id):
        problems.append(Problem(f"{where}-4", f"{sub_id!r} is not a dotted MDS.VMD.CHAN.METRIC sub-id"))
    elif sub_id in sub_ids:
        problems.append(Problem(f"{where}-4", f"sub-id {sub_id} already used by {sub_ids[sub_id]}"))
    else:
        sub_ids[sub_id] = where
    if obx.field(6) and obx.component(6, 3) != "MDC":
        problems.append(Problem(f"{where}-6", f"unit coding system {obx.component(6, 3)!r} is not MDC"))
    value_type, value = obx.field(2), obx.field(5)
    if value and not value_type:
        problems.append(Problem(f"{where}-2", "value type missing for a valued OBX-5"))
    if value and value_type == "NM" and not _NUMBER.fullmatch(value):
        problems.append(Problem(f"{where}-5", "NM value is not a number"))
    if value and value_type == "NA" and not all(_NUMBER.fullmatch(v) for v in value.split(obx.components)):
        problems.append(Problem(f"{where}-5", "NA value has a non-numeric component"))
    if not obx.field(11):
        problems.append(Problem(f"{where}-11", "observation result status missing"))
    return problems
