"""profiler/ottl functions: each converter and editor against the collector's docs.

Expected values follow `pkg/ottl/ottlfuncs/README.md` (examples and the
stated handling of nil and of other types) and the implementations it
describes; Go's formatting (`strconv`, `encoding/json`, `fmt`) where a
function turns values into text.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from profiler.ottl import (
    Frame,
    OttlError,
    OttlRuntimeError,
    SampleContext,
    compile_condition,
    compile_statement,
    compile_value,
    functions,
)
from profiler.ottl.goformat import sprintf
from profiler.ottl.regexes import RegexError, glob_regex, go_regex, replace_all


def sample(**attrs: Any) -> SampleContext:
    return SampleContext(
        resource_attributes={"service.name": "shop"},
        attributes=dict(attrs),
        frames=[Frame("json_dumps", kind="python"), Frame("main")],
    )


def ev(text: str, **attrs: Any) -> Any:
    return compile_value(text)(sample(**attrs))


def run(rule: str, **attrs: Any) -> dict[str, Any]:
    ctx = sample(**attrs)
    compile_statement(rule)(ctx)
    return ctx.attributes


def fails(text: str, message: str, **attrs: Any) -> None:
    with pytest.raises(OttlRuntimeError, match=message):
        ev(text, **attrs)


# ---- converters -------------------------------------------------------------------


def test_concat() -> None:
    assert ev('Concat(["HTTP method is: ", attributes["m"]], "")', m="GET") == "HTTP method is: GET"
    assert ev('Concat([attributes["name"], 1], " ")', name="m") == "m 1"
    # StringLike: bytes as hex, numbers and bools as JSON, nil as <nil>.
    assert ev('Concat([0x0a0b, 1.5, 2.0, true, nil, [1, "a"], {"k": 1}], "|")') == (
        '0a0b|1.5|2|true|<nil>|[1,"a"]|{"k":1}'
    )
    assert ev('Concat(stack.functions, ";")') == "json_dumps;main"  # a list-valued path
    assert ev('Concat([], "-")') == ""
    fails('Concat(attributes["s"], "-")', "expected list but got string", s="x")
    fails('Concat(["a"], attributes["n"])', "expected string but got int64", n=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('IsMatch("string", ".*ring")', True),
        ('IsMatch("string", "^ring")', False),
        ('IsMatch(attributes["missing"], ".*")', False),  # nil is always false
        ('IsMatch(123, "^12")', True),  # ints via strconv
        ('IsMatch(1.50, "^1\\\\.5$")', True),  # floats as 'f' -1
        ('IsMatch(1.0e21, "^1000000000000000000000$")', True),
        ('IsMatch(true, "^true$")', True),
        ('IsMatch(0x0102, "^AQI=$")', True),  # bytes as base64
        ('IsMatch({"b": 1, "a": [true]}, "^\\\\{\\"a\\":\\\\[true\\\\],\\"b\\":1\\\\}$")', True),
        ('IsMatch("A1", "(?i)^a\\\\d$")', True),
        ('IsMatch("line\\n", "line$")', False),  # Go's $ is the very end
        ('IsMatch("é", "^\\\\w$")', False),  # \\w is ASCII, as RE2's
        ('IsMatch("x", attributes["p"])', True),  # a pattern from the sample
    ],
)
def test_is_match(text: str, expected: bool) -> None:
    assert ev(text, p="^x$") is expected


def test_is_match_bad_dynamic_pattern_is_a_runtime_error() -> None:
    fails('IsMatch("x", attributes["p"])', "not a valid pattern", p="(")
    fails('IsMatch("x", attributes["p"])', "expected string", p=1)


@pytest.mark.parametrize(
    ("fn", "value", "expected"),
    [
        ("IsString", '"a"', True),
        ("IsString", "1", False),
        ("IsInt", "1", True),
        ("IsInt", "1.0", False),
        ("IsInt", "true", False),
        ("IsDouble", "1.0", True),
        ("IsDouble", "1", False),
        ("IsBool", "false", True),
        ("IsBool", "0", False),
        ("IsMap", '{"a": 1}', True),
        ("IsMap", "resource.attributes", True),
        ("IsMap", "[1]", False),
        ("IsList", "[1]", True),
        ("IsList", "stack.functions", True),
        ("IsList", '"[1]"', False),
        ("IsEmpty", "nil", True),
        ("IsEmpty", '""', True),
        ("IsEmpty", "0", True),
        ("IsEmpty", "0.0", True),
        ("IsEmpty", "false", True),
        ("IsEmpty", "[]", True),
        ("IsEmpty", "{}", True),
        ("IsEmpty", '"a"', False),
        ("IsEmpty", "[nil]", False),
        ("IsEmpty", 'attributes["missing"]', True),
    ],
)
def test_type_predicates(fn: str, value: str, expected: bool) -> None:
    assert ev(f"{fn}({value})") is expected
    assert compile_condition(f"{fn}({value})")(sample()) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Int(1)", 1),
        ("Int(1.9)", 1),  # truncation toward zero
        ("Int(-1.9)", -1),
        ('Int("42")', 42),
        ('Int("-7")', -7),
        ('Int("2.0")', None),  # parsing fails: nil
        ('Int("x")', None),
        ("Int(true)", 1),
        ("Int(false)", 0),
        ("Int(nil)", None),
        ("Int([1])", None),  # another type: nil
        ("Double(1)", 1.0),
        ('Double("2.5")', 2.5),
        ('Double("x")', None),
        ("Double(true)", 1.0),
        ("Double(nil)", None),
        ('Bool("true")', True),
        ('Bool("F")', False),
        ('Bool("yes")', None),
        ("Bool(0)", False),
        ("Bool(2.5)", True),
        ('String("a")', "a"),
        ("String(1)", "1"),
        ("String(1.5)", "1.5"),
        ("String(false)", "false"),
        ("String(0x0102)", "0102"),  # hex
        ('String([1, "a"])', '[1,"a"]'),
        ('String({"b": 2, "a": 1})', '{"a":1,"b":2}'),
        ("String(nil)", None),
    ],
)
def test_conversions(text: str, expected: Any) -> None:
    result = ev(text)
    assert result == expected and type(result) is type(expected), (text, result)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('Len("abc")', 3),
        ('Len("é")', 2),  # UTF-8 bytes, as Go's len
        ("Len([1, 2])", 2),
        ('Len({"a": 1})', 1),
        ("Len(0x0102)", 2),
        ("Len(stack.functions)", 2),
    ],
)
def test_len(text: str, expected: int) -> None:
    assert ev(text) == expected
    fails("Len(1)", "unsupported type: int64")


def test_split() -> None:
    assert ev('Split("a,b,,c", ",")') == ["a", "b", "", "c"]
    assert ev('Split("", ",")') == [""]
    assert ev('Split("ab", "")') == ["a", "b"]
    assert ev('Split("a,b", ",")[1]') == "b"
    fails('Split("a,b", ",")[2]', "index 2 out of bounds")
    fails('Split(1, ",")', "expected string but got int64")


def test_substring() -> None:
    assert ev('Substring("123456789", 0, 3)') == "123"
    assert ev('Substring("123456789", 6, 3)') == "789"
    # utf8_safe moves byte offsets that split a character to its boundaries.
    assert ev('Substring("一二三", 0, 4, true)') == "一"
    assert ev('Substring("一二三", 1, 6, true)') == "二"
    assert ev('Substring("一二三", 0, 9, true)') == "一二三"
    assert ev('Substring("aé", 1, 2)') == "é"  # byte offsets otherwise
    fails('Substring("abc", 2, 2)', "cannot be greater than the length")
    fails('Substring("abc", -1, 1)', "cannot be negative")
    fails('Substring("abc", 0, 0)', "cannot be negative or zero")
    fails("Substring(nil, 0, 1)", "expected string but got nil")


def test_case_and_trim() -> None:
    assert ev('ToLowerCase("MyMetricName")') == "mymetricname"
    assert ev('ToUpperCase("MyMetricName")') == "MYMETRICNAME"
    assert ev('Trim(" this is a test ", " ")') == "this is a test"
    assert ev('Trim("!!this is a test!!", "!!")') == "this is a test"
    assert ev('Trim("  x  ")') == "x"
    assert ev('TrimPrefix("ingest_service", "ingest_")') == "service"
    assert ev('TrimSuffix("ingest_service", "_service")') == "ingest"
    assert ev('TrimSuffix("ingest", "x")') == "ingest"
    assert ev('HasPrefix("ingest_service", "ingest_")') is True
    assert ev('HasSuffix("ingest_service", "_x")') is False
    fails("ToLowerCase(nil)", "expected string but got nil")


def test_hashes() -> None:
    for fn, algo in [("SHA1", "sha1"), ("SHA256", "sha256"), ("SHA512", "sha512"), ("MD5", "md5")]:
        assert ev(f'{fn}("name")') == hashlib.new(algo, b"name").hexdigest()
        fails(f"{fn}(1)", "expected string but got int64")


def test_fnv_is_fnv1a_64() -> None:
    # Reference values of FNV-1a 64 (hash/fnv New64a), as signed int64.
    assert ev('FNV("")') == 0xCBF29CE484222325 - (1 << 64)
    assert ev('FNV("a")') == 0xAF63DC4C8601EC8C - (1 << 64)


def test_hex() -> None:
    assert ev('Hex("1")') == "31"
    assert ev("Hex(true)") == "01"
    assert ev("Hex(false)") == "00"
    assert ev("Hex(12)") == "000000000000000c"  # 8 big-endian bytes
    assert ev("Hex(1.1)") == "3ff199999999999a"
    assert ev("Hex(0x02)") == "02"
    assert ev("Hex(nil)") is None
    fails("Hex([1])", "unsupported type")


def test_base64_encode() -> None:
    assert ev('Base64Encode("test string")') == "dGVzdCBzdHJpbmc="
    assert ev('Base64Encode("test string", "base64-raw")') == "dGVzdCBzdHJpbmc"
    assert ev('Base64Encode("\\xff\\xfe", "base64-url")') == "77-977-9"
    with pytest.raises(OttlError, match="unsupported base64 variant"):
        compile_value('Base64Encode("x", "hex")')


def test_format() -> None:
    assert ev('Format("%02d", [attributes["p"]])', p=7) == "07"
    assert ev('Format("%04d-%02d-%02d", [2024, 1, 9])') == "2024-01-09"
    assert ev('Format("%s/%s.log", ["a", "b"])') == "a/b.log"
    assert ev('Format("%v %v %v %v", [1.5, true, nil, [1, "a"]])') == "1.5 true <nil> [1 a]"
    assert ev('Format("%d", ["x"])') == "%!d(string=x)"
    assert ev('Format("%d %d", [1])') == "1 %!d(MISSING)"
    assert ev('Format("%d", [1, 2])') == "1%!(EXTRA int64=2)"
    assert ev('Format("%.2f|%8.3f|%-4s|%x|%q|%t|%%", [3.14159, 2.5, "ab", 255, "q", true])') == (
        '3.14|   2.500|ab  |ff|"q"|true|%'
    )
    fails("Format(1, [])", "expected string but got int64")


def test_sprintf_float_forms_follow_go() -> None:
    assert sprintf("%v", [1e6]) == "1e+06"
    assert sprintf("%v", [123456.0]) == "123456"
    assert sprintf("%v", [1e-5]) == "1e-05"
    assert sprintf("%e", [1234.5678]) == "1.234568e+03"
    assert sprintf("%g", [0.0001]) == "0.0001"
    assert sprintf("%+d", [5]) == "+5"
    assert sprintf("%05d", [-42]) == "-0042"


def test_parse_json() -> None:
    assert ev('ParseJSON("{\\"attr\\":true}")') == {"attr": True}
    assert ev('ParseJSON("[\\"attr1\\",\\"attr2\\"]")') == ["attr1", "attr2"]
    parsed = ev('ParseJSON("{\\"n\\": 1, \\"m\\": {\\"x\\": null}}")')
    assert parsed == {"n": 1.0, "m": {"x": None}}
    assert type(parsed["n"]) is float  # JSON numbers are float64
    assert ev('ParseJSON(attributes["j"])["a"]', j='{"a": "b"}') == "b"
    fails('ParseJSON(attributes["j"])["z"]', "key not found in map", j='{"a": "b"}')
    fails('ParseJSON("1")', "could not convert")
    fails('ParseJSON("{")', "invalid JSON")
    fails('ParseJSON("NaN")', "invalid JSON")
    fails("ParseJSON(nil)", "expected string but got nil")


def test_maps_and_lists() -> None:
    assert ev('Keys({"k1": "v1", "k2": "v2"})') == ["k1", "k2"]
    assert ev('Values({"k1": "v1", "k2": 5})') == ["v1", 5]
    assert ev('Coalesce([attributes["a"], attributes["b"], "unknown"])', b="B") == "B"
    assert ev('Coalesce([attributes["a"], nil])') is None
    assert ev('ContainsValue(["GET", "PUT"], "GET")') is True
    assert ev("ContainsValue([1, 2, 3], 3.0)") is True  # OTTL comparison rules
    assert ev('ContainsValue([1, 2, 3], "3")') is False
    assert ev('Index("hello world", "world")') == 6
    assert ev('Index("héllo", "l")') == 3  # a byte offset, as Go's
    assert ev('Index(["a", "b"], "b")') == 1
    assert ev('Index(["a", "b"], "c")') == -1
    fails('Keys("x")', "expected map but got string")


def test_stack_contains() -> None:
    assert compile_condition('StackContains("^json_")')(sample())
    assert not compile_condition('StackContains("^JSON_")')(sample())
    assert compile_condition('StackContains("(?i)^JSON_")')(sample())
    assert compile_condition('StackContains("^main$")')(sample())
    assert not compile_condition('StackContains("main\\\\z")')(SampleContext(frames=[]))
    with pytest.raises(OttlError, match="must be a string literal"):
        compile_condition('StackContains(attributes["p"])')


def test_converter_keys_index_results() -> None:
    assert ev('Split("a.b.c", ".")[2]') == "c"
    assert ev('ParseJSON("{\\"a\\": [10, 20]}")["a"][1]') == 20.0
    fails('Split("a", ".")["x"]', "does not support string indexing")
    fails('ParseJSON("{}")[0]', "does not support int indexing")


def test_pure_converters_on_constants_fold_but_failures_wait_for_run_time() -> None:
    get = compile_value('SHA256("a")')
    assert get(SampleContext()) == hashlib.sha256(b"a").hexdigest()
    failing = compile_value("SHA256(1)")  # compiles: the error belongs to the run
    with pytest.raises(OttlRuntimeError):
        failing(SampleContext())


# ---- editors --------------------------------------------------------------------------


def test_set_is_a_no_op_for_nil() -> None:
    assert run('set(attributes["a"], attributes["missing"])', a=1) == {"a": 1}


def test_delete_key_and_matching_keys() -> None:
    attrs = {"http.request.header.authorization": "x", "keep": 1}
    assert run('delete_key(attributes, "http.request.header.authorization")', **attrs) == {
        "keep": 1
    }
    assert run('delete_key(attributes, "absent")', keep=1) == {"keep": 1}
    assert run('delete_key(attributes, attributes["which"])', which="which", b=1) == {"b": 1}
    secrets = {"password": 1, "db.Password.hash": 2, "user": 3}
    assert run('delete_matching_keys(attributes, "(?i).*password.*")', **secrets) == {"user": 3}
    with pytest.raises(OttlRuntimeError, match="expected map but got nil"):
        run('delete_key(attributes["missing"], "a")')


def test_keep_keys_and_keep_matching_keys() -> None:
    attrs = {"http.method": "GET", "http.route": "/", "other": 1}
    assert run('keep_keys(attributes, ["http.method"])', **attrs) == {"http.method": "GET"}
    assert run("keep_keys(attributes, [])", **attrs) == {}
    assert run('keep_matching_keys(attributes, "^http\\\\.")', **attrs) == {
        "http.method": "GET",
        "http.route": "/",
    }


def test_limit_keeps_priority_keys_then_the_first_others() -> None:
    attrs = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    assert run('limit(attributes, 3, ["e", "d"])', **attrs) == {"a": 1, "d": 4, "e": 5}
    assert run("limit(attributes, 2, [])", **attrs) == {"a": 1, "b": 2}
    assert run("limit(attributes, 10, [])", **attrs) == attrs
    # Only priority keys present count against the limit.
    assert run('limit(attributes, 1, ["zz"])', **attrs) == {"a": 1}
    with pytest.raises(OttlError, match="cannot be negative"):
        compile_statement("limit(attributes, -1, [])")
    with pytest.raises(OttlError, match="cannot be less than number of priority attributes"):
        compile_statement('limit(attributes, 1, ["a", "b"])')


def test_truncate_all() -> None:
    attrs = {"s": "abcdef", "short": "ab", "n": 123456, "u": "é€x"}
    assert run("truncate_all(attributes, 3)", **attrs) == {
        "s": "abc",
        "short": "ab",
        "n": 123456,  # only strings
        "u": "é",  # 3 bytes would split the euro sign: cut at the boundary
    }
    assert run('truncate_all(attributes, 5, truncation_marker = "..")', s="abcdef") == {
        "s": "abc.."
    }
    assert run("truncate_all(attributes, 0)", s="abc") == {"s": ""}
    with pytest.raises(OttlError, match="cannot be negative"):
        compile_statement("truncate_all(attributes, -1)")
    with pytest.raises(OttlError, match="cannot be longer than limit"):
        compile_statement('truncate_all(attributes, 1, true, "...")')


def test_replace_pattern() -> None:
    rule = 'replace_pattern(attributes["cmd"], "password\\\\=[^\\\\s]*(\\\\s?)", "password=***")'
    # The README's example: the captured trailing space is replaced too.
    assert run(rule, cmd="run password=secret -v") == {"cmd": "run password=***-v"}
    assert run(
        'replace_pattern(attributes["n"], "^kube_([0-9A-Za-z]+_)", "k8s.$1.")', n="kube_pod_info"
    ) == {"n": "k8s.pod_.info"}
    assert run('replace_pattern(attributes["n"], "(?P<w>o)", "${w}0")', n="foo") == {"n": "fo0o0"}
    assert run('replace_pattern(attributes["n"], "o", "$$")', n="foo") == {"n": "f$$"}
    assert run('replace_pattern(attributes["n"], "o", "$9x")', n="foo") == {"n": "f"}
    assert run('replace_pattern(attributes["n"], "x*", "-")', n="abxd") == {"n": "-a-b-d-"}  # Go
    assert run('replace_pattern(attributes["n"], "x", "y")', n=5) == {"n": 5}  # not a string
    assert run('replace_pattern(attributes["n"], "x", "y")') == {}  # nil
    # With a function and a format: each match's expansion goes through both.
    rule = 'replace_pattern(attributes["n"], "^kube_([0-9A-Za-z]+_)", "$1.", SHA256, "k8s.%s")'
    digest = hashlib.sha256(b"pod_.").hexdigest()
    assert run(rule, n="kube_pod_info") == {"n": f"k8s.{digest}info"}
    with pytest.raises(OttlRuntimeError, match="single %s"):
        run('replace_pattern(attributes["n"], "a", "b", SHA256, "%d")', n="a")


def test_replace_all_patterns() -> None:
    attrs = {"a": "/account/1234/x", "b": "keep", "n": 1}
    rule = 'replace_all_patterns(attributes, "value", "/account/\\\\d{4}", "/account/{accountId}")'
    assert run(rule, **attrs) == {"a": "/account/{accountId}/x", "b": "keep", "n": 1}
    rule = 'replace_all_patterns(attributes, "key", "^kube_([0-9A-Za-z]+_)", "k8s.$1.")'
    assert run(rule, kube_pod_name="p", other=1) == {"k8s.pod_.name": "p", "other": 1}
    rule = 'replace_all_patterns(attributes, "value", "^(.*)$", "$1", SHA256)'
    assert run(rule, a="x") == {"a": hashlib.sha256(b"x").hexdigest()}
    with pytest.raises(OttlError, match="invalid mode"):
        compile_statement('replace_all_patterns(attributes, "both", "a", "b")')


def test_replace_match_and_replace_all_matches_use_globs() -> None:
    rule = 'replace_match(attributes["t"], "/user/*/list/*", "/user/{userId}/list/{listId}")'
    assert run(rule, t="/user/123/list/4") == {"t": "/user/{userId}/list/{listId}"}
    assert run(rule, t="/user/123/lists/4") == {"t": "/user/123/lists/4"}
    rule = 'replace_all_matches(attributes, "/user/*/list/*", "/user/{userId}")'
    assert run(rule, a="/user/1/list/2", b="/other", c=3) == {
        "a": "/user/{userId}",
        "b": "/other",
        "c": 3,
    }
    rule = 'replace_match(attributes["t"], "a?c", "x", SHA256, "/%s")'
    assert run(rule, t="abc") == {"t": "/" + hashlib.sha256(b"x").hexdigest()}
    with pytest.raises(OttlError, match="not a valid pattern"):
        compile_statement('replace_match(attributes["t"], "[a", "x")')


def test_glob_syntax() -> None:
    assert glob_regex("*.log").match("dir/a.log")  # no separators: * crosses /
    assert glob_regex("a?c").match("abc")
    assert glob_regex("[!a]b").match("cb") and not glob_regex("[!a]b").match("ab")
    assert glob_regex("{foo,ba?}").match("bar")
    assert glob_regex("\\*").match("*") and not glob_regex("\\*").match("x")


def test_merge_maps() -> None:
    rule = 'merge_maps(attributes, {"a": "new", "c": {"n": 1}}, "STRATEGY")'
    insert, update, upsert = (rule.replace("STRATEGY", s) for s in ("insert", "update", "upsert"))
    assert run(insert, a="old", b="b") == {"a": "old", "b": "b", "c": {"n": 1}}
    assert run(update, a="old", b="b") == {"a": "new", "b": "b"}
    assert run(upsert, a="old", b="b") == {"a": "new", "b": "b", "c": {"n": 1}}
    merged = run('merge_maps(attributes, ParseJSON(attributes["j"]), "upsert")', j='{"x": 1}')
    assert merged == {"j": '{"x": 1}', "x": 1.0}
    with pytest.raises(OttlError, match="must be 'insert', 'update' or 'upsert'"):
        compile_statement('merge_maps(attributes, {}, "replace")')


def test_append() -> None:
    assert run('append(attributes["tags"], "prod")', tags=["a"]) == {"tags": ["a", "prod"]}
    assert run('append(attributes["tags"], "prod")') == {"tags": ["prod"]}
    assert run('append(attributes["tags"], "b")', tags="a") == {"tags": ["a", "b"]}
    assert run('append(attributes["t"], values = ["x", "y"])', t=[1]) == {"t": [1, "x", "y"]}
    with pytest.raises(OttlError, match="at least one of the optional arguments"):
        compile_statement('append(attributes["t"])')


def test_delete_index() -> None:
    assert run('delete_index(attributes["t"], 0)', t=[1, 2, 3]) == {"t": [2, 3]}
    assert run('delete_index(attributes["t"], 0, 2)', t=[1, 2, 3]) == {"t": [3]}
    assert run('delete_index(attributes["t"], Len(attributes["t"]) - 1)', t=[1, 2]) == {"t": [1]}
    with pytest.raises(OttlRuntimeError, match="out of bounds"):
        run('delete_index(attributes["t"], 5)', t=[1])


def test_flatten() -> None:
    attrs = {
        "name": "test",
        "address": {"street": "first", "house": 1234},
        "occupants": ["user 1", "user 2"],
    }
    assert run("flatten(attributes)", **attrs) == {
        "name": "test",
        "address.street": "first",
        "address.house": 1234,
        "occupants.0": "user 1",
        "occupants.1": "user 2",
    }
    assert run('flatten(attributes, "app")', name="t", a={"b": 1}) == {
        "app.name": "t",
        "app.a.b": 1,
    }
    deep = {"0": {"1": {"2": {"3": {"4": "value"}}}}}
    assert run("flatten(attributes, depth = 2)", **deep) == {"0.1.2": {"3": {"4": "value"}}}
    assert run("flatten(attributes, depth = 0)", **deep) == deep


def test_every_function_is_documented_in_this_suite() -> None:
    source = Path(__file__).read_text(encoding="utf-8")
    missing = [n for n in functions() if f"{n}(" not in source and f'"{n}"' not in source]
    assert not missing, f"functions without a test: {missing}"


# ---- regex translation (RE2 -> Python) -------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "text", "found"),
    [
        ("a(?i)b|c", "C", True),  # a mid-pattern flag covers the rest of the group
        ("a(?i)b|c", "aB", True),
        ("a(?i)b|c", "AB", False),
        ("x$", "x\n", False),
        ("(?m)x$", "x\ny", True),
        ("[[:digit:]]+z", "12z", True),
        ("\\Qa.b\\E", "axb", False),
        ("\\x{41}", "A", True),
        ("\\101", "A", True),
        ("(?<name>a)", "a", True),
        ("a\\z", "a", True),
        ("[a[]", "[", True),
    ],
)
def test_go_regex_translation(pattern: str, text: str, found: bool) -> None:
    assert (go_regex(pattern).search(text) is not None) is found


@pytest.mark.parametrize(
    "pattern",
    ["a\\1", "(?=a)", "(?!a)", "(?<=a)", "a*+", "(?>a)", "\\pL", "a{1001}", "(?U)a", "(a"],
)
def test_go_regex_rejects_what_re2_rejects(pattern: str) -> None:
    with pytest.raises(RegexError):
        go_regex(pattern)


def test_replace_all_skips_an_empty_match_after_a_match_as_go_does() -> None:
    pattern = go_regex("x*")
    assert replace_all(pattern, "abxd", lambda m: "-") == "-a-b-d-"
    assert pattern.sub("-", "abxd") == "-a-b--d-"  # Python's differs here
