"""`kiln run` for real: the daemon samples the host, stores windows, serves
the UI (checked in Chromium), reloads its config on SIGHUP and stops
cleanly on SIGTERM with its store intact."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from profiler.store.sqlite import SqliteStore
from symbolizer.proto import profile_pb2
from tests.conftest import FIXTURES, free_port

KILN = [sys.executable, "-m", "profiler.cli"]
HOT = "burn_heavy"


@dataclass
class RunningDaemon:
    proc: subprocess.Popen[str]
    url: str
    config: Path
    data: Path
    workload_pid: int

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            body = r.read()
            return json.loads(body) if r.headers.get_content_type() == "application/json" else body

    def wait_for(self, what: str, check: Any, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "kiln run exited"
            last = check()
            if last:
                return last
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def flame_names(tree: dict[str, Any]) -> set[str]:
    out = {str(tree.get("name", ""))}
    for child in tree.get("children", []):
        out |= flame_names(child)
    return out


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    d = tmp_path_factory.mktemp("daemon")
    config = d / "kiln.yaml"
    port = free_port()
    config.write_text(
        f"listen: 127.0.0.1:{port}\ndata_dir: {d / 'data'}\nfrequency: 99\nwindow_seconds: 2s\n"
    )
    work = subprocess.Popen(
        ["/usr/bin/python3", str(FIXTURES / "py_split.py"), "600"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert work.stdin is not None and work.stdout is not None
    assert work.stdout.readline().strip() == "ready"
    work.stdin.write("go\n")
    work.stdin.flush()
    proc = subprocess.Popen(
        [*KILN, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line or "kiln run" in line or "UI at" in line:
                break
        running = RunningDaemon(proc, f"http://127.0.0.1:{port}", config, d / "data", work.pid)
        running.wait_for("the UI", lambda: _healthy(running))
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        work.kill()
        work.communicate()


def _healthy(d: RunningDaemon) -> bool:
    try:
        return bool(d.get("/healthz"))
    except OSError:
        return False


def test_flamegraph_api_shows_the_workload(daemon: RunningDaemon) -> None:
    def hot_in_whole_host() -> bool:
        return HOT in flame_names(daemon.get("/api/flame?from=now-5m&to=now")["tree"])

    daemon.wait_for("the workload in the whole-host flamegraph", hot_in_whole_host)
    mine = daemon.get(f"/api/flame?from=now-5m&to=now&pid={daemon.workload_pid}")
    names = flame_names(mine["tree"])
    assert {HOT, "burn_light"} <= names
    everything = daemon.get("/api/flame?from=now-5m&to=now")
    assert 0 < mine["total"] <= everything["total"]


def test_pprof_download_has_python_frames(daemon: RunningDaemon) -> None:
    daemon.wait_for("samples", lambda: daemon.get("/api/agent")["agent"]["windows_written"] >= 2)
    raw = daemon.get(f"/download/pprof?from=now-5m&to=now&pid={daemon.workload_pid}")
    msg = profile_pb2.Profile()
    msg.ParseFromString(gzip.decompress(raw))
    names = {msg.string_table[f.name] for f in msg.function}
    assert f"{HOT}_[py]" in names


def test_ui_in_chromium_shows_and_finds_the_hot_function(
    daemon: RunningDaemon,
    browser: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    daemon.wait_for("the workload", lambda: daemon.get("/api/agent")["agent"]["samples_total"])
    page = browser.new_page()
    try:
        page.goto(f"{daemon.url}/?from=now-5m&to=now&pid={daemon.workload_pid}")
        frame = page.locator(f'#flame g.frame[name^="{HOT}"]').first
        expect(frame).to_be_visible(timeout=30_000)
        page.fill("#search", HOT)
        expect(page.locator("#matched")).to_contain_text("matched:")
        assert "0.00%" not in page.locator("#matched").inner_text()
        page.screenshot(path=str(tmp_path / "daemon.png"))
    finally:
        page.close()


def test_sighup_reload_applies_and_bad_config_is_refused(daemon: RunningDaemon) -> None:
    original = daemon.config.read_text()
    try:
        daemon.config.write_text(original.replace("frequency: 99", "frequency: 49"))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(
            "frequency 49", lambda: daemon.get("/api/agent")["agent"]["frequency_hz"] == 49
        )
        daemon.config.write_text(original + "frequency_typo: 3\n")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(
            "a refused reload",
            lambda: daemon.get("/api/agent")["agent"]["config_reload_errors"] == 1,
        )
        assert daemon.get("/api/agent")["agent"]["frequency_hz"] == 49
    finally:
        daemon.config.write_text(original)


def test_sigterm_stops_cleanly_with_the_store_intact(daemon: RunningDaemon) -> None:
    before = daemon.get("/api/agent")["agent"]["windows_written"]
    daemon.proc.send_signal(signal.SIGTERM)
    _, err = daemon.proc.communicate(timeout=60)
    assert daemon.proc.returncode == 0, err
    assert "kiln stopped" in err
    with SqliteStore(daemon.data / "kiln.db", readonly=True) as store:
        assert store.integrity_check() == []
        assert store.stats().windows >= before + 1  # the open window was written too
