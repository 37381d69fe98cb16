"""symbolizer/unwind_index.py: chunks and page indexes, held to a brute-force lookup."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler.bpf import abi
from symbolizer.unwind import ROW_DTYPE, UnwindError, rows_array
from symbolizer.unwind_index import (
    HASH_ENTRY_OVERHEAD,
    PAGE_DTYPE,
    U32_MAX,
    ChunkedTable,
    build_chunks,
    lookup,
    lpm_prefixes,
    table_bytes,
)

NONE, RSP, RBP, PLT, END = (int(t) for t in abi.CfaType)
SAME, OFFSET, UNDEF = (int(t) for t in abi.RbpType)
PAGE = 1 << abi.PAGE_SHIFT
FINE = 1 << abi.FINE_SHIFT


def brute(rows: npt.NDArray[np.void], vaddr: int) -> np.void | None:
    """The last row with pc <= vaddr: what any lookup must agree with."""
    i = int(np.searchsorted(rows["pc"], np.uint64(vaddr), side="right")) - 1
    if i < 0:
        return None
    found: np.void = rows[i]
    return found


def no_info(row: np.void | None) -> bool:
    return row is None or int(row["cfa_type"]) == NONE


def check_structure(t: ChunkedTable) -> None:
    """What the BPF side relies on: bounded chunks, sorted rows, consistent index."""
    covered = np.zeros(len(t.chunk_rows), dtype=np.int64)
    for index, shift in ((t.pages, abi.PAGE_SHIFT), (t.fine_pages, abi.FINE_SHIFT)):
        assert index.dtype == PAGE_DTYPE
        assert np.all(index["page"][1:] > index["page"][:-1])
        split = (index["flags"] & abi.PAGE_SPLIT) != 0
        if index is t.fine_pages:
            assert not split.any()
        assert np.all(index["count"][split] == 0) and np.all(index["first_row"][split] == 0)
        e = index[~split]
        first, count = e["first_row"].astype(np.int64), e["count"].astype(np.int64)
        assert np.all((count >= 1) & (count <= abi.CHUNK_ROWS))
        assert np.all(first + count <= len(t.chunk_rows))
        start = e["page"].astype(np.uint64) << np.uint64(shift)
        assert np.all(t.chunk_rows["pc"][first] <= start)  # the chunk covers the block start
        assert np.all(t.chunk_rows["pc"][first + count - 1] < start + np.uint64(1 << shift))
        np.add.at(covered, first, 1)
    # Chunks tile chunk_rows; rows increase inside each chunk.
    assert np.all(covered <= 1)
    inside = np.flatnonzero(covered[1:] == 0) + 1
    pcs = t.chunk_rows["pc"]
    assert np.all(pcs[inside] > pcs[inside - 1])
    split_pages = t.pages["page"][(t.pages["flags"] & abi.PAGE_SPLIT) != 0]
    parents = t.fine_pages["page"] >> (abi.PAGE_SHIFT - abi.FINE_SHIFT)
    assert np.all(np.isin(parents, split_pages))
    assert np.all(t.chunk_rows["cfa_type"] <= END)
    assert np.all(t.chunk_rows["rbp_type"] <= UNDEF)


def probes(rows: npt.NDArray[np.void], extra: list[int]) -> list[int]:
    out = set(extra)
    for pc in rows["pc"].tolist():
        for base in (pc, pc & ~(PAGE - 1), pc & ~(FINE - 1)):
            out.update((base - 1, base, base + 1))
        out.update((pc | (PAGE - 1), (pc | (PAGE - 1)) + 1, pc | (FINE - 1)))
    return sorted(a for a in out if 0 <= a < 1 << 64)


def check_against_brute(rows: npt.NDArray[np.void], addrs: list[int]) -> ChunkedTable:
    t = build_chunks(rows)
    check_structure(t)
    for a in addrs:
        want, got = brute(rows, a), lookup(t, a)
        if no_info(want):
            assert no_info(got), hex(a)
        elif got is None and (a >> abi.PAGE_SHIFT > U32_MAX or a >> abi.FINE_SHIFT > U32_MAX):
            assert t.unindexable_pages > 0, hex(a)  # no key for the page: no info, no aliasing
        elif got is None or got.item() != want.item():
            # Only a fine block past its row cap may answer NONE instead: with its last row.
            assert got is not None and int(got["cfa_type"]) == NONE, hex(a)
            fine = t.fine_pages[t.fine_pages["page"] == a >> abi.FINE_SHIFT]
            assert len(fine) == 1 and fine["count"][0] == abi.CHUNK_ROWS, hex(a)
            last = t.chunk_rows[int(fine["first_row"][0]) + abi.CHUNK_ROWS - 1]
            assert got.item() == last.item() and t.truncated_rows > 0, hex(a)
    return t


# -- random tables ---------------------------------------------------------------

rules = st.tuples(
    st.sampled_from([NONE, RSP, RSP, RSP, RBP, PLT, END]),
    st.integers(8, 4096),
    st.sampled_from([SAME, OFFSET, UNDEF]),
    st.integers(-512, 0),
)
# Per table, a typical distance between rows: 1-4 bytes makes pages (and
# often fine blocks) overflow their chunks; others make sparse pages and gaps.
spacings = st.sampled_from([2, 4, 4, 16, 300, 3 * PAGE])
long_gap = st.integers(1, 1 << 22)


bases = st.one_of(
    st.integers(0, 1 << 24),
    st.just((1 << 40) - 3 * PAGE),  # where fine page numbers stop fitting u32
    st.just((1 << 44) - 3 * PAGE),  # where page numbers stop fitting u32
    st.integers(0, (1 << 64) - (1 << 34)),
)


@st.composite
def tables(draw: st.DrawFn) -> npt.NDArray[np.void]:
    n = draw(st.one_of(st.integers(1, 40), st.integers(65, 300)))
    base = draw(bases)
    spacing = draw(spacings)
    steps = st.integers(1, spacing)
    if draw(st.booleans()):
        steps = st.one_of(steps, long_gap)
    gaps = draw(st.lists(steps, min_size=n - 1, max_size=n - 1))
    pcs = [base]
    for g in gaps:
        pcs.append(pcs[-1] + g)
    body = draw(st.lists(rules, min_size=n, max_size=n))
    out = [(pc, ct, co if ct in (RSP, RBP) else 0, rt, ro if rt == OFFSET else 0)
           for pc, (ct, co, rt, ro) in zip(pcs, body, strict=True)]  # fmt: skip
    out[-1] = (pcs[-1], NONE, 0, SAME, 0)
    return rows_array(out)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=tables(), extra=st.lists(st.integers(0, (1 << 64) - 1), max_size=20))
def test_lookup_matches_brute_force(rows: npt.NDArray[np.void], extra: list[int]) -> None:
    lo, hi = int(rows["pc"][0]), int(rows["pc"][-1])
    rng = np.random.default_rng(lo ^ hi)
    spread = rng.integers(lo, hi + 1, size=50, dtype=np.uint64).tolist() if hi > lo else []
    check_against_brute(rows, probes(rows, extra + spread))


def test_dense_pages_split_and_fine_blocks_truncate() -> None:
    rows = [(0x10000 + i, RSP, 8 + 8 * (i % 5), SAME, 0) for i in range(300)]  # 1 byte apart
    rows.append((0x10000 + 300, NONE, 0, SAME, 0))
    arr = rows_array(rows)
    t = check_against_brute(arr, probes(arr, []))
    assert t.pages["flags"][0] == abi.PAGE_SPLIT
    assert len(t.fine_pages) == 2  # 0x10000..0x100ff and 0x10100..0x1012c
    # The first fine block holds 256 rows: 63 kept, then NONE from the 64th on.
    assert t.truncated_rows == 256 - 63
    assert int(lookup(t, 0x10000 + 62)["cfa_offset"]) == 8 + 8 * (62 % 5)  # type: ignore[index]
    assert int(lookup(t, 0x10000 + 63)["cfa_type"]) == NONE  # type: ignore[index]
    assert int(lookup(t, 0x100FF)["cfa_type"]) == NONE  # type: ignore[index]
    assert lookup(t, 0x10100).item() == arr[0x100].item()  # type: ignore[union-attr]


def test_sparse_page_is_not_split() -> None:
    rows = rows_array([(0x2000 + 64 * i, RSP, 16 + i, SAME, 0) for i in range(63)]
                      + [(0x2FC0, NONE, 0, SAME, 0)])  # fmt: skip
    t = check_against_brute(rows, probes(rows, []))
    assert len(t.pages) == 1 and len(t.fine_pages) == 0
    assert int(t.pages["count"][0]) == 64  # exactly a full chunk: the 64 rows starting in it


def test_chunk_starts_with_the_row_in_effect() -> None:
    rows = rows_array([(0x1800, RSP, 8, SAME, 0), (0x3010, RBP, 16, OFFSET, -16),
                       (0x3020, NONE, 0, SAME, 0)])  # fmt: skip
    t = check_against_brute(rows, probes(rows, []))
    assert t.pages["page"].tolist() == [1, 2, 3]
    first = t.pages[2]
    chunk = t.chunk_rows[int(first["first_row"]) : int(first["first_row"]) + int(first["count"])]
    assert chunk["pc"].tolist() == [0x1800, 0x3010, 0x3020]


def test_pages_only_where_rows_have_information() -> None:
    rows = rows_array([(0x1000, RSP, 8, SAME, 0), (0x1100, NONE, 0, SAME, 0),
                       (0x80_0000, RSP, 8, SAME, 0), (0x80_0010, NONE, 0, SAME, 0)])  # fmt: skip
    t = check_against_brute(rows, probes(rows, [0x40_0000]))
    assert t.pages["page"].tolist() == [0x1, 0x800]  # nothing for the long gap
    assert lookup(t, 0x40_0000) is None


def test_page_without_a_row_in_effect_starts_with_none() -> None:
    rows = rows_array([(0x1010, RSP, 8, SAME, 0), (0x1020, NONE, 0, SAME, 0)])
    t = check_against_brute(rows, [0x1000, 0x100F, 0x1010, 0x101F, 0x1020])
    assert t.chunk_rows[0].item() == (0x1000, 0, 0, NONE, SAME)
    assert lookup(t, 0x1000).item() == (0x1000, 0, 0, NONE, SAME)  # type: ignore[union-attr]


def test_addresses_whose_page_does_not_fit_u32() -> None:
    top = 1 << 44
    rows = rows_array([(top - 16, RSP, 8, SAME, 0), (top + 16, NONE, 0, SAME, 0)])
    t = check_against_brute(rows, [top - 16, top - 1, top, top + 8])
    assert t.unindexable_pages == 1
    assert lookup(t, top) is None  # no aliasing onto page 0


def test_empty_and_invalid_input() -> None:
    t = build_chunks(np.zeros(0, dtype=ROW_DTYPE))
    assert len(t.chunk_rows) == len(t.pages) == len(t.fine_pages) == 0
    assert lookup(t, 0x1000) is None and table_bytes(t) == 0
    with pytest.raises(ValueError, match="increasing"):
        build_chunks(rows_array([(0x20, RSP, 8, SAME, 0), (0x10, NONE, 0, SAME, 0)]))
    with pytest.raises(ValueError, match="NONE"):
        build_chunks(rows_array([(0x10, RSP, 8, SAME, 0)]))
    with pytest.raises(ValueError, match="dtype"):
        build_chunks(np.zeros(3, dtype=np.uint64))  # type: ignore[arg-type]
    big = rows_array([(0, RSP, 8, SAME, 0), (1 << 40, NONE, 0, SAME, 0)])
    with pytest.raises(UnwindError, match="pages"):
        build_chunks(big)


def test_table_bytes() -> None:
    rows = rows_array([(0x1000 + i, RSP, 8 + i, SAME, 0) for i in range(100)]
                      + [(0x1064, NONE, 0, SAME, 0)])  # fmt: skip
    t = build_chunks(rows)
    entries = len(t.pages) + len(t.fine_pages)
    assert entries == 2  # the split page, one fine block
    assert table_bytes(t) == 16 * len(t.chunk_rows) + entries * (16 + HASH_ENTRY_OVERHEAD)


# -- LPM prefixes -----------------------------------------------------------------


def test_lpm_prefix_examples() -> None:
    assert lpm_prefixes(0, 1 << 64) == [(0, 0)]
    assert lpm_prefixes(1, 2) == [(1, 64)]
    assert lpm_prefixes(0x1000, 0x3000) == [(0x1000, 52), (0x2000, 52)]
    assert lpm_prefixes(0x5555_0000_1000, 0x5555_0000_4000) == [
        (0x5555_0000_1000, 52), (0x5555_0000_2000, 51),
    ]  # fmt: skip
    assert lpm_prefixes(7, 7) == []
    with pytest.raises(ValueError):
        lpm_prefixes(5, 4)


@settings(max_examples=300, deadline=None)
@given(a=st.integers(0, 1 << 64), b=st.integers(0, 1 << 64))
def test_lpm_prefixes_tile_the_range(a: int, b: int) -> None:
    start, end = min(a, b), max(a, b)
    blocks = lpm_prefixes(start, end)
    pos = start
    for block, bits in blocks:
        assert 0 <= bits <= 64
        size = 1 << (64 - bits)
        assert block == pos and block % size == 0
        # Maximal: the next larger aligned block would leave the range or misalign.
        assert bits == 0 or block % (size * 2) != 0 or block + size * 2 > end
        pos += size
    assert pos == end
    assert len(blocks) <= 128


# -- a real table -------------------------------------------------------------------


def test_index_bounds_on_a_large_real_shape() -> None:
    """100k rows shaped like a big binary's: every row start resolves to its row."""
    rng = np.random.default_rng(7)
    n = 100_000
    pcs = 0x40_0000 + np.cumsum(rng.integers(1, 120, n), dtype=np.uint64)
    rows = np.zeros(n, dtype=ROW_DTYPE)
    rows["pc"] = pcs
    rows["cfa_type"] = RSP
    rows["cfa_offset"] = 8 * rng.integers(1, 20, n)
    rows["cfa_type"][rng.random(n) < 0.05] = NONE
    rows["cfa_type"][-1] = NONE
    rows["cfa_offset"][rows["cfa_type"] == NONE] = 0
    t = build_chunks(rows)
    assert t.truncated_rows == 0 and len(t.chunk_rows) < U32_MAX
    for i in rng.integers(0, n, 2000).tolist():
        got = lookup(t, int(pcs[i]))
        want = rows[i]
        if want["cfa_type"] == NONE:
            assert no_info(got)
        else:
            assert got is not None and got.item() == want.item()
