"""profiler.python_procs: which processes get a `py_procs` entry, and what it holds.

`py_proc` on every table row and on a real detection; `PythonProcesses` with
a recording stand-in for the BPF maps, on real child processes' maps: a
supported interpreter, a process without Python, interpreters too old to
support, and processes that vanish while they are being looked at.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import pytest

from profiler.bpf import abi
from profiler.procfs import MapEntry, parse_maps
from profiler.python_procs import PythonProcesses, py_proc
from profiler.unwind_tables import open_mapping
from symbolizer.interpreters import cpython
from symbolizer.interpreters.cpython import ABSENT
from tests.unit.test_linetable import INTERPRETERS, PYENV, interpreter_or_skip
from tests.unit.test_pycode import fake_info

# -- py_proc ------------------------------------------------------------------

# PyProc field -> CPythonOffsets field, where the names differ or not.
SAME_NAME = [
    "runtime_interpreters_head",
    "interp_tstate_head",
    "tstate_next",
    "tstate_thread_id",
    "tstate_frame",
    "frame_back",
    "frame_code",
    "frame_instr",
]
MAYBE_ABSENT = [
    "tstate_native_thread_id",
    "cframe_current_frame",
    "frame_owner",
    "frame_is_entry",
]


@pytest.mark.parametrize("minor", [minor for _, minor in cpython.SUPPORTED])
def test_py_proc_every_table_row(minor: int) -> None:
    info = fake_info(minor)
    o = info.offsets
    p = py_proc(info)
    assert p.runtime == info.runtime_address == 0x7F00_0000_0000
    assert p.code_type == info.code_type
    assert p.version == 0x300 | minor
    for name in SAME_NAME:
        assert getattr(p, name) == getattr(o, name), name
    for name in MAYBE_ABSENT:
        want = 0xFFFF if getattr(o, name) == ABSENT else getattr(o, name)
        assert getattr(p, name) == want, name
    assert p.instr_kind == o.frame_instr_kind
    assert p.owner_cstack == (0xFF if o.frame_owner_cstack == ABSENT else o.frame_owner_cstack)
    assert bytes(p._pad) == b"\0\0"


def test_py_proc_absent_and_inline_values() -> None:
    p38 = py_proc(fake_info(8))
    assert (p38.tstate_native_thread_id, p38.cframe_current_frame) == (0xFFFF, 0xFFFF)
    assert (p38.frame_owner, p38.frame_is_entry, p38.owner_cstack) == (0xFFFF, 0xFFFF, 0xFF)
    assert p38.code_bytecode == 0  # co_code is a bytes object: no inline offset
    assert p38.instr_kind == cpython.INSTR_LASTI_BYTES
    assert py_proc(fake_info(10)).instr_kind == cpython.INSTR_LASTI_UNITS
    p311 = py_proc(fake_info(11))
    assert (p311.frame_is_entry, p311.frame_owner, p311.owner_cstack) == (68, 69, 0xFF)
    assert (p311.cframe_current_frame, p311.code_bytecode) == (8, 184)
    assert p311.instr_kind == cpython.INSTR_POINTER
    p312 = py_proc(fake_info(12))
    assert (p312.frame_is_entry, p312.owner_cstack, p312.cframe_current_frame) == (0xFFFF, 3, 0)
    assert p312.code_bytecode == 192
    p313 = py_proc(fake_info(13))
    assert (p313.cframe_current_frame, p313.code_bytecode, p313.tstate_frame) == (0xFFFF, 200, 72)
    # An inline offset of a version whose bytecode is a bytes object is not passed on.
    o = replace(fake_info(12).offsets, code_bytecode_kind=cpython.CODE_BYTES_OBJECT)
    assert py_proc(replace(fake_info(12), offsets=o)).code_bytecode == 0


def test_py_proc_refuses_offsets_that_do_not_fit() -> None:
    info = fake_info(13)
    big = replace(info, offsets=replace(info.offsets, interp_tstate_head=0x11CB0))
    with pytest.raises((ValueError, OverflowError)):
        py_proc(big)


# -- PythonProcesses on real processes ------------------------------------------


class RecordingMaps:
    """Stands in for the BPF maps: records every set_python."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes | None]] = []

    def set_python(self, pid: int, proc: abi.PyProc | None) -> None:
        self.calls.append((pid, None if proc is None else bytes(proc)))

    def lookup_stack(self, half: int, stack_hash: int) -> None:
        return None


@dataclass
class Opener:
    """open_mapping, counted, and able to play a process that has exited."""

    opens: int = 0
    alive: bool = True

    def __call__(self, pid: int, entry: MapEntry) -> BinaryIO | None:
        self.opens += 1
        return open_mapping(pid, entry) if self.alive else None


@dataclass
class Child:
    pid: int
    maps: list[MapEntry]


WAIT = "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.readline()"


def settled_maps(pid: int) -> list[MapEntry]:
    """The maps once the dynamic loader is done: Popen returns as soon as exec
    has begun, before the new image (and later its libraries) are mapped."""
    deadline = time.monotonic() + 10
    maps = ""
    while True:
        again = Path(f"/proc/{pid}/maps").read_text()
        if again == maps and "/libc" in maps:
            return parse_maps(maps)
        assert time.monotonic() < deadline, f"the maps of {pid} did not settle"
        maps = again
        time.sleep(0.01)


@contextmanager
def running(argv: list[str], *, ready: bool) -> Iterator[Child]:
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as p:
        try:
            if ready:
                assert p.stdout is not None
                assert p.stdout.readline().strip() == "ready"
            yield Child(p.pid, settled_maps(p.pid))
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()


def python_child(label: str) -> AbstractContextManager[Child]:
    exe = dict(INTERPRETERS)[label]
    return running([str(interpreter_or_skip(label, exe)), "-c", WAIT], ready=True)


def pyenv_exe(version: str, name: str) -> Path:
    return interpreter_or_skip(f"pyenv-{version}", PYENV / version / "bin" / name)


def sleeper() -> AbstractContextManager[Child]:
    return running(["/bin/sleep", "30"], ready=False)


def warnings(caplog: pytest.LogCaptureFixture, pid: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith(f"pid {pid}:")
    ]


@pytest.mark.parametrize("label", ["pyenv-3.12.1", "debian-3.11"])
def test_python_process_is_set_up_once(label: str, caplog: pytest.LogCaptureFixture) -> None:
    bpf = RecordingMaps()
    procs = PythonProcesses(bpf)
    with python_child(label) as c, caplog.at_level(logging.INFO, logger="kiln.python"):
        info = procs.sync(c.pid, c.maps)
        assert info is not None
        want = cpython.detect(c.maps, lambda m: open_mapping(c.pid, m))
        assert info == want
        assert procs.info(c.pid) == info
        assert bpf.calls == [(c.pid, bytes(py_proc(info)))]
        p = abi.PyProc.from_buffer_copy(bpf.calls[0][1] or b"")
        assert p.runtime == info.runtime_address and p.code_type == info.code_type != 0
        assert p.version == (info.version_major << 8) | info.version_minor
        assert procs.sync(c.pid, c.maps) == info  # the same interpreter: nothing written
        assert len(bpf.calls) == 1
        assert procs.counters == {"detected": 1, "unsupported": 0}
        version = ".".join(map(str, info.version))
        assert any(f"pid {c.pid}: CPython {version} in" in r.getMessage() for r in caplog.records)
        assert warnings(caplog, c.pid) == []
        procs.remove(c.pid)
        assert bpf.calls[1:] == [(c.pid, None)]
        assert procs.info(c.pid) is None
        procs.remove(c.pid)  # nothing left to clear
        assert len(bpf.calls) == 2
        assert procs.sync(c.pid, c.maps) == info  # set up again after remove
        assert len(bpf.calls) == 3 and procs.counters["detected"] == 2


def test_non_python_process_is_cached_by_its_files(caplog: pytest.LogCaptureFixture) -> None:
    bpf = RecordingMaps()
    opener = Opener()
    procs = PythonProcesses(bpf, opener)
    with sleeper() as c, caplog.at_level(logging.DEBUG, logger="kiln.python"):
        assert any(m.file_path.endswith("/sleep") for m in c.maps)
        assert procs.sync(c.pid, c.maps) is None
        first = opener.opens
        assert first > 0
        assert procs.sync(c.pid, c.maps) is None
        assert procs.sync(c.pid + 1_000_000, c.maps) is None  # another process, same files
        assert opener.opens == first  # nothing opened again
        assert procs.info(c.pid) is None
        procs.remove(c.pid)
    assert bpf.calls == []
    assert procs.counters == {"detected": 0, "unsupported": 0}
    assert [
        r for r in caplog.records if r.name == "kiln.python" and r.levelno >= logging.INFO
    ] == []


@pytest.mark.parametrize(
    ("version", "name", "why"),
    [
        ("3.7.16", "python3.7", "CPython 3.7 is not supported"),
        ("2.7.18", "python2.7", "does not export _PyRuntime"),
        ("3.6.15", "python3.6", "does not export _PyRuntime"),
    ],
)
def test_unsupported_interpreter_warns_once(
    version: str, name: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    bpf = RecordingMaps()
    procs = PythonProcesses(bpf)
    exe = pyenv_exe(version, name)
    with running([str(exe), "-c", WAIT], ready=True) as c:
        with caplog.at_level(logging.WARNING, logger="kiln.python"):
            assert procs.sync(c.pid, c.maps) is None
            assert procs.counters["unsupported"] == 1
            assert procs.sync(c.pid, c.maps) is None
            assert procs.counters["unsupported"] == 2  # counted, but warned about once
        (message,) = warnings(caplog, c.pid)
        assert "Python frames unavailable, native only" in message
        assert why in message
        assert procs.info(c.pid) is None
        assert procs.counters["detected"] == 0
        # One warning per pid, even across remove (an exit event before a late sync).
        procs.remove(c.pid)
        with caplog.at_level(logging.WARNING, logger="kiln.python"):
            assert procs.sync(c.pid, c.maps) is None
        assert len(warnings(caplog, c.pid)) == 1
        assert procs.counters["unsupported"] == 3
    assert bpf.calls == []


def test_vanished_process_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    bpf = RecordingMaps()
    opener = Opener(alive=False)
    procs = PythonProcesses(bpf, opener)
    with python_child("pyenv-3.12.1") as c:
        with caplog.at_level(logging.DEBUG, logger="kiln.python"):
            assert procs.sync(c.pid, c.maps) is None
        assert opener.opens > 0
        assert bpf.calls == []
        assert procs.counters == {"detected": 0, "unsupported": 0}
        assert warnings(caplog, c.pid) == []
        assert any("gone before" in r.getMessage() for r in caplog.records)
        # Not remembered as "not Python": once readable it is detected.
        opener.alive = True
        info = procs.sync(c.pid, c.maps)
        assert info is not None
        assert bpf.calls == [(c.pid, bytes(py_proc(info)))]
        # Exiting while being looked at again: the entry goes, quietly.
        opener.alive = False
        assert procs.sync(c.pid, c.maps) is None
        assert bpf.calls[1:] == [(c.pid, None)]
        assert procs.info(c.pid) is None
        assert warnings(caplog, c.pid) == []


def test_interpreter_without_code_type(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stripped = replace(fake_info(12), code_type=0)

    def detect_reason(maps: object, open_file: object) -> cpython.Detection:
        return cpython.Detection(stripped, "")

    monkeypatch.setattr(cpython, "detect_reason", detect_reason)
    bpf = RecordingMaps()
    procs = PythonProcesses(bpf, lambda pid, m: None)
    maps = [MapEntry(0x1000, 0x2000, "r-xp", 0, 8, 1, 42, "/opt/bin/python3.12")]
    with caplog.at_level(logging.WARNING, logger="kiln.python"):
        assert procs.sync(os.getpid(), maps) is None
        assert procs.sync(os.getpid(), maps) is None
    assert bpf.calls == []
    assert procs.counters["unsupported"] == 2
    (message,) = warnings(caplog, os.getpid())
    assert "does not export PyCode_Type" in message


EXEC_SLEEP = (
    "import os, sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.readline(); "
    "os.execv('/bin/sleep', ['sleep', '30'])"
)


@dataclass
class Execing:
    pid: int
    maps: list[MapEntry]
    go: Callable[[], list[MapEntry]]  # exec /bin/sleep; its maps


@contextmanager
def python_then_sleep() -> Iterator[Execing]:
    """A CPython 3.12 process that execs /bin/sleep when told to (same pid)."""
    exe = interpreter_or_skip("pyenv-3.12.1", dict(INTERPRETERS)["pyenv-3.12.1"])
    with subprocess.Popen(
        [str(exe), "-c", EXEC_SLEEP], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as p:
        try:
            assert p.stdin is not None and p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
            stdin = p.stdin

            def go() -> list[MapEntry]:
                stdin.write("\n")
                stdin.flush()
                deadline = time.monotonic() + 10
                while not os.readlink(f"/proc/{p.pid}/exe").endswith("/sleep"):
                    assert time.monotonic() < deadline, "the child did not exec"
                    time.sleep(0.005)
                return settled_maps(p.pid)

            yield Execing(p.pid, parse_maps(Path(f"/proc/{p.pid}/maps").read_text()), go)
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_exec_into_a_cached_non_python_binary_clears_the_entry() -> None:
    # Two Python processes exec the same program (e.g. wrappers running a tool).
    bpf = RecordingMaps()
    procs = PythonProcesses(bpf)
    with python_then_sleep() as first, python_then_sleep() as second:
        assert procs.sync(first.pid, first.maps) is not None
        assert procs.sync(second.pid, second.maps) is not None
        assert procs.sync(first.pid, first.go()) is None  # sleep's files: not Python
        assert procs.info(first.pid) is None
        assert bpf.calls[-1] == (first.pid, None)
        # The second one's new image has the same files, now known not to be Python.
        assert procs.sync(second.pid, second.go()) is None
        assert procs.info(second.pid) is None
        assert bpf.calls[-1] == (second.pid, None)


def test_exec_into_an_unseen_non_python_binary_clears_the_entry() -> None:
    bpf = RecordingMaps()
    procs = PythonProcesses(bpf)
    with python_then_sleep() as py:
        info = procs.sync(py.pid, py.maps)
        assert info is not None
        maps = py.go()
        assert procs.sync(py.pid, maps) is None
        assert procs.info(py.pid) is None
        assert bpf.calls == [(py.pid, bytes(py_proc(info))), (py.pid, None)]
