"""The child of test_crash: writes windows to a store until it is killed.

    python crash_writer.py STORE FIRST_WINDOW

After each window's write_window returns, it prints the window's index and
flushes, so the parent knows which windows were committed before the kill.
Retention runs after every window with collection always due, so kills also
land in deletes, garbage collection, vacuum and checkpoints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from profiler.store.sqlite import SqliteStore
from symbolizer.profile import Frame, FrameKind, Mapping, Profile

S = 1_000_000_000
T0 = 1_700_000_000 * S
WINDOW = 10 * S
RETENTION_S = 200  # 20 windows
APP = Mapping(0x400000, 0x800000, 0, "/usr/bin/crashy", "feed")


def window_start(k: int) -> int:
    return T0 + k * WINDOW


def window(k: int) -> Profile:
    """Window k, the same in parent and child: shared stacks plus new ones."""
    p = Profile(period_ns=S // 99)
    base = [Frame(f"common_{d}", 0x400000 + 0x100 * d, mapping=APP) for d in range(12)]
    for j in range(40):
        fresh = [
            Frame(f"w{k}_s{j}_{d}", 0x500000 + 0x10 * (k * 97 + j * 7 + d), mapping=APP)
            for d in range(j % 5)
        ]
        leaf = [Frame("syscall", 0xFFFF_FFFF_8100_0000 + j, kind=FrameKind.KERNEL)] if j % 4 else []
        p.add(
            [*leaf, *fresh, *base[j % 6 :]],
            1 + (k + j) % 9,
            [
                ("pid", str(100 + j % 3)),
                ("tid", str(200 + j % 5)),
                ("comm", f"c{j % 3}"),
                ("cpu", str(j % 2)),
            ],
        )
    return p


def main(argv: list[str]) -> int:
    path, first = Path(argv[1]), int(argv[2])
    with SqliteStore(path, retention_s=RETENTION_S, gc_interval_s=0) as store:
        k = first
        while True:
            store.write_window(window(k), start_ns=window_start(k), duration_ns=WINDOW)
            print(k, flush=True)
            store.apply_retention(window_start(k) + WINDOW)
            k += 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
