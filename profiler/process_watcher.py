"""Turning kernel events into process knowledge, off the sampling path.

Two background threads serve the recorder: the event pump drains the BPF
ring buffer as soon as records arrive (so a process that lives 20 ms is
read from /proc while it is alive), and the unwind worker builds and loads
unwind tables, which can take a while for a big binary, without holding up
either the events or the windows.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from profiler.bpf import abi
from profiler.processes import ProcessInfo, ProcessTable
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


class UnwindWorker:
    """Loads unwind tables for processes in its own thread."""

    def __init__(self, tables: UnwindTables, processes: SharedProcesses) -> None:
        self.tables = tables
        self.processes = processes
        self._queue: queue.Queue[tuple[str, int]] = queue.Queue()
        self._pending: set[tuple[str, int]] = set()
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kiln-unwind", daemon=True)
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put((_STOP, 0))
            self._thread.join(timeout=30)

    def sync(self, pid: int) -> None:
        self._put((_SYNC, pid))

    def remove(self, pid: int) -> None:
        self._put((_REMOVE, pid))

    def _put(self, item: tuple[str, int]) -> None:
        with self._pending_lock:
            if item in self._pending:
                return  # already queued: one sync reads the newest maps anyway
            self._pending.add(item)
        self._queue.put(item)

    def drain(self) -> None:
        """Wait until everything queued so far is done (tests, shutdown)."""
        self._queue.join()

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
                    self.tables.sync_process(pid, info.maps)
            else:
                self.tables.remove_process(pid)
        except Exception:  # one bad binary must not stop unwinding for the rest
            self.errors += 1
            log.exception("unwind tables for pid %d failed", pid)


class ProcessWatcher:
    """Handles the BPF ring buffer's events (called on the event pump thread)."""

    def __init__(self, processes: SharedProcesses, unwind: UnwindWorker | None) -> None:
        self.processes = processes
        self.unwind = unwind
        self.counters: dict[str, int] = {"exec": 0, "exit": 0, "unknown_pc": 0, "new_process": 0}

    def __call__(self, ev: abi.Event) -> None:
        pid = int(ev.key.pid)
        if pid == 0:
            return
        if ev.type == abi.EV_NEW_KEY:
            if not self.processes.known(pid):
                self.counters["new_process"] += 1
                if self.processes.observe(pid) is not None and self.unwind:
                    self.unwind.sync(pid)
        elif ev.type == abi.EV_EXEC:
            self.counters["exec"] += 1
            self.processes.forget(pid)
            if self.processes.observe(pid) is not None and self.unwind:
                self.unwind.sync(pid)
        elif ev.type == abi.EV_EXIT:
            self.counters["exit"] += 1
            self.processes.mark_exited(pid)
            if self.unwind:
                self.unwind.remove(pid)
        elif ev.type == abi.EV_UNKNOWN_PC:
            self.counters["unknown_pc"] += 1
            if self.processes.refresh_maps(pid) is not None and self.unwind:
                self.unwind.sync(pid)


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
