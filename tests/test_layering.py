"""The layering rule of docs/architecture.md, enforced (issue 11, acceptance): every phg module imports
only modules of its own layer or below. Formats (`fhir`, `hl7v2`) and `model` import no I/O layer; `sources`
and `delivery` never import the CLI; nothing imports upward. Imports under `if TYPE_CHECKING:` count too:
a type named from a higher layer is still a dependency on it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "phg"

# Lowest first. A unit is a top-level module or package of phg (phg/__init__.py is "phg": the library API,
# which re-exports lazily from below and is imported by nothing inside phg).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "version", "frozen"}),                  # errors; phg's own version; records
    frozenset({"mdc", "terminal", "secretfile", "transport",    # tables and small helpers
               "metrics", "logformat", "process"}),            # counters every layer adds to; JSON logs; GC
    frozenset({"model"}),                                        # the neutral Reading
    frozenset({"fhir", "hl7v2"}),                                # formats: pure mapping
    frozenset({"config"}),                                       # settings, parsed once
    frozenset({"outbox", "viewstore"}),                          # the durable queue; readings kept for viewing
    frozenset({"intake", "auth"}),                               # what sources write to; credentials
    frozenset({"sources"}),                                      # device transports: write to the Intake only
    frozenset({"delivery"}),                                     # worker, destinations, registry
    frozenset({"service"}),                                      # the API, status page, health and metrics
    frozenset({"daemon", "doctor"}),                             # the assembled pipeline
    frozenset({"cli", "demo"}),                                  # people's entry points
    frozenset({"phg"}),                                          # the library API
)
LAYER = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# Same-layer imports that are allowed, one way only (the other way would be a cycle).
SIDEWAYS = {("cli", "demo"), ("viewstore", "outbox")}  # the view store names storage faults as the outbox does


def unit_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return "phg" if parts == ("__init__",) else parts[0]


def imported_units(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "phg" else [f"phg.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("phg.")}
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(p) for p in modules()}
    assert units - set(LAYER) == set(), "a new phg module or package needs a place in LAYERS"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down(path: Path) -> None:
    unit = unit_of(path)
    wrong = [other for other in sorted(imported_units(path) - {unit})
             if other in LAYER and (LAYER[other] > LAYER[unit]
                                    or (LAYER[other] == LAYER[unit] and (unit, other) not in SIDEWAYS))]
    assert not wrong, f"phg.{unit} ({path.name}) imports {wrong}: a higher or sibling layer (docs/architecture.md)"


def test_formats_and_model_import_no_io() -> None:
    io = {"outbox", "intake", "auth", "sources", "delivery", "daemon", "doctor", "cli", "demo", "transport"}
    for path in modules():
        if unit_of(path) in ("fhir", "hl7v2", "model"):
            assert not imported_units(path) & io, path


def test_sources_see_only_the_intake() -> None:
    """design: a source hands readings to the Intake and never sees destinations, credentials or the queue's
    engine."""
    for path in modules():
        if unit_of(path) == "sources":
            assert not imported_units(path) & {"outbox", "auth", "delivery", "transport"}, path
