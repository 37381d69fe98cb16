"""ProcessTable against a fake /proc tree in tmp_path, then the real /proc."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from profiler.processes import COUNTER_NAMES, ProcessTable
from profiler.procfs import PF_KTHREAD, parse_maps, parse_stat
from tests.conftest import skip_outside_ci

ID = "4f3b9e2d1c0a8b7f6e5d4c3b2a19081726354453627180f9e8d7c6b5a4938271"
SECOND = 1_000_000_000

EXE_MAPS = """\
55d0c4a00000-55d0c4a02000 r--p 00000000 fd:01 1835101 /opt/app/bin/app
55d0c4a02000-55d0c4a06000 r-xp 00002000 fd:01 1835101 /opt/app/bin/app
7ffd5a3b4000-7ffd5a3b6000 r-xp 00000000 00:00 0 [vdso]
"""
LIB_MAP = "7f1c2a000000-7f1c2a022000 r-xp 00028000 fd:01 1837412 /opt/app/lib/plugin.so\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000 * SECOND

    def __call__(self) -> int:
        return self.now

    def advance(self, ns: int) -> None:
        self.now += ns


class FakeProc:
    """A /proc look-alike: one directory per pid with the files we read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root.parent / "bin"
        self.bin.mkdir(exist_ok=True)

    def exe_file(self, name: str) -> Path:
        path = self.bin / name
        if not path.exists():
            path.write_bytes(b"\x7fELF" + name.encode())
        return path

    def add(
        self,
        pid: int,
        *,
        comm: str = "app",
        start: int = 100,
        exe: str = "app",
        cmdline: bytes = b"app\0--serve\0",
        maps: str = EXE_MAPS,
        cgroup: str = f"0::/system.slice/docker-{ID}.scope\n",
        flags: int = 0x400100,
    ) -> Path:
        d = self.root / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        self.set_stat(pid, comm=comm, start=start, flags=flags)
        if exe:
            (d / "exe").unlink(missing_ok=True)
            (d / "exe").symlink_to(self.exe_file(exe))
        (d / "cmdline").write_bytes(cmdline)
        (d / "maps").write_text(maps)
        (d / "cgroup").write_text(cgroup)
        return d

    def set_stat(self, pid: int, *, comm: str = "app", start: int = 100, flags: int = 0) -> None:
        (self.root / str(pid) / "stat").write_text(
            f"{pid} ({comm}) S 1 {pid} {pid} 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 {start} "
            "0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
        )

    def remove(self, pid: int) -> None:
        shutil.rmtree(self.root / str(pid))


class CountingReader:
    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, path: str) -> str:
        self.paths.append(path)
        return "ab" * 20


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_table(proc: FakeProc, clock: FakeClock) -> Callable[..., ProcessTable]:
    def make(**kwargs: object) -> ProcessTable:
        kwargs.setdefault("build_id_reader", CountingReader())
        return ProcessTable(str(proc.root), clock=clock, **kwargs)  # type: ignore[arg-type]

    return make


def lost(table: ProcessTable) -> dict[str, int]:
    """The counters that moved."""
    return {k: v for k, v in table.counters.items() if v}


# -- reading a process -----------------------------------------------------------


def test_observe_reads_every_file(proc: FakeProc, make_table: Callable[..., ProcessTable]) -> None:
    proc.add(42, comm="my app (v2)")
    table = make_table()
    info = table.observe(42)
    assert info is not None
    assert info.pid == 42 and info.start_time == 100 and info.comm == "my app (v2)"
    assert info.exe == str(proc.bin / "app") and not info.exe_deleted
    assert info.cmdline == ("app", "--serve")
    assert [m.path for m in info.maps] == ["/opt/app/bin/app", "/opt/app/bin/app", "[vdso]"]
    assert info.container_id == ID and info.cgroup == f"/system.slice/docker-{ID}.scope"
    assert info.build_id == "ab" * 20
    assert info.root == f"{proc.root}/42/root"
    assert info.maps_read_ns == 1_000 * SECOND
    assert info.complete and not info.kernel_thread and info.ppid == 1
    assert info.mapping_at(0x55D0C4A02100) == info.maps[1]
    assert info.mapping_at(0x10) is None
    assert table.get(42) is info and 42 in table and len(table) == 1
    assert set(table.counters) == set(COUNTER_NAMES) and lost(table) == {}


def test_build_id_read_through_proc_exe_once_per_file(
    proc: FakeProc, make_table: Callable[..., ProcessTable]
) -> None:
    reader = CountingReader()
    table = make_table(build_id_reader=reader)
    for pid in (10, 11, 12):
        proc.add(pid)
    proc.add(13, exe="other")
    for pid in (10, 11, 12, 13):
        assert table.observe(pid) is not None
    assert reader.paths == [f"{proc.root}/10/exe", f"{proc.root}/13/exe"]


def test_deleted_exe_is_a_flag(proc: FakeProc, make_table: Callable[..., ProcessTable]) -> None:
    proc.add(42)
    link = proc.root / "42" / "exe"
    link.unlink()
    link.symlink_to(f"{proc.bin}/app (deleted)")
    info = make_table().observe(42)
    assert info is not None
    assert info.exe == f"{proc.bin}/app" and info.exe_deleted


def test_namespace_identity_is_recorded(
    proc: FakeProc, make_table: Callable[..., ProcessTable]
) -> None:
    d = proc.add(42)
    (d / "status").write_text("Name:\tapp\nUid:\t1000\t1001\t1000\t1001\nNSpid:\t42\t7\n")
    (d / "ns").mkdir()
    (d / "ns" / "mnt").write_text("")  # the real one is a magic link; its inode names the ns
    table = make_table()
    info = table.observe(42)
    assert info is not None and info.complete
    assert (info.ns_pid, info.uids) == (7, (1000, 1001, 1000, 1001))
    assert info.mnt_ns == (d / "ns" / "mnt").stat().st_ino != 0
    assert lost(table) == {}


def test_missing_status_and_ns_are_not_losses(
    proc: FakeProc, make_table: Callable[..., ProcessTable]
) -> None:
    proc.add(42)
    table = make_table()
    info = table.observe(42)
    assert info is not None and info.complete
    assert (info.mnt_ns, info.ns_pid, info.uids) == (0, 0, ())
    assert lost(table) == {}


def test_kernel_thread_has_no_exe(proc: FakeProc, make_table: Callable[..., ProcessTable]) -> None:
    proc.add(2, comm="kthreadd", exe="", cmdline=b"", maps="", cgroup="0::/\n", flags=PF_KTHREAD)
    table = make_table()
    info = table.observe(2)
    assert info is not None
    assert info.kernel_thread and info.complete
    assert (info.exe, info.cmdline, info.maps, info.build_id) == ("", (), (), "")
    assert lost(table) == {}


# -- processes that go away or hide ------------------------------------------------


def test_unknown_pid_is_none_and_counted(make_table: Callable[..., ProcessTable]) -> None:
    table = make_table()
    assert table.observe(4242) is None
    assert table.observe(0) is None and table.observe(-1) is None
    assert lost(table) == {"vanished": 1} and len(table) == 0


@pytest.mark.parametrize("missing", ["exe", "cmdline", "cgroup", "maps"])
def test_vanish_mid_read_gives_partial_info(
    proc: FakeProc, make_table: Callable[..., ProcessTable], missing: str
) -> None:
    """stat was read, then the process went: the kernel answers ENOENT."""
    (proc.add(42) / missing).unlink()
    table = make_table()
    info = table.observe(42)
    assert info is not None and not info.complete
    assert info.start_time == 100 and info.comm == "app" and info.maps == ()
    assert info.build_id == ""
    assert lost(table) == {"vanished": 1}
    assert table.is_exited(42)  # kept for the grace period like any exited process


def test_esrch_mid_read_gives_partial_info(
    proc: FakeProc, make_table: Callable[..., ProcessTable], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading an already-open /proc file of a reaped task fails with ESRCH."""
    proc.add(42)
    real_read = os.read
    maps_fds: set[int] = set()
    real_open = os.open

    def spy_open(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        if path == "maps":
            maps_fds.add(fd)
        return fd

    def dying_read(fd: int, n: int) -> bytes:
        if fd in maps_fds:
            raise ProcessLookupError(errno.ESRCH, "No such process")
        return real_read(fd, n)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "read", dying_read)
    table = make_table()
    info = table.observe(42)
    assert info is not None and not info.complete and info.cmdline == ("app", "--serve")
    assert lost(table) == {"vanished": 1}


def test_gone_before_stat_is_none(proc: FakeProc, make_table: Callable[..., ProcessTable]) -> None:
    (proc.add(42) / "stat").unlink()
    table = make_table()
    assert table.observe(42) is None
    assert lost(table) == {"vanished": 1} and 42 not in table


def test_malformed_stat_is_none(proc: FakeProc, make_table: Callable[..., ProcessTable]) -> None:
    (proc.add(42) / "stat").write_text("42 app S 1\n")
    table = make_table()
    assert table.observe(42) is None
    assert lost(table) == {"stat_malformed": 1}


def test_denied_maps_and_exe(
    proc: FakeProc, make_table: Callable[..., ProcessTable], monkeypatch: pytest.MonkeyPatch
) -> None:
    """We run as root in tests, so denial is simulated where the kernel would deny."""
    proc.add(42)
    real_open, real_readlink = os.open, os.readlink

    def deny_open(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "maps":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def deny_readlink(path: str, *, dir_fd: int | None = None) -> str:
        if path == "exe":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_readlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", deny_open)
    monkeypatch.setattr(os, "readlink", deny_readlink)
    table = make_table()
    info = table.observe(42)
    assert info is not None and info.complete
    assert info.maps == () and info.exe == "" and info.build_id == ""
    assert info.cmdline == ("app", "--serve") and info.container_id == ID
    assert lost(table) == {"maps_unreadable": 1, "exe_unreadable": 1}


def test_other_read_errors_are_counted(
    proc: FakeProc, make_table: Callable[..., ProcessTable]
) -> None:
    d = proc.add(42)
    (d / "maps").unlink()
    (d / "maps").mkdir()  # reading a directory: EISDIR, neither gone nor denied
    table = make_table()
    info = table.observe(42)
    assert info is not None and info.complete and info.maps == ()
    assert lost(table) == {"read_errors": 1}


# -- identity: pid reuse, exec -------------------------------------------------------


def test_cached_while_same_process(proc: FakeProc, make_table: Callable[..., ProcessTable]) -> None:
    proc.add(42)
    table = make_table()
    first = table.observe(42)
    (proc.root / "42" / "cmdline").write_bytes(b"changed\0")
    assert table.observe(42) is first


def test_pid_reuse_reads_again(proc: FakeProc, make_table: Callable[..., ProcessTable]) -> None:
    proc.add(42)
    table = make_table()
    first = table.observe(42)
    proc.add(42, comm="app", start=999, cmdline=b"newcomer\0")
    second = table.observe(42)
    assert first is not None and second is not None
    assert second.start_time == 999 and second.cmdline == ("newcomer",)
    assert lost(table) == {"pid_reused": 1} and len(table) == 1


def test_comm_change_reads_again(proc: FakeProc, make_table: Callable[..., ProcessTable]) -> None:
    """exec keeps pid and starttime but changes comm, exe and maps."""
    proc.add(42, comm="bash")
    table = make_table()
    table.observe(42)
    proc.add(42, comm="python3", exe="python3", cmdline=b"python3\0x.py\0")
    info = table.observe(42)
    assert info is not None and info.comm == "python3" and info.exe.endswith("python3")
    assert lost(table) == {"comm_changed": 1}


def test_forget(proc: FakeProc, make_table: Callable[..., ProcessTable]) -> None:
    proc.add(42)
    table = make_table()
    table.observe(42)
    table.forget(42)
    table.forget(42)
    assert 42 not in table and table.get(42) is None


# -- lifetime: grace period, prune, bound ------------------------------------------


def test_exited_process_kept_for_grace_period(
    proc: FakeProc, make_table: Callable[..., ProcessTable], clock: FakeClock
) -> None:
    proc.add(42)
    table = make_table(keep_exited_ns=60 * SECOND)
    info = table.observe(42)
    proc.remove(42)
    table.mark_exited(42)
    clock.advance(59 * SECOND)
    assert table.observe(42) is info and table.get(42) is info and table.is_exited(42)
    clock.advance(1 * SECOND)
    assert table.get(42) is None and 42 not in table
    assert lost(table) == {"expired": 1}


def test_observe_notices_exit_itself(
    proc: FakeProc, make_table: Callable[..., ProcessTable], clock: FakeClock
) -> None:
    proc.add(42)
    table = make_table(keep_exited_ns=10 * SECOND)
    info = table.observe(42)
    proc.remove(42)
    assert table.observe(42) is info and table.is_exited(42)
    clock.advance(10 * SECOND)
    assert table.observe(42) is None
    assert lost(table) == {"expired": 1}


def test_mark_exited_unknown_pid_is_harmless(make_table: Callable[..., ProcessTable]) -> None:
    table = make_table()
    table.mark_exited(7)
    assert len(table) == 0


def test_prune(proc: FakeProc, make_table: Callable[..., ProcessTable], clock: FakeClock) -> None:
    for pid in (1, 2, 3):
        proc.add(pid)
    table = make_table(keep_exited_ns=5 * SECOND)
    for pid in (1, 2, 3):
        table.observe(pid)
    proc.remove(1)  # exited
    proc.set_stat(2, start=555)  # exited, pid taken by another process
    assert table.prune() == 0  # both within their grace period
    assert table.is_exited(1) and table.is_exited(2) and not table.is_exited(3)
    clock.advance(5 * SECOND)
    assert table.prune() == 2
    assert list(table) == [3]
    assert lost(table) == {"expired": 2}


def test_lru_eviction_bounds_the_table(
    proc: FakeProc, make_table: Callable[..., ProcessTable]
) -> None:
    table = make_table(max_entries=3)
    for pid in range(1, 6):
        proc.add(pid)
    for pid in (1, 2, 3):
        table.observe(pid)
    table.get(1)  # recently used: survives
    table.observe(4)
    table.observe(5)
    assert sorted(table) == [1, 4, 5]
    assert lost(table) == {"evicted": 2}


def test_churn_never_grows_past_bound(
    proc: FakeProc, make_table: Callable[..., ProcessTable], clock: FakeClock
) -> None:
    reader = CountingReader()
    table = make_table(max_entries=8, build_id_reader=reader)
    for pid in range(100, 140):
        proc.add(pid, exe=f"bin{pid}")
        table.observe(pid)
        proc.remove(pid)
        table.mark_exited(pid)
        clock.advance(SECOND)
        assert len(table) <= 8
        assert len(table._build_ids) <= 8
    assert table.counters["evicted"] == 32


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ProcessTable(max_entries=0)


# -- refresh_maps --------------------------------------------------------------------


def test_refresh_maps_is_rate_limited(
    proc: FakeProc, make_table: Callable[..., ProcessTable], clock: FakeClock
) -> None:
    proc.add(42)
    table = make_table(min_refresh_ns=SECOND)
    first = table.observe(42)
    assert first is not None
    (proc.root / "42" / "maps").write_text(EXE_MAPS + LIB_MAP)  # dlopen
    clock.advance(SECOND // 2)
    assert table.refresh_maps(42) is first
    assert lost(table) == {"refresh_limited": 1}
    clock.advance(SECOND // 2)
    fresh = table.refresh_maps(42)
    assert fresh is not None and fresh is not first
    assert fresh.maps[-1].path == "/opt/app/lib/plugin.so"
    assert fresh.maps_read_ns == clock.now
    assert (fresh.cmdline, fresh.build_id, fresh.start_time) == (
        first.cmdline,
        first.build_id,
        first.start_time,
    )
    assert table.get(42) is fresh
    assert table.refresh_maps(42) is fresh  # the limit starts again
    assert table.counters["refresh_limited"] == 2


def test_refresh_maps_reads_the_mount_namespace_again(
    proc: FakeProc, make_table: Callable[..., ProcessTable], clock: FakeClock
) -> None:
    d = proc.add(42)
    table = make_table(min_refresh_ns=SECOND)
    assert table.observe(42) is not None
    (d / "ns").mkdir()
    (d / "ns" / "mnt").write_text("")  # it joined a mount namespace (setns)
    clock.advance(SECOND)
    fresh = table.refresh_maps(42)
    assert fresh is not None and fresh.mnt_ns == (d / "ns" / "mnt").stat().st_ino != 0


def test_refresh_maps_unknown_pid_observes(
    proc: FakeProc, make_table: Callable[..., ProcessTable]
) -> None:
    proc.add(42)
    table = make_table()
    info = table.refresh_maps(42)
    assert info is not None and len(info.maps) == 3
    assert table.refresh_maps(43) is None


def test_refresh_maps_of_vanished_process_keeps_cache(
    proc: FakeProc, make_table: Callable[..., ProcessTable], clock: FakeClock
) -> None:
    proc.add(42)
    table = make_table()
    info = table.observe(42)
    proc.remove(42)
    clock.advance(2 * SECOND)
    assert table.refresh_maps(42) is info
    assert table.is_exited(42)
    assert lost(table) == {}  # an exit we had seen coming is not a loss


def test_refresh_maps_after_pid_reuse_reads_all(
    proc: FakeProc, make_table: Callable[..., ProcessTable], clock: FakeClock
) -> None:
    proc.add(42)
    table = make_table()
    table.observe(42)
    proc.add(42, start=777, cmdline=b"other\0")
    clock.advance(2 * SECOND)
    info = table.refresh_maps(42)
    assert info is not None and info.start_time == 777 and info.cmdline == ("other",)
    assert lost(table) == {"pid_reused": 1}


def test_refresh_maps_denied_keeps_old_maps(
    proc: FakeProc,
    make_table: Callable[..., ProcessTable],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proc.add(42)
    table = make_table()
    first = table.observe(42)
    assert first is not None
    real_open = os.open

    def deny_open(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "maps":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", deny_open)
    clock.advance(2 * SECOND)
    info = table.refresh_maps(42)
    assert info is not None and info.maps == first.maps
    assert lost(table) == {"maps_unreadable": 1}


# -- the real /proc --------------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "30"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def wait_for_exec(pid: int, exe: str) -> None:
    """Wait until `exe` is mapped executable in `pid`.

    Popen returns once execve has begun: comm and exe already name the new
    program while the kernel is still mapping its segments.
    """
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/maps") as f:
            if any(m.is_exec and m.file_path == exe for m in parse_maps(f.read())):
                return
        time.sleep(0.001)
    raise AssertionError(f"pid {pid} never mapped {exe}")


def test_real_process(sleeper: subprocess.Popen[bytes]) -> None:
    exe = os.path.realpath(shutil.which("sleep") or "")
    wait_for_exec(sleeper.pid, exe)
    clock = FakeClock()
    reader = CountingReader()
    table = ProcessTable(clock=clock, build_id_reader=reader)
    info = table.observe(sleeper.pid)
    assert info is not None and info.complete
    assert info.exe == exe and not info.exe_deleted
    assert info.comm == "sleep" and info.cmdline == ("sleep", "30")
    assert info.ppid == os.getpid()
    with open(f"/proc/{sleeper.pid}/stat") as f:
        assert info.start_time == parse_stat(f.read()).starttime
    assert any(m.is_exec and m.file_path == exe for m in info.maps)
    assert any(m.path == "[stack]" for m in info.maps)
    assert info.root == f"/proc/{sleeper.pid}/root"
    assert info.mnt_ns == os.stat("/proc/self/ns/mnt").st_ino
    assert info.ns_pid == sleeper.pid  # our pid namespace
    assert info.uids == (os.getuid(), os.geteuid(), os.getuid(), os.geteuid())
    assert reader.paths == [f"/proc/{sleeper.pid}/exe"]
    assert table.observe(sleeper.pid) is info

    sleeper.kill()
    sleeper.wait()  # reaped: /proc/PID is gone
    fresh = ProcessTable(clock=clock, build_id_reader=reader)
    assert fresh.observe(sleeper.pid) is None
    assert lost(fresh) == {"vanished": 1}
    # The table that saw it alive keeps it for the grace period.
    assert table.observe(sleeper.pid) is info and table.is_exited(sleeper.pid)
    clock.advance(table.keep_exited_ns)
    assert table.observe(sleeper.pid) is None
    assert lost(table) == {"expired": 1}


def test_real_process_with_deleted_exe(tmp_path: Path) -> None:
    """The binary replaced under a running process is still read via /proc/PID/exe."""
    copy = tmp_path / "sleepy"
    shutil.copy(shutil.which("sleep") or "", copy)
    child = subprocess.Popen([str(copy), "30"])
    try:
        wait_for_exec(child.pid, str(copy))
        copy.unlink()
        seen: list[bytes] = []

        def reader(path: str) -> str:
            with open(path, "rb") as f:
                seen.append(f.read(4))
            return "cafe"

        info = ProcessTable(build_id_reader=reader).observe(child.pid)
        assert info is not None
        assert info.exe == str(copy) and info.exe_deleted and info.build_id == "cafe"
        assert seen == [b"\x7fELF"]
        assert any(m.deleted and m.file_path == str(copy) for m in info.maps)
    finally:
        child.kill()
        child.wait()


def test_real_default_build_id_reader(sleeper: subprocess.Popen[bytes]) -> None:
    pytest.importorskip("symbolizer.elf", reason="symbolizer/elf.py not written yet")
    wait_for_exec(sleeper.pid, os.path.realpath(shutil.which("sleep") or ""))
    info = ProcessTable().observe(sleeper.pid)
    assert info is not None
    # Debian builds its binaries with a GNU build id (20 bytes of SHA-1).
    assert len(info.build_id) == 40 and int(info.build_id, 16) >= 0


def test_real_kernel_thread() -> None:
    with open("/proc/2/stat") as f:
        if not parse_stat(f.read()).is_kernel_thread:
            skip_outside_ci("pid 2 is not kthreadd here (pid namespace)")
    table = ProcessTable(build_id_reader=CountingReader())
    info = table.observe(2)
    assert info is not None and info.kernel_thread and info.exe == "" and info.maps == ()
    assert lost(table) == {}


def test_real_observe_own_process() -> None:
    table = ProcessTable(build_id_reader=CountingReader())
    info = table.observe(os.getpid())
    assert info is not None and info.complete
    assert os.path.realpath(sys.executable) == info.exe
