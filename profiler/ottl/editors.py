"""OTTL editors (lowercase functions that change the sample), per `ottlfuncs`.

Semantics follow the collector's README and implementations: `set` with a
nil value does nothing; map editors work in place on the map their target
path gives (a missing map is an error, as `PMapGetter` makes it); patterns
are RE2 (`regexes.py`), replacements use Go's `$1`/`${name}` templates,
`replace_match` uses globs; `limit` keeps the priority keys and then the
first keys in insertion order; `truncate_all` cuts string values only, at
a byte limit, backing off to a UTF-8 boundary unless `utf8_safe = false`;
`merge_maps` copies with insert, update or upsert.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from profiler.ottl.context import PathAccessor, SampleContext
from profiler.ottl.converters import (
    fail,
    list_values,
    regex_arg,
    utf8_len,
    want_int,
    want_list,
    want_map,
    want_str,
)
from profiler.ottl.goformat import sprintf
from profiler.ottl.regexes import (
    RegexError,
    expand,
    glob_regex,
    never_empty,
    parse_template,
    python_template,
    replace_all,
)
from profiler.ottl.registry import Args, Bound, Expr, FunctionSpec, Getter, Kind, p, register
from profiler.ottl.values import copy_value


@register("set", p("target", Kind.SETTER), p("value"))
def _set(args: Args) -> Getter:
    setter = args.path("target").setter
    assert setter is not None
    value_of = args.getter("value")

    def run(ctx: SampleContext) -> Any:
        value = value_of(ctx)
        if value is not None:  # the collector: setting nil is a no-op
            setter(ctx, value)

    return run


def map_target(args: Args, function: str) -> Callable[[SampleContext], dict[str, Any]]:
    get = args.getter("target")

    def target(ctx: SampleContext) -> dict[str, Any]:
        value = get(ctx)
        if type(value) is dict:
            return value
        return want_map(function, value)  # raises: not a map

    return target


@register("delete_key", p("target"), p("key"))
def _delete_key(args: Args) -> Getter:
    get = args.getter("target")
    key = args.expr("key")
    if key.const and type(key.value) is str:
        k = key.value

        def fixed(ctx: SampleContext) -> Any:
            attrs = get(ctx)
            if type(attrs) is not dict:
                want_map("delete_key", attrs)
            attrs.pop(k, None)

        return fixed
    target = map_target(args, "delete_key")
    key_of = key.get

    def run(ctx: SampleContext) -> Any:
        target(ctx).pop(want_str("delete_key", key_of(ctx)), None)

    return run


def _key_filter(name: str, keep: bool) -> None:
    @register(name, p("target"), p("pattern", Kind.STRING))
    def factory(args: Args) -> Getter:
        target = map_target(args, name)
        search = regex_arg(args, "pattern", name)(SampleContext()).search

        def run(ctx: SampleContext) -> Any:
            attrs = target(ctx)
            doomed = [k for k in attrs if (search(k) is None) == keep]
            for k in doomed:
                del attrs[k]

        return run


_key_filter("delete_matching_keys", keep=False)
_key_filter("keep_matching_keys", keep=True)


@register("keep_keys", p("target"), p("keys", Kind.STRINGS))
def _keep_keys(args: Args) -> Getter:
    target = map_target(args, "keep_keys")
    keys = frozenset(args.literal("keys"))

    def run(ctx: SampleContext) -> Any:
        attrs = target(ctx)
        for k in [k for k in attrs if k not in keys]:
            del attrs[k]

    return run


@register("limit", p("target"), p("limit", Kind.INT), p("priority_keys", Kind.STRINGS))
def _limit(args: Args) -> Getter:
    target = map_target(args, "limit")
    limit: int = args.literal("limit")
    priority: list[str] = args.literal("priority_keys")
    if limit < 0:
        raise args.error(f"invalid limit for limit function, {limit} cannot be negative")
    if limit < len(priority):
        raise args.error(
            f"invalid limit for limit function, {limit} cannot be less than number of"
            f" priority attributes {len(priority)}"
        )
    keep = frozenset(priority)

    def run(ctx: SampleContext) -> Any:
        attrs = target(ctx)
        if len(attrs) <= limit:
            return
        count = sum(1 for k in keep if k in attrs)
        doomed = []
        for k in attrs:
            if k in keep:
                continue
            if count < limit:
                count += 1
            else:
                doomed.append(k)
        for k in doomed:
            del attrs[k]

    return run


@register(
    "truncate_all",
    p("target"),
    p("limit", Kind.INT),
    p("utf8_safe", Kind.BOOL, optional=True),
    p("truncation_marker", Kind.STRING, optional=True),
)
def _truncate_all(args: Args) -> Getter:
    target = map_target(args, "truncate_all")
    limit: int = args.literal("limit")
    marker: str = args.literal("truncation_marker", "")
    if limit < 0:
        raise args.error(f"invalid limit for truncate_all function, {limit} cannot be negative")
    marker_bytes = marker.encode()
    if len(marker_bytes) > limit:
        raise args.error(
            f"truncation_marker ({len(marker_bytes)} bytes) cannot be longer than limit {limit}"
        )
    keep = limit - len(marker_bytes)

    def cut(text: str) -> str:
        if text.isascii():
            return text[:keep] + marker
        data = text.encode()[:keep]
        # utf8_safe backs off to a character boundary; with utf8_safe = false Go
        # keeps a split character, which a Python str cannot hold: dropped too.
        return data.decode("utf-8", errors="ignore") + marker

    def run(ctx: SampleContext) -> Any:
        attrs = target(ctx)
        for k, v in attrs.items():
            if type(v) is str and utf8_len(v) > limit:
                attrs[k] = cut(v)

    return run


@register("merge_maps", p("target"), p("source"), p("strategy", Kind.STRING))
def _merge_maps(args: Args) -> Getter:
    target = map_target(args, "merge_maps")
    source_of = args.getter("source")
    strategy: str = args.literal("strategy")
    if strategy not in ("insert", "update", "upsert"):
        raise args.error(
            f"invalid value for strategy, {strategy}, must be 'insert', 'update' or 'upsert'"
        )

    def run(ctx: SampleContext) -> Any:
        dest = target(ctx)
        source = want_map("merge_maps", source_of(ctx))
        for k, v in source.items():
            present = k in dest
            if (
                (strategy == "insert" and not present)
                or (strategy == "update" and present)
                or (strategy == "upsert")
            ):
                dest[k] = copy_value(v)

    return run


@register(
    "append",
    p("target", Kind.SETTER),
    p("value", optional=True),
    p("values", Kind.GETTERS, optional=True),
)
def _append(args: Args) -> Getter:
    path = args.path("target")
    setter = path.setter
    assert setter is not None
    if not args.has("value") and not args.has("values"):
        raise args.error(
            "at least one of the optional arguments ('value' or 'values') must be provided"
        )
    one = args.getter("value") if args.has("value") else None
    many = list_values(args, "values", "append") if args.has("values") else None

    def run(ctx: SampleContext) -> Any:
        current = path.getter(ctx)
        if current is None:
            result: list[Any] = []
        elif type(current) is list:
            result = list(current)
        else:
            result = [current]
        if one is not None:
            result.append(one(ctx))
        if many is not None:
            result.extend(many(ctx))
        setter(ctx, result)

    return run


@register("delete_index", p("target", Kind.SETTER), p("start_index"), p("end_index", optional=True))
def _delete_index(args: Args) -> Getter:
    path = args.path("target")
    setter = path.setter
    assert setter is not None
    start_of = args.getter("start_index")
    end_of = args.getter("end_index") if args.has("end_index") else None

    def run(ctx: SampleContext) -> Any:
        items = want_list("delete_index", path.getter(ctx))
        start = want_int("delete_index", start_of(ctx))
        end = start + 1 if end_of is None else want_int("delete_index", end_of(ctx))
        if start < 0 or start >= len(items):
            raise fail("delete_index", f"startIndex {start} out of bounds for length {len(items)}")
        if end < start or end > len(items):
            raise fail("delete_index", f"endIndex {end} out of bounds")
        if end > start:
            setter(ctx, items[:start] + items[end:])

    return run


@register(
    "flatten",
    p("target"),
    p("prefix", Kind.STRING, optional=True),
    p("depth", Kind.INT, optional=True),
)
def _flatten(args: Args) -> Getter:
    target = map_target(args, "flatten")
    prefix: str = args.literal("prefix", "")
    depth: int = args.literal("depth", (1 << 63) - 1)
    if depth < 0:
        raise args.error(f"invalid depth '{depth}' for flatten function, must be non-negative")

    def run(ctx: SampleContext) -> Any:
        attrs = target(ctx)
        flat: dict[str, Any] = {}
        _flatten_map(attrs, flat, prefix, 0, depth)
        attrs.clear()
        attrs.update(flat)

    return run


def _flatten_map(
    m: dict[str, Any], out: dict[str, Any], prefix: str, level: int, depth: int
) -> None:
    if prefix:
        prefix += "."
    for k, v in m.items():
        name = prefix + k
        if type(v) is dict and level < depth:
            _flatten_map(v, out, name, level + 1, depth)
        elif type(v) is list and level < depth:
            for i, item in enumerate(v):
                if type(item) is dict and level + 1 < depth:
                    _flatten_map(item, out, f"{name}.{i}", level + 2, depth)
                else:
                    out[f"{name}.{i}"] = copy_value(item)
        else:
            out[name] = v


# ---- replacing ------------------------------------------------------------------

_OTHER_VERB = re.compile(r"%[^s]")  # the collector's check: a %s, and no other verb


def _replacer(args: Args, function: str) -> Callable[[SampleContext, str], str]:
    """The replacement text after the optional function and replacement_format."""
    spec: FunctionSpec | None = args.function_spec("function")
    fmt_of = args.getter("replacement_format") if args.has("replacement_format") else None
    if spec is None and fmt_of is None:
        return lambda ctx, text: text
    apply = _single_string_call(spec, args) if spec is not None else None

    def finish(ctx: SampleContext, text: str) -> str:
        if apply is not None:
            result = apply(ctx, text)
            if type(result) is not str:
                raise fail(function, "the replacement value must be a string")
            text = result
        if fmt_of is not None:
            fmt = want_str(function, fmt_of(ctx))
            if "%s" not in fmt or _OTHER_VERB.search(fmt):
                raise fail(
                    function,
                    "replacementFormat must be format string containing a single %s and no"
                    " other format specifiers",
                )
            text = sprintf(fmt, [text])
        return text

    return finish


def _single_string_call(spec: FunctionSpec, args: Args) -> Callable[[SampleContext, str], Any]:
    """Call a converter such as SHA256 on one string (its first parameter)."""
    required = [q for q in spec.params if not q.optional]
    if len(required) != 1 or required[0].kind is not Kind.GETTER:
        raise args.error(f"{spec.name} cannot be used as a replacement function")
    # The converter's argument reads the text from a thread-local slot: a
    # compiled rule may run on several threads at once.
    slot = threading.local()
    expr = Expr(lambda ctx: slot.text, frozenset({"sample"}))
    bound = Args(spec.name, {required[0].name: Bound(required[0], expr=expr)}, args.rule)
    call = spec.factory(bound)

    def apply(ctx: SampleContext, text: str) -> Any:
        slot.text = text
        return call(ctx)

    return apply


@register(
    "replace_pattern",
    p("target", Kind.SETTER),
    p("regex_pattern"),
    p("replacement"),
    p("function", Kind.FUNCTION, optional=True),
    p("replacement_format", optional=True),
)
def _replace_pattern(args: Args) -> Getter:
    path = args.path("target")
    setter = path.setter
    assert setter is not None
    pattern_of = regex_arg(args, "regex_pattern", "replace_pattern")
    replacement_of = args.getter("replacement")
    finish = _replacer(args, "replace_pattern")
    plain = not args.has("function") and not args.has("replacement_format")
    fast = _constant_sub(args, "regex_pattern") if plain else None
    if fast is not None:
        subn = fast

        def run_fast(ctx: SampleContext) -> Any:
            value = path.getter(ctx)
            if type(value) is str:
                updated, count = subn(value)
                if count:
                    setter(ctx, updated)

        return run_fast

    def run(ctx: SampleContext) -> Any:
        value = path.getter(ctx)
        if value is None:
            return
        template = parse_template(want_str("replace_pattern", replacement_of(ctx)))
        if type(value) is not str:
            return
        pattern = pattern_of(ctx)
        if pattern.search(value) is None:
            return
        if plain:
            updated = replace_all(pattern, value, lambda m: expand(template, m))
        else:
            updated = _replace_each(ctx, pattern, value, template, finish)
        setter(ctx, updated)

    return run


def _constant_sub(args: Args, pattern_name: str) -> Callable[[str], tuple[str, int]] | None:
    """`re.subn` with the pattern and template fixed, when it agrees with Go's ReplaceAll.

    That is when both are literals and no match can be empty (Go and Python
    differ only on empty matches right after a match).
    """
    pattern_expr = args.bound[pattern_name]
    replacement = args.expr("replacement")
    if not replacement.const or type(replacement.value) is not str:
        return None
    if pattern_expr.param.kind is Kind.STRING:
        text = pattern_expr.literal
    elif pattern_expr.expr is not None and pattern_expr.expr.const:
        text = pattern_expr.expr.value
    else:
        return None
    pattern = regex_arg(args, pattern_name, args.function)(SampleContext())
    if type(text) is not str or not never_empty(pattern):
        return None
    template = python_template(parse_template(replacement.value), pattern)
    subn = pattern.subn
    return lambda value: subn(template, value)


def _replace_each(
    ctx: SampleContext,
    pattern: re.Pattern[str],
    value: str,
    template: tuple[str | int, ...],
    finish: Callable[[SampleContext, str], str],
) -> str:
    # With a function, the collector replaces every occurrence of each match's
    # text with the function of its expansion, match by match.
    updated = value
    for m in pattern.finditer(value):
        whole = m.group(0)
        if whole:
            updated = updated.replace(whole, finish(ctx, expand(template, m)))
    return updated


@register(
    "replace_all_patterns",
    p("target"),
    p("mode", Kind.STRING),
    p("regex_pattern", Kind.STRING),
    p("replacement"),
    p("function", Kind.FUNCTION, optional=True),
    p("replacement_format", optional=True),
)
def _replace_all_patterns(args: Args) -> Getter:
    target = map_target(args, "replace_all_patterns")
    mode: str = args.literal("mode")
    if mode not in ("key", "value"):
        raise args.error(f"invalid mode {mode}, must be either 'key' or 'value'")
    pattern = regex_arg(args, "regex_pattern", "replace_all_patterns")(SampleContext())
    replacement_of = args.getter("replacement")
    finish = _replacer(args, "replace_all_patterns")
    plain = not args.has("function") and not args.has("replacement_format")
    fast = _constant_sub(args, "regex_pattern") if plain else None

    def rewrite(ctx: SampleContext, text: str, template: tuple[str | int, ...]) -> str:
        if fast is not None:
            return fast(text)[0]
        if plain:
            return replace_all(pattern, text, lambda m: expand(template, m))
        return _replace_each(ctx, pattern, text, template, finish)

    def run(ctx: SampleContext) -> Any:
        attrs = target(ctx)
        template = parse_template(want_str("replace_all_patterns", replacement_of(ctx)))
        if mode == "value":
            for k, v in attrs.items():
                if type(v) is str and pattern.search(v) is not None:
                    attrs[k] = rewrite(ctx, v, template)
            return
        if not any(pattern.search(k) for k in attrs):
            return
        renamed: dict[str, Any] = {}
        for k, v in attrs.items():
            renamed[rewrite(ctx, k, template) if pattern.search(k) else k] = v
        attrs.clear()
        attrs.update(renamed)

    return run


def _glob_arg(args: Args, function: str) -> re.Pattern[str]:
    text: str = args.literal("pattern")
    try:
        return glob_regex(text)
    except RegexError as e:
        raise args.error(
            f"the pattern supplied to {function} is not a valid pattern: {e}"
        ) from None


@register(
    "replace_match",
    p("target", Kind.SETTER),
    p("pattern", Kind.STRING),
    p("replacement"),
    p("function", Kind.FUNCTION, optional=True),
    p("replacement_format", optional=True),
)
def _replace_match(args: Args) -> Getter:
    path: PathAccessor = args.path("target")
    setter = path.setter
    assert setter is not None
    match = _glob_arg(args, "replace_match").match
    replacement_of = args.getter("replacement")
    finish = _replacer(args, "replace_match")

    def run(ctx: SampleContext) -> Any:
        value = path.getter(ctx)
        if type(value) is str and match(value):
            setter(ctx, finish(ctx, want_str("replace_match", replacement_of(ctx))))

    return run


@register(
    "replace_all_matches",
    p("target"),
    p("pattern", Kind.STRING),
    p("replacement"),
    p("function", Kind.FUNCTION, optional=True),
    p("replacement_format", optional=True),
)
def _replace_all_matches(args: Args) -> Getter:
    target = map_target(args, "replace_all_matches")
    match = _glob_arg(args, "replace_all_matches").match
    replacement_of = args.getter("replacement")
    finish = _replacer(args, "replace_all_matches")

    def run(ctx: SampleContext) -> Any:
        attrs = target(ctx)
        replacement: str | None = None
        for k, v in attrs.items():
            if type(v) is str and match(v):
                if replacement is None:
                    replacement = finish(ctx, want_str("replace_all_matches", replacement_of(ctx)))
                attrs[k] = replacement

    return run
