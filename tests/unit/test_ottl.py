"""profiler/ottl: conformance with the collector's documented OTTL semantics.

Sources of the expected values: `pkg/ottl/LANGUAGE.md` (comparison rules
table, math, paths, booleans), `compare.go` (nil and bytes corner cases),
`math.go` (int/float, division), `ottlfuncs/README.md`, and the filter
and transform processors' `error_mode`. Functions are in
test_ottl_functions.py, parsing in test_ottl_grammar.py.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler.ottl import (
    ErrorMode,
    Frame,
    OttlError,
    OttlRuntimeError,
    SampleContext,
    compile_condition,
    compile_conditions,
    compile_statement,
    compile_statements,
    compile_value,
)
from profiler.ottl.literals import INT64_MAX, INT64_MIN
from profiler.ottl.nodes import Literal, render
from profiler.ottl.values import compare, deep_equal


def sample(**attrs: Any) -> SampleContext:
    return SampleContext(
        resource_attributes={"service.name": "shop", "host.name": "web-1"},
        attributes=dict(attrs),
        frames=[
            Frame("json_dumps", "json.py", 10, "python", "/usr/lib/python3.11"),
            Frame("handle", "app.c", 42, "native", "/usr/bin/app"),
            Frame("do_syscall_64", "", 0, "kernel", "[kernel.kallsyms]"),
        ],
        value=3,
        time_unix_nano=1_700_000_000_000_000_000,
        stack_key=None,
    )


def ev(text: str, ctx: SampleContext | None = None) -> Any:
    return compile_value(text)(ctx or sample())


def holds(text: str, ctx: SampleContext | None = None) -> bool:
    return compile_condition(text)(ctx or sample())


def lit(value: Any) -> str:
    """OTTL text for a literal value, lists and maps included."""
    if isinstance(value, list):
        return "[" + ", ".join(lit(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{render(Literal(k))}: {lit(v)}" for k, v in value.items()) + "}"
    return render(Literal(value))


# ---- comparison rules (LANGUAGE.md table) -------------------------------------

OPS = ["==", "!=", "<", "<=", ">", ">="]

# (left, right, the operators that are true); everything else is false.
COMPARISONS: list[tuple[Any, Any, set[str]]] = [
    (None, None, {"==", "<=", ">="}),  # "true for equality only" (<= and >= include it)
    (None, "a", {"!="}),
    ("a", None, {"!="}),
    (None, 0, {"!="}),
    (None, False, {"!="}),
    (None, b"\x01", {"!="}),
    (1, 1, {"==", "<=", ">="}),
    (1, 2, {"!=", "<", "<="}),
    (-1, -2, {"!=", ">", ">="}),
    (1, 1.0, {"==", "<=", ">="}),  # int and float: compared as float64
    (1, 1.5, {"!=", "<", "<="}),
    (2.5, 2, {"!=", ">", ">="}),
    (1.5, 1.5, {"==", "<=", ">="}),
    ("a", "a", {"==", "<=", ">="}),
    ("a", "b", {"!=", "<", "<="}),
    ("B", "a", {"!=", "<", "<="}),  # Go string order: bytes, so uppercase first
    ("é", "z", {"!=", ">", ">="}),
    ("", "a", {"!=", "<", "<="}),
    (False, True, {"!=", "<", "<="}),  # false < true
    (True, True, {"==", "<=", ">="}),
    (b"\x01", b"\x02", {"!=", "<", "<="}),  # byte-for-byte
    (b"\x01\x02", b"\x01\x02", {"==", "<=", ">="}),
    (b"\x01", b"\x01\x00", {"!=", "<", "<="}),
    ("1", 1, {"!="}),  # different types: "not equal"
    (1, "1", {"!="}),
    (True, 1, {"!="}),
    (0, False, {"!="}),
    (1.0, True, {"!="}),
    ("true", True, {"!="}),
    (b"a", "a", {"!="}),
    ({"a": 1}, {"a": 1}, {"=="}),  # maps and lists: == and != only
    ({"a": 1}, {"a": 2}, {"!="}),
    ({"a": 1}, {"a": 1.0}, {"!="}),  # reflect.DeepEqual: types must match
    ([1, "x"], [1, "x"], {"=="}),
    ([1], [2], {"!="}),
    ([1], [1.0], {"!="}),
    ([], {}, {"!="}),
    ([1], 1, {"!="}),
]


@pytest.mark.parametrize(("left", "right", "true_ops"), COMPARISONS)
def test_comparison_rules(left: Any, right: Any, true_ops: set[str]) -> None:
    ctx = sample(l=left, r=right)
    for op in OPS:
        expected = op in true_ops
        assert compare(left, right, op) is expected, (left, op, right)
        # Both sides dynamic, one side a literal (each side), both literal:
        # the compiler specializes each shape; all must agree.
        assert holds(f'attributes["l"] {op} attributes["r"]', ctx) is expected
        assert holds(f'attributes["l"] {op} {lit(right)}', ctx) is expected, (left, op, right)
        assert holds(f'{lit(left)} {op} attributes["r"]', ctx) is expected, (left, op, right)
        assert holds(f"{lit(left)} {op} {lit(right)}", ctx) is expected


def test_missing_key_reads_as_nil() -> None:
    assert holds('attributes["missing"] == nil')
    assert not holds('attributes["missing"] != nil')
    assert holds('attributes["missing"]["deeper"][0] == nil')
    assert not holds('attributes["missing"] == ""')
    assert holds('resource.attributes["nope"] == nil')


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, INT64_MAX)
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
    | st.binary(min_size=1, max_size=3),
    lambda ch: st.lists(ch, max_size=2) | st.dictionaries(st.text(max_size=2), ch, max_size=2),
    max_leaves=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values, _values)
def test_compiled_comparisons_agree_with_the_rules(left: Any, right: Any) -> None:
    ctx = sample(l=left, r=right)
    for op in OPS:
        expected = compare(left, right, op)
        if _renderable(right):
            assert holds(f'attributes["l"] {op} {lit(right)}', ctx) is expected
        assert holds(f'attributes["l"] {op} attributes["r"]', ctx) is expected
    # Not equal is exactly the negation of equal; ordering only within a kind.
    assert compare(left, right, "!=") is not compare(left, right, "==")
    assert compare(left, right, "<") is compare(right, left, ">")
    if type(left) is not type(right) and not {type(left), type(right)} <= {int, float}:
        assert not any(compare(left, right, op) for op in ("==", "<", "<=", ">", ">="))


def _renderable(value: Any) -> bool:
    """Whether a literal can spell it (no infinities in OTTL's float syntax)."""
    if isinstance(value, float):
        return value not in (float("inf"), float("-inf"))
    if isinstance(value, int) and not isinstance(value, bool):
        return value != INT64_MIN  # the literal is a sign on 2**63, which overflows
    if isinstance(value, list):
        return all(_renderable(v) for v in value)
    if isinstance(value, dict):
        return all(_renderable(v) for v in value.values())
    return True


def test_deep_equal_is_type_exact() -> None:
    assert deep_equal({"a": [1, {"b": b"x"}]}, {"a": [1, {"b": b"x"}]})
    assert not deep_equal([True], [1])
    assert not deep_equal([float("nan")], [float("nan")])


# ---- booleans ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("not true", False),
        ("not false", True),
        ("true or false and false", True),  # and binds tighter than or
        ("(true or false) and false", False),
        ("not true or true", True),  # not binds tighter than or
        ("not (true or true)", False),
        ("not 1 == 2", True),  # not applies to the whole comparison
        ("false and 1 / 0 == 1", False),  # short-circuit: the division never runs
        ("true or 1 / 0 == 1", True),
        ('IsString("a") and IsInt(1)', True),
        ('IsString("a") and not IsInt("1")', True),
        ("true and true and true and false", False),
        ("false or false or false or true", True),
    ],
)
def test_boolean_expressions(text: str, expected: bool) -> None:
    assert holds(text) is expected
    assert holds(f'{text} and attributes["x"] == nil') is expected  # not folded away


def test_a_converter_condition_must_return_a_bool() -> None:
    with pytest.raises(OttlError, match="needs a bool"):
        compile_condition('Len("ab")')
    pred = compile_condition('Len(attributes["s"])')
    with pytest.raises(OttlRuntimeError, match="must be bool but got int64"):
        pred(sample(s="ab"))


def test_errors_stop_an_and_but_a_constant_false_does_not_hide_them() -> None:
    pred = compile_condition('attributes["n"] / 0 == 1 and false')
    with pytest.raises(OttlRuntimeError, match="divide by 0"):
        pred(sample(n=1))
    assert compile_condition('false and attributes["n"] / 0 == 1')(sample(n=1)) is False


# ---- math (math.go) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2", 3),
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 2 - 3", 5),
        ("8 / 2 / 2", 2),
        ("7 / 2", 3),  # integer division
        ("-7 / 2", -3),  # truncates toward zero, as Go
        ("7 / -2", -3),
        ("-7 / -2", 3),
        ("1.5 * 2", 3.0),
        ("1 / 2.0", 0.5),
        ("1 + 2.5", 3.5),  # mixed int and float compute in float64
        ("2 * -3", -6),
        ("1 - -1", 2),
        ("-(1 + 2)", -3),
        ("-(-1)", 1),
        (f"{INT64_MAX} + 1", INT64_MIN),  # int64 wraps
        (f"-{INT64_MAX} - 2", INT64_MAX),
        (f"{INT64_MIN + 1} - 1 / -1 * 1", INT64_MIN + 2),
        ('attributes["n"] * 2 + value', 23),
        ("-value", -3),
        ('Len("abc") * 2', 6),
    ],
)
def test_math(text: str, expected: Any) -> None:
    result = ev(text, sample(n=10))
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 / 0", "attempted to divide by 0"),
        ("1.5 / 0", "attempted to divide by 0"),
        ('attributes["s"] + 1', "must be int64, float64, time.Time or time.Duration"),
        ('1 + attributes["s"]', "must be int64 or float64"),
        ('attributes["missing"] * 2', "must be int64, float64"),
        ('-attributes["s"]', "unsupported unary minus operation on type string"),
        ('1 + Split("a", ",")', "must be int64 or float64"),
    ],
)
def test_math_errors_happen_when_the_rule_runs(text: str, message: str) -> None:
    get = compile_value(text)
    with pytest.raises(OttlRuntimeError, match=message):
        get(sample(s="x"))


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.integers(-1000, 1000).map(lambda i: Literal(i)),
        lambda ch: st.tuples(st.sampled_from("+-*/"), ch, ch),
        max_leaves=10,
    )
)
def test_random_int_math_round_trips_and_matches_go(tree: Any) -> None:
    text = _math_text(tree)
    try:
        expected: Any = _go_eval(tree)
    except ZeroDivisionError:
        with pytest.raises(OttlRuntimeError, match="divide by 0"):
            ev(text)
        return
    assert ev(text) == expected, text


def _math_text(tree: Any) -> str:
    if isinstance(tree, Literal):
        return render(tree)
    op, a, b = tree
    return f"({_math_text(a)} {op} {_math_text(b)})"


def _go_eval(tree: Any) -> int:
    if isinstance(tree, Literal):
        return int(tree.value)  # type: ignore[arg-type]
    op, a, b = tree
    x, y = _go_eval(a), _go_eval(b)
    if op == "+":
        r = x + y
    elif op == "-":
        r = x - y
    elif op == "*":
        r = x * y
    else:
        if y == 0:
            raise ZeroDivisionError
        r = abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1)
    return (r + 2**63) % 2**64 - 2**63


# ---- paths and the sample context ----------------------------------------------------


def test_paths_read_the_sample() -> None:
    ctx = sample(comm="app", nested={"m": {"k": [1, 2]}})
    assert ev('resource.attributes["service.name"]', ctx) == "shop"
    assert ev("resource.attributes", ctx) == ctx.resource_attributes
    assert ev('attributes["comm"]', ctx) == "app"
    assert ev('attributes["nested"]["m"]["k"][1]', ctx) == 2
    assert ev("value", ctx) == 3
    assert ev("time_unix_nano", ctx) == 1_700_000_000_000_000_000
    assert ev("frames[0].function", ctx) == "json_dumps"
    assert ev("frames[1].line", ctx) == 42
    assert ev("frames[2].kind", ctx) == "kernel"
    assert ev("frames[1].mapping", ctx) == "/usr/bin/app"
    assert ev("frames[0].filename", ctx) == "json.py"
    assert ev("frames[1]", ctx) == {
        "function": "handle",
        "filename": "app.c",
        "line": 42,
        "kind": "native",
        "mapping": "/usr/bin/app",
    }
    assert ev('frames[1]["kind"]', ctx) == "native"
    assert len(ev("frames", ctx)) == 3
    assert ev("stack.functions", ctx) == ["json_dumps", "handle", "do_syscall_64"]
    assert ev("stack.kinds", ctx) == ["python", "native", "kernel"]
    assert ev("stack.filenames[1]", ctx) == "app.c"
    assert ev("stack.mappings[2]", ctx) == "[kernel.kallsyms]"
    assert ev('sample.attributes["comm"]', ctx) == "app"  # the context's name in front
    assert ev("frames[value - 2].function", ctx) == "handle"  # a computed index
    assert ev('attributes[Concat(["co", "mm"], "")]', ctx) == "app"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("frames[3].function", "frames index 3 out of bounds"),
        ("frames[-1].function", "out of bounds"),
        ('frames["a"].function', "must be indexed by an int"),
        ('attributes["comm"]["x"]', "type string does not support string indexing"),
        ('attributes["list"]["x"]', "a list must be indexed by an int"),
        ('attributes["list"][5]', "index 5 out of bounds"),
        ('attributes[attributes["list"]]', "must be a string or an int, got []any"),
    ],
)
def test_bad_indexes_fail_when_the_rule_runs(text: str, message: str) -> None:
    with pytest.raises(OttlRuntimeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ev(text, sample(comm="app", list=[1]))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('set(frames[0].function, "x")', "read-only"),
        ("set(stack.functions, [])", "read-only"),
        ("set(frames, [])", "read-only"),
        ("set(nothing, 1)", "unknown path nothing"),
        ("set(resource.name, 1)", "unknown path resource.name"),
        ("set(stack.depth, 1)", "unknown path stack.depth"),
        ("set(frames[0].address, 1)", "unknown path"),
        ("set(value[0], 1)", "cannot be indexed"),
        ('set("literal", 1)', "must be a path"),
        ("set(attributes[1.5], 1)", "a key must be a string or an int, got float64"),
        ("set(attributes[1], 1)", "a map must be indexed by a string"),
    ],
)
def test_invalid_paths_are_compile_errors(rule: str, message: str) -> None:
    with pytest.raises(OttlError, match=message):
        compile_statement(rule)


def test_set_writes_the_sample() -> None:
    ctx = sample(comm="app")
    for rule in [
        'set(attributes["new"], "v")',
        'set(attributes["deep"]["er"]["est"], 1)',  # maps created on the way
        'set(resource.attributes["service.name"], "checkout")',
        "set(value, value * 10)",
        "set(time_unix_nano, 5)",
        'set(attributes["list"], [1, 2])',
        'set(attributes["list"][0], "first")',
        'set(attributes["gone"], attributes["missing"])',  # nil: no-op
    ]:
        compile_statement(rule)(ctx)
    assert ctx.attributes == {
        "comm": "app",
        "new": "v",
        "deep": {"er": {"est": 1}},
        "list": ["first", 2],
    }
    assert ctx.resource_attributes["service.name"] == "checkout"
    assert ctx.value == 30
    assert ctx.time_unix_nano == 5


def test_set_copies_maps_and_lists() -> None:
    ctx = sample(m={"a": 1})
    compile_statement('set(attributes["copy"], attributes["m"])')(ctx)
    compile_statement('set(attributes["m"]["a"], 2)')(ctx)
    assert ctx.attributes["copy"] == {"a": 1}
    compile_statement('set(attributes, {"only": "this"})')(ctx)
    assert ctx.attributes == {"only": "this"}


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('set(value, "x")', "value must be set to an int, got string"),
        ("set(value, 1.5)", "value must be set to an int"),
        ('set(attributes, "x")', "attributes must be set to a map"),
        ('set(attributes["s"]["k"], 1)', "type string does not support string indexing"),
    ],
)
def test_set_type_errors_fail_when_the_rule_runs(rule: str, message: str) -> None:
    with pytest.raises(OttlRuntimeError, match=message):
        compile_statement(rule)(sample(s="x"))


def test_frames_from_the_symbolizer() -> None:
    from symbolizer.profile import Frame as SymFrame
    from symbolizer.profile import FrameKind, Mapping

    mapping = Mapping(0x1000, 0x2000, 0, "/usr/lib/libc.so.6")
    frame = Frame.from_symbolized(SymFrame("memcpy", kind=FrameKind.NATIVE, mapping=mapping))
    assert (frame.function, frame.kind, frame.mapping) == ("memcpy", "native", "/usr/lib/libc.so.6")
    kernel = Frame.from_symbolized(SymFrame("schedule", kind=FrameKind.KERNEL))
    assert (kernel.kind, kernel.mapping) == ("kernel", "")


def test_stack_only_rules_run_once_per_stack_key() -> None:
    calls = []

    class CountingFrames(list[Frame]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            calls.append(1)
            return super().__iter__()

    pred = compile_condition('IsMatch(Concat(stack.functions, ";"), "json_dumps;handle")')
    frames = CountingFrames([Frame("json_dumps"), Frame("handle")])
    for _ in range(5):
        ctx = SampleContext(frames=frames, stack_key=("stack", 1))
        assert pred(ctx)
    assert len(calls) == 1
    # Without a key every sample computes it.
    for _ in range(3):
        assert pred(SampleContext(frames=frames))
    assert len(calls) == 4


def test_enums_are_resolved_at_compile_time() -> None:
    with pytest.raises(OttlError, match="enum symbol SPAN_KIND_SERVER is not defined"):
        compile_condition("value == SPAN_KIND_SERVER")


def test_function_names_are_only_values_where_a_function_is_expected() -> None:
    with pytest.raises(OttlError, match="converter name"):
        compile_statement('set(attributes["a"], Sha)')


# ---- compiling rule sets -------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('nope(attributes["a"])', "undefined editor nope"),
        ('set(attributes["a"], Nope(1))', "undefined converter Nope"),
        ('set(attributes["a"])', "set needs its value argument"),
        ('set(attributes["a"], 1, 2)', "too many arguments to set"),
        ('set(attributes["a"], valu = 1)', "set has no parameter named valu"),
        ('set(target = attributes["a"], target = attributes["b"])', "given twice"),
        ('set(attributes["a"], 1, target = attributes["b"])', "given twice"),
        ('keep_keys(attributes, attributes["keys"])', "must be a list of string literals"),
        ('limit(attributes, "8", [])', "must be an int literal"),
        ('set(attributes["a"], Split("a,b", attributes["sep"]))', "must be a string literal"),
        ('set(attributes["a"], IsMatch("a", "("))', "not a valid pattern"),
        ('replace_pattern(attributes["a"], "(?=x)", "y")', "not a valid pattern"),
        ('replace_pattern(attributes["a"], "x", "y", Nope)', "undefined converter Nope"),
        ('replace_pattern(attributes["a"], "x", "y", set)', "must be a converter name"),
        ('replace_pattern(attributes["a"], "x", "y", Foo)', "undefined converter Foo"),
        ('replace_pattern(attributes["a"], "x", "y", "SHA256")', "must be a converter name"),
    ],
)
def test_invalid_calls_are_compile_errors(rule: str, message: str) -> None:
    with pytest.raises(OttlError, match=message):
        compile_statement(rule)


def test_the_first_invalid_rule_rejects_the_whole_set() -> None:
    with pytest.raises(OttlError) as info:
        compile_statements(['set(attributes["a"], 1)', 'set(attributes["b"], )'])
    assert "rule 2" in str(info.value)
    assert info.value.rule == 'set(attributes["b"], )'
    assert (info.value.line, info.value.column) == (1, 22)
    with pytest.raises(TypeError):
        compile_conditions("true")  # type: ignore[arg-type]


def test_filter_drops_when_any_condition_is_true() -> None:
    drop = compile_conditions(
        ['resource.attributes["service.name"] == "kiln"', 'StackContains("^json_")']
    )
    assert len(drop) == 2
    assert drop.rules[1] == 'StackContains("^json_")'
    assert drop.evaluate(sample())
    ctx = sample()
    ctx.frames = [Frame("main")]
    assert not drop.evaluate(ctx)
    assert not compile_conditions([]).evaluate(ctx)


def test_transform_runs_statements_in_order_with_where() -> None:
    edit = compile_statements(
        [
            'set(attributes["a"], 1)',
            'set(attributes["b"], attributes["a"] + 1) where attributes["a"] == 1',
            'set(attributes["c"], 1) where attributes["a"] == 2',
        ]
    )
    ctx = sample()
    edit.apply(ctx)
    assert ctx.attributes == {"a": 1, "b": 2}


# ---- error_mode ------------------------------------------------------------------------

FAILING = 'set(attributes["x"], SHA256(attributes["n"]))'  # SHA256 needs a string


def test_error_mode_parse() -> None:
    assert ErrorMode.parse(" IGNORE ") is ErrorMode.IGNORE
    assert ErrorMode.parse("silent") is ErrorMode.SILENT
    with pytest.raises(OttlError, match="unknown error_mode"):
        ErrorMode.parse("loud")


def test_propagate_raises_and_stops_the_statements() -> None:
    edit = compile_statements([FAILING, 'set(attributes["after"], 1)'])
    assert edit.error_mode is ErrorMode.PROPAGATE  # the collector's default
    ctx = sample(n=1)
    with pytest.raises(OttlRuntimeError) as info:
        edit.apply(ctx)
    assert "expected string but got int64" in str(info.value)
    assert info.value.rule == FAILING
    assert "after" not in ctx.attributes


def test_ignore_logs_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    edit = compile_statements(
        [FAILING, 'set(attributes["after"], 1)'], "ignore", clock=lambda: now[0]
    )
    caplog.set_level(logging.WARNING, logger="kiln.ottl")
    ctx = sample(n=1)
    edit.apply(ctx)
    assert ctx.attributes["after"] == 1
    assert len(caplog.records) == 1
    assert "expected string but got int64" in caplog.records[0].getMessage()
    assert FAILING in caplog.records[0].getMessage()
    for _ in range(5):
        edit.apply(sample(n=1))
    assert len(caplog.records) == 1  # one line per interval per rule
    now[0] += 61
    edit.apply(sample(n=1))
    assert len(caplog.records) == 2
    assert "5 more since the last report" in caplog.records[1].getMessage()
    assert edit.error_counts[FAILING] == 7


def test_silent_goes_on_without_logging(caplog: pytest.LogCaptureFixture) -> None:
    edit = compile_statements([FAILING, 'set(attributes["after"], 1)'], ErrorMode.SILENT)
    caplog.set_level(logging.DEBUG, logger="kiln.ottl")
    ctx = sample(n=1)
    edit.apply(ctx)
    assert ctx.attributes["after"] == 1
    assert not caplog.records
    assert edit.error_counts[FAILING] == 1


def test_a_failing_condition_counts_as_false_unless_propagated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = ['SHA256(attributes["n"]) == "x"', 'attributes["n"] == 1']
    caplog.set_level(logging.WARNING, logger="kiln.ottl")
    assert compile_conditions(rules, "ignore").evaluate(sample(n=1))
    assert len(caplog.records) == 1
    assert not compile_conditions(rules[:1], "silent").evaluate(sample(n=1))
    with pytest.raises(OttlRuntimeError, match="failed to execute condition"):
        compile_conditions(rules, "propagate").evaluate(sample(n=1))
    # A true condition before the failing one decides without running it.
    assert compile_conditions(list(reversed(rules)), "propagate").evaluate(sample(n=1))


def test_unexpected_python_errors_go_through_error_mode() -> None:
    # A map key that is not a string (the caller's mistake) makes the regex
    # raise TypeError: it must come out as OttlRuntimeError, or be ignored.
    ctx = sample()
    ctx.attributes[1] = "x"  # type: ignore[index]
    rule = 'keep_matching_keys(attributes, "^a")'
    with pytest.raises(OttlRuntimeError, match="TypeError"):
        compile_statements([rule]).apply(ctx)
    compile_statements([rule], "ignore").apply(ctx)


# ---- robustness: well-typed random rules on random samples ---------------------------

_attr_values = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(-5, 5)
    | st.text(max_size=5)
    | st.lists(st.integers(0, 3), max_size=3)
    | st.dictionaries(st.text(max_size=2), st.integers())
)
_paths = st.sampled_from(
    [
        'attributes["a"]',
        'attributes["b"]',
        'attributes["a"]["k"]',
        "value",
        "frames[0].function",
        "frames[1].line",
        "stack.functions",
        'resource.attributes["service.name"]',
    ]
)
_simple = st.one_of(
    _paths,
    st.integers(-3, 3).map(str),
    st.sampled_from(['"x"', "1.5", "nil", "true", "[1, 2]", '{"k": 1}', "0x01"]),
)
_converters = st.sampled_from(
    [
        "Len({})",
        "String({})",
        "Int({})",
        "Double({})",
        'Concat([{}, "-"], ":")',
        'IsMatch({}, "a|1")',
        "SHA256({})",
        "ToUpperCase({})",
        'Split({}, ",")',
        "Hex({})",
        "IsMap({})",
        "ParseJSON({})",
        'Format("%v/%d", [{}, 1])',
        "Substring({}, 0, 1)",
    ]
)
_value_texts = st.recursive(
    _simple,
    lambda ch: st.one_of(
        st.tuples(_converters, ch).map(lambda t: t[0].format(t[1])),
        st.tuples(ch, st.sampled_from("+-*/"), ch).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
    ),
    max_leaves=4,
)
_editors = st.sampled_from(
    [
        'set(attributes["a"], {})',
        'set(attributes["b"]["c"], {})',
        "set(value, {})",
        'delete_key(attributes, "a")',
        'replace_pattern(attributes["a"], "[0-9]", "#")',
        "truncate_all(attributes, 2)",
        'limit(attributes, 1, ["b"])',
        'merge_maps(attributes, {}, "upsert")',
        'append(attributes["l"], {})',
        'keep_matching_keys(attributes, "^[ab]$")',
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _editors,
    _value_texts,
    st.none() | st.tuples(_value_texts, st.sampled_from(OPS), _value_texts),
    _attr_values,
    _attr_values,
)
def test_well_typed_rules_fail_only_with_ottl_runtime_errors(
    editor: str, value: str, where: tuple[str, str, str] | None, a: Any, b: Any
) -> None:
    rule = editor.format(value) if "{}" in editor else editor
    if where is not None:
        rule += f" where {where[0]} {where[1]} {where[2]}"
    try:
        run = compile_statement(rule)
    except OttlError:
        return  # e.g. a list where a string literal is required
    ctx = sample(a=a, b=b)
    with contextlib.suppress(OttlRuntimeError):
        run(ctx)
    compile_statements([rule], "silent").apply(sample(a=a, b=b))  # never raises
