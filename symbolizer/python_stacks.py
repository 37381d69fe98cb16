"""Python frames from the BPF walker: decode, name, and merge into native stacks.

The walker sends packed frames (see bpf/kiln.h): code object address,
instruction offset in code units, and whether the frame is the first one its
C eval loop call ran. `PythonSymbolizer` reads each code object once per
process (cached) and `merge` puts the Python frames where the native
`_PyEval_EvalFrameDefault` frames running them were, so a stack reads
native callers -> Python functions -> native callees (C extensions, libc).

Native frames between Python frames (CPython's call machinery) are kept:
nothing the sampler saw is hidden, and the UI can filter by frame kind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from symbolizer.interpreters.cpython import CPythonInfo
from symbolizer.interpreters.pycode import CodeInfo, CodeReadError, read_code
from symbolizer.profile import Frame, FrameKind

log = logging.getLogger("kiln.python")

CODE_BITS = 44
INSTR_MASK = 0x7FFFF
NO_INSTR = 0x7FFFF
ENTRY = 1 << 63

EVAL_FUNCTION = "_PyEval_EvalFrameDefault"
MAX_CODES_PER_PROCESS = 1 << 16


@dataclass(frozen=True, slots=True)
class PyFrameRef:
    code: int  # code object address
    instr_units: int | None  # None: unknown
    entry: bool  # the first frame of its eval loop call


def decode(packed: Sequence[int]) -> list[PyFrameRef]:
    """The walker's packed frames, leaf first; entry shims (0) mark the frame before."""
    out: list[PyFrameRef] = []
    for v in packed:
        if v == 0:
            if out:
                out[-1] = replace(out[-1], entry=True)
            continue
        units = (v >> CODE_BITS) & INSTR_MASK
        out.append(
            PyFrameRef(
                code=(v & ((1 << CODE_BITS) - 1)) << 3,
                instr_units=None if units == NO_INSTR else units,
                entry=bool(v & ENTRY),
            )
        )
    return out


class Memory(Protocol):
    """A process's memory (profiler.procmem.ProcessMemory in production)."""

    def read(self, address: int, size: int) -> bytes | None: ...
    def close(self) -> None: ...


PyFrame = tuple[Frame, bool]
"""A named Python frame and whether it is the first of its eval loop call."""


def is_eval_frame(f: Frame) -> bool:
    return f.kind == FrameKind.NATIVE and (f.system_name or f.function).startswith(EVAL_FUNCTION)


def merge(native: Sequence[Frame], python: Sequence[PyFrame]) -> list[Frame]:
    """Native frames (leaf first) with each eval loop frame replaced by the
    Python frames it ran: the leaf-most eval frame takes the leaf-most frames
    up to and including the first entry frame, and so on. Python frames left
    over (the native walk stopped early) go at the root end."""
    out: list[Frame] = []
    i = 0
    for f in native:
        if i < len(python) and is_eval_frame(f):
            while i < len(python):
                frame, entry = python[i]
                out.append(frame)
                i += 1
                if entry:
                    break
        else:
            out.append(f)
    out.extend(frame for frame, _ in python[i:])
    return out


class PythonSymbolizer:
    """Names the Python frames of CPython processes, caching code objects per process.

    A stack with any frame that cannot be read (exited process, freed code
    object, damaged memory) is dropped as a whole: the sample keeps its
    native frames, a counter says so, and each process is warned about once.
    """

    def __init__(
        self,
        info_of: Callable[[int], CPythonInfo | None],
        open_memory: Callable[[int], Memory | None],
    ) -> None:
        self._info_of = info_of
        self._open_memory = open_memory
        self._codes: dict[int, dict[int, CodeInfo]] = {}
        self._readers: dict[int, Memory | None] = {}
        self._warned: set[int] = set()
        self._info_seen: dict[int, CPythonInfo] = {}
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {
            "stacks": 0,
            "frames": 0,
            "code_reads": 0,
            "stacks_dropped": 0,
            "no_interpreter": 0,
        }

    def resolve(self, pid: int, packed: Sequence[int]) -> list[PyFrame] | None:
        """Named frames (leaf first, with entry flags), or None to keep native only.

        Thread-safe: the event thread names stacks as they first appear, the
        window closer names them all again (from the cache)."""
        with self._lock:
            return self._resolve(pid, packed)

    def _resolve(self, pid: int, packed: Sequence[int]) -> list[PyFrame] | None:
        # After exit the tracker forgets the process, but its cached code
        # objects still name the samples it left in the open window.
        info = self._info_of(pid) or self._info_seen.get(pid)
        if info is None:
            self.counters["no_interpreter"] += 1
            return None
        # Compared by value: finding the same interpreter again (e.g. while a
        # process exits) must not throw away the code objects read so far.
        if self._info_seen.get(pid) != info:  # a new process or a new image (exec)
            self._forget(pid)
            self._info_seen[pid] = info
        refs = decode(packed)
        codes = self._codes.setdefault(pid, {})
        out: list[PyFrame] = []
        version = info.version
        for ref in refs:
            code = codes.get(ref.code)
            if code is None:
                # Failures are not cached: the address may hold a new code object later.
                code = self._read(pid, ref.code, info)
                if code is None:
                    self._drop(pid, f"code object at 0x{ref.code:x} unreadable")
                    return None
                if len(codes) >= MAX_CODES_PER_PROCESS:
                    codes.clear()
                codes[ref.code] = code
            frame = Frame(
                code.qualname,
                kind=FrameKind.PYTHON,
                system_name=code.name,
                filename=code.filename,
                line=code.line(version, ref.instr_units),
            )
            out.append((frame, ref.entry))
        self.counters["stacks"] += 1
        self.counters["frames"] += len(out)
        return out

    def _read(self, pid: int, address: int, info: CPythonInfo) -> CodeInfo | None:
        if pid not in self._readers:
            self._readers[pid] = self._open_memory(pid)
        reader = self._readers[pid]
        if reader is None:
            return None
        self.counters["code_reads"] += 1
        try:
            return read_code(reader.read, address, info)
        except CodeReadError as e:
            log.debug("pid %d: %s", pid, e)
            return None

    def _drop(self, pid: int, why: str) -> None:
        self.counters["stacks_dropped"] += 1
        if pid not in self._warned:
            self._warned.add(pid)
            log.warning("pid %d: Python frames dropped, native frames kept (%s)", pid, why)

    def forget(self, pid: int) -> None:
        """A process exited or exec'd: its code objects and memory are gone."""
        with self._lock:
            self._forget(pid)

    def _forget(self, pid: int) -> None:
        self._codes.pop(pid, None)
        self._info_seen.pop(pid, None)
        reader = self._readers.pop(pid, None)
        if reader is not None:
            reader.close()
        self._warned.discard(pid)

    def retain(self, pids: set[int]) -> None:
        """Forget every process not in `pids` (they exited)."""
        with self._lock:
            for pid in (set(self._codes) | set(self._info_seen)) - pids:
                self._forget(pid)

    def close(self) -> None:
        with self._lock:
            for pid in list(self._info_seen):
                self._forget(pid)
