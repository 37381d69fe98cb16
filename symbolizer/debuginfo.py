"""Symbols of stripped binaries: separate debug files and MiniDebugInfo.

Distributions strip their binaries and ship the symbols apart. A binary says
where to look in two ways, and `DebugFinder` searches in the order gdb does:

1. its build id: `<debug root>/.build-id/<first 2 hex>/<rest>.debug`;
2. its `.gnu_debuglink` section (a file name and the CRC32 of that file):
   `<binary's dir>/<name>`, `<binary's dir>/.debug/<name>`, then
   `<debug root>/<binary's dir>/<name>`.

Each candidate path is tried inside the process' root (`/proc/PID/root`)
first, then on the host. A candidate is only used when it is the right
file: a build-id candidate must carry the binary's build id; a debuglink
candidate must carry the binary's build id when both have one (a mismatch
rejects it), and otherwise must match the CRC32 (reading the whole file,
which build ids spare us). The binary itself and files without symbols are
skipped, so a search never "finds" another stripped copy.

Failing those, a binary may embed MiniDebugInfo (Fedora, RHEL): an
xz-compressed ELF file holding a `.symtab`, in its `.gnu_debugdata` section.

Symbols found are merged with the binary's own; the binary's PT_LOAD
segments keep deciding the load bias (a debug file's segments are not used:
its loadable sections are NOBITS placeholders). Parsers here are pure
functions over bytes or a file object; only `DebugFinder` opens paths.
"""

from __future__ import annotations

import io
import lzma
import os
import posixpath
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np
import numpy.typing as npt

from symbolizer.elf import ElfError, ElfInfo, ElfInput, ElfSymbols, build_id, open_regular, read_elf

DEFAULT_DEBUG_ROOTS = ("/usr/lib/debug",)

FEW_SYMBOLS = 16
"""A binary with a .symtab but fewer function symbols than this is still
looked up (a `.symtab` kept for a handful of entry points)."""

# Counters (files, not frames).
DEBUG_FILE = "debug_file"  # symbols taken from a separate debug file
MINIDEBUGINFO = "minidebuginfo"  # symbols taken from .gnu_debugdata
DEBUG_MISSING = "debug_missing"  # no .symtab and nothing found: install the -dbgsym/-debuginfo
DEBUGLINK_CRC_MISMATCH = "debuglink_crc_mismatch"  # a debuglink candidate with another CRC
DEBUG_BUILD_ID_MISMATCH = "debug_build_id_mismatch"  # a candidate with another build id
DEBUG_ERRORS = "debug_errors"  # a candidate or .gnu_debugdata that did not parse
COUNTERS = (
    DEBUG_FILE,
    MINIDEBUGINFO,
    DEBUG_MISSING,
    DEBUGLINK_CRC_MISMATCH,
    DEBUG_BUILD_ID_MISMATCH,
    DEBUG_ERRORS,
)

SHT_SYMTAB = 2
SHN_XINDEX = 0xFFFF

_MAX_SECTIONS = 0xFFFF
_MAX_SHSTRTAB = 1 << 20
_MAX_DEBUGLINK = 4096  # a file name, padding and a CRC
_MAX_DEBUGDATA = 64 << 20  # compressed MiniDebugInfo
_MAX_DEBUGDATA_OUT = 256 << 20  # once decompressed
_CRC_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class DebugRefs:
    """What a binary says about its debug symbols."""

    has_symtab: bool
    debuglink: str = ""  # .gnu_debuglink file name ("" if none)
    debuglink_crc: int = 0
    debugdata: tuple[int, int] | None = None  # .gnu_debugdata (file offset, size)


@dataclass(frozen=True, slots=True)
class DebugSymbols:
    """Symbols found for a binary, and where they came from."""

    symbols: ElfSymbols
    path: str  # the debug file as opened; "" for MiniDebugInfo
    source: str  # DEBUG_FILE or MINIDEBUGINFO


# -- pure parsers --------------------------------------------------------------


class _Input:
    """Bounded reads at offsets of a file object or bytes."""

    def __init__(self, f: ElfInput) -> None:
        if isinstance(f, bytes | bytearray | memoryview):
            self._raw: IO[bytes] = io.BytesIO(bytes(f))
        else:
            self._raw = f
        try:
            self.size = self._raw.seek(0, io.SEEK_END)
        except (OSError, ValueError) as exc:
            raise ElfError(f"input is not seekable: {exc}") from exc

    def read_at(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ElfError(f"{what} runs past the end of the file")
        try:
            self._raw.seek(offset)
            data = self._raw.read(size)
        except OSError as exc:
            raise ElfError(f"reading {what}: {exc}") from exc
        if len(data) != size:
            raise ElfError(f"short read of {what}")
        return data


def _shdr_dtype(elfclass: int, little: bool) -> np.dtype[np.void]:
    e = "<" if little else ">"
    word = e + ("u8" if elfclass == 64 else "u4")
    return np.dtype(
        [
            ("name", e + "u4"),
            ("type", e + "u4"),
            ("flags", word),
            ("addr", word),
            ("offset", word),
            ("size", word),
            ("link", e + "u4"),
            ("info", e + "u4"),
            ("addralign", word),
            ("entsize", word),
        ]
    )


def _section_headers(src: _Input) -> tuple[npt.NDArray[np.void], bytes, bool]:
    """(section headers, section name table, little endian)."""
    ident = src.read_at(0, 16, "ELF identification")
    if ident[:4] != b"\x7fELF":
        raise ElfError("not an ELF file (bad magic)")
    elfclass = {1: 32, 2: 64}.get(ident[4])
    little = {1: True, 2: False}.get(ident[5])
    if elfclass is None or little is None:
        raise ElfError("bad ELF class or data encoding")
    e = "<" if little else ">"
    if elfclass == 64:
        shoff, shentsize, shnum, shstrndx = struct.unpack(
            e + "Q10xHHH", src.read_at(0x28, 24, "ELF header")
        )
    else:
        shoff, shentsize, shnum, shstrndx = struct.unpack(
            e + "I10xHHH", src.read_at(0x20, 20, "ELF header")
        )
    dtype = _shdr_dtype(elfclass, little)
    if shoff == 0:
        return np.zeros(0, dtype=dtype), b"", little
    if shentsize != dtype.itemsize:
        raise ElfError("bad e_shentsize")
    if shnum == 0 or shstrndx == SHN_XINDEX:  # extended numbering lives in section 0
        first = np.frombuffer(src.read_at(shoff, dtype.itemsize, "section 0"), dtype=dtype)[0]
        shnum = shnum or int(first["size"])
        if shstrndx == SHN_XINDEX:
            shstrndx = int(first["link"])
    if shnum > _MAX_SECTIONS:
        raise ElfError(f"{shnum} sections: more than this reader accepts")
    headers = np.frombuffer(src.read_at(shoff, shnum * dtype.itemsize, "sections"), dtype=dtype)
    names = b""
    if 0 < shstrndx < shnum:
        sh = headers[shstrndx]
        names = src.read_at(int(sh["offset"]), min(int(sh["size"]), _MAX_SHSTRTAB), "shstrtab")
    return headers, names, little


def _name_at(table: bytes, offset: int) -> str:
    if offset >= len(table):
        return ""
    end = table.find(b"\0", offset)
    return table[offset : end if end >= 0 else len(table)].decode("utf-8", "replace")


def read_debug_refs(f: ElfInput) -> DebugRefs:
    """Whether the binary has a .symtab, and its debuglink and MiniDebugInfo.

    Raises ElfError for input that is not ELF or whose section headers are
    corrupt; a malformed .gnu_debuglink is ignored.
    """
    src = _Input(f)
    headers, names, little = _section_headers(src)
    has_symtab = bool((headers["type"] == SHT_SYMTAB).any())
    link, crc = "", 0
    debugdata: tuple[int, int] | None = None
    for sh in headers:
        name = _name_at(names, int(sh["name"]))
        if name == ".gnu_debuglink" and 0 < int(sh["size"]) <= _MAX_DEBUGLINK:
            data = src.read_at(int(sh["offset"]), int(sh["size"]), ".gnu_debuglink")
            link, crc = parse_debuglink(data, little_endian=little)
        elif name == ".gnu_debugdata" and 0 < int(sh["size"]) <= _MAX_DEBUGDATA:
            debugdata = (int(sh["offset"]), int(sh["size"]))
    return DebugRefs(has_symtab, link, crc, debugdata)


def parse_debuglink(data: bytes, *, little_endian: bool = True) -> tuple[str, int]:
    """The (file name, CRC32) of a .gnu_debuglink section; ("", 0) if malformed.

    The name is NUL-terminated and padded to 4 bytes; the CRC follows. A
    name that is not a plain file name (empty, with a '/', '.' or '..') is
    refused: it would lead the search out of the directories it names.
    """
    end = data.find(b"\0")
    if end <= 0:
        return "", 0
    crc_at = (end + 4) & ~3
    if crc_at + 4 > len(data):
        return "", 0
    try:
        name = data[:end].decode("utf-8")
    except UnicodeDecodeError:
        return "", 0
    if "/" in name or name in (".", ".."):
        return "", 0
    (crc,) = struct.unpack_from("<I" if little_endian else ">I", data, crc_at)
    return name, crc


def read_minidebuginfo(f: ElfInput, refs: DebugRefs) -> ElfSymbols:
    """The symbols of the xz-compressed ELF in `.gnu_debugdata`.

    Raises ElfError if there is none or it does not decompress or parse.
    """
    if refs.debugdata is None:
        raise ElfError("no .gnu_debugdata section")
    offset, size = refs.debugdata
    packed = _Input(f).read_at(offset, size, ".gnu_debugdata")
    unpacker = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        inner = unpacker.decompress(packed, max_length=_MAX_DEBUGDATA_OUT)
    except lzma.LZMAError as exc:
        raise ElfError(f".gnu_debugdata: {exc}") from exc
    if not unpacker.eof:
        raise ElfError(".gnu_debugdata is truncated or larger than this reader accepts")
    return read_elf(inner).symbols


def debuglink_crc(f: IO[bytes]) -> int:
    """CRC32 of a whole file, as `.gnu_debuglink` records it (zlib's CRC32)."""
    f.seek(0)
    crc = 0
    while chunk := f.read(_CRC_CHUNK):
        crc = zlib.crc32(chunk, crc)
    return crc


def build_id_paths(bid: str, roots: Sequence[str]) -> list[str]:
    """`<root>/.build-id/xx/rest.debug` for each root ([] without a build id)."""
    if len(bid) < 4 or not all(c in "0123456789abcdef" for c in bid):
        return []
    return [f"{root.rstrip('/')}/.build-id/{bid[:2]}/{bid[2:]}.debug" for root in roots]


def debuglink_paths(binary_path: str, name: str, roots: Sequence[str]) -> list[str]:
    """Where gdb looks for a debuglink `name` of the binary at `binary_path`."""
    if not name or not binary_path.startswith("/"):
        return []
    d = posixpath.dirname(posixpath.normpath(binary_path)).rstrip("/")
    out = [f"{d}/{name}", f"{d}/.debug/{name}"]
    out += [f"{root.rstrip('/')}{d}/{name}" for root in roots]
    return out


def merge_symbols(own: ElfSymbols, found: ElfSymbols) -> ElfSymbols:
    """Both tables' rows; aliases are settled when the SymbolTable is built."""
    return ElfSymbols(
        starts=np.concatenate([own.starts, found.starts]),
        sizes=np.concatenate([own.sizes, found.sizes]),
        names=own.names + found.names,
        limits=np.concatenate([own.limits, found.limits]),
        ranks=np.concatenate([own.ranks, found.ranks]),
    )


def wants_debug_symbols(refs: DebugRefs, info: ElfInfo) -> bool:
    """True when the binary's own symbols are missing or few."""
    return not refs.has_symtab or len(info.symbols) < FEW_SYMBOLS


# -- the search ----------------------------------------------------------------


class DebugFinder:
    """Finds separate debug symbols; see the module docstring.

    `count(name)` is called for each counter event (names in `COUNTERS`).
    """

    def __init__(
        self,
        debug_roots: Sequence[str] = DEFAULT_DEBUG_ROOTS,
        *,
        count: Callable[[str], None] | None = None,
    ) -> None:
        for root in debug_roots:
            if not root.startswith("/"):
                raise ValueError(f"debug root {root!r} is not an absolute path")
        self.debug_roots = tuple(debug_roots)
        self._count = count or (lambda _name: None)

    def find(
        self,
        f: IO[bytes],
        info: ElfInfo,
        binary_path: str,
        prefixes: Sequence[str] = ("",),
    ) -> DebugSymbols | None:
        """Debug symbols for the binary open as `f` (mapped from `binary_path`).

        `prefixes` are prepended to every candidate path, in order: the
        process' root ("/proc/PID/root") first, "" for the host. None when
        the binary has enough symbols of its own or nothing was found.
        """
        try:
            refs = read_debug_refs(f)
        except ElfError:
            return None
        if not wants_debug_symbols(refs, info):
            return None
        try:
            st = os.fstat(f.fileno())
            tried = {(st.st_dev, st.st_ino)}  # never the binary itself
        except (OSError, AttributeError, io.UnsupportedOperation):
            tried = set()
        bid = info.build_id
        for path in build_id_paths(bid, self.debug_roots):
            found = self._try(path, prefixes, tried, bid, None)
            if found is not None:
                return found
        if refs.debuglink and not binary_path.startswith("/memfd:"):
            for path in debuglink_paths(binary_path, refs.debuglink, self.debug_roots):
                found = self._try(path, prefixes, tried, bid, refs.debuglink_crc)
                if found is not None:
                    return found
        if refs.debugdata is not None:
            try:
                mini = read_minidebuginfo(f, refs)
            except ElfError:
                self._count(DEBUG_ERRORS)
            else:
                if len(mini):
                    self._count(MINIDEBUGINFO)
                    return DebugSymbols(mini, "", MINIDEBUGINFO)
        if not refs.has_symtab:
            self._count(DEBUG_MISSING)
        return None

    def _try(
        self,
        path: str,
        prefixes: Sequence[str],
        tried: set[tuple[int, int]],
        bid: str,
        crc: int | None,
    ) -> DebugSymbols | None:
        """The symbols of the first good file at `path` under one of `prefixes`.

        `crc` is None for a build-id candidate (its build id must be `bid`).
        """
        for prefix in prefixes:
            full = prefix + path
            try:
                g = open_regular(full)
            except OSError:
                continue
            with g:
                try:
                    st = os.fstat(g.fileno())
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in tried:
                    continue
                tried.add((st.st_dev, st.st_ino))
                try:
                    found = self._verified_symbols(g, bid, crc)
                except (ElfError, OSError):
                    self._count(DEBUG_ERRORS)
                    continue
                if found is not None and len(found):
                    self._count(DEBUG_FILE)
                    return DebugSymbols(found, full, DEBUG_FILE)
        return None

    def _verified_symbols(self, g: IO[bytes], bid: str, crc: int | None) -> ElfSymbols | None:
        theirs = build_id(g)
        if crc is None or (bid and theirs):
            if theirs != bid:
                self._count(DEBUG_BUILD_ID_MISMATCH)
                return None
        elif debuglink_crc(g) != crc:
            self._count(DEBUGLINK_CRC_MISMATCH)
            return None
        return read_elf(g).symbols
