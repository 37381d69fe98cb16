"""Unwind rows from `.eh_frame` / `.debug_frame`: what the BPF unwinder follows.

`parse_unwind_rows(f)` turns an x86-64 ELF file's call frame information
(DWARF CFI, as described by the DWARF spec section 6.4 and the LSB's
`.eh_frame` chapter) into one table of `abi.UnwindRow`, sorted by pc: from
each row's pc until the next row's, the caller's frame is found by

    cfa_type RSP / RBP:  CFA = rsp / rbp + cfa_offset; return address at CFA - 8
    cfa_type PLT:        a PLT stub: CFA = rsp + 8, + 8 when (pc & 15) >= 11
    cfa_type END:        the return address is undefined: the outermost frame
    cfa_type NONE:       no usable rule (a gap between FDEs, or a rule the BPF
                         program cannot evaluate): the stack is truncated here
    rbp_type OFFSET:     the caller's rbp is saved at CFA + rbp_offset
    rbp_type SAME/UNDEF: rbp unchanged / not recoverable past this frame

Sources, by priority where they overlap: the file's `.eh_frame`, its
`.debug_frame`, then the same two sections of an optional separate debug file,
then synthetic rows for PLT sections no FDE covers. FDEs are clipped to the
file's executable PT_LOAD segments; where two FDEs of one source overlap, the
later-starting one wins (at equal starts, the later one in the section).

The CFI interpreter is our own compact one over `bytes` (pyelftools decodes
/usr/bin/python3.11's CFI in ~2.8 s, builds an object per instruction and
stops at opcodes it does not know; this reads it in a fraction of that).
Only the rules for rsp (the CFA), rbp (6) and the return address (16) are
tracked; instructions for other registers are decoded and skipped.

Whatever the input, the only exception that leaves this module is
`UnwindError`, and work is linear in the input with hard caps (`Limits`):
lengths are checked against the section, pointers against the section and
the segments, and every row handed out has a type in range.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from profiler.bpf import abi
from symbolizer.elf import ElfError, ElfInput

ROW_DTYPE = abi.numpy_dtype(abi.UnwindRow)
"""numpy record dtype of `struct kiln_unwind_row` (16 bytes)."""

EM_X86_64 = 62
REG_RBP = 6
REG_RSP = 7
REG_RA = 16

U64_MASK = (1 << 64) - 1
S32_MIN, S32_MAX = -(1 << 31), (1 << 31) - 1
S16_MIN, S16_MAX = -(1 << 15), (1 << 15) - 1

# CFA expressions the binutils linker emits for lazy `.plt` entries:
#   DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_lit11 (or lit10);
#   DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus
# i.e. rsp + 8, + 8 more once the stub's `push` has run. Both become PLT rows;
# the BPF program applies the lit11 threshold, so for the lit10 variant the one
# byte at stub offset 10 unwinds with a CFA 8 too low.
PLT_EXPRESSIONS = frozenset(
    bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A, lit, 0x2A, 0x33, 0x24, 0x22]) for lit in (0x3B, 0x3A)
)

SOURCE_EH_FRAME = "eh_frame"
SOURCE_DEBUG_FRAME = "debug_frame"
SOURCE_BOTH = "both"
SOURCE_NONE = "none"


class UnwindError(ElfError):
    """No unwind table can be built from this input (not x86-64, corrupt, too large).

    Callers fall back to frame-pointer unwinding for the file.
    """


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps that bound the work any input can cause."""

    max_fdes: int = 1_000_000
    """FDEs per section; real binaries have up to a few hundred thousand."""
    max_rows: int = 4_000_000
    """CFI rows per section before merging."""
    max_insns: int = 100_000
    """Instructions interpreted per FDE; the rest of a longer FDE reads as NONE."""
    max_section: int = 1 << 28
    """Bytes of one (decompressed) CFI section."""
    max_fde_range: int = 1 << 30
    """Bytes one FDE may cover; a larger pc_range is corrupt."""
    max_state_depth: int = 64
    """DW_CFA_remember_state nesting."""


DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class UnwindStats:
    """What went into a table, and what could not."""

    fdes: int = 0
    """FDEs read (all sources), before clipping."""
    cies: int = 0
    """CIEs read."""
    rows: int = 0
    """Rows in the final table."""
    unsupported: int = 0
    """CFI rows whose rule the BPF unwinder cannot follow, turned into NONE (an
    unknown CFA expression or register, a return address not at CFA-8, an
    offset that does not fit the row)."""
    bad_entries: int = 0
    """CIEs/FDEs skipped or cut short as malformed (bad length, pointer,
    encoding, opcode, or past a cap)."""
    outside: int = 0
    """FDEs whose pc_begin is in no executable segment (dropped)."""
    overlaps: int = 0
    """FDEs cut short by a later-starting FDE of the same source."""
    plt_rows: int = 0
    """Synthetic PLT rows in the final table."""
    skipped_sections: int = 0
    """CFI sections, or a separate debug file, that could not be read (e.g. a
    zstd-compressed .debug_frame): their rows are missing, the rest is kept."""
    source: str = SOURCE_NONE
    """Which CFI sections the final rows came from: eh_frame, debug_frame, both, none."""


@dataclass(frozen=True, slots=True)
class UnwindTable:
    rows: npt.NDArray[np.void]
    """`ROW_DTYPE` records, strictly increasing pc; the last one is NONE."""
    stats: UnwindStats = field(default_factory=UnwindStats)

    def __len__(self) -> int:
        return len(self.rows)


# -- public API --------------------------------------------------------------


def parse_unwind_rows(
    f: ElfInput, debug_file: ElfInput | None = None, *, limits: Limits = DEFAULT_LIMITS
) -> UnwindTable:
    """Rows for an x86-64 ELF executable or shared library.

    `debug_file` (a separate debug file, e.g. from /usr/lib/debug) adds its
    `.debug_frame` (and `.eh_frame`, if it has contents) where the main file's
    sections have no FDE.
    """
    try:
        return _parse_files(f, debug_file, limits)
    except UnwindError:
        raise
    except _FAILURES as exc:
        raise UnwindError(f"unreadable unwind info: {type(exc).__name__}: {exc}") from exc


def parse_cfi(
    data: bytes,
    address: int,
    *,
    debug_frame: bool = False,
    exec_ranges: Sequence[tuple[int, int]] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> UnwindTable:
    """Rows from the raw bytes of one `.eh_frame` (loaded at `address`) or `.debug_frame`.

    `exec_ranges` ([start, end) address ranges) clips FDEs as the executable
    segments do in `parse_unwind_rows`; None accepts any address.
    """
    try:
        stats = UnwindStats()
        ranges = list(exec_ranges) if exec_ranges is not None else [(0, U64_MASK)]
        src = 1 if debug_frame else 0
        steps = _CfiReader(bytes(data), address, not debug_frame, limits, stats).steps(ranges, src)
        return _finish([steps], stats)
    except UnwindError:
        raise
    except _FAILURES as exc:
        raise UnwindError(f"unreadable unwind info: {type(exc).__name__}: {exc}") from exc


# What a hostile input can make the code below raise; translated to UnwindError
# (UnwindError itself is one). Programming errors (TypeError...) are not.
_FAILURES = (
    ValueError, struct.error, IndexError, OverflowError, OSError, zlib.error, MemoryError,
)  # fmt: skip


def rows_array(rows: Sequence[tuple[int, int, int, int, int]]) -> npt.NDArray[np.void]:
    """A row table from (pc, cfa_type, cfa_offset, rbp_type, rbp_offset) tuples (for tests)."""
    out = np.zeros(len(rows), dtype=ROW_DTYPE)
    for i, (pc, ct, co, rt, ro) in enumerate(rows):
        out[i] = (pc, co, ro, ct, rt)
    return out


# -- ELF container -----------------------------------------------------------

SHT_PROGBITS = 1
SHT_NOBITS = 8
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_COMPRESSED = 0x800
ELFCOMPRESS_ZLIB = 1
PT_LOAD = 1
PT_GNU_EH_FRAME = 0x6474E550
PF_X = 0x1
ET_EXEC, ET_DYN = 2, 3

_SHDR = np.dtype(
    [
        ("name", "<u4"), ("type", "<u4"), ("flags", "<u8"), ("addr", "<u8"),
        ("offset", "<u8"), ("size", "<u8"), ("link", "<u4"), ("info", "<u4"),
        ("addralign", "<u8"), ("entsize", "<u8"),
    ]
)  # fmt: skip
_PHDR = np.dtype(
    [
        ("type", "<u4"), ("flags", "<u4"), ("offset", "<u8"), ("vaddr", "<u8"),
        ("paddr", "<u8"), ("filesz", "<u8"), ("memsz", "<u8"), ("align", "<u8"),
    ]
)  # fmt: skip
_MAX_SECTIONS = 0xFFFF
_MAX_SEGMENTS = 0xFFFF


@dataclass(frozen=True, slots=True)
class _Section:
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int


class _Elf:
    """The headers of one little-endian ELF64 x86-64 file, read with bounds checks."""

    def __init__(self, f: ElfInput, limits: Limits) -> None:
        self.limits = limits
        raw: IO[bytes] = (
            io.BytesIO(bytes(f)) if isinstance(f, bytes | bytearray | memoryview) else f
        )
        try:
            self.size = raw.seek(0, io.SEEK_END)
        except (OSError, ValueError) as exc:
            raise UnwindError(f"input is not seekable: {exc}") from exc
        self._raw = raw
        hdr = self.read(0, 64, "ELF header")
        if hdr[:4] != b"\x7fELF":
            raise UnwindError("not an ELF file (bad magic)")
        if hdr[4] != 2 or hdr[5] != 1:
            raise UnwindError("not a little-endian 64-bit ELF file")
        e_type, machine = struct.unpack_from("<HH", hdr, 16)
        if machine != EM_X86_64:
            raise UnwindError(f"e_machine {machine}: unwind tables are built for x86-64 only")
        self.type = e_type
        phoff, shoff = struct.unpack_from("<QQ", hdr, 32)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", hdr, 54)
        self.segments = self._segments(phoff, phentsize, phnum)
        self.sections = self._sections(shoff, shentsize, shnum, shstrndx)

    def read(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise UnwindError(f"{what} runs past the end of the file")
        if size > self.limits.max_section:
            raise UnwindError(f"{what} is larger than {self.limits.max_section} bytes")
        self._raw.seek(offset)
        data = self._raw.read(size)
        if len(data) != size:
            raise UnwindError(f"short read of {what}")
        return data

    def _segments(self, phoff: int, phentsize: int, phnum: int) -> npt.NDArray[Any]:
        if phoff == 0 or phnum == 0:
            return np.zeros(0, dtype=_PHDR)
        if phentsize != _PHDR.itemsize or phnum > _MAX_SEGMENTS:
            raise UnwindError("bad program header table")
        raw = self.read(phoff, phnum * _PHDR.itemsize, "program headers")
        return np.frombuffer(raw, dtype=_PHDR)

    def _sections(self, shoff: int, shentsize: int, shnum: int, shstrndx: int) -> list[_Section]:
        if shoff == 0:
            return []
        if shentsize != _SHDR.itemsize:
            raise UnwindError("bad e_shentsize")
        if shnum == 0 or shstrndx == 0xFFFF:  # extended numbering lives in section 0
            first = np.frombuffer(self.read(shoff, _SHDR.itemsize, "section 0"), dtype=_SHDR)
            shnum = shnum or int(first["size"][0])
            if shstrndx == 0xFFFF:
                shstrndx = int(first["link"][0])
        if shnum > _MAX_SECTIONS:
            raise UnwindError(f"{shnum} sections: more than this reader accepts")
        hdrs = np.frombuffer(self.read(shoff, shnum * _SHDR.itemsize, "section headers"), _SHDR)
        names = b""
        if 0 < shstrndx < shnum and int(hdrs["type"][shstrndx]) != SHT_NOBITS:
            s = hdrs[shstrndx]
            names = self.read(int(s["offset"]), int(s["size"]), "section names")
        out = []
        for h in hdrs.tolist():
            name_off = h[0]
            name = ""
            if name_off < len(names):
                end = names.find(b"\0", name_off)
                name = names[name_off : end if end >= 0 else len(names)].decode("latin-1")
            out.append(_Section(name, h[1], h[2], h[3], h[4], h[5]))
        return out

    def section(self, name: str) -> _Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def section_data(self, sec: _Section) -> bytes:
        """Contents of a section, decompressed (zlib) when SHF_COMPRESSED."""
        data = self.read(sec.offset, sec.size, sec.name)
        if not sec.flags & SHF_COMPRESSED:
            return data
        if len(data) < 24:
            raise UnwindError(f"{sec.name}: truncated compression header")
        ch_type, _, ch_size = struct.unpack_from("<IIQ", data, 0)
        if ch_type != ELFCOMPRESS_ZLIB:
            raise UnwindError(f"{sec.name}: compression type {ch_type} is not supported")
        if ch_size > self.limits.max_section:
            raise UnwindError(f"{sec.name}: {ch_size} bytes uncompressed is too large")
        out = zlib.decompressobj().decompress(data[24:], ch_size)
        if len(out) != ch_size:
            raise UnwindError(f"{sec.name}: decompressed size does not match its header")
        return out

    def exec_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of the executable PT_LOAD segments' file-backed bytes."""
        out = []
        for ph in self.segments.tolist():
            ptype, flags, offset, vaddr, _, filesz = ph[:6]
            filesz = min(filesz, max(0, self.size - offset))  # code is in the file
            if ptype == PT_LOAD and flags & PF_X and filesz:
                out.append((vaddr, min(vaddr + filesz, U64_MASK)))
        return out

    def eh_frame_from_header(self) -> tuple[bytes, int] | None:
        """.eh_frame found through PT_GNU_EH_FRAME when there are no section headers."""
        hdr = next((p for p in self.segments.tolist() if p[0] == PT_GNU_EH_FRAME), None)
        if hdr is None or hdr[5] < 4:
            return None
        raw = self.read(hdr[2], min(hdr[5], 64), ".eh_frame_hdr")
        if raw[0] != 1 or raw[1] == 0xFF:
            return None
        try:
            ptr, _ = _read_pointer(raw, 4, raw[1], hdr[3] + 4)
        except _Bad:
            return None
        for ph in self.segments.tolist():
            ptype, _, offset, vaddr, _, filesz = ph[:6]
            if ptype == PT_LOAD and vaddr <= ptr < vaddr + filesz:
                start = offset + (ptr - vaddr)
                size = min(filesz - (ptr - vaddr), self.limits.max_section, self.size - start)
                return self.read(start, size, ".eh_frame"), ptr
        return None


def _parse_files(f: ElfInput, debug_file: ElfInput | None, limits: Limits) -> UnwindTable:
    elf = _Elf(f, limits)
    if elf.type not in (ET_EXEC, ET_DYN):
        raise UnwindError(f"ELF type {elf.type}: not an executable or shared object")
    stats = UnwindStats()
    ranges = elf.exec_ranges()
    sources = _cfi_sources(elf, ranges, limits, stats, src_base=0, header_fallback=True)
    if debug_file is not None:
        try:
            dbg = _Elf(debug_file, limits)
            sources += _cfi_sources(dbg, ranges, limits, stats, src_base=2, header_fallback=False)
        except _FAILURES:  # a bad debug file costs its rows, not the main file's
            stats.skipped_sections += 1
    sources.append(_plt_steps(elf, ranges))
    return _finish(sources, stats)


def _cfi_sources(
    elf: _Elf,
    ranges: list[tuple[int, int]],
    limits: Limits,
    stats: UnwindStats,
    *,
    src_base: int,
    header_fallback: bool,
) -> list[_Steps]:
    out = []
    eh = elf.section(".eh_frame")
    if eh is not None and eh.type != SHT_NOBITS and eh.size:
        data = elf.section_data(eh)
        out.append(_CfiReader(data, eh.addr, True, limits, stats).steps(ranges, src_base))
    elif header_fallback and not elf.sections:
        found = elf.eh_frame_from_header()
        if found is not None:
            reader = _CfiReader(found[0], found[1], True, limits, stats)
            out.append(reader.steps(ranges, src_base))
    dbg = elf.section(".debug_frame")
    if dbg is not None and dbg.type != SHT_NOBITS and dbg.size:
        try:
            data = elf.section_data(dbg)
        except UnwindError:
            stats.skipped_sections += 1
        else:
            reader = _CfiReader(data, 0, False, limits, stats)
            out.append(reader.steps(ranges, src_base + 1))
    return out


# -- rows as step functions ----------------------------------------------------

# Source ids: even = .eh_frame, odd = .debug_frame (0/1 main file, 2/3 debug
# file), PLT_SOURCE = synthetic. Lower ids win where sources overlap.
PLT_SOURCE = 4


@dataclass(slots=True)
class _Steps:
    """One source's rows: rule (pc..next pc); `gap` rows mean "no FDE here"."""

    pc: npt.NDArray[np.uint64]
    ctype: npt.NDArray[np.uint8]
    coff: npt.NDArray[np.int32]
    rtype: npt.NDArray[np.uint8]
    roff: npt.NDArray[np.int16]
    gap: npt.NDArray[np.bool_]
    src: npt.NDArray[np.uint8]

    @classmethod
    def empty(cls) -> _Steps:
        return cls.build([], [], [], [], [], [], 0)

    @classmethod
    def build(
        cls,
        pc: Any,
        ctype: Any,
        coff: Any,
        rtype: Any,
        roff: Any,
        gap: Any,
        src: int,
    ) -> _Steps:
        n = len(pc)
        return cls(
            np.asarray(pc, dtype=np.uint64),
            np.asarray(ctype, dtype=np.uint8),
            np.asarray(coff, dtype=np.int32),
            np.asarray(rtype, dtype=np.uint8),
            np.asarray(roff, dtype=np.int16),
            np.asarray(gap, dtype=np.bool_),
            np.full(n, src, dtype=np.uint8),
        )

    def take(self, idx: npt.NDArray[np.intp]) -> _Steps:
        return _Steps(
            self.pc[idx], self.ctype[idx], self.coff[idx], self.rtype[idx],
            self.roff[idx], self.gap[idx], self.src[idx],
        )  # fmt: skip


def _merge(hi: _Steps, lo: _Steps) -> _Steps:
    """`hi` where it has a non-gap rule, else `lo` (else a gap)."""
    if len(lo.pc) == 0:
        return hi
    if len(hi.pc) == 0:
        return lo
    pts = np.union1d(hi.pc, lo.pc)
    ih = np.searchsorted(hi.pc, pts, side="right") - 1
    il = np.searchsorted(lo.pc, pts, side="right") - 1
    use_hi = ih >= 0
    use_hi[use_hi] = ~hi.gap[ih[use_hi]]
    a, b = hi.take(np.maximum(ih, 0)), lo.take(np.maximum(il, 0))
    none = ~use_hi & (il < 0)
    out = _Steps(
        pts,
        np.where(use_hi, a.ctype, b.ctype),
        np.where(use_hi, a.coff, b.coff),
        np.where(use_hi, a.rtype, b.rtype),
        np.where(use_hi, a.roff, b.roff),
        np.where(use_hi, a.gap, b.gap | none),
        np.where(use_hi, a.src, b.src),
    )
    out.ctype[none] = abi.CfaType.NONE
    return out


def _finish(sources: list[_Steps], stats: UnwindStats) -> UnwindTable:
    merged = _Steps.empty()
    for s in sources:
        merged = _merge(merged, s)  # earlier sources have priority
    m = merged
    # One canonical form per rule, so equal rules compare equal.
    stop = (m.ctype == abi.CfaType.NONE) | (m.ctype == abi.CfaType.END)
    m.coff[stop] = 0
    m.rtype[stop] = abi.RbpType.SAME
    m.rtype[m.rtype > abi.RbpType.UNDEF] = abi.RbpType.UNDEF
    m.ctype[m.ctype > abi.CfaType.END] = abi.CfaType.NONE
    m.roff[m.rtype != abi.RbpType.OFFSET] = 0
    n = len(m.pc)
    keep = np.ones(n, dtype=np.bool_)
    if n:
        keep[1:] = (
            (m.ctype[1:] != m.ctype[:-1])
            | (m.coff[1:] != m.coff[:-1])
            | (m.rtype[1:] != m.rtype[:-1])
            | (m.roff[1:] != m.roff[:-1])
        )
        # Before the first row there is no information already: a leading NONE says nothing.
        keep[0] = m.ctype[0] != abi.CfaType.NONE
        keep[1:] &= np.maximum.accumulate(m.ctype != abi.CfaType.NONE)[:-1]
    idx = np.flatnonzero(keep)
    rows = np.zeros(len(idx), dtype=ROW_DTYPE)
    rows["pc"] = m.pc[idx]
    rows["cfa_type"] = m.ctype[idx]
    rows["cfa_offset"] = m.coff[idx]
    rows["rbp_type"] = m.rtype[idx]
    rows["rbp_offset"] = m.roff[idx]
    if len(rows) and rows["cfa_type"][-1] != abi.CfaType.NONE:
        raise UnwindError("internal: table does not end with a NONE row")
    src = m.src[idx][rows["cfa_type"] != abi.CfaType.NONE]
    has_eh = bool(np.any((src < PLT_SOURCE) & (src % 2 == 0)))
    has_dbg = bool(np.any((src < PLT_SOURCE) & (src % 2 == 1)))
    stats.source = (
        SOURCE_BOTH if has_eh and has_dbg
        else SOURCE_EH_FRAME if has_eh
        else SOURCE_DEBUG_FRAME if has_dbg
        else SOURCE_NONE
    )  # fmt: skip
    stats.plt_rows = int(np.count_nonzero(src == PLT_SOURCE))
    stats.rows = len(rows)
    return UnwindTable(rows, stats)


# -- synthetic PLT rows ----------------------------------------------------------

_ENDBR64 = b"\xf3\x0f\x1e\xfa"
_MAX_IBT_PLT = 1 << 24
"""Larger IBT .plt sections (corrupt ones) get the plain PLT rule, not rows per stub."""


def _plt_steps(elf: _Elf, ranges: list[tuple[int, int]]) -> _Steps:
    """Rows for PLT sections; used only where no FDE covers them."""
    pcs: list[int] = []
    rules: list[tuple[int, int]] = []  # (cfa_type, cfa_offset); NONE marks the end
    rsp, plt, none = int(abi.CfaType.RSP), int(abi.CfaType.PLT), int(abi.CfaType.NONE)
    for sec in sorted(elf.sections, key=lambda s: s.addr):
        if sec.name not in (".plt", ".plt.sec", ".plt.got") or sec.type != SHT_PROGBITS:
            continue
        a, end = sec.addr, sec.addr + sec.size
        if not sec.size or not any(lo <= a and end <= hi for lo, hi in ranges):
            continue
        if sec.name != ".plt" or sec.size < 32:
            pcs.append(a)  # each stub is a single jmp: the return address is at [rsp]
            rules.append((rsp, 8))
        else:
            # PLT0 runs after PLTn pushed the relocation index, then pushes GOT[1].
            pcs += [a, a + 6]
            rules += [(rsp, 16), (rsp, 24)]
            entry = elf.read(sec.offset + 16, 7, ".plt") if sec.offset + 23 <= elf.size else b""
            if entry[:2] == b"\xff\x25" and entry[6:7] == b"\x68":
                # Lazy entries: jmp *GOT(%rip); push $n (at +6, done at +11); jmp PLT0.
                pcs.append(a + 16)
                rules.append((plt, 8))
            elif entry[:4] == _ENDBR64 and entry[4:5] == b"\x68" and sec.size <= _MAX_IBT_PLT:
                # IBT lazy entries: endbr64; push $n (done at +9); jmp PLT0.
                for stub in range(a + 16, end - 15, 16):
                    pcs += [stub, stub + 9]
                    rules += [(rsp, 8), (rsp, 16)]
            else:  # a layout we do not know: right at least at each stub's first byte
                pcs.append(a + 16)
                rules.append((rsp, 8))
        pcs.append(end)
        rules.append((none, 0))
    if not pcs:
        return _Steps.empty()
    pc = np.asarray(pcs, dtype=np.uint64)
    order = np.argsort(pc, kind="stable")
    # Where sections touch, the later section's first row replaces the end marker.
    pc = pc[order]
    last = np.flatnonzero(np.r_[pc[1:] != pc[:-1], True])
    idx = order[last]
    pc = pc[last]
    ct = np.asarray([r[0] for r in rules], dtype=np.uint8)[idx]
    co = np.asarray([r[1] for r in rules], dtype=np.int32)[idx]
    zeros = np.zeros(len(pc))
    return _Steps.build(pc, ct, co, zeros, zeros, ct == none, PLT_SOURCE)


# -- the CFI reader ----------------------------------------------------------------


class _Bad(ValueError):
    """A malformed entry or instruction (internal; never leaves the module)."""


# Register rule kinds.
_R_UNSPEC, _R_OFFSET, _R_SAME, _R_UNDEF, _R_OTHER = range(5)
# CFA rule kinds.
_C_REG, _C_PLT, _C_EXPR = range(3)

_BAD_KEY = (-1,)
"""Rule-index key of the NONE row that marks where a malformed FDE stopped making sense."""
_INITIAL = (_C_REG, -1, 0, _R_UNSPEC, 0, _R_UNSPEC, 0)
"""(cfa_kind, cfa_reg, cfa_off, rbp_kind, rbp_off, ra_kind, ra_off) before a CIE runs."""


@dataclass(frozen=True, slots=True)
class _Cie:
    code_align: int
    data_align: int
    ra_ok: bool  # return address column is 16
    fde_enc: int
    has_z: bool
    initial: tuple[int, int, int, int, int, int, int]


def _uleb(data: bytes, p: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[p]
        p += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, p
        shift += 7
        if shift > 63:
            raise _Bad("LEB128 longer than 10 bytes")


def _sleb(data: bytes, p: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[p]
        p += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if b & 0x40:
                result -= 1 << shift
            return result, p
        if shift > 63:
            raise _Bad("LEB128 longer than 10 bytes")


_FIXED_FORMATS = {
    0x00: ("<Q", 8), 0x02: ("<H", 2), 0x03: ("<I", 4), 0x04: ("<Q", 8),
    0x0A: ("<h", 2), 0x0B: ("<i", 4), 0x0C: ("<q", 8),
}  # fmt: skip


def _read_pointer(data: bytes, p: int, enc: int, field_addr: int) -> tuple[int, int]:
    """A DW_EH_PE_* encoded pointer at data[p]; pcrel is relative to field_addr."""
    fmt = enc & 0x0F
    if fmt in _FIXED_FORMATS:
        code, size = _FIXED_FORMATS[fmt]
        if p + size > len(data):
            raise _Bad("pointer runs past the entry")
        (value,) = struct.unpack_from(code, data, p)
        p += size
    elif fmt == 0x01:
        value, p = _uleb(data, p)
    elif fmt == 0x09:
        value, p = _sleb(data, p)
    else:
        raise _Bad(f"pointer format {fmt:#x}")
    app = enc & 0x70
    if app == 0x10:
        value += field_addr
    elif app != 0:  # textrel, datarel, funcrel, aligned: not used for x86-64 code
        raise _Bad(f"pointer application {app:#x}")
    if enc & 0x80:
        raise _Bad("indirect pointer")
    return value & U64_MASK, p


class _CfiReader:
    """Reads one .eh_frame or .debug_frame section into rows."""

    def __init__(
        self, data: bytes, address: int, is_eh: bool, limits: Limits, stats: UnwindStats
    ) -> None:
        if len(data) > limits.max_section:
            raise UnwindError(f"CFI section of {len(data)} bytes is too large")
        self.data = data
        self.address = address
        self.is_eh = is_eh
        self.limits = limits
        self.stats = stats
        self.cies: dict[int, _Cie | None] = {}
        # Output: FDE ranges, and per row its pc and a rule id into self.rules.
        self.fde_start: list[int] = []
        self.fde_end: list[int] = []
        self.fde_rows: list[int] = []
        self.pcs: list[int] = []
        self.rule_ids: list[int] = []
        self.rule_index: dict[tuple[int, ...], int] = {}
        self.rules: list[tuple[int, int, int, int, bool]] = []

    # -- entries --

    def _entry(self, pos: int) -> tuple[int, int, int, bool]:
        """(body start, entry end, id or CIE pointer, 64-bit) of the entry at pos; end 0 = stop."""
        data = self.data
        if pos + 4 > len(data):
            return 0, 0, 0, False
        (length,) = struct.unpack_from("<I", data, pos)
        if length == 0:
            return 0, 0, 0, False  # terminator
        wide = length == 0xFFFFFFFF
        if wide:
            if pos + 12 > len(data):
                raise _Bad("truncated extended length")
            (length,) = struct.unpack_from("<Q", data, pos + 4)
            body = pos + 12
        elif length >= 0xFFFFFFF0:
            raise _Bad("reserved length value")
        else:
            body = pos + 4
        end = body + length
        idsize = 8 if wide and not self.is_eh else 4
        if end > len(data) or length < idsize:
            raise _Bad("entry runs past the section")
        (ident,) = struct.unpack_from("<Q" if idsize == 8 else "<I", data, body)
        return body, end, ident, wide

    def _is_cie(self, ident: int, wide: bool) -> bool:
        if self.is_eh:
            return ident == 0
        return ident == (U64_MASK if wide else 0xFFFFFFFF)

    def steps(self, ranges: list[tuple[int, int]], src: int) -> _Steps:
        data, limits, stats = self.data, self.limits, self.stats
        pos, fdes = 0, 0
        while pos < len(data):
            try:
                body, end, ident, wide = self._entry(pos)
            except _Bad:
                stats.bad_entries += 1
                break  # the next entry's position is unknown
            if end == 0:
                break
            pos = end
            if self._is_cie(ident, wide):
                continue
            fdes += 1
            if fdes > limits.max_fdes:
                raise UnwindError(f"more than {limits.max_fdes} FDEs")
            idsize = 8 if wide and not self.is_eh else 4
            cie_off = (body - ident) if self.is_eh else ident
            try:
                self._fde(body + idsize, end, self._cie(cie_off))
            except (_Bad, IndexError, struct.error):  # a field past the end of the section
                stats.bad_entries += 1
            if len(self.pcs) > limits.max_rows:
                raise UnwindError(f"more than {limits.max_rows} unwind rows")
        stats.fdes += fdes
        return self._to_steps(ranges, src)

    def _cie(self, off: int) -> _Cie:
        if off in self.cies:
            cie = self.cies[off]
        else:
            self.cies[off] = None  # a CIE that fails once fails for every FDE
            if not 0 <= off < len(self.data):
                raise _Bad("CIE pointer outside the section")
            cie = self._parse_cie(off)
            self.cies[off] = cie
            self.stats.cies += 1
        if cie is None:
            raise _Bad("bad CIE")
        return cie

    def _parse_cie(self, off: int) -> _Cie:
        data = self.data
        body, end, ident, wide = self._entry(off)
        if end == 0 or not self._is_cie(ident, wide):
            raise _Bad("CIE pointer does not point at a CIE")
        p = body + (8 if wide and not self.is_eh else 4)
        version = data[p]
        p += 1
        if version not in (1, 3, 4):
            raise _Bad(f"CIE version {version}")
        nul = data.find(b"\0", p, end)
        if nul < 0:
            raise _Bad("unterminated augmentation")
        aug = data[p:nul]
        p = nul + 1
        if version == 4:
            addr_size, seg_size = data[p], data[p + 1]
            p += 2
            if addr_size != 8 or seg_size != 0:
                raise _Bad("unsupported address/segment size")
        code_align, p = _uleb(data, p)
        data_align, p = _sleb(data, p)
        if version == 1:
            ra = data[p]
            p += 1
        else:
            ra, p = _uleb(data, p)
        fde_enc = 0
        has_z = aug[:1] == b"z"
        if has_z:
            aug_len, p = _uleb(data, p)
            aug_end = p + aug_len
            if aug_end > end:
                raise _Bad("augmentation data runs past the CIE")
            for ch in aug[1:]:
                if ch == ord("R"):
                    fde_enc = data[p]
                    p += 1
                elif ch == ord("P"):
                    penc = data[p]
                    _, p = _read_pointer(data, p + 1, penc & 0x0F, 0)
                elif ch == ord("L"):
                    p += 1
                elif ch in b"SBG":
                    pass
                else:
                    break  # the augmentation length lets us skip what we do not know
            p = aug_end
        elif aug:
            raise _Bad(f"augmentation {aug!r} without 'z'")
        if code_align == 0 or p > end:
            raise _Bad("bad CIE fields")
        cie = _Cie(code_align, data_align, ra == REG_RA, fde_enc, has_z, _INITIAL)
        initial = self._run(p, end, cie, 0, 0, emit=False)
        return _Cie(code_align, data_align, ra == REG_RA, fde_enc, has_z, initial)

    def _fde(self, p: int, end: int, cie: _Cie) -> None:
        data = self.data
        if self.is_eh or cie.fde_enc:
            start, p = _read_pointer(data, p, cie.fde_enc, self.address + p)
            size, p = _read_pointer(data, p, cie.fde_enc & 0x0F, 0)
        else:
            if p + 16 > end:
                raise _Bad("truncated FDE")
            start, size = struct.unpack_from("<QQ", data, p)
            p += 16
        if cie.has_z:
            aug_len, p = _uleb(data, p)
            p += aug_len
        if p > end:
            raise _Bad("FDE header runs past its end")
        if size == 0:
            return
        if size > self.limits.max_fde_range or start + size >= U64_MASK:
            raise _Bad("absurd FDE range")
        first = len(self.pcs)
        try:
            self._run(p, end, cie, start, start + size, emit=True)
        finally:
            self.fde_start.append(start)
            self.fde_end.append(start + size)
            self.fde_rows.append(len(self.pcs) - first)

    # -- the CFA program --

    def _emit(self, loc: int, state: tuple[int, ...], cie: _Cie) -> None:
        key = (*state, cie.ra_ok)
        rid = self.rule_index.get(key)
        if rid is None:
            rid = len(self.rules)
            self.rule_index[key] = rid
            self.rules.append(_map_rule(state, cie.ra_ok))
        self.pcs.append(loc)
        self.rule_ids.append(rid)

    def _bad_row(self, loc: int) -> None:
        rid = self.rule_index.get(_BAD_KEY)
        if rid is None:
            rid = len(self.rules)
            self.rule_index[_BAD_KEY] = rid
            self.rules.append((int(abi.CfaType.NONE), 0, 0, 0, False))
        self.pcs.append(loc)
        self.rule_ids.append(rid)

    def _run(
        self, p: int, end: int, cie: _Cie, loc: int, loc_end: int, *, emit: bool
    ) -> tuple[int, int, int, int, int, int, int]:
        """Interpret CFA instructions data[p:end]; emit a row at every advance."""
        data = self.data
        caf, daf = cie.code_align, cie.data_align
        init = cie.initial
        ck, creg, coff, rk, ro, ak, ao = init
        stack: list[tuple[int, int, int, int, int, int, int]] = []
        max_depth = self.limits.max_state_depth
        budget = self.limits.max_insns
        try:
            while p < end:
                budget -= 1
                if budget < 0:
                    raise _Bad("too many CFA instructions")
                op = data[p]
                p += 1
                hi = op & 0xC0
                if hi == 0x40 or (0x01 <= op <= 0x04):  # advance_loc*, set_loc
                    if hi == 0x40:
                        delta = (op & 0x3F) * caf
                    elif op == 0x02:
                        delta = data[p] * caf
                        p += 1
                    elif op == 0x03:
                        delta = struct.unpack_from("<H", data, p)[0] * caf
                        p += 2
                    elif op == 0x04:
                        delta = struct.unpack_from("<I", data, p)[0] * caf
                        p += 4
                    else:
                        if self.is_eh or cie.fde_enc:
                            target, p = _read_pointer(data, p, cie.fde_enc, self.address + p)
                        else:
                            target = struct.unpack_from("<Q", data, p)[0]
                            p += 8
                        if target < loc:
                            raise _Bad("DW_CFA_set_loc moves backwards")
                        delta = target - loc
                    if p > end:
                        raise _Bad("instruction runs past the entry")
                    if not emit:
                        raise _Bad("advance in CIE initial instructions")
                    if delta:
                        self._emit(loc, (ck, creg, coff, rk, ro, ak, ao), cie)
                        loc += delta
                        if loc >= loc_end:
                            return init
                    continue
                if hi == 0x80:  # DW_CFA_offset
                    reg = op & 0x3F
                    n, p = _uleb(data, p)
                    if reg == REG_RBP:
                        rk, ro = _R_OFFSET, n * daf
                    elif reg == REG_RA:
                        ak, ao = _R_OFFSET, n * daf
                elif hi == 0xC0:  # DW_CFA_restore
                    reg = op & 0x3F
                    if reg == REG_RBP:
                        rk, ro = init[3], init[4]
                    elif reg == REG_RA:
                        ak, ao = init[5], init[6]
                elif op == 0x0E:  # def_cfa_offset
                    n, p = _uleb(data, p)
                    coff = n
                    if ck != _C_REG:
                        ck = _C_EXPR
                elif op == 0x00:  # nop
                    pass
                elif op == 0x0A:  # remember_state
                    if len(stack) >= max_depth:
                        raise _Bad("remember_state nested too deep")
                    stack.append((ck, creg, coff, rk, ro, ak, ao))
                elif op == 0x0B:  # restore_state
                    if not stack:
                        raise _Bad("restore_state without remember_state")
                    ck, creg, coff, rk, ro, ak, ao = stack.pop()
                elif op == 0x0C:  # def_cfa
                    creg, p = _uleb(data, p)
                    coff, p = _uleb(data, p)
                    ck = _C_REG
                elif op == 0x0D:  # def_cfa_register
                    creg, p = _uleb(data, p)
                    if ck != _C_REG:
                        ck = _C_EXPR
                elif op == 0x12:  # def_cfa_sf
                    creg, p = _uleb(data, p)
                    n, p = _sleb(data, p)
                    coff, ck = n * daf, _C_REG
                elif op == 0x13:  # def_cfa_offset_sf
                    n, p = _sleb(data, p)
                    coff = n * daf
                    if ck != _C_REG:
                        ck = _C_EXPR
                elif op == 0x0F:  # def_cfa_expression
                    n, p = _uleb(data, p)
                    if p + n > end:
                        raise _Bad("expression runs past the entry")
                    ck, creg, coff = _cfa_expression(data[p : p + n])
                    p += n
                elif op in (0x05, 0x11, 0x2F, 0x14, 0x15):
                    # offset_extended(_sf), GNU_negative_offset_extended, val_offset(_sf)
                    reg, p = _uleb(data, p)
                    if op in (0x11, 0x15):
                        n, p = _sleb(data, p)
                    else:
                        n, p = _uleb(data, p)
                    n = -n * daf if op == 0x2F else n * daf
                    kind = _R_OFFSET if op in (0x05, 0x11, 0x2F) else _R_OTHER
                    if reg == REG_RBP:
                        rk, ro = kind, n
                    elif reg == REG_RA:
                        ak, ao = kind, n
                elif op in (0x06, 0x07, 0x08):  # restore_extended, undefined, same_value
                    reg, p = _uleb(data, p)
                    if op == 0x06:
                        rule = (init[3], init[4]) if reg == REG_RBP else (init[5], init[6])
                    else:
                        rule = (_R_UNDEF if op == 0x07 else _R_SAME, 0)
                    if reg == REG_RBP:
                        rk, ro = rule
                    elif reg == REG_RA:
                        ak, ao = rule
                elif op == 0x09:  # register
                    reg, p = _uleb(data, p)
                    _, p = _uleb(data, p)
                    if reg == REG_RBP:
                        rk, ro = _R_OTHER, 0
                    elif reg == REG_RA:
                        ak, ao = _R_OTHER, 0
                elif op in (0x10, 0x16):  # expression, val_expression
                    reg, p = _uleb(data, p)
                    n, p = _uleb(data, p)
                    p += n
                    if reg == REG_RBP:
                        rk, ro = _R_OTHER, 0
                    elif reg == REG_RA:
                        ak, ao = _R_OTHER, 0
                elif op == 0x2E:  # GNU_args_size
                    _, p = _uleb(data, p)
                else:
                    raise _Bad(f"unknown CFA opcode {op:#x}")
                if p > end:
                    raise _Bad("instruction runs past the entry")
        except (_Bad, IndexError, struct.error) as exc:
            if not emit:
                raise _Bad(str(exc)) from None
            if loc < loc_end:
                self._bad_row(loc)
            raise _Bad(str(exc)) from None
        state = (ck, creg, coff, rk, ro, ak, ao)
        if emit and loc < loc_end:
            self._emit(loc, state, cie)
        return state

    # -- output --

    def _to_steps(self, ranges: list[tuple[int, int]], src: int) -> _Steps:
        stats = self.stats
        nf = len(self.fde_start)
        if nf == 0:
            return _Steps.empty()
        start = np.asarray(self.fde_start, dtype=np.uint64)
        end = np.asarray(self.fde_end, dtype=np.uint64)
        nrows = np.asarray(self.fde_rows, dtype=np.int64)
        row_fde = np.repeat(np.arange(nf), nrows)
        pc = np.asarray(self.pcs, dtype=np.uint64)
        rules = np.asarray(
            self.rules or [(0, 0, 0, 0, False)],
            dtype=[("ct", "u1"), ("co", "<i4"), ("rt", "u1"), ("ro", "<i2"), ("uns", "?")],
        )
        rid = np.asarray(self.rule_ids, dtype=np.int64)

        # Clip each FDE to the executable segment holding its start.
        seg = np.asarray(sorted(ranges), dtype=np.uint64).reshape(-1, 2)
        si = np.searchsorted(seg[:, 0], start, side="right") - 1
        inside = si >= 0
        inside[inside] = start[inside] < seg[si[inside], 1]
        stats.outside += int(np.count_nonzero(~inside))
        end = np.where(inside, np.minimum(end, seg[np.maximum(si, 0), 1]), start)

        # Later-starting FDEs win: each FDE ends where the next one (by start,
        # then section order) begins.
        order = np.lexsort((np.arange(nf), start))
        clip = np.empty(nf, dtype=np.uint64)
        clip[order[:-1]] = start[order[1:]]
        clip[order[-1]] = U64_MASK
        cut = inside & (end > clip)
        stats.overlaps += int(np.count_nonzero(cut))
        stop = np.minimum(end, clip)
        keep = pc < stop[row_fde]
        pc, rid = pc[keep], rid[keep]
        r = rules[rid]
        stats.unsupported += int(np.count_nonzero(r["uns"]))
        # A gap row where an FDE ends before the next begins.
        gap = inside & (end < clip) & (end > start)
        gpc = end[gap]
        none = np.zeros(len(gpc), dtype=np.int64)
        allpc = np.concatenate([pc, gpc])
        steps = _Steps.build(
            allpc,
            np.concatenate([r["ct"], none]),
            np.concatenate([r["co"], none]),
            np.concatenate([r["rt"], none]),
            np.concatenate([r["ro"], none]),
            np.concatenate([np.zeros(len(pc), dtype=np.bool_), np.ones(len(gpc), np.bool_)]),
            src,
        )
        return steps.take(np.argsort(allpc, kind="stable"))


def _cfa_expression(expr: bytes) -> tuple[int, int, int]:
    """(kind, reg, offset) of a DW_CFA_def_cfa_expression the BPF side can follow."""
    if expr in PLT_EXPRESSIONS:
        return _C_PLT, REG_RSP, 8
    if len(expr) >= 2 and expr[0] in (0x70 + REG_RSP, 0x70 + REG_RBP):  # DW_OP_breg7/6 N
        try:
            off, p = _sleb(expr, 1)
        except (_Bad, IndexError):
            return _C_EXPR, -1, 0
        if p == len(expr):
            return _C_REG, expr[0] - 0x70, off
    return _C_EXPR, -1, 0


def _map_rule(state: tuple[int, ...], ra_ok: bool) -> tuple[int, int, int, int, bool]:
    """CFI state -> (cfa_type, cfa_offset, rbp_type, rbp_offset, unsupported)."""
    ck, creg, coff, rk, ro, ak, ao = state
    none = (int(abi.CfaType.NONE), 0, 0, 0, True)
    if not ra_ok:
        return none
    if ak == _R_UNDEF:
        return (int(abi.CfaType.END), 0, 0, 0, False)
    if ak != _R_OFFSET or ao != -8:
        return none
    if ck == _C_PLT:
        ctype = int(abi.CfaType.PLT)
    elif ck == _C_REG and creg == REG_RSP and 8 <= coff <= S32_MAX:
        ctype = int(abi.CfaType.RSP)
    elif ck == _C_REG and creg == REG_RBP and S32_MIN <= coff <= S32_MAX:
        ctype = int(abi.CfaType.RBP)
    else:
        return none
    if rk == _R_OFFSET:
        if not S16_MIN <= ro <= S16_MAX:
            return none
        return (ctype, coff, int(abi.RbpType.OFFSET), ro, False)
    if rk in (_R_UNSPEC, _R_SAME):
        return (ctype, coff, int(abi.RbpType.SAME), 0, False)
    return (ctype, coff, int(abi.RbpType.UNDEF), 0, False)
