"""The sandwich view of one function: who calls it and what it calls.

Both halves are trees rooted at the function, built from the stacks that
contain it, cut at its outermost occurrence (so a recursive function is
counted once per sample and its recursion shows among its callees):

* callers: from the function towards the root, so the root's children are
  its direct callers (drawn as a flamegraph standing on the function);
* callees: from the function towards the leaf, an ordinary flamegraph of
  everything below it (drawn as an icicle hanging from it).

Both roots weigh the function's total samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from symbolizer.profile import FrameKind
from web import flame
from web.stacks import Stacks, reverse_rows


def sandwich(
    stacks: Stacks,
    name: str,
    kind: FrameKind | None = None,
    max_nodes: int = flame.DEFAULT_MAX_NODES,
) -> dict[str, Any]:
    """The /api/sandwich payload; `found` is false when no sample has the function."""
    targets = stacks.functions.find(name, kind)
    all_samples = int(stacks.weights[:, 0].sum()) if stacks.weights.size else 0
    hit = np.isin(stacks.codes, np.array(targets, dtype=np.int64))
    rows = stacks.rows
    positions = stacks.positions
    hit_rows, first = np.unique(rows[hit], return_index=True)
    first_pos = np.full(len(stacks.lengths), -1, dtype=np.int64)
    first_pos[hit_rows] = positions[np.flatnonzero(hit)[first]]

    in_row = first_pos[rows] >= 0
    callees = _rows_only(stacks.select(in_row & (positions >= first_pos[rows])), hit_rows)
    callers = _rows_only(stacks.select(in_row & (positions <= first_pos[rows])), hit_rows)
    callers = reverse_rows(callers)

    callee_tree = flame.prune(flame.build(callees), max_nodes)
    caller_tree = flame.prune(flame.build(callers), max_nodes)
    total = int(callees.weights[:, 0].sum()) if callees.weights.size else 0
    self_ = _self_samples(stacks, targets)
    return {
        "function": name,
        "kind": kind.label if kind is not None else None,
        "found": bool(len(hit_rows)),
        "total": total,
        "self": self_,
        "all_samples": all_samples,
        "callers": _function_root(flame.to_json(caller_tree)),
        "callees": _function_root(flame.to_json(callee_tree)),
    }


def _function_root(tree: flame.Node) -> flame.Node:
    """The function's own node as the root: the synthetic root above it holds
    the same samples. (A name found in frames of two kinds keeps the
    synthetic root, with both below it.)"""
    children = tree.get("children", [])
    return children[0] if len(children) == 1 else tree


def _rows_only(stacks: Stacks, rows: np.ndarray[Any, np.dtype[np.int64]]) -> Stacks:
    """Only the rows listed (those that contain the function)."""
    keep_row = np.zeros(len(stacks.lengths), dtype=np.bool_)
    keep_row[rows] = True
    frame_keep = keep_row[stacks.rows]
    return Stacks(
        stacks.functions,
        stacks.codes[frame_keep],
        stacks.lengths[keep_row],
        stacks.weights[keep_row],
    )


def _self_samples(stacks: Stacks, targets: list[int]) -> int:
    """Samples whose leaf frame is the function."""
    has_leaf = stacks.lengths > 0
    if not stacks.weights.size or not has_leaf.any():
        return 0
    leaves = stacks.codes[(stacks.starts + stacks.lengths - 1)[has_leaf]]
    is_target = np.isin(leaves, np.array(targets, dtype=np.int64))
    return int(stacks.weights[has_leaf][is_target, 0].sum())
