"""Which processes run CPython, and telling the BPF walker how to read them.

For each sampled process (on the setup worker's thread) the maps are checked
for an interpreter (symbolizer.interpreters.cpython.detect); a supported one
gets a `kiln_py_proc` in the `py_procs` map, so its next samples carry Python
stacks. An unsupported or stripped interpreter leaves the process with
native frames only, one warning and a counter. Processes without Python are
remembered by the files they map, so looking costs once per binary.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import BinaryIO

from profiler.bpf import abi
from profiler.bpf.loader import PythonMaps
from profiler.procfs import MapEntry
from profiler.unwind_tables import FileKey, file_key, open_mapping
from symbolizer.interpreters import cpython
from symbolizer.interpreters.cpython import ABSENT, CPythonInfo

log = logging.getLogger("kiln.python")

MAX_NEGATIVE = 4096


def py_proc(info: CPythonInfo) -> abi.PyProc:
    """The walker's view of one interpreter (see bpf/kiln.h); ValueError if an
    offset does not fit its 16-bit field."""
    if not _fits(info):
        raise ValueError(f"{info.path}: an offset does not fit the walker's 16-bit fields")
    o = info.offsets

    def off(v: int) -> int:
        return abi.PY_ABSENT if v == ABSENT else v

    return abi.PyProc(
        runtime=info.runtime_address,
        code_type=info.code_type,
        version=(info.version_major << 8) | info.version_minor,
        runtime_interpreters_head=o.runtime_interpreters_head,
        interp_tstate_head=o.interp_tstate_head,
        tstate_next=o.tstate_next,
        tstate_native_thread_id=off(o.tstate_native_thread_id),
        tstate_thread_id=o.tstate_thread_id,
        tstate_frame=o.tstate_frame,
        cframe_current_frame=off(o.cframe_current_frame),
        frame_back=o.frame_back,
        frame_code=o.frame_code,
        frame_instr=o.frame_instr,
        frame_owner=off(o.frame_owner),
        frame_is_entry=off(o.frame_is_entry),
        code_bytecode=o.code_bytecode if o.code_bytecode_kind == cpython.CODE_INLINE else 0,
        instr_kind=o.frame_instr_kind,
        owner_cstack=0xFF if o.frame_owner_cstack == ABSENT else o.frame_owner_cstack,
    )


def _fits(info: CPythonInfo) -> bool:
    """Every offset fits the walker's 16-bit fields (0xffff means absent)."""
    return all(v == ABSENT or 0 <= v < abi.PY_ABSENT for v in dataclasses.astuple(info.offsets))


def _vanished(reason: str) -> bool:
    """Every mapped file failed to open: the process exited (or is exiting)."""
    return all(part.endswith(": cannot open") for part in reason.split("; "))


def _looks_like_python(maps: Sequence[MapEntry]) -> bool:
    return any("python" in m.file_path.rsplit("/", 1)[-1] for m in maps if m.is_file)


class PythonProcesses:
    """CPython detection per process, and the BPF `py_procs` entries that follow."""

    def __init__(
        self,
        bpf: PythonMaps,
        open_file: Callable[[int, MapEntry], BinaryIO | None] = open_mapping,
    ) -> None:
        self._bpf = bpf
        self._open_file = open_file
        self._lock = threading.Lock()
        self._infos: dict[int, CPythonInfo] = {}
        self._not_python: set[tuple[FileKey, ...]] = set()
        self._warned: set[int] = set()
        self.counters: dict[str, int] = {"detected": 0, "unsupported": 0}

    def info(self, pid: int) -> CPythonInfo | None:
        with self._lock:
            return self._infos.get(pid)

    def sync(self, pid: int, maps: Sequence[MapEntry]) -> CPythonInfo | None:
        """Look (again) for an interpreter in pid, e.g. after exec or dlopen."""
        key = tuple(sorted({file_key(m) for m in maps if m.is_file and m.offset == 0}))
        if key in self._not_python:
            self.remove(pid)  # e.g. a Python process that exec'd a known non-Python binary
            return None
        found = cpython.detect_reason(maps, lambda m: self._open_file(pid, m))
        info = found.info
        if info is not None and not _fits(info):
            found = cpython.Detection(None, f"{info.path}: offsets too large for the walker")
            info = None
        with self._lock:
            old = self._infos.get(pid)
            if info is None:
                self._infos.pop(pid, None)
        if info is None:
            if old is not None:
                self._bpf.set_python(pid, None)
            if _vanished(found.reason):
                log.debug("pid %d: gone before its interpreter could be read", pid)
            elif _looks_like_python(maps):
                self._unsupported(pid, found.reason)
            elif len(self._not_python) < MAX_NEGATIVE:
                self._not_python.add(key)
            return None
        if not info.code_type:
            self._unsupported(pid, f"{info.path} does not export PyCode_Type")
            return None
        if old == info:
            return info
        self._bpf.set_python(pid, py_proc(info))
        with self._lock:
            self._infos[pid] = info
        self.counters["detected"] += 1
        log.info(
            "pid %d: CPython %d.%d.%d in %s (%s offsets)",
            pid,
            *info.version,
            info.path,
            info.offsets_source,
        )
        return info

    def _unsupported(self, pid: int, reason: str) -> None:
        self.counters["unsupported"] += 1
        if pid not in self._warned:
            if len(self._warned) >= MAX_NEGATIVE:
                self._warned.clear()
            self._warned.add(pid)
            log.warning("pid %d: Python frames unavailable, native only (%s)", pid, reason)

    def remove(self, pid: int) -> None:
        with self._lock:
            had = self._infos.pop(pid, None)
        if had is not None:
            self._bpf.set_python(pid, None)
