"""Shared fixtures: building C fixtures at test time, and the BPF gate.

Tests marked `bpf` need root and a BPF-capable kernel. Outside CI they skip
with the reason; with CI=true a missing capability is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def bpf_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for BPF and perf events"
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        return f"BCC's Python bindings are not importable ({e})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = bpf_unavailable_reason()
    for item in items:
        if "/bpf/" in str(item.fspath):
            item.add_marker(pytest.mark.bpf)
            if reason is not None:
                if IN_CI:
                    item.user_properties.append(("bpf_missing", reason))  # fails in the fixture
                else:
                    item.add_marker(pytest.mark.skip(reason=f"not in CI: {reason}"))


@pytest.fixture(autouse=True)
def _bpf_missing_fails_in_ci(request: pytest.FixtureRequest) -> None:
    for key, reason in request.node.user_properties:
        if key == "bpf_missing":
            pytest.fail(f"BPF test cannot run with CI=true: {reason}")


def build_c(tmp_dir: Path, source: str, out_name: str, *flags: str) -> Path:
    """Compile a checked-in C fixture into tmp_dir; never a committed binary."""
    cc = shutil.which("gcc") or "cc"
    out = tmp_dir / out_name
    subprocess.run([cc, *flags, str(FIXTURES / source), "-o", str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def fixture_build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fixtures")


def skip_outside_ci(reason: str) -> NoReturn:
    """Skip for a missing tool or feature, but only outside CI: with CI=true the
    machine is set up by `make deps`, so the same condition is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the set-up must provide it)")
    pytest.skip(f"{reason} (would fail in CI)")


# -- a real browser (the UI's tests and the daemon's) ----------------------

CHROMIUM = Path("/usr/bin/chromium")


def browser_unavailable_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return f"Playwright is not installed ({e})"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for one test module. Not longer: Playwright's sync
    API keeps an asyncio loop running in the main thread while it is open,
    and libraries with sync APIs over asyncio (pyroute2) cannot start their
    own then."""
    reason = browser_unavailable_reason()
    if reason is not None:
        skip_outside_ci(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            # Root in a container has no user namespaces for Chromium's sandbox.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
