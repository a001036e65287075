"""Frozen records without code generated at import (issue 16: `phg send` starts in a few times the
interpreter's own start-up; a frozen dataclass compiles six generated methods per class, about 0.5 ms each
class, and importing dataclasses brings inspect, ast, dis and tokenize).

A subclass of Frozen behaves as a ``@dataclass(frozen=True)`` with the same annotations and defaults:
construction by position in field order or by keyword (defaults, ``field(default_factory=...)``), ``==``
between instances of the same class, ``hash`` and ``repr`` over the fields (``field(repr=False)`` left out),
and no assignment or deletion (AttributeError, as dataclasses' FrozenInstanceError is). Fields are the
class's annotations but ClassVar, base classes' first; ``field(compare=False)`` is left out of == and hash.
``_asdict()`` gives the fields in field order (shallow, as a namedtuple's; ``vars()`` need not be in that
order). ``_replace(**changes)`` is a copy with some fields changed, made by the class (as dataclasses.replace
and a namedtuple's _replace). ``__post_init__``, when a subclass defines it, runs after construction and may refuse
the values (as a dataclass's). Not provided: ``dataclasses.replace/asdict/fields`` (they take dataclasses only),
an ``inspect.signature`` naming the fields, ``__match_args__``, and the mutable-default check.
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue 16: `phg send` starts without it)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar, NoReturn

_MISSING = object()


class _Field:
    __slots__ = ("default", "factory", "repr", "compare")

    def __init__(self, default: Any, factory: Callable[[], Any] | None, repr: bool, compare: bool):
        self.default, self.factory, self.repr, self.compare = default, factory, repr, compare


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None, repr: bool = True,
          compare: bool = True) -> Any:
    """A field whose default is made for each instance (``default_factory``), which repr leaves out
    (``repr=False``: a secret), or which == and hash leave out (``compare=False``), as dataclasses.field."""
    return _Field(default, default_factory, repr, compare)


def _is_class_var(annotation: Any) -> bool:
    """ClassVar or ClassVar[...], by the annotation's text (from __future__ import annotations) or, for typing's
    object, by its repr ("typing.ClassVar[int]"): typing is not imported to compare it."""
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


class Frozen:
    """The base of a frozen record (module docstring)."""

    _names: ClassVar[tuple[str, ...]] = ()  # the fields, in order
    _known: ClassVar[frozenset[str]] = frozenset()
    _defaults: ClassVar[dict[str, Any]] = {}
    _factories: ClassVar[dict[str, Callable[[], Any]]] = {}
    _shown: ClassVar[tuple[str, ...]] = ()  # the fields repr shows
    _compared: ClassVar[tuple[str, ...]] = ()  # the fields == and hash compare
    _key: ClassVar[Callable[[Any], tuple[Any, ...]]]  # their values, as a tuple

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = {name: _Field(cls._defaults.get(name, _MISSING), cls._factories.get(name), name in cls._shown,
                               name in cls._compared) for name in cls._names}
        for name, annotation in cls.__dict__.get("__annotations__", {}).items():
            if not _is_class_var(annotation):
                given = cls.__dict__.get(name, _MISSING)
                fields[name] = given if isinstance(given, _Field) else _Field(given, None, True, True)
                if isinstance(given, _Field) and given.default is _MISSING:  # the class attribute: the default,
                    delattr(cls, name)                                          # as a dataclass leaves it
                elif isinstance(given, _Field):
                    setattr(cls, name, given.default)
        optional = [f.default is not _MISSING or f.factory is not None for f in fields.values()]
        if True in optional and False in optional[optional.index(True):]:
            raise TypeError(f"{cls.__name__}: a field without a default follows one with a default")
        cls._names, cls._known = tuple(fields), frozenset(fields)
        cls._defaults = {name: f.default for name, f in fields.items() if f.default is not _MISSING}
        cls._factories = {name: f.factory for name, f in fields.items() if f.factory is not None}
        cls._shown = tuple(name for name, f in fields.items() if f.repr)
        cls._compared = compared = tuple(name for name, f in fields.items() if f.compare)
        # attrgetter: one C call for ==, != and hash (a Python loop over the fields costs 6 times more; issue 16)
        cls._key = attrgetter(*compared) if len(compared) > 1 else staticmethod(lambda record: (
            tuple(getattr(record, name) for name in compared)))  # (an attrgetter is no method: it stays unbound)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = self._names
        if len(args) == len(names) and not kwargs:  # every field by position: nothing to check or fill
            self.__dict__.update(zip(names, args, strict=True))
            self.__post_init__()
            return
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}() takes {len(names)} positional arguments but {len(args)} "
                            "were given")
        values = dict(zip(names, args, strict=False))
        if kwargs:
            if not self._known.issuperset(kwargs):
                unknown = next(name for name in kwargs if name not in self._known)
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {unknown!r}")
            if not values.keys().isdisjoint(kwargs):
                twice = next(name for name in kwargs if name in values)
                raise TypeError(f"{type(self).__name__}() got multiple values for argument {twice!r}")
            values.update(kwargs)
        if len(values) < len(names):
            values = {**self._defaults, **values}
            if len(values) < len(names):
                for name in self._factories.keys() - values.keys():
                    values[name] = self._factories[name]()
                if len(values) < len(names):
                    missing = [name for name in names if name not in values]
                    raise TypeError(f"{type(self).__name__}() missing required positional argument(s): "
                                    f"{', '.join(map(repr, missing))}")
        self.__dict__.update(values)
        self.__post_init__()

    def _asdict(self) -> dict[str, Any]:
        """The fields and their values, in field order."""
        values = self.__dict__
        return {name: values[name] for name in self._names}

    def _replace(self, **changes: Any) -> Any:
        """A new record of this class with ``changes`` to the fields (TypeError for a name that is no field),
        made and checked as the constructor makes and checks one."""
        return type(self)(**{**self._asdict(), **changes})

    def __post_init__(self) -> None:
        """Checks a subclass makes of a new record's values (ValueError, TypeError)."""

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        key = self._key
        return key(self) == key(other)

    def __hash__(self) -> int:
        return hash(self._key(self))

    def __repr__(self) -> str:
        values = self.__dict__
        return f"{type(self).__qualname__}({', '.join(f'{name}={values[name]!r}' for name in self._shown)})"

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"cannot delete field {name!r}")
