"""profiler/ottl parsing: the collector's grammar, syntax errors with positions, fuzzing.

The grammar facts come from the collector's `pkg/ottl/grammar.go` and
LANGUAGE.md: operator precedence, what may stand where, literal forms.
Fuzzing checks that any text, and any well-formed syntax tree rendered to
text, either compiles or raises OttlError, never anything else; and that
rendering and parsing round-trip.
"""

from __future__ import annotations

import contextlib
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler.ottl import (
    OttlError,
    compile_conditions,
    compile_statements,
    parse_condition,
    parse_statement,
    parse_value,
    render,
)
from profiler.ottl import nodes as n
from profiler.ottl.literals import INT64_MAX, quote, unquote

# ---- structure ----------------------------------------------------------------


def test_statement_structure() -> None:
    st_ = parse_statement('set(attributes["k"], "v") where attributes["x"] == 1')
    assert st_.editor == n.Call(
        "set",
        (
            n.Argument(None, n.Path((n.Field("attributes", (n.Literal("k"),)),))),
            n.Argument(None, n.Literal("v")),
        ),
    )
    assert st_.where == n.Comparison(
        "==", n.Path((n.Field("attributes", (n.Literal("x"),)),)), n.Literal(1)
    )


def test_and_binds_tighter_than_or_and_not_tighter_than_and() -> None:
    cond = parse_condition("a == 1 or not b == 2 and c == 3")
    assert isinstance(cond, n.Or)
    first, second = cond.operands
    assert isinstance(first, n.Comparison)
    assert isinstance(second, n.And)
    assert isinstance(second.operands[0], n.Not)
    assert isinstance(second.operands[0].operand, n.Comparison)


def test_parentheses_override_precedence() -> None:
    cond = parse_condition("(a == 1 or b == 2) and c == 3")
    assert isinstance(cond, n.And)
    assert isinstance(cond.operands[0], n.Or)


def test_math_precedence_and_left_associativity() -> None:
    assert parse_value("1 + 2 * 3") == n.BinaryOp(
        "+", n.Literal(1), n.BinaryOp("*", n.Literal(2), n.Literal(3))
    )
    assert parse_value("10 - 2 - 3") == n.BinaryOp(
        "-", n.BinaryOp("-", n.Literal(10), n.Literal(2)), n.Literal(3)
    )
    assert parse_value("(1 + 2) * 3") == n.BinaryOp(
        "*", n.BinaryOp("+", n.Literal(1), n.Literal(2)), n.Literal(3)
    )


def test_signs_fold_into_number_literals_but_negate_other_math() -> None:
    assert parse_value("-1") == n.Literal(-1)
    assert parse_value("+1") == n.Literal(1)
    assert parse_value("-.5") == n.Literal(-0.5)
    assert parse_value("1 - -2") == n.BinaryOp("-", n.Literal(1), n.Literal(-2))
    assert parse_value("-value") == n.Negate(n.Path((n.Field("value"),)))
    assert parse_value("-(1)") == n.Negate(n.Literal(1))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("nil", None),
        ("true", True),
        ("false", False),
        ("42", 42),
        ("1.5", 1.5),
        ("1.", 1.0),
        (".25", 0.25),
        ("1.5e3", 1500.0),
        ("0x0001", b"\x00\x01"),
        ("0xAbCd", b"\xab\xcd"),
        (r'"a\"b\\c\n\t"', 'a"b\\c\n\t'),
        (r'"\x41\101\u00e9\U0001F600"', "AAé\U0001f600"),
        ('"é ✓"', "é ✓"),
        (str(INT64_MAX), INT64_MAX),
    ],
)
def test_literals(text: str, value: object) -> None:
    node = parse_value(text)
    assert node == n.Literal(value)  # type: ignore[arg-type]


def test_lists_maps_enums_and_function_names() -> None:
    assert parse_value('[1, "a", [nil]]') == n.ListExpr(
        (n.Literal(1), n.Literal("a"), n.ListExpr((n.Literal(None),)))
    )
    assert parse_value("[]") == n.ListExpr(())
    # The collector's map grammar makes commas optional and allows a trailing one.
    assert parse_value('{"a": 1 "b": {"c": true},}') == n.MapExpr(
        (("a", n.Literal(1)), ("b", n.MapExpr((("c", n.Literal(True)),))))
    )
    assert parse_value("SPAN_KIND_SERVER") == n.EnumSymbol("SPAN_KIND_SERVER")
    call = parse_statement('replace_pattern(attributes["a"], "x", "y", SHA256, Sha)').editor
    assert call.args[3].value == n.EnumSymbol("SHA256")
    assert call.args[4].value == n.FunctionRef("Sha")


def test_paths_keys_and_converter_keys() -> None:
    path = parse_value('resource.attributes["a"][0][attributes["k"]]')
    assert isinstance(path, n.Path)
    assert [f.name for f in path.fields] == ["resource", "attributes"]
    keys = path.fields[1].keys
    assert keys[0] == n.Literal("a")
    assert keys[1] == n.Literal(0)
    assert isinstance(keys[2], n.Path)
    call = parse_value('Split(attributes["s"], ",")[1]')
    assert isinstance(call, n.Call)
    assert call.keys == (n.Literal(1),)


def test_named_arguments() -> None:
    call = parse_statement('truncate_all(attributes, 10, truncation_marker = "…")').editor
    assert [a.name for a in call.args] == [None, None, "truncation_marker"]


# ---- what the collector's grammar rejects ---------------------------------------


@pytest.mark.parametrize(
    ("rule", "line", "column", "message"),
    [
        ('set(attributes["a"], )', 1, 22, "unexpected ')'"),
        ("set(x, 1", 1, 9, "unexpected end of rule"),
        ('set(x, 1)\n  where attributes["a"] ==', 2, 27, "unexpected end of rule"),
        ("set(x, 1) where", 1, 16, "unexpected end of rule"),
        ("set(x, 1 == 2 == 3)", 1, 15, "unexpected '=='"),
        ("set(x, $)", 1, 8, "unexpected '$'"),
        ("set(x, 1) wher a", 1, 11, "unexpected 'wher'"),
        ("Set(x, 1)", 1, 1, "editor names must start with a lowercase letter but got 'Set'"),
        ("set(x, 1)[0]", 1, 1, "only paths and converters may be indexed, not editors"),
        ("set(x, concat(a))", 1, 8, "converter names must start with an uppercase letter"),
        ("set(x, 1) where 1", 1, 17, "expected a condition"),
        ('set(x, 1) where attributes["a"]', 1, 17, "expected a condition"),
        ('set(x, "a" + 1)', 1, 8, "a string cannot be used in a math expression"),
        ("set(x, nil + 1)", 1, 8, "nil cannot be used in a math expression"),
        ("set(x, (1 == 2))", 1, 9, "a condition cannot be used in a math expression"),
        ("set(x, 1 == 2)", 1, 8, "a condition cannot be used as a value"),
        ("set(x, not true)", 1, 8, "a condition cannot be used as a value"),
        ("set(x, 0xabc)", 1, 8, "odd number of hex digits"),
        ("set(x, 9223372036854775808)", 1, 8, "out of int64 range"),
        ("set(x, -9223372036854775808)", 1, 9, "out of int64 range"),
        ("set(x, 1.0e999999)", 1, 8, "out of float64 range"),
        ("set(x, 1e5)", 1, 9, "unexpected 'e5'"),
        ('set(x, "a\\q")', 1, 10, "unknown escape"),
        ('set(x, "a\\\'")', 1, 10, "unknown escape"),
        ('set(x, "a\nb")', 1, 10, "newline in string"),
        ("set(x, y = 1, 2)", 1, 15, "positional arguments must come before named"),
        ('set(Attributes["a"], 1)', 1, 5, "must be lowercase"),
        ("set(attributes.true, 1)", 1, 16, "'true' is a keyword"),
        ("and(x)", 1, 1, "'and' is a keyword"),
        ("set(x, 1) where not == 1", 1, 21, "unexpected '=='"),
        ("set(attributes.Foo, 1)", 1, 16, "must be lowercase"),
        ("set(x, [1 2])", 1, 11, "unexpected '2'"),
        ("set(x, f(1,))", 1, 12, "unexpected ')'"),
        ("", 1, 1, "unexpected end of rule"),
        ("where", 1, 6, "unexpected end of rule"),
        ("set(x, SPAN + 1)", 1, 8, "cannot be used in a math expression"),
        ("set(x, --1)", 1, 9, "unexpected '-'"),
        ("set(x, 1) where not not true", 1, 25, "unexpected 'true'"),
        ("set(x, 1) where not not == 1", 1, 21, "'not' is a keyword"),
    ],
)
def test_syntax_errors_name_line_and_column(
    rule: str, line: int, column: int, message: str
) -> None:
    with pytest.raises(OttlError) as info:
        parse_statement(rule)
    err = info.value
    assert message in err.reason
    assert (err.line, err.column) == (line, column)
    assert err.rule == rule
    assert f"line {line} column {column}" in str(err)


def test_syntax_errors_say_what_was_expected() -> None:
    with pytest.raises(OttlError) as info:
        parse_statement("set(x, 1")
    assert {"')'", "','"} <= set(info.value.expected)
    with pytest.raises(OttlError) as info:
        parse_condition('attributes["a"] ==')
    assert "string" in info.value.expected and "identifier" in info.value.expected


def test_absurd_nesting_is_an_ottl_error_not_a_crash() -> None:
    deep = "(" * 3000 + "true" + ")" * 3000
    with pytest.raises(OttlError, match="nested too deeply"):
        compile_conditions([deep])
    with pytest.raises(OttlError, match="nested too deeply"):
        compile_statements(["set(value, " + "-(" * 3000 + "1" + ")" * 3000 + ")"])


def test_conditions_have_no_editor() -> None:
    assert isinstance(parse_condition("true"), n.BoolConst)
    with pytest.raises(OttlError):
        parse_condition("set(x, 1)")


# ---- render and round trip ------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'set(attributes["k"], "v") where attributes["x"] == 1',
        "set(x, -(1 + 2) * -y / 3 - -4)",
        'keep_keys(attributes, ["a", "b"]) where not (IsMatch(x, "a") or y < 1.5)',
        'set(x, {"a": [1, 0x00ff, nil, true], "b": {}})',
        'limit(attributes, 8, priority_keys = ["pid"])',
        'set(x, Split(attributes["s"], ",")[0]) where (a == 1 and b == 2) or c != 3',
    ],
)
def test_render_round_trips(text: str) -> None:
    node = parse_statement(text)
    assert parse_statement(render(node)) == node
    assert repr(parse_statement(render(node))) == repr(node)


def test_string_quoting_round_trips() -> None:
    for text in ["", "plain", 'q"uote', "back\\slash", "nl\n", "\x00\x1f\x7f", "é✓😀"]:
        assert unquote(quote(text)) == text


# ---- fuzzing --------------------------------------------------------------------

_OTTL_CHARS = string.ascii_letters + string.digits + ' _."[](){},:=!<>+-*/\\\n\t' + "é0x"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=_OTTL_CHARS, max_size=60) | st.text(max_size=30))
def test_random_text_compiles_or_raises_ottl_error(text: str) -> None:
    for compile_one in (
        lambda t: compile_statements([t]),
        lambda t: compile_conditions([t]),
        parse_value,
    ):
        with contextlib.suppress(OttlError):
            compile_one(text)


_KEYWORDS = {"and", "or", "not", "true", "false", "nil", "where"}
_lower = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s not in _KEYWORDS)
_editor_name = st.from_regex(r"[a-z][A-Za-z0-9_]{0,8}", fullmatch=True).filter(
    lambda s: s not in _KEYWORDS
)
_converter_name = st.from_regex(r"[A-Z][A-Za-z0-9_]{0,8}", fullmatch=True)
_enum_name = st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True)
_function_ref = st.from_regex(r"[A-Z][A-Za-z0-9_]{0,8}", fullmatch=True).filter(
    lambda s: any(c.islower() for c in s)
)
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_int = st.integers(-INT64_MAX, INT64_MAX)
_float = st.floats(allow_nan=False, allow_infinity=False)

# Real function names too, so compilation gets past "undefined function" often.
_real_converters = st.sampled_from(
    ["Concat", "IsMatch", "Int", "Len", "Split", "String", "SHA256", "IsString", "ToLowerCase"]
)
_real_editors = st.sampled_from(["set", "delete_key", "keep_keys", "limit", "truncate_all"])
_real_paths = st.sampled_from(["attributes", "resource", "frames", "stack", "value"])


def _math(children: st.SearchStrategy[n.Value]) -> st.SearchStrategy[n.Value]:
    return st.one_of(
        st.builds(n.BinaryOp, st.sampled_from("+-*/"), children, children),
        st.builds(n.Negate, children),
    )


@st.composite
def _paths(draw: st.DrawFn, keys: st.SearchStrategy[n.Value]) -> n.Path:
    count = draw(st.integers(1, 3))
    fields = []
    for i in range(count):
        name = draw(_real_paths if i == 0 else _lower)
        fields.append(n.Field(name, tuple(draw(st.lists(keys, max_size=2)))))
    return n.Path(tuple(fields))


def _values() -> st.SearchStrategy[n.Value]:
    def extend(children: st.SearchStrategy[n.Value]) -> st.SearchStrategy[n.Value]:
        math_leaf = st.one_of(
            st.builds(n.Literal, _int), st.builds(n.Literal, _float), _paths(_keys(children))
        )
        return st.one_of(
            _math(st.one_of(math_leaf, children.map(_as_math))),
            st.builds(n.ListExpr, st.lists(children, max_size=3).map(tuple)),
            st.builds(n.MapExpr, st.lists(st.tuples(_text, children), max_size=3).map(tuple)),
            _paths(_keys(children)),
            _calls(children),
        )

    leaves = st.one_of(
        st.builds(n.Literal, st.none() | st.booleans() | _int | _float | _text),
        st.builds(n.Literal, st.binary(min_size=1, max_size=4)),
        st.builds(n.EnumSymbol, _enum_name),
    )
    return st.recursive(leaves, extend, max_leaves=8)


def _as_math(v: n.Value) -> n.Value:
    """`v` where math allows it, else a number (a map, not a filter: cheaper to draw)."""
    return v if _is_math(v) else n.Literal(0)


def _is_math(v: n.Value) -> bool:
    if isinstance(v, n.Literal):
        return type(v.value) in (int, float)
    if isinstance(v, n.Path):
        return True
    if isinstance(v, n.Call):
        return v.name[0].isupper()
    return isinstance(v, n.BinaryOp | n.Negate)


def _keys(values: st.SearchStrategy[n.Value]) -> st.SearchStrategy[n.Value]:
    return st.one_of(st.builds(n.Literal, _text), st.builds(n.Literal, _int), values.map(_as_math))


def _args(values: st.SearchStrategy[n.Value]) -> st.SearchStrategy[tuple[n.Argument, ...]]:
    positional = st.lists(
        st.builds(n.Argument, st.none(), values | st.builds(n.FunctionRef, _function_ref)),
        max_size=3,
    )
    named = st.lists(st.builds(n.Argument, _lower, values), max_size=2)
    return st.tuples(positional, named).map(lambda pn: tuple(pn[0] + pn[1]))


def _calls(values: st.SearchStrategy[n.Value]) -> st.SearchStrategy[n.Call]:
    return st.builds(
        n.Call,
        _converter_name | _real_converters,
        _args(values),
        st.lists(_keys(values), max_size=2).map(tuple),
    )


_VALUES = _values()


def _conditions() -> st.SearchStrategy[n.Condition]:
    leaves: st.SearchStrategy[n.Condition] = st.one_of(
        st.builds(
            n.Comparison, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), _VALUES, _VALUES
        ),
        st.builds(n.BoolConst, st.booleans()),
        st.builds(n.BoolCall, _calls(_VALUES)),
    )

    def extend(children: st.SearchStrategy[n.Condition]) -> st.SearchStrategy[n.Condition]:
        return st.one_of(
            st.builds(n.Not, children),
            st.builds(n.And, st.lists(children, min_size=2, max_size=3).map(tuple)),
            st.builds(n.Or, st.lists(children, min_size=2, max_size=3).map(tuple)),
        )

    return st.recursive(leaves, extend, max_leaves=6)


_CONDITIONS = _conditions()
_STATEMENTS = st.builds(
    n.Statement,
    st.builds(n.Call, _editor_name | _real_editors, _args(_VALUES), st.just(())),
    st.none() | _CONDITIONS,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_STATEMENTS)
def test_random_statements_round_trip_and_compile_or_raise_ottl_error(
    node: n.Statement,
) -> None:
    text = render(node)
    again = parse_statement(text)
    assert again == node, text
    assert repr(again) == repr(node), text
    with contextlib.suppress(OttlError):
        compile_statements([text])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_CONDITIONS)
def test_random_conditions_round_trip_and_compile_or_raise_ottl_error(
    node: n.Condition,
) -> None:
    text = render(node)
    again = parse_condition(text)
    assert again == node, text
    assert repr(again) == repr(node), text
    with contextlib.suppress(OttlError):
        compile_conditions([text])
