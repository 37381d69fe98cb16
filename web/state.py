"""What the app's views share: the profile source, auth settings, the clock."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from flask import current_app

from profiler.store.api import ProfileSource
from web.profile_cache import ProfileCache

VENDOR_MANIFEST = Path(__file__).parent / "static" / "vendor" / "manifest.json"


@dataclass(frozen=True)
class Vendor:
    """Versions of the vendored JavaScript and the CSP hashes it needs."""

    versions: Mapping[str, str] = field(default_factory=dict)
    style_hashes: tuple[str, ...] = ()
    missing: bool = True

    @classmethod
    def load(cls, path: Path = VENDOR_MANIFEST) -> Vendor:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        hashes = tuple(str(h) for h in data.get("style_hashes", ()))
        versions = {k: str(v) for k, v in data.items() if k != "style_hashes"}
        return cls(versions, hashes, missing=False)


@dataclass(frozen=True)
class WebState:
    source: ProfileSource
    token: str | None
    agent_status: Callable[[], Mapping[str, Any]] | None
    clock_ns: Callable[[], int]
    cache: ProfileCache
    vendor: Vendor


EXTENSION = "kiln"


def web_state() -> WebState:
    return cast(WebState, current_app.extensions[EXTENSION])
