"""Pure /proc parsers, fed inline text shaped like the kernel's."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiler.procfs import (
    PF_KTHREAD,
    cgroup_path,
    container_id_from_cgroup,
    container_id_from_path,
    parse_cmdline,
    parse_id_list,
    parse_maps,
    parse_stat,
    parse_status,
)

ID = "4f3b9e2d1c0a8b7f6e5d4c3b2a19081726354453627180f9e8d7c6b5a4938271"
ID2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
POD = "pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d"

# -- maps -------------------------------------------------------------------

MAPS = """\
55d0c4a00000-55d0c4a02000 r--p 00000000 fd:01 1835101                    /usr/bin/sleep
55d0c4a02000-55d0c4a06000 r-xp 00002000 fd:01 1835101                    /usr/bin/sleep
55d0c5b1e000-55d0c5b3f000 rw-p 00000000 00:00 0                          [heap]
7f1c2a000000-7f1c2a022000 r-xp 00028000 fd:01 1837412                    /tmp/my lib.so (deleted)
7ffd5a1f0000-7ffd5a211000 rw-p 00000000 00:00 0                          [stack]
7ffd5a3b4000-7ffd5a3b6000 r-xp 00000000 00:00 0                          [vdso]
garbage line
"""


def test_parse_maps_keeps_existing_api() -> None:
    maps = parse_maps(MAPS)
    assert len(maps) == 6
    text = maps[1]
    assert (text.start, text.end, text.offset, text.inode) == (
        0x55D0C4A02000,
        0x55D0C4A06000,
        0x2000,
        1835101,
    )
    assert text.is_exec and text.is_file and text.path == "/usr/bin/sleep"
    deleted = maps[3]
    assert deleted.deleted and deleted.file_path == "/tmp/my lib.so"
    assert not maps[2].is_file and maps[2].path == "[heap]"


# -- cmdline ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"sleep\x0030\x00", ["sleep", "30"]),
        (b"sleep\x0030", ["sleep", "30"]),  # terminator dropped by setproctitle
        (b"postgres: writer process   ", ["postgres: writer process   "]),
        (b"a\x00\x00b\x00", ["a", "", "b"]),  # an empty argument is an argument
        (b"", []),  # kernel thread, zombie
        (b"\xff\xfe\x00", ["\ufffd\ufffd"]),
    ],
)
def test_parse_cmdline(data: bytes, expected: list[str]) -> None:
    assert parse_cmdline(data) == expected


# -- status -----------------------------------------------------------------

STATUS = """\
Name:\t my (odd) app
Umask:\t0022
State:\tS (sleeping)
Tgid:\t4321
Ngid:\t0
Pid:\t4321
PPid:\t4300
Uid:\t0\t0\t0\t0
NStgid:\t4321\t7
NSpid:\t4321\t7
NSpgid:\t4321\t7
no colon here
"""


def test_parse_status() -> None:
    status = parse_status(STATUS)
    assert status["Name"] == " my (odd) app"
    assert status["Tgid"] == "4321"
    assert status["PPid"] == "4300"
    assert status["State"] == "S (sleeping)"
    assert parse_id_list(status["NSpid"]) == (4321, 7)
    assert parse_id_list(status["Uid"]) == (0, 0, 0, 0)
    assert parse_status("") == {}


def test_parse_id_list_stops_at_garbage() -> None:
    assert parse_id_list("12\t34 x 56") == (12, 34)
    assert parse_id_list("") == ()


# -- stat -------------------------------------------------------------------

STAT_TAIL = (
    "S 4300 4321 4300 34816 4321 4194560 110 0 0 0 7 3 0 0 20 0 2 0 5577213 "
    "8859648 224 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
)


def test_parse_stat_plain() -> None:
    st_ = parse_stat(f"4321 (sleep) {STAT_TAIL}\n")
    assert (st_.pid, st_.comm, st_.state, st_.ppid) == (4321, "sleep", "S", 4300)
    assert (st_.pgrp, st_.session, st_.utime, st_.stime) == (4321, 4300, 7, 3)
    assert (st_.num_threads, st_.starttime) == (2, 5577213)
    assert not st_.is_kernel_thread


@pytest.mark.parametrize(
    "comm", ["tmux: server", "a) S 1 2 (b", "((x))", ")", "", "two\nlines", "Web Content"]
)
def test_parse_stat_hostile_comm(comm: str) -> None:
    st_ = parse_stat(f"77 ({comm}) {STAT_TAIL}")
    assert st_.comm == comm
    assert st_.ppid == 4300 and st_.starttime == 5577213


def test_parse_stat_kernel_thread() -> None:
    line = (
        f"2 (kthreadd) S 0 0 0 0 -1 {PF_KTHREAD | 0x40} 0 0 0 0 0 0 0 0 20 0 1 0 3 "
        "0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 0 1 0 0 0 0 0"
    )
    st_ = parse_stat(line)
    assert st_.is_kernel_thread and st_.starttime == 3


@pytest.mark.parametrize(
    "text",
    ["", "4321 sleep S 1", "4321 (sleep) S 1 2 3", "x (sleep) " + STAT_TAIL, "1 (a) " + "x " * 30],
)
def test_parse_stat_malformed_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_stat(text)


# -- cgroup -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # docker, systemd cgroup driver, cgroup v2
        (f"0::/system.slice/docker-{ID}.scope\n", ID),
        # docker, cgroupfs driver, cgroup v1 (hybrid: the v2 line says nothing)
        (
            f"12:pids:/docker/{ID}\n4:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n",
            ID,
        ),
        # Kubernetes + containerd, systemd driver, v2
        (
            "0::/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-{POD}.slice/cri-containerd-{ID}.scope\n",
            ID,
        ),
        # Kubernetes, cgroupfs driver, v1: a trailing bare id
        (f"5:cpu,cpuacct:/kubepods/burstable/{POD}/{ID}\n3:memory:/kubepods/{POD}/{ID}\n", ID),
        # containerd in kind: systemd slice, then ':cri-containerd:'
        (
            "0::/system.slice/containerd.service/"
            f"kubepods-besteffort-{POD}.slice:cri-containerd:{ID}\n",
            ID,
        ),
        # CRI-O, systemd and cgroupfs
        (
            "0::/kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-{POD}.slice/crio-{ID}.scope\n",
            ID,
        ),
        (f"0::/kubepods/besteffort/{POD}/crio-{ID}\n", ID),
        # podman rootful (with its init sub-cgroup) and rootless
        (f"0::/machine.slice/libpod-{ID}.scope/container\n", ID),
        (
            f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n",
            ID,
        ),
        # nested (kind node in docker): the innermost container wins
        (f"0::/system.slice/docker-{ID2}.scope/kubepods/{POD}/cri-containerd-{ID}.scope\n", ID),
        # not containers
        ("0::/user.slice/user-1000.slice/session-2.scope\n", ""),
        ("0::/\n", ""),
        (f"0::/kubepods.slice/crio-conmon-{ID}.scope\n", ""),  # the monitor, not the container
        (f"0::/system.slice/foo-{ID}.service\n", ""),
        (f"0::/docker/{ID[:63]}\n", ""),
        (f"0::/docker/{ID.upper()}\n", ""),
        ("", ""),
        ("not a cgroup file", ""),
    ],
)
def test_container_id_from_cgroup(text: str, expected: str) -> None:
    assert container_id_from_cgroup(text) == expected


def test_container_id_prefers_v2_line() -> None:
    text = f"4:memory:/docker/{ID2}\n0::/system.slice/docker-{ID}.scope\n"
    assert container_id_from_cgroup(text) == ID


def test_cgroup_path() -> None:
    assert cgroup_path(f"4:memory:/docker/{ID}\n0::/system.slice/docker-{ID}.scope\n") == (
        f"/system.slice/docker-{ID}.scope"
    )
    assert cgroup_path("0::/a:b:c\n") == "/a:b:c"  # colons stay in the path
    assert cgroup_path(f"4:memory:/docker/{ID}\n") == ""  # v1 only
    assert cgroup_path("") == ""


# -- properties ---------------------------------------------------------------

hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)

# Random text, plus text built from the pieces /proc files are made of, so
# the examples reach past the first check of each parser.
TOKENS = ["(", ")", " ", "\t", "\n", ":", "::", "/", "-", "0", "17", "-1", "S", "ff", "0::/"]
proc_text = st.one_of(
    st.text(),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=3), hex64)).map("".join),
)


@given(proc_text)
def test_text_parsers_never_raise(text: str) -> None:
    parse_maps(text)
    parse_status(text)
    parse_id_list(text)
    cgroup_path(text)
    container_id_from_cgroup(text)
    container_id_from_path(text)


@given(st.binary())
def test_parse_cmdline_never_raises(data: bytes) -> None:
    args = parse_cmdline(data)
    assert len(args) == (data.count(b"\0") + (not data.endswith(b"\0")) if data else 0)


@given(st.one_of(proc_text, st.lists(st.sampled_from(TOKENS), min_size=25).map("".join)))
def test_parse_stat_raises_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_stat(text)


@given(st.text(), st.integers(0, 2**22), st.integers(0, 2**63))
def test_parse_stat_recovers_any_comm(comm: str, pid: int, start: int) -> None:
    tail = STAT_TAIL.replace("5577213", str(start))
    st_ = parse_stat(f"{pid} ({comm}) {tail}\n")
    assert (st_.pid, st_.comm, st_.starttime) == (pid, comm, start)


@given(
    hex64,
    st.sampled_from(
        [
            "/docker/{}",
            "/system.slice/docker-{}.scope",
            "/kubepods/besteffort/pod1/{}",
            "/kubepods.slice/x.slice/cri-containerd-{}.scope",
            "/system.slice/containerd.service/kubepods-x.slice:cri-containerd:{}",
            "/kubepods.slice/crio-{}.scope",
            "/machine.slice/libpod-{}.scope/container",
        ]
    ),
    st.sampled_from(["0::", "7:memory:", "1:name=systemd:"]),
)
def test_container_id_every_form(cid: str, form: str, prefix: str) -> None:
    assert container_id_from_cgroup(prefix + form.format(cid) + "\n") == cid
