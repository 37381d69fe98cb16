"""Grafana Pyroscope transport: `POST /push.v1.PusherService/Push` (Connect, protobuf).

One request per batch: `PushRequest{series: [RawProfileSeries{labels,
samples: [RawSample{raw_profile, ID}]}]}` (schema in
`profiler.export.proto.pyroscope_push`), sent as a Connect unary call
(`Content-Type: application/proto`) to the server's HTTP port (4040 by
default).

What Pyroscope requires, and how Kiln meets it (facts from Pyroscope's
distributor and validation code):

* Series labels: `__name__` (`process_cpu`, so the UI lists the profile
  as process CPU) and `service_name` — required: the resource's
  `service.name` (which an OTTL rule may set per process), else the
  configured one, else `unknown_service` — plus the batch's other resource
  attributes with dots turned into underscores (`host.name` → `host_name`).
  Samples are grouped into one series per distinct set.
* Pyroscope turns each pprof sample's *string* labels into series labels
  (its numeric ones, here `pid`, `tid` and `cpu`, stay on the sample), and
  refuses a series with more than 30 label names: each sample keeps as
  many string labels as fit (`comm`, `exe`, `container`, `cgroup` first,
  then the rest by name); the ones left out are counted and logged.
* A profile may be at most 4 MiB uncompressed and hold at most 16,000
  samples, else the whole push is refused: a series' samples are split
  over as many profiles as needed. A single sample too large on its own
  is dropped, and counted as rejected with the reason.
* Raw profiles are gzipped pprof (`symbolizer.pprof`) when gzip is on; the
  request itself is not compressed again.

Errors: Connect answers with an HTTP status and a JSON body
`{"code": ..., "message": ...}`; 429/502/503/504 and the retryable codes
are worth retrying (Retry-After honored), anything else is final.
"""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from profiler.export.api import ExportBatch, SendResult
from profiler.export.proto import pyroscope_push_pb2 as push
from profiler.export.transports import (
    HttpPoster,
    HttpResponse,
    Settings,
    connection_failed,
    http_result,
    http_target,
    pprof_chunks,
    prometheus_name,
    resource_of,
    series_labels,
    stable_id,
)
from symbolizer import otlp, pprof
from symbolizer.profile import Labels

log = logging.getLogger("kiln.export.pyroscope")

PUSH_PATH = "/push.v1.PusherService/Push"
PROFILE_NAME = "process_cpu"
DEFAULT_SERVICE = "unknown_service"
MAX_LABELS = 30
MAX_PROFILE_BYTES = 4 << 20
MAX_PROFILE_SAMPLES = 16_000
LABEL_ORDER = ("comm", "exe", "container", "cgroup")
"""Sample labels kept first when a series has room for only some."""
RETRYABLE_CODES = frozenset(
    {"unavailable", "resource_exhausted", "deadline_exceeded", "aborted", "canceled"}
)


@dataclass
class PushPlan:
    """A batch as Pyroscope will get it, and what had to be left out."""

    request: push.PushRequest
    dropped_samples: int = 0
    dropped_labels: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)


class PyroscopeTransport:
    name = "pyroscope"

    def __init__(
        self,
        settings: Settings,
        *,
        profile_name: str = PROFILE_NAME,
        max_labels: int = MAX_LABELS,
        max_profile_bytes: int = MAX_PROFILE_BYTES,
        max_profile_samples: int = MAX_PROFILE_SAMPLES,
    ) -> None:
        self.settings = settings
        self.profile_name = profile_name
        self.max_labels = max_labels
        self.max_profile_bytes = max_profile_bytes
        self.max_profile_samples = max_profile_samples
        self.target = http_target(settings.endpoint, PUSH_PATH, settings, what="Pyroscope")
        self._poster = HttpPoster(self.target, settings)
        self._warned_labels: set[str] = set()

    def plan(self, batch: ExportBatch) -> PushPlan:
        """The PushRequest for `batch` (see the module docstring)."""
        profile = batch.profile
        base = resource_of(batch.resource, self.settings)
        per_label: dict[int, tuple[tuple[tuple[str, str], ...], Labels]] = {}
        series: dict[tuple[tuple[str, str], ...], list[tuple[int, Labels, int]]] = {}
        plan = PushPlan(push.PushRequest())
        for (sid, lid), n in sorted(profile.counts.items()):
            if n <= 0:
                continue
            split = per_label.get(lid)
            if split is None:
                split = per_label[lid] = self._split(profile.label_sets[lid], base, plan)
            key, labels = split
            series.setdefault(key, []).append((sid, labels, n))
        for key, samples in series.items():
            chunked = pprof_chunks(
                profile,
                samples,
                pprof.encode,
                max_bytes=self.max_profile_bytes,
                max_samples=self.max_profile_samples,
                compress=self.settings.gzip,
            )
            plan.dropped_samples += chunked.dropped_samples
            plan.reasons.extend(chunked.reasons)
            if not chunked.profiles:
                continue
            s = plan.request.series.add()
            for name, value in key:
                s.labels.add(name=name, value=value)
            for data in chunked.profiles:
                s.samples.add(raw_profile=data, ID=stable_id(key, data))
        return plan

    def _split(
        self, labels: Labels, base: Mapping[str, str], plan: PushPlan
    ) -> tuple[tuple[tuple[str, str], ...], Labels]:
        """(series labels, pprof sample labels) for one label set."""
        resource, _ = otlp.split_labels(labels, base)
        named = series_labels(resource)
        service = named.pop("service_name", "") or DEFAULT_SERVICE
        head = {"__name__": self.profile_name, "service_name": service}
        rest = sorted(named.items())
        room = max(0, self.max_labels - len(head))
        plan.dropped_labels.update(name for name, _ in rest[room:])
        series = tuple(sorted({**dict(rest[:room]), **head}.items()))

        numeric: list[tuple[str, str]] = []
        strings: list[tuple[str, str]] = []
        for key, value in labels:
            if key.startswith(otlp.RESOURCE_PREFIX):
                continue  # already in the series labels
            if key in pprof.NUMERIC_LABELS and isinstance(otlp.typed(key, value), int):
                numeric.append((key, value))  # written as a number: not a series label
            else:
                strings.append((prometheus_name(key), value))
        strings.sort(key=_label_rank)
        room = max(0, self.max_labels - len(series))
        taken = {name for name, _ in series}
        kept: dict[str, str] = {}
        for name, value in strings:
            if name in kept or name in taken:
                continue  # Pyroscope keeps the series' own label on a clash
            if len(kept) < room:
                kept[name] = value
            else:
                plan.dropped_labels.add(name)
                if name not in self._warned_labels:
                    self._warned_labels.add(name)
                    log.warning(
                        "Pyroscope allows %d labels a series: label %r left out of some samples",
                        self.max_labels,
                        name,
                    )
        return series, tuple(sorted([*numeric, *kept.items()]))

    prepare = plan

    def request_bytes(self, plan: PushPlan) -> int:
        return plan.request.ByteSize()

    def send(self, batch: ExportBatch, timeout_s: float) -> SendResult:
        return self.deliver(self.plan(batch), batch, timeout_s)

    def deliver(self, plan: PushPlan, batch: ExportBatch, timeout_s: float) -> SendResult:
        reason = "; ".join(dict.fromkeys(plan.reasons))
        if not plan.request.series:
            return SendResult(ok=True, rejected=plan.dropped_samples, error=reason)
        timeout = self.settings.attempt_timeout(timeout_s)
        headers = {
            "Content-Type": "application/proto",
            "Connect-Protocol-Version": "1",
            "Connect-Timeout-Ms": str(max(1, int(timeout * 1000))),
        }
        where = f"Pyroscope {self.target.url}"
        try:
            resp = self._poster.post(plan.request.SerializeToString(), headers, timeout)
        except (OSError, http.client.HTTPException) as e:
            return connection_failed(where, e)
        if 200 <= resp.status < 300:
            return SendResult(ok=True, rejected=plan.dropped_samples, error=reason)
        result = http_result(resp, where, detail=_connect_message)
        code = _connect_code(resp)
        if not result.retryable and code in RETRYABLE_CODES:
            return SendResult(ok=False, retryable=True, error=result.error)
        return result

    def close(self) -> None:
        pass


def _label_rank(item: tuple[str, str]) -> tuple[int, str]:
    name = item[0]
    return (LABEL_ORDER.index(name) if name in LABEL_ORDER else len(LABEL_ORDER), name)


def _connect_error(resp: HttpResponse) -> dict[str, object]:
    if "json" not in resp.headers.get("content-type", ""):
        return {}
    try:
        body = json.loads(resp.body)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _connect_code(resp: HttpResponse) -> str:
    return str(_connect_error(resp).get("code", ""))


def _connect_message(resp: HttpResponse) -> str:
    err = _connect_error(resp)
    if not err:
        return resp.body[:300].decode("utf-8", "replace").strip()
    code, message = err.get("code", ""), err.get("message", "")
    return f"{code}: {message}" if code else str(message)
