"""symbolizer.python_stacks: decoding the walker's frames, naming them, merging.

`decode` and `merge` on plain data; `PythonSymbolizer` over synthetic process
memory (code objects laid out at the table's offsets, see test_pycode) and,
end to end, over a real interpreter's memory through /proc/PID/mem.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from profiler.bpf import abi
from profiler.procmem import ProcessMemory
from symbolizer import python_stacks
from symbolizer.interpreters.cpython import CPythonInfo
from symbolizer.profile import Frame, FrameKind
from symbolizer.python_stacks import (
    CODE_BITS,
    ENTRY,
    INSTR_MASK,
    NO_INSTR,
    PyFrameRef,
    PythonSymbolizer,
    decode,
    is_eval_frame,
    merge,
)
from tests.unit.test_pycode import (
    SUPPORTED_INTERPRETERS,
    FakeMemory,
    bytes_object,
    code_child,
    code_object,
    fake_info,
)


def pack(code: int, units: int | None = None, entry: bool = False) -> int:
    assert code % 8 == 0 and code < 1 << 47
    value = (code >> 3) | ((NO_INSTR if units is None else units) << CODE_BITS)
    return value | ENTRY if entry else value


# -- decode -------------------------------------------------------------------


def test_constants_match_the_bpf_abi() -> None:
    assert CODE_BITS == abi.PY_CODE_BITS == 44
    assert INSTR_MASK == abi.PY_INSTR_MASK == NO_INSTR == abi.PY_NO_INSTR == 0x7FFFF
    assert ENTRY == abi.PY_ENTRY == 1 << 63


@pytest.mark.parametrize(
    ("packed", "want"),
    [
        (0x8000_1000_0000_0002, PyFrameRef(0x10, 1, True)),
        (0x7FFF_F000_0000_0400, PyFrameRef(0x2000, None, False)),  # NO_INSTR: unknown
        (0x0070_0000_0000_1001, PyFrameRef(0x8008, 0x700, False)),
        (0x0000_0000_0000_1001, PyFrameRef(0x8008, 0, False)),  # offset 0 is known
        (0x7FFF_EFFF_FFFF_FFFF, PyFrameRef((1 << 47) - 8, 0x7FFFE, False)),
        (0xFFFF_FFFF_FFFF_FFFF, PyFrameRef((1 << 47) - 8, None, True)),
    ],
)
def test_decode_one(packed: int, want: PyFrameRef) -> None:
    assert decode([packed]) == [want]


def test_decode_entry_shims() -> None:
    a, b, c = pack(0x1000, 3), pack(0x2000, 5), pack(0x3000)
    ra, rb, rc = (
        PyFrameRef(0x1000, 3, False),
        PyFrameRef(0x2000, 5, False),
        PyFrameRef(0x3000, None, False),
    )
    assert decode([]) == []
    assert decode([0]) == []  # a leading shim marks nothing
    assert decode([0, a]) == [ra]
    assert decode([a, 0, b]) == [replace(ra, entry=True), rb]
    assert decode([a, b, 0, c, 0]) == [ra, replace(rb, entry=True), replace(rc, entry=True)]
    assert decode([a, 0, 0, b]) == [replace(ra, entry=True), rb]
    # The entry bit and a shim on the same frame.
    assert decode([pack(0x1000, 3, entry=True), 0]) == [replace(ra, entry=True)]
    assert decode([a, b, c]) == [ra, rb, rc]


# -- merge ----------------------------------------------------------------------

EVAL = Frame("_PyEval_EvalFrameDefault", address=0x5000)
CALL = Frame("_PyFunction_Vectorcall", address=0x5100)
LEAF = Frame("memcpy", address=0x7000)
MAIN = Frame("main", address=0x4000)
KERNEL = Frame("do_syscall_64", kind=FrameKind.KERNEL)


def py(name: str) -> Frame:
    return Frame(name, kind=FrameKind.PYTHON, system_name=name.rsplit(".", 1)[-1])


A, B, C, D = py("app.a"), py("app.b"), py("App.c"), py("d")


def names(frames: list[Frame]) -> list[str]:
    return [f.function for f in frames]


def test_merge_every_frame_an_entry() -> None:
    # 3.8-3.10: one eval loop call per Python function.
    native = [KERNEL, LEAF, EVAL, CALL, EVAL, MAIN]
    got = merge(native, [(A, True), (B, True)])
    assert got == [KERNEL, LEAF, A, CALL, B, MAIN]


def test_merge_groups() -> None:
    # 3.11+: one eval loop call runs several Python functions; the entry flag ends a group.
    native = [LEAF, EVAL, CALL, EVAL, MAIN]
    got = merge(native, [(A, False), (B, True), (C, False), (D, True)])
    assert got == [LEAF, A, B, CALL, C, D, MAIN]


def test_merge_more_eval_frames_than_groups() -> None:
    native = [LEAF, EVAL, CALL, EVAL, CALL, EVAL, MAIN]
    got = merge(native, [(A, False), (B, True)])
    assert got == [LEAF, A, B, CALL, EVAL, CALL, EVAL, MAIN]  # the rest stay native


def test_merge_leftovers_go_to_the_root_end() -> None:
    native = [LEAF, EVAL, CALL, EVAL]  # the native walk stopped early
    got = merge(native, [(A, True), (B, True), (C, False), (D, True)])
    assert got == [LEAF, A, CALL, B, C, D]
    assert merge([LEAF, EVAL, MAIN], [(A, True), (B, True)]) == [LEAF, A, MAIN, B]


def test_merge_last_group_without_entry_takes_the_rest() -> None:
    got = merge([EVAL, CALL, EVAL, MAIN], [(A, False), (B, False), (C, False)])
    assert got == [A, B, C, CALL, EVAL, MAIN]


def test_merge_without_eval_frames() -> None:
    assert merge([LEAF, MAIN], [(A, True), (B, False)]) == [LEAF, MAIN, A, B]
    assert merge([], [(A, True)]) == [A]
    assert merge([LEAF, EVAL, MAIN], []) == [LEAF, EVAL, MAIN]
    assert merge([], []) == []


def test_eval_frame_names() -> None:
    cold = Frame("_PyEval_EvalFrameDefault.cold", address=0x9000)
    assert is_eval_frame(cold)
    assert merge([LEAF, cold, MAIN], [(A, True)]) == [LEAF, A, MAIN]
    # The symbol's raw name decides when there is one.
    by_system = Frame("Python eval loop", system_name="_PyEval_EvalFrameDefault")
    assert is_eval_frame(by_system)
    assert not is_eval_frame(Frame("_PyEval_EvalFrameDefault", system_name="other"))
    assert not is_eval_frame(Frame("_PyEval_EvalFrame"))  # 3.8's wrapper, not the loop
    assert not is_eval_frame(Frame("PyEval_EvalCode"))
    # Kernel and Python frames are never replaced, whatever their name.
    kernel_named = Frame("_PyEval_EvalFrameDefault", kind=FrameKind.KERNEL)
    python_named = Frame("_PyEval_EvalFrameDefault", kind=FrameKind.PYTHON)
    assert not is_eval_frame(kernel_named) and not is_eval_frame(python_named)
    got = merge([kernel_named, python_named, EVAL, MAIN], [(A, True)])
    assert got == [kernel_named, python_named, A, MAIN]


# -- PythonSymbolizer over synthetic memory ----------------------------------------


class World:
    """Processes with synthetic memory; counts how often memory is opened."""

    def __init__(self) -> None:
        self.info = fake_info(12)
        self.infos: dict[int, CPythonInfo | None] = {}
        self.memories: dict[int, list[FakeMemory]] = {}
        self.memory = FakeMemory()
        o = self.info.offsets
        # 3.12 location table: unit 0 on the first line; unit 1 one line down.
        table = bytes_object(o, bytes([0x80, 0x00, 0x80 | (11 << 3), 0x00, 0x04]))
        self.a = code_object(
            self.memory,
            self.info,
            firstlineno=10,
            linetable=table,
            texts=("handle", "App.handle", "/srv/app.py"),
        )
        self.b = code_object(
            self.memory, self.info, firstlineno=20, texts=("<module>", "<module>", "/srv/main.py")
        )
        self.c = code_object(self.memory, self.info, texts=("c", "c", "/srv/c.py"))

    def open_memory(self, pid: int) -> FakeMemory:
        mem = FakeMemory(self.memory.regions)
        self.memories.setdefault(pid, []).append(mem)
        return mem

    def info_of(self, pid: int) -> CPythonInfo | None:
        return self.infos.get(pid, self.info)

    def symbolizer(self) -> PythonSymbolizer:
        return PythonSymbolizer(self.info_of, self.open_memory)

    def opens(self, pid: int) -> int:
        return len(self.memories.get(pid, []))

    def closed(self, pid: int) -> int:
        return sum(m.closed for m in self.memories.get(pid, []))


HANDLE = Frame(
    "App.handle",
    kind=FrameKind.PYTHON,
    system_name="handle",
    filename="/srv/app.py",
    line=11,
)
MODULE = Frame(
    "<module>", kind=FrameKind.PYTHON, system_name="<module>", filename="/srv/main.py", line=20
)


def test_resolve_names_and_lines() -> None:
    w = World()
    sym = w.symbolizer()
    got = sym.resolve(7, [pack(w.a, 1), 0, pack(w.b, None, entry=True)])
    assert got == [(HANDLE, True), (MODULE, True)]
    assert sym.resolve(7, [pack(w.a, 0)]) == [(replace(HANDLE, line=10), False)]
    assert sym.resolve(7, [pack(w.a, None)]) == [(replace(HANDLE, line=10), False)]
    assert sym.counters == {
        "stacks": 3,
        "frames": 4,
        "code_reads": 2,  # each code object read once
        "stacks_dropped": 0,
        "no_interpreter": 0,
    }
    assert w.opens(7) == 1


def test_cache_is_per_process() -> None:
    w = World()
    sym = w.symbolizer()
    reads = w.memory.reads
    assert sym.resolve(1, [pack(w.a, 1)]) == [(HANDLE, False)]
    assert sym.resolve(2, [pack(w.a, 1)]) == [(HANDLE, False)]
    assert sym.resolve(1, [pack(w.a, 1), pack(w.b, 0)]) == [(HANDLE, False), (MODULE, False)]
    assert sym.counters["code_reads"] == 3
    assert (w.opens(1), w.opens(2)) == (1, 1)
    assert w.memory.reads == reads  # the shared image was only read through the opened ones
    assert sum(m.reads for m in w.memories[1]) > 0


def test_unreadable_code_drops_the_stack_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    sym = w.symbolizer()
    bad = pack(0x10_0000_0000)  # nothing mapped there
    with caplog.at_level(logging.WARNING, logger="kiln.python"):
        assert sym.resolve(7, [pack(w.a, 1), bad, pack(w.b)]) is None
        assert sym.resolve(7, [bad]) is None
        assert sym.resolve(7, [pack(w.a, 1)]) == [(HANDLE, False)]  # other stacks still work
        assert sym.resolve(8, [bad]) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in warnings] == ["pid 7", "pid 8"]
    assert "code object at 0x1000000000 unreadable" in warnings[0].getMessage()
    assert "native frames kept" in warnings[0].getMessage()
    assert sym.counters["stacks_dropped"] == 3
    assert sym.counters["stacks"] == 1
    # Failures are not cached: every attempt reads again.
    assert sym.counters["code_reads"] == 4  # a, then the bad address three times


def test_damaged_code_object_is_dropped_not_misnamed(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    # A code object whose name pointer leads to a bytes object (freed and reused memory).
    o = w.info.offsets
    wrong = code_object(w.memory, w.info, name=bytes_object(o, b"looks like a name"))
    sym = w.symbolizer()
    with caplog.at_level(logging.WARNING, logger="kiln.python"):
        assert sym.resolve(3, [pack(wrong, 0)]) is None
    assert len(caplog.records) == 1
    assert sym.counters["stacks_dropped"] == 1


def test_no_interpreter() -> None:
    w = World()
    w.infos[5] = None
    sym = w.symbolizer()
    assert sym.resolve(5, [pack(w.a, 1)]) is None
    assert sym.counters["no_interpreter"] == 1
    assert sym.counters["stacks_dropped"] == 0
    assert w.opens(5) == 0


def test_unopenable_memory_drops_stacks(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    sym = PythonSymbolizer(w.info_of, lambda pid: None)
    with caplog.at_level(logging.WARNING, logger="kiln.python"):
        assert sym.resolve(4, [pack(w.a, 1)]) is None
        assert sym.resolve(4, [pack(w.a, 1)]) is None
    assert len(caplog.records) == 1
    assert sym.counters["stacks_dropped"] == 2
    assert sym.counters["code_reads"] == 0


def test_exited_process_keeps_its_cache() -> None:
    # After exit the tracker no longer knows the process; its samples still get names.
    w = World()
    sym = w.symbolizer()
    assert sym.resolve(7, [pack(w.a, 1)]) == [(HANDLE, False)]
    w.infos[7] = None
    assert sym.resolve(7, [pack(w.a, 1)]) == [(HANDLE, False)]
    assert sym.counters["code_reads"] == 1
    assert sym.counters["no_interpreter"] == 0
    # Its memory stays open until it is forgotten: new code objects still resolve.
    assert sym.resolve(7, [pack(w.b, 0)]) == [(MODULE, False)]
    assert sym.counters["code_reads"] == 2
    assert (w.opens(7), w.closed(7)) == (1, 0)


def test_equal_info_keeps_the_cache() -> None:
    w = World()
    sym = w.symbolizer()
    sym.resolve(7, [pack(w.a, 1)])
    w.infos[7] = replace(w.info)  # detected again: a new but equal object
    assert w.infos[7] is not w.info
    assert sym.resolve(7, [pack(w.a, 1)]) == [(HANDLE, False)]
    assert sym.counters["code_reads"] == 1
    assert (w.opens(7), w.closed(7)) == (1, 0)


def test_different_info_resets_the_cache(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    sym = w.symbolizer()
    with caplog.at_level(logging.WARNING, logger="kiln.python"):
        assert sym.resolve(7, [pack(0x10_0000_0000)]) is None  # warned once
        sym.resolve(7, [pack(w.a, 1)])
        w.infos[7] = replace(w.info, runtime_address=w.info.runtime_address + 0x1000)  # exec
        assert sym.resolve(7, [pack(w.a, 1)]) == [(HANDLE, False)]
        assert sym.resolve(7, [pack(0x10_0000_0000)]) is None  # a new image: warned again
    assert sym.counters["code_reads"] == 4
    assert (w.opens(7), w.closed(7)) == (2, 1)  # the old image's memory was closed
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_forget_retain_close() -> None:
    w = World()
    sym = w.symbolizer()
    for pid in (1, 2, 3):
        sym.resolve(pid, [pack(w.a, 1)])
    assert sym.counters["code_reads"] == 3
    sym.forget(1)
    assert w.closed(1) == 1
    sym.forget(1)  # twice is harmless
    sym.forget(99)
    assert sym.resolve(1, [pack(w.a, 1)]) == [(HANDLE, False)]  # read again
    assert sym.counters["code_reads"] == 4 and w.opens(1) == 2
    sym.retain({1, 3})
    assert [w.closed(p) for p in (1, 2, 3)] == [1, 1, 0]
    sym.resolve(2, [pack(w.a, 1)])
    sym.resolve(3, [pack(w.a, 1)])
    assert sym.counters["code_reads"] == 5  # only pid 2 was read again
    sym.close()
    assert [w.closed(p) for p in (1, 2, 3)] == [2, 2, 1]
    assert all(m.closed == 1 for ms in w.memories.values() for m in ms)
    sym.close()  # idempotent
    assert all(m.closed == 1 for ms in w.memories.values() for m in ms)


def test_retain_forgets_processes_that_only_failed(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    sym = w.symbolizer()
    with caplog.at_level(logging.WARNING, logger="kiln.python"):
        sym.resolve(6, [pack(0x10_0000_0000)])
        sym.retain(set())
        sym.resolve(6, [pack(0x10_0000_0000)])  # a new process with a recycled pid
    assert w.closed(6) == 1
    assert len(caplog.records) == 2


def test_code_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(python_stacks, "MAX_CODES_PER_PROCESS", 2)
    w = World()
    sym = w.symbolizer()
    for code in (w.a, w.b, w.c):  # the third one clears the full cache
        sym.resolve(7, [pack(code)])
    assert sym.counters["code_reads"] == 3
    sym.resolve(7, [pack(w.c)])
    assert sym.counters["code_reads"] == 3  # kept
    sym.resolve(7, [pack(w.a)])
    assert sym.counters["code_reads"] == 4  # evicted, read again


def test_empty_stack() -> None:
    w = World()
    sym = w.symbolizer()
    assert sym.resolve(7, []) == []
    assert sym.resolve(7, [0]) == []
    assert sym.counters["stacks"] == 2 and sym.counters["frames"] == 0


# -- end to end over a real interpreter's memory -------------------------------------

REAL = [i for i in SUPPORTED_INTERPRETERS if i[0] in ("pyenv-3.8.18", "pyenv-3.12.1")]


@pytest.mark.parametrize(("label", "exe"), REAL, ids=[i[0] for i in REAL])
def test_real_process(label: str, exe: Path) -> None:
    with code_child(label, exe) as c:
        codes = {r["name"]: r for r in c.report["codes"]}
        nested, method, five = codes["nested_long"], codes["method"], codes["wait_fünf"]
        unit, line = next(
            (u, ln) for u, ln in nested["lines"] if ln and ln > nested["firstlineno"] + 3
        )
        sym = PythonSymbolizer(lambda pid: c.info, ProcessMemory)
        try:
            packed = [
                pack(nested["address"], unit),
                0,
                pack(method["address"], None, entry=True),
                pack(five["address"], 0, entry=True),
            ]
            got = sym.resolve(c.pid, packed)
            assert got is not None
            qual = c.info.version >= (3, 11)
            assert [(f.function, f.system_name, f.line, entry) for f, entry in got] == [
                (
                    "outer.<locals>.nested_long" if qual else "nested_long",
                    "nested_long",
                    line,
                    True,
                ),
                ("Greeter.method" if qual else "method", "method", method["firstlineno"], True),
                ("wait_fünf", "wait_fünf", five["lines"][0][1], True),
            ]
            assert all(f.filename.endswith("py_code_addrs.py") for f, _ in got)
            assert all(f.kind == FrameKind.PYTHON for f, _ in got)
            native = [LEAF, EVAL, CALL, EVAL, CALL, EVAL, MAIN]
            merged = merge(native, got)
            assert names(merged)[1] == got[0][0].function
            assert merged[1:6] == [got[0][0], CALL, got[1][0], CALL, got[2][0]]
            # An address inside the code object is not a code object: dropped.
            assert sym.resolve(c.pid, [pack(nested["address"] + 16)]) is None
            assert sym.counters["stacks_dropped"] == 1
        finally:
            sym.close()
