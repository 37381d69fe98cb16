"""A realistic window to export: two processes, Python, native and kernel frames,
one hot function with a known share of the samples."""

from __future__ import annotations

import random
from collections.abc import Iterable

from profiler.export.api import ExportBatch
from symbolizer.profile import Frame, FrameKind, Mapping, Profile

HOT = "json_loads"
START_NS = 1_750_000_000_000_000_000
DURATION_NS = 10_000_000_000
PERIOD_NS = 10_101_010  # 99 Hz
RESOURCE = {"host.name": "node-1", "service.name": "checkout"}

PYTHON_EXE = "/usr/bin/python3.11"
NGINX_EXE = "/usr/sbin/nginx"
CONTAINER = "3f4e5d6c7b8a"

LIBC = Mapping(0x7F00_0000_0000, 0x7F00_0020_0000, 0, "/usr/lib/x86_64-linux-gnu/libc.so.6",
               "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678")  # fmt: skip
PYBIN = Mapping(0x5500_0000_0000, 0x5500_0040_0000, 0, PYTHON_EXE, "0badc0de")
NGINX = Mapping(0x5600_0000_0000, 0x5600_0010_0000, 0, NGINX_EXE, "feedface")
KERNEL = Mapping(0xFFFF_FFFF_8100_0000, 0xFFFF_FFFF_8300_0000, 0, "[kernel.kallsyms]",
                 kind=FrameKind.KERNEL)  # fmt: skip


def _native(name: str, mapping: Mapping, offset: int) -> Frame:
    return Frame(name, mapping.start + offset, FrameKind.NATIVE, mapping, system_name=f"_Z{name}")


def _kernel(name: str, offset: int) -> Frame:
    return Frame(name, KERNEL.start + offset, FrameKind.KERNEL, KERNEL)


def _py(name: str, line: int) -> Frame:
    return Frame(name, 0, FrameKind.PYTHON, filename="/srv/app/handlers.py", line=line)


EVAL = _native("_PyEval_EvalFrameDefault", PYBIN, 0x1000)
SYSCALLS = [_kernel("do_syscall_64", 0x100), _kernel("entry_SYSCALL_64", 0x200)]
PY_FUNCS = ["handle_request", "render", "validate", "query_db", "serialize", "log_access"]
NGINX_FUNCS = ["ngx_http_process_request", "ngx_http_parse", "ngx_event_loop", "ngx_write"]


def workload(seed: int = 7, hot_share: float = 0.4, samples: int = 5000) -> Profile:
    """`samples` samples; `hot_share` of them have HOT on the stack (a Python frame)."""
    rng = random.Random(seed)
    p = Profile(start_ns=START_NS, duration_ns=DURATION_NS, period_ns=PERIOD_NS)
    hot_left = round(samples * hot_share)
    for i in range(samples):
        hot = i < hot_left
        if hot or rng.random() < 0.5:
            tid = rng.choice([1000, 1001, 1002])
            depth = rng.randint(2, 6)
            frames = [_py(rng.choice(PY_FUNCS), rng.randint(1, 400)) for _ in range(depth)]
            if hot:
                frames.insert(0, _py(HOT, 77))
            stack = [*frames, EVAL, _native("Py_RunMain", PYBIN, 0x2000),
                     _native("__libc_start_main", LIBC, 0x3000)]  # fmt: skip
            if rng.random() < 0.2:
                stack = [*SYSCALLS, _native("read", LIBC, 0x4000), *stack]
            labels = [("pid", "1000"), ("tid", str(tid)), ("comm", "gunicorn"),
                      ("cpu", str(rng.randint(0, 3))), ("exe", PYTHON_EXE)]  # fmt: skip
        else:
            tid = rng.choice([2000, 2001])
            depth = rng.randint(1, 4)
            stack = [_native(rng.choice(NGINX_FUNCS), NGINX, 0x100 * rng.randint(1, 40))
                     for _ in range(depth)]  # fmt: skip
            if rng.random() < 0.3:
                stack = [_kernel("tcp_sendmsg", 0x300), *SYSCALLS, *stack]
            stack.append(_native("__libc_start_main", LIBC, 0x3000))
            labels = [("pid", "2000"), ("tid", str(tid)), ("comm", "nginx"),
                      ("cpu", str(rng.randint(0, 3))), ("exe", NGINX_EXE),
                      ("container", CONTAINER)]  # fmt: skip
        p.add(stack, 1, labels)
    return p


def share(samples: Iterable[tuple[Iterable[str], int]], name: str = HOT) -> float:
    """The share of samples whose stack has `name`, from (function names, count) pairs."""
    total = hit = 0
    for names, n in samples:
        total += n
        if name in set(names):
            hit += n
    return hit / total if total else 0.0


def profile_share(profile: Profile, name: str = HOT) -> float:
    return share(((fn.name for fn, _ in frames), n) for frames, _, n in profile.samples())


def canonical(
    profile: Profile,
) -> list[tuple[tuple[object, ...], tuple[tuple[str, str], ...], int]]:
    """Samples by content: (frames as (name, kind, file, line, mapping file), labels, count)."""
    out: dict[tuple[tuple[object, ...], tuple[tuple[str, str], ...]], int] = {}
    for frames, labels, n in profile.samples():
        key = tuple(
            (
                fn.name,
                loc.kind,
                fn.filename,
                loc.line,
                m.filename if (m := profile.mappings[loc.mapping_id]) else "",
            )
            for fn, loc in frames
        )
        out[(key, labels)] = out.get((key, labels), 0) + n
    return sorted((k, lab, n) for (k, lab), n in out.items())


def batch_of(profile: Profile, resource: dict[str, str] | None = None) -> ExportBatch:
    return ExportBatch(
        batch_id=1,
        profile=profile,
        start_ns=profile.start_ns,
        duration_ns=profile.duration_ns,
        samples=profile.total_samples,
        resource=dict(RESOURCE if resource is None else resource),
    )
