"""Parca's WriteRaw against a real gRPC receiver that checks what Parca's normalizer checks."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from profiler.export.parca import ParcaTransport, encode_pprof
from profiler.export.proto import parca_profilestore_pb2 as ps
from profiler.export.proto import parca_profilestore_pb2_grpc as ps_grpc
from profiler.export.transports import Settings, make_transport
from symbolizer import pprof
from symbolizer.profile import Frame, Profile
from tests.export.receivers import GrpcFailure, ParcaReceiver, Pki
from tests.export.workload import RESOURCE, START_NS, batch_of, profile_share, workload


@pytest.fixture
def rx() -> Iterator[ParcaReceiver]:
    with ParcaReceiver() as receiver:
        yield receiver


def arrived(rx: ParcaReceiver) -> list[tuple[dict[str, str], pprof.pb.Profile]]:
    return [
        (
            {label.name: label.value for label in series.labels.labels},
            pprof.parse_message(s.raw_profile),
        )
        for req in rx.requests
        for series in req.series
        for s in series.samples
    ]


def test_round_trip(rx: ParcaReceiver) -> None:
    batch = batch_of(workload())
    t = make_transport(
        "parca", endpoint=f"http://{rx.endpoint}", bearer_token="tok", headers={"X-Tenant": "a"}
    )
    try:
        result = t.send(batch, 5.0)
    finally:
        t.close()
    assert result.ok and result.rejected == 0, result
    assert rx.metadata[0]["authorization"] == "Bearer tok"
    assert rx.metadata[0]["x-tenant"] == "a"
    (req,) = rx.requests
    assert not req.normalized
    assert all(s.raw_profile[:2] == b"\x1f\x8b" for series in req.series for s in series.samples)
    ((labels, msg),) = arrived(rx)
    assert labels == {"__name__": "process_cpu", "service_name": "checkout", "host_name": "node-1"}
    st = msg.string_table
    assert [(st[t.type], st[t.unit]) for t in msg.sample_type] == [
        ("samples", "count"),
        ("cpu", "nanoseconds"),
    ]
    assert (st[msg.period_type.type], st[msg.period_type.unit]) == ("cpu", "nanoseconds")
    assert msg.duration_nanos == batch.duration_ns > 0  # what makes Parca file it as delta
    assert msg.time_nanos == START_NS
    # pid, tid and cpu arrive as strings: Parca makes labels only of those.
    for sample in msg.sample:
        keys = {st[label.key] for label in sample.label}
        assert {"pid", "tid", "cpu", "comm", "exe"} <= keys
        assert all(label.str and not label.num for label in sample.label)
    profile = pprof.from_message(msg)
    assert profile.total_samples == batch.samples
    assert profile_share(profile) == pytest.approx(0.4)


def test_label_names_made_valid(rx: ParcaReceiver) -> None:
    p = Profile(start_ns=START_NS, duration_ns=10**9, period_ns=10**7)
    p.add([Frame("main")], 4, [("pid", "7"), ("k8s.pod-name", "web-1"), ("9lives", "x")])
    resource = {**RESOURCE, "deployment.environment": "prod"}
    t = ParcaTransport(Settings(f"http://{rx.endpoint}"))
    try:
        assert t.send(batch_of(p, resource), 5.0).ok
    finally:
        t.close()
    ((labels, msg),) = arrived(rx)
    assert labels["deployment_environment"] == "prod"
    sample_keys = {msg.string_table[label.key] for label in msg.sample[0].label}
    assert sample_keys == {"pid", "k8s_pod_name", "_9lives"}


def test_the_receiver_refuses_what_parca_refuses(rx: ParcaReceiver) -> None:
    bad = ps.WriteRawRequest()
    series = bad.series.add()
    series.labels.labels.add(name="__name__", value="process_cpu")
    series.labels.labels.add(name="host.name", value="x")
    series.samples.add(raw_profile=encode_pprof(workload(samples=10)))
    with grpc.insecure_channel(rx.endpoint) as channel, pytest.raises(grpc.RpcError) as err:
        ps_grpc.ProfileStoreServiceStub(channel).WriteRaw(bad, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid label name" in (err.value.details() or "")


def test_errors(rx: ParcaReceiver) -> None:
    rx.script.extend(
        [
            GrpcFailure(grpc.StatusCode.UNAVAILABLE, "restarting", retry_delay_s=3.0),
            GrpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "missing __name__ label"),
        ]
    )
    batch = batch_of(workload(samples=200))
    t = ParcaTransport(Settings(rx.endpoint, insecure=True))
    try:
        r1, r2, r3 = (t.send(batch, 5.0) for _ in range(3))
    finally:
        t.close()
    assert r1.retryable and r1.retry_after_s == pytest.approx(3.0)
    assert not r2.retryable and "missing __name__" in r2.error
    assert r3.ok


def test_without_gzip(rx: ParcaReceiver) -> None:
    t = ParcaTransport(Settings(f"http://{rx.endpoint}", gzip=False))
    try:
        assert t.send(batch_of(workload(samples=300)), 5.0).ok
    finally:
        t.close()
    raw = rx.requests[0].series[0].samples[0].raw_profile
    assert raw[:2] != b"\x1f\x8b"
    assert pprof.decode(raw).total_samples == 300


def test_tls(pki: Pki) -> None:
    with ParcaReceiver(pki.grpc_credentials()) as rx:
        t = make_transport("parca", endpoint=rx.endpoint, ca_file=str(pki.ca_file))
        try:
            assert t.send(batch_of(workload(samples=100)), 5.0).ok
        finally:
            t.close()
    assert len(rx.requests) == 1
