"""Which tables sit in the unwind maps: sharing, eviction, budget, load bias."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from profiler.bpf import abi
from profiler.procfs import MapEntry, parse_maps
from profiler.unwind_tables import (
    MAP_KEY,
    MAP_VAL,
    PAGE_KEY,
    PAGE_VAL,
    UnwindTables,
    mapping_bias,
)
from symbolizer.elf import load_segments
from symbolizer.unwind_index import ChunkedTable
from tests.fakes import FakeUnwindMaps

ROW = abi.numpy_dtype(abi.UnwindRow)


def own_maps() -> list[MapEntry]:
    """This process's mappings of the interpreter and libc (numpy's big
    libraries would only make the tests slower)."""
    keep = ("python3", "libc.so")
    return [
        m for m in parse_maps(Path("/proc/self/maps").read_text()) if any(k in m.path for k in keep)
    ]


def exec_files(maps: list[MapEntry]) -> set[tuple[int, int, int]]:
    return {(m.dev_major, m.dev_minor, m.inode) for m in maps if m.is_exec and m.is_file}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def lookup(maps: FakeUnwindMaps, pid: int, pc: int) -> np.void | None:
    """What find_row in cpu_sample.bpf.c does, over the fake maps."""
    best: tuple[int, bytes] | None = None
    for kb, vb in maps.mappings.items():
        k = np.frombuffer(kb, MAP_KEY)[0]
        bits = int(k["prefixlen"]) - 32
        start = int.from_bytes(bytes(k["addr"]), "big")
        if (
            int(k["pid"]) == pid
            and (pc >> (64 - bits)) == (start >> (64 - bits))
            and (best is None or bits > best[0])
        ):
            best = (bits, vb)
    if best is None:
        return None
    v = np.frombuffer(best[1], MAP_VAL)[0]
    if int(v["flags"]) & abi.MAP_NO_TABLE:
        return None
    vaddr = pc - int(v["bias"])

    def page(fid: int, p: int) -> np.void | None:
        key = np.zeros(1, PAGE_KEY)
        key["file_id"], key["page"] = fid, p
        raw = maps.pages.get(key.tobytes())
        return None if raw is None else np.frombuffer(raw, PAGE_VAL)[0]

    pv = page(int(v["file_id"]), vaddr >> abi.PAGE_SHIFT)
    if pv is not None and int(pv["flags"]) & abi.PAGE_SPLIT:
        pv = page(int(v["file_id"]) | abi.FINE_FILE_BIT, vaddr >> abi.FINE_SHIFT)
    if pv is None:
        return None
    rows = [
        np.frombuffer(maps.rows[int(pv["first_row"]) + i], ROW)[0] for i in range(int(pv["count"]))
    ]
    cands = [r for r in rows if int(r["pc"]) <= vaddr]
    return cands[-1] if cands else None


def test_own_process_tables_give_the_entry_rule_of_a_libc_function() -> None:
    maps = FakeUnwindMaps()
    tables = UnwindTables(maps, capacity_rows=1 << 20)
    tables.sync_process(os.getpid(), own_maps())
    assert tables.counters["tables_built"] >= 2  # python and libc at least
    assert os.getpid() in maps.tracked
    libc = ctypes.CDLL("libc.so.6")
    getpid = ctypes.cast(libc.getpid, ctypes.c_void_p).value
    assert getpid is not None
    row = lookup(maps, os.getpid(), getpid)
    assert row is not None, "libc's getpid must be covered"
    assert (int(row["cfa_type"]), int(row["cfa_offset"])) == (abi.CfaType.RSP, 8)


def test_files_are_shared_between_processes_and_kept_a_while_when_unused() -> None:
    maps = FakeUnwindMaps()
    clock = Clock()
    tables = UnwindTables(maps, capacity_rows=1 << 20, clock=clock, keep_unused_s=60)
    m = own_maps()
    tables.sync_process(os.getpid(), m)
    built = tables.counters["tables_built"]
    tables.sync_process(os.getpid() + 1_000_000, m)  # another process, same files
    assert tables.counters["tables_built"] == built
    n_mappings = len(maps.mappings)
    tables.remove_process(os.getpid())
    assert 0 < len(maps.mappings) < n_mappings
    tables.remove_process(os.getpid() + 1_000_000)
    assert maps.mappings == {} and maps.tracked == set()
    pages = len(maps.pages)
    assert pages > 0, "unused tables stay for a while: the same binary often runs again"
    clock.t = 30
    tables.maintain()
    assert len(maps.pages) == pages
    clock.t = 61
    tables.maintain()
    assert maps.pages == {} and tables.stats()["files"] == 0
    assert tables.rows.free_rows == 1 << 20


def test_a_full_budget_evicts_unused_tables_then_falls_back_to_frame_pointers() -> None:
    maps = FakeUnwindMaps()
    rows = np.zeros(100, ROW)
    rows["pc"] = np.arange(100) * 16
    rows["cfa_type"] = abi.CfaType.RSP
    rows["cfa_offset"] = 8
    pages = np.zeros(
        1, dtype=[("page", "<u4"), ("first_row", "<u4"), ("count", "<u2"), ("flags", "<u2")]
    )
    pages["count"] = 64
    table = ChunkedTable(rows, pages, pages[:0])

    def opener(_pid: int, m: MapEntry) -> BinaryIO:
        return open(m.path, "rb")

    tables = UnwindTables(maps, capacity_rows=150, builder=lambda f: table, opener=opener)
    exe = [m for m in own_maps() if m.is_exec and m.is_file]
    assert len(exe) >= 2
    tables.sync_process(1, exe[:1])
    tables.remove_process(1)
    tables.sync_process(2, exe[1:2])  # needs the room: the unused table goes
    assert tables.counters["tables_evicted"] == 1 and tables.counters["no_room"] == 0
    tables.sync_process(3, exe[:1])  # no room while pid 2 uses its table
    assert tables.counters["no_room"] == 1
    flags = {int(np.frombuffer(v, MAP_VAL)[0]["flags"]) for v in maps.mappings.values()}
    assert flags == {0, abi.MAP_NO_TABLE}


def test_unreadable_or_corrupt_files_map_to_frame_pointers() -> None:
    maps = FakeUnwindMaps()

    def corrupt(_f: object) -> ChunkedTable:
        raise ValueError("bad .eh_frame")

    tables = UnwindTables(maps, capacity_rows=1000, builder=corrupt)
    tables.sync_process(os.getpid(), own_maps())
    assert tables.counters["table_errors"] >= 1
    vals = [np.frombuffer(v, MAP_VAL)[0] for v in maps.mappings.values()]
    assert vals and all(int(v["flags"]) == abi.MAP_NO_TABLE for v in vals)


def test_mapping_bias_of_a_pie_text_mapping() -> None:
    m = next(m for m in own_maps() if m.is_exec and "libc" in m.path)
    with open(m.path, "rb") as f:
        segs = load_segments(f)
    bias = mapping_bias(m, segs)
    assert bias is not None
    text = next(s for s in segs if s.offset <= m.offset < s.offset + s.filesz)
    assert m.start - bias == text.vaddr + (m.offset - text.offset)
