"""Dataclasses for the profile model, without importing ``dataclasses`` before it is needed.

``import dataclasses`` imports ``inspect``, which costs more CPU than importing spprof and
profiling a short run together (docs/design.md, "What every user pays"). ``record`` writes the
same ``__init__``, ``__repr__``, ``__eq__`` and ``__hash__`` a dataclass has, and describes
its fields to the ``dataclasses`` module when that module asks (``fields``, ``asdict``,
``replace`` and ``is_dataclass`` then work as on any dataclass).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict


class field:  # noqa: N801  (named as the dataclasses function it stands for)
    """A field with a default that is left out of ``repr`` and/or comparisons."""

    def __init__(self, *, default: Any = None, repr: bool = True, compare: bool = True) -> None:
        self.default, self.repr, self.compare = default, repr, compare


class _Described:
    """``__dataclass_fields__`` and ``__dataclass_params__``, made by ``dataclasses`` itself (from
    a copy of the class's fields) the first time anything reads them."""

    def __init__(self, attribute: str) -> None:
        self.attribute = attribute

    def __get__(self, instance: Any, owner: type) -> Any:
        record_class = owner._record_class
        described = record_class.__dict__.get("_described")
        if described is None:
            import dataclasses

            spec = record_class._record_spec
            namespace: Dict[str, Any] = {"__annotations__": {n: t for n, t, _ in spec["fields"]},
                                         "__module__": record_class.__module__,
                                         "__qualname__": record_class.__qualname__}
            for name, _, f in spec["fields"]:
                if f is not None:
                    namespace[name] = dataclasses.field(default=f.default, repr=f.repr, compare=f.compare)
                elif name in spec["defaults"]:
                    namespace[name] = spec["defaults"][name]
            twin = dataclasses.dataclass(frozen=spec["frozen"])(type(record_class.__name__, (), namespace))
            described = {"__dataclass_fields__": twin.__dataclass_fields__,
                         "__dataclass_params__": twin.__dataclass_params__}
            record_class._described = described
        return described[self.attribute]


def _frozen_error(name: str) -> Exception:
    from dataclasses import FrozenInstanceError

    return FrozenInstanceError(f"cannot assign to field {name!r}")


def record(*, frozen: bool = False) -> Callable[[type], type]:
    """The class decorator: ``@record()`` for ``@dataclass``, ``@record(frozen=True)`` for
    ``@dataclass(frozen=True)``."""

    def make(cls: type) -> type:
        fields: list = []
        for name, annotation in cls.__dict__.get("__annotations__", {}).items():
            value = cls.__dict__.get(name, _NO_DEFAULT)
            fields.append((name, annotation, value if isinstance(value, field) else None))
            if isinstance(value, field):
                setattr(cls, name, value.default)
        names = [n for n, _, _ in fields]
        shown = [n for n, _, f in fields if f is None or f.repr]
        compared = [n for n, _, f in fields if f is None or f.compare]
        defaults = {n: getattr(cls, n) for n in names if n in cls.__dict__}
        assign = "object.__setattr__(self, {0!r}, {0})" if frozen else "self.{0} = {0}"
        params = ", ".join(f"{n}=_defaults[{n!r}]" if n in defaults else n for n in names)
        body = "\n".join(f"    {assign.format(n)}" for n in names) or "    pass"
        mine = "".join(f"self.{n}, " for n in compared)
        theirs = "".join(f"other.{n}, " for n in compared)
        shown_fields = ", ".join(f"{n}={{self.{n}!r}}" for n in shown)
        source = (
            f"def __init__(self, {params}):\n{body}\n"
            "def __repr__(self):\n"
            f"    return f'{{self.__class__.__qualname__}}({shown_fields})'\n"
            "def __eq__(self, other):\n"
            "    if other.__class__ is self.__class__:\n"
            f"        return ({mine}) == ({theirs})\n"
            "    return NotImplemented\n"
            "def __hash__(self):\n"
            f"    return hash(({mine}))\n"
        )
        namespace: Dict[str, Any] = {"_defaults": defaults}
        exec(source, namespace)  # code made from the class's own field names, as dataclasses does
        for method in ("__init__", "__repr__", "__eq__", "__hash__"):
            function = namespace[method]
            function.__qualname__ = f"{cls.__qualname__}.{method}"
            setattr(cls, method, function)
        cls.__init__.__annotations__ = {**{n: t for n, t, _ in fields}, "return": None}
        if not frozen:
            cls.__hash__ = None  # type: ignore[assignment]  # mutable and compared: as dataclasses
        else:
            def __setattr__(self: Any, name: str, value: Any) -> None:
                if type(self) is cls or name in names:
                    raise _frozen_error(name)
                object.__setattr__(self, name, value)

            def __delattr__(self: Any, name: str) -> None:
                if type(self) is cls or name in names:
                    raise _frozen_error(name)
                object.__delattr__(self, name)

            cls.__setattr__ = __setattr__  # type: ignore[method-assign]
            cls.__delattr__ = __delattr__  # type: ignore[method-assign]
        if sys.version_info >= (3, 13):
            def __replace__(self: Any, /, **changes: Any) -> Any:
                import dataclasses

                return dataclasses.replace(self, **changes)

            cls.__replace__ = __replace__  # type: ignore[attr-defined]
        if sys.version_info >= (3, 10):
            cls.__match_args__ = tuple(names)  # type: ignore[attr-defined]
        cls._record_class = cls  # type: ignore[attr-defined]
        cls._record_spec = {"fields": fields, "defaults": defaults, "frozen": frozen}  # type: ignore[attr-defined]
        cls.__dataclass_fields__ = _Described("__dataclass_fields__")  # type: ignore[attr-defined]
        cls.__dataclass_params__ = _Described("__dataclass_params__")  # type: ignore[attr-defined]
        return cls

    return make


_NO_DEFAULT = object()
