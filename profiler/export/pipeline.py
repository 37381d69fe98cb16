"""The daemon's exporters: config -> transport + OTTL rules + delivery thread.

`ExportPipeline.submit(window)` runs on the window loop: for each exporter
it applies the exporter's OTTL filter and transform and queues the result
(never blocking on the network; see profiler.export.exporter). `replace`
swaps the exporter set between windows: exporters whose configuration did
not change keep their queue and connection, changed or removed ones drain
and stop, new ones start. `validate` builds everything a configuration
names without starting anything, so a bad rule or endpoint is refused
before the running exporters are touched.
"""

from __future__ import annotations

import itertools
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from profiler.config import ExporterConfig
from profiler.export.api import ExportBatch, Transport
from profiler.export.delivery import DeliveryConfig
from profiler.export.exporter import Exporter
from profiler.export.rules import Rules, apply_rules, compile_rules
from profiler.export.split import SplitRequests
from profiler.export.transports import make_transport
from profiler.ottl import OttlError
from symbolizer.profile import Profile

log = logging.getLogger("kiln.export")

DRAIN_S = 5.0


@dataclass
class _Running:
    config: ExporterConfig
    rules: Rules
    exporter: Exporter
    dropped_by_rules: int = 0


def compile_exporter_rules(config: ExporterConfig) -> Rules:
    """Both rule sets of one exporter (each with its own error mode)."""
    f = compile_rules(filter=config.filter.conditions, error_mode=config.filter.error_mode)
    t = compile_rules(transform=config.transform.statements, error_mode=config.transform.error_mode)
    return Rules(f.filter, t.transform)


def validate(configs: Sequence[ExporterConfig]) -> list[str]:
    """Every problem of these exporter configs (rules, endpoints), none started."""
    problems = []
    for c in configs:
        try:
            compile_exporter_rules(c)
        except OttlError as e:
            problems.append(f"exporters.{c.name}: {e}")
        try:
            _transport(c).close()
        except (ValueError, OSError) as e:
            problems.append(f"exporters.{c.name}.endpoint: {e}")
    return problems


def _transport(c: ExporterConfig) -> Transport:
    inner = make_transport(
        c.type,
        endpoint=c.endpoint,
        headers=dict(c.headers),
        bearer_token=c.bearer_token,
        ca_file=c.ca_file,
        insecure=c.insecure,
        gzip=c.gzip,
        timeout_s=c.timeout,
        service_name=c.service_name,
    )
    return SplitRequests(inner, c.max_request_bytes)


class ExportPipeline:
    def __init__(self, configs: Sequence[ExporterConfig] = ()) -> None:
        self._running: dict[str, _Running] = {}
        self._ids = itertools.count(1)
        self.resource = {"host.name": socket.gethostname(), "service.name": "kiln"}
        self.replace(configs)

    def replace(self, configs: Sequence[ExporterConfig]) -> None:
        wanted = {c.name: c for c in configs}
        for name in list(self._running):
            if name not in wanted or wanted[name] != self._running[name].config:
                old = self._running.pop(name)
                old.exporter.stop(DRAIN_S)
                log.info("exporter stopped", extra={"fields": {"exporter": name}})
        for name, c in wanted.items():
            if name in self._running:
                continue
            delivery = DeliveryConfig(
                max_queued_batches=c.queue_batches, attempt_timeout_s=c.timeout
            )
            exporter = Exporter(name, _transport(c), delivery)
            exporter.start()
            self._running[name] = _Running(c, compile_exporter_rules(c), exporter)
            log.info(
                "exporter started",
                extra={"fields": {"exporter": name, "type": c.type, "endpoint": c.endpoint}},
            )

    def submit(self, window: Profile) -> None:
        if not window.counts:
            return
        for run in self._running.values():
            try:
                profile, dropped = (
                    apply_rules(
                        window,
                        self.resource,
                        filter=run.rules.filter,
                        transform=run.rules.transform,
                    )
                    if run.rules
                    else (window, 0)
                )
            except OttlError as e:  # error_mode propagate: this window is not exported
                run.dropped_by_rules += window.total_samples
                log.error(
                    "OTTL rules failed",
                    extra={"fields": {"exporter": run.config.name, "error": str(e)}},
                )
                continue
            run.dropped_by_rules += dropped
            batch = ExportBatch(
                batch_id=next(self._ids),
                profile=profile,
                start_ns=window.start_ns,
                duration_ns=window.duration_ns,
                samples=profile.total_samples,
                resource=dict(self.resource),
            )
            run.exporter.submit(batch)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for run in self._running.values():
            s = run.exporter.status()
            s["type"] = run.config.type
            s["endpoint"] = run.config.endpoint
            s["dropped_by_rules"] = run.dropped_by_rules
            # The UI's summary columns.
            s["sent"] = s.get("delivered_batches", 0)
            s["failed"] = s.get("failures", 0)
            out.append(s)
        return out

    def stop(self) -> None:
        for run in self._running.values():
            run.exporter.stop(DRAIN_S)
        self._running.clear()
