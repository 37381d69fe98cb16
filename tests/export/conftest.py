"""Fixtures shared by the exporter tests."""

from __future__ import annotations

import pytest

from tests.conftest import skip_outside_ci
from tests.export.receivers import Pki, make_ca


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA and server certificate for the TLS round trips."""
    found = make_ca(tmp_path_factory.mktemp("pki"))
    if found is None:
        skip_outside_ci("neither the cryptography package nor the openssl CLI is available")
    return found
