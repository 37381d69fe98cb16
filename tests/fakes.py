"""In-memory stand-ins for the kernel side, for tests of the layers above it.

The real BPF backend is tested on the real kernel in tests/bpf; these let the
sampler and recorder logic be tested without root.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from profiler.bpf import abi
from profiler.bpf.loader import KEY_DTYPE, VALUE_DTYPE


class FakeBackend:
    def __init__(self) -> None:
        self.config: list[tuple[int, abi.Flag]] = []
        self.rows: dict[int, list[tuple[tuple[object, ...], tuple[int, int, int]]]] = {0: [], 1: []}
        self.stacks: dict[int, dict[int, tuple[int, ...]]] = {0: {}, 1: {}}
        self.cleared: list[int] = []
        self.hz = 0
        self.pids: list[int] = []

    def attach(self, frequency_hz: int) -> None:
        self.hz = frequency_hz

    def detach(self) -> None:
        self.hz = 0

    def set_config(self, active: int, flags: abi.Flag) -> None:
        self.config.append((active, flags))

    def set_pid_filter(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)

    def set_comm_filter(self, comms: Iterable[str]) -> None:
        pass

    def drain_counts(self, half: int) -> tuple[np.ndarray, np.ndarray]:
        rows, self.rows[half] = self.rows[half], []
        keys = np.array([k for k, _ in rows], dtype=KEY_DTYPE)
        values = np.array([v for _, v in rows], dtype=VALUE_DTYPE)
        return keys, values

    def drain_stacks(self, half: int) -> dict[int, tuple[tuple[int, ...], bool]]:
        self.cleared.append(half)
        out, self.stacks[half] = self.stacks[half], {}
        return {h: (ips, len(ips) >= 127) for h, ips in out.items()}

    def counters(self) -> dict[abi.Counter, int]:
        return {c: 0 for c in abi.Counter}

    def poll_events(self, timeout_ms: int) -> None:
        time.sleep(timeout_ms / 1000)  # a real poll blocks until data or timeout

    def set_event_handler(self, handler: object) -> None:
        self.handler = handler

    def close(self) -> None:
        pass


class FakeUnwindMaps:
    """The unwind BPF maps as dictionaries (mirrors BccBackend's UnwindMaps)."""

    def __init__(self) -> None:
        self.rows: dict[int, bytes] = {}
        self.pages: dict[bytes, bytes] = {}
        self.mappings: dict[bytes, bytes] = {}
        self.tracked: set[int] = set()

    def write_rows(self, first: int, rows: np.ndarray) -> None:
        size = rows.dtype.itemsize
        raw = rows.tobytes()
        for i in range(len(rows)):
            self.rows[first + i] = raw[i * size : (i + 1) * size]

    def write_pages(self, keys: np.ndarray, vals: np.ndarray) -> None:
        for k, v in zip(keys, vals, strict=True):
            self.pages[k.tobytes()] = v.tobytes()

    def delete_pages(self, keys: np.ndarray) -> None:
        for k in keys:
            self.pages.pop(k.tobytes(), None)

    def write_mappings(self, keys: np.ndarray, vals: np.ndarray) -> None:
        for k, v in zip(keys, vals, strict=True):
            self.mappings[k.tobytes()] = v.tobytes()

    def delete_mappings(self, keys: np.ndarray) -> None:
        for k in keys:
            self.mappings.pop(k.tobytes(), None)

    def set_tracked(self, pid: int, tracked: bool) -> None:
        (self.tracked.add if tracked else self.tracked.discard)(pid)
