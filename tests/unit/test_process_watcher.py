"""Events → process knowledge: who gets read, who gets unwind tables."""

from __future__ import annotations

import os
import subprocess
import sys

from profiler.bpf import abi
from profiler.process_watcher import ProcessWatcher, SetupWorker, SharedProcesses
from profiler.processes import ProcessTable


class RecordingWorker:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def sync(self, pid: int) -> None:
        self.calls.append(("sync", pid))

    def remove(self, pid: int) -> None:
        self.calls.append(("remove", pid))


def event(kind: int, pid: int) -> abi.Event:
    ev = abi.Event(type=kind)
    ev.key.pid = pid
    return ev


def test_tables_only_for_sampled_processes_and_new_images_of_them() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        procs = SharedProcesses(ProcessTable())
        worker = RecordingWorker()
        w = ProcessWatcher(procs, [worker])  # type: ignore[list-item]
        w(event(abi.EV_EXEC, child.pid))  # exec of a process never sampled: read, no tables
        assert procs.get(child.pid) is not None
        assert worker.calls == []
        w(event(abi.EV_NEW_KEY, child.pid))  # first sample
        w(event(abi.EV_NEW_KEY, child.pid))  # more samples: nothing new
        assert worker.calls == [("sync", child.pid)]
        w(event(abi.EV_EXEC, child.pid))  # a sampled process execs: new tables
        w(event(abi.EV_EXIT, child.pid))
        assert worker.calls == [("sync", child.pid), ("sync", child.pid), ("remove", child.pid)]
        w(event(abi.EV_EXIT, os.getpid() + 10_000_000))  # unknown pid: ignored
        assert w.counters["exec"] == 2 and w.counters["exit"] == 2
    finally:
        child.kill()
        child.wait()


class RecordingTables:
    def __init__(self) -> None:
        self.synced: list[int] = []

    def sync_process(self, pid: int, maps: object) -> None:
        self.synced.append(pid)


class RecordingPython:
    def __init__(self) -> None:
        self.synced: list[int] = []

    def sync(self, pid: int, maps: object) -> None:
        self.synced.append(pid)


def test_no_tables_for_kiln_itself_but_python_frames() -> None:
    procs = SharedProcesses(ProcessTable())
    tables, python = RecordingTables(), RecordingPython()
    worker = SetupWorker(tables, procs, python)  # type: ignore[arg-type]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for pid in (os.getpid(), child.pid):
            procs.observe(pid)
            worker.setup(pid)
        assert tables.synced == [child.pid]  # LLVM's tables would cost seconds
        assert python.synced == [os.getpid(), child.pid]  # Kiln profiles itself
    finally:
        child.kill()
        child.wait()
