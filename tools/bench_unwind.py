"""Unwind-table build cost: .eh_frame -> rows -> BPF chunks, for libc and python3.11.

`bench()` times `parse_unwind_rows` and `build_chunks` separately (best of
`repeat`) for each binary and reports the table's size in the BPF maps.
`make bench` (tools/bench.py) reports the numbers; `--pyelftools` also times
pyelftools' CFI decoding of the same file, the alternative the parser replaced.

    python tools/bench_unwind.py [--repeat N] [--pyelftools] [PATH...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from symbolizer.unwind import parse_unwind_rows  # noqa: E402
from symbolizer.unwind_index import build_chunks, table_bytes  # noqa: E402

DEFAULT_BINARIES = ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3.11")


class FileResult(TypedDict, total=False):
    path: str
    file_bytes: int
    parse_s: float
    chunks_s: float
    total_s: float
    fdes: int
    rows: int
    unsupported_rows: int
    chunk_rows: int
    pages: int
    fine_pages: int
    truncated_rows: int
    table_bytes: int
    bytes_per_row: float
    pyelftools_s: float


class BenchResult(TypedDict):
    files: list[FileResult]
    how: str


def _best(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _pyelftools_s(path: str) -> float:
    """Time pyelftools takes to decode every FDE's table (what the parser replaced)."""
    from elftools.elf.elffile import ELFFile

    t0 = time.perf_counter()
    with open(path, "rb") as f:
        for entry in ELFFile(f).get_dwarf_info().EH_CFI_entries():
            decode = getattr(entry, "get_decoded", None)  # the ZERO terminator has none
            with contextlib.suppress(Exception):  # it stops at opcodes it does not know
                if decode is not None:
                    decode()
    return time.perf_counter() - t0


def bench_file(path: str, repeat: int = 3, pyelftools: bool = False) -> FileResult:
    data = Path(path).read_bytes()
    table = parse_unwind_rows(data)
    chunks = build_chunks(table.rows)
    parse_s = _best(repeat, lambda: parse_unwind_rows(data))
    chunks_s = _best(repeat, lambda: build_chunks(table.rows))
    size = table_bytes(chunks)
    out: FileResult = {
        "path": path,
        "file_bytes": len(data),
        "parse_s": parse_s,
        "chunks_s": chunks_s,
        "total_s": parse_s + chunks_s,
        "fdes": table.stats.fdes,
        "rows": len(table.rows),
        "unsupported_rows": table.stats.unsupported,
        "chunk_rows": len(chunks.chunk_rows),
        "pages": len(chunks.pages),
        "fine_pages": len(chunks.fine_pages),
        "truncated_rows": chunks.truncated_rows,
        "table_bytes": size,
        "bytes_per_row": size / max(1, len(table.rows)),
    }
    if pyelftools:
        out["pyelftools_s"] = _pyelftools_s(path)
    return out


def bench(
    paths: tuple[str, ...] = DEFAULT_BINARIES, repeat: int = 3, pyelftools: bool = False
) -> BenchResult:
    """Measure each binary that exists (a missing one is skipped, not an error)."""
    files = [bench_file(p, repeat, pyelftools) for p in paths if os.path.exists(p)]
    return {
        "files": files,
        "how": (
            f"parse_unwind_rows (own CFI interpreter) then build_chunks, best of {repeat}, "
            "each from the file's bytes in memory; table_bytes = 16 B per chunk row + "
            "80 B per page entry (8 key + 8 value + 64 hash-map overhead)"
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("paths", nargs="*", default=list(DEFAULT_BINARIES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pyelftools", action="store_true", help="also time pyelftools' decoding")
    args = ap.parse_args()
    print(json.dumps(bench(tuple(args.paths), args.repeat, args.pyelftools), indent=2))


if __name__ == "__main__":
    main()
