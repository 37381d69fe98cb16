"""Parca transport: gRPC `parca.profilestore.v1alpha1.ProfileStoreService/WriteRaw`.

One call per batch: `WriteRawRequest{series: [RawProfileSeries{labels:
LabelSet{labels}, samples: [RawSample{raw_profile}]}], normalized: false}`
(schema in `profiler.export.proto.parca_profilestore`), to the server's
gRPC port (7070 by default).

What Parca requires, and how Kiln meets it (facts from Parca's normalizer):

* a `__name__` series label, the profile's name: `process_cpu`; the
  batch's resource attributes become the other series labels
  (`service_name`, `host_name`, ...), one series per distinct set;
* Prometheus-valid label names, else the whole write is refused: names
  are sanitized (`host.name` → `host_name`);
* only *string* pprof labels become labels, so `pid`, `tid` and `cpu`
  are sent as strings (Kiln's pprof writer makes them numbers);
* mapping, function and location ids numbered 1..n in order (Kiln's pprof
  writer does; each profile is rebuilt with only what its samples use);
* sample types `samples/count` and `cpu/nanoseconds` with the period and
  a duration: Parca files each as a delta profile
  (`process_cpu:samples:count:cpu:nanoseconds:delta`);
* `normalized: false`: Kiln's addresses are runtime addresses with their
  mappings, which Parca normalizes itself.

Raw profiles are gzipped when gzip is on (Parca recognizes the gzip
magic); the gRPC message is not compressed again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc

from profiler.export.api import ExportBatch, SendResult
from profiler.export.proto import parca_profilestore_pb2 as ps
from profiler.export.transports import (
    Settings,
    grpc_channel,
    grpc_metadata,
    grpc_result,
    grpc_target,
    pprof_chunks,
    prometheus_name,
    resource_of,
    series_labels,
)
from symbolizer import otlp, pprof
from symbolizer.profile import Labels, Profile

log = logging.getLogger("kiln.export.parca")

WRITE_RAW_METHOD = "/parca.profilestore.v1alpha1.ProfileStoreService/WriteRaw"
GRPC_PORT = 7070
PROFILE_NAME = "process_cpu"
MAX_PROFILE_BYTES = 16 << 20
"""Per pprof profile before compression: well inside Parca's 64 MiB gRPC limit
once gzipped, and small enough to decode without a memory spike."""


def encode_pprof(profile: Profile) -> bytes:
    """pprof bytes with every numeric label turned into a string label."""
    msg = pprof.to_message(profile)
    strings = {s: i for i, s in enumerate(msg.string_table)}

    def intern(s: str) -> int:
        idx = strings.get(s)
        if idx is None:
            idx = strings[s] = len(msg.string_table)
            msg.string_table.append(s)
        return idx

    for sample in msg.sample:
        for label in sample.label:
            if not label.str and (label.num or label.num_unit):
                label.str = intern(str(label.num))
                label.num = 0
                label.num_unit = 0
    return msg.SerializeToString(deterministic=True)


class ParcaTransport:
    name = "parca"

    def __init__(
        self,
        settings: Settings,
        *,
        profile_name: str = PROFILE_NAME,
        max_profile_bytes: int = MAX_PROFILE_BYTES,
    ) -> None:
        self.settings = settings
        self.profile_name = profile_name
        self.max_profile_bytes = max_profile_bytes
        self.target, self.tls = grpc_target(settings.endpoint, GRPC_PORT, settings, what="Parca")
        self._metadata = grpc_metadata(settings)
        self._channel: grpc.Channel | None = None
        self._write: (
            grpc.UnaryUnaryMultiCallable[ps.WriteRawRequest, ps.WriteRawResponse] | None
        ) = None

    def build(self, batch: ExportBatch) -> tuple[ps.WriteRawRequest, int, list[str]]:
        """(the WriteRawRequest for `batch`, samples left out, why)."""
        profile = batch.profile
        base = resource_of(batch.resource, self.settings)
        per_label: dict[int, tuple[tuple[tuple[str, str], ...], Labels]] = {}
        series: dict[tuple[tuple[str, str], ...], list[tuple[int, Labels, int]]] = {}
        for (sid, lid), n in sorted(profile.counts.items()):
            if n <= 0:
                continue
            split = per_label.get(lid)
            if split is None:
                split = per_label[lid] = self._split(profile.label_sets[lid], base)
            key, labels = split
            series.setdefault(key, []).append((sid, labels, n))
        req = ps.WriteRawRequest(normalized=False)
        dropped = 0
        reasons: list[str] = []
        for key, samples in series.items():
            chunked = pprof_chunks(
                profile,
                samples,
                encode_pprof,
                max_bytes=self.max_profile_bytes,
                max_samples=max(1, len(samples)),
                compress=self.settings.gzip,
            )
            dropped += chunked.dropped_samples
            reasons.extend(chunked.reasons)
            if not chunked.profiles:
                continue
            s = req.series.add()
            for name, value in key:
                s.labels.labels.add(name=name, value=value)
            for data in chunked.profiles:
                s.samples.add(raw_profile=data)
        return req, dropped, reasons

    def _split(
        self, labels: Labels, base: Mapping[str, str]
    ) -> tuple[tuple[tuple[str, str], ...], Labels]:
        resource, _ = otlp.split_labels(labels, base)
        named = series_labels(resource)
        named["__name__"] = self.profile_name
        sample: dict[str, str] = {}
        for key, value in labels:
            if not key.startswith(otlp.RESOURCE_PREFIX):
                sample.setdefault(prometheus_name(key), value)
        return tuple(sorted(named.items())), tuple(sorted(sample.items()))

    def _call(self) -> grpc.UnaryUnaryMultiCallable[ps.WriteRawRequest, ps.WriteRawResponse]:
        if self._write is None:
            self._channel = grpc_channel(self.target, self.tls, self.settings)
            self._write = self._channel.unary_unary(
                WRITE_RAW_METHOD,
                request_serializer=ps.WriteRawRequest.SerializeToString,
                response_deserializer=ps.WriteRawResponse.FromString,
            )
        return self._write

    prepare = build

    def request_bytes(self, built: tuple[ps.WriteRawRequest, int, list[str]]) -> int:
        return built[0].ByteSize()

    def send(self, batch: ExportBatch, timeout_s: float) -> SendResult:
        return self.deliver(self.build(batch), batch, timeout_s)

    def deliver(
        self,
        built: tuple[ps.WriteRawRequest, int, list[str]],
        batch: ExportBatch,
        timeout_s: float,
    ) -> SendResult:
        req, dropped, reasons = built
        reason = "; ".join(dict.fromkeys(reasons))
        if not req.series:
            return SendResult(ok=True, rejected=dropped, error=reason)
        try:
            self._call()(
                req, timeout=self.settings.attempt_timeout(timeout_s), metadata=self._metadata
            )
        except grpc.RpcError as e:
            return grpc_result(e, f"Parca {self.target}")
        return SendResult(ok=True, rejected=dropped, error=reason)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._write = None
