"""The VM test's marker (registered here, like tests/web's `browser`)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vm: boots a Debian 12 VM under KVM and installs Kiln in it (make vm-test)"
    )
