"""symbolizer/unwind.py: CFI -> unwind rows, on hand-built CFI, real binaries and fuzz.

Real binaries are the fixtures in tests/fixtures/unwind_*.c, built here with
gcc -O2 -fomit-frame-pointer, and the system's libc. Their rows are checked
against `readelf --debug-dump=frames-interp`, an independent CFI interpreter.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler.bpf import abi
from symbolizer.elf import read_elf
from symbolizer.unwind import (
    DEFAULT_LIMITS,
    ROW_DTYPE,
    SOURCE_BOTH,
    SOURCE_EH_FRAME,
    Limits,
    UnwindError,
    UnwindTable,
    parse_cfi,
    parse_unwind_rows,
)
from symbolizer.unwind_index import build_chunks, lookup
from tests.conftest import build_c

LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
NONE, RSP, RBP, PLT, END = (int(t) for t in abi.CfaType)
SAME, OFFSET, UNDEF = (int(t) for t in abi.RbpType)

Rule = tuple[int, int, int, int]  # cfa_type, cfa_offset, rbp_type, rbp_offset
NONE_RULE: Rule = (NONE, 0, SAME, 0)

needs_binutils = pytest.mark.skipif(
    not (shutil.which("readelf") and shutil.which("objcopy")), reason="binutils not installed"
)
needs_libc = pytest.mark.skipif(not LIBC.exists(), reason=f"{LIBC} not present")


# -- helpers -----------------------------------------------------------------


def rows_of(table: UnwindTable) -> list[tuple[int, Rule]]:
    return [
        (int(r["pc"]), (int(r["cfa_type"]), int(r["cfa_offset"]), int(r["rbp_type"]),
                        int(r["rbp_offset"])))
        for r in table.rows
    ]  # fmt: skip


def rule_at(rows: npt.NDArray[np.void], pc: int) -> Rule:
    """The rule in effect at pc (NONE before the first row)."""
    i = int(np.searchsorted(rows["pc"], np.uint64(pc), side="right")) - 1
    if i < 0:
        return NONE_RULE
    r = rows[i]
    return (int(r["cfa_type"]), int(r["cfa_offset"]), int(r["rbp_type"]), int(r["rbp_offset"]))


def check_invariants(table: UnwindTable) -> None:
    """What the BPF side relies on, whatever the input was."""
    rows = table.rows
    assert rows.dtype == ROW_DTYPE
    if len(rows) == 0:
        return
    pcs = rows["pc"]
    assert np.all(pcs[1:] > pcs[:-1])
    assert np.all(rows["cfa_type"] <= END)
    assert np.all(rows["rbp_type"] <= UNDEF)
    assert rows["cfa_type"][-1] == NONE
    stop = (rows["cfa_type"] == NONE) | (rows["cfa_type"] == END)
    assert np.all(rows["cfa_offset"][stop] == 0)
    assert np.all(rows["cfa_offset"][rows["cfa_type"] == RSP] >= 8)
    assert np.all(rows["rbp_offset"][rows["rbp_type"] != OFFSET] == 0)
    # No two consecutive rows with the same rule.
    r = rows[["cfa_type", "cfa_offset", "rbp_type", "rbp_offset"]]
    assert np.all(r[1:] != r[:-1])
    assert table.stats.rows == len(rows)


def uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        done = (n == 0 and not b & 0x40) or (n == -1 and b & 0x40)
        out.append(b | (0 if done else 0x80))
        if done:
            return bytes(out)


# DW_CFA_* instruction builders (DWARF 5, section 6.4.2).
def def_cfa(reg: int, off: int) -> bytes:
    return b"\x0c" + uleb(reg) + uleb(off)


def def_cfa_offset(off: int) -> bytes:
    return b"\x0e" + uleb(off)


def def_cfa_register(reg: int) -> bytes:
    return b"\x0d" + uleb(reg)


def def_cfa_expression(expr: bytes) -> bytes:
    return b"\x0f" + uleb(len(expr)) + expr


def offset(reg: int, factored: int) -> bytes:
    return bytes([0x80 | reg]) + uleb(factored)


def advance(delta: int) -> bytes:
    if delta < 0x40:
        return bytes([0x40 | delta])
    if delta < 0x100:
        return b"\x02" + bytes([delta])
    if delta < 0x10000:
        return b"\x03" + struct.pack("<H", delta)
    return b"\x04" + struct.pack("<I", delta)


def undefined(reg: int) -> bytes:
    return b"\x07" + uleb(reg)


def same_value(reg: int) -> bytes:
    return b"\x08" + uleb(reg)


def register(reg: int, reg2: int) -> bytes:
    return b"\x09" + uleb(reg) + uleb(reg2)


def restore(reg: int) -> bytes:
    return bytes([0xC0 | reg])


REMEMBER, RESTORE_STATE = b"\x0a", b"\x0b"
CIE_INIT = def_cfa(7, 8) + offset(16, 1)  # CFA = rsp+8, return address at CFA-8
PLT_EXPR_11 = bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22])
PLT_EXPR_10 = PLT_EXPR_11[:6] + b"\x3a" + PLT_EXPR_11[7:]


class DebugFrame:
    """Builds a .debug_frame section: 32-bit DWARF, absolute 8-byte addresses."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def cie(self, instrs: bytes = CIE_INIT, *, caf: int = 1, daf: int = -8, ra: int = 16) -> int:
        off = len(self.buf)
        body = struct.pack("<I", 0xFFFFFFFF) + b"\x01\x00" + uleb(caf) + sleb(daf)
        body += bytes([ra]) + instrs
        self.buf += struct.pack("<I", len(body)) + body
        return off

    def fde(self, cie: int, start: int, size: int, instrs: bytes = b"") -> None:
        body = struct.pack("<IQQ", cie, start, size) + instrs
        self.buf += struct.pack("<I", len(body)) + body

    def parse(
        self, *, limits: Limits = DEFAULT_LIMITS, exec_ranges: list[tuple[int, int]] | None = None
    ) -> UnwindTable:
        table = parse_cfi(
            bytes(self.buf), 0, debug_frame=True, limits=limits, exec_ranges=exec_ranges
        )
        check_invariants(table)
        return table


def one_fde(instrs: bytes, start: int = 0x1000, size: int = 0x100) -> UnwindTable:
    d = DebugFrame()
    d.fde(d.cie(), start, size, instrs)
    return d.parse()


# -- hand-built CFI: rules -----------------------------------------------------


def test_prologue_rules() -> None:
    t = one_fde(
        advance(1) + def_cfa_offset(16) + offset(6, 2)  # push %rbp
        + advance(3) + def_cfa_register(6)  # mov %rsp,%rbp
        + advance(0x20) + def_cfa(7, 8) + restore(6),  # leave
        size=0x40,
    )  # fmt: skip
    assert rows_of(t) == [
        (0x1000, (RSP, 8, SAME, 0)),
        (0x1001, (RSP, 16, OFFSET, -16)),
        (0x1004, (RBP, 16, OFFSET, -16)),
        (0x1024, (RSP, 8, SAME, 0)),
        (0x1040, NONE_RULE),
    ]
    assert t.stats.fdes == 1 and t.stats.unsupported == 0 and t.stats.source == "debug_frame"


def test_advance_forms_and_code_alignment() -> None:
    d = DebugFrame()
    cie = d.cie(caf=4)
    instrs = advance(1) + def_cfa_offset(16) + advance(0x80) + def_cfa_offset(24)
    instrs += advance(0x4000) + def_cfa_offset(32) + advance(0x10001) + def_cfa_offset(40)
    d.fde(cie, 0x10000, 0x100000, instrs)
    assert [pc for pc, _ in rows_of(d.parse())] == [
        0x10000, 0x10004, 0x10204, 0x20204, 0x60208, 0x110000,
    ]  # fmt: skip


def test_remember_and_restore_state_include_the_cfa() -> None:
    t = one_fde(
        advance(1) + def_cfa_offset(16) + offset(6, 2) + advance(1) + REMEMBER
        + def_cfa_offset(8) + restore(6) + advance(1) + RESTORE_STATE + advance(1)
        + def_cfa_offset(8),
        size=0x10,
    )  # fmt: skip
    assert rows_of(t) == [
        (0x1000, (RSP, 8, SAME, 0)),
        (0x1001, (RSP, 16, OFFSET, -16)),
        (0x1002, (RSP, 8, SAME, 0)),  # an early return's epilogue
        (0x1003, (RSP, 16, OFFSET, -16)),  # back in the body
        (0x1004, (RSP, 8, OFFSET, -16)),
        (0x1010, NONE_RULE),
    ]


@pytest.mark.parametrize("expr", [PLT_EXPR_11, PLT_EXPR_10])
def test_plt_expression(expr: bytes) -> None:
    t = one_fde(advance(16) + def_cfa_expression(expr))
    assert rule_at(t.rows, 0x1010) == (PLT, 8, SAME, 0)
    assert t.stats.unsupported == 0


def test_simple_register_expressions_are_followed() -> None:
    t = one_fde(def_cfa_expression(b"\x77" + sleb(40)) + advance(1)
                + def_cfa_expression(b"\x76" + sleb(16)))  # fmt: skip
    assert rule_at(t.rows, 0x1000) == (RSP, 40, SAME, 0)
    assert rule_at(t.rows, 0x1001) == (RBP, 16, SAME, 0)


@pytest.mark.parametrize(
    "instrs",
    [
        def_cfa_expression(b"\x77\x08\x06"),  # DW_OP_breg7 8; DW_OP_deref (signal frames)
        def_cfa(3, 16),  # CFA from rbx
        def_cfa(7, 0),  # CFA below the return address
        def_cfa(7, 1 << 31),  # does not fit s32
        offset(16, 2),  # return address not at CFA-8
        register(16, 3),  # return address in a register
        offset(6, 5000),  # rbp saved at CFA-40000: does not fit s16
    ],
)
def test_unsupported_rules_become_none(instrs: bytes) -> None:
    t = one_fde(advance(4) + instrs + advance(4) + def_cfa(7, 8) + offset(6, 2) + offset(16, 1))
    assert rule_at(t.rows, 0x1000) == (RSP, 8, SAME, 0)
    assert rule_at(t.rows, 0x1004) == NONE_RULE
    assert rule_at(t.rows, 0x1008) == (RSP, 8, OFFSET, -16)
    assert t.stats.unsupported == 1


def test_undefined_return_address_is_end() -> None:
    t = one_fde(undefined(16) + advance(8) + offset(16, 1))
    assert rule_at(t.rows, 0x1000) == (END, 0, SAME, 0)
    assert rule_at(t.rows, 0x1008) == (RSP, 8, SAME, 0)


@pytest.mark.parametrize(
    ("instrs", "want"),
    [
        (same_value(6), (RSP, 8, SAME, 0)),
        (undefined(6), (RSP, 8, UNDEF, 0)),
        (register(6, 3), (RSP, 8, UNDEF, 0)),
        (offset(6, 3) + restore(6), (RSP, 8, SAME, 0)),
        (b"\x11\x06" + sleb(-3), (RSP, 8, OFFSET, 24)),  # offset_extended_sf: -3 * -8
        (b"\x2f\x06" + uleb(2), (RSP, 8, OFFSET, 16)),  # GNU_negative_offset_extended
        (b"\x14\x06" + uleb(2), (RSP, 8, UNDEF, 0)),  # val_offset: rbp = CFA-16, not saved
    ],
)
def test_rbp_rules(instrs: bytes, want: Rule) -> None:
    assert rule_at(one_fde(instrs).rows, 0x1000) == want


def test_restore_returns_to_the_cie_rule() -> None:
    d = DebugFrame()
    cie = d.cie(CIE_INIT + offset(6, 2))
    d.fde(cie, 0x1000, 0x10, same_value(6) + advance(2) + restore(6))
    t = d.parse()
    assert rule_at(t.rows, 0x1000) == (RSP, 8, SAME, 0)
    assert rule_at(t.rows, 0x1002) == (RSP, 8, OFFSET, -16)


def test_other_registers_and_gnu_args_size_are_skipped() -> None:
    t = one_fde(offset(3, 2) + b"\x2e\x10" + b"\x10\x03\x02\x77\x00" + advance(1)
                + def_cfa_offset(16))  # fmt: skip
    assert rows_of(t) == [(0x1000, (RSP, 8, SAME, 0)), (0x1001, (RSP, 16, SAME, 0)),
                          (0x1100, NONE_RULE)]  # fmt: skip


def test_gaps_adjacent_fdes_and_dedupe() -> None:
    d = DebugFrame()
    cie = d.cie()
    d.fde(cie, 0x1000, 0x10)
    d.fde(cie, 0x1010, 0x10)  # adjacent, same rule: no row at 0x1010
    d.fde(cie, 0x1030, 0x10, advance(4) + def_cfa_offset(8))  # after a gap
    assert rows_of(d.parse()) == [
        (0x1000, (RSP, 8, SAME, 0)),
        (0x1020, NONE_RULE),
        (0x1030, (RSP, 8, SAME, 0)),
        (0x1040, NONE_RULE),
    ]


def test_overlapping_fdes_later_start_wins() -> None:
    d = DebugFrame()
    cie = d.cie()
    d.fde(cie, 0x1000, 0x100, def_cfa_offset(16))
    d.fde(cie, 0x1040, 0x20, def_cfa_offset(32))  # inside the first
    d.fde(cie, 0x2000, 0x10, def_cfa_offset(48))
    d.fde(cie, 0x2000, 0x10, def_cfa_offset(64))  # same start: the later one in the section
    t = d.parse()
    assert rows_of(t) == [
        (0x1000, (RSP, 16, SAME, 0)),
        (0x1040, (RSP, 32, SAME, 0)),
        (0x1060, NONE_RULE),
        (0x2000, (RSP, 64, SAME, 0)),
        (0x2010, NONE_RULE),
    ]
    assert t.stats.overlaps == 2


def test_exec_ranges_clip_fdes() -> None:
    d = DebugFrame()
    cie = d.cie()
    d.fde(cie, 0x0, 0x100)  # e.g. a discarded function's FDE at address 0
    d.fde(cie, 0x1000, 0x100)
    d.fde(cie, 0x1F80, 0x100)  # runs past the segment
    t = d.parse(exec_ranges=[(0x1000, 0x2000)])
    assert rows_of(t) == [(0x1000, (RSP, 8, SAME, 0)), (0x1100, NONE_RULE),
                          (0x1F80, (RSP, 8, SAME, 0)), (0x2000, NONE_RULE)]  # fmt: skip
    assert t.stats.outside == 1


def test_malformed_fde_reads_as_none_from_the_bad_instruction() -> None:
    d = DebugFrame()
    cie = d.cie()
    d.fde(cie, 0x1000, 0x100, advance(4) + def_cfa_offset(16) + advance(4) + b"\x3f\x01")
    d.fde(cie, 0x2000, 0x10, b"\x0b")  # restore_state with nothing remembered
    d.fde(cie, 0x3000, 0x10)
    t = d.parse()
    assert rows_of(t) == [
        (0x1000, (RSP, 8, SAME, 0)),
        (0x1004, (RSP, 16, SAME, 0)),
        (0x1008, NONE_RULE),
        (0x3000, (RSP, 8, SAME, 0)),
        (0x3010, NONE_RULE),
    ]
    assert t.stats.bad_entries == 2


def test_bad_cie_skips_its_fdes_only() -> None:
    d = DebugFrame()
    good = d.cie()
    bad = d.cie(caf=0)  # code alignment 0 is invalid
    d.fde(bad, 0x1000, 0x10)
    d.fde(good, 0x2000, 0x10)
    d.fde(len(d.buf) + 4096, 0x3000, 0x10)  # CIE pointer outside the section
    t = d.parse()
    assert rows_of(t) == [(0x2000, (RSP, 8, SAME, 0)), (0x2010, NONE_RULE)]
    assert t.stats.bad_entries == 2


def test_caps() -> None:
    d = DebugFrame()
    cie = d.cie()
    for i in range(20):
        d.fde(cie, 0x1000 + 0x100 * i, 0x10, advance(1) + def_cfa_offset(16))
    with pytest.raises(UnwindError, match="FDEs"):
        d.parse(limits=Limits(max_fdes=10))
    with pytest.raises(UnwindError, match="rows"):
        d.parse(limits=Limits(max_rows=10))
    t = d.parse(limits=Limits(max_insns=1))  # each FDE stops after its first instruction
    assert t.stats.bad_entries == 20
    assert rule_at(t.rows, 0x1000) == NONE_RULE


def test_deep_remember_state_is_capped() -> None:
    t = one_fde(REMEMBER * 100 + advance(1) + def_cfa_offset(16))
    assert rows_of(t) == []
    assert t.stats.bad_entries == 1


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("<I", 0xFFFFFFF0),  # a reserved length value
        struct.pack("<I", 0x7FFFFFFF),  # runs past the section
        struct.pack("<IQ", 0xFFFFFFFF, 1 << 62),  # 64-bit length, past the section
        struct.pack("<II", 2, 0),  # too short to hold its id
    ],
)
def test_hostile_lengths_stop_the_walk(header: bytes) -> None:
    d = DebugFrame()
    d.fde(d.cie(), 0x1000, 0x10)
    d.buf += header + bytes(32)
    t = d.parse()
    assert rows_of(t) == [(0x1000, (RSP, 8, SAME, 0)), (0x1010, NONE_RULE)]
    assert t.stats.bad_entries == 1


# -- real binaries ---------------------------------------------------------------


@pytest.fixture(scope="module")
def bins(fixture_build_dir: Path) -> dict[str, Path]:
    d = fixture_build_dir
    opt = ("-O2", "-fomit-frame-pointer")
    lib = build_c(d, "unwind_lib.c", "libkilnunwind.so", *opt, "-shared", "-fPIC")
    link = ("-Wl,--no-as-needed", str(lib))
    out = {
        "lib": lib,
        "pie": build_c(d, "unwind_prog.c", "unwind_pie", *opt, "-fPIE", "-pie", *link),
        "nopie": build_c(d, "unwind_prog.c", "unwind_nopie", *opt, "-fno-pie", "-no-pie", *link),
        # No linker-made FDEs for the PLT: the synthetic rows take over.
        "noplt": build_c(d, "unwind_prog.c", "unwind_noplt", *opt,
                         "-Wl,--no-ld-generated-unwind-info", *link),
        # IBT PLT (.plt.sec, endbr64 in every .plt entry), no PLT FDEs either.
        "ibt": build_c(d, "unwind_prog.c", "unwind_ibt", *opt, "-fcf-protection",
                       "-Wl,-z,ibtplt", "-Wl,--no-ld-generated-unwind-info", *link),
        # .debug_frame instead of .eh_frame for our functions (crt files keep theirs).
        "dbg": build_c(d, "unwind_prog.c", "unwind_dbg", *opt, "-g",
                       "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", *link),
    }  # fmt: skip
    return out


def parse_path(path: Path, debug: Path | None = None) -> UnwindTable:
    with path.open("rb") as f:
        if debug is None:
            t = parse_unwind_rows(f)
        else:
            with debug.open("rb") as g:
                t = parse_unwind_rows(f, g)
    check_invariants(t)
    return t


def sized_functions(path: Path) -> list[tuple[str, int, int]]:
    syms = read_elf(path.read_bytes()).symbols
    return [
        (name, int(start), int(start) + int(size))
        for name, start, size in zip(syms.names, syms.starts, syms.sizes, strict=True)
        if size
    ]


def assert_covered(rows: npt.NDArray[np.void], funcs: list[tuple[str, int, int]]) -> None:
    for name, lo, hi in funcs:
        pcs = np.arange(lo, hi, dtype=np.uint64)
        i = np.searchsorted(rows["pc"], pcs, side="right") - 1
        assert np.all(i >= 0), name
        types = rows["cfa_type"][i]
        assert np.all(types != NONE), (name, [hex(int(p)) for p in pcs[types == NONE]][:5])


@pytest.mark.parametrize("name", ["pie", "nopie", "lib", "noplt", "ibt", "dbg"])
def test_every_function_is_covered(bins: dict[str, Path], name: str) -> None:
    funcs = sized_functions(bins[name])
    assert len(funcs) >= 3
    assert_covered(parse_path(bins[name]).rows, funcs)


@pytest.mark.parametrize("name", ["pie", "nopie", "lib", "dbg"])
def test_function_entry_is_rsp_plus_8(bins: dict[str, Path], name: str) -> None:
    rows = parse_path(bins[name]).rows
    for fname, lo, _ in sized_functions(bins[name]):
        if fname != "_start":
            assert rule_at(rows, lo) == (RSP, 8, SAME, 0), fname


def test_pushes_and_frame_pointer_rules(bins: dict[str, Path]) -> None:
    rows = parse_path(bins["pie"]).rows
    funcs = {n: (lo, hi) for n, lo, hi in sized_functions(bins["pie"])}
    lo, hi = funcs["kiln_vla"]
    rules = {rule_at(rows, pc) for pc in range(lo, hi)}
    assert (RSP, 16, OFFSET, -16) in rules  # after push %rbp
    assert (RBP, 16, OFFSET, -16) in rules  # after mov %rsp,%rbp
    lo, hi = funcs["main"]
    offsets = {rule_at(rows, pc)[1] for pc in range(lo, hi)}
    assert {8, 16, 24} <= offsets


@pytest.mark.parametrize("name", ["pie", "nopie", "ibt"])
def test_start_is_end(bins: dict[str, Path], name: str) -> None:
    rows = parse_path(bins[name]).rows
    funcs = {n: (lo, hi) for n, lo, hi in sized_functions(bins[name])}
    lo, hi = funcs["_start"]
    assert all(rule_at(rows, pc)[0] == END for pc in range(lo, hi))


def section_range(path: Path, name: str) -> tuple[int, int]:
    out = subprocess.run(["readelf", "-SW", str(path)], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    m = re.search(rf"\s{re.escape(name)}\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", out)
    assert m, name
    return int(m[1], 16), int(m[1], 16) + int(m[2], 16)


@needs_binutils
def test_plt_rows_from_the_linker_fde(bins: dict[str, Path]) -> None:
    t = parse_path(bins["pie"])
    lo, hi = section_range(bins["pie"], ".plt")
    assert rule_at(t.rows, lo) == (RSP, 16, SAME, 0)
    assert rule_at(t.rows, lo + 6) == (RSP, 24, SAME, 0)
    assert all(rule_at(t.rows, pc) == (PLT, 8, SAME, 0) for pc in range(lo + 16, hi))
    assert t.stats.plt_rows == 0


@needs_binutils
def test_synthetic_plt_rows(bins: dict[str, Path]) -> None:
    t = parse_path(bins["noplt"])
    lo, hi = section_range(bins["noplt"], ".plt")
    assert rule_at(t.rows, lo) == (RSP, 16, SAME, 0)
    assert rule_at(t.rows, lo + 6) == (RSP, 24, SAME, 0)
    assert all(rule_at(t.rows, pc) == (PLT, 8, SAME, 0) for pc in range(lo + 16, hi))
    glo, ghi = section_range(bins["noplt"], ".plt.got")
    assert all(rule_at(t.rows, pc) == (RSP, 8, SAME, 0) for pc in range(glo, ghi))
    assert t.stats.plt_rows > 0


@needs_binutils
def test_synthetic_ibt_plt_rows(bins: dict[str, Path]) -> None:
    t = parse_path(bins["ibt"])
    lo, hi = section_range(bins["ibt"], ".plt")
    for stub in range(lo + 16, hi, 16):  # endbr64 (4); push $n (5); bnd jmp .plt
        assert [rule_at(t.rows, stub + i)[1] for i in range(16)] == [8] * 9 + [16] * 7
    slo, shi = section_range(bins["ibt"], ".plt.sec")
    assert all(rule_at(t.rows, pc) == (RSP, 8, SAME, 0) for pc in range(slo, shi))


def test_debug_frame(bins: dict[str, Path]) -> None:
    t = parse_path(bins["dbg"])
    assert t.stats.source == SOURCE_BOTH  # crt files' .eh_frame + our .debug_frame
    assert_covered(t.rows, sized_functions(bins["dbg"]))
    pie = parse_path(bins["pie"])
    assert pie.stats.source == SOURCE_EH_FRAME
    funcs = {n: (lo, hi) for n, lo, hi in sized_functions(bins["dbg"])}
    lo, hi = funcs["kiln_vla"]
    assert (RBP, 16, OFFSET, -16) in {rule_at(t.rows, pc) for pc in range(lo, hi)}


@needs_binutils
@pytest.mark.parametrize("compress", [False, True])
def test_separate_debug_file(bins: dict[str, Path], tmp_path: Path, compress: bool) -> None:
    debug, stripped = tmp_path / "prog.debug", tmp_path / "prog"
    flags = ["--compress-debug-sections=zlib"] if compress else []
    subprocess.run(["objcopy", "--only-keep-debug", *flags, str(bins["dbg"]), str(debug)],
                   check=True)  # fmt: skip
    subprocess.run(["objcopy", "--strip-debug", str(bins["dbg"]), str(stripped)], check=True)
    funcs = [f for f in sized_functions(bins["dbg"]) if f[0].startswith("kiln_")]
    alone = parse_path(stripped)
    assert alone.stats.source == SOURCE_EH_FRAME
    assert all(rule_at(alone.rows, lo) == NONE_RULE for _, lo, _ in funcs)
    both = parse_path(stripped, debug)
    assert_covered(both.rows, funcs)
    assert rows_of(both) == rows_of(parse_path(bins["dbg"]))


def test_bytes_and_file_objects_agree(bins: dict[str, Path]) -> None:
    data = bins["lib"].read_bytes()
    a, b = parse_unwind_rows(data), parse_unwind_rows(io.BytesIO(data))
    assert rows_of(a) == rows_of(b) == rows_of(parse_path(bins["lib"]))


def test_eh_frame_found_without_section_headers(bins: dict[str, Path]) -> None:
    data = bytearray(bins["pie"].read_bytes())
    struct.pack_into("<Q", data, 40, 0)  # e_shoff
    struct.pack_into("<HHH", data, 58, 0, 0, 0)  # e_shentsize, e_shnum, e_shstrndx
    t = parse_unwind_rows(bytes(data))
    check_invariants(t)
    full = parse_path(bins["pie"])
    assert rows_of(t) == rows_of(full)  # the PLT has an FDE here, so nothing is missing


def section_header_offset(data: bytes, name: str) -> int:
    (shoff,) = struct.unpack_from("<Q", data, 40)
    shnum, shstrndx = struct.unpack_from("<HH", data, 60)
    (strtab_off,) = struct.unpack_from("<Q", data, shoff + shstrndx * 64 + 24)
    for i in range(shnum):
        (name_off,) = struct.unpack_from("<I", data, shoff + i * 64)
        start = strtab_off + name_off
        if data[start : data.index(b"\0", start)] == name.encode():
            return shoff + i * 64
    raise AssertionError(name)


def test_eh_frame_of_type_x86_64_unwind(bins: dict[str, Path]) -> None:
    """lld gives .eh_frame the type SHT_X86_64_UNWIND on x86-64."""
    data = bytearray(bins["pie"].read_bytes())
    struct.pack_into("<I", data, section_header_offset(data, ".eh_frame") + 4, 0x70000001)
    assert rows_of(parse_unwind_rows(bytes(data))) == rows_of(parse_path(bins["pie"]))


def test_a_bad_debug_file_does_not_cost_the_main_rows(bins: dict[str, Path]) -> None:
    t = parse_unwind_rows(bins["pie"].read_bytes(), b"not an ELF file at all")
    assert rows_of(t) == rows_of(parse_path(bins["pie"]))
    assert t.stats.skipped_sections == 1


@needs_libc
def test_libc_thread_entries_end() -> None:
    t = parse_path(LIBC)
    syms = read_elf(LIBC.read_bytes()).symbols
    clone = syms.names.index("__clone")
    lo = int(syms.starts[clone])
    hi = lo + int(syms.sizes[clone])
    rows = t.rows
    inside = rows[(rows["pc"] >= lo) & (rows["pc"] < hi)]
    assert END in inside["cfa_type"]  # the child's side of clone()
    assert np.count_nonzero(rows["cfa_type"] == END) >= 2  # ... and clone3's
    assert t.stats.source == SOURCE_EH_FRAME
    assert t.stats.fdes > 1000


# -- against readelf -------------------------------------------------------------

_FDE_RE = re.compile(
    r"^[0-9a-f]+ [0-9a-f]+ [0-9a-f]+ FDE cie=([0-9a-f]+) pc=([0-9a-f]+)\.\.([0-9a-f]+)"
)
_CIE_RE = re.compile(r"^([0-9a-f]+) [0-9a-f]+ [0-9a-f]+ CIE")
_ROW_RE = re.compile(r"^([0-9a-f]{16}) +(.*)$")
_CELL_RE = re.compile(r"\S+(?: \([^)]*\))?")  # "c-16", "u", "r10 (r10)"


def readelf_frames(path: Path, section: str) -> list[tuple[int, int, list[tuple[int, str]]]]:
    """FDEs from readelf's frames-interp: (start, end, [(loc, expected rule as text)])."""
    # readelf exits 1 for libc without saying why (its .gnu_debuglink is not
    # found, presumably): judge by the output instead.
    out = subprocess.run(["readelf", "-W", "--debug-dump=frames-interp", str(path)],
                         capture_output=True, text=True).stdout  # fmt: skip
    assert f"Contents of the {section} section" in out
    fdes: list[tuple[int, int, list[tuple[int, str]]]] = []
    cie_rows: dict[int, list[tuple[int, str]]] = {}
    cur: list[tuple[int, str]] | None = None
    cols: list[str] = []
    in_section = False
    for line in out.splitlines():
        if line.startswith("Contents of the "):
            in_section = line.startswith(f"Contents of the {section} section")
            cur = None
            continue
        if not in_section:
            continue
        if m := _CIE_RE.match(line):
            cur = cie_rows.setdefault(int(m[1], 16), [])
        elif m := _FDE_RE.match(line):
            start, end = int(m[2], 16), int(m[3], 16)
            cur = []
            fdes.append((start, end, cur))
            cur_cie = int(m[1], 16)
            if start < end:
                cur.append((start, f"@cie{cur_cie}"))  # the CIE's rule until the first row
        elif line.strip().startswith("LOC"):
            cols = line.split()
        elif (m := _ROW_RE.match(line)) and cur is not None:
            cells = dict(zip(cols[1:], _CELL_RE.findall(m[2]), strict=False))
            text = "|".join([cells["CFA"], cells.get("rbp", "u"), cells.get("ra", "u")])
            loc = int(m[1], 16)
            if cur and cur[-1][0] == loc and cur[-1][1].startswith("@cie"):
                cur.pop()
            cur.append((loc, text))
    resolved = []
    for start, end, rows in fdes:
        fixed = []
        for loc, text in rows:
            if text.startswith("@cie"):
                cie = cie_rows[int(text[4:])]
                text = cie[0][1] if cie else "exp|u|u"
            fixed.append((loc, text))
        resolved.append((start, end, fixed))
    return resolved


def expected_rule(text: str) -> set[Rule]:
    """Rules readelf's row text allows (an expression CFA may be PLT, a register, or NONE)."""
    cfa, rbp, ra = text.split("|")
    if ra == "u":
        return {(END, 0, SAME, 0)}
    if ra != "c-8":
        return {NONE_RULE}
    if rbp.startswith("c"):
        rbp_rule = (OFFSET, int(rbp[1:]))
    elif rbp in ("u", "s"):
        rbp_rule = (SAME, 0)
    else:
        rbp_rule = (UNDEF, 0)
    if cfa == "exp":
        return {NONE_RULE, (PLT, 8, *rbp_rule)} | {(t, o, *rbp_rule) for t in (RSP, RBP)
                                                   for o in range(8, 4096)}  # fmt: skip
    m = re.fullmatch(r"(rsp|rbp)([+-]\d+)", cfa)
    if not m:
        return {NONE_RULE}
    off = int(m[2])
    if m[1] == "rsp" and off < 8:
        return {NONE_RULE}
    return {(RSP if m[1] == "rsp" else RBP, off, *rbp_rule)}


def compare_with_readelf(path: Path, section: str, rows: npt.NDArray[np.void]) -> int:
    fdes = readelf_frames(path, section)
    starts = sorted(s for s, e, _ in fdes if e > s)
    checked = 0
    for start, end, table in fdes:
        if end <= start:
            continue
        for i, (loc, text) in enumerate(table):
            if loc >= end:
                break
            got = rule_at(rows, loc)
            assert got in expected_rule(text), (path.name, hex(start), hex(loc), text, got)
            nxt = table[i + 1][0] if i + 1 < len(table) else end
            assert rule_at(rows, nxt - 1) == got, (hex(loc), hex(nxt))  # no row in between
            checked += 1
        if end not in starts:
            assert rule_at(rows, end) == NONE_RULE, hex(end)
    return checked


@needs_binutils
@pytest.mark.parametrize("name", ["pie", "nopie", "lib"])
def test_fixture_rows_match_readelf(bins: dict[str, Path], name: str) -> None:
    assert compare_with_readelf(bins[name], ".eh_frame", parse_path(bins[name]).rows) > 10


@needs_binutils
def test_debug_frame_rows_match_readelf(bins: dict[str, Path]) -> None:
    assert compare_with_readelf(bins["dbg"], ".debug_frame", parse_path(bins["dbg"]).rows) > 5


@needs_binutils
@needs_libc
def test_libc_rows_match_readelf() -> None:
    t = parse_path(LIBC)
    assert compare_with_readelf(LIBC, ".eh_frame", t.rows) > 10_000
    # The index answers like the rows for every row start (and the byte before it).
    chunks = build_chunks(t.rows)
    for pc in t.rows["pc"][:-1].tolist():
        for a in (pc, pc - 1):
            want = rule_at(t.rows, a)
            row = lookup(chunks, a)
            got = NONE_RULE if row is None else rule_at(row.reshape(1), a)
            assert got == want, hex(a)


# -- bad input -------------------------------------------------------------------


def test_not_elf_and_short_input() -> None:
    for data in (b"", b"\x7fELF", b"MZ" + bytes(100), bytes(64)):
        with pytest.raises(UnwindError):
            parse_unwind_rows(data)


def test_other_machines_and_classes_are_refused(bins: dict[str, Path]) -> None:
    data = bytearray(bins["pie"].read_bytes())
    struct.pack_into("<H", data, 18, 183)  # EM_AARCH64
    with pytest.raises(UnwindError, match="x86-64"):
        parse_unwind_rows(bytes(data))
    data = bytearray(bins["pie"].read_bytes())
    data[4] = 1  # ELFCLASS32
    with pytest.raises(UnwindError, match="64-bit"):
        parse_unwind_rows(bytes(data))


def test_object_files_are_refused(fixture_build_dir: Path) -> None:
    obj = build_c(fixture_build_dir, "unwind_lib.c", "unwind_lib.o", "-O2", "-c")
    with pytest.raises(UnwindError, match="executable"):
        parse_unwind_rows(obj.read_bytes())


@pytest.fixture(scope="module")
def lib_image(bins: dict[str, Path]) -> tuple[bytes, int, int, int]:
    """The fixture library's bytes and its .eh_frame's (offset, size, address)."""
    data = bins["lib"].read_bytes()
    out = subprocess.run(["readelf", "-SW", str(bins["lib"])], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    m = re.search(r"\s\.eh_frame\s+PROGBITS\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", out)
    assert m
    return data, int(m[2], 16), int(m[3], 16), int(m[1], 16)


def parse_must_not_misbehave(data: bytes) -> None:
    try:
        t = parse_unwind_rows(data)
    except UnwindError:
        return
    check_invariants(t)
    build_chunks(t.rows)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@needs_binutils
@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)), min_size=1,
                      max_size=8))  # fmt: skip
def test_fuzz_eh_frame_bit_flips(
    lib_image: tuple[bytes, int, int, int], flips: list[tuple[int, int]]
) -> None:
    data, off, size, _ = lib_image
    buf = bytearray(data)
    for pos, bit in flips:
        buf[off + pos % size] ^= 1 << bit
    parse_must_not_misbehave(bytes(buf))


@needs_binutils
@FUZZ
@given(cut=st.integers(0, 1 << 20), junk=st.binary(max_size=64))
def test_fuzz_eh_frame_truncated(
    lib_image: tuple[bytes, int, int, int], cut: int, junk: bytes
) -> None:
    data, off, size, _ = lib_image
    cut %= size
    buf = bytearray(data)
    buf[off + cut : off + size] = (junk + bytes(size))[: size - cut]  # the section ends early
    parse_must_not_misbehave(bytes(buf))
    parse_must_not_misbehave(data[: off + cut])  # the file ends inside the section


@needs_binutils
@FUZZ
@given(section=st.binary(min_size=0, max_size=512))
def test_fuzz_random_section(lib_image: tuple[bytes, int, int, int], section: bytes) -> None:
    data, off, size, addr = lib_image
    buf = bytearray(data)
    buf[off : off + size] = (section + bytes(size))[:size]
    parse_must_not_misbehave(bytes(buf))
    for debug_frame in (False, True):
        try:
            t = parse_cfi(section, addr, debug_frame=debug_frame)
        except UnwindError:
            continue
        check_invariants(t)
        build_chunks(t.rows)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 0x3000), st.integers(0, 0x400), st.binary(max_size=24)),
                max_size=12))  # fmt: skip
def test_fuzz_structured_fdes(fdes: list[tuple[int, int, bytes]]) -> None:
    """Well-framed entries with random instructions: the interpreter's own edge cases."""
    d = DebugFrame()
    cie = d.cie()
    for start, size, instrs in fdes:
        d.fde(cie, start, size, instrs)
    t = d.parse(limits=Limits(max_insns=64))
    build_chunks(t.rows)
