"""tests/conftest.py's xdist groups: a test sharing a module-scoped fixture runs in its module's group, and a
test with a group of its own keeps that one alone (xdist joins every group name of a test into one)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import pytest_collection_modifyitems


class _Item:
    """What the hook reads of a pytest.Function: its module, its fixtures' scopes, its marks."""

    def __init__(self, scopes: list[str], *marks: pytest.MarkDecorator) -> None:
        self.module = SimpleNamespace(__name__="test_m")
        self._fixtureinfo = SimpleNamespace(name2fixturedefs={f"f{n}": [SimpleNamespace(scope=scope)]
                                                              for n, scope in enumerate(scopes)})
        self.marks = [mark.mark for mark in marks]

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return next((mark for mark in self.marks if mark.name == name), None)

    def add_marker(self, mark: pytest.MarkDecorator) -> None:
        self.marks.append(mark.mark)

    def groups(self) -> list[str]:
        return [mark.args[0] for mark in self.marks if mark.name == "xdist_group"]


def test_a_test_sharing_a_module_fixture_joins_its_module_group_unless_it_has_one():
    shared, alone, own, plain = (_Item(["function", "module"]), _Item(["function"]),
                                 _Item(["module"], pytest.mark.xdist_group("phd-validate")), _Item([]))
    pytest_collection_modifyitems([shared, alone, own, plain])
    assert [item.groups() for item in (shared, alone, own, plain)] == [["test_m"], [], ["phd-validate"], []]
