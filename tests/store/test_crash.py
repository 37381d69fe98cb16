"""kill -9 while the store is being written: nothing committed is lost or torn.

A child process writes windows (and runs retention, garbage collection,
vacuum and checkpoints) in a loop; the parent SIGKILLs it at random moments,
then opens the store as the restarted daemon would and checks it.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from profiler.store.sqlite import SqliteStore
from symbolizer.profile import Profile
from tests.store.crash_writer import WINDOW, window, window_start

WRITER = Path(__file__).with_name("crash_writer.py")
ROUNDS = 20
BUDGET_S = 25.0


def content(p: Profile) -> Counter[tuple[object, ...]]:
    out: Counter[tuple[object, ...]] = Counter()
    for frames, labels, n in p.samples():
        stack = tuple((fn, p.mappings[loc.mapping_id], loc.address, loc.kind) for fn, loc in frames)
        out[(stack, labels)] += n
    return out


def run_and_kill(path: Path, first: int, rng: random.Random) -> list[int]:
    """Start the writer, let it commit at least one window, SIGKILL it at a random
    moment; the windows it reported as committed."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), str(first)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the first commit: the child is past its imports
    time.sleep(rng.uniform(0, 0.25))
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert line, f"the writer died before its first window:\n{err}"
    assert proc.returncode == -signal.SIGKILL, f"the writer failed on its own:\n{err}"
    return [int(x) for x in (line + out).split()]


def present_windows(store: SqliteStore, last: int) -> dict[int, int]:
    """Window index → samples, for every window in the store (one per bucket)."""
    points = store.timeline(window_start(0), window_start(last + 2), WINDOW)
    return {i: pt.samples for i, pt in enumerate(points) if pt.samples}


def test_kill_9_during_writes_loses_no_committed_window(tmp_path: Path) -> None:
    path = tmp_path / "kiln.db"
    rng = random.Random(20240905)
    reported: set[int] = set()
    first = 0
    deadline = time.monotonic() + BUDGET_S
    rounds = 0
    while rounds < ROUNDS and time.monotonic() < deadline:
        rounds += 1
        reported.update(run_and_kill(path, first, rng))
        last = max(reported)
        with SqliteStore(path) as store:  # opening recovers the WAL, as a restart would
            assert store.integrity_check() == [], f"round {rounds}"
            present = present_windows(store, last + 1)
            # The child's retention keeps the 19 windows before its newest one.
            must = {k for k in reported if k >= last - 18}
            assert must <= present.keys(), f"round {rounds}: lost {sorted(must - present.keys())}"
            for k in present:  # reported or not, every stored window is whole
                got = store.query(window_start(k), window_start(k) + WINDOW)
                assert content(got) == content(window(k)), f"round {rounds}: window {k} differs"
        first = max(present) + 1
    assert rounds >= 10, f"only {rounds} kill rounds fitted in {BUDGET_S} s"
