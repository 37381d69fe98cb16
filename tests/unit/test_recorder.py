"""The recorder's window pipeline over an in-memory backend and the real /proc."""

from __future__ import annotations

import os

import pytest

from profiler.recorder import Recorder
from profiler.sampler import SamplerOptions
from tests.fakes import FakeBackend


def _key(pid: int, kstack: int, ustack: int) -> tuple[object, ...]:
    return (pid, pid, 1, kstack, ustack, 1, 0, 0, b"me")


def test_window_becomes_a_symbolized_profile_with_process_labels(
    request: pytest.FixtureRequest,
) -> None:
    be = FakeBackend()
    rec = Recorder(SamplerOptions(frequency_hz=100), backend=be)
    rec.start()
    request.addfinalizer(rec.close)
    me = os.getpid()
    rec.processes.observe(me)
    info = rec.processes.get(me)
    assert info is not None
    code = next(m for m in info.maps if m.is_exec and m.is_file)
    be.rows[0] = [(_key(me, 0, 7), (5, 1, 2))]
    be.stacks[0] = {7: (code.start + 16, 0)}
    profile = rec.profile_of(rec.sampler.close_window())
    assert profile.total_samples == 5
    assert profile.period_ns == 10_000_000
    ((frames, labels, n),) = list(profile.samples())
    assert n == 5
    assert dict(labels)["pid"] == str(me)
    assert dict(labels)["exe"] == info.exe
    assert len(frames) == 2  # the junk 0 return address is kept, never wrapped


def test_a_failing_symbolizer_costs_names_not_samples(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    be = FakeBackend()
    rec = Recorder(SamplerOptions(frequency_hz=100), backend=be)
    rec.start()
    request.addfinalizer(rec.close)

    def boom(*_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(rec.native, "symbolize", boom)
    monkeypatch.setattr(rec.kernel, "symbolize", boom)
    be.rows[0] = [(_key(os.getpid(), 3, 4), (2, 1, 2))]
    be.stacks[0] = {3: (0xFFFFFFFF81000000,), 4: (0x1234,)}
    profile = rec.profile_of(rec.sampler.close_window())
    assert profile.total_samples == 2
    names = [fn.name for frames, _, _ in profile.samples() for fn, _ in frames]
    assert names == ["[kernel.kallsyms]+0xffffffff81000000", "[unknown]+0x1234"]
    assert rec.counters()["symbolize_errors"] == 2
