"""What Kiln knows about each process it has sampled: identity, exe, maps.

`ProcessTable` reads /proc lazily, the first time a pid shows up in a sample,
and caches the result. A pid is identified by (pid, starttime): the cached
info is reused while the starttime in /proc/PID/stat is unchanged, and read
again when the pid has been reused. All reads for one process go through one
open /proc/PID directory, so they cannot mix two processes that shared a pid.

Processes exit between a sample and its symbolization, often in the middle of
a read. None of that raises: a vanished process gives None (or the part that
was read) and a counter; an exited process is kept for a grace period so the
samples it left behind still symbolize; the table is bounded, least recently
used first out. Every loss is a named counter in `ProcessTable.counters`.

The table is not thread-safe: one owner (the sampler loop) calls it.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from profiler.procfs import (
    DELETED_SUFFIX,
    MapEntry,
    StatInfo,
    cgroup_path,
    container_id_from_cgroup,
    parse_cmdline,
    parse_id_list,
    parse_maps,
    parse_stat,
    parse_status,
)

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MIN_REFRESH_NS = 1_000_000_000
DEFAULT_KEEP_EXITED_NS = 60_000_000_000

COUNTER_NAMES = (
    "vanished",  # process gone before or during a read: None or partial info
    "maps_unreadable",  # /proc/PID/maps denied (no ptrace access): empty maps
    "exe_unreadable",  # /proc/PID/exe denied: exe and build id unknown
    "read_errors",  # any other OSError reading /proc (EIO, EMFILE...)
    "stat_malformed",  # /proc/PID/stat did not parse: process not tracked
    "build_id_errors",  # the build id reader raised
    "pid_reused",  # a cached pid turned out to be a new process
    "comm_changed",  # same process, new comm (exec or rename): read again
    "refresh_limited",  # refresh_maps inside min_refresh_ns: cached maps kept
    "evicted",  # dropped, least recently used, to stay within max_entries
    "expired",  # exited process dropped after keep_exited_ns
)

_VANISHED_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})
_DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM})

BuildIdReader = Callable[[str], str]


def default_build_id_reader(path: str) -> str:
    """`symbolizer.elf.build_id_of_path`, imported on first use."""
    from symbolizer.elf import build_id_of_path

    return build_id_of_path(path)


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A snapshot of one process, as read from /proc.

    `start_time` is stat's starttime in clock ticks after boot; with `pid` it
    names this process and no other. `exe` is the readlink of /proc/PID/exe
    without the kernel's ' (deleted)' marker, which sets `exe_deleted`
    instead (the file was replaced, e.g. by an upgrade: read the binary
    through /proc/PID/exe or map_files, not by name). `root` is the
    process' root directory as seen from Kiln's mount namespace: paths in
    `maps` are relative to it (containers). `maps_read_ns` is the table's
    clock when `maps` was read. `complete` is False when the process vanished
    part way and some fields are empty.

    Kept so its files can still be found after it exits (0 or () when
    unknown): `mnt_ns` is the inode of its mount namespace, `ns_pid` its pid
    in its own pid namespace (status' last NSpid: a JIT names its
    /tmp/perf-<pid>.map after it) and `uids` status' real, effective, saved
    and filesystem uids.
    """

    pid: int
    start_time: int
    comm: str
    exe: str
    cmdline: tuple[str, ...]
    maps: tuple[MapEntry, ...]
    container_id: str
    cgroup: str
    build_id: str
    root: str
    maps_read_ns: int
    exe_deleted: bool = False
    ppid: int = 0
    kernel_thread: bool = False
    complete: bool = True
    mnt_ns: int = 0
    ns_pid: int = 0
    uids: tuple[int, ...] = ()

    def mapping_at(self, address: int) -> MapEntry | None:
        """The maps entry holding `address`, or None."""
        for entry in self.maps:
            if entry.start <= address < entry.end:
                return entry
        return None


@dataclass(slots=True)
class _Entry:
    info: ProcessInfo
    exited_ns: int | None = None  # table clock when we learned it exited


class _Vanished(Exception):
    """The process went away while being read."""


class _ProcDir:
    """Reads files of one /proc/PID through an open directory fd.

    Errors are sorted once here: a vanished process raises `_Vanished`, a
    denied read counts `denied_counter` and gives None, anything else counts
    read_errors and gives None.
    """

    def __init__(self, dir_fd: int, counters: dict[str, int]) -> None:
        self.dir_fd = dir_fd
        self.counters = counters

    def _failed(self, err: OSError, denied_counter: str) -> None:
        if err.errno in _VANISHED_ERRNOS:
            raise _Vanished from err
        self.counters[denied_counter if err.errno in _DENIED_ERRNOS else "read_errors"] += 1

    def read(self, name: str, denied_counter: str = "read_errors") -> bytes | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except OSError as err:
            self._failed(err, denied_counter)
            return None
        try:
            chunks: list[bytes] = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as err:
            self._failed(err, denied_counter)
            return None
        finally:
            os.close(fd)

    def readlink(self, name: str, denied_counter: str) -> str | None:
        try:
            return os.readlink(name, dir_fd=self.dir_fd)
        except OSError as err:
            self._failed(err, denied_counter)
            return None

    def stat(self) -> StatInfo | None:
        """Parse stat; None (counted) if it is unreadable or malformed."""
        data = self.read("stat")
        if data is None:
            return None
        try:
            return parse_stat(data.decode("utf-8", "replace"))
        except ValueError:
            self.counters["stat_malformed"] += 1
            return None

    def extra(self, name: str) -> bytes | None:
        """A file we can do without: None on any error, nothing counted."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except OSError:
            return None
        try:
            return os.read(fd, 1 << 16)
        except OSError:
            return None
        finally:
            os.close(fd)

    def namespace(self, name: str) -> int:
        """The inode of ns/<name> (which names the namespace); 0 on any error."""
        try:
            return os.stat(f"ns/{name}", dir_fd=self.dir_fd).st_ino
        except OSError:
            return 0

    def identity(self) -> tuple[int, int, tuple[int, ...]]:
        """(mnt_ns, ns_pid, uids); zeros and () for what cannot be read."""
        data = self.extra("status")
        status = parse_status(data.decode("utf-8", "replace")) if data else {}
        nspids = parse_id_list(status.get("NSpid", ""))
        return (
            self.namespace("mnt"),
            nspids[-1] if nspids else 0,
            parse_id_list(status.get("Uid", "")),
        )

    def maps(self) -> tuple[MapEntry, ...] | None:
        data = self.read("maps", "maps_unreadable")
        # Paths keep undecodable bytes as surrogates (os.fsdecode) so they
        # can be opened again.
        return None if data is None else tuple(parse_maps(os.fsdecode(data)))


class ProcessTable:
    """Cached `ProcessInfo` per pid, bounded, pid-reuse and exit aware.

    Callers pass thread-group ids (the process pid); thread ids are not
    tracked separately. `clock` is in nanoseconds and only drives the
    grace period and rate limits; `build_id_reader(path)` must return ""
    when it finds no build id, and is given /proc/PID/exe so a deleted or
    in-container binary is still read.
    """

    def __init__(
        self,
        proc_root: str = "/proc",
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], int] = time.monotonic_ns,
        build_id_reader: BuildIdReader | None = None,
        *,
        min_refresh_ns: int = DEFAULT_MIN_REFRESH_NS,
        keep_exited_ns: int = DEFAULT_KEEP_EXITED_NS,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.proc_root = proc_root.rstrip("/") or "/"
        self.max_entries = max_entries
        self.min_refresh_ns = min_refresh_ns
        self.keep_exited_ns = keep_exited_ns
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._clock = clock
        self._build_id_reader = build_id_reader or default_build_id_reader
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        # Many processes run one binary: read its build id once per file.
        self._build_ids: OrderedDict[tuple[int, int, int, int], str] = OrderedDict()

    # -- lookups -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, pid: object) -> bool:
        return pid in self._entries

    def __iter__(self) -> Iterator[int]:
        """The cached pids, least recently used first (a snapshot)."""
        return iter(list(self._entries))

    def get(self, pid: int) -> ProcessInfo | None:
        """The cached info, without reading /proc; None if unknown or expired."""
        entry = self._entries.get(pid)
        if entry is None or self._expire_if_due(pid, entry, self._clock()):
            return None
        self._entries.move_to_end(pid)
        return entry.info

    def is_exited(self, pid: int) -> bool:
        """True if the cached process is known to have exited."""
        entry = self._entries.get(pid)
        return entry is not None and entry.exited_ns is not None

    def observe(self, pid: int) -> ProcessInfo | None:
        """Info for `pid`: cached while it is the same process, else read.

        An exited process within its grace period gives its cached info. A
        process that cannot be read gives None; one that vanished part way
        gives what was read (`complete=False`).
        """
        if pid <= 0:
            return None
        now = self._clock()
        entry = self._entries.get(pid)
        if entry is not None:
            current = self._current_stat(pid)
            if current is None:  # gone (or unreadable): the cached info is all there is
                if entry.exited_ns is None:
                    entry.exited_ns = now
                if self._expire_if_due(pid, entry, now):
                    return None
                self._entries.move_to_end(pid)
                return entry.info
            if current.starttime == entry.info.start_time:
                if current.comm == entry.info.comm:
                    self._entries.move_to_end(pid)
                    return entry.info
                self.counters["comm_changed"] += 1
            else:
                self.counters["pid_reused"] += 1
            del self._entries[pid]
        return self._read(pid, now)

    def refresh_maps(self, pid: int) -> ProcessInfo | None:
        """Read the maps again (after a dlopen, say), keeping the rest.

        At most once per `min_refresh_ns` per pid; sooner calls return the
        cached info and count refresh_limited. An unknown pid is observed;
        a reused pid is read afresh.
        """
        entry = self._entries.get(pid)
        if entry is None:
            return self.observe(pid)
        now = self._clock()
        if self._expire_if_due(pid, entry, now):
            return None
        self._entries.move_to_end(pid)
        info = entry.info
        if entry.exited_ns is not None:
            return info  # its maps are gone with it; the cached ones are the best
        if now - info.maps_read_ns < self.min_refresh_ns:
            self.counters["refresh_limited"] += 1
            return info
        dir_fd = self._open_dir(pid, count_vanished=False)
        if dir_fd is None:  # exited since observed: not a loss, we have its info
            entry.exited_ns = now
            return info
        proc = _ProcDir(dir_fd, self.counters)
        try:
            stat = proc.stat()
            if stat is None:
                return info
            if stat.starttime != info.start_time:
                self.counters["pid_reused"] += 1
                del self._entries[pid]
                return self._read(pid, now)
            maps = proc.maps()
            # Paths in the new maps are relative to its mount namespace now
            # (it may have called setns or unshare).
            mnt_ns = proc.namespace("mnt") or info.mnt_ns
        except _Vanished:
            entry.exited_ns = now
            return info
        finally:
            os.close(dir_fd)
        # Denied: keep the maps we had, but wait min_refresh_ns before retrying.
        entry.info = dataclasses.replace(
            info, maps=info.maps if maps is None else maps, maps_read_ns=now, mnt_ns=mnt_ns
        )
        return entry.info

    # -- lifetime ----------------------------------------------------------

    def mark_exited(self, pid: int) -> None:
        """The kernel says `pid` exited: keep its info for keep_exited_ns."""
        entry = self._entries.get(pid)
        if entry is not None and entry.exited_ns is None:
            entry.exited_ns = self._clock()

    def forget(self, pid: int) -> None:
        """Drop `pid` now.

        Call it when the kernel reports an exec: exec keeps pid and
        starttime, and observe only notices it when the comm changes.
        """
        self._entries.pop(pid, None)

    def prune(self) -> int:
        """Check every cached process; drop the ones gone past their grace.

        A process whose /proc/PID/stat is missing or has another starttime is
        marked exited now and kept for keep_exited_ns. Returns the number of
        entries dropped.
        """
        now = self._clock()
        dropped = 0
        for pid, entry in list(self._entries.items()):
            if entry.exited_ns is None:
                current = self._current_stat(pid)
                if current is None or current.starttime != entry.info.start_time:
                    entry.exited_ns = now
            if self._expire_if_due(pid, entry, now):
                dropped += 1
        return dropped

    # -- internals ---------------------------------------------------------

    def _expire_if_due(self, pid: int, entry: _Entry, now: int) -> bool:
        if entry.exited_ns is None or now - entry.exited_ns < self.keep_exited_ns:
            return False
        del self._entries[pid]
        self.counters["expired"] += 1
        return True

    def _store(self, pid: int, entry: _Entry) -> None:
        self._entries[pid] = entry
        self._entries.move_to_end(pid)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.counters["evicted"] += 1

    def _open_dir(self, pid: int, *, count_vanished: bool = True) -> int | None:
        """An fd on /proc/PID; None (counted) if it cannot be opened."""
        try:
            return os.open(f"{self.proc_root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            if err.errno not in _VANISHED_ERRNOS:
                self.counters["read_errors"] += 1
            elif count_vanished:
                self.counters["vanished"] += 1
            return None

    def _current_stat(self, pid: int) -> StatInfo | None:
        """Stat of the process now holding `pid`; None if none (not counted:
        the caller has cached info to fall back on)."""
        try:
            with open(f"{self.proc_root}/{pid}/stat", "rb") as f:
                return parse_stat(f.read().decode("utf-8", "replace"))
        except (OSError, ValueError):
            return None

    def _read(self, pid: int, now: int) -> ProcessInfo | None:
        """Read a process from /proc and cache it."""
        dir_fd = self._open_dir(pid)
        if dir_fd is None:
            return None
        try:
            return self._read_from(pid, _ProcDir(dir_fd, self.counters), now)
        finally:
            os.close(dir_fd)

    def _read_from(self, pid: int, proc: _ProcDir, now: int) -> ProcessInfo | None:
        try:
            stat = proc.stat()
        except _Vanished:
            self.counters["vanished"] += 1
            return None
        if stat is None:
            return None
        link, cmdline, cgroup = "", b"", b""
        maps: tuple[MapEntry, ...] = ()
        complete = False
        try:
            if not stat.is_kernel_thread:  # kernel threads have no exe
                link = proc.readlink("exe", "exe_unreadable") or ""
            cmdline = proc.read("cmdline") or b""
            cgroup = proc.read("cgroup") or b""
            maps = proc.maps() or ()
            complete = True
        except _Vanished:
            self.counters["vanished"] += 1
        mnt_ns, ns_pid = 0, 0
        uids: tuple[int, ...] = ()
        if complete and not stat.is_kernel_thread:
            mnt_ns, ns_pid, uids = proc.identity()
        exe = link.removesuffix(DELETED_SUFFIX)
        cgroup_text = cgroup.decode("utf-8", "replace")
        info = ProcessInfo(
            pid=pid,
            start_time=stat.starttime,
            comm=stat.comm,
            exe=exe,
            exe_deleted=link.endswith(DELETED_SUFFIX),
            cmdline=tuple(parse_cmdline(cmdline)),
            maps=maps,
            container_id=container_id_from_cgroup(cgroup_text),
            cgroup=cgroup_path(cgroup_text),
            build_id=self._build_id(pid) if complete and exe else "",
            root=f"{self.proc_root}/{pid}/root",
            maps_read_ns=now,
            ppid=stat.ppid,
            kernel_thread=stat.is_kernel_thread,
            complete=complete,
            mnt_ns=mnt_ns,
            ns_pid=ns_pid,
            uids=uids,
        )
        # A process that vanished part way has exited: keep it for the grace.
        self._store(pid, _Entry(info, exited_ns=None if complete else now))
        return info

    def _build_id(self, pid: int) -> str:
        path = f"{self.proc_root}/{pid}/exe"
        try:
            st = os.stat(path)
        except OSError:
            return ""  # gone or denied since the readlink; counted there if at all
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        build_id = self._build_ids.get(key)
        if build_id is not None:
            self._build_ids.move_to_end(key)
            return build_id
        try:
            build_id = self._build_id_reader(path)
        except (OSError, ValueError):
            self.counters["build_id_errors"] += 1
            return ""
        self._build_ids[key] = build_id
        if len(self._build_ids) > self.max_entries:
            self._build_ids.popitem(last=False)
        return build_id
