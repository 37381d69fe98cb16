"""symbolizer/perfmap.py, and NativeSymbolizer naming JIT code from perf maps.

The parser is fed odd lines directly; the symbolizer is tested against a
fake /proc tree (growth, caps, trust), then against CPython 3.12 run with
`-X perf`, whose trampolines are anonymous executable memory named only in
/tmp/perf-<pid>.map -- also from inside its own pid and mount namespaces.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiler.processes import ProcessTable
from profiler.procfs import MapEntry, parse_maps
from symbolizer.native import (
    ANONYMOUS,
    PERFMAP,
    PERFMAP_LOADS,
    PERFMAP_MALFORMED,
    PERFMAP_SKIPPED_BYTES,
    PERFMAP_STALE,
    PERFMAP_TRUNCATED,
    PERFMAP_UNTRUSTED,
    SYMBOLIZED,
    UNMAPPED,
    NativeSymbolizer,
)
from symbolizer.perfmap import PerfMap, parse_perf_map
from tests.conftest import skip_outside_ci

ODD = (
    b"7f0000001000 20 py::f:/srv/my app/main.py\n"  # a name with spaces
    b"0x7f0000002000 0x10 LazyCompile:*g /a.js:1\r\n"  # 0x prefixes, CRLF
    b"\n   \n"  # blank: ignored, not malformed
    b"zzzz 10 bad hex\n"
    b"7f0000003000 0 empty\n"
    b"7f0000003000 10\n"  # no name
    b"ffffffffffffffff 10 wraps past 2**64\n"
    b"-10 10 negative\n"
    b"7f00_3000 10 underscore\n"
    b"\xef\xbc\x91 10 fullwidth digit\n"
    b"7f0000004000 8 caf\xc3\xa9 \xff\x0c form feed kept\n"
    b"7f0000001000 20 py::f_again:/srv/my app/main.py\n"  # the same start, later: wins
)


def test_parse_odd_lines() -> None:
    lines = parse_perf_map(ODD)
    assert lines.names == [
        "py::f:/srv/my app/main.py",
        "LazyCompile:*g /a.js:1",
        "caf\u00e9 \ufffd\x0c form feed kept",
        "py::f_again:/srv/my app/main.py",
    ]
    assert lines.starts.tolist() == [0x7F0000001000, 0x7F0000002000, 0x7F0000004000, 0x7F0000001000]
    assert lines.sizes.tolist() == [0x20, 0x10, 0x8, 0x20]
    assert lines.malformed == 7 and lines.over_limit == 0
    assert parse_perf_map(ODD.decode("utf-8", "replace")).names == lines.names


def test_lookup_is_batched_and_the_later_line_wins() -> None:
    perf = PerfMap()
    assert perf.feed(ODD) == len(ODD)
    addrs = np.array([0x7F0000001000, 0x7F000000101F, 0x7F0000001020, 0x7F000000200F, 0x10])
    assert perf.lookup(addrs) == [
        "py::f_again:/srv/my app/main.py",
        "py::f_again:/srv/my app/main.py",
        None,
        "LazyCompile:*g /a.js:1",
        None,
    ]
    assert len(perf) == 4 and perf.malformed == 7
    assert PerfMap().lookup([1, 2]) == [None, None]


def test_feed_takes_complete_lines_only() -> None:
    perf = PerfMap()
    assert perf.feed(b"1000 10 a\n2000 10 b") == len(b"1000 10 a\n")
    assert perf.lookup([0x1000, 0x2000]) == ["a", None]
    assert perf.feed(b"2000 10 b") == 0  # still no newline: the JIT may be mid-write
    assert perf.feed(b"2000 10 b", final=True) == len(b"2000 10 b")
    assert perf.lookup([0x1000, 0x2000]) == ["a", "b"]


def test_max_lines_bounds_the_map_and_counts_the_rest() -> None:
    perf = PerfMap(max_lines=3)
    perf.feed(b"".join(b"%x 10 f%d\n" % (0x1000 * (i + 1), i) for i in range(5)))
    perf.feed(b"9000 10 late\n\n")
    assert len(perf) == 3 and perf.truncated_lines == 3
    assert perf.lookup([0x1000, 0x3000, 0x4000, 0x9000]) == ["f0", "f2", None, None]
    with pytest.raises(ValueError):
        PerfMap(max_lines=0)


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_parser_never_raises(data: bytes | str) -> None:
    lines = parse_perf_map(data)
    assert len(lines.starts) == len(lines.sizes) == len(lines.names)
    assert all((lines.starts + lines.sizes >= lines.starts).tolist())


# -- NativeSymbolizer over a fake /proc ----------------------------------------

PID = 4_194_400  # above PID_MAX_LIMIT: no real process has it, not even a host perf map
JIT = MapEntry(0x7F0000000000, 0x7F0000100000, "r-xp", 0, 0, 0, 0, "")


class FakeProc:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / str(PID) / "root" / "tmp").mkdir(parents=True)
        self.map = root / str(PID) / "root" / "tmp" / f"perf-{PID}.map"

    def write(self, text: str, mode: str = "w") -> None:
        with self.map.open(mode) as f:
            f.write(text)

    def status(self, *, ns_pid: int = PID, uid: int = 0) -> None:
        (self.root / str(PID) / "status").write_text(
            f"Name:\tjit\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nNSpid:\t{PID}\t{ns_pid}\n"
        )

    def started(self, btime: int, starttime: int) -> None:
        (self.root / "stat").write_text(f"cpu 1 2 3\nbtime {btime}\nprocesses 9\n")
        (self.root / str(PID) / "stat").write_text(
            f"{PID} (jit) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {starttime} 0 0\n"
        )


@pytest.fixture
def fake(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


def names(ns: NativeSymbolizer, addrs: list[int], maps: list[MapEntry] | None = None) -> list[str]:
    return [f.function for f in ns.symbolize(PID, [JIT] if maps is None else maps, addrs)]


def test_anonymous_and_unmapped_code_is_named(fake: FakeProc) -> None:
    fake.write("7f0000000100 40 jit_a\n7f0000200000 10 outside_our_maps\nbad line\n")
    ns = NativeSymbolizer(proc_root=str(fake.root))
    got = ns.symbolize(PID, [JIT], [0x7F0000000110, 0x7F0000000200, 0x7F0000200008])
    assert [f.function for f in got] == ["jit_a", "[anon]+0x200", "outside_our_maps"]
    assert got[0].mapping is not None and got[0].mapping.start == JIT.start
    assert got[2].mapping is None
    assert ns.counters[PERFMAP] == 2 and ns.counters[SYMBOLIZED] == 2
    assert ns.counters[ANONYMOUS] == 1 and ns.counters[UNMAPPED] == 0
    assert ns.counters[PERFMAP_MALFORMED] == 1 and ns.counters[PERFMAP_LOADS] == 1


def test_the_map_is_read_again_as_the_jit_appends(fake: FakeProc) -> None:
    fake.write("7f0000000100 40 first\n")
    ns = NativeSymbolizer(proc_root=str(fake.root))
    assert names(ns, [0x7F0000000100, 0x7F0000000500]) == ["first", "[anon]+0x500"]
    fake.write("7f0000000500 40 second\n7f0000000600 40 half-writ", "a")
    assert names(ns, [0x7F0000000500, 0x7F0000000600]) == ["second", "[anon]+0x600"]
    fake.write("ten\n", "a")
    assert names(ns, [0x7F0000000600]) == ["half-written"]
    assert ns.counters[PERFMAP_LOADS] == 1  # appended bytes only, never the whole file again
    fake.map.unlink()  # a new file (another inode): read from the start
    fake.write("7f0000000100 40 renamed\n")
    assert names(ns, [0x7F0000000100]) == ["renamed"]
    assert ns.counters[PERFMAP_LOADS] == 2


def test_a_map_that_disappears_is_remembered(fake: FakeProc) -> None:
    fake.write("7f0000000100 40 kept\n")
    ns = NativeSymbolizer(proc_root=str(fake.root))
    assert names(ns, [0x7F0000000100]) == ["kept"]
    fake.map.unlink()
    assert names(ns, [0x7F0000000100]) == ["kept"]


def test_size_caps(fake: FakeProc) -> None:
    lines = [f"7f0000{i:04x}00 10 f{i}\n" for i in range(100)]
    fake.write("".join(lines))
    ns = NativeSymbolizer(proc_root=str(fake.root), perf_map_max_lines=10)
    assert names(ns, [0x7F0000000900, 0x7F0000000A00]) == ["f9", "[anon]+0xa00"]
    assert ns.counters[PERFMAP_TRUNCATED] == 90
    cap = len("".join(lines[:5]))
    ns = NativeSymbolizer(proc_root=str(fake.root), perf_map_max_bytes=cap)
    assert names(ns, [0x7F0000000400, 0x7F0000000500]) == ["f4", "[anon]+0x500"]
    total = fake.map.stat().st_size
    assert ns.counters[PERFMAP_SKIPPED_BYTES] == total - cap
    fake.write("7f0000100000 10 more\n", "a")
    names(ns, [0x7F0000100000])
    assert ns.counters[PERFMAP_SKIPPED_BYTES] == fake.map.stat().st_size - cap
    # A cap inside a line: that line is skipped, not taken cut short.
    ns = NativeSymbolizer(proc_root=str(fake.root), perf_map_max_bytes=cap + 5)
    assert names(ns, [0x7F0000000400, 0x7F0000000500]) == ["f4", "[anon]+0x500"]
    assert ns.counters[PERFMAP_SKIPPED_BYTES] == fake.map.stat().st_size - cap


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_a_map_owned_by_another_user_is_not_trusted(fake: FakeProc) -> None:
    fake.write("7f0000000100 40 planted\n")
    fake.status(uid=1000)
    os.chown(fake.map, 4321, 4321)
    ns = NativeSymbolizer(proc_root=str(fake.root))
    assert names(ns, [0x7F0000000100]) == ["[anon]+0x100"]
    assert ns.counters[PERFMAP_UNTRUSTED] == 1
    os.chown(fake.map, 1000, 1000)  # the process' own user
    assert names(ns, [0x7F0000000100]) == ["planted"]


def test_a_map_older_than_the_process_is_a_previous_owners(fake: FakeProc) -> None:
    fake.write("7f0000000100 40 stale\n")
    now = int(time.time())
    ticks = os.sysconf("SC_CLK_TCK")
    fake.started(btime=now - 1000, starttime=900 * ticks)  # started 100 s ago
    os.utime(fake.map, (now - 200, now - 200))
    ns = NativeSymbolizer(proc_root=str(fake.root))
    assert names(ns, [0x7F0000000100]) == ["[anon]+0x100"]
    assert ns.counters[PERFMAP_STALE] == 1
    os.utime(fake.map, (now - 50, now - 50))
    assert names(ns, [0x7F0000000100]) == ["stale"]


def test_ns_pid_names_the_file(fake: FakeProc) -> None:
    fake.status(ns_pid=7)
    (fake.map.parent / "perf-7.map").write_text("7f0000000100 40 in_container\n")
    ns = NativeSymbolizer(proc_root=str(fake.root))
    assert names(ns, [0x7F0000000100]) == ["in_container"]


# -- CPython 3.12 -X perf, for real ---------------------------------------------

PY312 = "/root/.pyenv/versions/3.12.1/bin/python3.12"

SCRIPT = """\
import os, sys, threading

def kiln_spin(stop):
    while not stop.is_set():
        sum(range(100))

stop = threading.Event()
worker = threading.Thread(target=kiln_spin, args=(stop,))
worker.start()
print(os.getpid(), flush=True)
sys.stdin.read()
stop.set()
worker.join()
"""


@functools.cache
def _perf_python() -> str | None:
    # Asked of the build, not of `-X perf`: that would leave a perf map behind.
    probe = "import sysconfig; print(sysconfig.get_config_var('PY_HAVE_PERF_TRAMPOLINE'))"
    for candidate in (PY312, "python3.12", "python3.13"):
        try:
            out = subprocess.run(
                [candidate, "-c", probe], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.stdout.strip() == "1":
            return candidate
    return None


def perf_python() -> str:
    python = _perf_python()
    if python is None:
        skip_outside_ci("no Python >= 3.12 built with perf trampoline support")
    return python


def child_of(pid: int) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.005)
    raise AssertionError(f"{pid} has no child")


@contextmanager
def jit_process(cmd: list[str], *, forked: bool = False) -> Iterator[tuple[int, int]]:
    """Run a -X perf Python: (host pid, pid it sees itself as)."""
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            own = int(proc.stdout.readline())
            host = child_of(proc.pid) if forked else proc.pid
            yield host, own
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)


def trampoline(perf_map: Path, func: str) -> tuple[int, int, str]:
    """(start, size, name) of `func`'s perf map entry, once written."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in perf_map.read_text().splitlines() if perf_map.exists() else []:
            start, size, name = line.split(" ", 2)
            if name.startswith(f"py::{func}:"):
                return int(start, 16), int(size, 16), name
        time.sleep(0.005)
    raise AssertionError(f"no {func} in {perf_map}")


def test_cpython_perf_trampolines_are_named(tmp_path: Path) -> None:
    python = perf_python()
    script = tmp_path / "spin.py"
    script.write_text(SCRIPT)
    with jit_process([python, "-X", "perf", str(script)]) as (pid, _):
        perf_map = Path(f"/tmp/perf-{pid}.map")
        try:
            start, size, name = trampoline(perf_map, "kiln_spin")
            assert name == f"py::kiln_spin:{script}"
            maps = parse_maps(Path(f"/proc/{pid}/maps").read_text())
            entry = next(m for m in maps if m.start <= start < m.end)
            assert entry.is_exec and entry.path == ""  # anonymous: no ELF names it
            info = ProcessTable().observe(pid)
            assert info is not None
            ns = NativeSymbolizer()
            addrs = [start, start + size // 2, start + size - 1]
            frames = ns.symbolize(pid, maps, addrs, process=info)
        finally:
            perf_map.unlink(missing_ok=True)
    assert [f.function for f in frames] == [name] * 3
    assert ns.counters[PERFMAP] == 3 and ns.counters[ANONYMOUS] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for pid and mount namespaces")
def test_cpython_in_its_own_pid_and_mount_namespace(tmp_path: Path) -> None:
    """It writes /tmp/perf-1.map on a /tmp only its namespace has."""
    python = perf_python()
    inner = 'mount -t tmpfs kiln /tmp && exec "$1" -X perf -c "$2"'
    cmd = ["unshare", "--mount", "--pid", "--fork", "--propagation", "private"]
    cmd += ["sh", "-c", inner, "sh", python, SCRIPT]
    with jit_process(cmd, forked=True) as (pid, own):
        assert own == 1 and pid != 1
        perf_map = Path(f"/proc/{pid}/root/tmp/perf-{own}.map")
        start, _, name = trampoline(perf_map, "kiln_spin")
        assert name == "py::kiln_spin:<string>"
        info = ProcessTable().observe(pid)
        assert info is not None and info.ns_pid == 1
        maps = list(info.maps)
        by_status = NativeSymbolizer().symbolize(pid, maps, [start + 1])
        ns = NativeSymbolizer()
        by_context = ns.symbolize(pid, maps, [start + 1], process=info)
    assert by_status[0].function == by_context[0].function == name
    assert ns.counters[PERFMAP] == 1
