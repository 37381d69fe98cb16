"""The embedded store's figures: write cost per window, query over an hour, disk.

`measure(tmpdir)` writes one hour of synthetic but realistically shaped
windows (10 s, 99 Hz x 2 CPUs = 1,980 samples each) into a fresh
SqliteStore and times the daemon's and the UI's operations on it:

- stacks of depth 10-40 walked down a call graph over ~5,000 functions in
  ~30 objects plus the kernel, so stacks share their outer frames as real
  ones do; a Zipf-like popularity gives a few hundred distinct stacks per
  window, and 2 % of the stack pool is replaced every window (new code paths);
- 24 processes with 1-8 threads each, labelled like the daemon labels them
  (pid, tid, comm, cpu, exe, container, cgroup).

    python tools/bench_store.py [--windows N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from profiler.store.api import Filters  # noqa: E402
from profiler.store.sqlite import SqliteStore  # noqa: E402
from symbolizer.profile import Frame, FrameKind, Mapping, Profile  # noqa: E402

HZ = 99
CPUS = 2
WINDOW_S = 10
PERIOD_NS = 1_000_000_000 // HZ
T0_NS = 1_700_000_000 * 1_000_000_000


@dataclass
class Workload:
    """A host's worth of code and processes, and a drifting pool of stacks."""

    rng: np.random.Generator
    template: Profile = field(default_factory=Profile)
    frames: list[Frame] = field(default_factory=list)
    callees: list[np.ndarray] = field(default_factory=list)
    kernel: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pool: list[int] = field(default_factory=list)  # template stack ids
    pool_pid: list[int] = field(default_factory=list)
    threads: dict[int, list[int]] = field(default_factory=dict)
    proc_labels: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def build(
        cls, seed: int = 7, functions: int = 5000, objects: int = 30, pool: int = 1500
    ) -> Workload:
        w = cls(np.random.default_rng(seed))
        w._code(functions, objects)
        w._processes(24)
        w.pool = [w._new_stack() for _ in range(pool)]
        w.pool_pid = [int(w.rng.choice(list(w.threads))) for _ in range(pool)]
        ranks = np.arange(1, pool + 1, dtype=np.float64)
        w.weights = (1 / ranks**1.1) / (1 / ranks**1.1).sum()
        return w

    def _code(self, functions: int, objects: int) -> None:
        rng = self.rng
        n_kernel = functions // 6
        mappings = [
            Mapping(
                int(base),
                int(base) + 0x400000,
                0,
                f"/usr/lib/x86_64-linux-gnu/lib{i}.so",
                f"{i:040x}",
            )
            for i, base in enumerate(0x7F00_0000_0000 + np.arange(objects) * 0x1000_0000)
        ]
        for i in range(functions):
            kernel = i < n_kernel
            name = (
                f"__x64_sys_call_{i}"
                if kernel
                else f"ns{i % 37}::Class{i % 211}::method_{i}(int, std::string const&)"
            )
            mapping = None if kernel else mappings[int(rng.integers(objects))]
            base = (0xFFFF_FFFF_8100_0000 if kernel else mapping.start if mapping else 0) + i * 256
            for site in range(int(rng.integers(1, 4))):  # a few call sites per function
                self.frames.append(
                    Frame(
                        name,
                        base + 16 * site,
                        FrameKind.KERNEL if kernel else FrameKind.NATIVE,
                        mapping,
                        filename="" if kernel else f"src/module{i % 97}.cc",
                        line=int(rng.integers(1, 2000)),
                    )
                )
        n = len(self.frames)
        kernel_frames = sum(1 for f in self.frames if f.kind == FrameKind.KERNEL)
        self.kernel = np.arange(kernel_frames)
        user = np.arange(kernel_frames, n)
        # Each user frame calls 2-6 others: walks share their outer frames.
        self.callees = [rng.choice(user, size=int(rng.integers(2, 7))) for _ in range(n)]

    def _processes(self, n: int) -> None:
        for k in range(n):
            pid = 1000 + 37 * k
            self.threads[pid] = [pid + t for t in range(int(self.rng.integers(1, 9)))]
            self.proc_labels[pid] = [
                ("pid", str(pid)),
                ("comm", f"worker{k}"),
                ("exe", f"/usr/bin/service{k % 9}"),
                ("container", f"{k % 5:064x}" if k % 3 else ""),
                ("cgroup", f"/system.slice/service{k % 9}.service"),
            ]

    def _new_stack(self) -> int:
        rng = self.rng
        depth = int(rng.integers(10, 41))
        frame = int(rng.integers(len(self.kernel), len(self.kernel) + 40))  # a few roots
        walk = [frame]
        while len(walk) < depth:
            frame = int(rng.choice(self.callees[frame]))
            walk.append(frame)
        if rng.random() < 0.2:  # a system call: kernel frames at the leaf end
            walk += [int(f) for f in rng.choice(self.kernel, size=int(rng.integers(3, 10)))]
        frames = [self.frames[i] for i in reversed(walk)]  # leaf first
        return self.template.stack_id(frames)

    def window(self, k: int) -> Profile:
        """Window k: 1,980 samples; first replace 2 % of the pool."""
        rng = self.rng
        for slot in rng.choice(len(self.pool), size=len(self.pool) // 50, replace=False):
            self.pool[int(slot)] = self._new_stack()
        t = self.template
        p = Profile(
            start_ns=T0_NS + k * WINDOW_S * 1_000_000_000,
            duration_ns=WINDOW_S * 1_000_000_000,
            period_ns=PERIOD_NS,
            mappings=t.mappings,
            functions=t.functions,
            locations=t.locations,
            stacks=t.stacks,
            label_sets=t.label_sets,
        )
        picks = rng.choice(len(self.pool), size=HZ * CPUS * WINDOW_S, p=self.weights)
        cpus = rng.integers(0, CPUS, size=picks.size)
        for slot, cpu in zip(picks.tolist(), cpus.tolist(), strict=True):
            pid = self.pool_pid[slot]
            tid = self.threads[pid][slot % len(self.threads[pid])]
            labels = [*self.proc_labels[pid], ("tid", str(tid)), ("cpu", str(cpu))]
            p.add_by_ids(self.pool[slot], t.labels_id(labels), 1)
        return p


def measure(tmpdir: Path, windows: int = 360, repeat: int = 3) -> dict[str, Any]:
    """Write `windows` windows, query them back; figures as a flat dict."""
    work = Workload.build()
    profiles = [work.window(k) for k in range(windows)]
    samples = sum(p.total_samples for p in profiles)
    rows = [len(p.counts) for p in profiles]
    stacks = [len({s for s, _ in p.counts}) for p in profiles]
    path = Path(tmpdir) / "bench.kiln.db"
    write_s: list[float] = []
    with SqliteStore(path) as store:
        for p in profiles:
            t0 = time.perf_counter()
            store.write_window(p, start_ns=p.start_ns, duration_ns=p.duration_ns)
            write_s.append(time.perf_counter() - t0)
        with_wal = store.bytes_on_disk()
    on_disk = path.stat().st_size  # closing checkpointed and removed the WAL
    end = T0_NS + windows * WINDOW_S * 1_000_000_000
    pid = str(work.pool_pid[0])
    with SqliteStore(path, retention_s=windows * WINDOW_S / 2) as store:
        query_s, merged = _best(repeat, lambda: store.query(T0_NS, end))
        filtered_s, filtered = _best(repeat, lambda: store.query(T0_NS, end, Filters(pids=(pid,))))
        timeline_s, _ = _best(repeat, lambda: store.timeline(T0_NS, end, 10_000_000_000))
        values_s, _ = _best(repeat, lambda: store.label_values("comm", T0_NS, end))
        t0 = time.perf_counter()
        report = store.apply_retention(end)  # retention of half the range
        retention_s = time.perf_counter() - t0
        problems = store.integrity_check()
    assert merged.total_samples == samples, "the query lost samples"
    steady = sorted(write_s[windows // 10 :])  # after the caches are warm
    return {
        "windows": windows,
        "samples": samples,
        "distinct_stacks_per_window": round(float(np.mean(stacks)), 1),
        "sample_rows_per_window": round(float(np.mean(rows)), 1),
        "distinct_stacks_total": len({s for p in profiles for s, _ in p.counts}),
        "query_hour_s": round(query_s, 4),
        "query_hour_frames": len(merged.locations) - 1,
        "query_hour_stacks": len(merged.stacks) - 1,
        "query_one_pid_s": round(filtered_s, 4),
        "query_one_pid_samples": filtered.total_samples,
        "timeline_hour_s": round(timeline_s, 4),
        "label_values_s": round(values_s, 4),
        "write_first_window_ms": round(write_s[0] * 1000, 2),
        "write_window_ms_median": round(steady[len(steady) // 2] * 1000, 2),
        "write_window_ms_p95": round(steady[int(len(steady) * 0.95)] * 1000, 2),
        "bytes_on_disk": on_disk,
        "bytes_on_disk_with_wal": with_wal,
        "bytes_per_sample": round(on_disk / samples, 2),
        "retention_half_s": round(retention_s, 3),
        "retention_windows_removed": report.windows,
        "integrity_problems": len(problems),
    }


def _best(repeat: int, fn: Any) -> tuple[float, Any]:
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--windows", type=int, default=360, help="10 s windows to write (360 = 1 h)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-store-") as tmp:
        print(json.dumps(measure(Path(tmp), args.windows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
