"""Profiles with known shapes for the web UI tests, and a store holding them.

Times are fixed: the store's windows start at T0 and the app's clock stands
at NOW, so ranges and "now-..." mean the same thing on every run.
"""

from __future__ import annotations

from pathlib import Path

from profiler.store.sqlite import SqliteStore
from symbolizer.profile import Frame, FrameKind, Profile

S = 10**9
MS = 10**6
T0 = 1_700_000_000_000 * MS  # first window
WINDOW = 10 * S
WINDOWS = 6  # T0 .. T0+60s; the first three are "before", the last three "after"
NOW = T0 + 10 * 60 * S
PERIOD = 10_101_010  # 99 Hz

EVIL = "<img src=x onerror=alert(1)>"
HOT = "hot_spin"

# Per window: samples of each stack (leaf first), by process.
BURNER = (("pid", "100"), ("tid", "100"), ("comm", "burner"), ("exe", "/usr/bin/burner"))
EVIL_PROC = (("pid", "200"), ("tid", "201"), ("comm", "evil"), ("exe", "/opt/evil"))
PY_PROC = (("pid", "300"), ("tid", "300"), ("comm", "python3"), ("container", "c0ffee"))


def frames(*names: str, kind: FrameKind = FrameKind.NATIVE) -> list[Frame]:
    """Frames leaf first, all of one kind."""
    return [Frame(n, kind=kind) for n in names]


def window(index: int) -> Profile:
    """Window `index`: hot_spin always dominates; shrink_me is heavy in the
    first half and light in the second, grow_me the reverse."""
    before = index < WINDOWS // 2
    p = Profile(period_ns=PERIOD)
    p.add(frames(HOT, "run", "main"), 200, BURNER)
    p.add(frames("shrink_me", "work", "main"), 80 if before else 20, BURNER)
    p.add(frames("grow_me", "work", "main"), 20 if before else 80, BURNER)
    p.add(frames("leaf", "recurse", "recurse", "recurse", "main"), 5, BURNER)
    p.add(frames(EVIL, "main"), 30, EVIL_PROC)
    kernel = frames("copy_user_generic", "vfs_read", kind=FrameKind.KERNEL)
    p.add([*kernel, *frames("read", "main")], 10, EVIL_PROC)
    p.add([*frames("py_hot", "<module>", kind=FrameKind.PYTHON), *frames("main")], 15, PY_PROC)
    return p


SAMPLES_PER_WINDOW = 200 + 100 + 5 + 30 + 10 + 15


def merged(first: int = 0, last: int = WINDOWS) -> Profile:
    out = Profile()
    for i in range(first, last):
        out.merge(window(i))
    return out


def fill_store(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    for i in range(WINDOWS):
        store.write_window(window(i), start_ns=T0 + i * WINDOW, duration_ns=WINDOW)
    return store


def ms(ns: int) -> int:
    return ns // MS
