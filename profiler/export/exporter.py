"""One exporter: a delivery state machine driven by its own daemon thread.

The sampling loop calls `submit`, which only queues under a lock the worker
never holds across network I/O, so a slow or blackholed endpoint cannot
stall sampling. The worker asks the state machine what to do, makes the
transport attempt outside the lock, and reports the result back.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from profiler.export.api import ExportBatch, SendResult, Transport
from profiler.export.delivery import (
    Delivery,
    DeliveryConfig,
    Event,
    Idle,
    Send,
    State,
    Wait,
)

log = logging.getLogger("kiln.export")

# Slack for the join in `stop` beyond the drain deadline and one attempt timeout.
_JOIN_SLACK_S = 1.0


class Exporter:
    """Delivers one backend's batches; owns its transport (closed by `stop`).

    Call `start` (or use it as a context manager), then `submit` from the
    sampling loop, `status` from anywhere, and `stop` once. `clock` must
    count seconds: the worker sleeps on it with real timeouts.
    """

    def __init__(
        self,
        name: str,
        transport: Transport,
        delivery_config: DeliveryConfig,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.transport = transport
        self._clock = clock
        self._cond = threading.Condition()
        self._delivery = Delivery(delivery_config, rng=rng, on_transition=self._log_transition)
        self._thread = threading.Thread(target=self._run, name=f"kiln-export-{name}", daemon=True)
        self._started = False
        self._closed = False

    def start(self) -> None:
        with self._cond:
            if self._started:
                return
            self._started = True
        self._thread.start()

    def __enter__(self) -> Exporter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def submit(self, batch: ExportBatch) -> None:
        """Queue a batch for delivery; never blocks on the network."""
        with self._cond:
            self._delivery.offer(batch, self._clock())
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> bool:
        """Drain for up to `timeout` seconds, then stop; True when the worker ended.

        An attempt already in flight at the deadline is waited for (its
        transport timeout bounds it); what is still queued is dropped as
        `shutdown` and counted.
        """
        with self._cond:
            now = self._clock()
            started = self._started
            # Without a worker nothing would drain: drop what waits at once.
            self._delivery.shutdown(now, now + timeout if started else now)
            self._cond.notify()
        ended = True
        if started:
            attempt_s = self._delivery.config.attempt_timeout_s
            self._thread.join(timeout + attempt_s + _JOIN_SLACK_S)
            ended = not self._thread.is_alive()
            if not ended:
                log.warning("exporter %s: transport did not return in time at stop", self.name)
        if ended and not self._closed:
            self._closed = True
            self.transport.close()
        return ended

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot for the agent page and /metrics."""
        with self._cond:
            now = self._clock()
            d = self._delivery
            s = d.stats
            wait_s = d.next_attempt_at - now if d.queued and d.next_attempt_at > now else 0.0
            return {
                "name": self.name,
                "transport": self.transport.name,
                "state": d.state.value,
                "queued_batches": len(d.queued),
                "queued_samples": d.queued_samples,
                "in_flight": d.in_flight is not None,
                "offered_batches": s.offered_batches,
                "offered_samples": s.offered_samples,
                "delivered_batches": s.delivered_batches,
                "delivered_samples": s.delivered_samples,
                "dropped_batches": {r.value: n for r, n in s.dropped_batches.items()},
                "dropped_samples": {r.value: n for r, n in s.dropped_samples.items()},
                "attempts": s.attempts,
                "failures": s.failures,
                "consecutive_failures": d.consecutive_failures,
                "circuit_opens": s.circuit_opens,
                "last_error": s.last_error,
                "last_success_age_s": (
                    None if s.last_success_at is None else now - s.last_success_at
                ),
                "next_attempt_in_s": wait_s,
                "peak_held_batches": s.peak_held_batches,
                "peak_held_samples": s.peak_held_samples,
            }

    # -- worker ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                now = self._clock()
                action = self._delivery.next_action(now)
                if self._delivery.state is State.STOPPED:
                    return
                if isinstance(action, Wait):
                    self._cond.wait(max(action.until - now, 0.0))
                    continue
                if isinstance(action, Idle):
                    self._cond.wait()
                    continue
            result = self._attempt(action)
            with self._cond:
                self._delivery.on_result(action.batch.batch_id, result, self._clock())

    def _attempt(self, send: Send) -> SendResult:
        try:
            return self.transport.send(send.batch, send.timeout_s)
        except Exception as e:  # a transport bug must not kill delivery for good
            log.exception("exporter %s: transport %s raised", self.name, self.transport.name)
            return SendResult(ok=False, retryable=True, error=f"transport raised {e!r}")

    def _log_transition(self, before: State, event: Event, after: State, now: float) -> None:
        if before is after:
            return
        if after is State.CIRCUIT_OPEN:
            # The first opening matters; each failed probe of a long outage does not.
            level = logging.DEBUG if before is State.HALF_OPEN else logging.WARNING
        elif after is State.HALF_OPEN:
            level = logging.DEBUG
        else:
            level = logging.INFO
        err = self._delivery.stats.last_error
        log.log(
            level,
            "exporter %s: %s -> %s on %s (%s)",
            self.name,
            before.value,
            after.value,
            event.value,
            err or "no error",
        )
