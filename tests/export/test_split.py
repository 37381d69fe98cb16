"""Windows too big for one request, against receivers with gRPC's default 4 MiB limit."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

from profiler.config import ConfigError, parse
from profiler.export.api import ExportBatch
from profiler.export.pipeline import _transport
from profiler.export.split import SplitRequests, plan_parts, split_batch
from profiler.export.transports import make_transport
from symbolizer import otlp, pprof
from symbolizer.profile import Frame, Mapping, Profile
from tests.export.receivers import GrpcFailure, OtlpGrpcReceiver, ParcaReceiver
from tests.export.workload import batch_of

LIMIT = 4 << 20  # what grpc.server() accepts unless told otherwise
Rig = tuple[OtlpGrpcReceiver, SplitRequests[svc.ExportProfilesServiceRequest]]


def deep_profile(rows: int, depth: int = 127, seed: int = 3) -> Profile:
    """Rows of distinct deep stacks over distinct addresses: little to share."""
    rng = random.Random(seed)
    app = Mapping(0x400000, 0x4000000, 0, "/usr/bin/app", "ab12")
    p = Profile(start_ns=1_700_000_000_000_000_000, duration_ns=10**10, period_ns=10**7)
    for i in range(rows):
        frames = [
            Frame(f"fn_{rng.randrange(4000)}", 0x400000 + rng.randrange(1 << 24), mapping=app)
            for _ in range(depth)
        ]
        labels = (("pid", str(100 + i % 7)), ("comm", f"app{i % 7}"), ("tid", str(i % 50)))
        p.add(frames, 1 + i % 3, labels)
    return p


def folded(profile: Profile) -> Counter[tuple[tuple[str, ...], str]]:
    out: Counter[tuple[tuple[str, ...], str]] = Counter()
    for frames, labels, n in profile.samples():
        pid = dict(labels).get("pid", "")
        out[(tuple(fn.name for fn, _ in frames), pid)] += n
    return out


def arrived(
    requests: list[svc.ExportProfilesServiceRequest],
) -> Counter[tuple[tuple[str, ...], str]]:
    out: Counter[tuple[tuple[str, ...], str]] = Counter()
    for req in requests:
        assert otlp.validate_request(req) == []
        for s in otlp.iter_samples(req):
            out[(tuple(f.function for f in s.frames), str(s.resource["process.pid"]))] += s.count
    return out


@pytest.fixture(scope="module")
def big() -> ExportBatch:
    batch = batch_of(deep_profile(3000))
    assert otlp.to_request(batch.profile, batch.resource).ByteSize() > 1.5 * LIMIT
    return batch


@pytest.fixture
def grpc_otlp() -> Iterator[Rig]:
    with OtlpGrpcReceiver() as rx:
        inner = make_transport("otlp_grpc", endpoint=f"http://{rx.endpoint}")
        t = SplitRequests(inner, LIMIT)
        try:
            yield rx, t
        finally:
            t.close()


def test_split_batch_keeps_every_sample(big: ExportBatch) -> None:
    parts = split_batch(big, 4)
    assert len(parts) == 4
    assert [p.part for p in parts] == [1, 2, 3, 4]
    assert sum(p.samples for p in parts) == big.samples
    total: Counter[tuple[tuple[str, ...], str]] = Counter()
    for p in parts:
        total += folded(p.profile)
        # Compact: a part's tables hold only what its own samples use.
        used = {loc for sid, _ in p.profile.counts for loc in p.profile.stacks[sid]}
        assert len(p.profile.locations) - 1 == len(used)
    assert total == folded(big.profile)


def test_plan_parts_fits_every_request(big: ExportBatch) -> None:
    inner = make_transport("otlp_grpc", endpoint="http://127.0.0.1:9")
    parts = plan_parts(big, inner.prepare, inner.request_bytes, LIMIT)
    assert len(parts) >= 2
    assert all(inner.request_bytes(req) <= LIMIT for _, req in parts)
    assert len({b.part for b, _ in parts}) == len(parts)
    small = batch_of(deep_profile(20))
    ((b, _),) = plan_parts(small, inner.prepare, inner.request_bytes, LIMIT)
    assert b is small and b.part == 0


def test_unsplit_big_request_is_refused_by_the_receiver(big: ExportBatch) -> None:
    """Why splitting exists: the same batch in one request never gets through."""
    with OtlpGrpcReceiver() as rx:
        t = make_transport("otlp_grpc", endpoint=f"http://{rx.endpoint}")
        try:
            result = t.send(big, 10.0)
        finally:
            t.close()
    assert not result.ok and "RESOURCE_EXHAUSTED" in result.error
    assert rx.requests == []


def test_big_window_arrives_whole_in_parts(
    big: ExportBatch,
    grpc_otlp: Rig,
) -> None:
    rx, t = grpc_otlp
    result = t.send(big, 30.0)
    assert result.ok and result.rejected == 0, result
    assert len(rx.requests) >= 2 and t.requests_split == 1
    assert arrived(rx.requests) == folded(big.profile)
    ids = [
        p.profile_id
        for r in rx.requests
        for rp in r.resource_profiles
        for sp in rp.scope_profiles
        for p in sp.profiles
    ]
    assert len(ids) == len(set(ids)), "each part's profiles need their own ids"


def test_small_window_is_one_request(
    grpc_otlp: Rig,
) -> None:
    rx, t = grpc_otlp
    small = batch_of(deep_profile(30))
    assert t.send(small, 10.0).ok
    assert len(rx.requests) == 1 and t.requests_split == 0
    assert arrived(rx.requests) == folded(small.profile)


def test_retry_resumes_after_the_parts_already_taken(
    big: ExportBatch,
    grpc_otlp: Rig,
) -> None:
    rx, t = grpc_otlp
    rx.script.extend([None, GrpcFailure(grpc.StatusCode.UNAVAILABLE, "collector restarting")])
    first = t.send(big, 30.0)
    assert not first.ok and first.retryable
    assert "part 2 of" in first.error and "collector restarting" in first.error
    assert len(rx.requests) == 1
    second = t.send(big, 30.0)  # what delivery does next: the same batch again
    assert second.ok and second.rejected == 0
    # Every sample exactly once: part 1 was not sent again.
    assert arrived(rx.requests) == folded(big.profile)


def test_part_refused_for_good_counts_only_the_rest(
    big: ExportBatch,
    grpc_otlp: Rig,
) -> None:
    rx, t = grpc_otlp
    rx.script.extend([None, GrpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "bad part")])
    result = t.send(big, 30.0)
    (taken,) = rx.requests
    delivered = sum(s.count for s in otlp.iter_samples(taken))
    assert result.ok and "bad part" in result.error
    assert result.rejected == big.samples - delivered > 0
    # The next batch starts afresh.
    small = batch_of(deep_profile(30))
    small = ExportBatch(2, small.profile, small.start_ns, small.duration_ns, small.samples)
    assert t.send(small, 10.0).ok and len(rx.requests) == 2


def test_first_part_refused_for_good_refuses_the_batch(
    big: ExportBatch,
    grpc_otlp: Rig,
) -> None:
    rx, t = grpc_otlp
    rx.script.append(GrpcFailure(grpc.StatusCode.PERMISSION_DENIED, "no tenant"))
    result = t.send(big, 30.0)
    assert not result.ok and not result.retryable and "part 1 of" in result.error
    assert rx.requests == []


def test_parca_big_window_arrives_in_parts(big: ExportBatch) -> None:
    with ParcaReceiver() as rx:
        t = SplitRequests(make_transport("parca", endpoint=f"http://{rx.endpoint}"), LIMIT)
        try:
            result = t.send(big, 30.0)
        finally:
            t.close()
    assert result.ok and result.rejected == 0, result
    assert len(rx.requests) >= 2
    total = 0
    for req in rx.requests:
        for series in req.series:
            for s in series.samples:
                total += sum(smp.value[0] for smp in pprof.parse_message(s.raw_profile).sample)
    assert total == big.samples


def test_config_key_and_pipeline_wiring() -> None:
    cfg = parse(
        "exporters:\n"
        "  - {name: c, type: otlp_grpc, endpoint: 'http://127.0.0.1:4317',\n"
        "     max_request_bytes: 1MiB}\n"
    )
    (c,) = cfg.exporters
    assert c.max_request_bytes == 1 << 20
    t = _transport(c)
    try:
        assert isinstance(t, SplitRequests) and t.max_bytes == 1 << 20
    finally:
        t.close()
    with pytest.raises(ConfigError, match="max_request_bytes"):
        parse(
            "exporters:\n"
            "  - {name: c, type: otlp_grpc, endpoint: 'http://127.0.0.1:4317', "
            "max_request_bytes: 1000}\n"
        )
