"""The diff view: a baseline and a comparison profile merged into one tree.

The two sides rarely hold the same number of samples (different range
lengths, different processes), so every node's samples are normalized by
its side's total: `base_share` and `comp_share` are fractions of all
samples of that side, and `delta` = comp_share - base_share is what the
page colors by (red where the comparison spends a larger share, blue
where smaller). A frame's width (`value`) is the mean of its two shares,
so code that exists on one side only is still visible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from symbolizer.profile import Profile
from web import flame
from web import stacks as st


def diff(
    baseline: Profile, comparison: Profile, options: flame.FlameOptions = flame.DEFAULT_OPTIONS
) -> dict[str, Any]:
    """The /api/diff payload."""
    stacks = flame.prepare(st.from_profiles([baseline, comparison]), options)
    full = flame.build(stacks)
    base_total, comp_total = (int(x) for x in full.total[0])
    base_scale = 1.0 / base_total if base_total else 0.0
    comp_scale = 1.0 / comp_total if comp_total else 0.0
    rank = full.total[:, 0] * base_scale + full.total[:, 1] * comp_scale
    tree = flame.prune(full, options.max_nodes, rank)

    base_share = tree.total[:, 0] * base_scale
    comp_share = tree.total[:, 1] * comp_scale
    delta = comp_share - base_share
    base_self = tree.self_[:, 0] * base_scale
    comp_self = tree.self_[:, 1] * comp_scale
    nodes = flame.nest(
        tree,
        {
            "value": _rounded((base_share + comp_share) / 2),
            "base": tree.total[:, 0].tolist(),
            "comp": tree.total[:, 1].tolist(),
            "base_share": _rounded(base_share),
            "comp_share": _rounded(comp_share),
            "delta": _rounded(delta),
            "self_delta": _rounded(comp_self - base_self),
        },
    )
    max_delta = float(np.abs(delta[1:]).max()) if len(delta) > 1 else 0.0
    return {
        "tree": nodes,
        "baseline_total": base_total,
        "comparison_total": comp_total,
        "max_abs_delta": round(max_delta, 9),
        "nodes": len(tree),
        "truncated": tree.dropped > 0,
        "dropped_nodes": tree.dropped,
    }


def _rounded(values: npt.NDArray[np.floating[Any]]) -> list[float]:
    # Nine digits keep one sample in a billion visible and the JSON short.
    return [round(v, 9) for v in values.tolist()]
