"""The double-buffer protocol and event handling, against an in-memory backend."""

from __future__ import annotations

from profiler.bpf import abi
from profiler.procfs import MapEntry
from profiler.sampler import Sampler, SamplerOptions
from tests.fakes import FakeBackend


def key(
    pid: int, kstack: int, ustack: int, leaf_caller: int = 0, pystack: int = 0
) -> tuple[object, ...]:
    return (pid, pid, 0, kstack, ustack, 1, leaf_caller, pystack, b"comm")


def test_close_window_flips_halves_and_reads_the_old_one() -> None:
    be = FakeBackend()
    s = Sampler(be, SamplerOptions(frequency_hz=99, pids=(5,)), sleep=lambda _: None)
    s.start()
    assert be.hz == 99 and be.pids == [5]
    assert be.config[-1][0] == 0
    be.rows[0] = [(key(5, 1, 2), (4, 10, 20))]
    be.stacks[0] = {1: (0xFFFF0001,), 2: (0x1000, 0x2000)}
    w = s.close_window()
    assert be.config[-1][0] == 1, "BPF now writes the other half"
    assert be.cleared == [0]
    (row,) = w.samples
    assert (row.pid, row.count, row.kernel, row.user) == (5, 4, (0xFFFF0001,), (0x1000, 0x2000))
    be.rows[1] = [(key(5, 0, 3), (1, 30, 30))]
    be.stacks[1] = {3: (0x1000,)}
    w2 = s.close_window()
    assert be.config[-1][0] == 0 and be.cleared == [0, 1]
    assert w2.samples[0].kernel == ()


def test_idle_rows_are_dropped_unless_asked_for() -> None:
    be = FakeBackend()
    s = Sampler(be, SamplerOptions(), sleep=lambda _: None)
    s.start()
    be.rows[0] = [(key(0, 1, 0), (9, 0, 0)), (key(3, 0, 2), (1, 0, 0))]
    be.stacks[0] = {1: (0xFFFF0001,), 2: (0x1000,)}
    assert [r.pid for r in s.close_window().samples] == [3]


def test_leaf_caller_is_inserted_only_when_it_points_at_code() -> None:
    be = FakeBackend()
    maps = [MapEntry(0x1000, 0x3000, "r-xp", 0, 8, 1, 42, "/bin/x")]
    s = Sampler(be, SamplerOptions(), maps_of=lambda pid: maps, sleep=lambda _: None)
    s.start()
    be.rows[0] = [
        (key(3, 0, 2, leaf_caller=0x1500), (1, 0, 0)),
        (key(3, 0, 4, leaf_caller=0x9999), (1, 0, 0)),
    ]
    be.stacks[0] = {2: (0x1000, 0x2000), 4: (0x1010, 0x2000)}
    rows = {r.user[0]: r.user for r in s.close_window().samples}
    assert rows[0x1000] == (0x1000, 0x1500, 0x2000)
    assert rows[0x1010] == (0x1010, 0x2000)
    assert s.counters["leaf_caller_rejected"] == 1


def test_events_are_handed_on_and_never_raise() -> None:
    seen: list[int] = []

    def on_event(ev: abi.Event) -> None:
        if ev.key.pid == 13:
            raise OSError("gone")
        seen.append(ev.key.pid)

    s = Sampler(FakeBackend(), SamplerOptions(), on_event=on_event, sleep=lambda _: None)
    for pid in (7, 0, 13):
        ev = abi.Event(type=abi.EV_NEW_KEY)
        ev.key.pid = pid
        s.handle_event(ev)
    assert seen == [7, 0]
    assert s.counters["events"] == 3 and s.counters["event_errors"] == 1


def test_deep_stacks_are_marked_truncated() -> None:
    be = FakeBackend()
    s = Sampler(be, SamplerOptions(), sleep=lambda _: None)
    s.start()
    be.rows[0] = [(key(3, 0, 2), (1, 0, 0))]
    be.stacks[0] = {2: tuple(range(0x1000, 0x1000 + 127))}
    (row,) = s.close_window().samples
    assert row.truncated and len(row.user) == 127
