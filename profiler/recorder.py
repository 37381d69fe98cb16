"""The core loop: sample windows from BPF, track processes, symbolize, merge.

`Recorder` wires the pieces (backend, process table, unwind tables,
symbolizers, sampler, the event and unwind threads) and is what
`kiln record` (and later the daemon) drives.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from profiler.bpf import abi
from profiler.bpf.loader import BccBackend, MapSizes, PythonMaps, SamplerBackend, UnwindMaps
from profiler.process_watcher import EventPump, ProcessWatcher, SetupWorker, SharedProcesses
from profiler.processes import ProcessInfo, ProcessTable
from profiler.procfs import MapEntry
from profiler.procmem import ProcessMemory
from profiler.python_procs import PythonProcesses
from profiler.sampler import Sampler, SamplerOptions, Window
from profiler.unwind_tables import UnwindTables
from symbolizer.aggregate import RawSample, build_profile, default_labels
from symbolizer.interpreters.cpython import CPythonInfo
from symbolizer.kallsyms import KernelSymbolizer
from symbolizer.native import NativeSymbolizer
from symbolizer.profile import Frame, FrameKind, Profile
from symbolizer.python_stacks import PyFrame, PythonSymbolizer

log = logging.getLogger("kiln.recorder")


@dataclass
class RecordStats:
    samples: int = 0
    windows: int = 0
    lost: int = 0
    counters: dict[str, int] = field(default_factory=dict)


class Recorder:
    def __init__(
        self,
        options: SamplerOptions,
        *,
        backend: SamplerBackend | None = None,
        sizes: MapSizes | None = None,
        processes: ProcessTable | None = None,
        unwind: bool = True,
        python: bool = True,
    ) -> None:
        self.options = options
        # Maps are re-read at most every 100 ms per process: soon enough
        # after an exec or dlopen, rare enough to cost nothing.
        self.processes = SharedProcesses(processes or ProcessTable(min_refresh_ns=100_000_000))
        self.native = NativeSymbolizer()
        self.kernel = KernelSymbolizer()
        self.stats = RecordStats()
        self._wall_offset = time.time_ns() - time.monotonic_ns()
        sizes = sizes or MapSizes()
        self.backend = backend or BccBackend(sizes)
        tables = None
        if unwind and isinstance(self.backend, UnwindMaps):
            tables = UnwindTables(
                self.backend, capacity_rows=sizes.unwind_rows, capacity_pages=sizes.unwind_pages
            )
        self.python: PythonProcesses | None = None
        if python and isinstance(self.backend, PythonMaps):
            self.python = PythonProcesses(self.backend)
        self.python_symbolizer = PythonSymbolizer(self._python_info, _open_memory)
        self.unwind: SetupWorker | None = None
        workers = []
        if tables is not None:
            self.unwind = SetupWorker(tables, self.processes, name="kiln-unwind")
            workers.append(self.unwind)
        if self.python is not None:
            workers.append(SetupWorker(None, self.processes, self.python, name="kiln-python"))
        self.workers = workers
        self.watcher = ProcessWatcher(self.processes, workers)
        self.sampler = Sampler(
            self.backend, options, on_event=self._on_event, maps_of=self._maps_of
        )
        self._pump = EventPump(self.sampler.poll)

    def _on_event(self, ev: abi.Event) -> None:
        self.watcher(ev)
        if ev.type == abi.EV_NEW_KEY and ev.key.pystack and isinstance(self.backend, PythonMaps):
            # Read the code objects now, while the process is surely alive: a
            # short-lived one is gone by the time its window closes.
            found = self.backend.lookup_stack(int(ev.half), int(ev.key.pystack))
            if found is not None:
                self._resolve_python(int(ev.key.pid), found[0])

    def _maps_of(self, pid: int) -> Sequence[MapEntry] | None:
        info = self.processes.get(pid) or self.processes.observe(pid)
        return info.maps if info else None

    # -- symbolization callbacks ------------------------------------------

    def _resolve_user(self, pid: int, addrs: np.ndarray) -> Sequence[Frame]:
        try:
            return self._resolve_user_unsafe(pid, addrs)
        except Exception:  # a bug or odd input must cost names, never samples
            log.exception("symbolizing %d addresses of pid %d failed", len(addrs), pid)
            self._count("symbolize_errors")
            return [Frame(f"[unknown]+0x{int(a):x}", int(a)) for a in addrs]

    def _resolve_user_unsafe(self, pid: int, addrs: np.ndarray) -> Sequence[Frame]:
        info = self.processes.get(pid) or self.processes.observe(pid)
        maps = info.maps if info else ()
        if info is not None and maps and not _all_mapped(maps, addrs):
            # A library loaded after we read the maps (dlopen): read them again.
            refreshed = self.processes.refresh_maps(pid)
            if refreshed is not None:
                maps = refreshed.maps
        return self.native.symbolize(pid, maps, addrs, process=info)

    def _resolve_kernel(self, addrs: np.ndarray) -> Sequence[Frame]:
        try:
            return self.kernel.symbolize(addrs)
        except Exception:
            log.exception("symbolizing %d kernel addresses failed", len(addrs))
            self._count("symbolize_errors")
            return [
                Frame(f"[kernel.kallsyms]+0x{int(a):x}", int(a), FrameKind.KERNEL) for a in addrs
            ]

    def _python_info(self, pid: int) -> CPythonInfo | None:
        return self.python.info(pid) if self.python is not None else None

    def _resolve_python(self, pid: int, packed: tuple[int, ...]) -> Sequence[PyFrame] | None:
        try:
            return self.python_symbolizer.resolve(pid, packed)
        except Exception:  # as for native frames: lose names, never samples
            log.exception("naming Python frames of pid %d failed", pid)
            self._count("symbolize_errors")
            return None

    def _count(self, name: str) -> None:
        self.stats.counters[name] = self.stats.counters.get(name, 0) + 1

    def _labels(self, s: RawSample) -> list[tuple[str, str]]:
        info: ProcessInfo | None = self.processes.get(s.pid)
        labels = default_labels(s)
        if info is not None:
            labels.append(("container", info.container_id))
            labels.append(("exe", info.exe))
        return labels

    # -- windows ------------------------------------------------------------

    def profile_of(self, window: Window) -> Profile:
        period = int(1e9 / self.options.frequency_hz)
        profile = build_profile(
            window.samples,
            resolve_user=self._resolve_user,
            resolve_kernel=self._resolve_kernel,
            labels=self._labels,
            resolve_python=self._resolve_python,
            period_ns=period,
            start_ns=window.start_ns + self._wall_offset,
            duration_ns=window.end_ns - window.start_ns,
        )
        self.stats.samples += window.total
        self.stats.windows += 1
        for k, v in window.counters.items():
            self.stats.counters[k] = self.stats.counters.get(k, 0) + v
        self.stats.lost = sum(self.stats.counters.get(c.name.lower(), 0) for c in abi.LOSS_REMEDIES)
        return profile

    def start(self) -> None:
        # Load kallsyms now, not in the first window: it is the one big
        # read-once cost, and sampling should not pay for it.
        _ = self.kernel.symbols
        # Processes named up front are set up before the first sample, so
        # even their first stacks are complete.
        for pid in self.options.pids:
            if self.processes.observe(pid) is not None:
                for w in self.workers:
                    w.setup(pid)
        for w in self.workers:
            w.start()
        self.sampler.start()
        self._pump.start()
        log.info("sampling at %d Hz on %d CPUs", self.options.frequency_hz, os.cpu_count() or 0)

    def close(self) -> None:
        self.sampler.stop()
        self._pump.stop()
        for w in self.workers:
            w.stop()
        self.sampler.backend.close()
        self.python_symbolizer.close()

    def record(
        self,
        duration_s: float,
        *,
        window_s: float = 10.0,
        should_stop: Callable[[], bool] = lambda: False,
        on_progress: Callable[[float, RecordStats], None] | None = None,
    ) -> Profile:
        """Sample for `duration_s` (or until `should_stop`), return the merged profile."""
        total = Profile(period_ns=int(1e9 / self.options.frequency_hz))
        t0 = time.monotonic()
        next_window = t0 + window_s
        next_progress = t0 + 1.0
        while True:
            now = time.monotonic()
            if now - t0 >= duration_s or should_stop():
                break
            time.sleep(0.1)  # the event pump thread polls the ring buffer
            if now >= next_window:
                total.merge(self.profile_of(self.sampler.close_window()))
                next_window = now + window_s
                self.maintain()
            if on_progress is not None and now >= next_progress:
                on_progress(now - t0, self.stats)
                next_progress = now + 1.0
        total.merge(self.profile_of(self.sampler.close_window()))
        self.processes.prune()
        return total

    def maintain(self) -> None:
        """Between windows: forget exited processes, evict unused tables."""
        self.processes.prune()
        if self.unwind is not None and self.unwind.tables is not None:
            gone = self.unwind.tables.tracked() - set(self.processes.pids())
            self.watcher.forget(gone)
            for pid in gone:
                for w in self.workers:
                    w.remove(pid)
            self.unwind.tables.maintain()
        self.python_symbolizer.retain(set(self.processes.pids()))

    def counters(self) -> dict[str, int]:
        out = dict(self.stats.counters)
        out.update({f"process_{k}": v for k, v in self.processes.counters.items()})
        out.update({f"symbolizer_{k}": v for k, v in self.native.counters.items()})
        out.update({f"sampler_{k}": v for k, v in self.sampler.counters.items()})
        out.update({f"events_{k}": v for k, v in self.watcher.counters.items()})
        if self.unwind is not None and self.unwind.tables is not None:
            out.update({f"unwind_{k}": v for k, v in self.unwind.tables.counters.items()})
            out.update({f"unwind_{k}": v for k, v in self.unwind.tables.stats().items()})
        out["setup_worker_errors"] = sum(w.errors for w in self.workers)
        if self.python is not None:
            out.update({f"python_{k}": v for k, v in self.python.counters.items()})
        out.update({f"python_{k}": v for k, v in self.python_symbolizer.counters.items()})
        return out


def _open_memory(pid: int) -> ProcessMemory | None:
    mem = ProcessMemory(pid)
    return mem if mem.ok else None


def _all_mapped(maps: Sequence[MapEntry], addrs: np.ndarray) -> bool:
    starts = np.array([m.start for m in maps], dtype=np.uint64)
    ends = np.array([m.end for m in maps], dtype=np.uint64)
    order = np.argsort(starts)
    starts, ends = starts[order], ends[order]
    idx = np.searchsorted(starts, addrs, side="right") - 1
    ok = idx >= 0
    ok[ok] = addrs[ok] < ends[idx[ok]]
    return bool(ok.all())
