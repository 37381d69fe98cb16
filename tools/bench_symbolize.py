"""Batch symbol lookup throughput: `SymbolTable.lookup` vs a per-address loop.

`bench()` builds a table shaped like a large binary's (~50k functions, mostly
sized, some unsized, gaps between them), looks up ~2M random addresses over
its span in one batch, and compares with the obvious Python code (bisect per
address) timed on a smaller sample and extrapolated. Both must agree on that
sample. `make bench` (tools/bench.py) reports the numbers.

    python tools/bench_symbolize.py [--symbols N] [--addresses N]
"""

from __future__ import annotations

import argparse
import bisect
import json
import time
from typing import TypedDict

import numpy as np

from symbolizer.symtab import SymbolTable


class BenchResult(TypedDict):
    symbols: int
    addresses: int
    build_s: float
    batch_per_s: float
    naive_per_s: float
    searchsorted_per_s: float
    speedup: float
    hit_rate: float
    how: str


def _naive(starts: list[int], ends: list[int], addrs: list[int]) -> list[int]:
    out = []
    for a in addrs:
        i = bisect.bisect_right(starts, a) - 1
        out.append(i if i >= 0 and a < ends[i] else -1)
    return out


def bench(
    symbols: int = 50_000,
    addresses: int = 2_000_000,
    naive_addresses: int = 100_000,
    repeat: int = 3,
    seed: int = 1,
) -> BenchResult:
    """Measure; returns addresses/s for both ways (best of `repeat`)."""
    rng = np.random.default_rng(seed)
    gaps = rng.integers(16, 600, symbols).astype(np.uint64)  # typical function sizes
    starts = np.uint64(0x55D0_0000_1000) + np.cumsum(gaps, dtype=np.uint64)
    sizes = (gaps * rng.uniform(0.5, 1.0, symbols)).astype(np.uint64)
    sizes[rng.random(symbols) < 0.05] = 0  # some assembly symbols have no size
    names = [f"function_{i}" for i in range(symbols)]

    t0 = time.perf_counter()
    table = SymbolTable.build(starts, sizes, names)
    build_s = time.perf_counter() - t0

    lo, hi = int(starts[0]), int(starts[-1]) + 1000
    margin = (hi - lo) // 40  # a few addresses fall outside the table
    addrs = rng.integers(lo - margin, hi + margin, addresses, dtype=np.uint64)

    batch_s = float("inf")
    rows = table.lookup(addrs)
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = table.lookup(addrs)
        batch_s = min(batch_s, time.perf_counter() - t0)

    sample = addrs[:naive_addresses]
    starts_l, ends_l, sample_l = table.starts.tolist(), table.ends.tolist(), sample.tolist()
    naive_s = float("inf")
    want: list[int] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        want = _naive(starts_l, ends_l, sample_l)
        naive_s = min(naive_s, time.perf_counter() - t0)
    if rows[: len(sample)].tolist() != want:
        raise AssertionError("batch lookup disagrees with the per-address reference")

    searchsorted_s = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.searchsorted(table.starts, addrs, side="right")
        searchsorted_s = min(searchsorted_s, time.perf_counter() - t0)

    return {
        "symbols": len(table),
        "addresses": addresses,
        "build_s": build_s,
        "batch_per_s": addresses / batch_s,
        "naive_per_s": len(sample) / naive_s,
        "searchsorted_per_s": addresses / searchsorted_s,
        "speedup": (addresses / batch_s) / (len(sample) / naive_s),
        "hit_rate": float((rows >= 0).mean()),
        "how": (
            f"SymbolTable.lookup (bucket index + numpy) over a {len(table) // 1000}k-symbol "
            f"table, {addresses / 1e6:.0f}M random addresses; naive = bisect per address "
            f"on {len(sample) // 1000}k of them"
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--symbols", type=int, default=50_000)
    ap.add_argument("--addresses", type=int, default=2_000_000)
    args = ap.parse_args()
    r = bench(symbols=args.symbols, addresses=args.addresses)
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
