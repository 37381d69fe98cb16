"""OTTL converters (capitalized functions that compute a value), per `ottlfuncs`.

Each follows its entry in the collector's `pkg/ottl/ottlfuncs/README.md`:
argument names, which types it accepts, and when it returns nil instead of
failing. Typed arguments fail on nil and on other types (`StringGetter`);
"Like" arguments convert (`StringLikeGetter`: numbers and bools as JSON,
bytes as hex, maps and lists as JSON). Strings are measured and sliced in
UTF-8 bytes, as Go does.

`StackContains` is Kiln's own: true when a frame's function matches a regex.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from profiler.ottl.context import SampleContext, stack_list, stack_text
from profiler.ottl.errors import OttlRuntimeError
from profiler.ottl.goformat import sprintf
from profiler.ottl.regexes import RegexError, go_regex, go_regex_lines, required_literal
from profiler.ottl.registry import Args, Getter, Kind, p, register
from profiler.ottl.values import (
    ConversionError,
    bool_like,
    bytes_like,
    compare,
    float_like,
    format_float_f,
    go_json,
    int_like,
    parse_go_float,
    string_like,
    type_name,
)


def fail(function: str, message: str) -> OttlRuntimeError:
    return OttlRuntimeError(f"{function}: {message}")


def want_str(function: str, value: Any) -> str:
    if type(value) is str:
        return value
    raise fail(function, f"expected string but got {type_name(value)}")


def want_int(function: str, value: Any) -> int:
    if type(value) is int:
        return value
    raise fail(function, f"expected int64 but got {type_name(value)}")


def want_map(function: str, value: Any) -> dict[str, Any]:
    if type(value) is dict:
        return value
    raise fail(function, f"expected map but got {type_name(value)}")


def want_list(function: str, value: Any) -> list[Any]:
    if type(value) is list:
        return value
    raise fail(function, f"expected list but got {type_name(value)}")


def like(function: str, convert: Callable[[Any], Any], value: Any) -> Any:
    try:
        return convert(value)
    except ConversionError as e:
        raise fail(function, str(e)) from None


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def list_values(args: Args, name: str, function: str) -> Callable[[SampleContext], list[Any]]:
    """A GETTERS argument as one function giving the list of values per sample."""
    items, whole = args.items(name)
    if items is not None:
        getters = items
        if len(getters) == 1:
            (only,) = getters
            return lambda ctx: [only(ctx)]
        return lambda ctx: [g(ctx) for g in getters]
    assert whole is not None
    get = whole

    def values(ctx: SampleContext) -> list[Any]:
        return want_list(function, get(ctx))

    return values


def regex_arg(args: Args, name: str, function: str) -> Callable[[SampleContext], re.Pattern[str]]:
    """A regex argument: compiled once when literal (bad patterns fail the rule)."""
    bound = args.bound[name]
    if (bound.expr is not None and bound.expr.const) or bound.param.kind is Kind.STRING:
        text = bound.literal if bound.param.kind is Kind.STRING else bound.expr.value  # type: ignore[union-attr]
        if type(text) is not str:
            raise args.error(f"{name} must be a string, got {type_name(text)}")
        try:
            pattern = go_regex(text)
        except RegexError as e:
            raise args.error(f"the regex pattern supplied is not a valid pattern: {e}") from None
        return lambda ctx: pattern
    get = args.getter(name)

    def dynamic(ctx: SampleContext) -> re.Pattern[str]:
        text = want_str(function, get(ctx))
        try:
            return go_regex(text)
        except RegexError as e:
            raise fail(
                function, f"the regex pattern supplied is not a valid pattern: {e}"
            ) from None

    return dynamic


# ---- strings ----------------------------------------------------------------


@register("Concat", p("vals", Kind.GETTERS), p("delimiter"))
def _concat(args: Args) -> Getter:
    values = list_values(args, "vals", "Concat")
    delimiter = args.getter("delimiter")

    def run(ctx: SampleContext) -> Any:
        sep = want_str("Concat", delimiter(ctx))
        parts = []
        for v in values(ctx):
            if type(v) is str:
                parts.append(v)
            elif v is None:
                parts.append("<nil>")
            else:
                parts.append(like("Concat", string_like, v))
        return sep.join(parts)

    return run


@register("Split", p("target"), p("delimiter", Kind.STRING))
def _split(args: Args) -> Getter:
    target = args.getter("target")
    delimiter: str = args.literal("delimiter")

    def run(ctx: SampleContext) -> Any:
        text = want_str("Split", target(ctx))
        if delimiter == "":
            return list(text)
        return text.split(delimiter)

    return run


@register(
    "Substring", p("target"), p("start"), p("length"), p("utf8_safe", Kind.BOOL, optional=True)
)
def _substring(args: Args) -> Getter:
    target = args.getter("target")
    start_of = args.getter("start")
    length_of = args.getter("length")
    utf8_safe: bool = args.literal("utf8_safe", False)

    def run(ctx: SampleContext) -> Any:
        start = want_int("Substring", start_of(ctx))
        if start < 0:
            raise fail(
                "Substring", f"invalid start for substring function, {start} cannot be negative"
            )
        length = want_int("Substring", length_of(ctx))
        if length <= 0:
            raise fail(
                "Substring",
                f"invalid length for substring function, {length} cannot be negative or zero",
            )
        text = want_str("Substring", target(ctx))
        size = utf8_len(text)
        if start > size or length > size - start:
            raise fail(
                "Substring",
                f"invalid range for substring function, start({start})+length({length}) cannot"
                f" be greater than the length of target string({size})",
            )
        if text.isascii():
            return text[start : start + length]
        data = text.encode()
        end = start + length
        if utf8_safe:
            # Byte offsets moved to character boundaries: a split start moves
            # forward, a split end moves back (continuation bytes are 10xxxxxx).
            while start < len(data) and data[start] & 0xC0 == 0x80:
                start += 1
            while end < len(data) and data[end] & 0xC0 == 0x80:
                end -= 1
            return data[start:end].decode() if start < end else ""
        return data[start:end].decode("utf-8", errors="replace")

    return run


def _string_op(name: str, op: Callable[[str], Any]) -> None:
    @register(name, p("target"))
    def factory(args: Args) -> Getter:
        target = args.getter("target")
        return lambda ctx: op(want_str(name, target(ctx)))


_string_op("ToLowerCase", str.lower)
_string_op("ToUpperCase", str.upper)


@register("Trim", p("target"), p("replacement", Kind.STRING, optional=True))
def _trim(args: Args) -> Getter:
    target = args.getter("target")
    cutset: str = args.literal("replacement", " ")
    return lambda ctx: want_str("Trim", target(ctx)).strip(cutset)


def _affix(name: str, param: str, op: Callable[[str, str], Any]) -> None:
    @register(name, p("target"), p(param))
    def factory(args: Args) -> Getter:
        target = args.getter("target")
        affix = args.getter(param)
        return lambda ctx: op(want_str(name, target(ctx)), want_str(name, affix(ctx)))


_affix("HasPrefix", "prefix", str.startswith)
_affix("HasSuffix", "suffix", str.endswith)
_affix("TrimPrefix", "prefix", str.removeprefix)
_affix("TrimSuffix", "suffix", str.removesuffix)


@register("Format", p("format"), p("vals", Kind.GETTERS))
def _format(args: Args) -> Getter:
    fmt = args.getter("format")
    values = list_values(args, "vals", "Format")
    return lambda ctx: sprintf(want_str("Format", fmt(ctx)), values(ctx))


# ---- matching -----------------------------------------------------------------


def match_text(function: str, value: Any) -> str:
    """IsMatch's string form of a non-string target (strconv, base64 bytes, JSON)."""
    t = type(value)
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is float:
        return format_float_f(value)
    if t is bytes:
        return base64.b64encode(value).decode()
    if t is dict or t is list:
        return str(like(function, go_json, value))
    raise fail(function, f"unsupported type: {type_name(value)}")


@register("IsMatch", p("target"), p("pattern"))
def _is_match(args: Args) -> Getter:
    target = args.getter("target")
    pattern_of = regex_arg(args, "pattern", "IsMatch")
    if args.expr("pattern").const:
        search = pattern_of(SampleContext()).search

        def fixed(ctx: SampleContext) -> Any:
            value = target(ctx)
            if type(value) is str:
                return search(value) is not None
            if value is None:
                return False
            return search(match_text("IsMatch", value)) is not None

        return fixed

    def run(ctx: SampleContext) -> Any:
        value = target(ctx)
        if value is None:
            return False
        text = value if type(value) is str else match_text("IsMatch", value)
        return pattern_of(ctx).search(text) is not None

    return run


@register("StackContains", p("pattern", Kind.STRING), reads=frozenset({"stack"}))
def _stack_contains(args: Args) -> Getter:
    # Reads only the stack: the compiler memoizes it per stack key. Without a
    # key, one search over the names joined by newlines rules most stacks out.
    text: str = args.literal("pattern")
    search = regex_arg(args, "pattern", "StackContains")(SampleContext()).search
    literal = required_literal(text)
    lines = go_regex_lines(text) if literal is None else None

    def run(ctx: SampleContext) -> Any:
        if literal is not None:
            # Only names containing the pattern's literal can match: find them in
            # the joined names and test just those.
            text = stack_text(ctx)
            at = text.find(literal)
            while at >= 0:
                start = text.rfind("\n", 0, at) + 1
                end = text.find("\n", at)
                if end < 0:
                    end = len(text)
                if search(text[start:end]) is not None:
                    return True
                at = text.find(literal, end)
            return False
        if lines is not None and lines.search(stack_text(ctx)) is None:
            return False
        return any(search(name) is not None for name in stack_list(ctx, "functions"))

    return run


# ---- types --------------------------------------------------------------------


def _type_test(name: str, test: Callable[[Any], bool]) -> None:
    @register(name, p("target"))
    def factory(args: Args) -> Getter:
        target = args.getter("target")
        return lambda ctx: test(target(ctx))


_type_test("IsString", lambda v: type(v) is str)
_type_test("IsInt", lambda v: type(v) is int)
_type_test("IsDouble", lambda v: type(v) is float)
_type_test("IsBool", lambda v: type(v) is bool)
_type_test("IsMap", lambda v: type(v) is dict)
_type_test("IsList", lambda v: type(v) is list)


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    t = type(value)
    if t in (str, bytes, list, dict):
        return len(value) == 0
    if t is bool:
        return value is False
    if t is int or t is float:
        return value == 0  # type: ignore[no-any-return]
    return False


_type_test("IsEmpty", _is_empty)


def _to_int(value: Any) -> Any:
    try:
        return int_like(value)
    except ConversionError:
        return None  # the README: another type or a failed parse gives nil


def _to_double(value: Any) -> Any:
    if type(value) is str:
        return parse_go_float(value)
    try:
        return float_like(value)
    except ConversionError:
        return None


def _to_bool(value: Any) -> Any:
    try:
        return bool_like(value)
    except ConversionError:
        return None


def _to_string(value: Any) -> Any:
    try:
        return string_like(value)
    except ConversionError:
        return None


def _conversion(name: str, convert: Callable[[Any], Any]) -> None:
    @register(name, p("target"))
    def factory(args: Args) -> Getter:
        target = args.getter("target")
        return lambda ctx: convert(target(ctx))


_conversion("Int", _to_int)
_conversion("Double", _to_double)
_conversion("Bool", _to_bool)
_conversion("String", _to_string)


@register("Len", p("target"))
def _len(args: Args) -> Getter:
    target = args.getter("target")

    def run(ctx: SampleContext) -> Any:
        value = target(ctx)
        t = type(value)
        if t is str:
            return utf8_len(value)
        if t is list or t is dict or t is bytes:
            return len(value)
        raise fail("Len", f"unsupported type: {type_name(value)}")

    return run


@register("Hex", p("target"))
def _hex(args: Args) -> Getter:
    target = args.getter("target")

    def run(ctx: SampleContext) -> Any:
        data = like("Hex", bytes_like, target(ctx))
        return None if data is None else data.hex()

    return run


# ---- hashes -------------------------------------------------------------------


def _digest(name: str, algorithm: str) -> None:
    @register(name, p("target"))
    def factory(args: Args) -> Getter:
        target = args.getter("target")

        def run(ctx: SampleContext) -> Any:
            data = want_str(name, target(ctx)).encode()
            return hashlib.new(algorithm, data).hexdigest()

        return run


_digest("SHA1", "sha1")
_digest("SHA256", "sha256")
_digest("SHA512", "sha512")
_digest("MD5", "md5")

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


@register("FNV", p("target"))
def _fnv(args: Args) -> Getter:
    target = args.getter("target")

    def run(ctx: SampleContext) -> Any:
        h = _FNV_OFFSET
        for byte in want_str("FNV", target(ctx)).encode():
            h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
        return h - (1 << 64) if h >= 1 << 63 else h  # Go returns int64(sum)

    return run


_B64 = {
    "base64": (base64.b64encode, True),
    "base64-raw": (base64.b64encode, False),
    "base64-url": (base64.urlsafe_b64encode, True),
    "base64-raw-url": (base64.urlsafe_b64encode, False),
}


@register("Base64Encode", p("target"), p("variant", Kind.STRING, optional=True))
def _base64_encode(args: Args) -> Getter:
    target = args.getter("target")
    variant: str = args.literal("variant", "base64")
    if variant not in _B64:
        raise args.error(f"unsupported base64 variant {variant!r}; one of {', '.join(_B64)}")
    encode, padded = _B64[variant]

    def run(ctx: SampleContext) -> Any:
        text = encode(want_str("Base64Encode", target(ctx)).encode()).decode()
        return text if padded else text.rstrip("=")

    return run


# ---- maps and lists -----------------------------------------------------------


def _reject_constant(token: str) -> Any:
    raise ValueError(f"invalid JSON value {token}")


@register("ParseJSON", p("target"))
def _parse_json(args: Args) -> Getter:
    target = args.getter("target")

    def run(ctx: SampleContext) -> Any:
        text = want_str("ParseJSON", target(ctx))
        try:
            parsed = json.loads(text, parse_int=float, parse_constant=_reject_constant)
        except ValueError as e:
            raise fail("ParseJSON", f"invalid JSON: {e}") from None
        if type(parsed) is not dict and type(parsed) is not list:
            raise fail(
                "ParseJSON", f"could not convert parsed value of type {type_name(parsed)} to a map"
            )
        return parsed

    return run


@register("Keys", p("target"))
def _keys(args: Args) -> Getter:
    target = args.getter("target")
    return lambda ctx: list(want_map("Keys", target(ctx)))


@register("Values", p("target"))
def _values(args: Args) -> Getter:
    target = args.getter("target")
    return lambda ctx: list(want_map("Values", target(ctx)).values())


@register("Coalesce", p("values", Kind.GETTERS))
def _coalesce(args: Args) -> Getter:
    items, whole = args.items("values")

    def run(ctx: SampleContext) -> Any:
        if items is not None:
            for get in items:
                value = get(ctx)
                if value is not None:
                    return value
            return None
        assert whole is not None
        return next((v for v in want_list("Coalesce", whole(ctx)) if v is not None), None)

    return run


@register("ContainsValue", p("target"), p("item"))
def _contains_value(args: Args) -> Getter:
    target = args.getter("target")
    item = args.getter("item")

    def run(ctx: SampleContext) -> Any:
        wanted = item(ctx)
        return any(compare(v, wanted, "==") for v in want_list("ContainsValue", target(ctx)))

    return run


@register("Index", p("target"), p("value"))
def _index(args: Args) -> Getter:
    target = args.getter("target")
    value_of = args.getter("value")

    def run(ctx: SampleContext) -> Any:
        haystack = target(ctx)
        needle = value_of(ctx)
        if type(haystack) is str:
            found = haystack.find(want_str("Index", needle))
            return found if found <= 0 or haystack.isascii() else utf8_len(haystack[:found])
        for i, v in enumerate(want_list("Index", haystack)):
            if compare(v, needle, "=="):
                return i
        return -1

    return run
