"""`kiln top` tables: flat/cum numbers, order, text layout, input sniffing."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from symbolizer import folded, pprof, top
from symbolizer.profile import Frame, FrameKind, Profile

MAIN = Frame("main", 0x1)
A = Frame("a", 0x10)
A_AGAIN = Frame("a", 0x20)  # the recursive call: another address, same function
B = Frame("b", 0x30)


def recursive_profile(empty_stack: bool = True) -> Profile:
    """Root first: main;a;b;a x4 (two label sets), main;a x2, main;b x3, main x1, empty x1."""
    p = Profile(period_ns=1000)
    p.add([A_AGAIN, B, A, MAIN], 3, [("pid", "1")])
    p.add([A_AGAIN, B, A, MAIN], 1, [("pid", "2")])
    p.add([A, MAIN], 2)
    p.add([B, MAIN], 3)
    p.add([MAIN], 1)
    if empty_stack:
        p.add([], 1)  # folded would turn this into an "[unknown]" frame
    return p


def test_hand_computed_example_with_recursion() -> None:
    df = top.top_table(recursive_profile())
    assert list(df.columns) == ["flat", "flat%", "sum%", "cum", "cum%", "name", "kind"]
    assert df["name"].tolist() == ["a", "b", "main"]
    assert df["flat"].tolist() == [6, 3, 1]
    # a is on main;a;b;a twice but counted once: 4 + 2.
    assert df["cum"].tolist() == [6, 7, 10]
    total = 11  # the empty stack counts in the total only
    assert df.attrs["total"] == total
    assert df["flat%"].tolist() == pytest.approx([600 / total, 300 / total, 100 / total])
    assert df["sum%"].tolist() == pytest.approx([600 / total, 900 / total, 1000 / total])
    assert df["cum%"].tolist() == pytest.approx([600 / total, 700 / total, 1000 / total])
    assert df["kind"].tolist() == ["native"] * 3


def test_format_table_golden() -> None:
    text = top.format_table(top.top_table(recursive_profile()))
    assert text == (
        "Showing top 3 of 3 functions, accounting for 10 samples (90.91% of 11 total)\n"
        "      flat  flat%   sum%        cum   cum%\n"
        "         6 54.55% 54.55%          6 54.55%  a\n"
        "         3 27.27% 81.82%          7 63.64%  b\n"
        "         1  9.09% 90.91%         10 90.91%  main\n"
    )


def test_limit_keeps_the_top_rows() -> None:
    df = top.top_table(recursive_profile(), limit=2)
    assert df["name"].tolist() == ["a", "b"]
    assert df.attrs["functions"] == 3
    assert top.format_table(df).startswith("Showing top 2 of 3 functions")


def test_ties_sort_by_cum_then_name() -> None:
    p = Profile()
    p.add([Frame("z"), Frame("y")], 1)
    p.add([Frame("x"), Frame("y")], 1)
    p.add([Frame("w")], 1)
    p.add([Frame("w"), Frame("v")], 1)
    df = top.top_table(p)
    assert list(zip(df["name"], df["flat"], df["cum"], strict=True)) == [
        ("w", 2, 2),
        ("x", 1, 1),
        ("z", 1, 1),
        ("y", 0, 2),
        ("v", 0, 1),
    ]


def test_kinds_are_separate_rows_and_filterable() -> None:
    p = Profile()
    p.add([Frame("f", kind=FrameKind.KERNEL), Frame("f"), Frame("run", kind=FrameKind.PYTHON)], 5)
    df = top.top_table(p)
    assert dict(zip(df["name"], df["kind"], strict=True)) == {
        "f_[k]": "kernel",
        "f": "native",
        "run_[py]": "python",
    }
    kernel = top.top_table(p, kinds=[FrameKind.KERNEL])
    assert kernel["name"].tolist() == ["f_[k]"]
    assert kernel["flat%"].tolist() == [100.0]
    only = top.top_table(p, kinds=[FrameKind.PYTHON, FrameKind.NATIVE])
    assert only["name"].tolist() == ["f", "run_[py]"]
    assert only["sum%"].tolist() == [0.0, 0.0]


def test_empty_profile() -> None:
    df = top.top_table(Profile())
    assert df.empty
    assert df.attrs["total"] == 0
    assert top.format_table(df) == (
        "Showing top 0 of 0 functions, accounting for 0 samples (0.00% of 0 total)\n"
        "      flat  flat%   sum%        cum   cum%\n"
    )


_frames = st.builds(
    Frame,
    function=st.sampled_from(["a", "b", "c", "d"]),
    address=st.integers(0, 3),
    kind=st.sampled_from(FrameKind),
)


@given(st.lists(st.tuples(st.lists(_frames, max_size=8), st.integers(0, 100)), max_size=30))
def test_matches_a_naive_count(stacks: list[tuple[list[Frame], int]]) -> None:
    p = Profile()
    flat: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    for frames, n in stacks:
        p.add(frames, n, [("pid", str(n % 3))])
        names = [folded.display_name(f.function, f.kind) for f in frames]
        if names and n > 0:
            flat[names[0]] += n
            for name in set(names):
                cum[name] += n
    df = top.top_table(p)
    assert dict(zip(df["name"], df["flat"], strict=True)) == {k: flat[k] for k in cum}
    assert dict(zip(df["name"], df["cum"], strict=True)) == dict(cum)
    keys = list(zip(-df["flat"], -df["cum"], df["name"], strict=True))
    assert keys == sorted(keys)
    assert df["flat"].sum() <= p.total_samples


# -- load --------------------------------------------------------------------


def test_load_sniffs_the_format(tmp_path: Path) -> None:
    p = recursive_profile(empty_stack=False)
    expected = top.top_table(p)[["name", "flat", "cum"]]
    text = folded.dumps(p).encode()
    for data in (text, gzip.compress(text), pprof.encode(p), pprof.dumps(p)):
        got = top.top_table(top.load(data))[["name", "flat", "cum"]]
        assert got.equals(expected)
    path = tmp_path / "cpu.pb.gz"
    pprof.write(p, path)
    assert top.top_table(top.read(path))[["name", "flat", "cum"]].equals(expected)


def test_load_reports_garbage() -> None:
    with pytest.raises(pprof.PprofFormatError):
        top.load(b"\xff\xfe\x00garbage")
