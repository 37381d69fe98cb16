"""The top-functions table: self and total samples per function (pandas).

Computed from the same prepared stacks as the flamegraph (frame kinds
filtered, recursion collapsed), so a row agrees with the frames on screen.
`total` counts a sample once per function even when the function appears
several times in its stack (recursion); percentages are of all samples in
the view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from web.stacks import Stacks

SortKey = Literal["self", "total", "name"]
SORT_KEYS: tuple[SortKey, ...] = ("self", "total", "name")


@dataclass(frozen=True)
class TableQuery:
    sort: SortKey = "self"
    descending: bool = True
    limit: int = 100
    offset: int = 0
    search: str = ""  # case-insensitive substring of the name


def functions_frame(stacks: Stacks, side: int = 0) -> pd.DataFrame:
    """One row per function with samples on `side`: name, kind, self, total."""
    weight = stacks.weights[:, side] if stacks.weights.size else np.zeros(0, np.int64)
    frames = pd.DataFrame(
        {
            "row": stacks.rows,
            "code": stacks.codes,
            "n": np.repeat(weight, stacks.lengths),
        }
    )
    frames = frames[frames["n"] > 0]
    leaf_at = stacks.starts + stacks.lengths - 1
    has_leaf = (stacks.lengths > 0) & (weight > 0)
    leaves = pd.DataFrame({"code": stacks.codes[leaf_at[has_leaf]], "n": weight[has_leaf]})
    self_ = leaves.groupby("code")["n"].sum()
    total = frames.drop_duplicates(["row", "code"]).groupby("code")["n"].sum()
    codes = total.index.to_numpy(dtype=np.int64)
    names = stacks.functions.names
    kinds = stacks.functions.kinds
    return pd.DataFrame(
        {
            "name": [names[c] for c in codes],
            "kind": [kinds[c].label for c in codes],
            "self": self_.reindex(codes, fill_value=0).to_numpy(dtype=np.int64),
            "total": total.to_numpy(dtype=np.int64),
        }
    )


def top_functions(stacks: Stacks, query: TableQuery = TableQuery()) -> dict[str, Any]:
    """The /api/top payload: rows sorted and sliced as `query` asks."""
    all_samples = int(stacks.weights[:, 0].sum()) if stacks.weights.size else 0
    df = functions_frame(stacks)
    if query.search:
        df = df[df["name"].str.contains(query.search, case=False, regex=False)]
    # Ties always break by name then kind, so pages are stable.
    if query.sort == "name":
        df = df.sort_values(["name", "kind"], ascending=[not query.descending] * 2, kind="stable")
    else:
        df = df.sort_values(
            [query.sort, "name", "kind"],
            ascending=[not query.descending, True, True],
            kind="stable",
        )
    matched = len(df)
    page = df.iloc[query.offset : query.offset + query.limit]
    scale = 100.0 / all_samples if all_samples else 0.0
    rows = [
        {
            "name": name,
            "kind": kind,
            "self": int(s),
            "self_pct": round(s * scale, 3),
            "total": int(t),
            "total_pct": round(t * scale, 3),
        }
        for name, kind, s, t in zip(
            page["name"], page["kind"], page["self"], page["total"], strict=True
        )
    ]
    return {"rows": rows, "functions": matched, "total": all_samples}
