"""`kiln doctor`: what this host has and lacks for Kiln, each failure with its fix.

Each check is a small function returning a Check; reading the host is kept
to the calls at the top of each, so the verdict logic stays plain.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from profiler.errors import KilnError
from profiler.kernel_headers import find_headers

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # ok, but worth saying

    def render(self) -> str:
        mark = "ok  " if self.ok and not self.warning else ("warn" if self.ok else "FAIL")
        line = f"[{mark}] {self.name}: {self.detail}"
        if self.fix and (not self.ok or self.warning):
            line += f"\n       fix: {self.fix}"
        return line


def effective_caps(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_root() -> Check:
    caps = effective_caps(Path("/proc/self/status").read_text())
    has_bpf = bool(caps & (1 << CAP_BPF)) and bool(caps & (1 << CAP_PERFMON))
    if os.geteuid() == 0 or has_bpf or caps & (1 << CAP_SYS_ADMIN):
        return Check("privileges", True, f"uid {os.geteuid()}, CapEff {caps:#x}")
    return Check(
        "privileges",
        False,
        f"uid {os.geteuid()} without CAP_BPF/CAP_PERFMON",
        "run as root: sudo kiln ...",
    )


def check_bpf_syscall() -> Check:
    """Ask the kernel for the first BPF program id: EPERM/ENOSYS tell us what we need."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    nr_bpf = 321  # x86_64
    attr = (ctypes.c_uint32 * 4)(0, 0, 0, 0)
    bpf_prog_get_next_id = 11
    rc = libc.syscall(nr_bpf, bpf_prog_get_next_id, ctypes.byref(attr), ctypes.sizeof(attr))
    err = ctypes.get_errno()
    if rc == 0 or err == 2:  # ENOENT: no programs loaded, but the call works
        return Check("bpf syscall", True, "available")
    if err == 1:
        return Check(
            "bpf syscall", False, "EPERM", "run as root; check kernel.unprivileged_bpf_disabled"
        )
    return Check(
        "bpf syscall", False, os.strerror(err), "use a kernel built with CONFIG_BPF_SYSCALL=y"
    )


def check_btf() -> Check:
    if Path("/sys/kernel/btf/vmlinux").exists():
        return Check("BTF", True, "/sys/kernel/btf/vmlinux present")
    return Check(
        "BTF",
        False,
        "no /sys/kernel/btf/vmlinux",
        "use a kernel with CONFIG_DEBUG_INFO_BTF=y (Kiln's later unwinders need it)",
        warning=True,
    )


def check_paranoid() -> Check:
    try:
        level = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        return Check("perf_event_paranoid", False, "unreadable", "mount /proc")
    if level <= 2 or os.geteuid() == 0:
        return Check("perf_event_paranoid", True, f"{level} (root is not limited by it)")
    return Check(
        "perf_event_paranoid",
        False,
        str(level),
        "sysctl kernel.perf_event_paranoid=2, or run as root",
    )


def check_max_rate() -> Check:
    try:
        rate = int(Path("/proc/sys/kernel/perf_event_max_sample_rate").read_text())
    except (OSError, ValueError):
        return Check("perf_event_max_sample_rate", False, "unreadable", "mount /proc")
    return Check("perf_event_max_sample_rate", True, f"{rate} Hz (highest -F allowed)")


def check_headers() -> Check:
    try:
        info = find_headers()
    except KilnError as e:
        return Check("kernel headers", False, e.message, e.remedy)
    if info.fallback:
        return Check(
            "kernel headers",
            True,
            info.describe(),
            f"apt-get install linux-headers-{info.running} if your distro has it",
            warning=True,
        )
    return Check("kernel headers", True, info.describe())


def check_tracefs() -> Check:
    mounts = Path("/proc/mounts").read_text()
    have = {fs for fs in ("tracefs", "debugfs") if f" {fs} " in mounts}
    if "tracefs" in have:
        return Check("tracefs", True, "mounted")
    return Check(
        "tracefs",
        False,
        "not mounted",
        "mount -t tracefs nodev /sys/kernel/tracing; mount -t debugfs nodev /sys/kernel/debug",
    )


def check_bcc() -> Check:
    try:
        import bcc
    except ImportError as e:
        return Check(
            "BCC python bindings",
            False,
            str(e),
            "apt-get install bpfcc-tools python3-bpfcc libbpfcc; use a venv with "
            "--system-site-packages made from /usr/bin/python3",
        )
    return Check("BCC python bindings", True, f"bcc from {Path(bcc.__file__).parent}")


def sort_problem(argsort: Callable[[np.ndarray], np.ndarray], n: int = 4096) -> str | None:
    """What is wrong with `argsort` on a random int64 array with repeats, or None.
    The store and symbolizer rely on numpy's vectorized sorts (np.unique); an
    emulated CPU can get them wrong (qemu 7.2's AVX2 did) and make sound data
    look damaged."""
    values = np.random.default_rng(7).integers(0, n // 4, n, dtype=np.int64)
    order = argsort(values)
    if sorted(order.tolist()) != list(range(n)):
        return "argsort did not return a permutation"
    if values[order].tolist() != sorted(values.tolist()):
        return "argsort did not sort"
    return None


def check_numpy_sort() -> Check:
    # numpy keeps its runtime dispatch table in a private module: read it loosely.
    umath = getattr(getattr(np, "_core", None), "_multiarray_umath", None)
    features = getattr(umath, "__cpu_features__", {})
    simd = ",".join(f for f in ("X86_V3", "X86_V4") if features.get(f)) or "baseline"
    problem = sort_problem(lambda a: a.argsort(kind="quicksort"))
    if problem is None:
        return Check("numpy sorting", True, f"correct ({simd} code)")
    return Check(
        "numpy sorting",
        False,
        f"{problem} with this CPU's {simd} code (a CPU emulator bug?)",
        "set NPY_DISABLE_CPU_FEATURES='X86_V3 X86_V4' in Kiln's environment "
        "(systemctl edit kiln), or give the VM a CPU model without AVX2",
    )


CHECKS: list[Callable[[], Check]] = [
    check_root,
    check_bpf_syscall,
    check_btf,
    check_paranoid,
    check_max_rate,
    check_headers,
    check_tracefs,
    check_bcc,
    check_numpy_sort,
]


def run_checks() -> list[Check]:
    out = []
    for fn in CHECKS:
        try:
            out.append(fn())
        except Exception as e:  # a broken check must not hide the others
            out.append(Check(fn.__name__.removeprefix("check_"), False, f"check crashed: {e}"))
    return out
