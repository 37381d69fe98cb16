"""Fixtures of the web UI tests: a store with known windows, the app, and a
real server plus headless Chromium for the browser tests.

Browser tests use Debian's /usr/bin/chromium through Playwright (it cannot
download its own browser here). Without it they skip outside CI and fail
with CI=true, like every environment-dependent test of the project.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import BaseWSGIServer, make_server

from profiler.store.sqlite import SqliteStore
from tests.web import profiles
from web import create_app

ARTIFACTS = Path(__file__).parent / "artifacts"
TOKEN = "s3cret-token-for-tests-0123456789"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives headless Chromium (Playwright)")


def agent_status() -> Mapping[str, Any]:
    return {
        "version": "0.1.0",
        "uptime_seconds": 3723.5,
        "frequency_hz": 19,
        "samples_per_second": 38.2,
        "samples_total": 123456,
        "lost_samples": {"ring_buffer_full": 3, "map_full": 0},
        "cpu_percent": 0.4,
        "exporters": [{"name": "pyroscope", "state": "ok", "sent": 12, "failed": 1}],
        "remote_control": {"state": "disabled"},
        "build": "<b>bold?</b>",
    }


class Clock:
    """The app's wall clock, movable by tests."""

    def __init__(self, ns: int = profiles.NOW) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteStore]:
    s = profiles.fill_store(tmp_path_factory.mktemp("store") / "kiln.db")
    yield s
    s.close()


AppFactory = Callable[..., Flask]


@pytest.fixture(scope="module")
def make_app(store: SqliteStore) -> AppFactory:
    def factory(token: str | None = None, **kwargs: Any) -> Flask:
        kwargs.setdefault("agent_status", agent_status)
        kwargs.setdefault("clock_ns", Clock())
        return create_app(store, token=token, **kwargs)

    return factory


@pytest.fixture(scope="module")
def app(make_app: AppFactory) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# -- a real server and a real browser -------------------------------------


class LiveServer:
    def __init__(self, app: Flask) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def live_server(app: Flask) -> Iterator[LiveServer]:
    server = LiveServer(app)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    # Screenshots are test output, never committed.
    (ARTIFACTS / ".gitignore").write_text("*\n")
    return ARTIFACTS
