"""symbolizer/native.py against real processes built from tests/fixtures.

The fixture program prints the runtime addresses of known functions (in the
executable and in a shared library) and waits; the test reads its real
/proc/PID/maps and checks the names, for PIE and non-PIE builds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from profiler.procfs import MapEntry, parse_maps
from symbolizer.elf import build_id_of_path, read_elf
from symbolizer.native import (
    ANONYMOUS,
    ELF_CACHE_HITS,
    ELF_ERRORS,
    ELF_EVICTIONS,
    ELF_LOADS,
    FRAME_COUNTERS,
    INODE_MISMATCH,
    SYMBOLIZED,
    UNMAPPED,
    UNREADABLE,
    UNSYMBOLIZED,
    NativeSymbolizer,
)
from symbolizer.profile import FrameKind
from tests.conftest import build_c

LIB_BUILD_ID = "4b1c000000000000000000000000000000000001"


@pytest.fixture(scope="module")
def bins(fixture_build_dir: Path) -> dict[str, Path]:
    d = fixture_build_dir
    lib = build_c(d, "native_lib.c", "libkilnfix.so", "-O2", "-shared", "-fPIC",
                  f"-Wl,--build-id=0x{LIB_BUILD_ID}")  # fmt: skip
    link = ["-Wl,--no-as-needed", str(lib), f"-Wl,-rpath,{d}"]
    return {
        "lib": lib,
        "pie": build_c(d, "native_prog.c", "native_pie", "-O2", "-fPIE", "-pie", *link),
        "nopie": build_c(d, "native_prog.c", "native_nopie", "-O2", "-fno-pie", "-no-pie", *link),
    }


@dataclass
class Running:
    pid: int
    maps: list[MapEntry]
    alpha_ret: int
    static_ret: int
    lib_ret: int
    alpha: int

    def entry(self, addr: int) -> MapEntry:
        return next(m for m in self.maps if m.start <= addr < m.end)


@contextmanager
def running(exe: Path) -> Iterator[Running]:
    with subprocess.Popen(
        [str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            addrs = [int(x, 16) for x in proc.stdout.readline().split()]
            maps = parse_maps(Path(f"/proc/{proc.pid}/maps").read_text())
            yield Running(proc.pid, maps, *addrs)
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)


@pytest.mark.parametrize("which", ["pie", "nopie"])
def test_names_through_load_bias(bins: dict[str, Path], which: str) -> None:
    with running(bins[which]) as r:
        ns = NativeSymbolizer()
        frames = ns.symbolize(r.pid, r.maps, [r.alpha_ret, r.static_ret, r.lib_ret, r.alpha])
    assert [f.function for f in frames] == [
        "kiln_fixture_alpha",
        "kiln_fixture_static",  # local symbol, only in .symtab
        "kiln_lib_function",  # in the shared library
        "kiln_fixture_alpha",
    ]
    assert [f.address for f in frames] == [r.alpha_ret, r.static_ret, r.lib_ret, r.alpha]
    assert all(f.kind is FrameKind.NATIVE for f in frames)
    assert all(f.system_name == f.function for f in frames)
    exe_map, lib_map = frames[0].mapping, frames[2].mapping
    assert exe_map is not None and lib_map is not None
    assert exe_map.filename == str(bins[which])
    assert exe_map.build_id == build_id_of_path(str(bins[which])) != ""
    assert (lib_map.filename, lib_map.build_id) == (str(bins["lib"]), LIB_BUILD_ID)
    assert lib_map.start <= r.lib_ret < lib_map.limit
    entry = r.entry(r.lib_ret)
    assert (lib_map.start, lib_map.limit, lib_map.offset) == (entry.start, entry.end, entry.offset)
    if which == "nopie":  # ET_EXEC: linked at its runtime address
        assert r.alpha < 0x1000_0000
    assert ns.counters[SYMBOLIZED] == 4


def test_unmapped_and_anonymous_addresses_are_kept(bins: dict[str, Path]) -> None:
    with running(bins["pie"]) as r:
        heap = next(m for m in r.maps if m.path == "[heap]")
        ns = NativeSymbolizer()
        frames = ns.symbolize(r.pid, r.maps, [0x10, heap.start + 0x20, r.alpha_ret])
    assert frames[0].function == "[unknown]+0x10"
    assert frames[0].mapping is None
    assert frames[1].function == "[heap]+0x20"
    assert frames[2].function == "kiln_fixture_alpha"
    assert ns.counters[UNMAPPED] == 1
    assert ns.counters[ANONYMOUS] == 1
    assert set(FRAME_COUNTERS) <= set(ns.counters)


def test_address_without_symbol_is_module_plus_file_offset(bins: dict[str, Path]) -> None:
    with running(bins["pie"]) as r:
        first = r.maps[0]  # the ELF header page of the executable: no function there
        ns = NativeSymbolizer()
        (frame,) = ns.symbolize(r.pid, r.maps, [first.start + 0x10])
    assert frame.function == f"native_pie+0x{first.offset + 0x10:x}"
    assert ns.counters[UNSYMBOLIZED] == 1


def test_order_and_duplicates_are_preserved(bins: dict[str, Path]) -> None:
    with running(bins["pie"]) as r:
        ns = NativeSymbolizer()
        addrs = np.array([r.lib_ret, r.alpha_ret, r.lib_ret, 0x10, r.alpha_ret], dtype=np.uint64)
        frames = ns.symbolize(r.pid, r.maps, addrs)
    assert [f.address for f in frames] == addrs.tolist()
    assert frames[0] == frames[2] and frames[1] == frames[4]
    assert ns.symbolize(r.pid, r.maps, []) == []


def test_files_are_parsed_once_and_the_cache_is_bounded(bins: dict[str, Path]) -> None:
    with running(bins["pie"]) as r:
        ns = NativeSymbolizer(max_files=1)
        ns.symbolize(r.pid, r.maps, [r.alpha_ret])
        ns.symbolize(r.pid, r.maps, [r.alpha_ret])
        assert ns.counters[ELF_LOADS] == 1
        assert ns.counters[ELF_CACHE_HITS] == 1
        ns.symbolize(r.pid, r.maps, [r.lib_ret])  # a second file evicts the first
        assert ns.counters[ELF_EVICTIONS] == 1
        assert ns.cached_files() == 1
        ns.clear()
        assert ns.cached_files() == 0


def test_same_build_id_under_another_path_is_not_reparsed(
    bins: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "copy.so"
    shutil.copy(bins["lib"], copy)
    with running(bins["pie"]) as r:
        ns = NativeSymbolizer()
        ns.symbolize(r.pid, r.maps, [r.lib_ret])
        entry = r.entry(r.lib_ret)
        ino = copy.stat().st_ino
        moved = MapEntry(entry.start, entry.end, entry.perms, entry.offset, 0, 0, ino, str(copy))
        (frame,) = ns.symbolize(r.pid, [moved], [r.lib_ret])
    assert frame.function == "kiln_lib_function"
    assert ns.counters[ELF_LOADS] == 1


def _fake_proc(tmp_path: Path, pid: int) -> Path:
    root = tmp_path / "proc"
    (root / str(pid) / "root").mkdir(parents=True)
    (root / str(pid) / "map_files").mkdir()
    return root


def _put(root: Path, pid: int, path: str, data: bytes) -> None:
    dest = root / str(pid) / "root" / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def test_truncated_file_falls_back_to_module_offset(bins: dict[str, Path], tmp_path: Path) -> None:
    with running(bins["pie"]) as r:
        root = _fake_proc(tmp_path, r.pid)
        exe = r.entry(r.alpha_ret)
        _put(root, r.pid, exe.file_path, bins["pie"].read_bytes()[:200])
        ns = NativeSymbolizer(proc_root=str(root))
        frames = ns.symbolize(r.pid, r.maps, [r.alpha_ret, r.alpha_ret + 1])
    off = r.alpha_ret - exe.start + exe.offset
    assert [f.function for f in frames] == [f"native_pie+0x{off:x}", f"native_pie+0x{off + 1:x}"]
    assert frames[0].mapping is not None and frames[0].mapping.build_id == ""
    assert ns.counters[ELF_ERRORS] == 2
    # the failure is cached: a second batch does not parse the file again
    ns.symbolize(r.pid, r.maps, [r.alpha_ret])
    assert ns.counters[ELF_LOADS] == 1


def test_unreadable_file_falls_back(bins: dict[str, Path], tmp_path: Path) -> None:
    with running(bins["pie"]) as r:
        root = _fake_proc(tmp_path, r.pid)
        ns = NativeSymbolizer(proc_root=str(root))
        (frame,) = ns.symbolize(r.pid, r.maps, [r.lib_ret])
    entry = r.entry(r.lib_ret)
    assert frame.function == f"libkilnfix.so+0x{r.lib_ret - entry.start + entry.offset:x}"
    assert ns.counters[UNREADABLE] == 1


def test_fifo_in_place_of_a_binary_does_not_block(bins: dict[str, Path], tmp_path: Path) -> None:
    with running(bins["pie"]) as r:
        root = _fake_proc(tmp_path, r.pid)
        entry = r.entry(r.lib_ret)
        fifo = root / str(r.pid) / "root" / entry.file_path.lstrip("/")
        fifo.parent.mkdir(parents=True)
        os.mkfifo(fifo)
        ns = NativeSymbolizer(proc_root=str(root))
        (frame,) = ns.symbolize(r.pid, r.maps, [r.lib_ret])
    assert frame.function.startswith("libkilnfix.so+0x")
    assert ns.counters[UNREADABLE] == 1


def test_map_files_is_used_when_the_path_holds_another_file(
    bins: dict[str, Path], tmp_path: Path
) -> None:
    with running(bins["pie"]) as r:
        root = _fake_proc(tmp_path, r.pid)
        entry = r.entry(r.lib_ret)
        _put(root, r.pid, entry.file_path, bins["nopie"].read_bytes())  # an "upgraded" file
        ns = NativeSymbolizer(proc_root=str(root))
        (stale,) = ns.symbolize(r.pid, r.maps, [r.lib_ret])
        assert ns.counters[INODE_MISMATCH] == 1  # best effort: the only file we could open
        assert stale.function != "kiln_lib_function"
        # with map_files present, the mapped inode itself is read
        (root / str(r.pid) / "map_files" / f"{entry.start:x}-{entry.end:x}").symlink_to(bins["lib"])
        ns = NativeSymbolizer(proc_root=str(root))
        (frame,) = ns.symbolize(r.pid, r.maps, [r.lib_ret])
    assert frame.function == "kiln_lib_function"
    assert ns.counters.get(INODE_MISMATCH, 0) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="/proc/PID/map_files needs CAP_SYS_ADMIN")
def test_deleted_executable_is_read_through_map_files(
    bins: dict[str, Path], tmp_path: Path
) -> None:
    exe = tmp_path / "doomed"
    shutil.copy(bins["pie"], exe)
    with running(exe) as r:
        exe.unlink()
        maps = parse_maps(Path(f"/proc/{r.pid}/maps").read_text())
        assert any(m.deleted for m in maps)
        ns = NativeSymbolizer()
        frames = ns.symbolize(r.pid, maps, [r.alpha_ret, r.lib_ret])
    assert [f.function for f in frames] == ["kiln_fixture_alpha", "kiln_lib_function"]
    assert frames[0].mapping is not None and frames[0].mapping.filename == str(exe)


def test_vdso_is_named(bins: dict[str, Path]) -> None:
    own = [m for m in parse_maps(Path("/proc/self/maps").read_text()) if m.path == "[vdso]"]
    if not own:
        pytest.skip("no [vdso] in this process")
    with open("/proc/self/mem", "rb") as mem:
        mem.seek(own[0].start)
        info = read_elf(mem.read(own[0].end - own[0].start))
    i = info.symbols.names.index("__vdso_clock_gettime")
    vaddr = int(info.symbols.starts[i])
    with running(bins["pie"]) as r:
        vdso = next(m for m in r.maps if m.path == "[vdso]")
        ns = NativeSymbolizer()
        frames = ns.symbolize(r.pid, r.maps, [vdso.start + vaddr + 4, vdso.start + 0x10])
    assert frames[0].function == "__vdso_clock_gettime"
    assert frames[1].function == "[vdso]+0x10"
    assert frames[0].mapping is not None and frames[0].mapping.filename == "[vdso]"
    assert frames[0].mapping.build_id == info.build_id


def test_large_batch(bins: dict[str, Path]) -> None:
    with running(bins["pie"]) as r:
        ns = NativeSymbolizer()
        rng = np.random.default_rng(0)
        exe = r.entry(r.alpha_ret)
        addrs = np.concatenate(
            [
                rng.integers(exe.start, exe.end, 20_000, dtype=np.uint64),
                np.full(1000, r.lib_ret, dtype=np.uint64),
                rng.integers(1, 1 << 40, 1000, dtype=np.uint64),
            ]
        )
        frames = ns.symbolize(r.pid, r.maps, addrs)
    assert len(frames) == len(addrs)
    # frame counters count distinct addresses (each is resolved once per batch)
    assert sum(ns.counters[c] for c in FRAME_COUNTERS) == len(np.unique(addrs))
    assert {f.function for f in frames[20_000:21_000]} == {"kiln_lib_function"}
