"""OTTL text -> syntax tree, enforcing the collector's grammar rules.

`grammar.py` accepts a superset (so it can stay LALR); here every node is
checked against what `pkg/ottl/grammar.go` allows where it stands:

- a `where` clause and a condition are booleans joined by `and`/`or`, each
  optionally negated once with `not`: a comparison, `true`/`false`, a
  converter call, or a condition in parentheses;
- a comparison's sides, arguments, list items and map values are values:
  `nil`, strings, bytes, booleans, enums, lists, maps, or math;
- math (`+ - * /`, parentheses, unary sign) takes only int and float
  literals, paths and converters;
- a statement is one editor (lowercase name) call, not indexed; converters
  start with a capital; named arguments come after positional ones;
- path segments are lowercase; a bare capitalized name is an enum
  (all capitals) or, as an argument, a converter's name.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from lark import Token, Tree

from profiler.ottl import nodes
from profiler.ottl.errors import OttlError
from profiler.ottl.grammar import parse_tree
from profiler.ottl.literals import LiteralError, parse_bytes, parse_float, parse_int, unquote

_LOWER_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
# The collector's lexer reserves these; lark's contextual lexer would take them
# as names where a keyword cannot stand, so they are refused here.
_KEYWORDS = frozenset({"and", "or", "not", "true", "false", "nil"})
_ENUM_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_CONDITION_TREES = {"or_expr", "and_expr", "negation", "comparison"}
_LITERAL_KINDS = {
    "string_lit": "a string",
    "bytes_lit": "bytes",
    "nil_lit": "nil",
    "true_lit": "a boolean",
    "false_lit": "a boolean",
    "list": "a list",
    "map": "a map",
}

_Node = Tree[Token] | Token


def parse_statement(text: str) -> nodes.Statement:
    """Parse one transform statement: `editor(args) [where condition]`."""
    tree = parse_tree(text, "statement")
    with too_deep_is_an_error(text):
        return _Builder(text).statement(tree)


def parse_condition(text: str) -> nodes.Condition:
    """Parse one filter condition (what follows `where` in a statement)."""
    tree = parse_tree(text, "condition")
    with too_deep_is_an_error(text):
        return _Builder(text).condition(tree.children[0])


def parse_value(text: str) -> nodes.Value:
    """Parse one value: what an argument or a comparison's side may be."""
    tree = parse_tree(text, "value")
    with too_deep_is_an_error(text):
        return _Builder(text).value(tree.children[0], argument=False)


@contextlib.contextmanager
def too_deep_is_an_error(text: str) -> Iterator[None]:
    """Hundreds of nested parentheses exhaust Python's stack: reject the rule instead."""
    try:
        yield
    except RecursionError:
        raise OttlError("rule nested too deeply", rule=text) from None


def _pos(node: _Node) -> nodes.Pos:
    if isinstance(node, Token):
        return (node.line or 1, node.column or 1)
    meta = node.meta
    if meta.empty:
        return (1, 1)
    return (meta.line, meta.column)


class _Builder:
    def __init__(self, text: str) -> None:
        self.text = text

    def error(self, message: str, node: _Node | nodes.Pos) -> OttlError:
        line, column = node if isinstance(node, tuple) else _pos(node)
        return OttlError(message, rule=self.text, line=line, column=column)

    # ---- statements and conditions -------------------------------------

    def statement(self, tree: Tree[Token]) -> nodes.Statement:
        invocation, *rest = tree.children
        assert isinstance(invocation, Tree)
        name = self._name(invocation)
        if not name[0].islower():
            raise self.error(
                f"editor names must start with a lowercase letter but got '{name}'", invocation
            )
        editor = self.call(invocation)
        if editor.keys:
            raise self.error(
                f"only paths and converters may be indexed, not editors, but got {name}",
                invocation,
            )
        where = self.condition(rest[0]) if rest else None
        return nodes.Statement(editor, where, pos=_pos(tree))

    def condition(self, node: _Node) -> nodes.Condition:
        if isinstance(node, Tree):
            if node.data == "or_expr":
                return nodes.Or(tuple(self.condition(c) for c in node.children), pos=_pos(node))
            if node.data == "and_expr":
                return nodes.And(tuple(self.condition(c) for c in node.children), pos=_pos(node))
            if node.data == "negation":
                return nodes.Not(self._boolean(node.children[1]), pos=_pos(node))
        return self._boolean(node)

    def _boolean(self, node: _Node) -> nodes.Condition:
        """One boolean value: a comparison, true/false, a converter, or (condition)."""
        if isinstance(node, Tree):
            if node.data == "comparison":
                left, op, right = node.children
                return nodes.Comparison(str(op), self.value(left), self.value(right), pos=_pos(op))
            if node.data in ("true_lit", "false_lit"):
                return nodes.BoolConst(node.data == "true_lit", pos=_pos(node))
            if node.data == "invocation":
                return nodes.BoolCall(self._converter(node), pos=_pos(node))
            if node.data == "paren":
                return self.condition(node.children[1])
        raise self.error(
            "expected a condition: a comparison, true or false, a converter,"
            " or a condition in parentheses",
            node,
        )

    # ---- values ----------------------------------------------------------

    def value(self, node: _Node, *, argument: bool = False) -> nodes.Value:
        if not isinstance(node, Tree):  # pragma: no cover - every token sits in a tree
            raise self.error("expected a value", node)
        kind = node.data
        pos = _pos(node)
        if kind in _CONDITION_TREES:
            raise self.error(
                "a condition cannot be used as a value (comparisons, and, or, not"
                " belong in a where clause)",
                node,
            )
        if kind == "nil_lit":
            return nodes.Literal(None, pos=pos)
        if kind in ("true_lit", "false_lit"):
            return nodes.Literal(kind == "true_lit", pos=pos)
        if kind == "string_lit":
            return nodes.Literal(self._string(node.children[0]), pos=pos)
        if kind == "bytes_lit":
            token = node.children[0]
            try:
                return nodes.Literal(parse_bytes(str(token)), pos=pos)
            except LiteralError as e:
                raise self.error(str(e), node) from None
        if kind == "list":
            return nodes.ListExpr(tuple(self.value(c) for c in node.children[1:]), pos=pos)
        if kind == "map":
            items = []
            for item in node.children[1:]:
                assert isinstance(item, Tree)
                key, val = item.children
                items.append((self._string(key), self.value(val)))
            return nodes.MapExpr(tuple(items), pos=pos)
        if kind == "path":
            bare = self._bare_capitalized(node)
            if bare is not None:
                if _ENUM_NAME.match(bare):
                    return nodes.EnumSymbol(bare, pos=pos)
                if argument:
                    return nodes.FunctionRef(bare, pos=pos)
                raise self.error(
                    f"'{bare}' is neither a path (paths are lowercase) nor an enum"
                    " (enums are all capitals)",
                    node,
                )
        return self.math(node)

    def math(self, node: _Node) -> nodes.Value:
        """A math expression: numbers, paths, converters, + - * /, sign, parentheses."""
        if not isinstance(node, Tree):  # pragma: no cover
            raise self.error("expected a math expression", node)
        kind = node.data
        pos = _pos(node)
        if kind == "int_lit":
            return nodes.Literal(self._int(node.children[0]), pos=pos)
        if kind == "float_lit":
            return nodes.Literal(self._float(node.children[0]), pos=pos)
        if kind == "path":
            bare = self._bare_capitalized(node)
            if bare is not None:
                raise self.error(f"'{bare}' cannot be used in a math expression", node)
            return self.path(node)
        if kind == "invocation":
            return self._converter(node)
        if kind in ("sum", "product"):
            children = node.children
            result = self.math(children[0])
            for i in range(1, len(children), 2):
                op = children[i]
                result = nodes.BinaryOp(str(op), result, self.math(children[i + 1]), pos=_pos(op))
            return result
        if kind == "signed":
            op, operand = node.children
            if str(op) == "+":
                return self.math(operand)
            if isinstance(operand, Tree) and operand.data == "int_lit":
                return nodes.Literal(-self._int(operand.children[0]), pos=pos)
            if isinstance(operand, Tree) and operand.data == "float_lit":
                return nodes.Literal(-self._float(operand.children[0]), pos=pos)
            return nodes.Negate(self.math(operand), pos=pos)
        if kind == "paren":
            inner = node.children[1]
            if isinstance(inner, Tree) and inner.data in _CONDITION_TREES:
                raise self.error("a condition cannot be used in a math expression", inner)
            return self.math(inner)
        if kind in _CONDITION_TREES:
            raise self.error("a condition cannot be used in a math expression", node)
        what = _LITERAL_KINDS.get(kind, kind)
        raise self.error(f"{what} cannot be used in a math expression", node)

    def path(self, tree: Tree[Token]) -> nodes.Path:
        fields = []
        for f in tree.children:
            assert isinstance(f, Tree)
            name_tok, *keys = f.children
            name = str(name_tok)
            self._not_keyword(name_tok)
            if not _LOWER_NAME.match(name):
                raise self.error(
                    f"path segment '{name}' must be lowercase letters, digits and '_'",
                    name_tok,
                )
            fields.append(nodes.Field(name, self._keys(keys), pos=_pos(f)))
        return nodes.Path(tuple(fields), pos=_pos(tree))

    def call(self, tree: Tree[Token]) -> nodes.Call:
        name_tok, *rest = tree.children
        self._not_keyword(name_tok)
        args: list[nodes.Argument] = []
        keys: list[_Node] = []
        seen_named = False
        for child in rest:
            if isinstance(child, Tree) and child.data == "key":
                keys.append(child)
            elif isinstance(child, Tree) and child.data == "named_arg":
                arg_name, arg_value = child.children
                self._not_keyword(arg_name)
                if not str(arg_name)[0].islower():
                    raise self.error(
                        f"argument names start with a lowercase letter, got '{arg_name}'",
                        arg_name,
                    )
                seen_named = True
                args.append(
                    nodes.Argument(
                        str(arg_name), self.value(arg_value, argument=True), pos=_pos(child)
                    )
                )
            else:
                if seen_named:
                    raise self.error("positional arguments must come before named arguments", child)
                args.append(nodes.Argument(None, self.value(child, argument=True), pos=_pos(child)))
        return nodes.Call(str(name_tok), tuple(args), self._keys(keys), pos=_pos(tree))

    def _converter(self, tree: Tree[Token]) -> nodes.Call:
        name = self._name(tree)
        if not name[0].isupper():
            raise self.error(
                f"converter names must start with an uppercase letter but got '{name}'", tree
            )
        return self.call(tree)

    # ---- pieces ------------------------------------------------------------

    def _keys(self, keys: list[_Node]) -> tuple[nodes.Value, ...]:
        out: list[nodes.Value] = []
        for key in keys:
            assert isinstance(key, Tree)
            inner = key.children[0]
            if isinstance(inner, Tree) and inner.data == "string_lit":
                out.append(nodes.Literal(self._string(inner.children[0]), pos=_pos(inner)))
            else:
                if isinstance(inner, Tree) and inner.data in _CONDITION_TREES:
                    raise self.error("a condition cannot be used as a key", inner)
                out.append(self.math(inner))
        return tuple(out)

    def _not_keyword(self, token: _Node) -> None:
        if str(token) in _KEYWORDS:
            raise self.error(f"'{token}' is a keyword, not a name", token)

    @staticmethod
    def _name(tree: Tree[Token]) -> str:
        return str(tree.children[0])

    @staticmethod
    def _bare_capitalized(tree: Tree[Token]) -> str | None:
        """The name when a path is one capitalized identifier without keys."""
        if len(tree.children) != 1:
            return None
        field = tree.children[0]
        assert isinstance(field, Tree)
        if len(field.children) != 1:
            return None
        name = str(field.children[0])
        return name if name[0].isupper() else None

    def _string(self, token: _Node) -> str:
        assert isinstance(token, Token)
        try:
            return unquote(str(token))
        except LiteralError as e:
            line, column = _pos(token)
            raise self.error(f"invalid string: {e}", (line, column + e.offset)) from None

    def _int(self, token: _Node) -> int:
        try:
            return parse_int(str(token))
        except LiteralError as e:
            raise self.error(str(e), token) from None

    def _float(self, token: _Node) -> float:
        try:
            return parse_float(str(token))
        except LiteralError as e:
            raise self.error(str(e), token) from None
