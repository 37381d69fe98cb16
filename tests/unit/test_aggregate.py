from __future__ import annotations

import numpy as np

from symbolizer.aggregate import RawSample, build_profile, lookup_addresses
from symbolizer.profile import Frame, FrameKind


def _user(pid: int, addrs: np.ndarray) -> list[Frame]:
    return [Frame(f"u{pid}_{int(a):x}", int(a)) for a in addrs]


CALLS: list[int] = []


def _kernel(addrs: np.ndarray) -> list[Frame]:
    CALLS.append(len(addrs))
    return [Frame(f"k_{int(a):x}", int(a), FrameKind.KERNEL) for a in addrs]


def test_return_addresses_step_into_the_call() -> None:
    assert lookup_addresses((0x100, 0x200, 0x300)) == [0x100, 0x1FF, 0x2FF]
    assert lookup_addresses(()) == []
    assert lookup_addresses((0x100, 0)) == [0x100, 0], "junk zero frames must not wrap"


def test_build_profile_merges_kernel_then_user_leaf_first() -> None:
    CALLS.clear()
    rows = [
        RawSample(1, 1, 0, "a", 0, kernel=(0x10,), user=(0x100, 0x200), count=3),
        RawSample(1, 2, 1, "a", 0, kernel=(), user=(0x100, 0x200), count=2),
        RawSample(2, 2, 0, "b", 0, kernel=(0x10, 0x21), user=(0x100,), count=5),
    ]
    p = build_profile(rows, resolve_user=_user, resolve_kernel=_kernel, period_ns=10)
    assert p.total_samples == 10
    stacks = {tuple(fn.name for fn, _ in frames): n for frames, _, n in p.samples()}
    assert stacks[("k_10", "u1_100", "u1_1ff")] == 3
    assert stacks[("u1_100", "u1_1ff")] == 2
    assert stacks[("k_10", "k_20", "u2_100")] == 5
    # every distinct kernel address symbolized once, in one batch
    assert CALLS == [2]
    kinds = {loc.kind for _, loc in p.frames_of(1)}
    assert kinds == {FrameKind.KERNEL, FrameKind.NATIVE}


def test_labels_come_from_the_row() -> None:
    rows = [RawSample(7, 8, 1, "comm", 0, kernel=(), user=(0x1,), count=1)]
    p = build_profile(rows, resolve_user=_user, resolve_kernel=_kernel, period_ns=10)
    ((_, labels, n),) = list(p.samples())
    assert dict(labels) == {"pid": "7", "tid": "8", "comm": "comm", "cpu": "1"}
    assert n == 1
