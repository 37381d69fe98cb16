"""The delivery state machine: each transition, then its invariants under
random interleavings (hypothesis RuleBasedStateMachine) with a fake clock."""

from __future__ import annotations

import math
import random
import re

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from profiler.export import delivery
from profiler.export.api import ExportBatch, SendResult
from profiler.export.delivery import (
    IDLE,
    TRANSITIONS,
    Delivery,
    DeliveryConfig,
    DropReason,
    Event,
    Send,
    State,
    Wait,
)
from symbolizer.profile import Profile

OK = SendResult(ok=True)
RETRY = SendResult(ok=False, retryable=True, error="503 Service Unavailable")
REFUSE = SendResult(ok=False, error="400 Bad Request")


def batch(batch_id: int, samples: int = 10) -> ExportBatch:
    return ExportBatch(batch_id, Profile(), start_ns=0, duration_ns=0, samples=samples)


class FixedRandom(random.Random):
    """An RNG whose `random()` always returns `value`, to pin jitter."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


CFG = DeliveryConfig(
    max_queued_batches=4,
    max_queued_samples=100,
    attempt_timeout_s=2.0,
    min_backoff_s=1.0,
    max_backoff_s=8.0,
    backoff_multiplier=2.0,
    max_retry_after_s=60.0,
    failures_to_open=3,
    open_cooldown_s=30.0,
)


def make(
    cfg: DeliveryConfig = CFG, jitter: float = 0.5
) -> tuple[Delivery, list[tuple[State, Event, State]]]:
    seen: list[tuple[State, Event, State]] = []
    d = Delivery(
        cfg, rng=FixedRandom(jitter), on_transition=lambda a, e, b, _: seen.append((a, e, b))
    )
    return d, seen


def send(d: Delivery, now: float) -> ExportBatch:
    action = d.next_action(now)
    assert isinstance(action, Send), action
    return action.batch


# -- the table ---------------------------------------------------------------


def test_docstring_table_is_the_code_table() -> None:
    assert delivery.__doc__ is not None
    row = re.compile(r"^ {4}([A-Z_]+) +([a-z_]+) +([A-Z_]+)$", re.M)
    documented = {(State[s], Event(e)): State[n] for s, e, n in row.findall(delivery.__doc__)}
    assert documented == TRANSITIONS
    assert list(documented) == list(TRANSITIONS)  # same order, so a diff reads cleanly


def test_every_state_but_stopped_can_shut_down_and_stopped_is_final() -> None:
    for state in State:
        if state is State.STOPPED:
            assert not any(s is state for s, _ in TRANSITIONS)
        elif state is not State.DRAINING:
            assert TRANSITIONS[state, Event.SHUTDOWN] is State.DRAINING


def test_an_event_the_table_lacks_is_refused() -> None:
    d, _ = make()
    d.offer(batch(1), 0.0)
    open_circuit(d)
    # No public call can do this; the table is the only authority on moves.
    with pytest.raises(delivery.InvalidTransition, match="CIRCUIT_OPEN on ok"):
        d._fire(Event.OK, 0.0)
    assert d.state is State.CIRCUIT_OPEN


# -- CONNECTED ------------------------------------------------------------------


def test_fresh_delivery_is_connected_and_idle() -> None:
    d, _ = make()
    assert d.state is State.CONNECTED
    assert d.next_action(0.0) == IDLE


def test_connected_sends_oldest_first_one_at_a_time() -> None:
    d, seen = make()
    d.offer(batch(1), 0.0)
    d.offer(batch(2), 0.0)
    action = d.next_action(0.0)
    assert isinstance(action, Send)
    assert (action.batch.batch_id, action.timeout_s) == (1, CFG.attempt_timeout_s)
    assert d.next_action(0.0) == IDLE  # one in flight
    d.on_result(1, OK, 0.5)
    assert seen == [(State.CONNECTED, Event.OK, State.CONNECTED)]
    assert send(d, 0.5).batch_id == 2
    d.on_result(2, OK, 1.0)
    assert d.stats.delivered_batches == 2 and d.stats.delivered_samples == 20
    assert d.stats.last_success_at == 1.0


def test_result_for_another_batch_is_rejected() -> None:
    d, _ = make()
    with pytest.raises(ValueError, match="in flight is None"):
        d.on_result(1, OK, 0.0)
    d.offer(batch(1), 0.0)
    send(d, 0.0)
    with pytest.raises(ValueError, match="in flight is 1"):
        d.on_result(2, OK, 0.0)


def test_partial_success_counts_delivered_and_rejected_samples() -> None:
    d, _ = make()
    d.offer(batch(1, samples=10), 0.0)
    send(d, 0.0)
    d.on_result(1, SendResult(ok=True, rejected=3, error="3 samples invalid"), 0.0)
    assert d.state is State.CONNECTED
    assert d.stats.delivered_batches == 1
    assert d.stats.delivered_samples == 7
    assert d.stats.dropped_samples[DropReason.REJECTED_BY_SERVER] == 3
    assert d.stats.dropped_batches[DropReason.REJECTED_BY_SERVER] == 0
    assert d.stats.last_error == "3 samples invalid"


def test_a_rejected_count_beyond_the_batch_is_clamped() -> None:
    d, _ = make()
    d.offer(batch(1, samples=4), 0.0)
    send(d, 0.0)
    d.on_result(1, SendResult(ok=True, rejected=99), 0.0)
    assert d.stats.delivered_samples == 0
    assert d.stats.dropped_samples[DropReason.REJECTED_BY_SERVER] == 4


def test_connected_refused_drops_the_batch_and_stays_connected() -> None:
    d, seen = make()
    d.offer(batch(1), 0.0)
    send(d, 0.0)
    d.on_result(1, REFUSE, 0.0)
    assert seen == [(State.CONNECTED, Event.REFUSED, State.CONNECTED)]
    assert d.stats.dropped_batches[DropReason.NON_RETRYABLE] == 1
    assert d.stats.dropped_samples[DropReason.NON_RETRYABLE] == 10
    assert d.stats.last_error == "400 Bad Request"
    assert d.next_action(0.0) == IDLE


# -- BACKING_OFF ----------------------------------------------------------------


def test_connected_failed_backs_off_and_retries_the_same_batch() -> None:
    d, seen = make(jitter=0.5)
    d.offer(batch(1), 0.0)
    d.offer(batch(2), 0.0)
    send(d, 0.0)
    d.on_result(1, RETRY, 10.0)
    assert seen == [(State.CONNECTED, Event.FAILED, State.BACKING_OFF)]
    # First failure: full jitter in [min, min * multiplier] = [1, 2]; 0.5 of the way is 1.5.
    assert d.next_action(10.0) == Wait(11.5)
    assert d.next_action(11.49) == Wait(11.5)
    assert [b.batch_id for b in d.queued] == [1, 2]
    assert send(d, 11.5).batch_id == 1
    assert d.state is State.BACKING_OFF  # a retry does not change the state
    d.on_result(1, OK, 12.0)
    assert seen[-1] == (State.BACKING_OFF, Event.OK, State.CONNECTED)
    assert d.consecutive_failures == 0
    assert send(d, 12.0).batch_id == 2  # no pause after a success


def test_backoff_grows_exponentially_up_to_its_ceiling() -> None:
    cfg = DeliveryConfig(
        min_backoff_s=1.0, max_backoff_s=8.0, backoff_multiplier=2.0, failures_to_open=100
    )
    d, _ = make(cfg, jitter=1.0)  # always the ceiling
    d.offer(batch(1), 0.0)
    delays = []
    now = 0.0
    for _ in range(6):
        send(d, now)
        d.on_result(1, RETRY, now)
        assert d.last_delay_s is not None
        delays.append(d.last_delay_s)
        now = d.next_attempt_at
    assert delays == [2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert d.state is State.BACKING_OFF


def test_backoff_floor_is_the_minimum() -> None:
    d, _ = make(jitter=0.0)
    d.offer(batch(1), 0.0)
    send(d, 0.0)
    d.on_result(1, RETRY, 0.0)
    assert d.last_delay_s == CFG.min_backoff_s


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (7.0, 7.0),  # the server's hint wins over the jittered backoff
        (30.0, 30.0),  # even beyond max_backoff_s
        (1e9, 60.0),  # capped at max_retry_after_s
        (0.0, 1.0),  # floored at min_backoff_s, so no hot loop
        (-5.0, 1.0),
        (math.inf, 1.5),  # not a number we can use: ordinary backoff
        (math.nan, 1.5),
    ],
)
def test_retry_after_is_honored_within_bounds(hint: float, expected: float) -> None:
    d, _ = make(jitter=0.5)
    d.offer(batch(1), 0.0)
    send(d, 0.0)
    d.on_result(1, SendResult(ok=False, retryable=True, retry_after_s=hint), 100.0)
    assert d.last_delay_s == expected
    assert d.next_attempt_at == 100.0 + expected


def test_backing_off_refused_reconnects() -> None:
    d, seen = make()
    d.offer(batch(1), 0.0)
    send(d, 0.0)
    d.on_result(1, RETRY, 0.0)
    send(d, 5.0)
    d.on_result(1, REFUSE, 5.0)
    assert seen[-1] == (State.BACKING_OFF, Event.REFUSED, State.CONNECTED)
    assert d.consecutive_failures == 0


# -- CIRCUIT_OPEN / HALF_OPEN -------------------------------------------------------


def open_circuit(d: Delivery, now: float = 0.0) -> float:
    """Fail `failures_to_open` attempts in a row; returns the time of the last failure."""
    for _ in range(d.config.failures_to_open):
        now = max(now, d.next_attempt_at)
        b = send(d, now)
        d.on_result(b.batch_id, RETRY, now)
    return now


def test_repeated_failures_open_the_circuit_and_nothing_is_sent_while_open() -> None:
    d, seen = make()
    d.offer(batch(1), 0.0)
    tripped_at = open_circuit(d)
    assert seen[-1] == (State.BACKING_OFF, Event.TRIPPED, State.CIRCUIT_OPEN)
    assert d.stats.circuit_opens == 1
    reopen = tripped_at + CFG.open_cooldown_s
    assert d.next_attempt_at == reopen
    for i, t in enumerate((tripped_at, tripped_at + 1, reopen - 0.001)):
        d.offer(batch(100 + i), t)
        assert d.next_action(t) == Wait(reopen)
    assert d.state is State.CIRCUIT_OPEN
    probe = send(d, reopen)
    assert probe.batch_id == 1
    assert seen[-1] == (State.CIRCUIT_OPEN, Event.COOLDOWN_ELAPSED, State.HALF_OPEN)
    assert d.next_action(reopen) == IDLE  # a single probe


def test_probe_success_closes_the_circuit() -> None:
    d, seen = make()
    d.offer(batch(1), 0.0)
    d.offer(batch(2), 0.0)
    t = open_circuit(d) + CFG.open_cooldown_s
    send(d, t)
    d.on_result(1, OK, t)
    assert seen[-1] == (State.HALF_OPEN, Event.OK, State.CONNECTED)
    assert send(d, t).batch_id == 2


def test_probe_failure_reopens_the_circuit_for_another_cooldown() -> None:
    d, seen = make()
    d.offer(batch(1), 0.0)
    t = open_circuit(d) + CFG.open_cooldown_s
    send(d, t)
    d.on_result(1, SendResult(ok=False, retryable=True, retry_after_s=5.0), t)
    assert seen[-1] == (State.HALF_OPEN, Event.TRIPPED, State.CIRCUIT_OPEN)
    assert d.next_action(t) == Wait(t + CFG.open_cooldown_s)  # a short hint does not cut it
    assert d.stats.circuit_opens == 2


def test_a_longer_hint_than_the_cooldown_keeps_the_circuit_open_longer() -> None:
    d, _ = make()
    d.offer(batch(1), 0.0)
    for i in range(CFG.failures_to_open):
        now = max(0.0, d.next_attempt_at)
        send(d, now)
        hint = 50.0 if i == CFG.failures_to_open - 1 else None
        d.on_result(1, SendResult(ok=False, retryable=True, retry_after_s=hint), now)
    assert d.state is State.CIRCUIT_OPEN
    assert d.last_delay_s == 50.0


def test_probe_refused_closes_the_circuit() -> None:
    d, seen = make()
    d.offer(batch(1), 0.0)
    t = open_circuit(d) + CFG.open_cooldown_s
    send(d, t)
    d.on_result(1, REFUSE, t)
    assert seen[-1] == (State.HALF_OPEN, Event.REFUSED, State.CONNECTED)


def test_eviction_while_open_changes_which_batch_probes() -> None:
    d, _ = make(DeliveryConfig(max_queued_batches=1, failures_to_open=2, open_cooldown_s=9.0))
    d.offer(batch(1), 0.0)
    t = open_circuit(d)
    d.offer(batch(2), t + 1)  # no room: the failing batch 1 is the oldest and goes
    assert d.stats.dropped_batches[DropReason.QUEUE_FULL] == 1
    assert send(d, t + 9.0).batch_id == 2
    assert d.state is State.HALF_OPEN


def test_single_failure_threshold_opens_straight_from_connected() -> None:
    d, seen = make(DeliveryConfig(failures_to_open=1, open_cooldown_s=5.0))
    d.offer(batch(1), 0.0)
    send(d, 0.0)
    d.on_result(1, RETRY, 0.0)
    assert seen == [(State.CONNECTED, Event.TRIPPED, State.CIRCUIT_OPEN)]
    assert d.next_attempt_at >= 5.0


# -- queue bounds -----------------------------------------------------------------


def test_full_queue_drops_the_oldest_batch() -> None:
    d, _ = make()
    for i in range(1, 7):
        d.offer(batch(i), 0.0)
    assert [b.batch_id for b in d.queued] == [3, 4, 5, 6]
    assert d.stats.dropped_batches[DropReason.QUEUE_FULL] == 2
    assert d.stats.dropped_samples[DropReason.QUEUE_FULL] == 20
    assert d.stats.peak_held_batches == CFG.max_queued_batches


def test_sample_limit_drops_oldest_until_the_new_batch_fits() -> None:
    d, _ = make()
    d.offer(batch(1, 40), 0.0)
    d.offer(batch(2, 40), 0.0)
    d.offer(batch(3, 50), 0.0)  # 130 > 100: dropping the oldest is enough
    assert [b.batch_id for b in d.queued] == [2, 3]
    assert d.queued_samples == 90
    assert d.stats.dropped_samples[DropReason.QUEUE_FULL] == 40


def test_a_batch_larger_than_the_queue_is_dropped_alone() -> None:
    d, _ = make()
    d.offer(batch(1, 10), 0.0)
    d.offer(batch(2, 101), 0.0)
    assert [b.batch_id for b in d.queued] == [1]
    assert d.stats.dropped_batches[DropReason.QUEUE_FULL] == 1
    assert d.stats.dropped_samples[DropReason.QUEUE_FULL] == 101


def test_the_batch_in_flight_is_never_evicted_and_counts_toward_the_limit() -> None:
    d, _ = make(DeliveryConfig(max_queued_batches=2, max_queued_samples=100))
    d.offer(batch(1), 0.0)
    send(d, 0.0)
    d.offer(batch(2), 0.0)
    d.offer(batch(3), 0.0)  # 1 in flight + 2 waiting > 2: the oldest waiting (2) goes
    assert d.in_flight is not None and d.in_flight.batch_id == 1
    assert [b.batch_id for b in d.queued] == [3]
    d.on_result(1, RETRY, 0.0)  # back at the head without exceeding the bound
    assert [b.batch_id for b in d.queued] == [1, 3]
    assert d.held_batches == 2


def test_with_room_for_one_the_new_batch_yields_to_the_one_in_flight() -> None:
    d, _ = make(DeliveryConfig(max_queued_batches=1))
    d.offer(batch(1), 0.0)
    send(d, 0.0)
    d.offer(batch(2), 0.0)
    assert d.queued == ()
    assert d.stats.dropped_batches[DropReason.QUEUE_FULL] == 1


# -- DRAINING / STOPPED -----------------------------------------------------------------


def test_shutdown_with_nothing_queued_stops_at_once() -> None:
    d, seen = make()
    d.shutdown(0.0, deadline=5.0)
    assert seen == [
        (State.CONNECTED, Event.SHUTDOWN, State.DRAINING),
        (State.DRAINING, Event.DRAINED, State.STOPPED),
    ]
    assert d.next_action(0.0) == IDLE
    d.shutdown(1.0, deadline=6.0)  # again: nothing happens
    assert d.state is State.STOPPED


def test_draining_sends_what_is_queued_then_stops() -> None:
    d, seen = make()
    d.offer(batch(1), 0.0)
    d.offer(batch(2), 0.0)
    d.shutdown(0.0, deadline=10.0)
    assert d.state is State.DRAINING
    for expected in (1, 2):
        assert send(d, 1.0).batch_id == expected
        d.on_result(expected, OK, 1.0)
    assert seen[-1] == (State.DRAINING, Event.DRAINED, State.STOPPED)
    assert d.stats.delivered_batches == 2


def test_draining_attempt_timeout_is_cut_to_the_deadline() -> None:
    d, _ = make()
    d.offer(batch(1), 0.0)
    d.shutdown(0.0, deadline=0.5)
    action = d.next_action(0.2)
    assert isinstance(action, Send)
    assert action.timeout_s == pytest.approx(0.3)


def test_draining_drops_the_rest_at_the_deadline() -> None:
    d, seen = make()
    for i in (1, 2, 3):
        d.offer(batch(i), 0.0)
    d.shutdown(0.0, deadline=3.0)
    send(d, 0.0)
    d.on_result(1, OK, 0.0)
    assert d.next_action(3.0) == IDLE
    assert seen[-1] == (State.DRAINING, Event.DEADLINE, State.STOPPED)
    assert d.stats.dropped_batches[DropReason.SHUTDOWN] == 2
    assert d.queued == ()


def test_draining_gives_up_when_the_backoff_passes_the_deadline() -> None:
    d, seen = make(jitter=0.5)
    d.offer(batch(1), 0.0)
    d.shutdown(0.0, deadline=1.2)
    send(d, 0.0)
    d.on_result(1, RETRY, 0.0)  # next attempt at 1.5 > 1.2: pointless to wait
    assert seen[-2:] == [
        (State.DRAINING, Event.FAILED, State.DRAINING),
        (State.DRAINING, Event.DEADLINE, State.STOPPED),
    ]
    assert d.stats.dropped_batches[DropReason.SHUTDOWN] == 1


def test_draining_keeps_an_open_circuit_closed_to_sends() -> None:
    d, seen = make()
    d.offer(batch(1), 0.0)
    t = open_circuit(d)
    d.shutdown(t, deadline=t + 10.0)  # the cool-down ends after the deadline
    assert seen[-2:] == [
        (State.CIRCUIT_OPEN, Event.SHUTDOWN, State.DRAINING),
        (State.DRAINING, Event.DEADLINE, State.STOPPED),
    ]
    assert d.stats.dropped_batches[DropReason.SHUTDOWN] == 1


def test_draining_waits_for_the_attempt_in_flight_past_the_deadline() -> None:
    d, seen = make()
    d.offer(batch(1), 0.0)
    d.offer(batch(2), 0.0)
    send(d, 0.0)
    d.shutdown(0.0, deadline=1.0)
    assert d.next_action(2.0) == IDLE
    assert d.state is State.DRAINING  # 2 was dropped, 1 is still out
    assert d.stats.dropped_batches[DropReason.SHUTDOWN] == 1
    d.on_result(1, OK, 2.5)
    assert seen[-1] == (State.DRAINING, Event.DRAINED, State.STOPPED)
    assert d.stats.delivered_batches == 1


def test_a_failure_in_flight_past_the_deadline_is_dropped() -> None:
    d, _ = make()
    d.offer(batch(1), 0.0)
    send(d, 0.0)
    d.shutdown(0.0, deadline=1.0)
    d.on_result(1, RETRY, 2.0)
    assert d.state is State.STOPPED
    assert d.stats.dropped_batches[DropReason.SHUTDOWN] == 1


def test_offers_after_shutdown_are_dropped_and_counted() -> None:
    d, _ = make()
    d.offer(batch(1), 0.0)
    d.shutdown(0.0, deadline=10.0)
    d.offer(batch(2, samples=7), 0.0)
    assert [b.batch_id for b in d.queued] == [1]
    assert d.stats.dropped_batches[DropReason.SHUTDOWN] == 1
    assert d.stats.dropped_samples[DropReason.SHUTDOWN] == 7
    assert d.stats.offered_batches == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_queued_batches", 0),
        ("max_queued_samples", 0),
        ("attempt_timeout_s", 0.0),
        ("min_backoff_s", 0.0),
        ("max_backoff_s", 0.1),
        ("backoff_multiplier", 0.5),
        ("max_retry_after_s", 0.1),
        ("failures_to_open", 0),
        ("open_cooldown_s", -1.0),
    ],
)
def test_config_rejects_nonsense(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        DeliveryConfig(**{"min_backoff_s": 0.5, field: value})  # type: ignore[arg-type]


# -- stateful property test -----------------------------------------------------------------


@st.composite
def configs(draw: st.DrawFn) -> DeliveryConfig:
    min_backoff = draw(st.floats(0.05, 2.0))
    return DeliveryConfig(
        max_queued_batches=draw(st.integers(1, 6)),
        max_queued_samples=draw(st.integers(1, 80)),
        attempt_timeout_s=draw(st.floats(0.1, 10.0)),
        min_backoff_s=min_backoff,
        max_backoff_s=min_backoff * draw(st.floats(1.0, 50.0)),
        backoff_multiplier=draw(st.floats(1.0, 4.0)),
        max_retry_after_s=min_backoff * draw(st.floats(1.0, 200.0)),
        failures_to_open=draw(st.integers(1, 5)),
        open_cooldown_s=draw(st.floats(0.1, 60.0)),
    )


hints = st.one_of(
    st.none(),
    st.floats(-10.0, 1e6),
    st.sampled_from([0.0, math.inf, math.nan]),
)
retryables = hints.map(lambda h: SendResult(ok=False, retryable=True, retry_after_s=h, error="x"))
# Failures weigh double, so streaks long enough to open the circuit are common.
results = st.one_of(
    st.just(OK),
    st.integers(0, 40).map(lambda n: SendResult(ok=True, rejected=n)),
    retryables,
    retryables,
    st.just(REFUSE),
)
time_steps = st.one_of(st.just(0.0), st.floats(0.0, 2.0), st.floats(0.0, 100.0))


class DeliveryMachine(RuleBasedStateMachine):
    """A model of what must hold, checked against `Delivery` after every step.

    The model keeps its own account: which ids were offered, delivered, and
    held; its own failure streak; and the earliest time a send may happen
    (derived from the observed pause after each failure, checked against the
    backoff bounds). It reads the machine only through its public views.

    Rules have no preconditions (a rule that cannot apply does nothing), so
    hypothesis never discards a step looking for an enabled rule.
    """

    def __init__(self) -> None:
        super().__init__()
        self.d = Delivery(DeliveryConfig())
        self.cfg = self.d.config
        self.now = 0.0
        self.next_id = 1
        self.offered: dict[int, int] = {}  # id -> samples
        self.delivered: set[int] = set()
        self.delivered_samples = 0
        self.held: set[int] = set()  # queued or in flight after the previous step
        self.failures = 0
        self.no_send_before = -math.inf
        self.deadline: float | None = None

    @initialize(cfg=configs(), seed=st.integers(0, 2**32 - 1))
    def setup(self, cfg: DeliveryConfig, seed: int) -> None:
        self.d = Delivery(cfg, rng=random.Random(seed))
        self.cfg = cfg

    @rule(samples=st.integers(0, 30))
    def offer(self, samples: int) -> None:
        b = batch(self.next_id, samples)
        self.next_id += 1
        self.offered[b.batch_id] = samples
        self.held.add(b.batch_id)
        self.d.offer(b, self.now)
        self.settle()

    @rule(dt=time_steps)
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(early=st.sampled_from([0.0, 1e-9]))
    def advance_to_next_attempt(self, early: float) -> None:
        # Straight to the end of the pause (or a hair before it): where bugs in
        # backoff and cool-down would show.
        if math.isfinite(self.d.next_attempt_at):
            self.now = max(self.now, self.d.next_attempt_at - early)

    @rule()
    def act(self) -> None:
        self.next_action()
        self.settle()

    @rule(result=results)
    def respond(self, result: SendResult) -> None:
        self.deliver_result(result)
        self.settle()

    @rule(result=results)
    def act_and_respond(self, result: SendResult) -> None:
        # The common case in one step, so failure streaks long enough to open
        # the circuit show up in short runs.
        self.next_action()
        self.deliver_result(result)
        self.settle()

    @rule(grace=time_steps, now_or_later=st.integers(0, 3))
    def shutdown(self, grace: float, now_or_later: int) -> None:
        # Only one draw in four shuts down, so most runs live long enough to fail.
        if self.deadline is not None or now_or_later:
            return
        self.deadline = self.now + grace
        self.d.shutdown(self.now, self.deadline)
        assert self.d.state in (State.DRAINING, State.STOPPED)
        self.settle()

    def next_action(self) -> None:
        was_in_flight = self.d.in_flight is not None
        # Ids grow with each offer, so the oldest waiting batch has the smallest.
        oldest = min((b.batch_id for b in self.d.queued), default=None)
        action = self.d.next_action(self.now)
        event(f"action: {type(action).__name__}")
        if isinstance(action, Send):
            assert not was_in_flight, "a second batch in flight"
            assert self.now >= self.no_send_before, "sent during backoff or with the circuit open"
            assert action.batch.batch_id == oldest, "not the oldest batch"
            assert self.d.state is not State.CIRCUIT_OPEN
            if self.failures >= self.cfg.failures_to_open:
                assert self.d.state in (State.HALF_OPEN, State.DRAINING), "not a probe"
            assert 0 < action.timeout_s <= self.cfg.attempt_timeout_s
            if self.deadline is not None:
                assert self.now < self.deadline
        elif isinstance(action, Wait):
            assert action.until > self.now
            assert action.until == self.d.next_attempt_at
            assert self.d.queued and self.d.in_flight is None
        else:
            assert (
                not self.d.queued or self.d.in_flight is not None or self.d.state is State.STOPPED
            ), "idle with work it could do"
        if self.deadline is not None and self.now >= self.deadline and self.d.in_flight is None:
            assert self.d.state is State.STOPPED, "draining past its deadline"

    def deliver_result(self, result: SendResult) -> None:
        b = self.d.in_flight
        if b is None:
            return
        draining = self.d.state is State.DRAINING
        self.d.on_result(b.batch_id, result, self.now)
        if result.ok:
            self.delivered.add(b.batch_id)
            self.delivered_samples += b.samples - min(result.rejected, b.samples)
            self.failures = 0
            self.no_send_before = -math.inf
            if not draining:
                assert self.d.state is State.CONNECTED
        elif result.retryable:
            self.failures += 1
            tripped = self.failures >= self.cfg.failures_to_open
            self.check_pause(result.retry_after_s, tripped)
            assert self.d.last_delay_s is not None
            self.no_send_before = self.now + self.d.last_delay_s
            if not draining:
                assert self.d.state is (State.CIRCUIT_OPEN if tripped else State.BACKING_OFF)
        else:
            self.failures = 0
            self.no_send_before = -math.inf
            if not draining:
                assert self.d.state is State.CONNECTED
        if draining:
            assert self.d.state in (State.DRAINING, State.STOPPED)
        assert self.d.consecutive_failures == self.failures
        event(f"result: {self.d.state.value}, streak {min(self.failures, 3)}")

    def check_pause(self, hint: float | None, tripped: bool) -> None:
        cfg = self.cfg
        pause = self.d.last_delay_s
        assert pause is not None
        if hint is not None and math.isfinite(hint):
            base = min(max(hint, cfg.min_backoff_s), cfg.max_retry_after_s)
            assert pause == (max(base, cfg.open_cooldown_s) if tripped else base)
        elif tripped:
            assert pause == cfg.open_cooldown_s or cfg.min_backoff_s <= pause <= cfg.max_backoff_s
            assert pause >= cfg.open_cooldown_s
        else:
            assert cfg.min_backoff_s <= pause <= cfg.max_backoff_s, "backoff out of bounds"

    def held_now(self) -> set[int]:
        ids = {b.batch_id for b in self.d.queued}
        if self.d.in_flight is not None:
            ids.add(self.d.in_flight.batch_id)
        return ids

    def settle(self) -> None:
        held = self.held_now()
        assert held <= self.held, "a batch came back after it was dropped or delivered"
        self.held = held

    @invariant()
    def nothing_is_silently_lost(self) -> None:
        s = self.d.stats
        queued = [b.batch_id for b in self.d.queued]
        held = self.held_now()
        assert len(held) == self.d.held_batches, "a batch both queued and in flight"
        assert queued == sorted(set(queued)), "queue out of offer order"
        assert not held & self.delivered
        gone = len(self.offered) - len(self.delivered) - len(held)
        assert sum(s.dropped_batches.values()) == gone, "a batch vanished uncounted"
        assert s.offered_batches == len(self.offered)
        assert s.delivered_batches == len(self.delivered)
        assert s.delivered_samples == self.delivered_samples
        assert s.offered_samples == sum(self.offered.values())
        assert s.offered_samples == (
            s.delivered_samples + sum(s.dropped_samples.values()) + self.d.held_samples
        ), "samples vanished uncounted"
        assert self.d.queued_samples == sum(b.samples for b in self.d.queued)

    @invariant()
    def queue_stays_within_bounds(self) -> None:
        assert self.d.held_batches <= self.cfg.max_queued_batches
        assert self.d.held_samples <= self.cfg.max_queued_samples
        assert self.d.stats.peak_held_batches <= self.cfg.max_queued_batches
        assert self.d.stats.peak_held_samples <= self.cfg.max_queued_samples

    @invariant()
    def stopped_holds_nothing(self) -> None:
        if self.d.state is State.STOPPED:
            assert not self.d.queued and self.d.in_flight is None
        if self.deadline is None:
            assert self.d.state not in (State.DRAINING, State.STOPPED)


DeliveryMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None
)
TestDeliveryMachine = DeliveryMachine.TestCase
