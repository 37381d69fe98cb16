"""Delivery overhead: the state machine's cost per batch, and what `submit`
costs the sampling loop while the endpoint answers at once or never.

`measure()` times (1) offer + next_action + on_result for batches that
succeed, in µs per batch, best of `repeat` passes, and (2) `Exporter.submit`
latency percentiles over `seconds` of submits every millisecond, once with a
transport that accepts at once and once with one that hangs for its whole
attempt timeout (a blackholed endpoint). Submits should cost the same in
both: the worker never holds the lock across a send.

    python tools/bench_delivery.py [--seconds S] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TypedDict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from profiler.export.api import ExportBatch, SendResult  # noqa: E402
from profiler.export.delivery import Delivery, DeliveryConfig, Send  # noqa: E402
from profiler.export.exporter import Exporter  # noqa: E402
from symbolizer.profile import Profile  # noqa: E402


class SubmitLatency(TypedDict):
    submits: int
    p50_us: float
    p99_us: float
    max_us: float


class Result(TypedDict):
    state_machine_us_per_batch: float
    submit_answering: SubmitLatency
    submit_blackholed: SubmitLatency
    blackholed_attempts: int


class _Instant:
    name = "instant"

    def send(self, batch: ExportBatch, timeout_s: float) -> SendResult:
        return SendResult(ok=True)

    def close(self) -> None:
        pass


class _Blackhole:
    name = "blackhole"

    def __init__(self) -> None:
        self.attempts = 0

    def send(self, batch: ExportBatch, timeout_s: float) -> SendResult:
        self.attempts += 1
        time.sleep(timeout_s)
        return SendResult(ok=False, retryable=True, error="timed out")

    def close(self) -> None:
        pass


def _batch(batch_id: int, profile: Profile) -> ExportBatch:
    return ExportBatch(batch_id, profile, start_ns=0, duration_ns=0, samples=100)


def state_machine_us(batches: int = 20_000, repeat: int = 5) -> float:
    profile = Profile()
    ok = SendResult(ok=True)
    best = float("inf")
    for _ in range(repeat):
        d = Delivery(DeliveryConfig(max_queued_batches=batches + 1))
        work = [_batch(i, profile) for i in range(batches)]
        t0 = time.perf_counter()
        for i, b in enumerate(work):
            now = float(i)
            d.offer(b, now)
            action = d.next_action(now)
            assert isinstance(action, Send)
            d.on_result(b.batch_id, ok, now)
        best = min(best, time.perf_counter() - t0)
    return best / batches * 1e6


def submit_latency(exporter: Exporter, seconds: float) -> SubmitLatency:
    profile = Profile()
    costs = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end and i < 100_000:
        i += 1
        b = _batch(i, profile)
        t0 = time.perf_counter()
        exporter.submit(b)
        costs.append(time.perf_counter() - t0)
        time.sleep(0.001)
    costs.sort()
    return {
        "submits": len(costs),
        "p50_us": round(costs[len(costs) // 2] * 1e6, 1),
        "p99_us": round(costs[len(costs) * 99 // 100] * 1e6, 1),
        "max_us": round(costs[-1] * 1e6, 1),
    }


def measure(seconds: float = 1.5, repeat: int = 5) -> Result:
    cfg = DeliveryConfig(
        max_queued_batches=16,
        attempt_timeout_s=0.2,
        min_backoff_s=0.01,
        max_backoff_s=0.1,
        failures_to_open=3,
        open_cooldown_s=0.5,
    )
    with Exporter("bench-instant", _Instant(), cfg) as answering:
        fast = submit_latency(answering, seconds)
    blackhole = _Blackhole()
    with Exporter("bench-blackhole", blackhole, cfg) as stuck:
        slow = submit_latency(stuck, seconds)
        stuck.stop(timeout=0.0)
    return {
        "state_machine_us_per_batch": round(state_machine_us(repeat=repeat), 2),
        "submit_answering": fast,
        "submit_blackholed": slow,
        "blackholed_attempts": blackhole.attempts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.seconds, args.repeat), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
