"""The exporter thread around the delivery state machine, with in-memory transports."""

from __future__ import annotations

import json
import threading
import time

from profiler.export.api import ExportBatch, SendResult
from profiler.export.delivery import DeliveryConfig
from profiler.export.exporter import Exporter
from symbolizer.profile import Profile

FAST = DeliveryConfig(
    max_queued_batches=8,
    max_queued_samples=1000,
    attempt_timeout_s=0.2,
    min_backoff_s=0.01,
    max_backoff_s=0.05,
    failures_to_open=3,
    open_cooldown_s=0.2,
)


def batch(batch_id: int, samples: int = 5) -> ExportBatch:
    return ExportBatch(batch_id, Profile(), start_ns=0, duration_ns=0, samples=samples)


class ScriptedTransport:
    """Answers from a script of results (then OK), recording what it was sent."""

    name = "scripted"

    def __init__(self, script: list[SendResult] | None = None) -> None:
        self.script = list(script or [])
        self.sent: list[int] = []
        self.timeouts: list[float] = []
        self.closed = False
        self.lock = threading.Lock()

    def send(self, batch: ExportBatch, timeout_s: float) -> SendResult:
        with self.lock:
            self.sent.append(batch.batch_id)
            self.timeouts.append(timeout_s)
            return self.script.pop(0) if self.script else SendResult(ok=True)

    def close(self) -> None:
        self.closed = True


class BlackholeTransport:
    """Like a peer that never answers: every attempt takes its whole timeout."""

    name = "blackhole"

    def __init__(self) -> None:
        self.attempts = 0
        self.closed = False

    def send(self, batch: ExportBatch, timeout_s: float) -> SendResult:
        self.attempts += 1
        time.sleep(timeout_s)
        return SendResult(ok=False, retryable=True, error=f"timed out after {timeout_s:.2f}s")

    def close(self) -> None:
        self.closed = True


class RaisingTransport:
    name = "raising"

    def __init__(self) -> None:
        self.calls = 0

    def send(self, batch: ExportBatch, timeout_s: float) -> SendResult:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("encoder bug")
        return SendResult(ok=True)

    def close(self) -> None:
        pass


def wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    assert callable(predicate)
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.005)


def test_submitted_batches_are_delivered_and_stop_drains() -> None:
    transport = ScriptedTransport()
    exporter = Exporter("otlp", transport, FAST)
    exporter.start()
    for i in range(1, 6):
        exporter.submit(batch(i))
    assert exporter.stop(timeout=2.0)
    assert transport.sent == [1, 2, 3, 4, 5]
    assert transport.closed
    assert all(0 < t <= FAST.attempt_timeout_s for t in transport.timeouts)
    status = exporter.status()
    assert status["state"] == "stopped"
    assert status["delivered_batches"] == 5 and status["delivered_samples"] == 25
    assert sum(status["dropped_batches"].values()) == 0
    json.dumps(status)  # the agent page and /metrics take it as is


def test_retryable_failures_are_retried_after_a_pause() -> None:
    fail = SendResult(ok=False, retryable=True, error="503")
    transport = ScriptedTransport([fail, fail])
    with Exporter("otlp", transport, FAST) as exporter:
        exporter.submit(batch(1))
        wait_for(lambda: exporter.status()["delivered_batches"] == 1)
        status = exporter.status()
    assert transport.sent == [1, 1, 1]
    assert status["failures"] == 2 and status["consecutive_failures"] == 0
    assert status["state"] == "connected"
    assert status["last_error"] == "503"
    assert status["last_success_age_s"] is not None


def test_a_raising_transport_counts_as_a_failure_and_delivery_goes_on() -> None:
    transport = RaisingTransport()
    with Exporter("otlp", transport, FAST) as exporter:
        exporter.submit(batch(1))
        wait_for(lambda: exporter.status()["delivered_batches"] == 1)
        assert "encoder bug" in exporter.status()["last_error"]


def test_blackholed_endpoint_never_slows_submit_and_opens_the_circuit() -> None:
    transport = BlackholeTransport()
    exporter = Exporter("otlp", transport, FAST)
    exporter.start()
    costs = []
    end = time.monotonic() + 1.5
    i = 0
    while time.monotonic() < end and i < 3000:  # bounded in count and time
        i += 1
        t0 = time.perf_counter()
        exporter.submit(batch(i))
        costs.append(time.perf_counter() - t0)
        time.sleep(0.001)
    status = exporter.status()
    costs.sort()
    assert costs[len(costs) // 2] <= 0.001
    # Outliers are the scheduler on a busy machine (test_faults measures blocked
    # time apart from that); blocking on the transport would cost an attempt, 200 ms.
    assert costs[-1] < 0.05, f"slowest submit {costs[-1] * 1e3:.2f} ms"
    assert status["circuit_opens"] >= 1
    assert status["peak_held_batches"] <= FAST.max_queued_batches
    assert status["dropped_batches"]["queue_full"] > 0
    # A probe every cool-down, not a send per batch.
    assert transport.attempts < 20
    t0 = time.monotonic()
    assert exporter.stop(timeout=0.1)
    assert time.monotonic() - t0 < 0.1 + FAST.attempt_timeout_s + 0.5
    status = exporter.status()
    assert status["state"] == "stopped"
    accounted = status["delivered_batches"] + sum(status["dropped_batches"].values())
    assert accounted == status["offered_batches"] == i


def test_stop_without_start_drops_what_waits_and_counts_it() -> None:
    transport = ScriptedTransport()
    exporter = Exporter("otlp", transport, FAST)
    exporter.submit(batch(1, samples=3))
    assert exporter.stop(timeout=1.0)
    status = exporter.status()
    assert status["state"] == "stopped"
    assert status["dropped_batches"]["shutdown"] == 1
    assert status["dropped_samples"]["shutdown"] == 3
    assert transport.sent == []
    exporter.submit(batch(2))  # after stop: counted, not queued
    assert exporter.status()["dropped_batches"]["shutdown"] == 2
