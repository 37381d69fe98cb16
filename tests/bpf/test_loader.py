"""The BPF side on the real kernel: layout as BCC sees it, counters, filters, re-attach."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time

import pytest

from profiler.bpf import abi
from profiler.bpf.loader import BccBackend
from profiler.sampler import Sampler, SamplerOptions


@pytest.fixture(scope="module")
def backend() -> BccBackend:
    be = BccBackend()
    yield be
    be.close()


@pytest.mark.parametrize(
    ("table", "part", "mirror"),
    [
        ("counts0", "Key", abi.SampleKey),
        ("counts0", "Leaf", abi.SampleValue),
        ("config", "Leaf", abi.Config),
        ("comm_filter", "Key", abi.Comm),
    ],
)
def test_bcc_types_match_the_mirror(
    backend: BccBackend, table: str, part: str, mirror: type[ctypes.Structure]
) -> None:
    bcc_type = backend.bcc_struct(table, part)
    assert ctypes.sizeof(bcc_type) == ctypes.sizeof(mirror)
    for name, *_ in mirror._fields_:
        if name.startswith("_"):
            continue
        assert getattr(bcc_type, name).offset == getattr(mirror, name).offset, name


def test_pid_filter_counts_and_windows(backend: BccBackend) -> None:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        events: list[int] = []
        sampler = Sampler(
            backend,
            SamplerOptions(frequency_hz=199, pids=(spin.pid,)),
            on_event=lambda ev: events.append(int(ev.key.pid)),
        )
        sampler.start()
        before = backend.counters()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            sampler.poll(50)
        w1 = sampler.close_window()
        # a second window after re-attaching at another frequency keeps counting
        sampler.set_frequency(99)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            sampler.poll(50)
        w2 = sampler.close_window()
        sampler.stop()
        after = backend.counters()
    finally:
        spin.kill()
        spin.wait()
    assert {s.pid for s in w1.samples} == {spin.pid}
    assert 150 <= w1.total <= 400, w1.total
    assert 30 <= w2.total <= 150, w2.total  # ~99 when the spinner gets its CPU
    assert spin.pid in events, "a new key must reach user space through the ring buffer"
    assert after[abi.Counter.FILTERED] > before[abi.Counter.FILTERED], "other tasks filtered"
    assert after[abi.Counter.SAMPLES] > after[abi.Counter.FILTERED]
    for c in abi.LOSS_REMEDIES:
        if c is not abi.Counter.USTACK_ERR:
            assert after[c] == 0, c
    assert all(s.user for s in w1.samples), "user stacks read"
    assert w1.counters["samples"] >= w1.total


def test_doctor_passes_here() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "profiler.cli", "doctor"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout
    assert "[FAIL]" not in res.stdout
    assert "bpf syscall: available" in res.stdout
    if os.path.realpath(f"/lib/modules/{os.uname().release}/build").find(os.uname().release) < 0:
        assert "fallback" in res.stdout
