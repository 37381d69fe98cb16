"""Downloads (pprof, folded, OTLP) and Kiln's own /metrics."""

from __future__ import annotations

import gzip

from flask.testing import FlaskClient
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

from profiler.store.api import StoreStats
from symbolizer import folded, otlp, pprof
from symbolizer.profile import FrameKind
from symbolizer.proto import profile_pb2
from tests.web.conftest import agent_status
from tests.web.profiles import EVIL, HOT, SAMPLES_PER_WINDOW, T0, WINDOW, WINDOWS, merged, ms
from web import metrics
from web.downloads import view_profile

ALL = f"from={ms(T0)}&to={ms(T0 + WINDOWS * WINDOW)}"


def test_pprof_download_decodes(client: FlaskClient) -> None:
    r = client.get(f"/download/pprof?{ALL}")
    assert r.status_code == 200
    assert r.headers["Content-Disposition"] == (
        'attachment; filename="kiln-20231114T221320Z-60s.pb.gz"'
    )
    msg = profile_pb2.Profile.FromString(gzip.decompress(r.get_data()))
    names = {msg.string_table[f.name] for f in msg.function}
    assert {HOT, EVIL, "vfs_read_[k]", "py_hot_[py]"} <= names
    profile = pprof.decode(r.get_data())
    assert profile.total_samples == WINDOWS * SAMPLES_PER_WINDOW
    labels = {lab for _, labels, _ in profile.samples() for lab in labels}
    assert ("comm", "burner") in labels


def test_pprof_download_follows_the_view(client: FlaskClient) -> None:
    r = client.get(f"/download/pprof?{ALL}&pid=200&kinds=native,python&collapse=1")
    profile = pprof.decode(r.get_data())
    assert profile.total_samples == WINDOWS * 40
    names = {fn.name for fn in profile.functions if fn}
    assert "vfs_read" not in names and HOT not in names and EVIL in names
    assert any("frames of kinds native, python only" in c for c in profile.comments)


def test_folded_download(client: FlaskClient) -> None:
    r = client.get(f"/download/folded?{ALL}&collapse=1")
    assert r.content_type == "text/plain; charset=utf-8"
    text = r.get_data(as_text=True)
    assert f"main;run;{HOT} {WINDOWS * 200}\n" in text
    assert "main;recurse;leaf " in text
    assert folded.parse(text).total_samples == WINDOWS * SAMPLES_PER_WINDOW


def test_otlp_download_is_a_valid_export_request(client: FlaskClient) -> None:
    r = client.get(f"/download/otlp?{ALL}&pid=200")
    assert r.status_code == 200
    assert r.headers["Content-Disposition"].endswith('.otlp.pb.gz"')
    req = svc.ExportProfilesServiceRequest.FromString(gzip.decompress(r.get_data()))
    assert otlp.validate_request(req) == []
    samples = list(otlp.iter_samples(req))
    assert sum(s.count for s in samples) == WINDOWS * 40
    assert {s.resource.get("process.pid") for s in samples} == {200}
    names = {f.function for s in samples for f in s.frames}
    assert EVIL in names


def test_empty_download_is_a_valid_profile(client: FlaskClient) -> None:
    r = client.get(f"/download/pprof?from={ms(T0) - 60_000}&to={ms(T0)}")
    assert r.status_code == 200
    assert pprof.decode(r.get_data()).total_samples == 0


def test_view_profile_is_identity_without_options() -> None:
    p = merged()
    assert view_profile(p, frozenset(FrameKind), False) is p
    kernel = view_profile(p, frozenset({FrameKind.KERNEL}), True)
    assert kernel.total_samples == p.total_samples
    assert {fn.name for fn in kernel.functions if fn} == {"vfs_read", "copy_user_generic"}


def test_metrics_endpoint(client: FlaskClient) -> None:
    r = client.get("/metrics")
    assert r.content_type.startswith("text/plain; version=0.0.4")
    text = r.get_data(as_text=True)
    assert "kiln_up 1\n" in text
    assert f"kiln_store_windows {WINDOWS}\n" in text
    assert f"kiln_store_samples {WINDOWS * SAMPLES_PER_WINDOW}\n" in text
    assert "kiln_store_up 1\n" in text
    assert "kiln_agent_samples_per_second 38.2\n" in text
    assert 'kiln_agent_lost_samples_total{reason="ring_buffer_full"} 3\n' in text
    assert 'kiln_exporter_up{exporter="pyroscope"} 1\n' in text
    assert "# TYPE kiln_agent_lost_samples_total counter\n" in text


def test_metrics_text_format() -> None:
    stats = StoreStats("/x", 10, 1, 5, 1_000_000_000, 2_000_000_000, 1, 2)
    status = dict(agent_status())
    status["lost_samples"] = {'we"ird\\\nreason': 1}
    status["cpu_percent"] = float("nan")
    text = metrics.render(status, stats)
    assert 'kiln_agent_lost_samples_total{reason="we\\"ird\\\\\\nreason"} 1\n' in text
    assert "kiln_agent_cpu_percent NaN\n" in text
    assert "kiln_store_write_errors_total 2\n" in text
    assert "kiln_store_oldest_timestamp_seconds 1.0\n" in text
    for line in text.splitlines():
        assert line.startswith("#") or line.startswith("kiln_"), line
    assert metrics.render({}, None).count("\n# TYPE") >= 2
