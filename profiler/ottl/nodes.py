"""The OTTL syntax tree, and `render` back to rule text.

Nodes are plain frozen dataclasses; `pos` (line, column) is kept for error
messages and left out of equality and repr, so a rendered and re-parsed
rule compares equal to the original. `repr` tells `Literal(1)` from
`Literal(True)` and `Literal(1.0)`, which `==` on Python values would not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from profiler.ottl.literals import quote, render_float

Pos = tuple[int, int]
_NOPOS: Pos = (0, 0)


@dataclass(frozen=True, slots=True)
class Literal:
    """nil, true/false, an int64, a float64, a string or bytes."""

    value: bool | int | float | str | bytes | None
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Literal)
            and type(self.value) is type(other.value)
            and _same(self.value, other.value)
        )

    def __hash__(self) -> int:
        return hash((type(self.value), self.value))


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return repr(a) == repr(b)  # -0.0 is not 0.0 in a rule's text
    return a == b


@dataclass(frozen=True, slots=True)
class EnumSymbol:
    """An all-capitals identifier, resolved to an int64 by the context."""

    name: str
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class FunctionRef:
    """A bare converter name passed as an argument (e.g. `SHA256` to replace_pattern)."""

    name: str
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple[Value, ...]
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class MapExpr:
    items: tuple[tuple[str, Value], ...]
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Field:
    """One dotted segment of a path, with its `[key]` indexes."""

    name: str
    keys: tuple[Value, ...] = ()
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Path:
    fields: tuple[Field, ...]
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Argument:
    name: str | None
    value: Value
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Call:
    """An editor (lowercase name) or converter (capitalized) invocation."""

    name: str
    args: tuple[Argument, ...] = ()
    keys: tuple[Value, ...] = ()
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class BinaryOp:
    """Math: `+ - * /` over int64, float64 and paths/converters returning them."""

    op: str
    left: Value
    right: Value
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Negate:
    """Unary minus on a path, converter or parenthesized math (literals fold)."""

    operand: Value
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


Value = Literal | EnumSymbol | FunctionRef | ListExpr | MapExpr | Path | Call | BinaryOp | Negate


@dataclass(frozen=True, slots=True)
class Comparison:
    op: str
    left: Value
    right: Value
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class BoolConst:
    value: bool
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class BoolCall:
    """A converter used as a condition; it must return a bool at run time."""

    call: Call
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Not:
    operand: Condition
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Condition, ...]
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Condition, ...]
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


Condition = Comparison | BoolConst | BoolCall | Not | And | Or


@dataclass(frozen=True, slots=True)
class Statement:
    """`editor(args) where condition`; `where` is None when absent."""

    editor: Call
    where: Condition | None = None
    pos: Pos = field(default=_NOPOS, compare=False, repr=False, kw_only=True)


# ---- rendering ------------------------------------------------------------

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def render(node: Statement | Condition | Value) -> str:
    """OTTL text that parses back to `node`."""
    if isinstance(node, Statement):
        text = _render_call(node.editor)
        return text if node.where is None else f"{text} where {render(node.where)}"
    if isinstance(node, Or):
        return " or ".join(_render_bool(c, Or) for c in node.operands)
    if isinstance(node, And):
        return " and ".join(_render_bool(c, And) for c in node.operands)
    if isinstance(node, Not):
        inner = node.operand
        body = render(inner)
        return f"not ({body})" if isinstance(inner, Or | And | Not) else f"not {body}"
    if isinstance(node, Comparison):
        return f"{render(node.left)} {node.op} {render(node.right)}"
    if isinstance(node, BoolConst):
        return "true" if node.value else "false"
    if isinstance(node, BoolCall):
        return _render_call(node.call)
    return _render_value(node)


def _render_bool(node: Condition, parent: type[Or] | type[And]) -> str:
    # `and` binds tighter than `or`; a nested same-kind group needs no parens
    # only when it cannot re-associate, so parenthesize every nested group.
    if isinstance(node, Or | And):
        return f"({render(node)})"
    return render(node)


def _render_value(node: Value) -> str:
    if isinstance(node, Literal):
        return _render_literal(node.value)
    if isinstance(node, EnumSymbol | FunctionRef):
        return node.name
    if isinstance(node, ListExpr):
        return "[" + ", ".join(_render_value(v) for v in node.items) + "]"
    if isinstance(node, MapExpr):
        return "{" + ", ".join(f"{quote(k)}: {_render_value(v)}" for k, v in node.items) + "}"
    if isinstance(node, Path):
        return ".".join(f.name + _render_keys(f.keys) for f in node.fields)
    if isinstance(node, Call):
        return _render_call(node)
    if isinstance(node, BinaryOp):
        prec = _PRECEDENCE[node.op]
        left = _render_value(node.left)
        if isinstance(node.left, BinaryOp) and _PRECEDENCE[node.left.op] < prec:
            left = f"({left})"
        right = _render_value(node.right)
        if isinstance(node.right, BinaryOp) and _PRECEDENCE[node.right.op] <= prec:
            right = f"({right})"
        return f"{left} {node.op} {right}"
    if isinstance(node, Negate):
        operand = node.operand
        inner = _render_value(operand)
        # A literal goes in parens: `-1` would fold into Literal(-1).
        return f"-{inner}" if isinstance(operand, Path | Call) else f"-({inner})"
    raise TypeError(f"not an OTTL value: {node!r}")


def _render_literal(value: bool | int | float | str | bytes | None) -> str:
    if value is None:
        return "nil"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return render_float(value)
    if isinstance(value, str):
        return quote(value)
    return "0x" + value.hex()


def _render_keys(keys: tuple[Value, ...]) -> str:
    return "".join(f"[{_render_value(k)}]" for k in keys)


def _render_call(call: Call) -> str:
    args = ", ".join(
        _render_value(a.value) if a.name is None else f"{a.name} = {_render_value(a.value)}"
        for a in call.args
    )
    return f"{call.name}({args}){_render_keys(call.keys)}"
