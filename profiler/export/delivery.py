"""Delivery: the state machine between an exporter's batches and its transport.

Pure logic: no threads, no clock of its own, no I/O. The caller passes `now`
(monotonic seconds) into every method, asks `next_action(now)` what to do,
performs the `Send` itself and reports the outcome with `on_result`.
`profiler.export.exporter` drives it from a thread; the tests drive it with a
fake clock.

States
------
CONNECTED     the last attempt succeeded (or none failed yet): send the
              oldest queued batch at once.
BACKING_OFF   the last attempt failed and may be retried: wait out a
              jittered exponential backoff (or the server's retry hint), then
              retry the oldest batch.
CIRCUIT_OPEN  `failures_to_open` attempts in a row failed: send nothing until
              the cool-down ends.
HALF_OPEN     the cool-down ended: exactly one probe is in flight; its
              outcome closes or re-opens the circuit. (A state of its own,
              not a flag, so "one probe and nothing else" shows in status.)
DRAINING      shutdown was asked: keep sending with the same pacing until
              the queue is empty or the deadline leaves no room for another
              attempt.
STOPPED       final. Whatever was still queued was dropped as `shutdown`.

Transitions
-----------
Events: `ok` (accepted, fully or partly), `refused` (non-retryable: the
batch is dropped), `failed` (retryable, fewer than `failures_to_open` in a
row), `tripped` (retryable, `failures_to_open` or more in a row),
`cooldown_elapsed` (the probe is sent), `shutdown`, `drained` (queue empty,
nothing in flight), `deadline` (no attempt fits before the drain deadline).

    state         event             next state
    ------------  ----------------  ------------
    CONNECTED     ok                CONNECTED
    CONNECTED     refused           CONNECTED
    CONNECTED     failed            BACKING_OFF
    CONNECTED     tripped           CIRCUIT_OPEN
    CONNECTED     shutdown          DRAINING
    BACKING_OFF   ok                CONNECTED
    BACKING_OFF   refused           CONNECTED
    BACKING_OFF   failed            BACKING_OFF
    BACKING_OFF   tripped           CIRCUIT_OPEN
    BACKING_OFF   shutdown          DRAINING
    CIRCUIT_OPEN  cooldown_elapsed  HALF_OPEN
    CIRCUIT_OPEN  shutdown          DRAINING
    HALF_OPEN     ok                CONNECTED
    HALF_OPEN     refused           CONNECTED
    HALF_OPEN     tripped           CIRCUIT_OPEN
    HALF_OPEN     shutdown          DRAINING
    DRAINING      ok                DRAINING
    DRAINING      refused           DRAINING
    DRAINING      failed            DRAINING
    DRAINING      tripped           DRAINING
    DRAINING      drained           STOPPED
    DRAINING      deadline          STOPPED

Any other (state, event) pair is a bug and raises `InvalidTransition`.
A failed probe re-opens the circuit for another cool-down (or for the
server's hint, when that is longer). A refusal counts as an answer from the
server, so it closes the circuit and resets the failure count; only
retryable failures open it. While DRAINING the pacing still applies (a send
waits for the backoff or the cool-down), so an open circuit is not bypassed
by a shutdown.

Guarantees (checked by a stateful property test)
------------------------------------------------
- Every batch ever offered is delivered, queued, in flight, or counted in
  `dropped_batches` under one reason; samples likewise, where a partial
  success counts its refused samples as `rejected_by_server`.
- At most one batch is in flight; nothing is sent before `next_attempt_at`,
  so nothing while the circuit is open except the one probe after the
  cool-down.
- A computed backoff lies in [min_backoff_s, max_backoff_s]; a server hint
  is used instead, clamped to [min_backoff_s, max_retry_after_s].
- The batches and samples held (queued plus in flight) never exceed the
  configured maxima; when a new batch does not fit, the oldest queued
  batches are dropped as `queue_full`.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from profiler.export.api import ExportBatch, SendResult


class State(enum.Enum):
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    CIRCUIT_OPEN = "circuit_open"
    HALF_OPEN = "half_open"
    DRAINING = "draining"
    STOPPED = "stopped"


class Event(enum.Enum):
    OK = "ok"
    REFUSED = "refused"
    FAILED = "failed"
    TRIPPED = "tripped"
    COOLDOWN_ELAPSED = "cooldown_elapsed"
    SHUTDOWN = "shutdown"
    DRAINED = "drained"
    DEADLINE = "deadline"


class DropReason(enum.Enum):
    QUEUE_FULL = "queue_full"  # evicted (oldest first) to make room, or too big to ever fit
    REJECTED_BY_SERVER = "rejected_by_server"  # samples refused inside a partial success
    NON_RETRYABLE = "non_retryable"  # the whole batch refused for good
    SHUTDOWN = "shutdown"  # still queued when draining ended, or offered after shutdown


_S, _E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    (_S.CONNECTED, _E.OK): _S.CONNECTED,
    (_S.CONNECTED, _E.REFUSED): _S.CONNECTED,
    (_S.CONNECTED, _E.FAILED): _S.BACKING_OFF,
    (_S.CONNECTED, _E.TRIPPED): _S.CIRCUIT_OPEN,
    (_S.CONNECTED, _E.SHUTDOWN): _S.DRAINING,
    (_S.BACKING_OFF, _E.OK): _S.CONNECTED,
    (_S.BACKING_OFF, _E.REFUSED): _S.CONNECTED,
    (_S.BACKING_OFF, _E.FAILED): _S.BACKING_OFF,
    (_S.BACKING_OFF, _E.TRIPPED): _S.CIRCUIT_OPEN,
    (_S.BACKING_OFF, _E.SHUTDOWN): _S.DRAINING,
    (_S.CIRCUIT_OPEN, _E.COOLDOWN_ELAPSED): _S.HALF_OPEN,
    (_S.CIRCUIT_OPEN, _E.SHUTDOWN): _S.DRAINING,
    (_S.HALF_OPEN, _E.OK): _S.CONNECTED,
    (_S.HALF_OPEN, _E.REFUSED): _S.CONNECTED,
    (_S.HALF_OPEN, _E.TRIPPED): _S.CIRCUIT_OPEN,
    (_S.HALF_OPEN, _E.SHUTDOWN): _S.DRAINING,
    (_S.DRAINING, _E.OK): _S.DRAINING,
    (_S.DRAINING, _E.REFUSED): _S.DRAINING,
    (_S.DRAINING, _E.FAILED): _S.DRAINING,
    (_S.DRAINING, _E.TRIPPED): _S.DRAINING,
    (_S.DRAINING, _E.DRAINED): _S.STOPPED,
    (_S.DRAINING, _E.DEADLINE): _S.STOPPED,
}
del _S, _E


class InvalidTransition(RuntimeError):
    """An event the transition table has no row for: a bug in the caller or here."""


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    max_queued_batches: int = 64  # held: queued plus the one in flight
    max_queued_samples: int = 10_000_000
    attempt_timeout_s: float = 10.0
    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    backoff_multiplier: float = 2.0
    max_retry_after_s: float = 300.0  # a server's hint beyond this is cut to it
    failures_to_open: int = 5  # retryable failures in a row that open the circuit
    open_cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if self.max_queued_batches < 1:
            problems.append("max_queued_batches must be at least 1")
        if self.max_queued_samples < 1:
            problems.append("max_queued_samples must be at least 1")
        if not self.attempt_timeout_s > 0:
            problems.append("attempt_timeout_s must be positive")
        if not 0 < self.min_backoff_s <= self.max_backoff_s:
            problems.append("need 0 < min_backoff_s <= max_backoff_s")
        if not self.backoff_multiplier >= 1:
            problems.append("backoff_multiplier must be at least 1")
        if not self.max_retry_after_s >= self.min_backoff_s:
            problems.append("max_retry_after_s must be at least min_backoff_s")
        if self.failures_to_open < 1:
            problems.append("failures_to_open must be at least 1")
        if not self.open_cooldown_s > 0:
            problems.append("open_cooldown_s must be positive")
        if problems:
            raise ValueError("invalid delivery config: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class Send:
    batch: ExportBatch
    timeout_s: float  # for this attempt: the configured one, or less near the drain deadline


@dataclass(frozen=True, slots=True)
class Wait:
    until: float  # ask again at this time (or sooner, when something is offered)


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing to do until a batch is offered, a result arrives or shutdown is asked."""


Action = Send | Wait | Idle
IDLE = Idle()

TransitionHook = Callable[[State, Event, State, float], None]


def _zero_per_reason() -> dict[DropReason, int]:
    return dict.fromkeys(DropReason, 0)


@dataclass(slots=True)
class DeliveryStats:
    offered_batches: int = 0
    offered_samples: int = 0
    delivered_batches: int = 0  # partial successes included
    delivered_samples: int = 0  # minus the samples a partial success refused
    dropped_batches: dict[DropReason, int] = field(default_factory=_zero_per_reason)
    dropped_samples: dict[DropReason, int] = field(default_factory=_zero_per_reason)
    attempts: int = 0
    failures: int = 0  # retryable failures, all time
    circuit_opens: int = 0
    last_error: str = ""
    last_success_at: float | None = None
    last_failure_at: float | None = None
    peak_held_batches: int = 0
    peak_held_samples: int = 0


class Delivery:
    """One exporter's queue, retry pacing and circuit; see the module docstring."""

    def __init__(
        self,
        config: DeliveryConfig,
        rng: random.Random | None = None,
        on_transition: TransitionHook | None = None,
    ) -> None:
        self.config = config
        self.stats = DeliveryStats()
        self._rng = rng if rng is not None else random.Random()
        self._on_transition = on_transition
        self._state = State.CONNECTED
        self._queue: deque[ExportBatch] = deque()
        self._queued_samples = 0
        self._in_flight: ExportBatch | None = None
        self._consecutive_failures = 0
        self._next_attempt_at = -math.inf
        self._last_delay_s: float | None = None
        self._deadline: float | None = None

    # -- read-only views ---------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def queued(self) -> tuple[ExportBatch, ...]:
        """Waiting batches, oldest first (the one in flight is not among them)."""
        return tuple(self._queue)

    @property
    def queued_samples(self) -> int:
        return self._queued_samples

    @property
    def in_flight(self) -> ExportBatch | None:
        return self._in_flight

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    @property
    def next_attempt_at(self) -> float:
        """No send happens before this time (-inf when nothing holds sends back)."""
        return self._next_attempt_at

    @property
    def last_delay_s(self) -> float | None:
        """The pause chosen after the last retryable failure (backoff, hint or cool-down)."""
        return self._last_delay_s

    @property
    def deadline(self) -> float | None:
        return self._deadline

    @property
    def held_batches(self) -> int:
        return len(self._queue) + (self._in_flight is not None)

    @property
    def held_samples(self) -> int:
        return self._queued_samples + (self._in_flight.samples if self._in_flight else 0)

    # -- inputs --------------------------------------------------------------

    def offer(self, batch: ExportBatch, now: float) -> None:
        """Queue a batch; never blocks and never refuses: overflow drops the oldest."""
        self.stats.offered_batches += 1
        self.stats.offered_samples += batch.samples
        if self._state in (State.DRAINING, State.STOPPED):
            self._drop(batch, DropReason.SHUTDOWN)
            return
        if batch.samples > self.config.max_queued_samples:
            # It could never fit; evicting everything else for it would not help.
            self._drop(batch, DropReason.QUEUE_FULL)
            return
        self._queue.append(batch)
        self._queued_samples += batch.samples
        while self._over_limits():
            # The queue is never empty here: the batch in flight alone fits by itself.
            self._drop(self._pop_oldest(), DropReason.QUEUE_FULL)
        self.stats.peak_held_batches = max(self.stats.peak_held_batches, self.held_batches)
        self.stats.peak_held_samples = max(self.stats.peak_held_samples, self.held_samples)

    def next_action(self, now: float) -> Action:
        """What the driver should do now; a `Send` marks its batch as in flight."""
        if self._state is State.DRAINING:
            self._settle_draining(now)
        if self._state is State.STOPPED or self._in_flight is not None or not self._queue:
            return IDLE
        if now < self._next_attempt_at:
            return Wait(self._next_attempt_at)
        if self._state is State.CIRCUIT_OPEN:
            self._fire(Event.COOLDOWN_ELAPSED, now)
        batch = self._pop_oldest()
        self._in_flight = batch
        self.stats.attempts += 1
        timeout_s = self.config.attempt_timeout_s
        if self._deadline is not None:
            timeout_s = min(timeout_s, self._deadline - now)
        return Send(batch, timeout_s)

    def on_result(self, batch_id: int, result: SendResult, now: float) -> None:
        """Account for the outcome of the `Send` in flight."""
        batch = self._in_flight
        if batch is None or batch.batch_id != batch_id:
            in_flight = None if batch is None else batch.batch_id
            raise ValueError(f"result for batch {batch_id}, but in flight is {in_flight}")
        self._in_flight = None
        if result.ok:
            rejected = min(max(result.rejected, 0), batch.samples)
            self.stats.delivered_batches += 1
            self.stats.delivered_samples += batch.samples - rejected
            self.stats.dropped_samples[DropReason.REJECTED_BY_SERVER] += rejected
            self.stats.last_success_at = now
            if result.error:
                self.stats.last_error = result.error
            self._consecutive_failures = 0
            self._next_attempt_at = -math.inf
            self._fire(Event.OK, now)
        elif result.retryable:
            self._consecutive_failures += 1
            self.stats.failures += 1
            self.stats.last_error = result.error or "retryable failure"
            self.stats.last_failure_at = now
            # Back at the head: it is still the oldest, and the slot it held is still counted.
            self._queue.appendleft(batch)
            self._queued_samples += batch.samples
            delay = self._retry_delay(result.retry_after_s)
            tripped = self._consecutive_failures >= self.config.failures_to_open
            if tripped:
                delay = max(delay, self.config.open_cooldown_s)
                if self._state is not State.DRAINING:
                    self.stats.circuit_opens += 1
            self._last_delay_s = delay
            self._next_attempt_at = now + delay
            self._fire(Event.TRIPPED if tripped else Event.FAILED, now)
        else:
            self._drop(batch, DropReason.NON_RETRYABLE)
            self.stats.last_error = result.error or "refused by the server"
            self._consecutive_failures = 0
            self._next_attempt_at = -math.inf
            self._fire(Event.REFUSED, now)
        if self._state is State.DRAINING:
            self._settle_draining(now)

    def shutdown(self, now: float, deadline: float) -> None:
        """Start draining: keep delivering until `deadline`, then drop what is left."""
        if self._state in (State.DRAINING, State.STOPPED):
            return
        self._deadline = deadline
        self._fire(Event.SHUTDOWN, now)
        self._settle_draining(now)

    # -- internals -------------------------------------------------------------

    def _settle_draining(self, now: float) -> None:
        assert self._deadline is not None
        if not self._queue and self._in_flight is None:
            self._fire(Event.DRAINED, now)
        elif now >= self._deadline or self._next_attempt_at >= self._deadline:
            # No attempt can start in time: what waits is dropped now; the one in
            # flight (if any) is settled by its result, which ends the drain.
            while self._queue:
                self._drop(self._pop_oldest(), DropReason.SHUTDOWN)
            if self._in_flight is None:
                self._fire(Event.DEADLINE, now)

    def _retry_delay(self, retry_after_s: float | None) -> float:
        cfg = self.config
        if retry_after_s is not None and math.isfinite(retry_after_s):
            # The server knows its own load better than our guess; cap it so one
            # bad header cannot park the exporter for hours.
            return min(max(retry_after_s, cfg.min_backoff_s), cfg.max_retry_after_s)
        # Full jitter between the floor and an exponentially growing ceiling; the
        # exponent is capped only to keep the float finite.
        exponent = min(self._consecutive_failures, 64)
        ceiling = min(cfg.max_backoff_s, cfg.min_backoff_s * cfg.backoff_multiplier**exponent)
        return cfg.min_backoff_s + self._rng.random() * (ceiling - cfg.min_backoff_s)

    def _over_limits(self) -> bool:
        return (
            self.held_batches > self.config.max_queued_batches
            or self.held_samples > self.config.max_queued_samples
        )

    def _pop_oldest(self) -> ExportBatch:
        batch = self._queue.popleft()
        self._queued_samples -= batch.samples
        return batch

    def _drop(self, batch: ExportBatch, reason: DropReason) -> None:
        self.stats.dropped_batches[reason] += 1
        self.stats.dropped_samples[reason] += batch.samples

    def _fire(self, event: Event, now: float) -> None:
        before = self._state
        after = TRANSITIONS.get((before, event))
        if after is None:
            raise InvalidTransition(f"no transition from {before.name} on {event.value}")
        self._state = after
        if self._on_transition is not None:
            self._on_transition(before, event, after, now)
