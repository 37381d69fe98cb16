"""Delivery through real network faults: the OTLP/HTTP transport and the
exporter thread against a receiver in its own network namespace, behind a
link that loses and delays frames, goes down, or swallows everything.

Needs root (namespaces, veth pairs, packet sockets); see tests/export/netns.py
for the topology. Traffic goes only to 192.0.2.2, assigned in a namespace the
test created; every loop is bounded in count and time.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from profiler.export.api import ExportBatch, SendResult, Transport
from profiler.export.delivery import DeliveryConfig
from profiler.export.exporter import Exporter
from profiler.export.transports import make_transport
from symbolizer.profile import Frame, FrameKind, Profile
from tests.conftest import skip_outside_ci
from tests.export.netns import BATCH_ID_ATTR, Lab, unavailable_reason

SAMPLES_PER_BATCH = 6
_ids = itertools.count(1)  # unique across the module, since the receiver is shared


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = unavailable_reason()
    if reason is not None:
        skip_outside_ci(reason)
    with Lab(seed=20240601) as built:
        yield built


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    """The shared lab with a clean link before and after each test."""
    lab.impair(0.0, 0.0)
    lab.link(True)
    try:
        yield lab
    finally:
        lab.impair(0.0, 0.0)
        lab.link(True)


def window(batch_id: int) -> ExportBatch:
    """A small window whose resource names its id, so the receiver can report it."""
    p = Profile(start_ns=1_750_000_000_000_000_000, duration_ns=10**9, period_ns=10**7)
    p.add([Frame("handle", 0, FrameKind.PYTHON, filename="/srv/app.py", line=3)], 4, [("pid", "7")])
    p.add([Frame("parse", 0, FrameKind.PYTHON, filename="/srv/app.py", line=9)], 2, [("pid", "7")])
    resource = {"service.name": "kiln-fault-test", BATCH_ID_ATTR: str(batch_id)}
    return ExportBatch(batch_id, p, p.start_ns, p.duration_ns, SAMPLES_PER_BATCH, resource)


class Recording:
    """The real transport, with each attempt's outcome kept per batch id."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.name = inner.name
        self._lock = threading.Lock()
        self.outcomes: dict[int, list[SendResult]] = defaultdict(list)

    def send(self, batch: ExportBatch, timeout_s: float) -> SendResult:
        result = self.inner.send(batch, timeout_s)
        with self._lock:
            self.outcomes[batch.batch_id].append(result)
        return result

    def close(self) -> None:
        self.inner.close()

    def delivered(self) -> set[int]:
        with self._lock:
            return {i for i, rs in self.outcomes.items() if rs and rs[-1].ok}

    def history(self, batch_ids: set[int]) -> dict[int, list[str]]:
        """Each attempt's outcome for these batches, for failure messages."""
        with self._lock:
            return {
                i: ["ok" if r.ok else r.error or "failed" for r in self.outcomes[i]]
                for i in sorted(batch_ids)
            }

    def failed_attempts(self, batch_id: int) -> int:
        with self._lock:
            return sum(not r.ok for r in self.outcomes[batch_id])


@dataclass(frozen=True)
class Cost:
    wall_s: float
    blocked_s: float  # off the CPU for a reason other than waiting for one


class ThreadClock:
    """Splits a submit's wall time into running, waiting for a CPU, and blocked.

    Running is the thread's CPU clock; waiting for a CPU is the scheduler's
    run-queue delay from /proc/thread-self/schedstat, which the kernel adds
    up each time the thread gets a CPU back. What is left was blocked.
    """

    def __init__(self) -> None:
        # Opened by the thread it measures: thread-self resolves at open time.
        self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)

    def _run_delay_ns(self) -> int:
        return int(os.pread(self._fd, 128, 0).split()[1])

    def submit(self, exporter: Exporter, batch: ExportBatch) -> Cost:
        delay0, cpu0, wall0 = self._run_delay_ns(), time.thread_time_ns(), time.perf_counter_ns()
        exporter.submit(batch)
        wall1, cpu1, delay1 = time.perf_counter_ns(), time.thread_time_ns(), self._run_delay_ns()
        wall = wall1 - wall0
        return Cost(wall / 1e9, max(wall - (cpu1 - cpu0) - (delay1 - delay0), 0) / 1e9)

    def close(self) -> None:
        os.close(self._fd)


def exporter_for(net: Lab, cfg: DeliveryConfig) -> tuple[Exporter, Recording]:
    inner = make_transport(
        "otlp_http", endpoint=net.endpoint, timeout_s=cfg.attempt_timeout_s, gzip=True
    )
    recording = Recording(inner)
    return Exporter("faults", recording, cfg), recording


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def check_accounting(
    offered: list[int], status: dict[str, Any], recording: Recording, net: Lab
) -> set[int]:
    """Every batch delivered, held, or counted as dropped; returns the delivered ids."""
    delivered = recording.delivered()
    # The receiver reports over a pipe: give its last lines a moment to land.
    wait_until(lambda: delivered <= set(net.received()), 2.0)
    offered_set = set(offered)
    mine = Counter({i: n for i, n in net.received().items() if i in offered_set})
    assert status["offered_batches"] == len(offered)
    assert status["delivered_batches"] == len(delivered)
    held = status["queued_batches"] + int(status["in_flight"])
    assert len(delivered) + sum(status["dropped_batches"].values()) + held == len(offered)
    # What the exporter counts as delivered did arrive...
    assert delivered <= set(mine), f"delivered but never received: {delivered - set(mine)}"
    # ...and a batch arrives twice only when an answer was lost and it was sent again.
    for batch_id, times in mine.items():
        assert times <= 1 + recording.failed_attempts(batch_id), f"batch {batch_id} x{times}"
    return delivered


def test_loss_and_delay_every_batch_arrives_or_is_counted(net: Lab) -> None:
    # 30% of frames lost each way and 100 ms added: handshakes lose SYNs to
    # 1 s and 3 s retransmission timers and some attempts time out, so an
    # attempt takes 0.4 s to a whole timeout. Delivery gets a fixed budget;
    # what it has not delivered by then is counted at stop, never lost.
    cfg = DeliveryConfig(
        max_queued_batches=64,
        attempt_timeout_s=4.0,
        min_backoff_s=0.05,
        max_backoff_s=0.5,
        failures_to_open=5,
        open_cooldown_s=1.0,
    )
    offered = [next(_ids) for _ in range(6)]
    budget_s, drain_s = 10.0, 1.0

    def scenario() -> tuple[dict[str, Any], Recording, float]:
        net.impair(loss=0.30, delay_s=0.100)
        exporter, recording = exporter_for(net, cfg)
        t0 = time.monotonic()
        exporter.start()
        for batch_id in offered:
            exporter.submit(window(batch_id))
            time.sleep(0.1)
        wait_until(lambda: exporter.status()["delivered_batches"] == len(offered), budget_s)
        exporter.stop(timeout=drain_s)
        return exporter.status(), recording, time.monotonic() - t0

    status, recording, elapsed = net.in_client_ns(scenario, timeout_s=40.0)
    delivered = check_accounting(offered, status, recording, net)
    assert status["state"] == "stopped"
    assert delivered, "nothing got through a 30% lossy link"
    dropped = status["dropped_batches"]
    assert dropped["shutdown"] == len(offered) - len(delivered)
    assert dropped["queue_full"] == dropped["non_retryable"] == 0
    # Bounded: the budget, the drain, and at most one attempt still in flight.
    assert elapsed <= budget_s + drain_s + cfg.attempt_timeout_s + 2.0


def test_outage_shorter_than_the_queue_loses_nothing(net: Lab) -> None:
    # Even if delivery were slow to resume, all 16 windows fit in the queue of 24.
    cfg = DeliveryConfig(
        max_queued_batches=24,
        attempt_timeout_s=0.5,
        min_backoff_s=0.05,
        max_backoff_s=0.3,
        failures_to_open=3,
        open_cooldown_s=0.5,
    )
    offered = [next(_ids) for _ in range(16)]

    def scenario() -> tuple[dict[str, Any], Recording]:
        exporter, recording = exporter_for(net, cfg)
        with exporter:
            for n, batch_id in enumerate(offered):  # a window every 0.2 s, 3.2 s in all
                if n == 3:
                    net.link(False)  # down for 2 s: ten windows
                if n == 13:
                    net.link(True)
                exporter.submit(window(batch_id))
                time.sleep(0.2)
            wait_until(lambda: exporter.status()["delivered_batches"] == len(offered), 15.0)
        return exporter.status(), recording

    status, recording = net.in_client_ns(scenario, timeout_s=30.0)
    delivered = check_accounting(offered, status, recording, net)
    missing = set(offered) - delivered
    assert not missing, (status, recording.history(missing))
    assert sum(status["dropped_batches"].values()) == 0
    assert status["failures"] > 0  # the outage was felt...
    assert status["circuit_opens"] >= 1  # ...long enough to open the circuit
    assert status["peak_held_batches"] <= cfg.max_queued_batches


def test_outage_longer_than_the_queue_drops_the_oldest_and_counts_them(net: Lab) -> None:
    cfg = DeliveryConfig(
        max_queued_batches=5,
        max_queued_samples=5 * SAMPLES_PER_BATCH,
        attempt_timeout_s=0.5,
        min_backoff_s=0.05,
        max_backoff_s=0.3,
        failures_to_open=3,
        open_cooldown_s=0.5,
    )
    offered = [next(_ids) for _ in range(30)]

    def scenario() -> tuple[dict[str, Any], Recording]:
        exporter, recording = exporter_for(net, cfg)
        with exporter:
            for n, batch_id in enumerate(offered):  # a window every 0.1 s, 3 s in all
                if n == 3:
                    net.link(False)  # down for 2.5 s: 25 windows into a queue of 5
                if n == 28:
                    net.link(True)
                exporter.submit(window(batch_id))
                time.sleep(0.1)

            def settled() -> bool:
                s = exporter.status()
                return s["queued_batches"] == 0 and not s["in_flight"]

            wait_until(settled, 15.0)
        return exporter.status(), recording

    status, recording = net.in_client_ns(scenario, timeout_s=30.0)
    delivered = check_accounting(offered, status, recording, net)
    dropped = set(offered) - delivered
    assert status["dropped_batches"]["queue_full"] == len(dropped) >= 15
    assert status["dropped_samples"]["queue_full"] == len(dropped) * SAMPLES_PER_BATCH
    # Memory stays bounded: never more held than the limits allow.
    assert status["peak_held_batches"] <= cfg.max_queued_batches
    assert status["peak_held_samples"] <= cfg.max_queued_samples
    # The oldest went; the newest made it once the link was back.
    assert set(offered[-(cfg.max_queued_batches - 1) :]) <= delivered
    assert max(dropped) < max(delivered)


def test_blackholed_endpoint_never_slows_submit(net: Lab) -> None:
    cfg = DeliveryConfig(
        max_queued_batches=8,
        attempt_timeout_s=0.5,
        min_backoff_s=0.05,
        max_backoff_s=0.2,
        failures_to_open=2,
        open_cooldown_s=1.0,
    )
    offered = [next(_ids) for _ in range(500)]

    def scenario() -> tuple[list[Cost], dict[str, Any], dict[str, Any], Recording, float]:
        net.blackhole()
        exporter, recording = exporter_for(net, cfg)
        exporter.start()
        costs = []
        clock = ThreadClock()
        end = time.monotonic() + 2.5
        for batch_id in offered:  # every 5 ms, until 500 or 2.5 s
            if time.monotonic() >= end:
                break
            b = window(batch_id)
            costs.append(clock.submit(exporter, b))
            time.sleep(0.005)
        clock.close()
        during = exporter.status()
        t0 = time.monotonic()
        exporter.stop(timeout=0.2)
        stop_s = time.monotonic() - t0
        return costs, during, exporter.status(), recording, stop_s

    costs, during, status, recording, stop_s = net.in_client_ns(scenario, timeout_s=20.0)
    assert len(costs) >= 100
    # Time blocked (on a lock, the GIL, the network) is what a stall would be
    # made of; time spent waiting for a CPU on a busy machine is not.
    blocked = max(c.blocked_s for c in costs)
    assert blocked <= 0.001, f"a submit was blocked for {blocked * 1e3:.2f} ms"
    walls = sorted(c.wall_s for c in costs)
    assert walls[len(walls) // 2] <= 0.001, f"median submit {walls[len(walls) // 2] * 1e3:.2f} ms"
    assert during["circuit_opens"] >= 1
    assert during["state"] in ("circuit_open", "half_open")
    assert during["consecutive_failures"] >= cfg.failures_to_open
    assert "timed out" in during["last_error"]
    # A probe per cool-down, not an attempt per window.
    assert during["attempts"] <= 8
    assert during["peak_held_batches"] <= cfg.max_queued_batches
    # Stopping waits for the drain deadline plus at most the probe in flight.
    assert stop_s <= 0.2 + cfg.attempt_timeout_s + 1.0
    assert status["state"] == "stopped"
    assert status["delivered_batches"] == 0
    dropped = status["dropped_batches"]
    assert dropped["queue_full"] + dropped["shutdown"] == status["offered_batches"] == len(costs)
    assert not recording.delivered()
