"""make_transport, endpoint parsing, shared error mapping, and Kiln's backend protos."""

from __future__ import annotations

import email.utils
import os
import subprocess
import sys
from pathlib import Path

import pytest

from profiler.export.api import Transport
from profiler.export.proto import parca_profilestore_pb2 as ps
from profiler.export.proto import pyroscope_push_pb2 as push
from profiler.export.proto import rpc_status_pb2
from profiler.export.transports import (
    KINDS,
    EndpointError,
    Settings,
    grpc_target,
    http_target,
    make_transport,
    prometheus_name,
    retry_after_s,
    retry_info_s,
    series_labels,
)
from tests.export.receivers import status_details

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "profiler/export/proto"


@pytest.mark.parametrize(
    ("kind", "endpoint", "name"),
    [
        ("otlp_grpc", "collector.example:4317", "otlp_grpc"),
        ("otlp_http", "https://collector.example:4318", "otlp_http"),
        ("pyroscope", "http://127.0.0.1:4040", "pyroscope"),
        ("parca", "parca.example", "parca"),
    ],
)
def test_make_transport(kind: str, endpoint: str, name: str) -> None:
    t = make_transport(kind, endpoint=endpoint)
    try:
        assert isinstance(t, Transport)
        assert t.name == name
    finally:
        t.close()
    assert kind in KINDS


@pytest.mark.parametrize(
    ("kind", "endpoint", "kwargs", "message"),
    [
        ("kafka", "x:1", {}, "unknown exporter kind"),
        ("otlp_grpc", "", {}, "is empty"),
        ("otlp_grpc", "host:notaport", {}, "is not a URL"),
        ("otlp_grpc", "host:0", {}, "port 0"),
        ("otlp_grpc", "host:4317/v1", {}, "has a path"),
        ("otlp_grpc", "ftp://host:21", {}, "has scheme 'ftp'"),
        ("otlp_grpc", "https://host:4317", {"insecure": True}, "insecure"),
        ("otlp_grpc", "http://host:4317", {"ca_file": "/etc/ssl/ca.pem"}, "plaintext but a CA"),
        ("otlp_http", "collector:4318", {}, "must start with http"),
        ("otlp_http", "https://user:pw@host", {}, "carries credentials"),
        ("otlp_http", "http://host:4318/?x=1", {}, "query"),
        ("pyroscope", "https://host", {"ca_file": "/nonexistent/ca.pem"}, "cannot be used"),
        ("otlp_grpc", "host:4317", {"ca_file": __file__}, "cannot be used"),
        ("parca", "https://:7070", {}, "names no host"),
    ],
)
def test_bad_settings_are_refused_with_a_remedy(
    kind: str, endpoint: str, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(EndpointError) as err:
        make_transport(kind, endpoint=endpoint, **kwargs)  # type: ignore[arg-type]
    assert message in err.value.message
    assert err.value.remedy


def test_endpoint_forms() -> None:
    s = Settings("")
    assert grpc_target("collector:4317", 4317, s, what="x") == ("collector:4317", True)
    assert grpc_target("collector", 4317, s, what="x") == ("collector:4317", True)
    assert grpc_target("http://10.0.0.1", 7070, s, what="x") == ("10.0.0.1:7070", False)
    assert grpc_target("https://[::1]:99/", 1, s, what="x") == ("[::1]:99", True)
    insecure = Settings("", insecure=True)
    assert grpc_target("collector:4317", 4317, insecure, what="x") == ("collector:4317", False)
    t = http_target("https://h/base/", "/v1development/profiles", s, what="x")
    assert (t.tls, t.host, t.port, t.path) == (True, "h", 443, "/base/v1development/profiles")
    assert t.url == "https://h:443/base/v1development/profiles"
    t = http_target(
        "http://h:8080/push.v1.PusherService/Push", "/push.v1.PusherService/Push", s, what="x"
    )
    assert (t.port, t.path) == (8080, "/push.v1.PusherService/Push")


def test_auth_headers() -> None:
    s = Settings("x", headers={"authorization": "Basic old", "X-A": "1"}, bearer_token="tok")
    assert s.auth_headers() == {"X-A": "1", "Authorization": "Bearer tok"}
    assert Settings("x", headers={"Authorization": "Basic k"}).auth_headers() == {
        "Authorization": "Basic k"
    }
    assert Settings("x", timeout_s=3).attempt_timeout(10) == 3
    assert Settings("x", timeout_s=3).attempt_timeout(1) == 1


def test_retry_after() -> None:
    now = 1_700_000_000.0
    assert retry_after_s("120") == 120.0
    assert retry_after_s(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(30)
    assert retry_after_s(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert retry_after_s("soon") is None
    assert retry_after_s("") is None
    assert retry_after_s(None) is None


def test_retry_info() -> None:
    assert retry_info_s(status_details(14, "x", 2.25)) == pytest.approx(2.25)
    assert retry_info_s(status_details(14, "x", None)) is None
    assert retry_info_s(b"\xff\xff not a status") is None
    assert retry_info_s(b"") is None


def test_prometheus_names() -> None:
    assert prometheus_name("service.name") == "service_name"
    assert prometheus_name("k8s.pod-name") == "k8s_pod_name"
    assert prometheus_name("9lives") == "_9lives"
    assert prometheus_name("ok_name") == "ok_name"
    assert prometheus_name("") == "_"
    assert series_labels(
        {"service.name": "a", "service_name": "b", "process.pid": 5, "host.name": "h", "x": ""}
    ) == {"service_name": "a", "host_name": "h"}


def test_backend_schemas() -> None:
    """Field numbers checked against Pyroscope's and Parca's published .proto files."""

    def numbers(message: type) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]

    assert numbers(push.PushRequest) == {"series": 1}
    assert numbers(push.RawProfileSeries) == {"labels": 1, "samples": 2}
    assert numbers(push.RawSample) == {"raw_profile": 1, "ID": 2}
    assert numbers(push.LabelPair) == {"name": 1, "value": 2}
    assert push.DESCRIPTOR.services_by_name["PusherService"].full_name == "push.v1.PusherService"
    assert numbers(ps.WriteRawRequest) == {"series": 2, "normalized": 3}
    assert numbers(ps.RawProfileSeries) == {"labels": 1, "samples": 2}
    assert numbers(ps.LabelSet) == {"labels": 1}
    assert numbers(ps.Label) == {"name": 1, "value": 2}
    assert numbers(ps.RawSample) == {"raw_profile": 1}
    service = ps.DESCRIPTOR.services_by_name["ProfileStoreService"]
    assert service.full_name == "parca.profilestore.v1alpha1.ProfileStoreService"
    assert numbers(rpc_status_pb2.Status) == {"code": 1, "message": 2, "details": 3}
    assert numbers(rpc_status_pb2.RetryInfo) == {"retry_delay": 1}


def test_generated_modules_match_the_protos(tmp_path: Path) -> None:
    """The committed *_pb2* files are exactly what gen.sh makes today."""
    pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is a dev dependency")
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["sh", str(PROTO_DIR / "gen.sh"), str(tmp_path)], check=True, env=env)
    fresh_dir = tmp_path / "profiler/export/proto"
    generated = sorted(p.name for p in fresh_dir.iterdir())
    assert generated == sorted(p.name for p in PROTO_DIR.glob("*_pb2*"))
    for name in generated:
        assert (fresh_dir / name).read_text() == (PROTO_DIR / name).read_text(), (
            f"{name} is stale or hand-edited: run profiler/export/proto/gen.sh"
        )
