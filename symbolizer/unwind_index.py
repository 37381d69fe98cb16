"""Unwind rows -> what the BPF maps hold: chunk rows, a page index, a fine index.

The BPF unwinder finds the row for an ELF virtual address `vaddr` of file F by

    1. val = pages[{F, vaddr >> PAGE_SHIFT}]              (hash map; missing: no info)
    2. if val.flags & PAGE_SPLIT:
           val = pages[{F | FINE_FILE_BIT, vaddr >> FINE_SHIFT}]
    3. binary search, at most CHUNK_STEPS steps, of rows[base_F + val.first_row ..
       + val.count) for the last row with pc <= vaddr

`lookup` is that procedure in Python, the reference the BPF program and the
tests are held to. A chunk for page P holds the row in effect at P's first
byte (a NONE row at the page start when none is) and then every row starting
inside P, so step 3 always finds a row. Pages with more rows than a chunk
holds are split into FINE_SHIFT blocks indexed the same way; a fine block
that is still too dense keeps its first CHUNK_ROWS - 1 rows and ends with a
NONE row, so the addresses past the cap read as "no info", never as a wrong
rule (`ChunkedTable.truncated_rows` counts the rows lost that way).

Only pages that some non-NONE row's range touches get an entry: a missing
page already means "no info".

Everything is vectorized with numpy; nothing loops per row or per page.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from profiler.bpf import abi
from symbolizer.unwind import ROW_DTYPE, UnwindError

PAGE_DTYPE = np.dtype([("page", "<u4"), ("first_row", "<u4"), ("count", "<u2"), ("flags", "<u2")])
"""One index entry: the page key (without the file id) and `struct kiln_page_val`."""

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1

ROW_BYTES = 16
"""`struct kiln_unwind_row`, one array-map slot each."""
HASH_ENTRY_OVERHEAD = 64
"""Bytes a BPF hash-map entry costs beyond its 8-byte key and 8-byte value: the
kernel's `struct htab_elem` header (~48 bytes on x86-64: list node, hash,
free-list/LRU link) plus a 16-byte bucket (head + spinlock) per entry at the
load factor of 1 that max_entries = number of entries gives."""

DEFAULT_MAX_PAGES = 1 << 22
"""Page entries one file may need (4M pages = 16 GiB of code) before it is refused."""


@dataclass(frozen=True, slots=True)
class ChunkedTable:
    chunk_rows: npt.NDArray[np.void]
    """`ROW_DTYPE` rows of every chunk; first_row indexes into it (the file's block)."""
    pages: npt.NDArray[np.void]
    """`PAGE_DTYPE`, sorted by page; page = vaddr >> PAGE_SHIFT."""
    fine_pages: npt.NDArray[np.void]
    """`PAGE_DTYPE`, sorted by page; page = vaddr >> FINE_SHIFT, for PAGE_SPLIT pages."""
    truncated_rows: int = 0
    """Rows unreachable because a fine block held more than CHUNK_ROWS (they read as NONE)."""
    unindexable_pages: int = 0
    """Pages whose number does not fit the u32 key (vaddr >= 2^44, or 2^40 for fine pages)."""

    @classmethod
    def empty(cls) -> ChunkedTable:
        return cls(
            np.zeros(0, dtype=ROW_DTYPE), np.zeros(0, dtype=PAGE_DTYPE), np.zeros(0, PAGE_DTYPE)
        )


def build_chunks(rows: npt.NDArray[np.void], *, max_pages: int = DEFAULT_MAX_PAGES) -> ChunkedTable:
    """Cut sorted rows (as `parse_unwind_rows` returns them) into chunks and index them.

    `rows` must have strictly increasing pc and end with a NONE row (the end
    of the last range); ValueError otherwise. UnwindError if the table would
    need more than `max_pages` page entries.
    """
    if rows.dtype != ROW_DTYPE:
        raise ValueError(f"rows have dtype {rows.dtype}, not the UnwindRow dtype")
    n = len(rows)
    if n == 0:
        return ChunkedTable.empty()
    pc = np.ascontiguousarray(rows["pc"])
    if n > 1 and not bool(np.all(pc[1:] > pc[:-1])):
        raise ValueError("row pcs are not strictly increasing")
    if rows["cfa_type"][-1] != abi.CfaType.NONE:
        raise ValueError("the last row must be NONE (it ends the last range)")
    live = rows["cfa_type"] != abi.CfaType.NONE

    # Pages some live row's range [pc[i], pc[i+1]) touches.
    idx = np.flatnonzero(live[:-1])
    first = pc[idx] >> np.uint64(abi.PAGE_SHIFT)
    last = (pc[idx + 1] - np.uint64(1)) >> np.uint64(abi.PAGE_SHIFT)
    spans = (last - first).astype(np.int64) + 1
    if int(spans.sum()) > max_pages:
        raise UnwindError(f"unwind table needs more than {max_pages} pages")
    pages = np.unique(_expand(first, spans))
    unindexable = int(np.count_nonzero(pages > U32_MAX))
    pages = pages[pages <= U32_MAX]

    a, b, e = _chunk_bounds(pc, pages, abi.PAGE_SHIFT)
    count = 1 + (e - b)
    split = count > abi.CHUNK_ROWS

    # Fine blocks of split pages that some live row touches: the row in
    # effect at the block start is live, or a live row starts inside it.
    sub = np.arange(1 << (abi.PAGE_SHIFT - abi.FINE_SHIFT), dtype=np.uint64)
    shift = np.uint64(abi.PAGE_SHIFT - abi.FINE_SHIFT)
    fine = ((pages[split] << shift)[:, None] + sub[None, :]).ravel()
    fa, fb, fe = _chunk_bounds(pc, fine, abi.FINE_SHIFT)
    live_before = np.concatenate([[0], np.cumsum(live, dtype=np.int64)])
    touched = ((fa >= 0) & live[np.maximum(fa, 0)]) | (live_before[fe] > live_before[fb])
    unindexable += int(np.count_nonzero(touched & (fine > U32_MAX)))
    touched &= fine <= U32_MAX
    fine, fa, fb, fe = fine[touched], fa[touched], fb[touched], fe[touched]
    fcount = 1 + (fe - fb)
    over = fcount > abi.CHUNK_ROWS
    truncated = int((fcount[over] - (abi.CHUNK_ROWS - 1)).sum())
    fcount = np.minimum(fcount, abi.CHUNK_ROWS)

    keep = ~split
    chunk_rows = np.concatenate(
        [
            _gather(rows, a[keep], count[keep], pages[keep] << np.uint64(abi.PAGE_SHIFT)),
            _gather(rows, fa, fcount, fine << np.uint64(abi.FINE_SHIFT), over),
        ]
    )
    if len(chunk_rows) > U32_MAX:
        raise UnwindError("unwind table has more chunk rows than a u32 index reaches")

    coarse = np.zeros(len(pages), dtype=PAGE_DTYPE)
    coarse["page"] = pages
    coarse["count"] = np.where(split, 0, count)
    coarse["flags"] = np.where(split, abi.PAGE_SPLIT, 0)
    coarse["first_row"][keep] = _starts(count[keep], 0)
    fine_idx = np.zeros(len(fine), dtype=PAGE_DTYPE)
    fine_idx["page"] = fine
    fine_idx["count"] = fcount
    fine_idx["first_row"] = _starts(fcount, int(count[keep].sum()))
    return ChunkedTable(chunk_rows, coarse, fine_idx, truncated, unindexable)


def lookup(table: ChunkedTable, vaddr: int) -> np.void | None:
    """The row the BPF program uses for `vaddr`, or None (no entry: no info)."""
    if not 0 <= vaddr <= U64_MAX:
        return None
    val = _find(table.pages, vaddr >> abi.PAGE_SHIFT)
    if val is not None and int(val["flags"]) & abi.PAGE_SPLIT:
        val = _find(table.fine_pages, vaddr >> abi.FINE_SHIFT)
    if val is None:
        return None
    first, count = int(val["first_row"]), int(val["count"])
    if not 0 < count <= abi.CHUNK_ROWS or first + count > len(table.chunk_rows):
        return None
    pcs = table.chunk_rows["pc"]
    lo, hi = 0, count  # pcs[first + lo] <= vaddr < pcs[first + hi] (hi == count: past the end)
    for _ in range(abi.CHUNK_STEPS):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        if int(pcs[first + mid]) <= vaddr:
            lo = mid
        else:
            hi = mid
    row: np.void = table.chunk_rows[first + lo]
    if int(row["pc"]) > vaddr:
        return None
    return row


def lpm_prefixes(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) as maximal aligned power-of-two blocks: (block_start, prefix bits of 64)."""
    if not 0 <= start <= end <= 1 << 64:
        raise ValueError(f"bad range [{start:#x}, {end:#x})")
    out = []
    while start < end:
        size = start & -start if start else 1 << 64
        while size > end - start:
            size >>= 1
        out.append((start, 65 - size.bit_length()))
        start += size
    return out


def table_bytes(table: ChunkedTable) -> int:
    """Bytes the table costs in BPF maps (see ROW_BYTES, HASH_ENTRY_OVERHEAD)."""
    entries = len(table.pages) + len(table.fine_pages)
    return ROW_BYTES * len(table.chunk_rows) + entries * (8 + 8 + HASH_ENTRY_OVERHEAD)


# -- implementation ----------------------------------------------------------


def _expand(first: npt.NDArray[np.uint64], spans: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """Concatenated ranges first[i] .. first[i] + spans[i] - 1."""
    total = int(spans.sum())
    offset = np.arange(total, dtype=np.int64) - np.repeat(_starts(spans, 0), spans)
    return np.repeat(first, spans) + offset.astype(np.uint64)


def _starts(lengths: npt.NDArray[np.int64], base: int) -> npt.NDArray[np.int64]:
    """Where each of consecutive blocks of `lengths` starts."""
    return base + np.cumsum(lengths) - lengths


def _chunk_bounds(
    pc: npt.NDArray[np.uint64], blocks: npt.NDArray[np.uint64], shift: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per block: a = row in effect at its start (-1: none), rows a+1 .. e-1 start inside it.

    Returns (a, b, e) with b = a + 1.
    """
    start = blocks << np.uint64(shift)
    a = np.searchsorted(pc, start, side="right").astype(np.int64) - 1
    # A block at the top of the address space ends at 2^64: every row is below it.
    nxt = start + np.uint64(1 << shift)
    e = np.where(nxt == 0, len(pc), np.searchsorted(pc, nxt, side="left")).astype(np.int64)
    return a, a + 1, e


def _gather(
    rows: npt.NDArray[np.void],
    a: npt.NDArray[np.int64],
    count: npt.NDArray[np.int64],
    block_start: npt.NDArray[np.uint64],
    capped: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.void]:
    """The chunks: row a (or a NONE row at the block start) then count - 1 rows after it.

    A `capped` chunk's last row becomes NONE: the rows it stands for are not in the chunk.
    """
    total = int(count.sum())
    starts = _starts(count, 0)
    j = np.arange(total, dtype=np.int64) - np.repeat(starts, count)
    src = np.repeat(a, count) + j  # a + j: row a, then a+1, a+2, ...
    out: npt.NDArray[np.void] = rows[np.maximum(src, 0)]
    missing = src < 0  # only j == 0 with a == -1
    out["pc"][missing] = np.repeat(block_start, count)[missing]
    none = missing
    if capped is not None and capped.any():
        tail = np.zeros(total, dtype=np.bool_)
        tail[(starts + count - 1)[capped]] = True
        none = none | tail
    out["cfa_type"][none] = abi.CfaType.NONE
    out["cfa_offset"][none] = 0
    out["rbp_type"][none] = abi.RbpType.SAME
    out["rbp_offset"][none] = 0
    return out


def _find(index: npt.NDArray[np.void], page: int) -> np.void | None:
    if page > U32_MAX or len(index) == 0:
        return None
    keys = index["page"]
    i = int(np.searchsorted(keys, page))
    if i < len(keys) and int(keys[i]) == page:
        found: np.void = index[i]
        return found
    return None
