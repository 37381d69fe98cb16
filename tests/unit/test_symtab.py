"""symbolizer/symtab.py: building tables and vectorized lookup."""

from __future__ import annotations

import bisect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symbolizer.symtab import U64_MAX, SymbolTable


def _table(*rows: tuple[int, int, str], **kw: object) -> SymbolTable:
    return SymbolTable.build(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        **kw,  # type: ignore[arg-type]
    )


def _names(t: SymbolTable, addrs: list[int]) -> list[str | None]:
    return t.names_of(t.lookup(np.array(addrs, dtype=np.uint64)))


def test_sized_symbols_cover_start_inclusive_end_exclusive() -> None:
    t = _table((0x1000, 0x10, "a"), (0x1020, 0x20, "b"))
    assert _names(t, [0xFFF, 0x1000, 0x100F, 0x1010, 0x101F, 0x1020, 0x103F, 0x1040]) == [
        None, "a", "a", None, None, "b", "b", None,
    ]  # fmt: skip


def test_lookup_returns_int32_rows_and_minus_one() -> None:
    t = _table((0x1000, 0x10, "a"))
    rows = t.lookup(np.array([0x1004, 0x2000], dtype=np.uint64))
    assert rows.dtype == np.int32
    assert rows.tolist() == [0, -1]
    assert t.name(0) == "a"
    assert t.start(0) == 0x1000
    assert t.offset(0, 0x1004) == 4
    assert t.offsets(rows, np.array([0x1004, 0x2000], dtype=np.uint64)).tolist() == [4, 0]
    assert t.lookup([0x1001]).tolist() == [0]  # plain lists are accepted too


def test_aliases_keep_sized_then_ranked_then_fewer_underscores() -> None:
    t = _table((0x1000, 0, "unsized"), (0x1000, 0x10, "sized"))
    assert _names(t, [0x1000]) == ["sized"]
    t = _table((0x1000, 8, "local"), (0x1000, 8, "global"), ranks=[2, 0])
    assert _names(t, [0x1000]) == ["global"]
    t = _table((0x1000, 8, "__libc_malloc"), (0x1000, 8, "malloc"), (0x1000, 8, "_malloc"))
    assert _names(t, [0x1000]) == ["malloc"]
    assert len(t) == 1


def test_unsized_symbol_extends_to_next_symbol() -> None:
    t = _table((0x1000, 0, "a"), (0x1100, 0, "b"))
    assert _names(t, [0x10FF, 0x1100]) == ["a", "b"]


def test_unsized_symbol_stops_at_its_section_end() -> None:
    t = _table((0x1000, 0, "a"), (0x2000, 0, "b"), limits=[0x1080, U64_MAX])
    assert _names(t, [0x107F, 0x1080, 0x1FFF]) == ["a", None, None]


def test_unsized_symbol_is_capped() -> None:
    t = _table((0x1000, 0, "last"), max_unsized=0x100)
    assert _names(t, [0x10FF, 0x1100]) == ["last", None]


def test_limit_below_start_gives_an_empty_range() -> None:
    t = _table((0x1000, 0, "etext"), limits=[0x1000])
    assert _names(t, [0x1000]) == [None]


def test_empty_table() -> None:
    t = SymbolTable.build([], [], [])
    assert len(t) == 0
    assert t.lookup(np.array([0, 1, U64_MAX], dtype=np.uint64)).tolist() == [-1, -1, -1]
    assert t.names_of(t.lookup([5])) == [None]


def test_extreme_addresses() -> None:
    t = _table((0x10, 0x10, "low"), (U64_MAX - 0x10, 0x100, "top"))  # size wraps: clipped
    assert _names(t, [0, 0x10, U64_MAX - 1, U64_MAX - 0x11]) == [None, "low", "top", None]


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError):
        SymbolTable.build([1, 2], [1], ["a", "b"])


def _reference(starts: list[int], ends: list[int], addr: int) -> int:
    """Per-address bisect over the built table's rows: the obvious answer."""
    i = bisect.bisect_right(starts, addr) - 1
    return i if i >= 0 and addr < ends[i] else -1


_symbol = st.tuples(st.integers(0, 1 << 20), st.integers(0, 64))
_cluster = st.integers(0, 1 << 44).flatmap(
    lambda base: st.lists(
        st.tuples(st.integers(base, base + 600), st.integers(0, 16)), min_size=1, max_size=80
    )
)


@settings(max_examples=200, database=None)
@given(
    st.one_of(
        st.lists(_symbol, max_size=300),
        _cluster,
        st.lists(_cluster, max_size=4).map(lambda cs: [s for c in cs for s in c]),
    ),
    st.lists(st.integers(0, 1 << 45), max_size=200),
    st.data(),
)
def test_lookup_matches_bisect_reference(
    syms: list[tuple[int, int]], far: list[int], data: st.DataObject
) -> None:
    """Uniform, clustered (dense buckets) and mixed tables, near and far addresses."""
    t = SymbolTable.build(
        [s for s, _ in syms], [z for _, z in syms], [f"s{i}" for i in range(len(syms))]
    )
    near = [data.draw(st.integers(max(s - 8, 0), s + 80)) for s, _ in syms[:100]]
    addrs = near + far + [0, U64_MAX]
    starts, ends = t.starts.tolist(), t.ends.tolist()
    assert starts == sorted(set(starts))
    got = t.lookup(np.array(addrs, dtype=np.uint64)).tolist()
    assert got == [_reference(starts, ends, a) for a in addrs]


def test_the_benchmark_runs_and_reports_every_figure() -> None:
    """Speed is `make bench`'s business; this only checks the bench works."""
    from tools.bench_symbolize import bench

    r = bench(symbols=2_000, addresses=20_000, naive_addresses=2_000, repeat=1)
    assert r["batch_per_s"] > 0 and r["naive_per_s"] > 0
    assert r["hit_rate"] > 0.1
