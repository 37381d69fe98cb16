"""web/params.py: every bad parameter is a ParamError naming it."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict

from profiler.store.api import Filters
from symbolizer.profile import FrameKind
from web import params
from web.params import ParamError

NOW = 1_700_000_000_000 * 10**6
S = 10**9


def args(**kw: str | list[str]) -> MultiDict[str, str]:
    items: list[tuple[str, str]] = []
    for k, v in kw.items():
        items.extend((k, x) for x in (v if isinstance(v, list) else [v]))
    return MultiDict(items)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1700000000000", NOW),
        ("now", NOW),
        ("now-15m", NOW - 900 * S),
        ("now-1h", NOW - 3600 * S),
        ("now-2d", NOW - 2 * 86400 * S),
        ("now-500ms", NOW - S // 2),
        (" now-30s ", NOW - 30 * S),
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14T23:13:20+01:00", NOW),
    ],
)
def test_times(text: str, expected: int) -> None:
    assert params.parse_time(text, NOW, "from") == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "now-",
        "now-1y",
        "now+1h",
        "-5",
        "1e12",
        "2023-11-14T22:13:20",
        "now-1h; DROP TABLE",
        "9" * 20,
        "<script>",
    ],
)
def test_bad_times(text: str) -> None:
    with pytest.raises(ParamError) as e:
        params.parse_time(text, NOW, "from")
    assert e.value.param == "from"


def test_range_defaults_and_checks() -> None:
    r = params.time_range(args(), NOW)
    assert (r.start_ns, r.end_ns) == (NOW - 3600 * S, NOW)
    with pytest.raises(ParamError, match="empty or reversed") as e:
        params.time_range(args(**{"from": "now", "to": "now-1h"}), NOW)
    assert e.value.param == "to"
    with pytest.raises(ParamError, match="31 days"):
        params.time_range(args(**{"from": "now-40d"}), NOW)
    with pytest.raises(ParamError) as e:
        params.time_range(args(base_from="x"), NOW, prefix="base_")
    assert e.value.param == "base_from"


def test_filters() -> None:
    f = params.filters(args(pid=["1,2", "3", "2"], comm="nginx: worker", exe="/a b/c,d"))
    assert f == Filters(pids=("1", "2", "3"), comms=("nginx: worker",), exes=("/a b/c,d",))
    assert params.filters(args(pid="")) == Filters()
    for bad in ("x", "1;2", "-1", "12345678901"):
        with pytest.raises(ParamError) as e:
            params.filters(args(pid=bad))
        assert e.value.param == "pid"
    with pytest.raises(ParamError, match="at most"):
        params.filters(args(tid=",".join(str(i) for i in range(100))))
    with pytest.raises(ParamError, match="NUL"):
        params.filters(args(comm="a\x00b"))
    with pytest.raises(ParamError, match="longer"):
        params.filters(args(exe="x" * 5000))


def test_prefixed_filters_fall_back() -> None:
    base = Filters(pids=("1",), comms=("a",))
    f = params.filters(args(base_pid="2"), "base_", fallback=base)
    assert f == Filters(pids=("2",), comms=("a",))
    assert params.filters(args(base_pid=""), "base_", fallback=base).pids == ()


def test_kinds() -> None:
    assert params.kinds(args()) == frozenset(FrameKind)
    assert params.kinds(args(kinds="kernel,user")) == {FrameKind.KERNEL, FrameKind.NATIVE}
    assert params.kinds(args(kinds="python")) == {FrameKind.PYTHON}
    assert params.kinds(args(kinds=",")) == frozenset()
    with pytest.raises(ParamError, match="unknown frame kind"):
        params.kinds(args(kinds="kernel,jit"))


def test_scalars() -> None:
    assert params.integer(args(n="5"), "n", 1, 0, 10) == 5
    assert params.integer(args(), "n", 1, 0, 10) == 1
    for bad in ("11", "-1", "x", "1.5", "9" * 30):
        with pytest.raises(ParamError):
            params.integer(args(n=bad), "n", 1, 0, 10)
    assert params.flag(args(c="1"), "c") and not params.flag(args(c="off"), "c")
    with pytest.raises(ParamError):
        params.flag(args(c="maybe"), "c")
    assert params.choice(args(s="total"), "s", ("self", "total"), "self") == "total"
    with pytest.raises(ParamError, match="not one of"):
        params.choice(args(s="evil"), "s", ("self", "total"), "self")
    with pytest.raises(ParamError, match="required"):
        params.text(args(), "function", required=True)


def test_flame_options() -> None:
    o = params.flame_options(args(collapse="1", max_nodes="100", kinds="kernel"))
    assert o.collapse_recursion and o.max_nodes == 100 and o.kinds == {FrameKind.KERNEL}
    with pytest.raises(ParamError):
        params.flame_options(args(max_nodes="1000000"))


def test_timeline_step() -> None:
    assert params.timeline_step(args(), 3600 * S) == 15 * S
    assert params.timeline_step(args(), 60 * S) == S
    assert params.timeline_step(args(step="1m"), 3600 * S) == 60 * S
    assert params.timeline_step(args(step="5000"), 3600 * S) == 5 * S
    with pytest.raises(ParamError, match="smallest"):
        params.timeline_step(args(step="10ms"), 3600 * S)
    with pytest.raises(ParamError, match="points"):
        params.timeline_step(args(step="1s"), 86400 * S)
    with pytest.raises(ParamError):
        params.timeline_step(args(step="soon"), 3600 * S)


def test_times_stay_in_int64() -> None:
    with pytest.raises(ParamError, match="outside 1970"):
        params.parse_time("999999999999999", NOW, "to")
    with pytest.raises(ParamError, match="outside 1970"):
        params.parse_time("now-99999999d", NOW, "from")
