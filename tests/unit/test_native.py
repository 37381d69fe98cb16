"""symbolizer/native.py against real processes built from tests/fixtures.

The fixture program prints the runtime addresses of known functions (in the
executable and in a shared library) and waits; the test reads its real
/proc/PID/maps and checks the names, for PIE and non-PIE builds, and for
binaries that are hard to reach: in another mount namespace, deleted or
replaced since they started, living in a memfd, or whose process has exited.
Separate debug files are tested in test_debuginfo.py, perf maps in
test_perfmap.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from profiler.processes import ProcessInfo, ProcessTable
from profiler.procfs import MapEntry, parse_maps
from symbolizer.elf import build_id_of_path, read_elf
from symbolizer.native import (
    ANONYMOUS,
    COUNTER_NAMES,
    ELF_CACHE_HITS,
    ELF_ERRORS,
    ELF_EVICTIONS,
    ELF_LOADS,
    FRAME_COUNTERS,
    HOST_PATH_AFTER_EXIT,
    INODE_CACHE_HITS,
    INODE_MISMATCH,
    MAP_FILES,
    PROCESS_EXITED,
    SYMBOLIZED,
    UNMAPPED,
    UNREADABLE,
    UNSYMBOLIZED,
    NativeSymbolizer,
)
from symbolizer.profile import FrameKind
from tests.conftest import build_c, skip_outside_ci

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
        "solo": build_c(d, "native_prog.c", "native_solo", "-O2", "-DKILN_NO_LIB"),
        "memfd": build_c(d, "sym_memfd.c", "sym_memfd", "-O2", "-ldl"),
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
def started(cmd: Sequence[str | Path]) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """Run a fixture until the block ends; yields it and the hex addresses it printed."""
    with subprocess.Popen(
        [str(c) for c in cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            line = proc.stdout.readline()
            assert line, f"{cmd} printed nothing (exit status {proc.poll()})"
            yield proc, [int(x, 16) if x != "(nil)" else 0 for x in line.split()]
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)


@contextmanager
def running(exe: Path) -> Iterator[Running]:
    """native_prog (or a copy of it) until the block ends."""
    with started([exe]) as (proc, addrs):
        maps = parse_maps(Path(f"/proc/{proc.pid}/maps").read_text())
        yield Running(proc.pid, maps, *addrs)


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
    assert ns.counters[MAP_FILES] == 1


def test_vdso_is_named(bins: dict[str, Path]) -> None:
    own = [m for m in parse_maps(Path("/proc/self/maps").read_text()) if m.path == "[vdso]"]
    if not own:
        skip_outside_ci("no [vdso] in this process")
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


# -- binaries that are hard to reach -----------------------------------------------


def test_counters_start_at_zero() -> None:
    assert NativeSymbolizer().counters == dict.fromkeys(COUNTER_NAMES, 0)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (map_files, mount namespaces)"
)


@needs_root
def test_replaced_executable_is_read_through_map_files(
    bins: dict[str, Path], tmp_path: Path
) -> None:
    exe = tmp_path / "upgraded"
    shutil.copy(bins["pie"], exe)
    with running(exe) as r:
        newer = tmp_path / "newer"
        shutil.copy(bins["nopie"], newer)
        newer.replace(exe)  # the path now holds another inode, as after a package upgrade
        # Maps recorded before the upgrade name the path without " (deleted)".
        assert not any(m.deleted for m in r.maps)
        ns = NativeSymbolizer()
        frames = ns.symbolize(r.pid, r.maps, [r.alpha_ret, r.static_ret])
        fresh = parse_maps(Path(f"/proc/{r.pid}/maps").read_text())
        assert any(m.deleted and m.file_path == str(exe) for m in fresh)
        again = NativeSymbolizer().symbolize(r.pid, fresh, [r.alpha_ret, r.static_ret])
    assert [f.function for f in frames] == ["kiln_fixture_alpha", "kiln_fixture_static"]
    assert again == frames
    assert frames[0].mapping is not None
    assert frames[0].mapping.build_id == build_id_of_path(str(bins["pie"]))
    assert ns.counters[MAP_FILES] == 1
    assert ns.counters[INODE_MISMATCH] == 0


@needs_root
def test_binary_only_in_another_mount_namespace(bins: dict[str, Path], tmp_path: Path) -> None:
    """The binary sits on a tmpfs mounted in the process' own mount namespace:
    its path exists only through /proc/PID/root."""
    mnt = tmp_path / "private"
    mnt.mkdir()
    script = 'mount -t tmpfs kiln "$1" && cp "$2" "$1/prog" && exec "$1/prog"'
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    with started([*cmd, mnt, bins["solo"]]) as (proc, addrs):
        maps = parse_maps(Path(f"/proc/{proc.pid}/maps").read_text())
        prog = mnt / "prog"
        assert any(m.file_path == str(prog) for m in maps)
        assert not prog.exists()  # not from here
        ns = NativeSymbolizer()
        frames = ns.symbolize(proc.pid, maps, [addrs[0], addrs[1]])
    assert [f.function for f in frames] == ["kiln_fixture_alpha", "kiln_fixture_static"]
    assert frames[0].mapping is not None and frames[0].mapping.filename == str(prog)
    assert ns.counters[MAP_FILES] == 0  # read by its path, inside the namespace


@needs_root
def test_shared_object_in_a_memfd(bins: dict[str, Path]) -> None:
    with started([bins["memfd"], bins["lib"]]) as (proc, (ret, fn)):
        maps = parse_maps(Path(f"/proc/{proc.pid}/maps").read_text())
        entry = next(m for m in maps if m.start <= ret < m.end)
        assert entry.path == "/memfd:kiln-jit (deleted)"
        ns = NativeSymbolizer()
        frames = ns.symbolize(proc.pid, maps, [ret, fn])
    assert [f.function for f in frames] == ["kiln_lib_function"] * 2
    mapping = frames[0].mapping
    assert mapping is not None
    assert (mapping.filename, mapping.build_id) == ("/memfd:kiln-jit", LIB_BUILD_ID)
    assert ns.counters[MAP_FILES] == 1


# -- short-lived processes -----------------------------------------------------------


@contextmanager
def exited(exe: Path) -> Iterator[tuple[Running, ProcessInfo]]:
    """A fixture process recorded by a ProcessTable while alive, then gone."""
    with running(exe) as r:
        info = ProcessTable().observe(r.pid)
        assert info is not None and info.mnt_ns == os.stat("/proc/self/ns/mnt").st_ino
    gone_by = time.monotonic() + 5
    while Path(f"/proc/{r.pid}").exists() and time.monotonic() < gone_by:
        time.sleep(0.001)  # reaped, but /proc may lag a moment
    yield r, info


def test_exited_process_is_symbolized_from_its_recorded_maps(
    bins: dict[str, Path],
) -> None:
    with exited(bins["pie"]) as (r, info):
        ns = NativeSymbolizer()
        frames = ns.symbolize(r.pid, info.maps, [r.alpha_ret, r.lib_ret], process=info)
    assert [f.function for f in frames] == ["kiln_fixture_alpha", "kiln_lib_function"]
    assert ns.counters[PROCESS_EXITED] == 1
    assert ns.counters[HOST_PATH_AFTER_EXIT] == 2  # the executable and the library
    assert ns.counters[SYMBOLIZED] == 2


def test_exited_process_of_another_mount_namespace_is_not_read_from_the_host(
    bins: dict[str, Path],
) -> None:
    with exited(bins["pie"]) as (r, info):
        elsewhere = dataclasses.replace(info, mnt_ns=info.mnt_ns + 1)
        ns = NativeSymbolizer()
        frames = ns.symbolize(r.pid, info.maps, [r.alpha_ret], process=elsewhere)
    assert frames[0].function.startswith("native_pie+0x")
    assert ns.counters[UNREADABLE] == 1 and ns.counters[HOST_PATH_AFTER_EXIT] == 0


def test_exited_process_file_replaced_since_is_not_used(
    bins: dict[str, Path], tmp_path: Path
) -> None:
    exe = tmp_path / "short"
    shutil.copy(bins["pie"], exe)
    with exited(exe) as (r, info):
        impostor = tmp_path / "impostor"
        shutil.copy(bins["nopie"], impostor)
        impostor.replace(exe)  # same path, another inode
        ns = NativeSymbolizer()
        frames = ns.symbolize(r.pid, info.maps, [r.alpha_ret, r.lib_ret], process=info)
    assert frames[0].function.startswith("short+0x")
    assert frames[1].function == "kiln_lib_function"  # the library did not change
    assert ns.counters[UNREADABLE] == 1 and ns.counters[HOST_PATH_AFTER_EXIT] == 1


def test_files_parsed_while_alive_serve_after_exit(bins: dict[str, Path]) -> None:
    """A process of another mount namespace cannot be read once gone, but
    what was parsed for its inodes while it lived still names its frames."""
    ns = NativeSymbolizer()
    with running(bins["pie"]) as r:
        info = ProcessTable().observe(r.pid)
        assert info is not None
        ns.symbolize(r.pid, info.maps, [r.alpha_ret], process=info)
    elsewhere = dataclasses.replace(info, mnt_ns=0)
    (frame,) = ns.symbolize(r.pid, info.maps, [r.alpha_ret], process=elsewhere)
    assert frame.function == "kiln_fixture_alpha"
    assert ns.counters[INODE_CACHE_HITS] == 1


def test_reused_pid_is_not_read_through_proc(bins: dict[str, Path]) -> None:
    """A context whose start time differs from /proc/PID's is another process."""
    with running(bins["pie"]) as r:
        info = ProcessTable().observe(r.pid)
        assert info is not None
        before = dataclasses.replace(info, start_time=info.start_time - 1, mnt_ns=0)
        ns = NativeSymbolizer()
        (frame,) = ns.symbolize(r.pid, r.maps, [r.alpha_ret], process=before)
        assert frame.function.startswith("native_pie+0x")
        assert ns.counters[PROCESS_EXITED] == 1 and ns.counters[UNREADABLE] == 1
        (frame,) = ns.symbolize(r.pid, r.maps, [r.alpha_ret], process=info)
    assert frame.function == "kiln_fixture_alpha"
