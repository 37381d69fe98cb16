"""The agent's own status, as the daemon hands it to the UI.

`create_app(agent_status=...)` takes a callable returning a mapping; the
keys below are the ones the agent page and /metrics know, all optional.
Other keys with plain values are shown on the agent page as they are.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from profiler.store.api import ProfileSource, StoreError, StoreStats

log = logging.getLogger("kiln.web")


class ExporterStatus(TypedDict, total=False):
    name: str
    state: str  # "ok", "failing", "disabled", ...
    sent: int
    failed: int
    last_error: str


class AgentStatus(TypedDict, total=False):
    version: str
    uptime_seconds: float
    frequency_hz: float
    samples_per_second: float
    samples_total: int
    lost_samples: Mapping[str, int]  # reason -> count (map full, ring buffer full, ...)
    cpu_percent: float  # of one core, the agent's own
    rss_bytes: int
    windows_written: int
    exporters: list[ExporterStatus]
    remote_control: Mapping[str, str]  # e.g. {"state": "connected", "endpoint": "..."}


def read_status(agent_status: Callable[[], Mapping[str, Any]] | None) -> dict[str, Any]:
    """The status as JSON-safe data; a failing callable gives {"error": ...}."""
    if agent_status is None:
        return {}
    try:
        raw = agent_status()
    except Exception as e:  # the page must still render whatever the agent does
        log.warning("agent status failed: %s", e)
        return {"error": f"agent status unavailable: {e}"}
    out = _json_safe(raw, depth=0)
    return out if isinstance(out, dict) else {"error": "agent status is not a mapping"}


def read_store_stats(source: ProfileSource) -> tuple[StoreStats | None, str | None]:
    try:
        return source.stats(), None
    except StoreError as e:
        return None, str(e)
    except Exception as e:  # a broken store must not break /metrics or the agent page
        log.warning("store stats failed: %s", e)
        return None, f"{type(e).__name__}: {e}"


def _json_safe(value: object, depth: int) -> Any:
    if depth > 6:
        return str(value)
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in value]
    return str(value)
