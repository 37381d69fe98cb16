"""OTLP transports against real receivers: gRPC ProfilesService and OTLP/HTTP."""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

from profiler.export.api import ExportBatch, Transport
from profiler.export.transports import make_transport
from symbolizer import otlp
from symbolizer.profile import Profile
from tests.export.receivers import (
    LOOPBACK,
    CountingProxy,
    GrpcFailure,
    HttpReceiver,
    HttpReply,
    OtlpGrpcReceiver,
    Pki,
    make_ca,
    status_details,
)
from tests.export.workload import HOT, RESOURCE, batch_of, share, workload


@pytest.fixture(scope="module")
def batch() -> ExportBatch:
    return batch_of(workload())


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@contextmanager
def transport(kind: str, endpoint: str, **kw: object) -> Iterator[Transport]:
    t = make_transport(kind, endpoint=endpoint, **kw)  # type: ignore[arg-type]
    try:
        yield t
    finally:
        t.close()


def check_arrived(req: svc.ExportProfilesServiceRequest, batch: ExportBatch) -> None:
    assert otlp.validate_request(req) == []
    samples = list(otlp.iter_samples(req))
    assert sum(s.count for s in samples) == batch.samples
    assert share(((f.function for f in s.frames), s.count) for s in samples) == pytest.approx(0.4)
    hot = next(s for s in samples if any(f.function == HOT for f in s.frames))
    assert hot.resource["service.name"] == "checkout"
    assert hot.resource["host.name"] == "node-1"
    assert hot.resource["process.executable.name"] == "python3.11"
    assert hot.attributes["thread.name"] == "gunicorn"
    assert {f.kind for f in hot.frames} >= {"cpython", "native"}


# -- gRPC -------------------------------------------------------------------------------


def test_grpc_round_trip(batch: ExportBatch) -> None:
    with (
        OtlpGrpcReceiver() as rx,
        transport(
            "otlp_grpc",
            f"http://{rx.endpoint}",
            headers={"X-Scope-OrgID": "tenant-1"},
            bearer_token="s3cret",
        ) as t,
    ):
        result = t.send(batch, 5.0)
        assert result.ok and result.rejected == 0, result
    (req,) = rx.requests
    check_arrived(req, batch)
    assert rx.metadata[0]["authorization"] == "Bearer s3cret"
    assert rx.metadata[0]["x-scope-orgid"] == "tenant-1"


def test_grpc_plaintext_with_insecure(batch: ExportBatch) -> None:
    with OtlpGrpcReceiver() as rx, transport("otlp_grpc", rx.endpoint, insecure=True) as t:
        assert t.send(batch, 5.0).ok
    assert len(rx.requests) == 1


def test_grpc_gzip_on_the_wire(batch: ExportBatch) -> None:
    size = otlp.to_request(batch.profile, RESOURCE).ByteSize()
    sent = {}
    for gzip in (True, False):
        with OtlpGrpcReceiver() as rx, CountingProxy(rx.port) as proxy:
            with transport("otlp_grpc", f"http://{LOOPBACK}:{proxy.port}", gzip=gzip) as t:
                assert t.send(batch, 5.0).ok
            sent[gzip] = proxy.sent
        check_arrived(rx.requests[0], batch)
    assert sent[False] > size
    assert sent[True] < size / 3


def test_grpc_tls_with_ca_file(batch: ExportBatch, pki: Pki) -> None:
    with OtlpGrpcReceiver(pki.grpc_credentials()) as rx:
        with transport("otlp_grpc", f"https://{rx.endpoint}", ca_file=str(pki.ca_file)) as t:
            assert t.send(batch, 5.0).ok
        # Without the CA the server is not trusted: a retryable failure, nothing arrives twice.
        with transport("otlp_grpc", rx.endpoint) as t:
            result = t.send(batch, 2.0)
            assert not result.ok and result.retryable
    assert len(rx.requests) == 1
    check_arrived(rx.requests[0], batch)


@pytest.mark.parametrize(
    ("failure", "retryable", "retry_after"),
    [
        (GrpcFailure(grpc.StatusCode.UNAVAILABLE, "overloaded", retry_delay_s=2.5), True, 2.5),
        (GrpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota"), True, None),
        (GrpcFailure(grpc.StatusCode.ABORTED, retry_delay_s=0.25), True, 0.25),
        (GrpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "bad profile"), False, None),
        (GrpcFailure(grpc.StatusCode.UNAUTHENTICATED, "who are you"), False, None),
    ],
)
def test_grpc_errors(
    batch: ExportBatch, failure: GrpcFailure, retryable: bool, retry_after: float | None
) -> None:
    with OtlpGrpcReceiver() as rx:
        rx.script.append(failure)
        with transport("otlp_grpc", f"http://{rx.endpoint}") as t:
            result = t.send(batch, 5.0)
            assert not result.ok
            assert result.retryable is retryable
            assert (
                result.retry_after_s == pytest.approx(retry_after)
                if retry_after
                else (result.retry_after_s is None)
            )
            assert failure.code.name in result.error and failure.message in result.error
            # The channel survives a failed call: the next attempt goes through.
            assert t.send(batch, 5.0).ok
    assert len(rx.requests) == 1


def test_grpc_deadline_and_refused(batch: ExportBatch, closed_port: int) -> None:
    with transport("otlp_grpc", f"http://{LOOPBACK}:{closed_port}") as t:
        result = t.send(batch, 1.0)
        assert not result.ok and result.retryable
        assert "UNAVAILABLE" in result.error or "DEADLINE_EXCEEDED" in result.error


def test_grpc_partial_success(batch: ExportBatch) -> None:
    with OtlpGrpcReceiver() as rx:
        half = svc.ExportProfilesServiceResponse()
        half.partial_success.rejected_profiles = 1
        half.partial_success.error_message = "one profile was too old"
        everything = svc.ExportProfilesServiceResponse()
        everything.partial_success.rejected_profiles = 2
        warning = svc.ExportProfilesServiceResponse()
        warning.partial_success.error_message = "slow down soon"
        rx.script.extend([half, everything, warning])
        with transport("otlp_grpc", f"http://{rx.endpoint}") as t:
            r1, r2, r3 = (t.send(batch, 5.0) for _ in range(3))
    assert r1.ok and r1.rejected == batch.samples // 2 and "too old" in r1.error
    assert r2.ok and r2.rejected == batch.samples
    assert r3.ok and r3.rejected == 0 and r3.error == "slow down soon"


def test_empty_batch_sends_nothing() -> None:
    with OtlpGrpcReceiver() as rx, transport("otlp_grpc", f"http://{rx.endpoint}") as t:
        assert t.send(batch_of(Profile()), 5.0).ok
    assert rx.requests == []


def test_service_name_from_settings() -> None:
    endpoint = "http://{}"
    with OtlpGrpcReceiver() as rx:
        t = make_transport("otlp_grpc", endpoint=endpoint.format(rx.endpoint), service_name="x")
        try:
            assert t.send(batch_of(workload(samples=50), {"host.name": "h"}), 5.0).ok
            assert t.send(batch_of(workload(samples=50)), 5.0).ok
        finally:
            t.close()
    names = [{s.resource["service.name"] for s in otlp.iter_samples(req)} for req in rx.requests]
    assert names == [{"x"}, {"checkout"}]


# -- HTTP -----------------------------------------------------------------------------


def test_http_round_trip(batch: ExportBatch) -> None:
    with (
        HttpReceiver() as rx,
        transport(
            "otlp_http", rx.url, headers={"X-Scope-OrgID": "tenant-1"}, bearer_token="tok"
        ) as t,
    ):
        assert t.send(batch, 5.0).ok
    (req,) = rx.requests
    assert req.path == "/v1development/profiles"
    assert req.headers["content-type"] == "application/x-protobuf"
    assert req.headers["content-encoding"] == "gzip"
    assert req.headers["authorization"] == "Bearer tok"
    assert req.headers["x-scope-orgid"] == "tenant-1"
    assert req.raw_body[:2] == b"\x1f\x8b"
    check_arrived(svc.ExportProfilesServiceRequest.FromString(req.body), batch)


def test_http_without_gzip_and_with_a_base_path(batch: ExportBatch) -> None:
    with HttpReceiver() as rx:
        with transport("otlp_http", rx.url + "/otlp/", gzip=False) as t:
            assert t.send(batch, 5.0).ok
        with transport("otlp_http", rx.url + "/custom/v1development/profiles", gzip=False) as t:
            assert t.send(batch, 5.0).ok
    assert [r.path for r in rx.requests] == [
        "/otlp/v1development/profiles",
        "/custom/v1development/profiles",
    ]
    assert "content-encoding" not in rx.requests[0].headers
    check_arrived(svc.ExportProfilesServiceRequest.FromString(rx.requests[0].raw_body), batch)


def test_http_tls_with_ca_file(batch: ExportBatch, pki: Pki, tmp_path: Path) -> None:
    with HttpReceiver(tls=pki.server_context()) as rx:
        with transport("otlp_http", rx.url, ca_file=str(pki.ca_file)) as t:
            assert t.send(batch, 5.0).ok
        other = make_ca(tmp_path)
        assert other is not None
        with transport("otlp_http", rx.url, ca_file=str(other.ca_file)) as t:
            result = t.send(batch, 5.0)
            assert not result.ok and result.retryable and "ca_file" in result.error
    assert len(rx.requests) == 1
    check_arrived(svc.ExportProfilesServiceRequest.FromString(rx.requests[0].body), batch)


def test_http_errors(batch: ExportBatch) -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    with HttpReceiver() as rx:
        rx.script.extend(
            [
                HttpReply(503, b"busy", {"Retry-After": "7"}),
                HttpReply(429, b"", {"Retry-After": later}),
                HttpReply(502, status_details(14, "upstream down", 1.5)),
                HttpReply(504),
                HttpReply(400, status_details(3, "profile is malformed", None)),
                HttpReply(401, b"no token"),
                HttpReply(500, b"oops"),
            ]
        )
        with transport("otlp_http", rx.url) as t:
            results = [t.send(batch, 5.0) for _ in range(7)]
    r503, r429, r502, r504, r400, r401, r500 = results
    assert r503.retryable and r503.retry_after_s == 7.0 and "HTTP 503" in r503.error
    assert r429.retryable and r429.retry_after_s is not None and 25 < r429.retry_after_s <= 30
    assert r502.retryable and r502.retry_after_s == pytest.approx(1.5)
    assert r504.retryable and r504.retry_after_s is None
    assert not r400.ok and not r400.retryable and "profile is malformed" in r400.error
    assert not r401.retryable and "no token" in r401.error
    assert not r500.retryable
    assert not any(r.ok for r in results)


def test_http_refused(batch: ExportBatch, closed_port: int) -> None:
    with transport("otlp_http", f"http://{LOOPBACK}:{closed_port}") as t:
        result = t.send(batch, 2.0)
    assert not result.ok and result.retryable and "refused" in result.error.lower()


def test_http_partial_success(batch: ExportBatch) -> None:
    response = svc.ExportProfilesServiceResponse()
    response.partial_success.rejected_profiles = 2
    response.partial_success.error_message = "no room"
    reply = HttpReply(200, response.SerializeToString())
    with HttpReceiver(lambda r: reply) as rx, transport("otlp_http", rx.url) as t:
        result = t.send(batch, 5.0)
    assert result.ok and result.rejected == batch.samples and result.error == "no room"
