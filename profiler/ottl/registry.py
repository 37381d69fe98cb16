"""How OTTL functions are declared: parameters, their kinds, and bound arguments.

Like the collector's `ottl.Factory`: a function declares its parameters in
order (their names are the snake_case names named arguments use), and a
factory turns the arguments bound at compile time into the closure that
runs per sample. Parameter kinds mirror the collector's argument types:

- GETTER: any value, evaluated per sample (`Getter`, `StringGetter`, ...:
  the function converts and checks the type when it runs);
- SETTER: a path the function writes (`GetSetter`); a literal or a
  read-only path is a compile error;
- STRING, INT, BOOL: a literal known at compile time (Go `string`,
  `int64`, `bool` parameters), so patterns and limits are checked once;
- STRINGS: a list literal of strings (`[]string`);
- GETTERS: a list of values (`[]Getter`): a list literal, or any value
  that is a list when the rule runs;
- FUNCTION: a converter's name, called with one string (replace_*).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from profiler.ottl.errors import OttlError

if TYPE_CHECKING:
    from profiler.ottl.context import PathAccessor, SampleContext

Getter = Callable[["SampleContext"], Any]


@dataclass(slots=True)
class Expr:
    """A compiled value: its getter, what it depends on, and its value if constant."""

    get: Getter
    deps: frozenset[str]
    const: bool = False
    value: Any = None
    path: PathAccessor | None = None

    @classmethod
    def constant(cls, value: Any) -> Expr:
        def get(_: SampleContext) -> Any:
            return value

        return cls(get, frozenset(), const=True, value=value)


class Kind(enum.Enum):
    GETTER = "a value"
    SETTER = "a writable path"
    STRING = "a string literal"
    INT = "an int literal"
    BOOL = "a bool literal"
    STRINGS = "a list of string literals"
    GETTERS = "a list"
    FUNCTION = "a converter name"


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kind: Kind
    optional: bool = False


Factory = Callable[["Args"], Getter]


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One editor or converter.

    `pure`: same inputs, same result (foldable, memoizable). `reads`: parts
    of the sample the function reads itself, beyond its arguments.
    """

    name: str
    params: tuple[Param, ...]
    factory: Factory
    pure: bool = True
    reads: frozenset[str] = frozenset()

    @property
    def is_editor(self) -> bool:
        return self.name[0].islower()


@dataclass(slots=True)
class Bound:
    """One argument after compilation; which field is set depends on the kind."""

    param: Param
    expr: Expr | None = None
    literal: Any = None
    path: PathAccessor | None = None
    items: tuple[Expr, ...] | None = None  # GETTERS given as a list literal
    function: FunctionSpec | None = None


@dataclass(slots=True)
class Args:
    """The bound arguments of one call, by parameter name."""

    function: str
    bound: dict[str, Bound] = field(default_factory=dict)
    rule: str = ""

    def has(self, name: str) -> bool:
        return name in self.bound

    def error(self, message: str) -> OttlError:
        return OttlError(f"{self.function}: {message}", rule=self.rule)

    def getter(self, name: str) -> Getter:
        expr = self.bound[name].expr
        assert expr is not None
        return expr.get

    def expr(self, name: str) -> Expr:
        expr = self.bound[name].expr
        assert expr is not None
        return expr

    def literal(self, name: str, default: Any = None) -> Any:
        bound = self.bound.get(name)
        return default if bound is None else bound.literal

    def path(self, name: str) -> PathAccessor:
        path = self.bound[name].path
        assert path is not None
        return path

    def items(self, name: str) -> tuple[tuple[Getter, ...] | None, Getter | None]:
        """GETTERS: (item getters of a list literal, None) or (None, a list-valued getter)."""
        bound = self.bound[name]
        if bound.items is not None:
            return tuple(e.get for e in bound.items), None
        assert bound.expr is not None
        return None, bound.expr.get

    def function_spec(self, name: str) -> FunctionSpec | None:
        bound = self.bound.get(name)
        return None if bound is None else bound.function


REGISTRY: dict[str, FunctionSpec] = {}


def register(
    name: str, *params: Param, pure: bool = True, reads: frozenset[str] = frozenset()
) -> Callable[[Factory], Factory]:
    def add(factory: Factory) -> Factory:
        if name in REGISTRY:  # pragma: no cover - a programming error
            raise ValueError(f"OTTL function {name} registered twice")
        REGISTRY[name] = FunctionSpec(name, params, factory, pure, reads)
        return factory

    return add


def p(name: str, kind: Kind = Kind.GETTER, optional: bool = False) -> Param:
    return Param(name, kind, optional)


def functions() -> Mapping[str, FunctionSpec]:
    """Every editor and converter, loaded on first use."""
    from profiler.ottl import converters, editors  # noqa: F401  (they register themselves)

    return REGISTRY
