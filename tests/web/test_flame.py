"""web/stacks.py and web/flame.py: Profile -> flamegraph tree JSON."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import numpy as np

from symbolizer.profile import Frame, FrameKind, Profile
from tests.web.profiles import EVIL, HOT, frames, merged, window
from web import flame
from web import stacks as st
from web.flame import FlameOptions


def child(node: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [c for c in node.get("children", []) if c["name"] == name]
    assert len(matches) == 1, (name, [c["name"] for c in node.get("children", [])])
    found: dict[str, Any] = matches[0]
    return found


def path(tree: dict[str, Any], *names: str) -> dict[str, Any]:
    node = tree
    for name in names:
        node = child(node, name)
    return node


def check_consistent(node: dict[str, Any]) -> int:
    """value = self + sum(children) everywhere; returns the node count."""
    kids = node.get("children", [])
    assert node["value"] == node["self"] + sum(c["value"] for c in kids), node["name"]
    names = [c["name"] for c in kids]
    assert names == sorted(names)
    return 1 + sum(check_consistent(c) for c in kids)


def test_tree_matches_the_profile() -> None:
    out = flame.flamegraph(st.from_profile(window(0)))
    tree = out["tree"]
    assert tree["name"] == "all" and tree["kind"] == "root"
    assert out["total"] == tree["value"] == window(0).total_samples
    assert path(tree, "main", "run", HOT) == {
        "name": HOT,
        "kind": "native",
        "value": 200,
        "self": 200,
    }
    assert path(tree, "main", "work")["value"] == 100
    assert path(tree, "main", "read", "vfs_read")["kind"] == "kernel"
    assert path(tree, "main", "<module>", "py_hot")["kind"] == "python"
    assert out["nodes"] == check_consistent(tree)
    assert not out["truncated"]


def test_same_profile_same_json() -> None:
    a = json.dumps(flame.flamegraph(st.from_profile(merged())))
    b = json.dumps(flame.flamegraph(st.from_profile(merged())))
    assert a == b


def test_functions_merge_across_addresses_and_label_sets() -> None:
    p = Profile()
    p.add([Frame("f", address=1), Frame("main")], 2, [("pid", "1")])
    p.add([Frame("f", address=2), Frame("main")], 3, [("pid", "2")])
    tree = flame.flamegraph(st.from_profile(p))["tree"]
    assert path(tree, "main", "f")["value"] == 5


def test_empty_profile() -> None:
    out = flame.flamegraph(st.from_profile(Profile()))
    assert out["tree"] == {"name": "all", "kind": "root", "value": 0, "self": 0}
    assert out["total"] == 0 and out["nodes"] == 1


def test_sample_without_frames_counts_at_the_root() -> None:
    p = Profile()
    p.add([], 4)
    p.add(frames("a"), 1)
    tree = flame.flamegraph(st.from_profile(p))["tree"]
    assert tree["value"] == 5 and tree["self"] == 4


def test_kind_filter_drops_frames_keeps_samples() -> None:
    w = window(0)
    user_only = frozenset({FrameKind.NATIVE, FrameKind.PYTHON})
    tree = flame.flamegraph(st.from_profile(w), FlameOptions(kinds=user_only))["tree"]
    assert tree["value"] == w.total_samples
    read = path(tree, "main", "read")
    assert "children" not in read and read["self"] == 10
    kernel = flame.flamegraph(st.from_profile(w), FlameOptions(kinds=frozenset({FrameKind.KERNEL})))
    ktree = kernel["tree"]
    assert [c["name"] for c in ktree["children"]] == ["vfs_read"]
    assert ktree["self"] == w.total_samples - 10  # stacks with no kernel frame


def test_collapse_recursion() -> None:
    plain = flame.flamegraph(st.from_profile(window(0)))["tree"]
    assert path(plain, "main", "recurse", "recurse", "recurse", "leaf")["value"] == 5
    collapsed = flame.flamegraph(st.from_profile(window(0)), FlameOptions(collapse_recursion=True))
    rec = path(collapsed["tree"], "main", "recurse")
    assert [c["name"] for c in rec["children"]] == ["leaf"]
    # Only direct recursion: a;b;a stays.
    p = Profile()
    p.add(frames("a", "b", "a", "a"), 1)
    t = flame.flamegraph(st.from_profile(p), FlameOptions(collapse_recursion=True))["tree"]
    assert path(t, "a", "b", "a")["self"] == 1


def test_stack_naming_no_location_is_unknown() -> None:
    p = Profile()
    p.add(frames("a"), 1)
    p.stacks.append((0, 1))  # location 0 is "none": a broken row must not break the view
    p.counts[(len(p.stacks) - 1, 0)] = 2
    tree = flame.flamegraph(st.from_profile(p))["tree"]
    assert path(tree, "a", "[unknown]")["value"] == 2


def test_special_names_pass_through_unchanged() -> None:
    tree = flame.flamegraph(st.from_profile(window(0)))["tree"]
    assert path(tree, "main", EVIL)["value"] == 30
    p = Profile()
    p.add(frames(""), 1)
    assert path(flame.flamegraph(st.from_profile(p))["tree"], "[unknown]")["value"] == 1


def random_profile(n_stacks: int, seed: int = 1, depth: int = 24, fanout: int = 6) -> Profile:
    rng = random.Random(seed)
    p = Profile()
    for _ in range(n_stacks):
        names = [f"f{rng.randrange(fanout)}_{d}" for d in range(rng.randrange(1, depth))]
        p.add(frames(*reversed(names)), rng.randrange(1, 50), [("pid", str(rng.randrange(5)))])
    return p


def test_node_limit_keeps_heaviest_and_totals() -> None:
    p = random_profile(3000)
    full = flame.flamegraph(st.from_profile(p), FlameOptions(max_nodes=10**6))
    assert full["nodes"] > 2000
    for limit in (2, 10, 500, 2000):
        out = flame.flamegraph(st.from_profile(p), FlameOptions(max_nodes=limit))
        assert out["truncated"]
        assert out["nodes"] <= limit
        assert out["nodes"] == check_consistent(out["tree"])
        assert out["tree"]["value"] == full["tree"]["value"] == p.total_samples
        assert out["dropped_nodes"] > 0


def test_node_limit_other_nodes() -> None:
    p = Profile()
    p.add(frames("big", "main"), 100)
    for i in range(20):
        p.add(frames(f"small{i:02d}", "main"), 1)
    out = flame.flamegraph(st.from_profile(p), FlameOptions(max_nodes=5))
    main = path(out["tree"], "main")
    names = [c["name"] for c in main["children"]]
    assert "big" in names and "(other)" in names
    other = child(main, "(other)")
    assert other["kind"] == "other" and other["value"] == 20 - (len(names) - 2)


def test_prune_ties_keep_ancestors() -> None:
    tree = flame.build(st.from_profile(random_profile(500, seed=3)))
    pruned = flame.prune(tree, 50, rank=np.ones(len(tree)))
    assert len(pruned) <= 50
    assert (pruned.parent[1:] < np.arange(1, len(pruned))).all()


def test_large_profile_is_fast() -> None:
    """20,000+ nodes stay well under a second (the bench measures precisely)."""
    p = random_profile(20_000, seed=7, depth=30, fanout=12)
    stacks = st.from_profile(p)
    t = time.perf_counter()
    out = flame.flamegraph(stacks, FlameOptions(max_nodes=20_000))
    json.dumps(out)
    elapsed = time.perf_counter() - t
    assert out["nodes"] <= 20_000 and out["truncated"]
    assert elapsed < 2.0, elapsed


def test_stacks_layout() -> None:
    p = Profile()
    p.add(frames("c", "b", "a"), 2)
    p.add(frames("a"), 1)
    s = st.from_profile(p)
    names = [s.functions.names[c] for c in s.codes]
    assert names == ["a", "b", "c", "a"]
    assert s.lengths.tolist() == [3, 1]
    assert s.weights[:, 0].tolist() == [2, 1]
    assert s.positions.tolist() == [0, 1, 2, 0]
    assert [s.functions.names[c] for c in st.reverse_rows(s).codes] == ["c", "b", "a", "a"]
