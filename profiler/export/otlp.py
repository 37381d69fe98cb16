"""OTLP Profiles transports: gRPC `ProfilesService/Export` and HTTP/protobuf.

Both send `symbolizer.otlp.to_request(batch.profile, resource)` (one
ResourceProfiles per process, one shared dictionary; see that module), as
opentelemetry-proto v1.10 (`opentelemetry-proto==1.45.*`) defines it:

* gRPC: `opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export`
  (default port 4317), gzip as gRPC message compression;
* HTTP: `POST <endpoint>/v1development/profiles` (default port 4318),
  `Content-Type: application/x-protobuf`, gzip as `Content-Encoding`.

A response with `partial_success.rejected_profiles` is a success with
rejected samples: OTLP counts rejected profiles, not samples, so the
samples are estimated as that share of the batch (all of it when every
profile was rejected).
"""

from __future__ import annotations

import gzip
import http.client
import logging

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

from profiler.export.api import ExportBatch, SendResult
from profiler.export.transports import (
    HttpPoster,
    Settings,
    connection_failed,
    grpc_channel,
    grpc_metadata,
    grpc_result,
    grpc_target,
    http_result,
    http_target,
    resource_of,
    status_message,
)
from symbolizer import otlp

log = logging.getLogger("kiln.export.otlp")

EXPORT_METHOD = "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export"
HTTP_PATH = "/v1development/profiles"
GRPC_PORT = 4317
CONTENT_TYPE = "application/x-protobuf"
SCOPE_VERSION = "0.1.0"


def build_request(
    batch: ExportBatch, settings: Settings, group_by: otlp.GroupBy = "process"
) -> svc.ExportProfilesServiceRequest:
    return otlp.to_request(
        batch.profile,
        resource_of(batch.resource, settings),
        group_by=group_by,
        scope_version=SCOPE_VERSION,
        part=batch.part,
    )


def partial_result(
    response: svc.ExportProfilesServiceResponse, batch: ExportBatch, n_profiles: int
) -> SendResult:
    """An accepted export, with what the server says it rejected."""
    if not response.HasField("partial_success"):
        return SendResult(ok=True)
    ps = response.partial_success
    rejected = 0
    if ps.rejected_profiles > 0:
        if n_profiles <= 0 or ps.rejected_profiles >= n_profiles:
            rejected = batch.samples
        else:
            rejected = min(batch.samples, round(batch.samples * ps.rejected_profiles / n_profiles))
    if ps.error_message and not rejected:
        log.warning("OTLP receiver accepted the batch with a warning: %s", ps.error_message)
    return SendResult(ok=True, rejected=rejected, error=ps.error_message)


class OtlpGrpcTransport:
    """`ProfilesService/Export` over gRPC, one channel kept for the transport's life."""

    name = "otlp_grpc"

    def __init__(self, settings: Settings, *, group_by: otlp.GroupBy = "process") -> None:
        self.settings = settings
        self.group_by: otlp.GroupBy = group_by
        self.target, self.tls = grpc_target(
            settings.endpoint, GRPC_PORT, settings, what="OTLP gRPC"
        )
        self._metadata = grpc_metadata(settings)
        self._channel: grpc.Channel | None = None
        self._export: (
            grpc.UnaryUnaryMultiCallable[
                svc.ExportProfilesServiceRequest, svc.ExportProfilesServiceResponse
            ]
            | None
        ) = None

    def _call(
        self,
    ) -> grpc.UnaryUnaryMultiCallable[
        svc.ExportProfilesServiceRequest, svc.ExportProfilesServiceResponse
    ]:
        if self._export is None:
            self._channel = grpc_channel(self.target, self.tls, self.settings)
            self._export = self._channel.unary_unary(
                EXPORT_METHOD,
                request_serializer=svc.ExportProfilesServiceRequest.SerializeToString,
                response_deserializer=svc.ExportProfilesServiceResponse.FromString,
            )
        return self._export

    def prepare(self, batch: ExportBatch) -> svc.ExportProfilesServiceRequest:
        return build_request(batch, self.settings, self.group_by)

    def request_bytes(self, request: svc.ExportProfilesServiceRequest) -> int:
        return request.ByteSize()

    def send(self, batch: ExportBatch, timeout_s: float) -> SendResult:
        return self.deliver(self.prepare(batch), batch, timeout_s)

    def deliver(
        self, req: svc.ExportProfilesServiceRequest, batch: ExportBatch, timeout_s: float
    ) -> SendResult:
        n_profiles = len(req.resource_profiles)
        if not n_profiles:
            return SendResult(ok=True)
        try:
            response = self._call()(
                req,
                timeout=self.settings.attempt_timeout(timeout_s),
                metadata=self._metadata,
                compression=grpc.Compression.Gzip if self.settings.gzip else None,
            )
        except grpc.RpcError as e:
            return grpc_result(e, f"OTLP gRPC {self.target}")
        return partial_result(response, batch, n_profiles)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._export = None


class OtlpHttpTransport:
    """`POST /v1development/profiles` with a protobuf body."""

    name = "otlp_http"

    def __init__(self, settings: Settings, *, group_by: otlp.GroupBy = "process") -> None:
        self.settings = settings
        self.group_by: otlp.GroupBy = group_by
        self.target = http_target(settings.endpoint, HTTP_PATH, settings, what="OTLP HTTP")
        self._poster = HttpPoster(self.target, settings)

    def prepare(self, batch: ExportBatch) -> svc.ExportProfilesServiceRequest:
        return build_request(batch, self.settings, self.group_by)

    def request_bytes(self, request: svc.ExportProfilesServiceRequest) -> int:
        return request.ByteSize()

    def send(self, batch: ExportBatch, timeout_s: float) -> SendResult:
        return self.deliver(self.prepare(batch), batch, timeout_s)

    def deliver(
        self, req: svc.ExportProfilesServiceRequest, batch: ExportBatch, timeout_s: float
    ) -> SendResult:
        n_profiles = len(req.resource_profiles)
        if not n_profiles:
            return SendResult(ok=True)
        body = req.SerializeToString()
        headers = {"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE}
        if self.settings.gzip:
            body = gzip.compress(body, 6)
            headers["Content-Encoding"] = "gzip"
        where = f"OTLP HTTP {self.target.url}"
        try:
            resp = self._poster.post(body, headers, self.settings.attempt_timeout(timeout_s))
        except (OSError, http.client.HTTPException) as e:
            return connection_failed(where, e)
        if not 200 <= resp.status < 300:
            return http_result(resp, where, detail=status_message)
        try:
            response = svc.ExportProfilesServiceResponse.FromString(resp.body)
        except DecodeError:
            # Accepted; a body we cannot read says nothing about rejections.
            return SendResult(ok=True)
        return partial_result(response, batch, n_profiles)

    def close(self) -> None:
        pass
