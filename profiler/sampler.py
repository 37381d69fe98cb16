"""Windows of samples from the BPF side, as plain RawSample rows.

The sampler owns the double-buffer protocol: flip `config.active`, let
programs in flight finish, drain the idle half's counts and the stacks they
reference. Ring-buffer events go to the handler it is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from profiler.bpf import abi
from profiler.bpf.loader import SamplerBackend
from profiler.procfs import MapEntry
from symbolizer.aggregate import RawSample

log = logging.getLogger("kiln.sampler")

# Long enough for a BPF program that read the old `active` to finish
# (they run to completion in microseconds with preemption disabled).
SETTLE_S = 0.002


@dataclass
class SamplerOptions:
    frequency_hz: int = 19
    pids: tuple[int, ...] = ()
    comms: tuple[str, ...] = ()
    kernel_stacks: bool = True
    include_idle: bool = False

    @property
    def flags(self) -> abi.Flag:
        f = abi.Flag(0)
        if self.pids:
            f |= abi.Flag.FILTER_PIDS
        if self.comms:
            f |= abi.Flag.FILTER_COMMS
        if self.kernel_stacks:
            f |= abi.Flag.KERNEL_STACKS
        if self.include_idle:
            f |= abi.Flag.INCLUDE_IDLE
        return f


@dataclass
class Window:
    start_ns: int  # monotonic
    end_ns: int
    samples: list[RawSample]
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(s.count for s in self.samples)


EventFn = Callable[[abi.Event], object]
MapsFn = Callable[[int], Iterable[MapEntry] | None]


class Sampler:
    def __init__(
        self,
        backend: SamplerBackend,
        options: SamplerOptions,
        *,
        on_event: EventFn = lambda ev: None,
        maps_of: MapsFn = lambda pid: None,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.backend = backend
        self.options = options
        self._on_event = on_event
        self._maps_of = maps_of
        self._clock = clock
        self._sleep = sleep
        self._half = 0
        self._window_start = 0
        self._last_bpf_counters: dict[abi.Counter, int] = {}
        self.counters: dict[str, int] = {"events": 0, "event_errors": 0, "leaf_caller_rejected": 0}

    def start(self) -> None:
        self.backend.set_event_handler(self.handle_event)
        self.backend.set_pid_filter(self.options.pids)
        self.backend.set_comm_filter(self.options.comms)
        self.backend.set_config(self._half, self.options.flags)
        self.backend.attach(self.options.frequency_hz)
        self._window_start = self._clock()

    def set_frequency(self, hz: int) -> None:
        self.options.frequency_hz = hz
        self.backend.attach(hz)

    def set_filters(self, pids: tuple[int, ...], comms: tuple[str, ...], kernel: bool) -> None:
        """Change what is sampled, live: maps first, then the flags that enable them."""
        self.options.pids, self.options.comms, self.options.kernel_stacks = pids, comms, kernel
        self.backend.set_pid_filter(pids)
        self.backend.set_comm_filter(comms)
        self.backend.set_config(self._half, self.options.flags)

    def stop(self) -> None:
        self.backend.detach()

    def handle_event(self, ev: abi.Event) -> None:
        """Ring-buffer callback: hand the event on, never raise."""
        try:
            self.counters["events"] += 1
            self._on_event(ev)
        except Exception:  # a callback must never take the agent down
            self.counters["event_errors"] += 1
            log.exception("ring buffer event handling failed")

    def poll(self, timeout_ms: int) -> None:
        self.backend.poll_events(timeout_ms)

    def close_window(self) -> Window:
        """Flip halves and return everything the old half collected."""
        old = self._half
        self._half ^= 1
        self.backend.set_config(self._half, self.options.flags)
        self._sleep(SETTLE_S)
        end = self._clock()
        keys, values = self.backend.drain_counts(old)
        stacks = self.backend.drain_stacks(old)
        missing: tuple[tuple[int, ...], bool] = ((), False)

        samples: list[RawSample] = []
        exec_maps: dict[int, list[MapEntry]] = {}
        for k, v in zip(keys, values, strict=True):
            pid = int(k["pid"])
            if pid == 0 and not self.options.include_idle:
                continue
            user, user_cut = stacks.get(int(k["ustack"]), missing) if k["ustack"] else missing
            kernel, _ = stacks.get(int(k["kstack"]), missing) if k["kstack"] else missing
            python, py_cut = stacks.get(int(k["pystack"]), missing) if k["pystack"] else missing
            caller = int(k["leaf_caller"])
            if caller and user and (len(user) < 2 or user[1] != caller):
                if self._is_code(pid, caller, exec_maps):
                    user = (user[0], caller, *user[1:])
                else:
                    self.counters["leaf_caller_rejected"] += 1
            samples.append(
                RawSample(
                    pid=pid,
                    tid=int(k["tid"]),
                    cpu=int(k["cpu"]),
                    comm=bytes(k["comm"]).split(b"\0", 1)[0].decode("utf-8", "replace"),
                    cgroup_id=int(k["cgroup_id"]),
                    kernel=kernel,
                    user=user,
                    count=int(v["count"]),
                    first_ns=int(v["first_ns"]),
                    last_ns=int(v["last_ns"]),
                    truncated=user_cut,
                    python=python,
                    python_truncated=py_cut,
                )
            )
        window = Window(self._window_start, end, samples, self._counter_delta())
        self._window_start = end
        return window

    def _is_code(self, pid: int, addr: int, cache: dict[int, list[MapEntry]]) -> bool:
        """A recovered caller must point into executable memory of its process."""
        maps = cache.get(pid)
        if maps is None:
            maps = cache[pid] = [m for m in (self._maps_of(pid) or ()) if m.is_exec]
        return any(m.start <= addr < m.end for m in maps)

    def _counter_delta(self) -> dict[str, int]:
        now = self.backend.counters()
        delta = {c.name.lower(): now[c] - self._last_bpf_counters.get(c, 0) for c in now}
        self._last_bpf_counters = now
        return delta
