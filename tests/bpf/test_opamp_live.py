"""OpAMP remote control on the real kernel: `kiln run` against the test
OpAMP server (tests/opamp/server.py) changes its sampling frequency live,
19 -> 49 Hz, without a gap in the data, shows the connection on the agent
page, and after a restart runs the saved remote config from the start."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from profiler.opamp.remote_config import RemoteConfigStore
from profiler.opamp.wire import pb
from tests.conftest import free_port
from tests.opamp.server import OpampTestServer

KILN = [sys.executable, "-m", "profiler.cli"]
WINDOW_S = 2.0


class Kiln:
    def __init__(self, tmp: Path, server: OpampTestServer, pid: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "kiln.yaml"
        # Only the burner is profiled: the first windows of a whole busy host
        # (unwind tables of every binary) would take longer than this test.
        config.write_text(
            "frequency: 19\nwindow_seconds: 2s\nopamp:\n  poll_interval: 0.5s\n"
            f"profile:\n  pids: [{pid}]\n"
        )
        self.proc = subprocess.Popen(
            [*KILN, "run", "--config", str(config), "--data-dir", str(tmp / "data"),
             "--listen", f"127.0.0.1:{self.port}", "--opamp-endpoint", server.url],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def agent(self) -> dict[str, Any]:
        agent: dict[str, Any] = self.get("/api/agent")["agent"]
        return agent

    def wait_for(self, what: str, check: Any, timeout: float = 40.0) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"kiln run exited: {self.proc.stderr.read()}"  # type: ignore[union-attr]
            try:
                last = check()
            except OSError as e:  # not listening yet
                last = e
            if last and not isinstance(last, OSError):
                return last
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last: {last!r}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


class Burner:
    """A CPU-bound process and its CPU time, read from /proc ten times a second,
    so sampled rates can be judged per CPU-second it really ran (another busy
    process on the host takes CPU from it, not samples per CPU-second)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["/usr/bin/python3", "-c", "while True: pass"])
        self.pid = self.proc.pid
        self.cpu: list[tuple[float, float]] = []  # (wall time, CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cpu-meter")
        self._thread.start()

    def _watch(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(0.1):
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            self.cpu.append((time.time(), (int(fields[11]) + int(fields[12])) / tick))

    def cpu_seconds(self, start: float, end: float) -> float:
        times = [t for t, _ in self.cpu]
        values = [c for _, c in self.cpu]
        return float(np.interp(end, times, values) - np.interp(start, times, values))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def burner() -> Iterator[Burner]:
    b = Burner()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def server() -> Iterator[OpampTestServer]:
    s = OpampTestServer("http").start()
    try:
        yield s
    finally:
        s.stop()


def buckets(kiln: Kiln, burner: Burner, start_s: float, end_s: float) -> list[tuple[float, int]]:
    """(bucket start, samples) of the burner, 1 s buckets."""
    q = (f"/api/timeline?from={int(start_s * 1000)}&to={int(end_s * 1000)}&step=1s"
         f"&pid={burner.pid}")  # fmt: skip
    return [(p["t"] / 1000, p["samples"]) for p in kiln.get(q)["points"]]


def per_cpu_second(points: list[tuple[float, int]], burner: Burner) -> float:
    """Samples per CPU-second the burner ran over the span of `points` (the
    timeline spreads a window evenly over its seconds, so judge spans, not
    single seconds)."""
    cpu = burner.cpu_seconds(points[0][0], points[-1][0] + 1)
    return sum(n for _, n in points) / cpu if cpu > 0.2 else 0.0


def _steady(kiln: Kiln, burner: Burner) -> float | None:
    """Start of the last 2 written seconds when they show about 19 Hz."""
    now = time.time()
    points = buckets(kiln, burner, now - 6 - WINDOW_S, now)
    closed = [p for p in points if p[0] + 1 <= now - WINDOW_S - 0.5][-2:]
    steady = len(closed) == 2 and all(n for _, n in closed)
    if steady and 15 <= per_cpu_second(closed, burner) <= 24:
        return closed[0][0]
    return None


def test_live_frequency_change_and_agent_page(
    tmp_path: Path, server: OpampTestServer, burner: Burner
) -> None:
    kiln = Kiln(tmp_path, server, burner.pid)
    try:
        kiln.wait_for("the UI and a window", lambda: kiln.agent()["windows_written"] >= 1)
        shown = kiln.wait_for(
            "OpAMP connected",
            lambda: (rc := kiln.agent().get("remote_control")) and rc["state"] == "connected"
            and rc,
        )  # fmt: skip
        assert shown["endpoint"] == server.url and shown["last_config_status"] == "idle"
        # A steady 19 Hz first: the burner has its CPU once Kiln's start-up is over.
        steady_from = kiln.wait_for("the burner sampled at 19 Hz", lambda: _steady(kiln, burner))
        before_host = kiln.agent()["samples_per_second"]

        config_hash = server.offer("frequency: 49\n")
        sent = server.wait_for("the offer sent", lambda: server.offer_sent_at)
        delivered_wall = time.time() - (time.monotonic() - sent)
        server.wait_for(
            "APPLIED",
            lambda: any(s[:2] == (config_hash, pb.RemoteConfigStatuses_APPLIED)
                        for s in server.statuses()),
            timeout=3 * WINDOW_S,
        )  # fmt: skip
        # Within two windows of the server sending it, the rate is 49 Hz: the
        # two seconds after that, once the windows holding them are written.
        measure_at = delivered_wall + 2 * WINDOW_S
        written = kiln.agent()["windows_written"]
        needed = written + math.ceil((measure_at + 2 - time.time()) / WINDOW_S) + 1
        kiln.wait_for(
            "the windows after the change written",
            lambda: kiln.agent()["windows_written"] >= needed,
        )
        points = [p for p in buckets(kiln, burner, steady_from, measure_at + 2)
                  if p[0] + 1 <= measure_at + 2]  # fmt: skip
        assert all(n > 0 for _, n in points), f"a gap in the data: {points}"
        old = per_cpu_second([p for p in points if p[0] + 1 <= delivered_wall], burner)
        new = per_cpu_second([p for p in points if p[0] >= measure_at], burner)
        assert 15 <= old <= 24, (old, new, points)
        assert 40 <= new <= 58 and new > 2 * old, (old, new, points)

        agent = kiln.agent()
        assert agent["frequency_hz"] == 49
        assert agent["samples_per_second"] > 1.8 * before_host
        assert agent["remote_control"] == {
            "state": "connected",
            "endpoint": server.url,
            "last_config_hash": config_hash.hex(),
            "last_config_status": "applied",
            "error": "",
            "instance_uid": agent["remote_control"]["instance_uid"],
            "heartbeat": "0.5s",  # HTTP: the configured poll_interval
        }
        effective = [m for m in server.messages() if m.HasField("effective_config")][-1]
        assert b"frequency: 49" in effective.effective_config.config_map.config_map[
            "kiln.yaml"].body  # fmt: skip
    finally:
        err = kiln.stop()
    assert kiln.proc.returncode == 0, err
    assert server.messages()[-1].HasField("agent_disconnect")

    # What the restart finds on disk is what the next test starts from.
    saved = (tmp_path / "data" / "opamp" / "remote_config.hash").read_text().split()[0]
    assert saved == config_hash.hex()


def test_restart_restores_the_remote_config_before_sampling(
    tmp_path: Path, server: OpampTestServer, burner: Burner
) -> None:
    # As the previous run left it: 49 Hz applied, saved with its hash.
    config_hash = b"\x49" * 32
    RemoteConfigStore(tmp_path / "data" / "opamp").save("frequency: 49\n", config_hash)
    kiln = Kiln(tmp_path, server, burner.pid)
    try:
        agent = kiln.wait_for("the UI", lambda: kiln.agent())
        assert agent["frequency_hz"] == 49  # from the start, told by no one
        first = server.wait_for("the agent", lambda: server.messages()[:1])[0]
        assert first.remote_config_status.last_remote_config_hash == config_hash
        assert first.remote_config_status.status == pb.RemoteConfigStatuses_APPLIED
        rc = kiln.wait_for(
            "connected",
            lambda: (r := kiln.agent()["remote_control"])["state"] == "connected" and r,
        )
        assert (rc["last_config_hash"], rc["last_config_status"]) == (config_hash.hex(), "applied")
        assert server.offer_sent_at is None  # nothing needed from the server
    finally:
        err = kiln.stop()
    assert kiln.proc.returncode == 0, err
