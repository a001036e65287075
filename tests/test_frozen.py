"""phg.frozen.Frozen behaves as @dataclass(frozen=True) with the same fields: each pair of classes below is
declared both ways and must answer alike (construction, its errors, ==, hash, repr, assignment)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import ClassVar

import pytest

from phg.frozen import Frozen, field


@dataclasses.dataclass(frozen=True)
class DBase:
    KIND: ClassVar[str] = "base"
    name: str
    source: str


@dataclasses.dataclass(frozen=True)
class DRecord(DBase):
    size: int = 3
    secret: str | None = dataclasses.field(default=None, repr=False)
    tags: list = dataclasses.field(default_factory=list, compare=False)
    pair: tuple = ()


class FBase(Frozen):
    KIND: ClassVar[str] = "base"
    name: str
    source: str


class FRecord(FBase):
    size: int = 3
    secret: str | None = field(default=None, repr=False)
    tags: list = field(default_factory=list, compare=False)
    pair: tuple = ()


CALLS = [((), {}), (("a",), {}), (("a", "b"), {}), (("a", "b", 4, "s", [1], (2,)), {}),
         (("a", "b", 4, "s", [1], (2,), 7), {}), ((), {"name": "a", "source": "b", "secret": "x"}),
         (("a",), {"source": "b", "tags": [9]}), (("a",), {"name": "b"}), (("a", "b"), {"colour": 1}),
         ((), {"source": "b", "size": 1})]


def _answer(cls: type, args: tuple, kwargs: dict) -> object:
    try:
        made = cls(*args, **kwargs)
    except TypeError as exc:
        return ("TypeError", "missing" in str(exc), "unexpected" in str(exc), "multiple" in str(exc),
                "positional" in str(exc))
    return (repr(made).removeprefix(cls.__name__), made == cls(*args, **kwargs), hash(made) == hash(cls(*args, **kwargs)),
            [getattr(made, f) for f in ("name", "source", "size", "secret", "tags", "pair")])


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_a_frozen_class_is_made_as_a_frozen_dataclass(args, kwargs):
    assert _answer(FRecord, args, kwargs) == _answer(DRecord, args, kwargs)


def test_equality_hash_and_class_attributes_as_a_frozen_dataclass():
    one, other = FRecord("a", "b", tags=[1]), FRecord("a", "b", tags=[2])
    assert one == other and hash(one) == hash(other)  # tags: compare=False
    assert one != FRecord("a", "b", secret="s") and one != FBase("a", "b") and FBase("a", "b") != DBase("a", "b")
    assert FRecord.size == DRecord.size == 3 and FRecord.KIND == "base" and not hasattr(FRecord, "tags")
    assert FRecord("a", "b").tags is not FRecord("a", "b").tags  # a factory: one list each
    assert hash(FRecord("a", "b", pair=(1, 2))) == hash(DRecord("a", "b", pair=(1, 2)))


def test_a_frozen_instance_refuses_assignment_and_deletion():
    made = FRecord("a", "b")
    for change in (lambda: setattr(made, "size", 4), lambda: setattr(made, "other", 1), lambda: delattr(made, "name")):
        with pytest.raises(AttributeError, match="cannot (assign to|delete) field"):
            change()
    assert made.size == 3


def test_a_field_without_default_after_one_with_is_refused_as_a_dataclass_refuses_it():
    with pytest.raises(TypeError):
        type("Bad", (Frozen,), {"__annotations__": {"a": "int", "b": "int"}, "a": 1})


def test_asdict_gives_the_fields_in_field_order_as_dataclasses_asdict_does():
    """Whatever order the fields were given in (`phg queue show` prints them in this order)."""
    kwargs = {"pair": (1,), "tags": [2], "source": "b", "name": "a"}
    made = FRecord(**kwargs)
    assert list(vars(made)) != list(made._asdict())
    assert made._asdict() == dataclasses.asdict(DRecord(**kwargs))
    assert list(made._asdict()) == [f.name for f in dataclasses.fields(DRecord)]


@dataclasses.dataclass(frozen=True)
class DChecked:
    low: int
    high: int = 10

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low > high")


class FChecked(Frozen):
    low: int
    high: int = 10

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low > high")


@dataclasses.dataclass(frozen=True)
class DOne:
    only: int


class FOne(Frozen):
    only: int


@pytest.mark.parametrize("changes", [{}, {"size": 5}, {"name": "z", "tags": [3]}, {"secret": "t", "pair": (9,)}])
def test_replace_gives_what_dataclasses_replace_gives(changes):
    made, declared = FRecord("a", "b", tags=[1]), DRecord("a", "b", tags=[1])
    assert _answer(FRecord, (), made._replace(**changes)._asdict()) == \
        _answer(DRecord, (), dataclasses.asdict(dataclasses.replace(declared, **changes)))
    assert made == FRecord("a", "b", tags=[1])  # the original unchanged


def test_replace_refuses_what_is_no_field_as_dataclasses_replace_does():
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        FRecord("a", "b")._replace(colour=1)
    with pytest.raises(TypeError):
        dataclasses.replace(DRecord("a", "b"), colour=1)


def test_post_init_checks_construction_and_replace_as_a_dataclass_s_does():
    """cls(20, 10) gives every field by position: Frozen's fast path, which must run __post_init__ too."""
    assert FChecked(1) == FChecked(1, 10) and FChecked(1)._replace(high=2).high == 2
    for make in (lambda cls: cls(11), lambda cls: cls(1, high=0), lambda cls: cls(20, 10)):
        with pytest.raises(ValueError, match="low > high"):
            make(DChecked)
        with pytest.raises(ValueError, match="low > high"):
            make(FChecked)
    with pytest.raises(ValueError, match="low > high"):
        FChecked(1)._replace(low=20)


def test_a_record_with_post_init_survives_pickle_and_deepcopy_as_a_dataclass_does():
    """Both restore __dict__ without calling __init__, so __post_init__ does not run again (as a dataclass's)."""
    for made in (FChecked(1, 5), DChecked(1, 5)):
        for again in (pickle.loads(pickle.dumps(made)), copy.deepcopy(made)):
            assert again == made and type(again) is type(made) and (again.low, again.high) == (1, 5)


def test_one_field_compares_and_hashes_as_a_dataclass():
    """== and hash over one field: a tuple of one value, as the dataclass's (more fields: test above)."""
    assert FOne(1) == FOne(1) and FOne(1) != FOne(2) and hash(FOne(7)) == hash(DOne(7))
    assert FOne(1) != DOne(1) and FOne(1) != 1


def test_a_class_var_annotated_with_typing_s_object_is_no_field():
    """Without `from __future__ import annotations` an annotation is typing's object, not its text."""
    made = type("Counted", (Frozen,), {"__annotations__": {"LIMIT": ClassVar[int], "BARE": ClassVar, "size": int},
                                       "LIMIT": 3, "BARE": 1})
    assert made._names == ("size",) and made(5).size == 5 and made.LIMIT == 3
