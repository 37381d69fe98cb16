"""Syntax tree -> Python closures, once per rule; evaluating a rule walks no tree.

Every value becomes a getter `ctx -> value` and every condition a predicate
`ctx -> bool`. Work that does not depend on the sample is done here, once:

- constant subexpressions are folded (`1 + 2`, `Concat(["a", "b"], "")`);
- a comparison with a literal is specialized for the literal's type
  (`attributes["k"] == "v"` is one dict lookup and one `==`), and the
  collector's cross-type rules are kept exact (`values.compare`);
- regex and glob arguments given as literals are compiled once;
- a pure converter whose inputs are only the stack is memoized per stack
  key, so `IsMatch(Concat(stack.functions, ";"), ...)` runs once per stack.

Math follows `pkg/ottl/math.go`: int64 with wrap-around and truncating
division, float64, an int mixed with a float computes in float64, division
by zero and non-numbers are errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from profiler.ottl import context, nodes
from profiler.ottl.context import Key, PathAccessor, SampleContext
from profiler.ottl.errors import OttlError, OttlRuntimeError
from profiler.ottl.literals import wrap_int64
from profiler.ottl.nodes import render
from profiler.ottl.registry import Args, Bound, Expr, FunctionSpec, Getter, Kind, Param
from profiler.ottl.values import MIRROR, OPS, compare, type_name

Predicate = Callable[[SampleContext], bool]
_IMMUTABLE = (type(None), bool, int, float, str, bytes)
_MEMO_LIMIT = 16384


def _const_predicate(value: bool) -> Predicate:
    return (lambda ctx: True) if value else (lambda ctx: False)


class Compiler:
    """Compiles the nodes of one rule; errors name the rule and the position."""

    def __init__(
        self, rule: str, functions: Mapping[str, FunctionSpec], enums: Mapping[str, int]
    ) -> None:
        self.rule = rule
        self.functions = functions
        self.enums = enums

    def error(self, message: str, pos: nodes.Pos) -> OttlError:
        line, column = pos
        return OttlError(message, rule=self.rule, line=line, column=column)

    # ---- statements and conditions -----------------------------------------

    def statement(self, node: nodes.Statement) -> Callable[[SampleContext], None]:
        editor = self.call(node.editor).get
        if node.where is None:
            return editor
        where, const = self.condition(node.where)
        if const is True:
            return editor
        if const is False:
            return lambda ctx: None

        def run(ctx: SampleContext) -> None:
            if where(ctx):
                editor(ctx)

        return run

    def condition(self, node: nodes.Condition) -> tuple[Predicate, bool | None]:
        """The predicate, and its value when it is known without a sample."""
        if isinstance(node, nodes.BoolConst):
            return _const_predicate(node.value), node.value
        if isinstance(node, nodes.Not):
            inner, const = self.condition(node.operand)
            if const is not None:
                return _const_predicate(not const), not const
            return (lambda ctx: not inner(ctx)), None
        if isinstance(node, nodes.And | nodes.Or):
            return self._junction(node)
        if isinstance(node, nodes.Comparison):
            return self.comparison(node)
        if isinstance(node, nodes.BoolCall):
            return self._bool_call(node)
        raise TypeError(f"not a condition: {node!r}")  # pragma: no cover

    def _junction(self, node: nodes.And | nodes.Or) -> tuple[Predicate, bool | None]:
        is_and = isinstance(node, nodes.And)
        parts: list[Predicate] = []
        decided: bool | None = None  # a constant that ends the evaluation
        for operand in node.operands:
            pred, const = self.condition(operand)
            if const is None:
                parts.append(pred)
            elif const is not is_and:  # false in `and`, true in `or`: stop here
                decided = const
                break
            # true in `and`, false in `or`: changes nothing
        if not parts:
            value = is_and if decided is None else decided
            return _const_predicate(value), value
        combined = _all(parts) if is_and else _any(parts)
        if decided is None:
            return combined, None
        # The operands before the constant still run (their errors count).
        if is_and:
            return (lambda ctx: combined(ctx) and False), None
        return (lambda ctx: combined(ctx) or True), None

    def _bool_call(self, node: nodes.BoolCall) -> tuple[Predicate, bool | None]:
        expr = self.call(node.call)
        name = node.call.name
        if expr.const:
            if type(expr.value) is not bool:
                raise self.error(
                    f"{name} returns {type_name(expr.value)}; a condition needs a bool", node.pos
                )
            return _const_predicate(expr.value), expr.value
        get = expr.get

        def pred(ctx: SampleContext) -> bool:
            result = get(ctx)
            if result is True or result is False:
                return result
            raise OttlRuntimeError(
                "value returned from Converter in constant expression must be bool but got"
                f" {type_name(result)}"
            )

        return pred, None

    def comparison(self, node: nodes.Comparison) -> tuple[Predicate, bool | None]:
        left = self.value(node.left)
        right = self.value(node.right)
        op = node.op
        if left.const and right.const:
            value = compare(left.value, right.value, op)
            return _const_predicate(value), value
        if right.const:
            return _compare_to_literal(left, op, right.value), None
        if left.const:
            return _compare_to_literal(right, MIRROR[op], left.value), None
        lg, rg = left.get, right.get
        return (lambda ctx: compare(lg(ctx), rg(ctx), op)), None

    # ---- values ----------------------------------------------------------------

    def value(self, node: nodes.Value) -> Expr:
        if isinstance(node, nodes.Literal):
            return Expr.constant(node.value)
        if isinstance(node, nodes.Path):
            return self.path(node)
        if isinstance(node, nodes.Call):
            return self.call(node)
        if isinstance(node, nodes.BinaryOp):
            return self._math(node)
        if isinstance(node, nodes.Negate):
            return self._negate(node)
        if isinstance(node, nodes.ListExpr):
            return self._list(node)
        if isinstance(node, nodes.MapExpr):
            return self._map(node)
        if isinstance(node, nodes.EnumSymbol):
            if node.name not in self.enums:
                raise self.error(f"enum symbol {node.name} is not defined", node.pos)
            return Expr.constant(self.enums[node.name])
        if isinstance(node, nodes.FunctionRef):
            raise self.error(
                f"'{node.name}' is a converter name, accepted only where a function is expected",
                node.pos,
            )
        raise TypeError(f"not a value: {node!r}")  # pragma: no cover

    def _list(self, node: nodes.ListExpr) -> Expr:
        items = [self.value(v) for v in node.items]
        if all(e.const for e in items):
            return Expr.constant([e.value for e in items])
        getters = [e.get for e in items]
        return Expr(lambda ctx: [g(ctx) for g in getters], _deps(items))

    def _map(self, node: nodes.MapExpr) -> Expr:
        items = {k: self.value(v) for k, v in node.items}  # a repeated key: the last wins
        if all(e.const for e in items.values()):
            return Expr.constant({k: e.value for k, e in items.items()})
        getters = [(k, e.get) for k, e in items.items()]
        return Expr(lambda ctx: {k: g(ctx) for k, g in getters}, _deps(items.values()))

    def path(self, node: nodes.Path) -> Expr:
        fields = []
        deps: set[str] = set()
        for f in node.fields:
            keys = []
            for k in f.keys:
                key, key_deps = self._key(k)
                keys.append(key)
                deps |= key_deps
            fields.append((f.name, tuple(keys)))
        text = render(node)
        try:
            accessor = context.resolve_path(fields, text)
        except OttlError as e:
            raise self.error(e.reason, node.pos) from None
        return Expr(accessor.getter, accessor.deps | deps, path=accessor)

    def _key(self, node: nodes.Value) -> tuple[Key, frozenset[str]]:
        expr = self.value(node)
        text = render(node)
        if expr.const:
            if type(expr.value) is not str and type(expr.value) is not int:
                raise self.error(
                    f"a key must be a string or an int, got {type_name(expr.value)}", node.pos
                )
            return Key(const=expr.value, text=text), frozenset()
        return Key(getter=expr.get, text=text), expr.deps

    def _math(self, node: nodes.BinaryOp) -> Expr:
        left = self.value(node.left)
        right = self.value(node.right)
        op = node.op
        if left.const and right.const:
            try:
                return Expr.constant(math_op(left.value, right.value, op))
            except OttlRuntimeError:
                pass  # fails when the rule runs, where error_mode applies
        lg, rg = left.get, right.get
        if op == "+":

            def add(ctx: SampleContext) -> Any:
                x = lg(ctx)
                y = rg(ctx)
                if type(x) is int and type(y) is int:
                    r = x + y
                    return r if -(1 << 63) <= r < (1 << 63) else wrap_int64(r)
                return math_op(x, y, "+")

            return Expr(add, left.deps | right.deps)
        return Expr(lambda ctx: math_op(lg(ctx), rg(ctx), op), left.deps | right.deps)

    def _negate(self, node: nodes.Negate) -> Expr:
        inner = self.value(node.operand)
        if inner.const:
            try:
                return Expr.constant(negate(inner.value))
            except OttlRuntimeError:
                pass
        get = inner.get
        return Expr(lambda ctx: negate(get(ctx)), inner.deps)

    # ---- calls -------------------------------------------------------------------

    def call(self, node: nodes.Call) -> Expr:
        spec = self.functions.get(node.name)
        if spec is None:
            kind = "editor" if node.name[0].islower() else "converter"
            raise self.error(f"undefined {kind} {node.name}", node.pos)
        args = self._bind(spec, node)
        try:
            get = spec.factory(args)
        except OttlError as e:
            raise self.error(e.reason, node.pos) from None
        deps = spec.reads | _deps(b.expr for b in args.bound.values() if b.expr is not None)
        for b in args.bound.values():
            if b.items is not None:
                deps |= _deps(b.items)
            if b.path is not None:
                deps |= b.path.deps
        expr = Expr(get, deps)
        if node.keys:
            expr = self._index_result(expr, node)
        if not spec.pure or spec.is_editor:
            return expr
        if not expr.deps:
            return _fold(expr)
        if expr.deps == {"stack"}:
            return Expr(_memo_per_stack(expr.get), expr.deps)
        return expr

    def _index_result(self, expr: Expr, node: nodes.Call) -> Expr:
        keys = []
        deps = set(expr.deps)
        for k in node.keys:
            key, key_deps = self._key(k)
            keys.append(key)
            deps |= key_deps
        get = expr.get

        def indexed(ctx: SampleContext) -> Any:
            value = get(ctx)
            for key in keys:
                value = _converter_index(value, key.resolve(ctx))
            return value

        return Expr(indexed, frozenset(deps))

    def _bind(self, spec: FunctionSpec, node: nodes.Call) -> Args:
        params = spec.params
        given: dict[str, nodes.Argument] = {}
        positional = [a for a in node.args if a.name is None]
        if len(positional) > len(params):
            raise self.error(
                f"too many arguments to {spec.name}: it takes at most {len(params)}", node.pos
            )
        for param, arg in zip(params, positional, strict=False):
            given[param.name] = arg
        by_name = {q.name: q for q in params}
        for arg in node.args:
            if arg.name is None:
                continue
            if arg.name not in by_name:
                names = ", ".join(q.name for q in params)
                raise self.error(
                    f"{spec.name} has no parameter named {arg.name} (it has {names})", arg.pos
                )
            if arg.name in given:
                raise self.error(f"argument {arg.name} of {spec.name} given twice", arg.pos)
            given[arg.name] = arg
        args = Args(spec.name, rule=self.rule)
        for param in params:
            chosen = given.get(param.name)
            if chosen is None:
                if not param.optional:
                    raise self.error(f"{spec.name} needs its {param.name} argument", node.pos)
                continue
            args.bound[param.name] = self._bind_one(spec, param, chosen.value)
        return args

    def _bind_one(self, spec: FunctionSpec, param: Param, node: nodes.Value) -> Bound:
        kind = param.kind
        where = f"{spec.name}'s {param.name} argument"
        if kind is Kind.GETTER:
            return Bound(param, expr=self.value(node))
        if kind is Kind.SETTER:
            if not isinstance(node, nodes.Path):
                raise self.error(f"{where} must be a path", node.pos)
            expr = self.path(node)
            assert expr.path is not None
            if expr.path.setter is None:
                raise self.error(f"path {expr.path.text} is read-only and cannot be set", node.pos)
            return Bound(param, expr=expr, path=expr.path)
        if kind in (Kind.STRING, Kind.INT, Kind.BOOL):
            want = {Kind.STRING: str, Kind.INT: int, Kind.BOOL: bool}[kind]
            if not isinstance(node, nodes.Literal) or type(node.value) is not want:
                raise self.error(f"{where} must be {kind.value}", node.pos)
            return Bound(param, literal=node.value)
        if kind is Kind.STRINGS:
            if not isinstance(node, nodes.ListExpr) or not all(
                isinstance(v, nodes.Literal) and type(v.value) is str for v in node.items
            ):
                raise self.error(f"{where} must be {kind.value}", node.pos)
            return Bound(param, literal=[v.value for v in node.items])  # type: ignore[union-attr]
        if kind is Kind.GETTERS:
            if isinstance(node, nodes.ListExpr):
                return Bound(param, items=tuple(self.value(v) for v in node.items))
            return Bound(param, expr=self.value(node))
        # Kind.FUNCTION
        if not isinstance(node, nodes.FunctionRef | nodes.EnumSymbol):
            raise self.error(f"{where} must be {kind.value}", node.pos)
        target = self.functions.get(node.name)
        if target is None or target.is_editor:
            raise self.error(f"{where}: undefined converter {node.name}", node.pos)
        return Bound(param, function=target)


# ---- runtime helpers -----------------------------------------------------------


def _deps(exprs: Any) -> frozenset[str]:
    out: frozenset[str] = frozenset()
    for e in exprs:
        out = out | e.deps
    return out


def _all(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return lambda ctx: a(ctx) and b(ctx)
    if len(parts) == 3:
        a, b, c = parts
        return lambda ctx: a(ctx) and b(ctx) and c(ctx)
    return lambda ctx: all(p(ctx) for p in parts)


def _any(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return lambda ctx: a(ctx) or b(ctx)
    if len(parts) == 3:
        a, b, c = parts
        return lambda ctx: a(ctx) or b(ctx) or c(ctx)
    return lambda ctx: any(p(ctx) for p in parts)


def _fold(expr: Expr) -> Expr:
    """A pure call on constants, computed now when it succeeds and gives a plain value."""
    try:
        value = expr.get(SampleContext())
    except Exception:
        return expr
    if type(value) not in _IMMUTABLE:
        return expr  # a fresh list or map per evaluation, as the collector makes
    return Expr.constant(value)


def _memo_per_stack(get: Getter) -> Getter:
    memo: dict[object, Any] = {}

    def cached(ctx: SampleContext) -> Any:
        key = ctx.stack_key
        if key is None:
            return get(ctx)
        try:
            return memo[key]
        except KeyError:
            pass
        value = get(ctx)
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[key] = value
        return value

    return cached


def _converter_index(value: Any, key: str | int) -> Any:
    # Indexing a converter's result: unlike a path, a missing key is an error.
    t = type(value)
    if type(key) is str:
        if t is not dict:
            raise OttlRuntimeError(f"type, {type_name(value)}, does not support string indexing")
        if key not in value:
            raise OttlRuntimeError("key not found in map")
        return value[key]
    if t is list or t is bytes:
        if 0 <= key < len(value):  # type: ignore[operator]
            return value[key]
        raise OttlRuntimeError(f"index {key} out of bounds")
    raise OttlRuntimeError(f"type, {type_name(value)}, does not support int indexing")


def math_op(x: Any, y: Any, op: str) -> Any:
    tx = type(x)
    ty = type(y)
    if tx is int and ty is int:
        if op == "+":
            return wrap_int64(x + y)
        if op == "-":
            return wrap_int64(x - y)
        if op == "*":
            return wrap_int64(x * y)
        if y == 0:
            raise OttlRuntimeError("attempted to divide by 0")
        q = abs(x) // abs(y)  # Go truncates toward zero
        return wrap_int64(q if (x < 0) == (y < 0) else -q)
    if (tx is int or tx is float) and (ty is int or ty is float):
        a = float(x)
        b = float(y)
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if b == 0:
            raise OttlRuntimeError("attempted to divide by 0")
        return a / b
    if tx is int or tx is float:
        raise OttlRuntimeError(f"{_show(y)} must be int64 or float64")
    raise OttlRuntimeError(f"{_show(x)} must be int64, float64, time.Time or time.Duration")


def negate(value: Any) -> Any:
    t = type(value)
    if t is int:
        return wrap_int64(-value)
    if t is float:
        return -value
    raise OttlRuntimeError(f"unsupported unary minus operation on type {type_name(value)}")


def _show(value: Any) -> str:
    return "<nil>" if value is None else f"{value!r} ({type_name(value)})"


def _map_read(
    accessor: PathAccessor | None,
) -> tuple[Callable[[SampleContext], dict[str, Any]], str] | None:
    """(map of the sample, key) for an `attributes["k"]`-shaped path, to fuse the read."""
    if accessor is None or accessor.map_source is None or accessor.map_key is None:
        return None
    return accessor.map_source, accessor.map_key


def _compare_to_literal(expr: Expr, op: str, lit: Any) -> Predicate:
    """`expr op lit`, specialized for the literal's type (the collector's rules hold)."""
    get = expr.get
    t = type(lit)
    fused = _map_read(expr.path)
    if lit is None:
        if op in ("==", "<=", ">="):
            if fused is not None:
                src, key = fused
                return lambda ctx: src(ctx).get(key) is None
            return lambda ctx: get(ctx) is None
        if op == "!=":
            if fused is not None:
                src, key = fused
                return lambda ctx: src(ctx).get(key) is not None
            return lambda ctx: get(ctx) is not None
        return lambda ctx: get(ctx) is None and False
    if t is str and op in ("==", "!="):
        # A str equals only a str, in Python as in the collector's rules.
        eq = op == "=="
        if fused is not None:
            src, key = fused
            if eq:
                return lambda ctx: src(ctx).get(key) == lit
            return lambda ctx: src(ctx).get(key) != lit
        if eq:
            return lambda ctx: get(ctx) == lit
        return lambda ctx: get(ctx) != lit
    if t is bool and op in ("==", "!="):
        if op == "==":
            return lambda ctx: get(ctx) is lit
        return lambda ctx: get(ctx) is not lit
    fn = OPS[op]
    if t is str or t is bool or t is bytes:
        ne = op == "!="

        def same_type(ctx: SampleContext) -> bool:
            v = get(ctx)
            if type(v) is t:
                return fn(v, lit)
            return ne

        return same_type
    if t is int or t is float:
        ne = op == "!="
        flit = float(lit)

        def numeric(ctx: SampleContext) -> bool:
            v = get(ctx)
            tv = type(v)
            if tv is t:
                return fn(v, lit)
            if tv is int or tv is float:
                return fn(float(v), flit)
            return ne

        return numeric
    return lambda ctx: compare(get(ctx), lit, op)
