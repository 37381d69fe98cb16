"""Pure parsers for /proc files: they take text or bytes, never paths.

They are tolerant: malformed lines are skipped and missing fields give
empty values. Only `parse_stat` raises (ValueError), because a stat line
without a starttime cannot identify a process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DELETED_SUFFIX = " (deleted)"


@dataclass(frozen=True, slots=True)
class MapEntry:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    dev_major: int
    dev_minor: int
    inode: int
    path: str

    @property
    def is_exec(self) -> bool:
        return "x" in self.perms

    @property
    def is_file(self) -> bool:
        """Backed by a file on disk (not anonymous, not [vdso]/[heap]...)."""
        return self.path.startswith("/") and self.inode != 0

    @property
    def deleted(self) -> bool:
        return self.path.endswith(DELETED_SUFFIX)

    @property
    def file_path(self) -> str:
        """The path without the kernel's ' (deleted)' marker."""
        return self.path[: -len(DELETED_SUFFIX)] if self.deleted else self.path


# -- /proc/PID/maps -------------------------------------------------------


def parse_maps(text: str) -> list[MapEntry]:
    """Parse /proc/PID/maps; malformed lines are skipped, never fatal."""
    out: list[MapEntry] = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        try:
            lo, _, hi = parts[0].partition("-")
            major, _, minor = parts[3].partition(":")
            out.append(
                MapEntry(
                    start=int(lo, 16),
                    end=int(hi, 16),
                    perms=parts[1],
                    offset=int(parts[2], 16),
                    dev_major=int(major, 16),
                    dev_minor=int(minor, 16),
                    inode=int(parts[4]),
                    path=parts[5].strip() if len(parts) > 5 else "",
                )
            )
        except ValueError:
            continue
    return out


# -- /proc/PID/cmdline ----------------------------------------------------


def parse_cmdline(data: bytes) -> list[str]:
    """Split /proc/PID/cmdline into arguments.

    Arguments are NUL-terminated; the final terminator is optional (a process
    that rewrote its argv may drop it). Kernel threads and zombies have an
    empty cmdline, which gives []. Bytes that are not UTF-8 are replaced:
    the result is for display and labels, not for opening files.
    """
    if not data:
        return []
    if data.endswith(b"\0"):
        data = data[:-1]
    return [arg.decode("utf-8", "replace") for arg in data.split(b"\0")]


# -- /proc/PID/status -----------------------------------------------------


def parse_status(text: str) -> dict[str, str]:
    """Parse /proc/PID/status into {key: raw value}.

    Every `Key:<TAB>value` line is kept (Name, Tgid, PPid, NSpid, Uid...).
    Values are stripped, except Name, where only the separating tab goes, so
    a comm with leading or trailing spaces survives. Multi-valued fields
    keep their tabs; read the id lists with `parse_id_list`. Lines without a
    colon are skipped.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or not key:
            continue
        if key == "Name":
            out[key] = value[1:] if value.startswith("\t") else value
        else:
            out[key] = value.strip()
    return out


def parse_id_list(value: str) -> tuple[int, ...]:
    """Parse a whitespace-separated id list such as status' NSpid.

    NSpid lists the pid in each pid namespace, outermost (the host) first;
    the last one is the pid the process sees itself as. Stops at the first
    field that is not an integer.
    """
    out: list[int] = []
    for field in value.split():
        try:
            out.append(int(field))
        except ValueError:
            break
    return tuple(out)


# -- /proc/PID/stat -------------------------------------------------------

PF_KTHREAD = 0x00200000
"""Task flag (stat field 9) set on kernel threads, which have no exe or maps."""

_STAT_FIELDS_AFTER_COMM = 20  # state (field 3) .. starttime (field 22)


@dataclass(frozen=True, slots=True)
class StatInfo:
    """The fields of /proc/PID/stat that Kiln uses (see proc(5))."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    flags: int
    utime: int
    stime: int
    num_threads: int
    starttime: int
    """Clock ticks after boot: with the pid, it identifies one process for
    its whole life, so a change means the pid was reused."""

    @property
    def is_kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)


def parse_stat(text: str) -> StatInfo:
    """Parse /proc/PID/stat.

    The comm sits between the first '(' and the last ')': the kernel does not
    escape it, so it may hold spaces, parentheses or even newlines, and no
    field after it contains ')'.

    Raises ValueError when the text is not a stat line (no parentheses, too
    few fields, a field that is not a number): without a trustworthy
    starttime the process cannot be told apart from a later one.
    """
    open_ = text.find("(")
    close = text.rfind(")")
    if open_ < 0 or close < open_:
        raise ValueError("stat: no '(comm)' field")
    rest = text[close + 1 :].split()
    if len(rest) < _STAT_FIELDS_AFTER_COMM:
        raise ValueError(f"stat: {len(rest)} fields after comm, need {_STAT_FIELDS_AFTER_COMM}")
    return StatInfo(
        pid=int(text[:open_]),
        comm=text[open_ + 1 : close],
        state=rest[0],
        ppid=int(rest[1]),
        pgrp=int(rest[2]),
        session=int(rest[3]),
        flags=int(rest[6]),
        utime=int(rest[11]),
        stime=int(rest[12]),
        num_threads=int(rest[17]),
        starttime=int(rest[19]),
    )


# -- /proc/PID/cgroup -----------------------------------------------------

_HEX64 = "[0-9a-f]{64}"

# One path component that names a container. Runtimes and cgroup drivers:
#   docker, systemd driver     docker-<id>.scope
#   docker, cgroupfs driver    /docker/<id>  (bare id; also kubepods/.../<id>)
#   containerd, systemd        cri-containerd-<id>.scope
#   containerd, kind/systemd   kubepods-...-pod<uid>.slice:cri-containerd:<id>
#   CRI-O                      crio-<id>.scope, or crio-<id> with cgroupfs
#   podman                     libpod-<id>.scope, or libpod-<id> with cgroupfs
# The conmon monitors (crio-conmon-<id>, libpod-conmon-<id>) are not the
# container and do not match.
_CONTAINER_COMPONENT = re.compile(
    rf"(?:(?:docker|cri-containerd|crio|libpod)-)?({_HEX64})(?:\.scope)?"
    rf"|.*:cri-containerd:({_HEX64})"
)


def _cgroup_lines(text: str) -> list[tuple[str, str, str]]:
    """(hierarchy id, controllers, path) per line; the path may hold ':'."""
    out: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        hierarchy, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if sep and sep2:
            out.append((hierarchy, controllers, path))
    return out


def _is_unified(hierarchy: str, controllers: str) -> bool:
    return hierarchy == "0" and controllers == ""


def cgroup_path(text: str) -> str:
    """The cgroup v2 path (the `0::` line) of /proc/PID/cgroup, "" if none.

    A host with only cgroup v1 has no such line.
    """
    for hierarchy, controllers, path in _cgroup_lines(text):
        if _is_unified(hierarchy, controllers):
            return path
    return ""


def container_id_from_path(path: str) -> str:
    """The container id named in one cgroup path, "" if none.

    Nested containers (kind, docker-in-docker) name several ids; the
    innermost, i.e. the last, is the one the process runs in.
    """
    found = ""
    for component in path.split("/"):
        m = _CONTAINER_COMPONENT.fullmatch(component)
        if m:
            found = m.group(1) or m.group(2)
    return found


def container_id_from_cgroup(text: str) -> str:
    """The container id (64 hex digits) in /proc/PID/cgroup, "" for none.

    Looks at the v2 path first, then the v1 hierarchies in file order, and
    returns the first id found.
    """
    lines = _cgroup_lines(text)
    lines.sort(key=lambda line: not _is_unified(line[0], line[1]))  # stable
    for _, _, path in lines:
        found = container_id_from_path(path)
        if found:
            return found
    return ""
