"""Which unwind tables sit in the BPF maps, for which processes.

Tables are built only for executable mappings of processes being sampled,
once per file (shared by every process mapping it), placed in one global
rows array by a first-fit allocator, and evicted once no process has used
them for `keep_unused_s` (the same binaries are often started again), or
sooner when the memory cap needs the room. Each process gets LPM-trie entries
(pid + address prefix → file id and load bias) for its executable mappings;
a mapping whose table cannot be built is entered as NO_TABLE so the BPF
program walks it by frame pointers instead of guessing.

The BPF side is reached through `UnwindMaps`; table building is injected,
so this is tested without root against an in-memory map.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from profiler.bpf import abi
from profiler.bpf.loader import UnwindMaps
from profiler.procfs import MapEntry
from symbolizer.elf import ElfError, Segment, load_segments
from symbolizer.unwind_index import ChunkedTable, build_chunks, lpm_prefixes

log = logging.getLogger("kiln.unwind")

PAGE_KEY = abi.numpy_dtype(abi.PageKey)
PAGE_VAL = abi.numpy_dtype(abi.PageVal)
MAP_KEY = abi.numpy_dtype(abi.MappingKey)
MAP_VAL = abi.numpy_dtype(abi.MappingVal)
VDSO = "[vdso]"

TableBuilder = Callable[[BinaryIO], ChunkedTable]
Opener = Callable[[int, MapEntry], BinaryIO | None]


def default_builder(f: BinaryIO) -> ChunkedTable:
    from symbolizer.unwind import parse_unwind_rows

    return build_chunks(parse_unwind_rows(f).rows)


def open_mapping(pid: int, entry: MapEntry, proc_root: str = "/proc") -> BinaryIO | None:
    """The mapped file through map_files (works for deleted files and other
    mount namespaces); the vDSO through the process's memory."""
    if entry.path == VDSO:
        try:
            with open(f"{proc_root}/{pid}/mem", "rb") as mem:
                mem.seek(entry.start)
                return io.BytesIO(mem.read(entry.end - entry.start))
        except (OSError, ValueError, OverflowError):
            return None
    try:
        return open(f"{proc_root}/{pid}/map_files/{entry.start:x}-{entry.end:x}", "rb")
    except OSError:
        pass
    try:
        return open(f"{proc_root}/{pid}/root{entry.file_path}", "rb")
    except OSError:
        return None


class RowAllocator:
    """First-fit ranges in [0, capacity) of the global rows array."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free: list[tuple[int, int]] = [(0, capacity)]  # sorted (start, length)

    def alloc(self, n: int) -> int | None:
        for i, (start, length) in enumerate(self._free):
            if length >= n:
                if length == n:
                    del self._free[i]
                else:
                    self._free[i] = (start + n, length - n)
                return start
        return None

    def free(self, start: int, n: int) -> None:
        self._free.append((start, n))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for s, length in self._free:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((s, length))
        self._free = merged

    @property
    def free_rows(self) -> int:
        return sum(length for _, length in self._free)


@dataclass
class LoadedFile:
    file_id: int
    segments: list[Segment]
    first_row: int = 0
    n_rows: int = 0
    page_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, PAGE_KEY))
    users: dict[int, int] = field(default_factory=dict)  # pid -> mappings of this file
    ok: bool = True  # False: no usable table, mappings go NO_TABLE
    unused_since: float = 0.0

    @property
    def bytes(self) -> int:
        return 16 * self.n_rows + 16 * len(self.page_keys)


FileKey = tuple[object, ...]


def file_key(entry: MapEntry) -> FileKey:
    """A mapped file's identity from the maps line alone (no I/O)."""
    if entry.path == VDSO:
        return ("vdso", os.uname().release, entry.end - entry.start)
    return ("file", entry.dev_major, entry.dev_minor, entry.inode)


def mapping_bias(entry: MapEntry, segments: Sequence[Segment]) -> int | None:
    """Load bias of a mapping: ELF vaddr = runtime address - bias."""
    for seg in segments:
        if seg.offset <= entry.offset < seg.offset + max(seg.filesz, 1):
            return entry.start - entry.offset + seg.offset - seg.vaddr
    return None


def mapping_entries(
    pid: int, entry: MapEntry, file_id: int, flags: int, bias: int
) -> tuple[np.ndarray, np.ndarray]:
    prefixes = lpm_prefixes(entry.start, entry.end)
    keys = np.zeros(len(prefixes), MAP_KEY)
    vals = np.zeros(len(prefixes), MAP_VAL)
    for i, (start, bits) in enumerate(prefixes):
        keys[i]["prefixlen"] = 32 + bits
        keys[i]["pid"] = pid
        keys[i]["addr"] = np.frombuffer(start.to_bytes(8, "big"), np.uint8)
    vals["file_id"] = file_id
    vals["flags"] = flags
    vals["bias"] = bias & 0xFFFFFFFFFFFFFFFF
    return keys, vals


class UnwindTables:
    def __init__(
        self,
        maps: UnwindMaps,
        *,
        capacity_rows: int,
        capacity_pages: int = 1 << 62,
        builder: TableBuilder = default_builder,
        opener: Opener = open_mapping,
        clock: Callable[[], float] = time.monotonic,
        keep_unused_s: float = 120.0,
    ) -> None:
        self.keep_unused_s = keep_unused_s
        self.maps = maps
        self.rows = RowAllocator(capacity_rows)
        self.capacity_pages = capacity_pages
        self._builder = builder
        self._opener = opener
        self._clock = clock
        self._files: OrderedDict[FileKey, LoadedFile] = OrderedDict()  # LRU: unused first
        self._next_id = 1
        self._proc_entries: dict[int, dict[tuple[int, int], tuple[np.ndarray, FileKey]]] = {}
        self._lock = threading.RLock()
        self.counters: dict[str, int] = {
            "tables_built": 0,
            "table_errors": 0,
            "tables_evicted": 0,
            "no_room": 0,
            "build_ms": 0,
            "processes": 0,
        }

    # -- queries -------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        return sum(f.bytes for f in self._files.values())

    def stats(self) -> dict[str, int]:
        files = list(self._files.values())
        return {
            "files": len(files),
            "rows": sum(f.n_rows for f in files),
            "pages": sum(len(f.page_keys) for f in files),
            "bytes": self.used_bytes,
            "free_rows": self.rows.free_rows,
            "processes": len(self._proc_entries),
        }

    # -- processes -------------------------------------------------------------

    def sync_process(self, pid: int, maps: Iterable[MapEntry]) -> None:
        """Make the BPF maps describe pid's executable mappings exactly."""
        with self._lock:
            wanted = [m for m in maps if m.is_exec and (m.is_file or m.path == VDSO)]
            current = self._proc_entries.get(pid, {})
            new: dict[tuple[int, int], tuple[np.ndarray, FileKey]] = {}
            for m in wanted:
                span = (m.start, m.end)
                fkey = file_key(m)
                if span in current and current[span][1] == fkey:
                    new[span] = current.pop(span)
                    continue
                loaded = self._ensure_file(pid, m, fkey)
                bias = mapping_bias(m, loaded.segments) if loaded else None
                if loaded is None or not loaded.ok or bias is None:
                    keys, vals = mapping_entries(pid, m, 0, abi.MAP_NO_TABLE, 0)
                else:
                    keys, vals = mapping_entries(pid, m, loaded.file_id, 0, bias)
                self.maps.write_mappings(keys, vals)
                if loaded is not None:
                    loaded.users[pid] = loaded.users.get(pid, 0) + 1
                    self._files.move_to_end(fkey)
                new[span] = (keys, fkey)
            for keys, fkey in current.values():  # mappings gone since last sync
                self.maps.delete_mappings(keys)
                self._release(pid, fkey)
            if pid not in self._proc_entries:
                self.counters["processes"] += 1
            self._proc_entries[pid] = new
            self.maps.set_tracked(pid, True)

    def remove_process(self, pid: int) -> None:
        with self._lock:
            entries = self._proc_entries.pop(pid, None)
            if entries is None:
                return
            for keys, fkey in entries.values():
                self.maps.delete_mappings(keys)
                self._release(pid, fkey)
            self.maps.set_tracked(pid, False)

    def tracked(self) -> set[int]:
        with self._lock:
            return set(self._proc_entries)

    # -- files -------------------------------------------------------------------

    def _release(self, pid: int, fkey: FileKey) -> None:
        """One mapping of fkey by pid is gone; an unused table is kept a while
        (the same binaries are often started again), then evicted."""
        f = self._files.get(fkey)
        if f is None:
            return
        left = f.users.get(pid, 0) - 1
        if left > 0:
            f.users[pid] = left
        else:
            f.users.pop(pid, None)
        if not f.users:
            f.unused_since = self._clock()
            self._files.move_to_end(fkey, last=False)

    def maintain(self) -> None:
        """Evict tables no process has used for keep_unused_s."""
        with self._lock:
            now = self._clock()
            stale = [
                k
                for k, f in self._files.items()
                if not f.users and now - f.unused_since >= self.keep_unused_s
            ]
            for k in stale:
                self._evict(k)

    def _evict(self, fkey: FileKey) -> None:
        f = self._files.pop(fkey)
        self.maps.delete_pages(f.page_keys)
        if f.n_rows:
            self.rows.free(f.first_row, f.n_rows)
        self.counters["tables_evicted"] += 1

    def _ensure_file(self, pid: int, entry: MapEntry, fkey: FileKey) -> LoadedFile | None:
        f = self._files.get(fkey)
        if f is not None:
            return f
        fh = self._opener(pid, entry)
        if fh is None:
            self.counters["table_errors"] += 1
            return None
        t0 = self._clock()
        try:
            with fh:
                segments = load_segments(fh)
                fh.seek(0)
                table = self._builder(fh)
        except (ElfError, ValueError, OSError) as e:
            log.debug("no unwind table for %s: %s", entry.path, e)
            self.counters["table_errors"] += 1
            failed = LoadedFile(self._new_id(), [], ok=False)
            self._files[fkey] = failed
            return failed
        self.counters["build_ms"] += int((self._clock() - t0) * 1000)
        placed = self._place(fkey, segments, table)
        if placed.ok:
            self.counters["tables_built"] += 1
        return placed

    def _new_id(self) -> int:
        fid = self._next_id
        self._next_id += 1
        return fid

    def _pages_used(self) -> int:
        return sum(len(f.page_keys) for f in self._files.values())

    def _place(self, fkey: FileKey, segments: list[Segment], table: ChunkedTable) -> LoadedFile:
        n = len(table.chunk_rows)
        n_pages = len(table.pages) + len(table.fine_pages)
        while self._pages_used() + n_pages > self.capacity_pages and self._evict_unused():
            pass
        first = self.rows.alloc(n) if n else 0
        while first is None and self._evict_unused():
            first = self.rows.alloc(n)
        if first is not None and self._pages_used() + n_pages > self.capacity_pages:
            self.rows.free(first, n)
            first = None
        if first is None:
            self.counters["no_room"] += 1
            log.warning(
                "unwind table memory full (%d rows, %d pages needed); raise --unwind-memory",
                n,
                n_pages,
            )
            loaded = LoadedFile(self._new_id(), segments, ok=False)
            self._files[fkey] = loaded
            return loaded
        fid = self._new_id()
        self.maps.write_rows(first, table.chunk_rows)
        keys_parts, vals_parts = [], []
        for pages, bit in ((table.pages, 0), (table.fine_pages, abi.FINE_FILE_BIT)):
            keys = np.zeros(len(pages), PAGE_KEY)
            vals = np.zeros(len(pages), PAGE_VAL)
            keys["file_id"] = fid | bit
            keys["page"] = pages["page"]
            vals["first_row"] = pages["first_row"].astype(np.uint32) + np.uint32(first)
            vals["count"] = pages["count"]
            vals["flags"] = pages["flags"]
            keys_parts.append(keys)
            vals_parts.append(vals)
        keys = np.concatenate(keys_parts)
        vals = np.concatenate(vals_parts)
        self.maps.write_pages(keys, vals)
        loaded = LoadedFile(fid, segments, first, n, keys)
        self._files[fkey] = loaded
        return loaded

    def _evict_unused(self) -> bool:
        for fkey, f in self._files.items():
            if not f.users:
                self._evict(fkey)
                return True
        return False
