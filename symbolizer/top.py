"""`kiln top`: the functions that use the most CPU, like `pprof -top`.

For every function (by display name, so kind suffixes as in
`symbolizer.folded` keep kernel, Python and native apart):

* flat: samples whose leaf frame is the function (self time);
* cum: samples with the function anywhere on the stack, counted once per
  stack however often recursion repeats it;
* flat%, cum%: of all samples in the profile (samples with an empty stack
  count in the total but belong to no function);
* sum%: running total of flat% down the sorted table.

Rows are sorted by flat, then cum (both descending), then name. The stacks
are exploded into one (stack, function) table once and aggregated with
pandas, so the cost is linear in the total depth of the distinct stacks.

`load` reads what `kiln top` is pointed at: pprof (gzipped or raw, from
Kiln or any other tool) or collapsed stacks.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable
from itertools import chain

import numpy as np
import pandas as pd

from symbolizer import folded, pprof
from symbolizer.profile import FrameKind, Profile

COLUMNS = ["flat", "flat%", "sum%", "cum", "cum%", "name", "kind"]
_MIN_WIDTHS = (10, 6, 6, 10, 6)
_FOLDED_LINE = re.compile(rb"[^\n]*\S[ \t]+[0-9]+\s*")


def top_table(
    profile: Profile,
    limit: int | None = None,
    *,
    kinds: Iterable[FrameKind] | None = None,
) -> pd.DataFrame:
    """Per-function flat and cumulative samples, most expensive first.

    `limit` keeps the first rows; `kinds` keeps only functions of those
    frame kinds (percentages stay relative to the whole profile). The
    profile's total sample count is in `df.attrs["total"]`, the number of
    rows before `limit` in `df.attrs["functions"]`.
    """
    total = profile.total_samples
    names: list[str] = []
    name_kind: list[FrameKind] = []
    code_of: dict[str, int] = {}
    loc_code = np.full(len(profile.locations), -1, dtype=np.int64)
    for lid, loc in enumerate(profile.locations):
        if loc is None:
            continue
        fn = profile.functions[loc.function_id]
        name = folded.display_name(fn.name if fn else "", loc.kind)
        code = code_of.get(name)
        if code is None:
            code = code_of[name] = len(names)
            names.append(name)
            name_kind.append(loc.kind)
        loc_code[lid] = code

    # Samples per stack (label sets merged), then one row per frame.
    per_stack = pd.Series(
        list(profile.counts.values()),
        index=[sid for sid, _ in profile.counts],
        dtype=np.int64,
    )
    per_stack = per_stack.groupby(level=0).sum()
    per_stack = per_stack[per_stack > 0]
    sids = per_stack.index.to_numpy(dtype=np.int64)
    depth = np.fromiter((len(profile.stacks[s]) for s in sids), dtype=np.int64, count=len(sids))
    frames = pd.DataFrame(
        {
            "stack": np.repeat(sids, depth),
            "code": loc_code[
                np.fromiter(
                    chain.from_iterable(profile.stacks[s] for s in sids),
                    dtype=np.int64,
                    count=int(depth.sum()),
                )
            ],
            "n": np.repeat(per_stack.to_numpy(), depth),
        }
    )
    starts = np.cumsum(depth) - depth
    leaves = frames.iloc[starts[depth > 0]]
    flat = leaves.groupby("code")["n"].sum()
    cum = frames.drop_duplicates(["stack", "code"]).groupby("code")["n"].sum()

    df = pd.DataFrame(
        {
            "name": names,
            "kind": [k.label for k in name_kind],
            "flat": flat.reindex(range(len(names)), fill_value=0).to_numpy(dtype=np.int64),
            "cum": cum.reindex(range(len(names)), fill_value=0).to_numpy(dtype=np.int64),
        }
    )
    df = df[df["cum"] > 0]
    if kinds is not None:
        df = df[df["kind"].isin({k.label for k in kinds})]
    df = df.sort_values(["flat", "cum", "name"], ascending=[False, False, True], kind="stable")
    scale = 100.0 / total if total else 0.0
    df["flat%"] = df["flat"] * scale
    df["sum%"] = df["flat%"].cumsum()
    df["cum%"] = df["cum"] * scale
    df = df[COLUMNS].reset_index(drop=True)
    functions = len(df)
    if limit is not None:
        df = df.head(limit)
    df.attrs["total"] = total
    df.attrs["functions"] = functions
    return df


def format_table(df: pd.DataFrame) -> str:
    """A fixed-width text table of `top_table` output, like `pprof -top`."""
    lines = []
    total = df.attrs.get("total")
    if total is not None:
        shown = int(df["flat"].sum())
        share = 100.0 * shown / total if total else 0.0
        of = df.attrs.get("functions", len(df))
        lines.append(
            f"Showing top {len(df)} of {of} functions, accounting for {shown} samples "
            f"({share:.2f}% of {total} total)"
        )
    rows = [
        (str(flat), f"{flat_pct:.2f}%", f"{sum_pct:.2f}%", str(cum), f"{cum_pct:.2f}%", name)
        for flat, flat_pct, sum_pct, cum, cum_pct, name in zip(
            df["flat"], df["flat%"], df["sum%"], df["cum"], df["cum%"], df["name"], strict=True
        )
    ]
    header = ("flat", "flat%", "sum%", "cum", "cum%", "")
    widths = [max([w, *(len(r[i]) for r in rows)]) for i, w in enumerate(_MIN_WIDTHS)]
    for cells in [header, *rows]:
        numbers = " ".join(c.rjust(w) for c, w in zip(cells, widths, strict=False))
        lines.append(f"{numbers}  {cells[5]}".rstrip())
    return "\n".join(lines) + "\n"


def load(data: bytes) -> Profile:
    """A Profile from pprof (gzipped or raw) or collapsed-stack bytes."""
    raw = data
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            return pprof.decode(data)  # reports the broken gzip stream
    first = next((line for line in raw.splitlines() if line.strip()), b"")
    if _FOLDED_LINE.fullmatch(first) and _is_text(raw):
        return folded.parse(raw)
    return pprof.decode(raw)


def read(path: str | os.PathLike[str]) -> Profile:
    with open(path, "rb") as f:
        return load(f.read())


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in data
