"""The BCC-facing layer: the only module that imports `bcc`.

It compiles bpf/cpu_sample.bpf.c, attaches it to the cpu-clock software
event on every online CPU, and exposes the maps through `SamplerBackend`,
a small Protocol the rest of the agent is written against.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from profiler import btf
from profiler.bpf import abi
from profiler.errors import BccMissingError, BpfUnavailableError, NotRootError
from profiler.kernel_headers import find_headers

log = logging.getLogger("kiln.bpf")

PROGRAM = abi.BPF_DIR / "cpu_sample.bpf.c"

KEY_DTYPE = abi.numpy_dtype(abi.SampleKey)
VALUE_DTYPE = abi.numpy_dtype(abi.SampleValue)
STACK_DTYPE = abi.numpy_dtype(abi.Stack)

# A drained stack: frames leaf first, and whether the walk was cut short.
StackRecord = tuple[tuple[int, ...], bool]


@dataclass(frozen=True)
class MapSizes:
    stack_entries: int = 8192
    count_entries: int = 16384
    ringbuf_pages: int = 64
    unwind_rows: int = 1 << 21  # 16-byte rows
    unwind_pages: int = 1 << 19  # page index entries (~80 bytes each in the kernel)
    unwind_mappings: int = 65536

    @classmethod
    def for_unwind_memory(cls, mib: int, **kw: int) -> MapSizes:
        """Split an unwind-table memory cap between rows (60%) and page index (40%)."""
        total = mib << 20
        return cls(
            unwind_rows=max(1024, total * 6 // 10 // 16),
            unwind_pages=max(1024, total * 4 // 10 // 80),
            **kw,
        )

    def cflags(self) -> list[str]:
        return [
            f"-DKILN_STACK_ENTRIES={self.stack_entries}",
            f"-DKILN_COUNT_ENTRIES={self.count_entries}",
            f"-DKILN_RINGBUF_PAGES={self.ringbuf_pages}",
            f"-DKILN_UNWIND_ROWS={self.unwind_rows}",
            f"-DKILN_UNWIND_PAGES={self.unwind_pages}",
            f"-DKILN_UNWIND_MAPPINGS={self.unwind_mappings}",
        ]


EventHandler = Callable[[abi.Event], None]


@runtime_checkable
class UnwindMaps(Protocol):
    """The BPF maps that hold unwind tables (see kiln.h)."""

    def write_rows(self, first: int, rows: np.ndarray) -> None: ...
    def write_pages(self, keys: np.ndarray, vals: np.ndarray) -> None: ...
    def delete_pages(self, keys: np.ndarray) -> None: ...
    def write_mappings(self, keys: np.ndarray, vals: np.ndarray) -> None: ...
    def delete_mappings(self, keys: np.ndarray) -> None: ...
    def set_tracked(self, pid: int, tracked: bool) -> None: ...


class SamplerBackend(Protocol):
    """What the sampler needs from the kernel side."""

    def attach(self, frequency_hz: int) -> None: ...
    def detach(self) -> None: ...
    def set_config(self, active: int, flags: abi.Flag) -> None: ...
    def set_pid_filter(self, pids: Iterable[int]) -> None: ...
    def set_comm_filter(self, comms: Iterable[str]) -> None: ...
    def drain_counts(self, half: int) -> tuple[np.ndarray, np.ndarray]: ...
    def drain_stacks(self, half: int) -> dict[int, StackRecord]: ...
    def counters(self) -> dict[abi.Counter, int]: ...
    def poll_events(self, timeout_ms: int) -> None: ...
    def set_event_handler(self, handler: EventHandler | None) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class PythonMaps(Protocol):
    """The BPF maps for Python stacks: how to walk each process, and a peek at
    one stack while its process is still alive to read code objects from."""

    def set_python(self, pid: int, proc: abi.PyProc | None) -> None: ...
    def lookup_stack(self, half: int, stack_hash: int) -> StackRecord | None: ...


def kernel_offsets() -> list[str]:
    """-D flags for kernel-internal offsets, from the running kernel's BTF.

    Only task_struct.thread.fsbase (pthread_self() of the sampled thread, to
    find pre-3.11 Python thread states); without BTF those threads are not
    matched and Python < 3.11 shows native frames only."""
    try:
        fsbase = btf.kernel_member_offset("task_struct", "thread.fsbase")
    except btf.BtfError as e:
        log.warning("no kernel BTF offsets (%s): Python < 3.11 stacks are unavailable", e)
        return []
    return [f"-DKILN_TASK_FSBASE_OFFSET={fsbase}"]


def cflags(sizes: MapSizes) -> list[str]:
    return [f"-I{abi.BPF_DIR}", *sizes.cflags(), *kernel_offsets()]


def program_source() -> str:
    """The C that BCC compiles (for `kiln bpf-source`)."""
    return PROGRAM.read_text()


def _import_bcc() -> Any:
    try:
        import bcc
    except ImportError as e:
        raise BccMissingError(
            f"cannot import BCC's Python bindings ({e})",
            "run `make deps` (apt-get install bpfcc-tools python3-bpfcc libbpfcc) and use the "
            "venv made from /usr/bin/python3 with --system-site-packages",
        ) from e
    return bcc


class BccBackend:
    """SamplerBackend over a BCC-loaded cpu_sample program."""

    def __init__(self, sizes: MapSizes | None = None) -> None:
        if os.geteuid() != 0:
            raise NotRootError(
                "Kiln must run as root to load BPF programs and open perf events",
                "run it with sudo (or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE)",
            )
        bcc = _import_bcc()
        headers = find_headers()
        if headers.fallback:
            log.warning(headers.describe())
        else:
            log.info(headers.describe())
        self._bcc = bcc
        self.sizes = sizes or MapSizes()
        try:
            self._bpf = bcc.BPF(src_file=str(PROGRAM).encode(), cflags=cflags(self.sizes))
        except Exception as e:
            raise BpfUnavailableError(
                f"the kernel or BCC refused Kiln's BPF program: {e}",
                "run `kiln doctor`; it checks the BPF syscall, BTF, headers and limits",
            ) from e
        try:
            # The Python walker, tail-called from on_cpu_sample (see the C).
            walker = self._bpf.load_func(b"on_python_sample", bcc.BPF.PERF_EVENT)
            self._bpf[b"py_prog"][ctypes.c_int(0)] = ctypes.c_int(walker.fd)
        except Exception as e:
            raise BpfUnavailableError(
                f"the kernel refused Kiln's Python stack walker: {e}",
                "run `kiln doctor`; or run with `--no-python`",
            ) from e
        self._attached_hz = 0
        self._on_event: EventHandler | None = None
        self._bpf[b"events"].open_ring_buffer(self._ringbuf_callback)

    # -- lifecycle ---------------------------------------------------------

    def attach(self, frequency_hz: int) -> None:
        if self._attached_hz:
            self.detach()
        try:
            self._bpf.attach_perf_event(
                ev_type=self._bcc.PerfType.SOFTWARE,
                ev_config=self._bcc.PerfSWConfig.CPU_CLOCK,
                fn_name=b"on_cpu_sample",
                sample_freq=frequency_hz,
                cpu=-1,
            )
        except Exception as e:
            if "Failed to load BPF program" in str(e):  # the verifier, not the event
                raise BpfUnavailableError(
                    f"the kernel's verifier refused Kiln's sampling program: {e}",
                    "run `kiln doctor`, and report the kernel version (uname -r) with this error",
                ) from e
            raise BpfUnavailableError(
                f"cannot attach to the cpu-clock perf event at {frequency_hz} Hz: {e}",
                "lower --frequency below /proc/sys/kernel/perf_event_max_sample_rate",
            ) from e
        self._attached_hz = frequency_hz

    def detach(self) -> None:
        if self._attached_hz:
            self._bpf.detach_perf_event(
                ev_type=self._bcc.PerfType.SOFTWARE, ev_config=self._bcc.PerfSWConfig.CPU_CLOCK
            )
            self._attached_hz = 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.detach()
        self._bpf.cleanup()

    # -- configuration -----------------------------------------------------

    def set_config(self, active: int, flags: abi.Flag) -> None:
        table = self._bpf[b"config"]
        table[ctypes.c_int(0)] = abi.Config(active=active, flags=int(flags))

    def set_pid_filter(self, pids: Iterable[int]) -> None:
        table = self._bpf[b"pid_filter"]
        table.clear()
        for pid in pids:
            table[ctypes.c_uint32(pid)] = ctypes.c_uint8(1)

    def set_comm_filter(self, comms: Iterable[str]) -> None:
        table = self._bpf[b"comm_filter"]
        table.clear()
        for comm in comms:
            key = table.Key()
            raw = comm.encode()[: abi.COMM_LEN - 1]
            ctypes.memmove(ctypes.addressof(key), raw, len(raw))
            table[key] = ctypes.c_uint8(1)

    # -- data --------------------------------------------------------------

    def drain_counts(self, half: int) -> tuple[np.ndarray, np.ndarray]:
        """All (key, value) rows of one half as numpy records; the half is emptied."""
        table = self._bpf[f"counts{half}".encode()]
        keys = bytearray()
        values = bytearray()
        for k, v in table.items_lookup_and_delete_batch():
            keys += bytes(k)
            values += bytes(v)
        return np.frombuffer(bytes(keys), KEY_DTYPE), np.frombuffer(bytes(values), VALUE_DTYPE)

    def drain_stacks(self, half: int) -> dict[int, StackRecord]:
        """Every stack of one half by hash; the half is emptied."""
        table = self._bpf[f"stacks{half}".encode()]
        hashes: list[int] = []
        raw = bytearray()
        for k, v in table.items_lookup_and_delete_batch():
            hashes.append(k if isinstance(k, int) else int(k.value))
            raw += bytes(v)
        rows = np.frombuffer(bytes(raw), STACK_DTYPE)
        out: dict[int, StackRecord] = {}
        for h, row in zip(hashes, rows, strict=True):
            n = min(int(row["len"]), abi.MAX_STACK_DEPTH)
            out[h] = (tuple(row["ips"][:n].tolist()), bool(row["flags"] & abi.STACK_TRUNCATED))
        return out

    def lookup_stack(self, half: int, stack_hash: int) -> StackRecord | None:
        """One stack of a half, left in place (for naming frames while a process lives)."""
        table = self._bpf[f"stacks{half}".encode()]
        try:
            leaf = table[ctypes.c_uint64(stack_hash)]
        except KeyError:
            return None
        row = np.frombuffer(bytes(leaf), STACK_DTYPE)[0]
        n = min(int(row["len"]), abi.MAX_STACK_DEPTH)
        return tuple(row["ips"][:n].tolist()), bool(row["flags"] & abi.STACK_TRUNCATED)

    def counters(self) -> dict[abi.Counter, int]:
        table = self._bpf[b"counters"]
        out = {}
        for c in abi.Counter:
            out[c] = int(sum(table[ctypes.c_int(int(c))]))
        return out

    def poll_events(self, timeout_ms: int) -> None:
        self._bpf.ring_buffer_poll(timeout_ms)

    def set_event_handler(self, handler: EventHandler | None) -> None:
        self._on_event = handler

    def _ringbuf_callback(self, _ctx: Any, data: Any, size: int) -> int:
        if size < ctypes.sizeof(abi.Event) or self._on_event is None:
            return 0
        ev = abi.Event.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(abi.Event)))
        self._on_event(ev)  # the sampler's handler counts its own failures
        return 0

    # -- unwind tables -------------------------------------------------------

    def _batch(self, name: bytes, keys: bytes, n: int, vals: bytes | None = None) -> None:
        table = self._bpf[name]
        ct_keys = (table.Key * n).from_buffer_copy(keys)
        if vals is None:
            table.items_delete_batch(ct_keys)
        else:
            table.items_update_batch(ct_keys, (table.Leaf * n).from_buffer_copy(vals))

    def write_rows(self, first: int, rows: np.ndarray) -> None:
        if len(rows):
            idx = np.arange(first, first + len(rows), dtype="<u4")
            self._batch(b"unwind_rows", idx.tobytes(), len(rows), rows.tobytes())

    def write_pages(self, keys: np.ndarray, vals: np.ndarray) -> None:
        if len(keys):
            self._batch(b"unwind_pages", keys.tobytes(), len(keys), vals.tobytes())

    def delete_pages(self, keys: np.ndarray) -> None:
        if len(keys):
            self._batch(b"unwind_pages", keys.tobytes(), len(keys))

    def write_mappings(self, keys: np.ndarray, vals: np.ndarray) -> None:
        # LPM tries have no batch operations: one syscall per prefix.
        table = self._bpf[b"unwind_mappings"]
        kb, vb = keys.tobytes(), vals.tobytes()
        ks, vs = keys.dtype.itemsize, vals.dtype.itemsize
        for i in range(len(keys)):
            key = table.Key.from_buffer_copy(kb[i * ks : (i + 1) * ks])
            table[key] = table.Leaf.from_buffer_copy(vb[i * vs : (i + 1) * vs])

    def delete_mappings(self, keys: np.ndarray) -> None:
        table = self._bpf[b"unwind_mappings"]
        kb, ks = keys.tobytes(), keys.dtype.itemsize
        for i in range(len(keys)):
            with contextlib.suppress(KeyError):
                del table[table.Key.from_buffer_copy(kb[i * ks : (i + 1) * ks])]

    def set_tracked(self, pid: int, tracked: bool) -> None:
        table = self._bpf[b"tracked"]
        if tracked:
            table[ctypes.c_uint32(pid)] = ctypes.c_uint8(1)
        else:
            with contextlib.suppress(KeyError):
                del table[ctypes.c_uint32(pid)]

    # -- Python ----------------------------------------------------------------

    def set_python(self, pid: int, proc: abi.PyProc | None) -> None:
        table = self._bpf[b"py_procs"]
        if proc is not None:
            table[ctypes.c_uint32(pid)] = table.Leaf.from_buffer_copy(bytes(proc))
        else:
            with contextlib.suppress(KeyError):
                del table[ctypes.c_uint32(pid)]

    # -- introspection for tests -------------------------------------------

    def bcc_struct(self, table: str, part: str) -> type[ctypes.Structure]:
        """The ctypes type BCC derived from the C for a map's Key or Leaf."""
        t: type[ctypes.Structure] = getattr(self._bpf[table.encode()], part)
        return t
