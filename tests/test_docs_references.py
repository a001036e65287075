"""No source file points readers to a document outside the repository (issue 11: 8): a rule is cited
by its standard (name, section, published URL) or by a file of this repository, never by the team's
notes beside it (../shared/...)."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
TEXT = {".py", ".json", ".toml", ".md", ".txt", ".html", ".cfg"}
# docs/<path> not inside a URL or a longer path (https://host/docs/... is a published document)
DOC_PATH = re.compile(r"(?<![\w/.:-])docs/[\w./-]*[\w/]")


def source_files() -> list[Path]:
    """Every text file under src/, without following symlinks (the demo's node peers) or build output."""
    files = []
    for root, dirs, names in os.walk(SRC):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "node_modules") and not d.endswith(".egg-info")]
        files += [Path(root, name) for name in names if Path(name).suffix in TEXT]
    return sorted(files)


def outside_references(path: Path) -> list[str]:
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.relative_to(REPO)}:{number}"
        if "shared/" in line:
            found.append(f"{where}: mentions shared/: {line.strip()}")
        found += [f"{where}: {match.group()} is not in the repository" for match in DOC_PATH.finditer(line)
                  if not (REPO / match.group()).exists()]
    return found


def test_no_source_file_points_outside_the_repository() -> None:
    files = source_files()
    assert any(f.name == "__init__.py" for f in files)  # the walk found the package
    problems = [problem for path in files for problem in outside_references(path)]
    assert problems == [], "\n".join(problems)


def test_the_check_sees_what_it_looks_for(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("")
    sample = tmp_path / "x.py"
    sample.write_text('"""(../shared/docs/design.md), docs/here.md, docs/gone.md, https://h.example/docs/a.md"""\n')
    problems = outside_references(sample)
    assert len(problems) == 2 and "shared/" in problems[0] and "docs/gone.md is not" in problems[1]
