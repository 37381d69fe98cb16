"""The pure views besides the flamegraph: tables, sandwich, diff."""

from __future__ import annotations

from typing import Any

import pytest

from symbolizer import top
from symbolizer.folded import split_display_name
from symbolizer.profile import FrameKind, Profile
from tests.web.profiles import EVIL, HOT, frames, merged, window
from tests.web.test_flame import check_consistent, child, path
from web import diff, flame, sandwich, tables
from web import stacks as st
from web.tables import TableQuery

# -- top functions -------------------------------------------------------------


def rows_by_name(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in out["rows"]}


def test_top_self_and_total() -> None:
    w = window(0)
    out = tables.top_functions(st.from_profile(w), TableQuery(limit=1000))
    rows = rows_by_name(out)
    assert out["total"] == w.total_samples
    assert rows[HOT]["self"] == rows[HOT]["total"] == 200
    assert rows["main"]["self"] == 0 and rows["main"]["total"] == w.total_samples
    assert rows["main"]["total_pct"] == 100.0
    # Recursion counts once per sample in total.
    assert rows["recurse"]["total"] == 5 and rows["recurse"]["self"] == 0
    assert rows["vfs_read"]["kind"] == "kernel"
    assert out["rows"][0]["name"] == HOT  # default: self, descending


def test_top_agrees_with_kiln_top() -> None:
    """Same numbers as the CLI's table (which names kinds by suffix)."""
    p = merged()
    ours = rows_by_name(tables.top_functions(st.from_profile(p), TableQuery(limit=1000)))
    theirs = top.top_table(p)
    for name, kind, flat, cum in zip(
        theirs["name"], theirs["kind"], theirs["flat"], theirs["cum"], strict=True
    ):
        bare, _ = split_display_name(name)
        assert (ours[bare]["kind"], ours[bare]["self"], ours[bare]["total"]) == (kind, flat, cum)


@pytest.mark.parametrize(
    ("sort", "descending", "first"),
    [("self", True, HOT), ("total", True, "main"), ("name", False, EVIL), ("name", True, "work")],
)
def test_top_sorting(sort: tables.SortKey, descending: bool, first: str) -> None:
    out = tables.top_functions(
        st.from_profile(window(0)), TableQuery(sort=sort, descending=descending)
    )
    assert out["rows"][0]["name"] == first


def test_top_paging_and_search() -> None:
    s = st.from_profile(window(0))
    everything = tables.top_functions(s, TableQuery(limit=1000))
    page = tables.top_functions(s, TableQuery(limit=3, offset=2))
    assert page["rows"] == everything["rows"][2:5]
    assert page["functions"] == everything["functions"]
    found = tables.top_functions(s, TableQuery(search="IMG SRC"))
    assert [r["name"] for r in found["rows"]] == [EVIL]
    assert found["functions"] == 1


def test_top_follows_kind_filter() -> None:
    kinds = frozenset({FrameKind.NATIVE})
    s = flame.prepare(st.from_profile(window(0)), flame.FlameOptions(kinds=kinds))
    rows = rows_by_name(tables.top_functions(s, TableQuery(limit=100)))
    assert "vfs_read" not in rows and "py_hot" not in rows
    assert rows["read"]["self"] == 10  # its kernel callees are hidden


def test_top_empty() -> None:
    out = tables.top_functions(st.from_profile(Profile()))
    assert out == {"rows": [], "functions": 0, "total": 0}


# -- sandwich ----------------------------------------------------------------


def test_sandwich_callers_and_callees() -> None:
    p = Profile()
    p.add(frames("leaf1", "mid", "a", "main"), 3)
    p.add(frames("mid", "b", "main"), 2)
    p.add(frames("leaf2", "mid", "b", "main"), 1)
    p.add(frames("other", "main"), 10)
    out = sandwich.sandwich(st.from_profile(p), "mid")
    assert out["found"] and out["total"] == 6 and out["self"] == 2
    assert out["all_samples"] == 16
    callers, callees = out["callers"], out["callees"]
    assert callers["name"] == callees["name"] == "mid"
    assert callers["value"] == callees["value"] == 6
    assert {c["name"]: c["value"] for c in callers["children"]} == {"a": 3, "b": 3}
    assert path(callers, "b", "main")["value"] == 3
    assert {c["name"]: c["value"] for c in callees["children"]} == {"leaf1": 3, "leaf2": 1}
    assert callees["self"] == 2
    check_consistent(callees)
    check_consistent(callers)


def test_sandwich_recursion_counts_once() -> None:
    p = Profile()
    p.add(frames("leaf", "f", "g", "f", "main"), 4)
    out = sandwich.sandwich(st.from_profile(p), "f")
    assert out["total"] == 4 and out["self"] == 0
    assert out["callers"]["value"] == 4
    assert [c["name"] for c in out["callers"]["children"]] == ["main"]
    assert path(out["callees"], "g", "f", "leaf")["value"] == 4


def test_sandwich_kind_and_absent_function() -> None:
    s = st.from_profile(window(0))
    out = sandwich.sandwich(s, "vfs_read", FrameKind.KERNEL)
    assert out["found"] and out["total"] == 10 and out["kind"] == "kernel"
    assert not sandwich.sandwich(s, "vfs_read", FrameKind.PYTHON)["found"]
    missing = sandwich.sandwich(s, "nowhere")
    assert not missing["found"] and missing["total"] == 0


# -- diff ---------------------------------------------------------------------


def test_diff_normalizes_and_signs_changes() -> None:
    before, after = merged(0, 3), merged(3, 6)
    out = diff.diff(before, after)
    tree = out["tree"]
    assert out["baseline_total"] == before.total_samples
    assert out["comparison_total"] == after.total_samples
    grow = path(tree, "main", "work", "grow_me")
    shrink = path(tree, "main", "work", "shrink_me")
    assert grow["delta"] > 0 and shrink["delta"] < 0
    assert grow["base"] == 60 and grow["comp"] == 240
    assert grow["delta"] == pytest.approx(240 / after.total_samples - 60 / before.total_samples)
    hot = path(tree, "main", "run", HOT)
    assert hot["delta"] == pytest.approx(0.0)  # same share on both sides
    assert out["max_abs_delta"] == pytest.approx(abs(grow["delta"]))


def test_diff_of_different_sizes_compares_shares() -> None:
    small, big = Profile(), Profile()
    small.add(frames("a", "main"), 1)
    small.add(frames("b", "main"), 1)
    big.add(frames("a", "main"), 100)
    big.add(frames("b", "main"), 100)
    big.add(frames("c", "main"), 200)
    tree = diff.diff(small, big)["tree"]
    assert child(child(tree, "main"), "a")["delta"] == pytest.approx(0.25 - 0.5)
    c = child(child(tree, "main"), "c")
    assert c["base"] == 0 and c["delta"] == pytest.approx(0.5)
    assert c["value"] > 0  # present on one side only, still drawn


def test_diff_with_empty_side() -> None:
    out = diff.diff(Profile(), window(0))
    assert out["baseline_total"] == 0
    assert path(out["tree"], "main", "run", HOT)["comp"] == 200


def test_diff_node_limit() -> None:
    out = diff.diff(merged(0, 3), merged(3, 6), flame.FlameOptions(max_nodes=5))
    assert out["nodes"] <= 5 and out["truncated"]
