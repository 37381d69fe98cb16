"""Native (user-space) symbolization: runtime addresses of a process -> frames.

`NativeSymbolizer.symbolize(pid, maps, addrs, process=...)` works on whole
batches:

1. the distinct addresses are sorted and matched to mappings with one
   `np.searchsorted` over the map starts;
2. per mapping, the file is opened through `/proc/PID/root/<path>` (so files
   in other mount namespaces resolve) or `/proc/PID/map_files/<start>-<end>`
   (deleted files, memfds, or a path now holding another inode);
3. the file's ELF data (build id, PT_LOAD segments, a `SymbolTable`) is
   loaded once and kept in a bounded LRU keyed by build id and size (the
   same library in ten containers is parsed once), else by (dev, inode,
   mtime_ns, size); files that fail to parse are remembered too. A binary
   without a `.symtab` gets its symbols from a separate debug file or its
   MiniDebugInfo (`symbolizer.debuginfo`), still with its own segments;
4. runtime addresses become ELF virtual addresses through the load bias and
   are looked up in one vectorized call per mapping;
5. addresses no ELF symbol names (anonymous executable memory above all) are
   looked up in the process' JIT perf map, `/tmp/perf-<pid>.map`
   (`symbolizer.perfmap`), read as the JIT appends to it.

Short-lived processes. The optional `process` context (a `ProcessInfo`
from `profiler.processes`, or anything with the same fields) is what was
recorded while the process lived. With it, a pid that has exited or been
reused is not read through /proc/PID (which would name another process'
files); its files are then read from the host's paths, but only when it
ran in our mount namespace and the file still has the mapping's (device,
inode), or taken from the cache of files already parsed for that inode.

No address is ever dropped. What cannot be named is called
`<module basename>+0x<file offset>` (or `[unknown]+0x<addr>` outside every
mapping) and counted under the reason in `counters`. Frame counters count
distinct addresses per call (each is resolved once); file counters count
files (opened per call, or parsed). Names are listed below and in
`symbolizer.debuginfo.COUNTERS`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import numpy as np
import numpy.typing as npt

from profiler.procfs import MapEntry, parse_id_list, parse_maps, parse_stat, parse_status
from symbolizer import debuginfo
from symbolizer.debuginfo import DEFAULT_DEBUG_ROOTS, DebugFinder, DebugSymbols, merge_symbols
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
from symbolizer.perfmap import DEFAULT_MAX_BYTES, DEFAULT_MAX_LINES, PerfMap
from symbolizer.profile import Frame, FrameKind, Mapping
from symbolizer.symtab import SymbolTable, gc_paused

UNKNOWN_MODULE = "[unknown]"
ANON_MODULE = "[anon]"
VDSO = "[vdso]"

# Per-frame counters: each address lands in exactly one of these.
SYMBOLIZED = "symbolized"  # named, by an ELF symbol or a perf map
UNMAPPED = "unmapped"  # in no mapping of the process
ANONYMOUS = "anonymous"  # anonymous memory, [heap], [stack], JIT code, an unreadable [vdso]
UNREADABLE = "unreadable"  # the mapped file could not be opened
ELF_ERRORS = "elf_errors"  # the file is not a usable ELF (truncated, corrupt)
UNSYMBOLIZED = "unsymbolized"  # a good ELF file, but no symbol covers the address
FRAME_COUNTERS = (SYMBOLIZED, UNMAPPED, ANONYMOUS, UNREADABLE, ELF_ERRORS, UNSYMBOLIZED)

# How frames were named, beyond the ELF file mapped at the path (frames).
PERFMAP = "perfmap"  # named by the process' JIT perf map (also counted as symbolized)

# Per-file counters.
ELF_LOADS = "elf_loads"  # files parsed
ELF_LOAD_ERRORS = "elf_load_errors"  # files that failed to parse (cached as failures)
ELF_CACHE_HITS = "elf_cache_hits"
ELF_EVICTIONS = "elf_evictions"
INODE_MISMATCH = "inode_mismatch"  # only a path holding another inode could be opened
MAP_FILES = "map_files"  # opened through /proc/PID/map_files (deleted, replaced, memfd)
HOST_PATH_AFTER_EXIT = "host_path_after_exit"  # opened by its host path, the process gone
INODE_CACHE_HITS = "inode_cache_hits"  # not openable (process gone), but parsed for its inode

# Per-call and perf map counters.
PROCESS_EXITED = "process_exited"  # calls for a pid that exited or was reused
PERFMAP_LOADS = "perfmap_loads"  # perf map files read from the start
PERFMAP_MALFORMED = "perfmap_malformed"  # lines that did not parse
PERFMAP_TRUNCATED = "perfmap_truncated"  # lines past perf_map_max_lines, not kept
PERFMAP_SKIPPED_BYTES = "perfmap_skipped_bytes"  # bytes past perf_map_max_bytes, not read
PERFMAP_UNTRUSTED = "perfmap_untrusted"  # owned by neither root nor the process' user
PERFMAP_STALE = "perfmap_stale"  # last written before the process started (a reused pid's)

COUNTER_NAMES = (
    *FRAME_COUNTERS,
    PERFMAP,
    ELF_LOADS,
    ELF_LOAD_ERRORS,
    ELF_CACHE_HITS,
    ELF_EVICTIONS,
    INODE_MISMATCH,
    MAP_FILES,
    HOST_PATH_AFTER_EXIT,
    INODE_CACHE_HITS,
    *debuginfo.COUNTERS,
    PROCESS_EXITED,
    PERFMAP_LOADS,
    PERFMAP_MALFORMED,
    PERFMAP_TRUNCATED,
    PERFMAP_SKIPPED_BYTES,
    PERFMAP_UNTRUSTED,
    PERFMAP_STALE,
)

# A perf map written up to this long before the recorded process start is
# still its own: /proc/stat's btime has a resolution of one second.
_STALE_SLACK_NS = 2_000_000_000


class ProcessContext(Protocol):
    """What was known of a process while it lived (`ProcessInfo` has it all).

    0 or () means unknown: `start_time` (stat's starttime, clock ticks after
    boot), `mnt_ns` (the inode of its /proc/PID/ns/mnt), `ns_pid` (its pid in
    its own pid namespace) and `uids` (status' Uid line).
    """

    @property
    def start_time(self) -> int: ...

    @property
    def mnt_ns(self) -> int: ...

    @property
    def ns_pid(self) -> int: ...

    @property
    def uids(self) -> tuple[int, ...]: ...


@dataclass(frozen=True, slots=True)
class ElfImage:
    """What symbolization keeps of one ELF file."""

    build_id: str
    elf_type: ElfType
    segments: tuple[Segment, ...]
    symbols: SymbolTable
    debug_file: str = ""  # the debug file symbols were added from, "minidebuginfo" or ""


def _image_of(info: ElfInfo, found: DebugSymbols | None = None) -> ElfImage:
    s = info.symbols if found is None else merge_symbols(info.symbols, found.symbols)
    table = SymbolTable.build(s.starts, s.sizes, s.names, limits=s.limits, ranks=s.ranks)
    debug_file = "" if found is None else (found.path or found.source)
    return ElfImage(info.build_id, info.elf_type, info.segments, table, debug_file)


_StatKey = tuple[int, int, int, int]
_CacheKey = tuple[str, str, int] | tuple[str, int, int, int, int]
_MapIdent = tuple[int, int, int]  # a mapping's (dev major, dev minor, inode)
_Opened = dict[tuple[int, int, int, str], tuple[ElfImage | None, str]]


@dataclass(slots=True)
class _Target:
    """The process one `symbolize` call is about."""

    pid: int
    live: bool  # /proc/PID is still this process
    host_ok: bool  # it ran in our mount namespace: host paths name its files
    start_time: int = 0  # 0: unknown
    ns_pid: int = 0
    uids: tuple[int, ...] = ()
    status_read: bool = False


@dataclass(slots=True)
class _PerfMapState:
    ident: tuple[int, int]  # (dev, inode) of the file read
    offset: int  # bytes of it already fed
    perf: PerfMap
    capped: bool = False  # perf_map_max_bytes reached: nothing more is read
    skipped_bytes: int = 0  # counted so far


class NativeSymbolizer:
    """Symbolizes user-space addresses of live processes; see the module docstring.

    `max_files` bounds the parsed files kept (each holds a symbol table; a
    large binary's is tens of MB). `proc_root` is /proc, or a directory laid
    out like it in tests. `debug_roots` are where separate debug files are
    installed (as the process sees them, and on the host). Perf maps are
    kept for `max_perf_maps` processes, each read up to `perf_map_max_bytes`
    and `perf_map_max_lines`.
    """

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        max_files: int = 256,
        debug_roots: Sequence[str] = DEFAULT_DEBUG_ROOTS,
        max_perf_maps: int = 64,
        perf_map_max_lines: int = DEFAULT_MAX_LINES,
        perf_map_max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_files < 1:
            raise ValueError("max_files must be at least 1")
        if max_perf_maps < 1:
            raise ValueError("max_perf_maps must be at least 1")
        self.proc_root = proc_root
        self.max_files = max_files
        self.max_perf_maps = max_perf_maps
        self.perf_map_max_lines = perf_map_max_lines
        self.perf_map_max_bytes = perf_map_max_bytes
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._debug = DebugFinder(debug_roots, count=self._count)
        self._images: OrderedDict[_CacheKey, ElfImage | None] = OrderedDict()
        self._by_stat: dict[_StatKey, _CacheKey] = {}
        self._by_map: dict[_MapIdent, _CacheKey] = {}
        self._perf_maps: OrderedDict[tuple[int, int], _PerfMapState] = OrderedDict()
        self._vdso: ElfImage | None = None
        self._vdso_size = -1  # -1: not looked at yet
        self._own_mnt_ns = -1  # -1: not looked at yet
        self._btime_ns = -1

    # -- public --------------------------------------------------------

    def symbolize(
        self,
        pid: int,
        maps: Sequence[MapEntry],
        addrs: Sequence[int] | npt.NDArray[np.uint64],
        *,
        process: ProcessContext | None = None,
    ) -> list[Frame]:
        """One NATIVE frame per address, in input order.

        `process` is what was recorded of the process (see the module
        docstring); without it the pid is taken to be the live process.
        """
        a = np.asarray(addrs, dtype=np.uint64).ravel()
        if len(a) == 0:
            return []
        uniq, inverse = np.unique(a, return_inverse=True)
        target = self._target(pid, process)
        with gc_paused():
            frames = self._symbolize_sorted(target, maps, uniq)
        if len(uniq) == len(a) and np.array_equal(uniq, a):
            return frames
        return [frames[i] for i in inverse.ravel().tolist()]

    def clear(self) -> None:
        """Forget every parsed file and perf map."""
        self._images.clear()
        self._by_stat.clear()
        self._by_map.clear()
        self._perf_maps.clear()

    def cached_files(self) -> int:
        return len(self._images)

    # -- the process ---------------------------------------------------

    def _target(self, pid: int, process: ProcessContext | None) -> _Target:
        if process is None:
            return _Target(pid, live=True, host_ok=False)
        live = True
        if process.start_time:
            live = self._start_time(pid) == process.start_time
            if not live:
                self._count(PROCESS_EXITED)
        own = self._mnt_ns()
        return _Target(
            pid,
            live=live,
            host_ok=own > 0 and process.mnt_ns == own,
            start_time=process.start_time,
            ns_pid=process.ns_pid,
            uids=tuple(process.uids),
        )

    def _start_time(self, pid: int) -> int | None:
        try:
            with open(f"{self.proc_root}/{pid}/stat", "rb") as f:
                return parse_stat(f.read().decode("utf-8", "replace")).starttime
        except (OSError, ValueError):
            return None

    def _mnt_ns(self) -> int:
        """The inode of our own mount namespace (0 if unknown)."""
        if self._own_mnt_ns < 0:
            try:
                self._own_mnt_ns = os.stat(f"{self.proc_root}/self/ns/mnt").st_ino
            except OSError:
                self._own_mnt_ns = 0
        return self._own_mnt_ns

    def _read_status(self, target: _Target) -> None:
        """Fill what the caller did not record from the live process' status."""
        if target.status_read or not target.live:
            return
        target.status_read = True
        if not target.start_time:
            target.start_time = self._start_time(target.pid) or 0
        if target.ns_pid and target.uids:
            return
        try:
            with open(f"{self.proc_root}/{target.pid}/status", "rb") as f:
                status = parse_status(f.read().decode("utf-8", "replace"))
        except OSError:
            return
        nspids = parse_id_list(status.get("NSpid", ""))
        target.ns_pid = target.ns_pid or (nspids[-1] if nspids else 0)
        target.uids = target.uids or parse_id_list(status.get("Uid", ""))

    # -- batch ---------------------------------------------------------

    def _symbolize_sorted(
        self, target: _Target, maps: Sequence[MapEntry], addrs: npt.NDArray[np.uint64]
    ) -> list[Frame]:
        out: list[Frame | None] = [None] * len(addrs)
        misses: list[tuple[npt.NDArray[np.intp], str]] = []
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
        misses.append((unmapped, UNMAPPED))

        # addrs are sorted and maps do not overlap, so each mapping's
        # addresses form one contiguous run of `mi`.
        mapped = np.flatnonzero(inside)
        if len(mapped):
            runs = np.flatnonzero(np.diff(mi[mapped])) + 1
            opened: _Opened = {}
            for run in np.split(mapped, runs):
                entry = ordered[int(mi[run[0]])]
                frames, miss, reason = self._symbolize_mapping(target, entry, addrs[run], opened)
                for i, f in zip(run.tolist(), frames, strict=True):
                    out[i] = f
                misses.append((run[miss], reason))

        named = self._name_from_perf_map(target, addrs, out, misses)
        left = 0
        for idx, reason in misses:
            n = len(idx) - (int(np.count_nonzero(named[idx])) if named is not None else 0)
            self._count(reason, n)
            left += n
        self._count(SYMBOLIZED, len(addrs) - left)
        done = [f for f in out if f is not None]
        assert len(done) == len(out), "every address gets a frame"
        return done

    def _symbolize_mapping(
        self,
        target: _Target,
        entry: MapEntry,
        addrs: npt.NDArray[np.uint64],
        opened: _Opened,
    ) -> tuple[list[Frame], npt.NDArray[np.intp], str]:
        """Frames for one mapping's addresses, the positions of those left
        unnamed, and the reason they are."""
        if entry.is_file:
            key = (entry.dev_major, entry.dev_minor, entry.inode, entry.path)
            if key not in opened:
                opened[key] = self._image_for(target, entry)
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
    ) -> tuple[list[Frame], npt.NDArray[np.intp], str]:
        vaddrs, resolved = file_offsets_to_vaddrs(image.segments, file_offsets)
        rows = image.symbols.lookup(vaddrs)
        rows[~resolved] = -1
        names = image.symbols.names_of(rows)
        out: list[Frame] = []
        for addr, off, name in zip(addrs.tolist(), file_offsets.tolist(), names, strict=True):
            if name is None:
                out.append(Frame(f"{label}+0x{off:x}", addr, FrameKind.NATIVE, mapping))
            else:
                out.append(Frame(demangle(name), addr, FrameKind.NATIVE, mapping, system_name=name))
        return out, np.flatnonzero(rows < 0), UNSYMBOLIZED

    def _fallback(
        self,
        addrs: npt.NDArray[np.uint64],
        offsets: npt.NDArray[np.uint64],
        label: str,
        mapping: Mapping,
        reason: str,
    ) -> tuple[list[Frame], npt.NDArray[np.intp], str]:
        frames = [
            Frame(f"{label}+0x{off:x}", addr, FrameKind.NATIVE, mapping)
            for addr, off in zip(addrs.tolist(), offsets.tolist(), strict=True)
        ]
        return frames, np.arange(len(addrs), dtype=np.intp), reason

    # -- files ---------------------------------------------------------

    def _image_for(self, target: _Target, entry: MapEntry) -> tuple[ElfImage | None, str]:
        """The parsed file behind a mapping, or (None, reason)."""
        ident: _MapIdent = (entry.dev_major, entry.dev_minor, entry.inode)
        f, exact = self._open(target, entry)
        if f is None:
            known = self._by_map.get(ident)
            if known is not None and known in self._images:
                self._count(INODE_CACHE_HITS)
                return self._hit(known)
            return None, UNREADABLE
        with f:
            try:
                st = os.fstat(f.fileno())
            except OSError:
                return None, UNREADABLE
            skey: _StatKey = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            known = self._by_stat.get(skey)
            if known is not None and known in self._images:
                if exact:
                    self._remember_map(ident, known)
                return self._hit(known)
            try:
                bid = build_id(f)
            except ElfError:
                bid = ""
            # The size is part of the key: a stripped copy shares the build id
            # but not the symbols.
            key: _CacheKey = ("build_id", bid, st.st_size) if bid else ("stat", *skey)
            self._remember_stat(skey, key)
            if exact:
                self._remember_map(ident, key)
            if key in self._images:
                return self._hit(key)
            self._count(ELF_LOADS)
            try:
                info = read_elf(f)
            except ElfError:
                self._count(ELF_LOAD_ERRORS)
                self._store(("stat", *skey), None)
                self._remember_stat(skey, ("stat", *skey))
                if exact:
                    self._remember_map(ident, ("stat", *skey))
                return None, ELF_ERRORS
            found = self._debug.find(f, info, entry.file_path, self._roots(target))
        image = _image_of(info, found)
        self._store(key, image)
        return image, ""

    def _roots(self, target: _Target) -> list[str]:
        """Prefixes that turn a path as the process sees it into one we can open."""
        return [f"{self.proc_root}/{target.pid}/root", ""] if target.live else [""]

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

    def _remember_map(self, ident: _MapIdent, key: _CacheKey) -> None:
        self._by_map.pop(ident, None)  # re-inserted last: the index stays LRU-ish
        self._by_map[ident] = key
        while len(self._by_map) > 4 * self.max_files:
            del self._by_map[next(iter(self._by_map))]

    def _open(self, target: _Target, entry: MapEntry) -> tuple[BinaryIO | None, bool]:
        """Open the file behind a mapping, preferring one with the mapped inode.

        A deleted file (or memfd) is only reachable through map_files; a path
        may now hold another file (an upgraded package), so the inode decides.
        The second value says the file is the mapped one (its inode matched).
        """
        pid = target.pid
        candidates: list[str] = []
        if target.live:
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
                if "/map_files/" in path:
                    self._count(MAP_FILES)
                return f, bool(entry.inode)
            if other is None and not entry.deleted:
                other = f
            else:
                f.close()
        host = self._open_host(target, entry)
        if host is not None:
            if other is not None:
                other.close()
            return host, True
        if other is not None:
            self._count(INODE_MISMATCH)
        return other, False

    def _open_host(self, target: _Target, entry: MapEntry) -> BinaryIO | None:
        """The mapped file by its host path, for a process of our mount
        namespace that is gone, if the path still holds the mapped inode."""
        if not target.host_ok or not entry.inode:
            return None
        try:
            f = open_regular(entry.file_path)
        except OSError:
            return None
        try:
            st = os.fstat(f.fileno())
        except OSError:
            f.close()
            return None
        dev = (os.major(st.st_dev), os.minor(st.st_dev))
        if (*dev, st.st_ino) != (entry.dev_major, entry.dev_minor, entry.inode):
            f.close()
            return None
        self._count(HOST_PATH_AFTER_EXIT)
        return f

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

    # -- JIT perf maps -------------------------------------------------

    def _name_from_perf_map(
        self,
        target: _Target,
        addrs: npt.NDArray[np.uint64],
        out: list[Frame | None],
        misses: list[tuple[npt.NDArray[np.intp], str]],
    ) -> npt.NDArray[np.bool_] | None:
        """Name what the ELF files did not from the perf map; mark those named."""
        idx = np.concatenate([m[0] for m in misses])
        if len(idx) == 0:
            return None
        perf = self._perf_map(target)
        if perf is None or len(perf) == 0:
            return None
        named = np.zeros(len(addrs), dtype=np.bool_)
        hits = 0
        for i, name in zip(idx.tolist(), perf.lookup(addrs[idx]), strict=True):
            if name is None:
                continue
            old = out[i]
            assert old is not None
            out[i] = Frame(
                demangle(name), old.address, FrameKind.NATIVE, old.mapping, system_name=name
            )
            named[i] = True
            hits += 1
        self._count(PERFMAP, hits)
        return named

    def _perf_map(self, target: _Target) -> PerfMap | None:
        """The process' perf map, brought up to date with what the JIT appended.

        Without a readable file, what was read before (if anything) is used:
        the file may be gone with a container's /tmp while samples taken
        before still need names.
        """
        self._read_status(target)
        key = (target.pid, target.start_time)
        state = self._perf_maps.get(key)
        if state is not None:
            self._perf_maps.move_to_end(key)
        f = self._open_perf_map(target)
        if f is None:
            return state.perf if state is not None else None
        with f:
            try:
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino)
                if state is None or state.ident != ident or st.st_size < state.offset:
                    self._count(PERFMAP_LOADS)
                    state = _PerfMapState(ident, 0, PerfMap(max_lines=self.perf_map_max_lines))
                    self._perf_maps[key] = state
                    self._perf_maps.move_to_end(key)
                    while len(self._perf_maps) > self.max_perf_maps:
                        self._perf_maps.popitem(last=False)
                self._read_perf_map(f, st.st_size, state, final=not target.live)
            except OSError:
                pass  # keep what was read
        return state.perf if state is not None else None

    def _read_perf_map(self, f: BinaryIO, size: int, state: _PerfMapState, *, final: bool) -> None:
        """Feed what was appended since the last read, up to perf_map_max_bytes."""
        budget = self.perf_map_max_bytes - state.offset
        want = min(size - state.offset, budget)
        if want > 0 and not state.capped:
            f.seek(state.offset)
            data = f.read(want)
            perf = state.perf
            malformed, truncated = perf.malformed, perf.truncated_lines
            state.offset += perf.feed(data, final=final)
            state.capped = len(data) == budget  # a line cut by the cap is skipped too
            self._count(PERFMAP_MALFORMED, perf.malformed - malformed)
            self._count(PERFMAP_TRUNCATED, perf.truncated_lines - truncated)
        if state.capped and size - state.offset > state.skipped_bytes:
            self._count(PERFMAP_SKIPPED_BYTES, size - state.offset - state.skipped_bytes)
            state.skipped_bytes = size - state.offset

    def _open_perf_map(self, target: _Target) -> BinaryIO | None:
        """The perf map file, if there is one we may trust.

        Looked for in the process' root under the pid it knows itself by,
        then on the host under its host pid; for a process gone, only on the
        host and only if it shared our mount namespace.
        """
        pid, ns_pid = target.pid, target.ns_pid or target.pid
        if target.live:
            paths = [f"{self.proc_root}/{pid}/root/tmp/perf-{ns_pid}.map", f"/tmp/perf-{pid}.map"]
        elif target.host_ok:
            paths = [f"/tmp/perf-{ns_pid}.map"]
        else:
            return None
        for path in paths:
            try:
                f = open_regular(path)
            except OSError:
                continue
            try:
                st = os.fstat(f.fileno())
            except OSError:
                f.close()
                continue
            if self._trusted(target, st):
                return f
            f.close()
        return None

    def _trusted(self, target: _Target, st: os.stat_result) -> bool:
        """Written by the process (its user or root) since it started.

        /tmp is writable by all: anyone could leave a perf-<pid>.map for a pid
        to come, and a reused pid finds its predecessor's.
        """
        if target.uids and st.st_uid != 0 and st.st_uid not in target.uids:
            self._count(PERFMAP_UNTRUSTED)
            return False
        started = self._start_wall_ns(target.start_time)
        if started and st.st_mtime_ns < started - _STALE_SLACK_NS:
            self._count(PERFMAP_STALE)
            return False
        return True

    def _start_wall_ns(self, start_time: int) -> int:
        """A starttime (clock ticks after boot) as wall-clock ns; 0 if unknown."""
        if not start_time:
            return 0
        if self._btime_ns < 0:
            self._btime_ns = 0
            try:
                with open(f"{self.proc_root}/stat", encoding="ascii", errors="replace") as f:
                    for line in f:
                        if line.startswith("btime "):
                            self._btime_ns = int(line.split()[1]) * 1_000_000_000
                            break
            except (OSError, ValueError, IndexError):
                pass
        if not self._btime_ns:
            return 0
        return self._btime_ns + start_time * 1_000_000_000 // os.sysconf("SC_CLK_TCK")

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n
