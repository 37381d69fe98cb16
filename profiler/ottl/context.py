"""Kiln's OTTL context: one profile sample, and the paths rules may use on it.

Modeled on the collector's contexts (`pkg/ottl/contexts`): a context is the
data a rule sees plus the paths that reach into it. A sample is:

=============================  =====================================  ==========
path                           value                                  writable
=============================  =====================================  ==========
``resource.attributes``        map: the process's resource            yes
``resource.attributes[k]...``  its values (nested maps/lists indexed)  yes
``attributes``                 map: the sample's own attributes       yes
``attributes[k]...``           its values                             yes
``value``                      int: the sample count                  yes (int)
``time_unix_nano``             int: the sample's time                 yes (int)
``frames``                     list of maps, leaf first: function,    no
                               filename, line, kind, mapping
``frames[i]``                  that frame as a map                    no
``frames[i].function``         str (also ``filename``, ``line`` int,  no
                               ``kind`` "native"/"kernel"/"python",
                               ``mapping`` the file it was loaded
                               from)
``stack.functions``            list of function names, leaf first     no
``stack.filenames``            list of source file names              no
``stack.kinds``                list of frame kinds                    no
``stack.mappings``             list of mapping file names             no
=============================  =====================================  ==========

Sample-level paths may also be written with the context name in front,
``sample.attributes[...]``, as the collector allows for its contexts.

As in the collector, reading a missing map key gives nil, indexing a list
out of range (``frames[99]``) is an error, and indexing a value that is not
a map or a list is an error. Setting a nested key creates the maps on the
way (``set(attributes["a"]["b"], 1)``). Setting a read-only path is
rejected when the rule is compiled.

`stack_key` is optional: when the caller knows two samples share a stack
(Kiln keys stacks by a hash of their frames), rules whose result depends
only on the stack are computed once per stack.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from profiler.ottl.errors import OttlError, OttlRuntimeError
from profiler.ottl.values import copy_value, type_name

if TYPE_CHECKING:
    from symbolizer import profile as symbolized

Getter = Callable[["SampleContext"], Any]
Setter = Callable[["SampleContext", Any], None]


@dataclass(slots=True)
class Frame:
    """One stack frame as rules see it."""

    function: str
    filename: str = ""
    line: int = 0
    kind: str = "native"  # "native" | "kernel" | "python"
    mapping: str = ""  # the file the code was loaded from

    @classmethod
    def from_symbolized(cls, frame: symbolized.Frame) -> Frame:
        return cls(
            function=frame.function,
            filename=frame.filename,
            line=frame.line,
            kind=frame.kind.label,
            mapping=frame.mapping.filename if frame.mapping is not None else "",
        )

    def as_map(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "filename": self.filename,
            "line": self.line,
            "kind": self.kind,
            "mapping": self.mapping,
        }


@dataclass(slots=True)
class SampleContext:
    """One sample: what OTTL rules read and edit. Build one per sample."""

    resource_attributes: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    frames: Sequence[Frame] = ()  # leaf first
    value: int = 1
    time_unix_nano: int = 0
    stack_key: Hashable | None = None  # equal keys promise equal frames
    # stack.* lists and the joined names, built on first use by a rule.
    _stack_lists: dict[str, list[Any]] | None = field(
        default=None, init=False, repr=False, compare=False
    )


FRAME_FIELDS = ("function", "filename", "line", "kind", "mapping")
STACK_LISTS = {"functions": "function", "filenames": "filename", "kinds": "kind",
               "mappings": "mapping"}  # fmt: skip
CONTEXT_NAMES = ("sample", "profilesample")
_FRAME_GETTERS = {name: operator.attrgetter(attr) for name, attr in STACK_LISTS.items()}
_FUNCTION = _FRAME_GETTERS["functions"]


def stack_list(ctx: SampleContext, name: str) -> list[Any]:
    """`stack.<name>`, computed once per context (several rules may read it)."""
    lists = ctx._stack_lists
    if lists is None:
        lists = ctx._stack_lists = {}
    found = lists.get(name)
    if found is None:
        found = lists[name] = list(map(_FRAME_GETTERS[name], ctx.frames))
    return found


def stack_text(ctx: SampleContext) -> str:
    """The function names joined by newlines (StackContains' prefilter), once per context."""
    lists = ctx._stack_lists
    if lists is None:
        lists = ctx._stack_lists = {}
    found = lists.get("\n")
    if found is None:
        names = lists.get("functions")
        text = "\n".join(names if names is not None else map(_FUNCTION, ctx.frames))
        lists["\n"] = [text]
        return text
    return found[0]  # type: ignore[no-any-return]


# ---- keys and indexing ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """A compiled `[key]`: a constant string/int, or a getter evaluated per sample."""

    const: str | int | None = None
    getter: Getter | None = None
    text: str = ""

    def resolve(self, ctx: SampleContext) -> str | int:
        if self.getter is None:
            assert self.const is not None
            return self.const
        key = self.getter(ctx)
        if type(key) is not str and type(key) is not int:
            raise OttlRuntimeError(
                f"key {self.text} must be a string or an int, got {type_name(key)}"
            )
        return key


def index(value: Any, key: str | int) -> Any:
    """One `[key]` step on a path: a missing map key is nil; a bad index is an error."""
    t = type(value)
    if t is dict:
        if type(key) is not str:
            raise OttlRuntimeError(f"a map must be indexed by a string, got {key!r}")
        return value.get(key)
    if t is list:
        if type(key) is not int:
            raise OttlRuntimeError(f"a list must be indexed by an int, got {key!r}")
        if 0 <= key < len(value):
            return value[key]
        raise OttlRuntimeError(f"index {key} out of bounds")
    if value is None:
        return None
    kind = "string" if type(key) is str else "int"
    raise OttlRuntimeError(f"type {type_name(value)} does not support {kind} indexing")


def set_indexed(root: dict[str, Any], keys: Sequence[str | int], value: Any) -> None:
    """Set root[k0][k1]... = value, creating maps (string key) or lists (int key) as needed."""
    container: Any = root
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        t = type(container)
        if t is dict:
            if type(key) is not str:
                raise OttlRuntimeError(f"a map must be indexed by a string, got {key!r}")
            if last:
                container[key] = value
                return
            nxt = container.get(key)
            if nxt is None:
                nxt = container[key] = _empty_for(keys[i + 1])
            container = nxt
        elif t is list:
            if type(key) is not int:
                raise OttlRuntimeError(f"a list must be indexed by an int, got {key!r}")
            if not 0 <= key < len(container):
                raise OttlRuntimeError(f"index {key} out of bounds")
            if last:
                container[key] = value
                return
            nxt = container[key]
            if nxt is None:
                nxt = container[key] = _empty_for(keys[i + 1])
            container = nxt
        else:
            kind = "string" if type(key) is str else "int"
            raise OttlRuntimeError(f"type {type_name(container)} does not support {kind} indexing")


def _empty_for(key: str | int) -> Any:
    # pdata turns an empty value into a map for a string key, or a list padded
    # with empty values up to an int key.
    return {} if type(key) is str else [None] * (int(key) + 1)


# ---- paths ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathAccessor:
    """A compiled path: how to read it, how to write it (None: read-only).

    `map_source` and `map_key` are set for `attributes["k"]`-shaped paths so
    the compiler can fuse the read into a comparison (the common filter).
    `deps` says what the value depends on ("stack", "sample", "resource").
    """

    text: str
    getter: Getter
    setter: Setter | None
    deps: frozenset[str]
    map_source: Callable[[SampleContext], dict[str, Any]] | None = None
    map_key: str | None = None


_FieldKeys = tuple[str, tuple[Key, ...]]


def resolve_path(fields: Sequence[_FieldKeys], text: str) -> PathAccessor:
    """The accessor for a path given as (name, compiled keys) per dotted segment."""
    parts = list(fields)
    if len(parts) > 1 and parts[0][0] in CONTEXT_NAMES and not parts[0][1]:
        parts = parts[1:]
    head, head_keys = parts[0]
    rest = parts[1:]
    if head == "resource":
        if len(rest) == 1 and rest[0][0] == "attributes" and not head_keys:
            return _map_path(text, "resource_attributes", rest[0][1], "resource")
        raise _unknown(text)
    if head == "attributes" and not rest:
        return _map_path(text, "attributes", head_keys, "sample")
    if head in ("value", "time_unix_nano") and not rest:
        if head_keys:
            raise OttlError(f"path {head} cannot be indexed", rule=text)
        return _int_path(text, head)
    if head == "frames":
        return _frames_path(text, head_keys, rest)
    if head == "stack":
        if len(rest) == 1 and rest[0][0] in STACK_LISTS and not head_keys:
            return _stack_path(text, rest[0][0], rest[0][1])
        raise _unknown(text)
    raise _unknown(text)


def _unknown(text: str) -> OttlError:
    return OttlError(
        f"unknown path {text}; Kiln's sample context has resource.attributes, attributes,"
        " value, time_unix_nano, frames[i].function|filename|line|kind|mapping,"
        " stack.functions|filenames|kinds|mappings",
    )


def _map_path(text: str, attr: str, keys: tuple[Key, ...], dep: str) -> PathAccessor:
    deps = frozenset({dep})
    source = _attributes if attr == "attributes" else _resource_attributes

    if not keys:

        def set_map(ctx: SampleContext, value: Any) -> None:
            if type(value) is not dict:
                raise OttlRuntimeError(f"{text} must be set to a map, got {type_name(value)}")
            setattr(ctx, attr, copy_value(value))

        return PathAccessor(text, source, set_map, deps)

    first = keys[0]
    if len(keys) == 1 and first.getter is None:
        k = first.const
        if type(k) is not str:
            raise OttlError(f"{text}: a map must be indexed by a string")

        def get_one(ctx: SampleContext) -> Any:
            return source(ctx).get(k)

        def set_one(ctx: SampleContext, value: Any) -> None:
            t = type(value)
            source(ctx)[k] = copy_value(value) if t is dict or t is list else value

        return PathAccessor(text, get_one, set_one, deps, map_source=source, map_key=k)

    def get_many(ctx: SampleContext) -> Any:
        value: Any = source(ctx)
        for key in keys:
            value = index(value, key.resolve(ctx))
            if value is None:
                return None
        return value

    def set_many(ctx: SampleContext, value: Any) -> None:
        set_indexed(source(ctx), [key.resolve(ctx) for key in keys], copy_value(value))

    return PathAccessor(text, get_many, set_many, deps)


# C-level getters: these sit on every attribute read a rule makes.
_attributes: Callable[[SampleContext], dict[str, Any]] = operator.attrgetter("attributes")
_resource_attributes: Callable[[SampleContext], dict[str, Any]] = operator.attrgetter(
    "resource_attributes"
)


def _int_path(text: str, attr: str) -> PathAccessor:
    def get(ctx: SampleContext) -> Any:
        return getattr(ctx, attr)

    def set_int(ctx: SampleContext, value: Any) -> None:
        if type(value) is not int:
            raise OttlRuntimeError(f"{text} must be set to an int, got {type_name(value)}")
        setattr(ctx, attr, value)

    return PathAccessor(text, get, set_int, frozenset({"sample"}))


def _frames_path(text: str, keys: tuple[Key, ...], rest: Sequence[_FieldKeys]) -> PathAccessor:
    deps = frozenset({"stack"})
    if not keys:
        if rest:
            raise _unknown(text)

        def all_frames(ctx: SampleContext) -> Any:
            return [f.as_map() for f in ctx.frames]

        return PathAccessor(text, all_frames, None, deps)
    pick, extra = keys[0], keys[1:]
    attr: str | None = None
    if rest:
        if len(rest) != 1 or rest[0][0] not in FRAME_FIELDS or extra:
            raise _unknown(text)
        attr = rest[0][0]
        extra = rest[0][1]

    def frame_at(ctx: SampleContext) -> Frame:
        i = pick.resolve(ctx)
        frames = ctx.frames
        if type(i) is not int:
            raise OttlRuntimeError(f"frames must be indexed by an int, got {i!r}")
        if 0 <= i < len(frames):
            return frames[i]
        raise OttlRuntimeError(f"frames index {i} out of bounds (stack depth {len(frames)})")

    if attr is None:

        def get_frame(ctx: SampleContext) -> Any:
            value: Any = frame_at(ctx).as_map()
            for key in extra:
                value = index(value, key.resolve(ctx))
            return value

        return PathAccessor(text, get_frame, None, deps)

    name = attr
    if not extra and pick.getter is None and type(pick.const) is int:
        i = pick.const

        def get_field_const(ctx: SampleContext) -> Any:
            frames = ctx.frames
            if 0 <= i < len(frames):
                return getattr(frames[i], name)
            raise OttlRuntimeError(f"frames index {i} out of bounds (stack depth {len(frames)})")

        return PathAccessor(text, get_field_const, None, deps)

    def get_field(ctx: SampleContext) -> Any:
        value: Any = getattr(frame_at(ctx), name)
        for key in extra:
            value = index(value, key.resolve(ctx))
        return value

    return PathAccessor(text, get_field, None, deps)


def _stack_path(text: str, name: str, keys: tuple[Key, ...]) -> PathAccessor:
    deps = frozenset({"stack"})

    def get_list(ctx: SampleContext) -> Any:
        return stack_list(ctx, name)

    if not keys:
        return PathAccessor(text, get_list, None, deps)

    def get_indexed(ctx: SampleContext) -> Any:
        value: Any = stack_list(ctx, name)
        for key in keys:
            value = index(value, key.resolve(ctx))
        return value

    return PathAccessor(text, get_indexed, None, deps)


ENUMS: dict[str, int] = {}  # Kiln's sample context defines no enum symbols (yet)
