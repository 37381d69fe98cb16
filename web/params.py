"""Query parameters of the UI's endpoints: parsed, validated, or refused.

Every problem raises `ParamError` naming the parameter and saying what is
accepted; the app turns it into HTTP 400 with that reason as JSON. Nothing
here touches Flask, so it is tested with plain dictionaries.

Times (`from`, `to`): epoch milliseconds (`1718000000000`), `now`, `now`
minus a duration (`now-15m`, `now-1h`, `now-2d`; units ms, s, m, h, d), or
an ISO 8601 date-time with an offset (`2024-06-10T08:00:00Z`). A range
must be non-empty and at most MAX_RANGE long.

Filters (`pid`, `tid`, `comm`, `exe`, `container`): repeatable; `pid` and
`tid` also take comma-separated lists. Frame kinds (`kinds`): a comma list
of kernel, native (alias user), python.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from profiler.store.api import Filters
from symbolizer.profile import FrameKind
from web import flame

NS_PER_MS = 1_000_000
MAX_RANGE_NS = 31 * 86_400 * 10**9
MAX_TIME_NS = 9_000_000_000_000 * NS_PER_MS  # year 2255: ns stay within int64
MAX_VALUES = 64  # per filter key
MAX_VALUE_LEN = 4096
MAX_NODES_LIMIT = 200_000
DEFAULT_FROM = "now-1h"
DEFAULT_TO = "now"

_UNITS_NS = {"ms": NS_PER_MS, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86_400 * 10**9}
_RELATIVE = re.compile(r"now(?:-([0-9]{1,9})(ms|s|m|h|d))?")
_EPOCH_MS = re.compile(r"[0-9]{1,15}")
_ID = re.compile(r"[0-9]{1,10}")
_KIND_NAMES = {
    "kernel": FrameKind.KERNEL,
    "native": FrameKind.NATIVE,
    "user": FrameKind.NATIVE,
    "python": FrameKind.PYTHON,
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
FILTER_KEYS = {
    "pid": "pids",
    "tid": "tids",
    "comm": "comms",
    "exe": "exes",
    "container": "containers",
}
"""Query parameter -> field of `Filters`."""

T = TypeVar("T")


class Args(Protocol):
    """What is read of request.args (a werkzeug MultiDict, or a test double)."""

    def get(self, key: str, /) -> str | None: ...

    def getlist(self, key: str) -> list[str]: ...

    def __contains__(self, key: object, /) -> bool: ...


class ParamError(ValueError):
    """A query parameter the UI refuses; `reason` says what would be accepted."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TimeRange:
    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class Selection:
    """What the samples of one view are: a time range and label filters."""

    range: TimeRange
    filters: Filters


def parse_time(text: str, now_ns: int, param: str) -> int:
    """One point in time, in ns since the epoch (see the module docstring)."""
    ns = _parse_time(text, now_ns, param)
    if not 0 <= ns <= MAX_TIME_NS:
        raise ParamError(param, f"{_shorten(text)!r} is outside 1970 to 2255")
    return ns


def _parse_time(text: str, now_ns: int, param: str) -> int:
    value = text.strip()
    if _EPOCH_MS.fullmatch(value):
        return int(value) * NS_PER_MS
    m = _RELATIVE.fullmatch(value)
    if m:
        amount, unit = m.groups()
        return now_ns - (int(amount) * _UNITS_NS[unit] if amount else 0)
    if len(value) <= 40 and "T" in value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                raise ParamError(param, f"{text!r} has no UTC offset; add Z or +hh:mm")
            return int(parsed.timestamp() * 1000) * NS_PER_MS
    raise ParamError(
        param,
        f"{_shorten(text)!r} is not a time: use epoch milliseconds, 'now', "
        "'now-15m' (units ms, s, m, h, d) or an ISO 8601 time with an offset",
    )


def time_range(
    args: Args,
    now_ns: int,
    prefix: str = "",
    default: tuple[str, str] = (DEFAULT_FROM, DEFAULT_TO),
) -> TimeRange:
    """The range of `<prefix>from` and `<prefix>to`."""
    start_param, end_param = f"{prefix}from", f"{prefix}to"
    start = parse_time(args.get(start_param) or default[0], now_ns, start_param)
    end = parse_time(args.get(end_param) or default[1], now_ns, end_param)
    if end <= start:
        raise ParamError(
            end_param, f"the range is empty or reversed: {end_param} must be after {start_param}"
        )
    if end - start > MAX_RANGE_NS:
        raise ParamError(end_param, "the range is longer than 31 days; choose a shorter one")
    return TimeRange(start, end)


def filters(args: Args, prefix: str = "", fallback: Filters | None = None) -> Filters:
    """Label filters from `<prefix>pid`, ...; a key absent with a prefix keeps the
    `fallback`'s value, so `base_pid` alone changes only the process."""
    values: dict[str, tuple[str, ...]] = {}
    for key, field in FILTER_KEYS.items():
        param = prefix + key
        if fallback is not None and param not in args:
            values[field] = getattr(fallback, field)
            continue
        raw = args.getlist(param)
        if len(raw) > MAX_VALUES:
            raise ParamError(param, f"at most {MAX_VALUES} values")
        items: list[str] = []
        for value in raw:
            parts = value.split(",") if key in ("pid", "tid") else [value]
            items.extend(_filter_value(param, key, p) for p in parts)
        items = [i for i in items if i]
        if len(items) > MAX_VALUES:
            raise ParamError(param, f"at most {MAX_VALUES} values")
        values[field] = tuple(dict.fromkeys(items))
    return Filters(**values)


def _filter_value(param: str, key: str, value: str) -> str:
    value = value.strip()
    if len(value) > MAX_VALUE_LEN:
        raise ParamError(param, f"a value longer than {MAX_VALUE_LEN} characters")
    if "\x00" in value:
        raise ParamError(param, "a value with a NUL character")
    if key in ("pid", "tid") and value and not _ID.fullmatch(value):
        raise ParamError(param, f"{_shorten(value)!r} is not a {key} (a decimal number)")
    return value


def selection(args: Args, now_ns: int) -> Selection:
    return Selection(time_range(args, now_ns), filters(args))


def kinds(args: Args, param: str = "kinds") -> frozenset[FrameKind]:
    raw = args.get(param)
    if raw is None or raw.strip() == "":
        return frozenset(FrameKind)
    out = set()
    for name in raw.split(","):
        name = name.strip().lower()
        if not name:
            continue
        if name not in _KIND_NAMES:
            raise ParamError(
                param,
                f"unknown frame kind {_shorten(name)!r}; use kernel, native (or user), python",
            )
        out.add(_KIND_NAMES[name])
    return frozenset(out)


def frame_kind(args: Args, param: str) -> FrameKind | None:
    """One frame kind, or None when the parameter is absent or empty."""
    raw = (args.get(param) or "").strip().lower()
    if not raw:
        return None
    if raw not in _KIND_NAMES:
        raise ParamError(param, f"unknown frame kind {_shorten(raw)!r}; use kernel, native, python")
    return _KIND_NAMES[raw]


def integer(args: Args, param: str, default: int, low: int, high: int) -> int:
    raw = args.get(param)
    if raw is None or raw.strip() == "":
        return default
    raw = raw.strip()
    if not re.fullmatch(r"-?[0-9]{1,18}", raw):
        raise ParamError(param, f"{_shorten(raw)!r} is not an integer")
    value = int(raw)
    if not low <= value <= high:
        raise ParamError(param, f"{value} is out of range [{low}, {high}]")
    return value


def flag(args: Args, param: str, default: bool = False) -> bool:
    raw = args.get(param)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ParamError(param, f"{_shorten(raw)!r} is not a yes/no value (use 1 or 0)")


def choice(args: Args, param: str, allowed: Iterable[T], default: T) -> T:
    raw = args.get(param)
    if raw is None or raw == "":
        return default
    options = {str(a): a for a in allowed}
    if raw not in options:
        raise ParamError(param, f"{_shorten(raw)!r} is not one of {', '.join(options)}")
    return options[raw]


def text(args: Args, param: str, *, required: bool = False, max_len: int = MAX_VALUE_LEN) -> str:
    raw = args.get(param) or ""
    if required and not raw:
        raise ParamError(param, "is required")
    if len(raw) > max_len:
        raise ParamError(param, f"longer than {max_len} characters")
    if "\x00" in raw:
        raise ParamError(param, "contains a NUL character")
    return raw


def flame_options(args: Args) -> flame.FlameOptions:
    return flame.FlameOptions(
        kinds=kinds(args),
        collapse_recursion=flag(args, "collapse"),
        max_nodes=integer(args, "max_nodes", flame.DEFAULT_MAX_NODES, 2, MAX_NODES_LIMIT),
    )


_STEPS_NS = [
    s * 10**9
    for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
]
MAX_POINTS = 2000


def timeline_step(args: Args, span_ns: int, target_points: int = 240) -> int:
    """`step` as a duration (`10s`, `1m`, or milliseconds), or a round step
    giving about `target_points` points."""
    raw = (args.get("step") or "").strip()
    if not raw or raw == "auto":
        want = span_ns / target_points
        return next((s for s in _STEPS_NS if s >= want), _STEPS_NS[-1])
    m = re.fullmatch(r"([0-9]{1,9})(ms|s|m|h|d)?", raw)
    if not m:
        raise ParamError("step", f"{_shorten(raw)!r} is not a duration like 10s, 1m or 5000")
    step = int(m.group(1)) * _UNITS_NS[m.group(2) or "ms"]
    if step < 10**9:
        raise ParamError("step", "the smallest step is 1s")
    if span_ns / step > MAX_POINTS:
        raise ParamError("step", f"more than {MAX_POINTS} points; choose a larger step")
    return step


def _shorten(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[:limit] + "..."
