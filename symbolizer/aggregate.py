"""Raw window rows (pids, stacks of addresses, counts) → a symbolized Profile.

Pure: the symbolizers come in as callables, so this is tested without root.
Every distinct address is symbolized once per window: user addresses are
deduplicated per process with numpy, kernel addresses across the window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from symbolizer.profile import Frame, Profile
from symbolizer.python_stacks import PyFrame, merge


@dataclass(frozen=True, slots=True)
class RawSample:
    """One distinct (thread, cpu, stacks) row of a window, addresses leaf first."""

    pid: int
    tid: int
    cpu: int
    comm: str
    cgroup_id: int
    kernel: tuple[int, ...]
    user: tuple[int, ...]
    count: int
    first_ns: int = 0
    last_ns: int = 0
    truncated: bool = False  # the user stack walk hit its depth limit
    python: tuple[int, ...] = ()  # packed Python frames, leaf first (see python_stacks)
    python_truncated: bool = False


TRUNCATED = Frame("[truncated]")


UserResolver = Callable[[int, np.ndarray], Sequence[Frame]]
KernelResolver = Callable[[np.ndarray], Sequence[Frame]]
LabelMaker = Callable[[RawSample], Iterable[tuple[str, str]]]
PythonResolver = Callable[[int, tuple[int, ...]], Sequence[PyFrame] | None]


def lookup_addresses(stack: tuple[int, ...]) -> list[int]:
    """Addresses to symbolize: return addresses (every frame but the leaf)
    step back one byte into the call instruction, so a call that ends a
    function (e.g. to a noreturn callee) is not attributed to the next one.
    A zero (junk from a frame-pointer walk through a frameless caller) stays."""
    return [a - 1 if i and a else a for i, a in enumerate(stack)]


def default_labels(s: RawSample) -> list[tuple[str, str]]:
    return [("pid", str(s.pid)), ("tid", str(s.tid)), ("comm", s.comm), ("cpu", str(s.cpu))]


def _resolve(
    addrs_per_key: dict[int, set[int]], resolve: Callable[[int, np.ndarray], Sequence[Frame]]
) -> dict[tuple[int, int], Frame]:
    out: dict[tuple[int, int], Frame] = {}
    for key, addrs in addrs_per_key.items():
        arr = np.fromiter(addrs, dtype=np.uint64, count=len(addrs))
        arr.sort()
        frames = resolve(key, arr)
        for a, f in zip(arr.tolist(), frames, strict=True):
            out[(key, a)] = f
    return out


def build_profile(
    samples: Sequence[RawSample],
    *,
    resolve_user: UserResolver,
    resolve_kernel: KernelResolver,
    labels: LabelMaker = default_labels,
    resolve_python: PythonResolver | None = None,
    period_ns: int,
    start_ns: int = 0,
    duration_ns: int = 0,
) -> Profile:
    user_addrs: dict[int, set[int]] = {}
    kernel_addrs: dict[int, set[int]] = {0: set()}
    for s in samples:
        if s.user:
            user_addrs.setdefault(s.pid, set()).update(lookup_addresses(s.user))
        if s.kernel:
            kernel_addrs[0].update(lookup_addresses(s.kernel))
    user = _resolve(user_addrs, resolve_user)
    kernel = _resolve(kernel_addrs, lambda _k, a: resolve_kernel(a))

    profile = Profile(start_ns=start_ns, duration_ns=duration_ns, period_ns=period_ns)
    # Interning the same stack twice is cheap, but building its frame list
    # is not: cache per distinct (pid, kernel, user, python) stacks.
    stack_ids: dict[tuple[object, ...], int] = {}
    py_frames: dict[tuple[int, tuple[int, ...]], Sequence[PyFrame] | None] = {}
    for s in samples:
        skey = (s.pid, s.kernel, s.user, s.truncated, s.python, s.python_truncated)
        sid = stack_ids.get(skey)
        if sid is None:
            frames = [kernel[(0, a)] for a in lookup_addresses(s.kernel)]
            native = [user[(s.pid, a)] for a in lookup_addresses(s.user)]
            py = None
            if s.python and resolve_python is not None:
                pkey = (s.pid, s.python)
                if pkey not in py_frames:
                    py_frames[pkey] = resolve_python(s.pid, s.python)
                py = py_frames[pkey]
            frames += merge(native, py) if py else native
            if s.truncated or (py and s.python_truncated):
                frames.append(TRUNCATED)
            sid = stack_ids[skey] = profile.stack_id(frames)
        profile.add_by_ids(sid, profile.labels_id(labels(s)), s.count)
    return profile
