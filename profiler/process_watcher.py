"""Turning kernel events into process knowledge, off the sampling path.

Two background threads serve the recorder: the event pump drains the BPF
ring buffer as soon as records arrive (so a process that lives 20 ms is
read from /proc while it is alive), and setup workers prepare each sampled
process without holding up either the events or the windows: one builds
and loads unwind tables (100s of ms for a big binary), another looks for a
Python interpreter (milliseconds, so it must not wait behind the tables).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence

from profiler.bpf import abi
from profiler.processes import ProcessInfo, ProcessTable
from profiler.python_procs import PythonProcesses
from profiler.unwind_tables import UnwindTables

log = logging.getLogger("kiln.watcher")


class SharedProcesses:
    """A ProcessTable used from several threads: every call under one lock."""

    def __init__(self, table: ProcessTable) -> None:
        self.table = table
        self._lock = threading.RLock()

    def get(self, pid: int) -> ProcessInfo | None:
        with self._lock:
            return self.table.get(pid)

    def observe(self, pid: int) -> ProcessInfo | None:
        with self._lock:
            return self.table.observe(pid)

    def known(self, pid: int) -> bool:
        with self._lock:
            return pid in self.table

    def refresh_maps(self, pid: int) -> ProcessInfo | None:
        with self._lock:
            return self.table.refresh_maps(pid)

    def forget(self, pid: int) -> None:
        with self._lock:
            self.table.forget(pid)

    def mark_exited(self, pid: int) -> None:
        with self._lock:
            self.table.mark_exited(pid)

    def prune(self) -> int:
        with self._lock:
            return self.table.prune()

    def pids(self) -> list[int]:
        with self._lock:
            return list(self.table)

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self.table.counters)


_SYNC = "sync"
_REMOVE = "remove"
_STOP = "stop"


class SetupWorker:
    """Sets up sampled processes in its own thread: unwind tables and/or Python."""

    def __init__(
        self,
        tables: UnwindTables | None,
        processes: SharedProcesses,
        python: PythonProcesses | None = None,
        *,
        name: str = "kiln-setup",
    ) -> None:
        self.tables = tables
        self.processes = processes
        self.python = python
        # Kiln itself maps LLVM (through BCC): ~1M rows and seconds of CPU for
        # stacks of our own that frame pointers describe well enough.
        self.skip_tables = {os.getpid()}
        self._queue: queue.Queue[tuple[str, int]] = queue.Queue()
        self._pending: set[tuple[str, int]] = set()
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put((_STOP, 0))
            self._thread.join(timeout=30)

    def sync(self, pid: int) -> None:
        self._put((_SYNC, pid))

    def setup(self, pid: int) -> None:
        """Set a process up now, on the caller's thread (before sampling starts)."""
        self._handle(_SYNC, pid)

    def remove(self, pid: int) -> None:
        self._put((_REMOVE, pid))

    def _put(self, item: tuple[str, int]) -> None:
        with self._pending_lock:
            if item in self._pending:
                return  # already queued: one sync reads the newest maps anyway
            self._pending.add(item)
        self._queue.put(item)

    def _run(self) -> None:
        while True:
            op, pid = self._queue.get()
            try:
                if op == _STOP:
                    return
                self._handle(op, pid)
            finally:
                self._queue.task_done()

    def _handle(self, op: str, pid: int) -> None:
        with self._pending_lock:
            self._pending.discard((op, pid))
        try:
            if op == _SYNC:
                info = self.processes.get(pid)
                if info is not None and info.maps:
                    # Python first: it takes milliseconds, tables can take 100s of them.
                    if self.python is not None:
                        self.python.sync(pid, info.maps)
                    if self.tables is not None and pid not in self.skip_tables:
                        self.tables.sync_process(pid, info.maps)
            else:
                if self.python is not None:
                    self.python.remove(pid)
                if self.tables is not None:
                    self.tables.remove_process(pid)
        except Exception:  # one bad binary must not stop unwinding for the rest
            self.errors += 1
            log.exception("process setup for pid %d failed", pid)


class ProcessWatcher:
    """Handles the BPF ring buffer's events (called on the event pump thread).

    Every new process is read from /proc at once (cheap, and the only chance
    for one that lives 20 ms), but unwind tables are built only for processes
    that have been sampled.
    """

    def __init__(self, processes: SharedProcesses, workers: Sequence[SetupWorker]) -> None:
        self.processes = processes
        self.workers = list(workers)
        self._unwound: set[int] = set()  # pids whose tables were asked for
        self.counters: dict[str, int] = {"exec": 0, "exit": 0, "unknown_pc": 0, "new_process": 0}

    def __call__(self, ev: abi.Event) -> None:
        pid = int(ev.key.pid)
        if pid == 0:
            return
        if ev.type == abi.EV_NEW_KEY:
            if not self.processes.known(pid):
                self.counters["new_process"] += 1
                self.processes.observe(pid)
            self._sync(pid, first=True)
        elif ev.type == abi.EV_EXEC:
            self.counters["exec"] += 1
            self.processes.forget(pid)
            self.processes.observe(pid)
            self._sync(pid, first=False)  # a new image for a process already sampled
        elif ev.type == abi.EV_EXIT:
            self.counters["exit"] += 1
            if self.processes.known(pid):
                self.processes.mark_exited(pid)
            if pid in self._unwound:
                self._unwound.discard(pid)
                for w in self.workers:
                    w.remove(pid)
        elif ev.type == abi.EV_UNKNOWN_PC:
            self.counters["unknown_pc"] += 1
            if self.processes.refresh_maps(pid) is not None:
                self._sync(pid, first=False)

    def _sync(self, pid: int, *, first: bool) -> None:
        if first and pid not in self._unwound:
            self._unwound.add(pid)
        elif first or pid not in self._unwound:
            return
        for w in self.workers:
            w.sync(pid)

    def forget(self, pids: set[int]) -> None:
        """Processes gone without an exit event (e.g. events lost)."""
        self._unwound -= pids


class EventPump:
    """Polls the ring buffer on its own thread until stopped."""

    def __init__(self, poll: Callable[[int], None]) -> None:
        self._poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kiln-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll(100)
            except Exception:
                log.exception("ring buffer poll failed")
                self._stop.wait(1.0)
