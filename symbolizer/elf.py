"""ELF parsing for native symbolization: build id, load segments, symbols.

Every parser here is a pure function over a binary file object or bytes; the
caller decides where the file comes from (a path, /proc/PID/map_files, a
fixture, a fuzzer). Headers are read with pyelftools; the symbol tables
themselves are decoded in bulk with numpy, because a large binary holds
millions of symbols and a Python object per symbol is too slow to load.

Whatever the input -- truncated, bit-flipped, not ELF at all -- the only
exception that leaves this module is `ElfError`, and no field read from the
file can make a parser allocate past the file's size or loop without end:
every count and size is checked against the file length before it is used.

Load-bias math (`file_offset_to_vaddr`, `address_to_elf_vaddr`) turns a
runtime address into the ELF virtual address symbol tables are keyed by:

    file_offset = runtime_addr - map_start + map_offset
    elf_vaddr   = file_offset - p_offset + p_vaddr   (PT_LOAD holding file_offset)

which is right for PIE executables, shared libraries and non-PIE ET_EXEC
binaries alike (for ET_EXEC it comes out equal to the runtime address).
"""

from __future__ import annotations

import enum
import errno
import io
import os
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, TypeVar

import numpy as np
import numpy.typing as npt
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

U64_MAX = (1 << 64) - 1

PF_X = 0x1
PF_W = 0x2
PF_R = 0x4

SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00

STT_NOTYPE = 0
STT_FUNC = 2
STT_GNU_IFUNC = 10

STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
STB_GNU_UNIQUE = 10

NT_GNU_BUILD_ID = 3

# Notes hold a handful of small records; a PT_NOTE larger than this is corrupt
# or not worth reading for a build id.
_MAX_NOTES_BYTES = 1 << 20

# Linked executables and libraries have a few dozen sections; the cap bounds
# the time a corrupt count can cost (each header is parsed in Python).
_MAX_SECTIONS = 0xFFFF

# Bounds what one symbol or string table may make us read into memory; real
# ones (even a browser's) stay well below, a crafted sparse file need not.
_MAX_TABLE_BYTES = 1 << 29

_HEADER_SIZES = {32: (52, 32, 40), 64: (64, 56, 64)}
"""ELF class -> (e_ehsize, e_phentsize, e_shentsize)."""


class ElfError(ValueError):
    """The input is not a usable ELF file (truncated, corrupt, not ELF).

    Callers fall back to naming addresses `module+0xoffset`.
    """


class ElfType(enum.IntEnum):
    NONE = 0
    REL = 1
    EXEC = 2
    DYN = 3
    CORE = 4


@dataclass(frozen=True, slots=True)
class Segment:
    """A PT_LOAD program header."""

    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & PF_X)


@dataclass(frozen=True, slots=True)
class ElfSymbols:
    """Function symbols as parallel arrays (one row per symbol).

    `limits` is the end address of each symbol's section (U64_MAX when
    unknown), so an unsized symbol never runs past its section. `ranks` orders
    aliases at one address: lower is preferred (FUNC before NOTYPE, then
    GLOBAL, WEAK, LOCAL).
    """

    starts: npt.NDArray[np.uint64]
    sizes: npt.NDArray[np.uint64]
    names: list[str]
    limits: npt.NDArray[np.uint64]
    ranks: npt.NDArray[np.int8]

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def empty(cls) -> ElfSymbols:
        u = np.zeros(0, dtype=np.uint64)
        return cls(u, u.copy(), [], u.copy(), np.zeros(0, dtype=np.int8))


@dataclass(frozen=True, slots=True)
class ElfInfo:
    """Everything the native symbolizer needs from one file, parsed once."""

    elf_type: ElfType
    machine: str
    build_id: str
    segments: tuple[Segment, ...]
    symbols: ElfSymbols


ElfInput = BinaryIO | IO[bytes] | bytes | bytearray | memoryview
_T = TypeVar("_T")


# -- public API --------------------------------------------------------------


def read_elf(f: ElfInput, *, symbols: bool = True) -> ElfInfo:
    """Parse type, build id, PT_LOAD segments and (optionally) function symbols."""

    def info(p: _Parsed) -> ElfInfo:
        return ElfInfo(
            elf_type=p.type,
            machine=p.machine,
            build_id=p.build_id(),
            segments=tuple(p.segments()),
            symbols=p.symbols() if symbols else ElfSymbols.empty(),
        )

    return _parse(f, info)


def build_id(f: ElfInput) -> str:
    """Hex of the NT_GNU_BUILD_ID note, or "" if the file has none."""
    return _parse(f, lambda p: p.build_id())


def build_id_of_path(path: str) -> str:
    """`build_id` of a file on disk; "" on any error (missing, unreadable, corrupt)."""
    try:
        f = open_regular(path)
    except OSError:
        return ""
    try:
        return build_id(f)
    except ElfError:
        return ""
    finally:
        f.close()


def open_regular(path: str) -> BinaryIO:
    """Open a regular file for reading without ever blocking.

    A path in another mount namespace may name a FIFO or a device where a
    binary used to be; a plain open() of a FIFO waits for a writer forever.
    Raises OSError for anything but a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_segments(f: ElfInput) -> list[Segment]:
    """The PT_LOAD program headers, in file order."""
    return _parse(f, lambda p: p.segments())


def elf_type(f: ElfInput) -> ElfType:
    """ET_EXEC for non-PIE executables, ET_DYN for PIE executables and shared libraries."""
    return _parse(f, lambda p: p.type)


def read_symbols(
    f: ElfInput,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], list[str]]:
    """Function symbols from .symtab and .dynsym: (starts, sizes, names).

    Kept: STT_FUNC, STT_GNU_IFUNC, and STT_NOTYPE in executable sections;
    undefined, special-section and zero-address symbols are skipped; exact
    duplicates (the same symbol in both tables) appear once.
    """
    syms = read_elf(f).symbols
    return syms.starts, syms.sizes, syms.names


def build_id_from_notes(data: bytes, *, little_endian: bool = True, align: int = 4) -> str:
    """Find NT_GNU_BUILD_ID in raw note records (a PT_NOTE, /sys/kernel/notes...)."""
    fmt = "<III" if little_endian else ">III"
    align = 8 if align == 8 else 4
    pos, end = 0, len(data)
    while pos + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from(fmt, data, pos)
        pos += 12
        desc = pos + _align_up(namesz, align)
        desc_end = desc + descsz
        if desc_end > end:
            break
        if ntype == NT_GNU_BUILD_ID and data[pos : pos + namesz] == b"GNU\0" and descsz:
            return data[desc:desc_end].hex()
        pos = desc + _align_up(descsz, align)
    return ""


def file_offset_to_vaddr(segments: Sequence[Segment], file_offset: int) -> int | None:
    """The ELF virtual address of a file offset, via the PT_LOAD that holds it.

    When page rounding puts an offset in two segments' file ranges, the
    executable one wins: the addresses we resolve are code addresses.
    """
    found: Segment | None = None
    for seg in segments:
        if seg.offset <= file_offset < seg.offset + seg.filesz:
            if seg.executable:
                found = seg
                break
            if found is None:
                found = seg
    if found is None:
        return None
    return file_offset - found.offset + found.vaddr


def address_to_elf_vaddr(
    runtime_addr: int, map_start: int, map_offset: int, segments: Sequence[Segment]
) -> int | None:
    """Runtime address inside a file mapping -> ELF virtual address (None if outside)."""
    if runtime_addr < map_start:
        return None
    return file_offset_to_vaddr(segments, runtime_addr - map_start + map_offset)


def file_offsets_to_vaddrs(
    segments: Sequence[Segment], offsets: npt.NDArray[np.uint64]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    """Vectorized `file_offset_to_vaddr`: (vaddrs, resolved mask)."""
    out = np.zeros(len(offsets), dtype=np.uint64)
    done = np.zeros(len(offsets), dtype=np.bool_)
    for seg in sorted(segments, key=lambda s: not s.executable):
        lo = np.uint64(seg.offset)
        hi = np.uint64(min(seg.offset + seg.filesz, U64_MAX))
        sel = ~done & (offsets >= lo) & (offsets < hi)
        out[sel] = (offsets[sel] - lo) + np.uint64(seg.vaddr)
        done |= sel
    return out, done


# -- implementation ----------------------------------------------------------


def _align_up(n: int, align: int) -> int:
    return (n + align - 1) & ~(align - 1)


def _parse(f: ElfInput, what: Callable[[_Parsed], _T]) -> _T:
    """Run `what` over the parsed file; every failure leaves as ElfError, once, here."""
    try:
        return what(_Parsed(f))
    except ElfError:
        raise
    except _PARSE_FAILURES as exc:
        raise ElfError(f"corrupt ELF: {type(exc).__name__}: {exc}") from exc


# pyelftools raises ELFError for what it recognizes; construct, struct and
# numpy raise these for the rest; OSError covers read errors. Programming
# errors (TypeError, AttributeError...) are deliberately not translated.
_PARSE_FAILURES = (
    ELFError,
    ValueError,
    struct.error,
    IndexError,
    OverflowError,
    UnicodeError,
    OSError,
)


class _Clamped:
    """A read-only stream that never reads past the end of the data.

    pyelftools passes sizes from the file straight to `read()`; a buffered
    file would allocate that many bytes first, so a flipped bit in a size
    field could ask for exabytes. Here every read is clamped to what exists.
    """

    def __init__(self, raw: IO[bytes], size: int) -> None:
        self._raw = raw
        self._size = size
        self._pos = 0

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self._size - self._pos)
        if n is None or n < 0 or n > left:
            n = left
        if n == 0:
            return b""
        self._raw.seek(self._pos)
        data = self._raw.read(n)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            offset += self._size
        if offset < 0:
            raise ElfError("seek before start of file")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def read_at(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > self._size:
            raise ElfError(f"{what} runs past the end of the file")
        if size > _MAX_TABLE_BYTES:
            raise ElfError(f"{what} is larger than {_MAX_TABLE_BYTES} bytes")
        self.seek(offset)
        data = self.read(size)
        if len(data) != size:
            raise ElfError(f"short read of {what}")
        return data


def _stream(f: ElfInput) -> _Clamped:
    if isinstance(f, bytes | bytearray | memoryview):
        raw: IO[bytes] = io.BytesIO(bytes(f))
    else:
        raw = f
    try:
        size = raw.seek(0, io.SEEK_END)
    except (OSError, ValueError) as exc:
        raise ElfError(f"input is not seekable: {exc}") from exc
    if size < 16:
        raise ElfError("too short to be ELF")
    return _Clamped(raw, size)


class _Parsed:
    """One ELF file's headers, validated before anything is iterated."""

    def __init__(self, f: ElfInput) -> None:
        self.stream = _stream(f)
        size = self.stream.seek(0, io.SEEK_END)
        self.stream.seek(0)
        if self.stream.read(4) != b"\x7fELF":
            raise ElfError("not an ELF file (bad magic)")
        self.elf = ELFFile(self.stream)  # type: ignore[arg-type]
        self.file_size = size
        self.little_endian: bool = self.elf.little_endian
        self.elfclass: int = self.elf.elfclass
        _, phentsize, shentsize = _HEADER_SIZES[self.elfclass]
        self.machine = str(self.elf["e_machine"])
        self.type = _elf_type(self.elf["e_type"])

        phoff, phnum = int(self.elf["e_phoff"]), int(self.elf["e_phnum"])
        if phoff == 0 or phnum == 0:
            self.phnum = 0
        else:
            if int(self.elf["e_phentsize"]) != phentsize:
                raise ElfError("bad e_phentsize")
            if phnum == 0xFFFF:
                raise ElfError("extended program header numbering is not supported")
            if phoff + phnum * phentsize > size:
                raise ElfError("program headers run past the end of the file")
            self.phnum = phnum

        shoff = int(self.elf["e_shoff"])
        if shoff == 0:
            self.shnum = 0
        else:
            if int(self.elf["e_shentsize"]) != shentsize:
                raise ElfError("bad e_shentsize")
            if shoff + shentsize > size:
                raise ElfError("section headers run past the end of the file")
            shnum = int(self.elf["e_shnum"])
            if shnum == 0:  # extended numbering: the count is in section 0
                shnum = int(self.elf._get_section_header(0)["sh_size"])
            if shoff + shnum * shentsize > size:
                raise ElfError("section headers run past the end of the file")
            if shnum > _MAX_SECTIONS:
                raise ElfError(f"{shnum} sections: more than this reader accepts")
            self.shnum = shnum
        self._sections: list[Any] | None = None

    # -- program headers --
    # Raw headers come from pyelftools' private _get_*_header (the version is
    # pinned): the public get_segment()/get_section() also decode section names
    # and build helper objects -- a PT_DYNAMIC segment walks every section --
    # which is work, and more surface for a corrupt file, that we do not need.

    def _phdrs(self) -> list[Any]:
        return [self.elf._get_segment_header(i) for i in range(self.phnum)]

    def segments(self) -> list[Segment]:
        out = []
        for ph in self._phdrs():
            if ph["p_type"] != "PT_LOAD":
                continue
            out.append(
                Segment(
                    offset=int(ph["p_offset"]),
                    vaddr=int(ph["p_vaddr"]),
                    filesz=int(ph["p_filesz"]),
                    memsz=int(ph["p_memsz"]),
                    flags=int(ph["p_flags"]),
                )
            )
        return out

    # -- sections --

    def sections(self) -> list[Any]:
        if self._sections is None:
            self._sections = [self.elf._get_section_header(i) for i in range(self.shnum)]
        return self._sections

    # -- build id --

    def build_id(self) -> str:
        for ph in self._phdrs():
            if ph["p_type"] == "PT_NOTE":
                bid = self._notes_build_id(ph["p_offset"], ph["p_filesz"], ph["p_align"])
                if bid:
                    return bid
        for sh in self.sections():
            if sh["sh_type"] == "SHT_NOTE":
                bid = self._notes_build_id(sh["sh_offset"], sh["sh_size"], sh["sh_addralign"])
                if bid:
                    return bid
        return ""

    def _notes_build_id(self, offset: int, size: int, align: int) -> str:
        offset, size = int(offset), min(int(size), _MAX_NOTES_BYTES)
        if offset >= self.file_size:
            return ""
        size = min(size, self.file_size - offset)
        data = self.stream.read_at(offset, size, "notes")
        return build_id_from_notes(data, little_endian=self.little_endian, align=int(align))

    # -- symbols --

    def symbols(self) -> ElfSymbols:
        secs = self.sections()
        if not secs:
            return ElfSymbols.empty()
        exec_sec = np.array(
            [bool(int(s["sh_flags"]) & SHF_EXECINSTR) for s in secs], dtype=np.bool_
        )
        limits = np.array(
            [
                min(int(s["sh_addr"]) + int(s["sh_size"]), U64_MAX)
                if int(s["sh_flags"]) & SHF_ALLOC
                else U64_MAX
                for s in secs
            ],
            dtype=np.uint64,
        )
        parts: list[tuple[npt.NDArray[Any], list[str]]] = []
        # .symtab first: when a symbol is in both tables, its .symtab row is kept.
        for kind in ("SHT_SYMTAB", "SHT_DYNSYM"):
            for sh in secs:
                if sh["sh_type"] == kind:
                    parts.append(self._symbol_table(sh, secs, exec_sec))
        if not parts:
            return ElfSymbols.empty()
        rows = np.concatenate([p[0] for p in parts])
        names = [n for p in parts for n in p[1]]
        return _dedupe(rows, names, limits)

    def _symbol_table(
        self, sh: Any, secs: list[Any], exec_sec: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[Any], list[str]]:
        dtype = _sym_dtype(self.elfclass, self.little_endian)
        if int(sh["sh_entsize"]) != dtype.itemsize:
            raise ElfError("bad symbol table entry size")
        count = int(sh["sh_size"]) // dtype.itemsize
        raw = self.stream.read_at(int(sh["sh_offset"]), count * dtype.itemsize, "symbol table")
        syms = np.frombuffer(raw, dtype=dtype)

        link = int(sh["sh_link"])
        if not 0 < link < len(secs) or secs[link]["sh_type"] != "SHT_STRTAB":
            raise ElfError("symbol table is not linked to a string table")
        strsh = secs[link]
        strtab = self.stream.read_at(int(strsh["sh_offset"]), int(strsh["sh_size"]), "strtab")

        stype = syms["info"] & 0xF
        bind = syms["info"] >> 4
        shndx = syms["shndx"].astype(np.int64)
        value = syms["value"].astype(np.uint64)
        in_section = (shndx != SHN_UNDEF) & (shndx < min(SHN_LORESERVE, len(secs)))
        sec_exec = exec_sec[np.where(in_section, shndx, 0)]
        keep = (
            in_section
            & (value != 0)
            & (syms["name"] < len(strtab))
            & ((stype == STT_FUNC) | (stype == STT_GNU_IFUNC) | ((stype == STT_NOTYPE) & sec_exec))
        )
        syms, stype, bind = syms[keep], stype[keep], bind[keep]
        shndx, value = shndx[keep], value[keep]
        if self.machine == "EM_ARM":  # Thumb functions have bit 0 set
            value = value & ~np.uint64(1)

        names = _names(strtab, syms["name"].astype(np.int64))
        bind_rank = np.select(
            [(bind == STB_GLOBAL) | (bind == STB_GNU_UNIQUE), bind == STB_WEAK], [0, 1], 2
        )
        rank = (bind_rank + np.where(stype == STT_NOTYPE, 3, 0)).astype(np.int8)
        rows = np.empty(len(names), dtype=_ROW_DTYPE)
        rows["start"] = value
        rows["size"] = syms["size"].astype(np.uint64)
        rows["shndx"] = shndx
        rows["rank"] = rank
        nonempty = np.fromiter((bool(n) for n in names), dtype=np.bool_, count=len(names))
        if not nonempty.all():
            rows = rows[nonempty]
            names = [n for n in names if n]
        return rows, names


_ROW_DTYPE = np.dtype(
    [("start", np.uint64), ("size", np.uint64), ("shndx", np.int64), ("rank", np.int8)]
)


def _elf_type(raw: object) -> ElfType:
    if isinstance(raw, str) and raw.startswith("ET_"):
        try:
            return ElfType[raw[3:]]
        except KeyError:
            pass
    raise ElfError(f"unsupported ELF type {raw!r}")


def _sym_dtype(elfclass: int, little_endian: bool) -> np.dtype[Any]:
    e = "<" if little_endian else ">"
    if elfclass == 64:
        fields = [
            ("name", e + "u4"),
            ("info", "u1"),
            ("other", "u1"),
            ("shndx", e + "u2"),
            ("value", e + "u8"),
            ("size", e + "u8"),
        ]
    else:
        fields = [
            ("name", e + "u4"),
            ("value", e + "u4"),
            ("size", e + "u4"),
            ("info", "u1"),
            ("other", "u1"),
            ("shndx", e + "u2"),
        ]
    return np.dtype(fields)


def _names(strtab: bytes, offsets: npt.NDArray[np.int64]) -> list[str]:
    """NUL-terminated strings at `offsets`, found without a Python loop per byte."""
    if len(offsets) == 0:
        return []
    buf = np.frombuffer(strtab, dtype=np.uint8)
    # The end of each name is the first NUL at or after its offset (or the end).
    nuls = np.append(np.flatnonzero(buf == 0), len(buf))
    ends = nuls[np.searchsorted(nuls, offsets)]
    starts_l, ends_l = offsets.tolist(), ends.tolist()
    if strtab.isascii():
        text = strtab.decode("ascii")
        return [text[a:b] for a, b in zip(starts_l, ends_l, strict=True)]
    return [strtab[a:b].decode("utf-8", "replace") for a, b in zip(starts_l, ends_l, strict=True)]


def _dedupe(
    rows: npt.NDArray[Any], names: list[str], sec_limits: npt.NDArray[np.uint64]
) -> ElfSymbols:
    """Drop exact (start, size, name) repeats, keeping the first (.symtab) row."""
    intern: dict[str, int] = {}
    ids = np.fromiter(
        (intern.setdefault(n, len(intern)) for n in names), dtype=np.int64, count=len(names)
    )
    order = np.lexsort((ids, rows["size"], rows["start"]))
    s, z, i = rows["start"][order], rows["size"][order], ids[order]
    first = np.ones(len(order), dtype=np.bool_)
    first[1:] = (s[1:] != s[:-1]) | (z[1:] != z[:-1]) | (i[1:] != i[:-1])
    sel = np.sort(order[first])
    rows = rows[sel]
    return ElfSymbols(
        starts=np.ascontiguousarray(rows["start"]),
        sizes=np.ascontiguousarray(rows["size"]),
        names=[names[j] for j in sel.tolist()],
        limits=sec_limits[rows["shndx"]],
        ranks=np.ascontiguousarray(rows["rank"]),
    )
