"""A fake daemon (plain Python, no BPF) and OpAMP servers for the client tests."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from profiler import config as cfg
from profiler.opamp import OpampClient, layered
from profiler.opamp.backoff import Backoff
from profiler.opamp.remote_config import Restored
from tests.opamp.server import OpampTestServer

RULE_OK = 'attributes["comm"] == "noisy"'


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    windows_written: int = 0
    window_errors: int = 0


class FakeDaemon:
    """The parts of profiler.daemon.Daemon the client uses, with the same
    contract: request_config queues one config (the newest wins), applied at
    the next window boundary, then config_hooks are called."""

    def __init__(self, config: cfg.KilnConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.status_extras: dict[str, Callable[[], Any]] = {}
        self.config_hooks: list[Callable[[cfg.KilnConfig, Exception | None], None]] = []
        self.applied: list[cfg.KilnConfig] = []
        self.requests = 0
        self.overlapping = 0  # a request while another waited: never, by the client's rules
        self.fail_apply: Exception | None = None
        self._pending: cfg.KilnConfig | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def request_config(self, new: cfg.KilnConfig) -> None:
        with self._lock:
            if self._pending is not None:
                self.overlapping += 1
            self._pending = new
            self.requests += 1

    @property
    def pending(self) -> cfg.KilnConfig | None:
        return self._pending

    def window(self) -> None:
        """One window boundary: the pending config, if any, goes in force."""
        self.stats.windows_written += 1
        with self._lock:
            new, self._pending = self._pending, None
        if new is None:
            return
        error = self.fail_apply
        if error is None:
            self.config = new
            self.applied.append(new)
        for hook in list(self.config_hooks):
            hook(new, error)

    def run_windows(self, every: float = 0.05) -> None:
        def loop() -> None:
            while not self._stop.wait(every):
                self.window()

        self._thread = threading.Thread(target=loop, name="fake-windows")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def local_config(
    tmp: Path, endpoint: str = "http://127.0.0.1:9/v1/opamp", **extra: Any
) -> cfg.KilnConfig:
    data: dict[str, Any] = {
        "data_dir": str(tmp / "data"),
        "frequency": 19,
        "max_frequency": 199,
        "window_seconds": 2,
        "exporters": [
            {
                "name": "collector",
                "type": "otlp_grpc",
                "endpoint": "localhost:4317",
                "insecure": True,
                "filter": {"conditions": [RULE_OK]},
            }
        ],
        "opamp": {"endpoint": endpoint, "poll_interval": 0.1, "max_message_bytes": 65536},
    }
    _deep_update(data, extra)
    return cfg.KilnConfig.model_validate(data)


def _deep_update(data: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(data.get(k), dict):
            _deep_update(data[k], v)
        else:
            data[k] = v


def composer(
    local: cfg.KilnConfig, flags: Mapping[str, Any] | None = None
) -> Callable[[Mapping[str, Any]], cfg.KilnConfig]:
    """defaults < file (`local`) < remote < flags, as `kiln run` composes."""
    return lambda remote: layered(local, remote, flags or {})


def fast_backoff(seed: int = 1) -> Backoff:
    return Backoff(initial=0.05, maximum=0.3, rng=random.Random(seed))


@dataclass
class Harness:
    server: OpampTestServer
    daemon: FakeDaemon
    client: OpampClient
    local: cfg.KilnConfig


class Clients:
    """Makes clients against a server and stops everything at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[tuple[OpampClient, FakeDaemon]] = []

    def make(
        self,
        server: OpampTestServer,
        *,
        restored: Restored | None = None,
        windows: bool = True,
        kernel_ceiling: int | None = 100_000,
        start: bool = True,
        **extra: Any,
    ) -> Harness:
        local = local_config(self.tmp, server.url, **extra)
        daemon = FakeDaemon(restored.config if restored and restored.config else local)
        client = OpampClient(
            daemon,
            compose=composer(local),
            version="0.1.0-test",
            restored=restored,
            backoff=fast_backoff(),
            kernel_ceiling=lambda: kernel_ceiling,
        )
        self.started.append((client, daemon))
        if windows:
            daemon.run_windows()
        if start:
            client.start()
        return Harness(server, daemon, client, local)

    def close(self) -> None:
        for client, daemon in self.started:
            client.stop()
            daemon.stop()


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[Clients]:
    made = Clients(tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(params=["http", "ws"])
def server(request: pytest.FixtureRequest) -> Iterator[OpampTestServer]:
    s = OpampTestServer(request.param).start()
    try:
        yield s
    finally:
        s.stop()
