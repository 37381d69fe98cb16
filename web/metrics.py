"""Kiln's own health: Prometheus text at /metrics, liveness at /healthz."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Blueprint, Response, jsonify

from profiler.store.api import StoreStats
from web.agent_status import read_status, read_store_stats
from web.state import web_state

bp = Blueprint("metrics", __name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")

# Agent status keys exported as gauges: key -> (metric, help).
_GAUGES = {
    "uptime_seconds": ("kiln_agent_uptime_seconds", "Seconds since the agent started."),
    "frequency_hz": ("kiln_agent_sampling_frequency_hz", "Sampling frequency per CPU."),
    "samples_per_second": ("kiln_agent_samples_per_second", "Samples taken per second, recently."),
    "cpu_percent": ("kiln_agent_cpu_percent", "The agent's own CPU use, % of one core."),
    "rss_bytes": ("kiln_agent_resident_bytes", "The agent's resident memory."),
}
_COUNTERS = {
    "samples_total": ("kiln_agent_samples_total", "Samples taken since the agent started."),
    "windows_written": ("kiln_agent_windows_written_total", "Profile windows written."),
}


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help_: str, samples: Iterable[tuple[Mapping[str, str], float]]
    ) -> None:
        rows = list(samples)
        if not rows:
            return
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in rows:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{_NAME_UNSAFE.sub("_", k)}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    return None


def render(status: Mapping[str, Any], stats: StoreStats | None) -> str:
    """The Prometheus text exposition of the agent status and store stats (None
    when the store cannot answer: kiln_store_up 0; the reason is on the agent page)."""
    w = _Writer()
    w.metric("kiln_up", "gauge", "1 while the Kiln web UI answers.", [({}, 1)])
    version = status.get("version")
    if isinstance(version, str):
        w.metric("kiln_build_info", "gauge", "Kiln's version.", [({"version": version}, 1)])
    for key, (name, help_) in _GAUGES.items():
        value = _num(status.get(key))
        if value is not None:
            w.metric(name, "gauge", help_, [({}, value)])
    for key, (name, help_) in _COUNTERS.items():
        value = _num(status.get(key))
        if value is not None:
            w.metric(name, "counter", help_, [({}, value)])
    lost = status.get("lost_samples")
    if isinstance(lost, Mapping):
        rows = [({"reason": str(k)}, v) for k, v in lost.items() if _num(v) is not None]
        w.metric("kiln_agent_lost_samples_total", "counter", "Samples lost, by reason.", rows)
    exporters = status.get("exporters")
    if isinstance(exporters, list):
        up, sent, failed = [], [], []
        for e in exporters:
            if not isinstance(e, Mapping) or not isinstance(e.get("name"), str):
                continue
            labels = {"exporter": e["name"]}
            up.append((labels, 1 if e.get("state") == "ok" else 0))
            if (n := _num(e.get("sent"))) is not None:
                sent.append((labels, n))
            if (n := _num(e.get("failed"))) is not None:
                failed.append((labels, n))
        w.metric("kiln_exporter_up", "gauge", "1 when the exporter's last export worked.", up)
        w.metric("kiln_exporter_sent_total", "counter", "Profiles exported.", sent)
        w.metric("kiln_exporter_failed_total", "counter", "Failed exports.", failed)
    w.metric(
        "kiln_agent_status_up",
        "gauge",
        "1 when the agent status could be read.",
        [({}, 0 if "error" in status else 1)],
    )

    w.metric(
        "kiln_store_up", "gauge", "1 when the store answers.", [({}, 0 if stats is None else 1)]
    )
    if stats is not None:
        w.metric("kiln_store_bytes", "gauge", "Store size on disk.", [({}, stats.bytes_on_disk)])
        w.metric("kiln_store_windows", "gauge", "Profile windows kept.", [({}, stats.windows)])
        w.metric("kiln_store_samples", "gauge", "Samples kept.", [({}, stats.samples)])
        w.metric(
            "kiln_store_schema_version",
            "gauge",
            "Store schema version.",
            [({}, stats.schema_version)],
        )
        w.metric(
            "kiln_store_write_errors_total",
            "counter",
            "Windows that could not be written (disk full, ...).",
            [({}, stats.write_errors)],
        )
        if stats.windows:
            w.metric(
                "kiln_store_oldest_timestamp_seconds",
                "gauge",
                "Start of the oldest data.",
                [({}, stats.oldest_ns / 1e9)],
            )
            w.metric(
                "kiln_store_newest_timestamp_seconds",
                "gauge",
                "End of the newest data.",
                [({}, stats.newest_ns / 1e9)],
            )
    return "\n".join(w.lines) + "\n"


@bp.get("/metrics")
def metrics() -> Response:
    state = web_state()
    stats, _ = read_store_stats(state.source)
    body = render(read_status(state.agent_status), stats)
    return Response(body, content_type=CONTENT_TYPE)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness only: answers without the token and shows no data."""
    return jsonify({"status": "ok"})
