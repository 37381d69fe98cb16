"""Stacks -> the call tree of a flamegraph, as d3-flame-graph reads it.

The tree is built level by level with numpy: at depth d every row's node
is the pair (its node at depth d-1, its function at d), numbered with one
`np.unique`, so the cost is one sort per level over the frames at that
depth, not a Python loop over frames.

JSON nodes carry `name`, `value` (samples including callees, what
d3-flame-graph sizes frames by) and `children`, plus `kind` (native,
kernel, python; `root` and `other` for the synthetic nodes) and `self`.
Children are ordered by name, so the same profile always gives the same
JSON. A tree larger than the node limit keeps its heaviest nodes and puts
what it drops under each parent into one `other` node, so the page stays
fast and the widths stay true.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from symbolizer.profile import FrameKind
from web import stacks as st
from web.stacks import FunctionIndex, Int64s, Stacks

ROOT = -1
"""Code of the root node."""
OTHER = -2
"""Code of a node that stands for dropped children."""

ROOT_NAME = "all"
DEFAULT_MAX_NODES = 20_000

Node = dict[str, Any]


@dataclass(frozen=True)
class Tree:
    """A call tree; node 0 is the root and every parent precedes its children."""

    functions: FunctionIndex
    parent: Int64s  # -1 for the root
    code: Int64s  # function code, or ROOT / OTHER
    total: Int64s  # (nodes, sides): samples in the node and below
    self_: Int64s  # (nodes, sides): samples in the node itself
    dropped: int = 0  # nodes folded into OTHER nodes

    def __len__(self) -> int:
        return len(self.parent)

    def name(self, node: int) -> str:
        code = int(self.code[node])
        if code == ROOT:
            return ROOT_NAME
        if code == OTHER:
            return "(other)"
        return self.functions.names[code]

    def kind(self, node: int) -> str:
        code = int(self.code[node])
        if code == ROOT:
            return "root"
        if code == OTHER:
            return "other"
        return self.functions.kinds[code].label


def build(stacks: Stacks) -> Tree:
    """The call tree of `stacks` (see the module docstring)."""
    sides = stacks.weights.shape[1] if stacks.weights.ndim == 2 else 1
    n_rows = len(stacks.lengths)
    weights = stacks.weights.reshape(n_rows, sides)
    ncodes = max(len(stacks.functions), 1)
    rows = stacks.rows
    depth = stacks.positions
    # Frames grouped by depth, each group in row order.
    by_depth = np.argsort(depth, kind="stable")
    per_depth = np.bincount(depth, minlength=1) if len(depth) else np.zeros(0, np.int64)
    bounds = np.concatenate(([0], np.cumsum(per_depth)))

    parents: list[Int64s] = [np.array([-1], dtype=np.int64)]
    codes: list[Int64s] = [np.array([ROOT], dtype=np.int64)]
    totals: list[Int64s] = [weights.sum(axis=0, dtype=np.int64).reshape(1, sides)]
    selfs: list[Int64s] = [
        weights[stacks.lengths == 0].sum(axis=0, dtype=np.int64).reshape(1, sides)
    ]
    node_of_row = np.zeros(n_rows, dtype=np.int64)
    next_id = 1
    for d in range(len(per_depth)):
        frames = by_depth[bounds[d] : bounds[d + 1]]
        r = rows[frames]
        keys = node_of_row[r] * ncodes + stacks.codes[frames]
        uniq, inv = np.unique(keys, return_inverse=True)
        inv = inv.reshape(-1)
        n = len(uniq)
        parents.append(uniq // ncodes)
        codes.append(uniq % ncodes)
        w = weights[r]
        ends = stacks.lengths[r] == d + 1
        total = np.empty((n, sides), dtype=np.int64)
        self_ = np.empty((n, sides), dtype=np.int64)
        for s in range(sides):
            total[:, s] = np.bincount(inv, weights=w[:, s], minlength=n)
            self_[:, s] = np.bincount(inv[ends], weights=w[ends, s], minlength=n)
        totals.append(total)
        selfs.append(self_)
        node_of_row[r] = next_id + inv
        next_id += n
    return Tree(
        stacks.functions,
        np.concatenate(parents),
        np.concatenate(codes),
        np.concatenate(totals),
        np.concatenate(selfs),
    )


def prune(tree: Tree, max_nodes: int, rank: npt.NDArray[np.float64] | None = None) -> Tree:
    """At most `max_nodes` nodes, "other" nodes included: the heaviest nodes by
    `rank` (default: samples over all sides) and their ancestors are kept;
    the children dropped under one parent become one OTHER node."""
    n = len(tree)
    if n <= max_nodes:
        return tree
    if rank is None:
        rank = tree.total.sum(axis=1).astype(np.float64)
    order = np.argsort(-rank, kind="stable")
    budget = max(max_nodes, 2)
    while True:
        keep = np.zeros(n, dtype=np.bool_)
        keep[order[: max(budget, 1)]] = True
        keep[0] = True
        _close_over_ancestors(tree.parent, keep)
        dropped_under_kept = ~keep & keep[np.maximum(tree.parent, 0)]
        dropped_under_kept[0] = False
        holders = np.unique(tree.parent[dropped_under_kept])
        size = int(keep.sum()) + len(holders)
        if size <= max_nodes or budget <= 1:
            break
        budget -= size - max_nodes

    kept = np.flatnonzero(keep)
    remap = np.full(n, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept), dtype=np.int64)
    sides = tree.total.shape[1]
    other_total = np.zeros((len(holders), sides), dtype=np.int64)
    slot = np.searchsorted(holders, tree.parent[dropped_under_kept])
    for s in range(sides):
        other_total[:, s] = np.bincount(
            slot, weights=tree.total[dropped_under_kept, s], minlength=len(holders)
        )
    parent = np.concatenate((np.where(kept == 0, -1, remap[tree.parent[kept]]), remap[holders]))
    return Tree(
        tree.functions,
        parent,
        np.concatenate((tree.code[kept], np.full(len(holders), OTHER, dtype=np.int64))),
        np.concatenate((tree.total[kept], other_total)),
        # An "other" node shows no children, so all of it is its own.
        np.concatenate((tree.self_[kept], other_total)),
        dropped=n - len(kept),
    )


def _close_over_ancestors(parent: Int64s, keep: npt.NDArray[np.bool_]) -> None:
    """Mark every ancestor of a kept node as kept (ties in rank can break the
    usual "a parent weighs at least as much as its child")."""
    while True:
        marked = np.flatnonzero(keep)
        parents = parent[marked]
        parents = parents[parents >= 0]
        missing = parents[~keep[parents]]
        if not len(missing):
            return
        keep[missing] = True


def nest(tree: Tree, fields: dict[str, list[Any]]) -> Node:
    """The nested JSON of `tree`: name, kind, children, plus one key per entry
    of `fields` (a value per node). Children are ordered by name."""
    names = [tree.name(i) for i in range(len(tree))]
    nodes: list[Node] = []
    columns = list(fields.items())
    for i, name in enumerate(names):
        node: Node = {"name": name, "kind": tree.kind(i)}
        for key, values in columns:
            node[key] = values[i]
        nodes.append(node)
    parent = tree.parent.tolist()
    for i in sorted(range(1, len(names)), key=names.__getitem__):
        siblings = nodes[parent[i]].setdefault("children", [])
        siblings.append(nodes[i])
    return nodes[0]


def to_json(tree: Tree, side: int = 0) -> Node:
    """JSON for d3-flame-graph: value and self are samples of one side."""
    return nest(
        tree,
        {"value": tree.total[:, side].tolist(), "self": tree.self_[:, side].tolist()},
    )


@dataclass(frozen=True)
class FlameOptions:
    kinds: frozenset[FrameKind] = st.ALL_KINDS
    collapse_recursion: bool = False
    max_nodes: int = DEFAULT_MAX_NODES


DEFAULT_OPTIONS = FlameOptions()


def prepare(stacks: Stacks, options: FlameOptions) -> Stacks:
    """The frame-kind filter and recursion collapse every view applies."""
    out = st.keep_kinds(stacks, options.kinds)
    if options.collapse_recursion:
        out = st.collapse_recursion(out)
    return out


def flamegraph(stacks: Stacks, options: FlameOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """The /api/flame payload for one side of `stacks`."""
    full = build(prepare(stacks, options))
    tree = prune(full, options.max_nodes)
    return {
        "tree": to_json(tree),
        "total": int(tree.total[0, 0]) if len(tree.total) and tree.total.shape[1] else 0,
        "nodes": len(tree),
        "truncated": tree.dropped > 0,
        "dropped_nodes": tree.dropped,
    }
