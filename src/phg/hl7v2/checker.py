"""The PCD-01 rules hl7apy's v2.6 structure validation does not check (IHE PCD TF-2 PCD-01 / Continua WAN).

hl7apy (strict) checks segment order, required v2.6 fields and data-type formats. This checker adds
the profile's own rules (IHE PCD TF-2 transaction PCD-01, https://www.ihe.net/resources/technical_frameworks/#pcd;
Continua Design Guidelines, ITU-T H.812 WAN interface):

- MSH-1, 2, 7, 9, 10, 11, 12, 15, 16 and 21 present (IPF's Continua WAN validator's list);
  MSH-9 ORU^R01^ORU_R01, MSH-12 2.6.
- PID, when present, has PID-3 and PID-5; at least one OBR, with OBR-4; every OBX follows an OBR.
- MSH-11 a processing ID of HL7 table 0103 (P production, T training, D debugging).
- OBX: OBX-1 counts 1, 2, ... under its OBR; OBX-3 and OBX-4 present; OBX-3 and OBX-6 (when valued)
  in coding system MDC; OBX-4 a dotted containment sub-id (MDS.VMD.CHAN.METRIC, at most one extra
  level) unique within the message; OBX-2 present when OBX-5 is; NM values numeric, NA values
  numeric per component; OBX-11 present.
- The containment tree (PCD TF-2 OBX-4): a row inside MDS n (n >= 1) follows that MDS's own row
  (sub-id "n" as Continua writes it, or "n.0.0.0"); a metric attribute (the fifth level) follows its
  metric's row (1.0.0.2.1 follows 1.0.0.2; 1.0.1.0.1, an attribute of a compound, follows 1.0.1).
  MDS 0, the gateway, may go without a row (the Continua fixtures send only its 0.0.0.1).
- Measurement status (PCD TF-2 OBX-8 measurement-status table): an OBX-8 flag for a value that cannot
  be obtained (INV invalid, NAV not available, BUSY measurement ongoing) goes with OBX-11 X, and a row
  with OBX-11 X (HL7 table 0085: results cannot be obtained) has no OBX-5.

Messages are split into segments and fields by python-hl7 (delimiters taken from MSH-1/2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import hl7

MSH_REQUIRED = (1, 2, 7, 9, 10, 11, 12, 15, 16, 21)
PROCESSING_IDS = ("P", "T", "D")  # HL7 v2.6 table 0103
NO_RESULT_FLAGS = frozenset({"INV", "NAV", "BUSY"})  # PCD TF-2 measurement status with OBX-11 X
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
    def __init__(self, segment: hl7.Segment, components: str, repetitions: str):
        self.segment = segment
        self.components = components
        self.repetitions = repetitions

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
    encoding = str(message.segment("MSH")[2])
    components, repetitions = encoding[:1] or "^", encoding[1:2] or "~"
    segments = [(str(seg[0]), _Segment(seg, components, repetitions)) for seg in message]
    problems: list[Problem] = []
    problems += _check_msh(segments[0][1])
    names = [name for name, _ in segments]
    if "OBR" not in names:
        problems.append(Problem("message", "no OBR segment"))
    sub_ids: dict[str, str] = {}
    tree = _Tree()
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
            problems += tree.check(seg.field(4), where)
    return problems


def _owner(levels: list[str]) -> str:
    """The row a metric attribute belongs to: its first four levels, a trailing "not applicable" 0 left
    out (1.0.1.0.1 is an attribute of the compound 1.0.1)."""
    while len(levels) > 1 and levels[-1] == "0":
        levels = levels[:-1]
    return ".".join(levels)


class _Tree:
    """The containment levels seen so far in one message: which MDS rows and which metric rows."""

    def __init__(self) -> None:
        self.mds: set[str] = set()
        self.rows: set[str] = set()

    def check(self, sub_id: str, where: str) -> list[Problem]:
        if not _SUB_ID.fullmatch(sub_id):
            return []  # reported by _check_obx
        levels = sub_id.split(".")
        self.rows.add(sub_id)
        if len(levels) == 1 or levels[1:] == ["0", "0", "0"]:
            self.mds.add(levels[0])
            return []
        problems = []
        if levels[0] != "0" and levels[0] not in self.mds:
            problems.append(Problem(f"{where}-4", f"sub-id {sub_id} is in MDS {levels[0]}, whose MDS row "
                                                  f"({levels[0]} or {levels[0]}.0.0.0) has not come before it"))
        if len(levels) == 5 and (owner := _owner(levels[:4])) not in self.rows:
            problems.append(Problem(f"{where}-4", f"attribute {sub_id} does not follow its metric's row {owner}"))
        return problems


def _check_msh(msh: _Segment) -> list[Problem]:
    problems = [Problem(f"MSH-{n}", "required field missing") for n in MSH_REQUIRED if not msh.field(n)]
    if msh.field(9) and [msh.component(9, c) for c in (1, 2, 3)] != ["ORU", "R01", "ORU_R01"]:
        problems.append(Problem("MSH-9", f"{msh.field(9)!r} is not ORU^R01^ORU_R01"))
    if msh.field(11) and msh.component(11, 1) not in PROCESSING_IDS:
        problems.append(Problem("MSH-11", f"processing ID {msh.component(11, 1)!r} is not one of "
                                          f"{', '.join(PROCESSING_IDS)} (HL7 table 0103)"))
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
    no_result = sorted(NO_RESULT_FLAGS & set(obx.field(8).split(obx.repetitions)))
    if no_result and obx.field(11) != "X":
        problems.append(Problem(f"{where}-11", f"OBX-8 {'~'.join(no_result)} says the value cannot be obtained: "
                                               f"result status X, not {obx.field(11)!r}"))
    if obx.field(11) == "X" and value:
        problems.append(Problem(f"{where}-5", "a value with result status X (results cannot be obtained)"))
    return problems
