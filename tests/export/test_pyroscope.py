"""Pyroscope's push API: a Connect receiver that checks what Pyroscope's distributor checks."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from profiler.export.api import ExportBatch
from profiler.export.proto import pyroscope_push_pb2 as push
from profiler.export.pyroscope import PyroscopeTransport
from profiler.export.rules import apply_rules, compile_rules
from profiler.export.transports import Settings, make_transport
from symbolizer import pprof
from symbolizer.profile import Frame, Profile
from tests.export.receivers import HttpReceiver, HttpReply, HttpRequest, Pki
from tests.export.workload import HOT, RESOURCE, START_NS, batch_of, profile_share, workload

PUSH = "/push.v1.PusherService/Push"
_LEGACY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.]*")  # dots are sanitized by Pyroscope


def connect_error(status: int, code: str, message: str) -> HttpReply:
    body = json.dumps({"code": code, "message": message}).encode()
    return HttpReply(status, body, {"Content-Type": "application/json"})


def pyroscope_problem(req: HttpRequest) -> str:
    """What Pyroscope's distributor would refuse in a push (its default limits)."""
    if req.path != PUSH:
        return f"no such procedure {req.path}"
    if req.headers.get("content-type") != "application/proto":
        return "unsupported content type"
    msg = push.PushRequest.FromString(req.body)
    for series in msg.series:
        labels = {lp.name: lp.value for lp in series.labels}
        if len(labels) != len(series.labels):
            return "duplicate label names"
        if not labels.get("service_name"):
            return "service name is not provided"
        if not labels.get("__name__"):
            return "invalid metric name"
        for sample in series.samples:
            raw = (
                gzip.decompress(sample.raw_profile)
                if sample.raw_profile[:2] == b"\x1f\x8b"
                else sample.raw_profile
            )
            if len(raw) > 4 << 20:
                return "profile too big"
            prof = pprof.parse_message(raw)
            if len(prof.sample) > 16000:
                return "too many samples"
            st = prof.string_table
            for s in prof.sample:
                names = set(labels)
                for label in s.label:
                    if label.str:
                        names.add(st[label.key])
                if len(names) > 30:
                    return f"max_label_names_per_series: {len(names)}"
                if not all(_LEGACY.fullmatch(n) for n in names):
                    return "invalid label name"
    return ""


def pyroscope(req: HttpRequest) -> HttpReply:
    problem = pyroscope_problem(req)
    if problem:
        return connect_error(400, "invalid_argument", problem)
    return HttpReply(200, b"", {"Content-Type": "application/proto"})


@pytest.fixture
def rx() -> Iterator[HttpReceiver]:
    with HttpReceiver(pyroscope) as receiver:
        yield receiver


@contextmanager
def pyroscope_transport(url: str, **kw: object) -> Iterator[PyroscopeTransport]:
    settings = {k: kw.pop(k) for k in list(kw) if k in Settings.__dataclass_fields__}
    t = PyroscopeTransport(Settings(url, **settings), **kw)  # type: ignore[arg-type]
    try:
        yield t
    finally:
        t.close()


def arrived(rx: HttpReceiver) -> list[tuple[dict[str, str], Profile, bytes]]:
    out = []
    for req in rx.requests:
        for series in push.PushRequest.FromString(req.body).series:
            labels = {lp.name: lp.value for lp in series.labels}
            for sample in series.samples:
                out.append((labels, pprof.decode(sample.raw_profile), sample.raw_profile))
    return out


def merged(parts: list[tuple[dict[str, str], Profile, bytes]]) -> Profile:
    total = Profile()
    for _, p, _ in parts:
        total.merge(p)
    return total


def test_round_trip(rx: HttpReceiver) -> None:
    batch = batch_of(workload())
    t = make_transport(
        "pyroscope", endpoint=rx.url, bearer_token="tok", headers={"X-Scope-OrgID": "t1"}
    )
    try:
        result = t.send(batch, 5.0)
    finally:
        t.close()
    assert result.ok and result.rejected == 0, result
    (req,) = rx.requests
    assert req.headers["authorization"] == "Bearer tok"
    assert req.headers["x-scope-orgid"] == "t1"
    assert req.headers["connect-protocol-version"] == "1"
    parts = arrived(rx)
    assert all(raw[:2] == b"\x1f\x8b" for _, _, raw in parts)
    (labels,) = {tuple(sorted(lab.items())) for lab, _, _ in parts}
    assert dict(labels) == {
        "__name__": "process_cpu",
        "service_name": "checkout",
        "host_name": "node-1",
    }
    total = merged(parts)
    assert total.total_samples == batch.samples
    assert profile_share(total) == pytest.approx(0.4)
    p = parts[0][1]
    assert p.start_ns == START_NS and p.period_ns == batch.profile.period_ns
    label_keys = {k for _, lab, _ in total.samples() for k, _ in lab}
    assert {"comm", "exe", "pid", "tid", "cpu", "container"} <= label_keys


def test_service_name_per_process_from_rules(rx: HttpReceiver) -> None:
    rules = compile_rules(
        transform=[
            'set(resource.attributes["service.name"], "proxy")'
            ' where resource.attributes["process.executable.name"] == "nginx"'
        ]
    )
    profile, _ = apply_rules(workload(), RESOURCE, transform=rules.transform)
    with pyroscope_transport(rx.url) as t:
        assert t.send(batch_of(profile), 5.0).ok
    by_service: dict[str, Profile] = {}
    for labels, p, _ in arrived(rx):
        by_service.setdefault(labels["service_name"], Profile()).merge(p)
    assert set(by_service) == {"checkout", "proxy"}
    assert profile_share(by_service["proxy"]) == 0.0
    assert {dict(lab)["comm"] for _, lab, _ in by_service["proxy"].samples()} == {"nginx"}
    assert profile_share(by_service["checkout"]) > 0.4


def test_default_service_name(rx: HttpReceiver) -> None:
    with pyroscope_transport(rx.url) as t:
        assert t.send(batch_of(workload(samples=100), {}), 5.0).ok
    with pyroscope_transport(rx.url, service_name="from-config") as t:
        assert t.send(batch_of(workload(samples=100), {}), 5.0).ok
    names = [labels["service_name"] for labels, _, _ in arrived(rx)]
    assert names == ["unknown_service", "from-config"]


def test_label_limit(rx: HttpReceiver) -> None:
    p = Profile(start_ns=START_NS, duration_ns=10**9, period_ns=10**7)
    many = [(f"tag.{i:02d}", f"v{i}") for i in range(40)]
    p.add([Frame(HOT)], 5, [("pid", "1"), ("comm", "app"), *many])
    p.add([Frame("other")], 5, [("pid", "1"), ("comm", "app")])
    with pyroscope_transport(rx.url) as t:
        result = t.send(batch_of(p), 5.0)
        assert result.ok, result
    total = merged(arrived(rx))
    assert total.total_samples == 10
    for _, labels, _ in total.samples():
        strings = [k for k, _ in labels if k not in ("pid",)]
        assert len(strings) + 3 <= 30  # + __name__, service_name, host_name
        assert "comm" in strings  # kept first
        assert all("." not in k for k in strings)  # Prometheus-valid names


def test_profiles_split_to_fit(rx: HttpReceiver) -> None:
    batch = batch_of(workload(samples=3000))
    with pyroscope_transport(rx.url, max_profile_bytes=20_000, max_profile_samples=300) as t:
        assert t.send(batch, 5.0).ok
    parts = arrived(rx)
    assert len(parts) > 3
    for _, _, raw in parts:
        assert len(gzip.decompress(raw)) <= 20_000
        assert len(pprof.parse_message(raw).sample) <= 300
    total = merged(parts)
    assert total.total_samples == batch.samples
    assert profile_share(total) == pytest.approx(0.4)


def test_split_at_pyroscope_sample_limit(rx: HttpReceiver) -> None:
    p = Profile(start_ns=START_NS, duration_ns=10**9, period_ns=10**7)
    for i in range(17_000):
        p.add([Frame(f"f{i}"), Frame("main")], 1, [("pid", "1")])
    with pyroscope_transport(rx.url) as t:
        result = t.send(batch_of(p), 10.0)
    assert result.ok, result
    parts = arrived(rx)
    assert len(parts) == 2
    assert merged(parts).total_samples == 17_000


def test_a_sample_too_large_is_dropped_with_a_reason(rx: HttpReceiver) -> None:
    p = Profile(start_ns=START_NS, duration_ns=10**9, period_ns=10**7)
    p.add([Frame("x" * 5000)], 3, [("pid", "1")])
    p.add([Frame("small")], 2, [("pid", "2")])
    with pyroscope_transport(rx.url, max_profile_bytes=1000) as t:
        result = t.send(batch_of(p), 5.0)
    assert result.ok and result.rejected == 3 and "limit" in result.error
    assert merged(arrived(rx)).total_samples == 2


def test_errors(rx: HttpReceiver) -> None:
    rx.script.extend(
        [
            HttpReply(503, b"", {"Retry-After": "4"}),
            connect_error(429, "resource_exhausted", "ingestion rate limit"),
            connect_error(400, "invalid_argument", "bad labels"),
            connect_error(401, "unauthenticated", "no token"),
        ]
    )
    batch = batch_of(workload(samples=100))
    with pyroscope_transport(rx.url) as t:
        r503, r429, r400, r401 = (t.send(batch, 5.0) for _ in range(4))
        assert t.send(batch, 5.0).ok
    assert r503.retryable and r503.retry_after_s == 4.0
    assert r429.retryable and "resource_exhausted: ingestion rate limit" in r429.error
    assert not r400.retryable and "bad labels" in r400.error
    assert not r401.ok and not r401.retryable


def test_tls(pki: Pki) -> None:
    with HttpReceiver(pyroscope, tls=pki.server_context()) as rx:
        with pyroscope_transport(rx.url, ca_file=str(pki.ca_file), bearer_token="t") as t:
            assert t.send(batch_of(workload(samples=100)), 5.0).ok
        assert rx.requests[0].headers["authorization"] == "Bearer t"


def test_plan_is_deterministic() -> None:
    t = PyroscopeTransport(Settings("http://127.0.0.1:4040"))
    batch: ExportBatch = batch_of(workload(samples=500))
    a, b = t.plan(batch).request, t.plan(batch).request
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    assert a.series[0].samples[0].ID == b.series[0].samples[0].ID
