"""Native (user-space) symbolization: runtime addresses of a process -> frames.

`NativeSymbolizer.symbolize(pid, maps, addrs)` works on whole batches:

1. the distinct addresses are sorted and matched to mappings with one
   `np.searchsorted` over the map starts;
2. per mapping, the file is opened through `/proc/PID/root/<path>` (so files
   in other mount namespaces resolve) or `/proc/PID/map_files/<start>-<end>`
   (deleted files, memfds, or a path now holding another inode);
3. the file's ELF data (build id, PT_LOAD segments, a `SymbolTable`) is
   loaded once and kept in a bounded LRU keyed by build id and size (the
   same library in ten containers is parsed once), else by (dev, inode,
   mtime_ns, size); files that fail to parse are remembered too;
4. runtime addresses become ELF virtual addresses through the load bias and
   are looked up in one vectorized call per mapping.

No address is ever dropped. What cannot be named is called
`<module basename>+0x<file offset>` (or `[unknown]+0x<addr>` outside every
mapping) and counted under the reason in `counters`. Frame counters count
distinct addresses per call (each is resolved once); file counters count
files. Names are listed below.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from profiler.procfs import MapEntry, parse_maps
from symbolizer.demangle import demangle
from symbolizer.elf import (
    ElfError,
    ElfInfo,
    ElfType,
    Segment,
    build_id,
    file_offsets_to_vaddrs,
    open_regular,
    read_elf,
)
from symbolizer.profile import Frame, FrameKind, Mapping
from symbolizer.symtab import SymbolTable, gc_paused

UNKNOWN_MODULE = "[unknown]"
ANON_MODULE = "[anon]"
VDSO = "[vdso]"

# Per-frame counters: each address lands in exactly one of these.
SYMBOLIZED = "symbolized"
UNMAPPED = "unmapped"  # in no mapping of the process
ANONYMOUS = "anonymous"  # anonymous memory, [heap], [stack], JIT code, an unreadable [vdso]
UNREADABLE = "unreadable"  # the mapped file could not be opened
ELF_ERRORS = "elf_errors"  # the file is not a usable ELF (truncated, corrupt)
UNSYMBOLIZED = "unsymbolized"  # a good ELF file, but no symbol covers the address
FRAME_COUNTERS = (SYMBOLIZED, UNMAPPED, ANONYMOUS, UNREADABLE, ELF_ERRORS, UNSYMBOLIZED)

# Per-file counters.
ELF_LOADS = "elf_loads"  # files parsed
ELF_LOAD_ERRORS = "elf_load_errors"  # files that failed to parse (cached as failures)
ELF_CACHE_HITS = "elf_cache_hits"
ELF_EVICTIONS = "elf_evictions"
INODE_MISMATCH = "inode_mismatch"  # only a path holding another inode could be opened


@dataclass(frozen=True, slots=True)
class ElfImage:
    """What symbolization keeps of one ELF file."""

    build_id: str
    elf_type: ElfType
    segments: tuple[Segment, ...]
    symbols: SymbolTable


def _image_of(info: ElfInfo) -> ElfImage:
    s = info.symbols
    table = SymbolTable.build(s.starts, s.sizes, s.names, limits=s.limits, ranks=s.ranks)
    return ElfImage(info.build_id, info.elf_type, info.segments, table)


_StatKey = tuple[int, int, int, int]
_CacheKey = tuple[str, str, int] | tuple[str, int, int, int, int]


class NativeSymbolizer:
    """Symbolizes user-space addresses of live processes; see the module docstring.

    `max_files` bounds the parsed files kept (each holds a symbol table; a
    large binary's is tens of MB). `proc_root` is /proc, or a directory laid
    out like it in tests.
    """

    def __init__(self, *, proc_root: str = "/proc", max_files: int = 256) -> None:
        if max_files < 1:
            raise ValueError("max_files must be at least 1")
        self.proc_root = proc_root
        self.max_files = max_files
        self.counters: dict[str, int] = dict.fromkeys(FRAME_COUNTERS, 0)
        self._images: OrderedDict[_CacheKey, ElfImage | None] = OrderedDict()
        self._by_stat: dict[_StatKey, _CacheKey] = {}
        self._vdso: ElfImage | None = None
        self._vdso_size = -1  # -1: not looked at yet

    # -- public --------------------------------------------------------

    def symbolize(
        self,
        pid: int,
        maps: Sequence[MapEntry],
        addrs: Sequence[int] | npt.NDArray[np.uint64],
    ) -> list[Frame]:
        """One NATIVE frame per address, in input order."""
        a = np.asarray(addrs, dtype=np.uint64).ravel()
        if len(a) == 0:
            return []
        uniq, inverse = np.unique(a, return_inverse=True)
        with gc_paused():
            frames = self._symbolize_sorted(pid, maps, uniq)
        if len(uniq) == len(a) and np.array_equal(uniq, a):
            return frames
        return [frames[i] for i in inverse.ravel().tolist()]

    def clear(self) -> None:
        """Forget every parsed file."""
        self._images.clear()
        self._by_stat.clear()

    def cached_files(self) -> int:
        return len(self._images)

    # -- batch ---------------------------------------------------------

    def _symbolize_sorted(
        self, pid: int, maps: Sequence[MapEntry], addrs: npt.NDArray[np.uint64]
    ) -> list[Frame]:
        out: list[Frame | None] = [None] * len(addrs)
        ordered = sorted(maps, key=lambda m: m.start)
        starts = np.array([m.start for m in ordered], dtype=np.uint64)
        ends = np.array([m.end for m in ordered], dtype=np.uint64)
        mi = np.searchsorted(starts, addrs, side="right") - 1
        inside = (mi >= 0) & (addrs < ends[np.maximum(mi, 0)]) if len(ordered) else mi >= 0
        mi[~inside] = -1

        unmapped = np.flatnonzero(~inside)
        for i in unmapped.tolist():
            addr = int(addrs[i])
            out[i] = Frame(f"{UNKNOWN_MODULE}+0x{addr:x}", addr, FrameKind.NATIVE)
        self._count(UNMAPPED, len(unmapped))

        # addrs are sorted and maps do not overlap, so each mapping's
        # addresses form one contiguous run of `mi`.
        mapped = np.flatnonzero(inside)
        if len(mapped):
            runs = np.flatnonzero(np.diff(mi[mapped])) + 1
            opened: dict[tuple[int, int, int, str], tuple[ElfImage | None, str]] = {}
            for run in np.split(mapped, runs):
                entry = ordered[int(mi[run[0]])]
                frames = self._symbolize_mapping(pid, entry, addrs[run], opened)
                for i, f in zip(run.tolist(), frames, strict=True):
                    out[i] = f
        done = [f for f in out if f is not None]
        assert len(done) == len(out), "every address gets a frame"
        return done

    def _symbolize_mapping(
        self,
        pid: int,
        entry: MapEntry,
        addrs: npt.NDArray[np.uint64],
        opened: dict[tuple[int, int, int, str], tuple[ElfImage | None, str]],
    ) -> list[Frame]:
        if entry.is_file:
            key = (entry.dev_major, entry.dev_minor, entry.inode, entry.path)
            if key not in opened:
                opened[key] = self._image_for(pid, entry)
            image, reason = opened[key]
            label = os.path.basename(entry.file_path) or entry.file_path
            mapping = Mapping(
                entry.start,
                entry.end,
                entry.offset,
                entry.file_path,
                image.build_id if image else "",
            )
            file_offsets = addrs - np.uint64(entry.start) + np.uint64(entry.offset)
            if image is None:
                return self._fallback(addrs, file_offsets, label, mapping, reason)
            return self._lookup(image, addrs, file_offsets, label, mapping)

        rel = addrs - np.uint64(entry.start)
        if entry.path == VDSO:
            vdso = self._vdso_image(entry.end - entry.start)
            mapping = Mapping(entry.start, entry.end, 0, VDSO, vdso.build_id if vdso else "")
            if vdso is not None:
                return self._lookup(vdso, addrs, rel, VDSO, mapping)
            return self._fallback(addrs, rel, VDSO, mapping, ANONYMOUS)
        label = entry.path or ANON_MODULE
        mapping = Mapping(entry.start, entry.end, entry.offset, label)
        return self._fallback(addrs, rel, label, mapping, ANONYMOUS)

    def _lookup(
        self,
        image: ElfImage,
        addrs: npt.NDArray[np.uint64],
        file_offsets: npt.NDArray[np.uint64],
        label: str,
        mapping: Mapping,
    ) -> list[Frame]:
        vaddrs, resolved = file_offsets_to_vaddrs(image.segments, file_offsets)
        rows = image.symbols.lookup(vaddrs)
        rows[~resolved] = -1
        names = image.symbols.names_of(rows)
        out: list[Frame] = []
        misses = 0
        for addr, off, name in zip(addrs.tolist(), file_offsets.tolist(), names, strict=True):
            if name is None:
                misses += 1
                out.append(Frame(f"{label}+0x{off:x}", addr, FrameKind.NATIVE, mapping))
            else:
                out.append(Frame(demangle(name), addr, FrameKind.NATIVE, mapping, system_name=name))
        self._count(UNSYMBOLIZED, misses)
        self._count(SYMBOLIZED, len(out) - misses)
        return out

    def _fallback(
        self,
        addrs: npt.NDArray[np.uint64],
        offsets: npt.NDArray[np.uint64],
        label: str,
        mapping: Mapping,
        reason: str,
    ) -> list[Frame]:
        self._count(reason, len(addrs))
        return [
            Frame(f"{label}+0x{off:x}", addr, FrameKind.NATIVE, mapping)
            for addr, off in zip(addrs.tolist(), offsets.tolist(), strict=True)
        ]

    # -- files ---------------------------------------------------------

    def _image_for(self, pid: int, entry: MapEntry) -> tuple[ElfImage | None, str]:
        """The parsed file behind a mapping, or (None, reason)."""
        f = self._open(pid, entry)
        if f is None:
            return None, UNREADABLE
        with f:
            try:
                st = os.fstat(f.fileno())
            except OSError:
                return None, UNREADABLE
            skey: _StatKey = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            known = self._by_stat.get(skey)
            if known is not None and known in self._images:
                return self._hit(known)
            try:
                bid = build_id(f)
            except ElfError:
                bid = ""
            # The size is part of the key: a stripped copy shares the build id
            # but not the symbols.
            key: _CacheKey = ("build_id", bid, st.st_size) if bid else ("stat", *skey)
            self._remember_stat(skey, key)
            if key in self._images:
                return self._hit(key)
            self._count(ELF_LOADS)
            try:
                info = read_elf(f)
            except ElfError:
                self._count(ELF_LOAD_ERRORS)
                self._store(("stat", *skey), None)
                self._remember_stat(skey, ("stat", *skey))
                return None, ELF_ERRORS
        image = _image_of(info)
        self._store(key, image)
        return image, ""

    def _hit(self, key: _CacheKey) -> tuple[ElfImage | None, str]:
        self._count(ELF_CACHE_HITS)
        self._images.move_to_end(key)
        image = self._images[key]
        return (image, "") if image is not None else (None, ELF_ERRORS)

    def _store(self, key: _CacheKey, image: ElfImage | None) -> None:
        self._images[key] = image
        self._images.move_to_end(key)
        while len(self._images) > self.max_files:
            self._images.popitem(last=False)
            self._count(ELF_EVICTIONS)

    def _remember_stat(self, skey: _StatKey, key: _CacheKey) -> None:
        self._by_stat[skey] = key
        while len(self._by_stat) > 4 * self.max_files:
            del self._by_stat[next(iter(self._by_stat))]

    def _open(self, pid: int, entry: MapEntry) -> BinaryIO | None:
        """Open the file behind a mapping, preferring one with the mapped inode.

        A deleted file (or memfd) is only reachable through map_files; a path
        may now hold another file (an upgraded package), so the inode decides.
        """
        by_path = f"{self.proc_root}/{pid}/root{entry.file_path}"
        by_map = f"{self.proc_root}/{pid}/map_files/{entry.start:x}-{entry.end:x}"
        candidates = [by_map, by_path] if entry.deleted else [by_path, by_map]
        other: BinaryIO | None = None
        for path in candidates:
            try:
                f = open_regular(path)
            except OSError:
                continue
            try:
                ino = os.fstat(f.fileno()).st_ino
            except OSError:
                f.close()
                continue
            if not entry.inode or ino == entry.inode:
                if other is not None:
                    other.close()
                return f
            if other is None and not entry.deleted:
                other = f
            else:
                f.close()
        if other is not None:
            self._count(INODE_MISMATCH)
        return other

    def _vdso_image(self, size: int) -> ElfImage | None:
        """Our own [vdso]: every process of this kernel and ABI maps the same one.

        It is read from /proc/self/mem (no ptrace rights needed) and used for a
        target's [vdso] of the same size.
        """
        if self._vdso_size < 0:
            self._vdso_size = 0
            try:
                with open(f"{self.proc_root}/self/maps", encoding="utf-8") as f:
                    own = [m for m in parse_maps(f.read()) if m.path == VDSO]
                if own:
                    m = own[0]
                    with open(f"{self.proc_root}/self/mem", "rb") as mem:
                        mem.seek(m.start)
                        data = mem.read(m.end - m.start)
                    self._vdso = _image_of(read_elf(data))
                    self._vdso_size = m.end - m.start
            except (OSError, ValueError):  # ElfError is a ValueError
                self._vdso = None
        return self._vdso if size == self._vdso_size else None

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n
