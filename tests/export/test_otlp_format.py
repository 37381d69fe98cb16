"""symbolizer.otlp: Profile -> OTLP Profiles request, its validator, and back."""

from __future__ import annotations

import importlib.metadata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb

from symbolizer import otlp
from symbolizer.profile import Frame, FrameKind, Mapping, Profile
from tests.export.workload import (
    CONTAINER,
    HOT,
    NGINX_EXE,
    PYTHON_EXE,
    RESOURCE,
    START_NS,
    canonical,
    profile_share,
    share,
    workload,
)


def resource(rp: object) -> dict[str, object]:
    return {kv.key: otlp.any_value(kv.value) for kv in rp.resource.attributes}  # type: ignore[attr-defined]


def test_pinned_schema() -> None:
    """The generated classes are opentelemetry-proto v1.10's Profiles (package 1.45.x)."""
    assert importlib.metadata.version("opentelemetry-proto").startswith("1.45.")
    numbers = {
        (m, f.name): f.number
        for m in ("ProfilesDictionary", "Sample", "Profile")
        for f in getattr(pb, m).DESCRIPTOR.fields
    }
    assert numbers[("ProfilesDictionary", "stack_table")] == 7
    assert numbers[("ProfilesDictionary", "string_table")] == 5
    assert numbers[("Sample", "values")] == 4
    assert numbers[("Sample", "timestamps_unix_nano")] == 5
    assert numbers[("Profile", "sample_type")] == 1  # one per profile since v1.10


def test_workload_request() -> None:
    profile = workload()
    req = otlp.to_request(profile, RESOURCE)
    assert otlp.validate_request(req) == []
    assert len(req.resource_profiles) == 2  # one per process

    resources = {}
    for rp in req.resource_profiles:
        attrs = {kv.key: otlp.any_value(kv.value) for kv in rp.resource.attributes}
        resources[attrs["process.pid"]] = attrs
        assert rp.scope_profiles[0].scope.name == "kiln"
        prof = rp.scope_profiles[0].profiles[0]
        st_ = req.dictionary.string_table
        assert (st_[prof.sample_type.type_strindex], st_[prof.sample_type.unit_strindex]) == (
            "samples",
            "count",
        )
        assert (st_[prof.period_type.type_strindex], st_[prof.period_type.unit_strindex]) == (
            "cpu",
            "nanoseconds",
        )
        assert prof.period == profile.period_ns
        assert prof.time_unix_nano == START_NS
        assert prof.duration_nano == profile.duration_ns
        assert len(prof.profile_id) == 16
    assert resources[1000] == {
        "host.name": "node-1",
        "service.name": "checkout",
        "process.pid": 1000,
        "process.executable.path": PYTHON_EXE,
        "process.executable.name": "python3.11",
    }
    assert resources[2000]["container.id"] == CONTAINER
    assert resources[2000]["process.executable.name"] == "nginx"

    samples = list(otlp.iter_samples(req))
    assert sum(s.count for s in samples) == profile.total_samples
    assert share(((f.function for f in s.frames), s.count) for s in samples) == pytest.approx(0.4)
    for s in samples:
        assert set(s.attributes) == {"thread.id", "thread.name", "cpu.logical_number"}
        assert isinstance(s.attributes["thread.id"], int)
        assert s.timestamps == (START_NS,)
        assert len(s.values) == 1
        kinds = {f.function: f.kind for f in s.frames}
        if HOT in kinds:
            assert kinds[HOT] == "cpython"
        if "do_syscall_64" in kinds:
            assert kinds["do_syscall_64"] == "kernel"
        assert kinds["__libc_start_main"] == "native"


def test_dictionary_is_shared_and_deduplicated() -> None:
    req = otlp.to_request(workload(), RESOURCE)
    d = req.dictionary
    assert len(set(d.string_table)) == len(d.string_table)
    for table in (d.function_table, d.location_table, d.stack_table, d.mapping_table):
        blobs = [e.SerializeToString(deterministic=True) for e in table]
        assert len(set(blobs)) == len(blobs)
        assert blobs[0] == b""
    libc = [m for m in d.mapping_table if d.string_table[m.filename_strindex].endswith("libc.so.6")]
    assert len(libc) == 1  # used by both processes, stored once
    build_ids = [d.attribute_table[i] for i in libc[0].attribute_indices]
    assert [d.string_table[a.key_strindex] for a in build_ids] == [otlp.BUILD_ID_KEY]


def test_round_trip_through_the_model() -> None:
    profile = workload(samples=2000)
    back = otlp.to_profile(otlp.to_request(profile, RESOURCE), RESOURCE)
    assert canonical(back) == canonical(profile)
    assert (back.start_ns, back.duration_ns, back.period_ns) == (
        profile.start_ns,
        profile.duration_ns,
        profile.period_ns,
    )
    assert profile_share(back) == pytest.approx(0.4)


def test_deterministic() -> None:
    assert otlp.encode(workload(), RESOURCE) == otlp.encode(workload(), RESOURCE)


def test_group_by_container() -> None:
    req = otlp.to_request(workload(), RESOURCE, group_by="container")
    assert otlp.validate_request(req) == []
    by_container = {
        next(
            (otlp.any_value(kv.value) for kv in rp.resource.attributes if kv.key == "container.id"),
            "",
        )
        for rp in req.resource_profiles
    }
    assert by_container == {"", CONTAINER}
    for s in otlp.iter_samples(req):
        assert "process.pid" in s.attributes and "process.pid" not in s.resource
    back = otlp.to_profile(req, RESOURCE)
    assert canonical(back) == canonical(workload())


def test_resource_labels_override_and_delete() -> None:
    p = Profile(start_ns=START_NS, duration_ns=1, period_ns=1)
    f = [Frame("main")]
    p.add(
        f, 3, [("pid", "1"), ("resource.service.name", "db"), ("resource.host.name", otlp.DELETED)]
    )
    p.add(f, 2, [("pid", "2"), ("resource.deployment.environment", "prod")])
    req = otlp.to_request(p, RESOURCE)
    assert otlp.validate_request(req) == []
    res = [
        {kv.key: otlp.any_value(kv.value) for kv in rp.resource.attributes}
        for rp in req.resource_profiles
    ]
    assert res[0] == {"service.name": "db", "process.pid": 1}
    assert res[1]["deployment.environment"] == "prod"
    assert res[1]["host.name"] == "node-1"
    assert canonical(otlp.to_profile(req, RESOURCE)) == canonical(p)


def test_explicit_attribute_label_wins() -> None:
    p = Profile()
    p.add([Frame("f")], 1, [("comm", "worker-7"), ("thread.name", "worker"), ("tid", "abc")])
    (s,) = otlp.iter_samples(otlp.to_request(p))
    assert s.attributes == {"thread.name": "worker", "thread.id": "abc"}  # not an int: kept as text


def test_empty_profile() -> None:
    req = otlp.to_request(Profile())
    assert not req.resource_profiles
    assert otlp.validate_request(req) == []


# -- the validator finds what is broken ---------------------------------------------


def _valid() -> svc.ExportProfilesServiceRequest:
    return otlp.to_request(workload(samples=200), RESOURCE)


def test_validator_catches_out_of_range_indices() -> None:
    req = _valid()
    prof = req.resource_profiles[0].scope_profiles[0].profiles[0]
    prof.samples[0].stack_index = len(req.dictionary.stack_table)
    req.dictionary.location_table[1].lines[0].function_index = 10_000
    req.dictionary.function_table[1].name_strindex = -1
    req.dictionary.stack_table[1].location_indices.append(0)
    problems = otlp.validate_request(req)
    assert any("stack index" in p and "out of range" in p for p in problems)
    assert any("function index 10000" in p for p in problems)
    assert any("function 1 name" in p for p in problems)
    assert any("location index 0 is the zero value" in p for p in problems)


def test_validator_catches_zero_values_and_duplicates() -> None:
    req = _valid()
    d = req.dictionary
    d.mapping_table[0].memory_start = 1
    d.string_table.append(d.string_table[3])
    d.function_table.add().CopyFrom(d.function_table[2])
    problems = otlp.validate_request(req)
    assert "mapping_table[0] is not the zero value" in problems
    assert any(p.startswith("string_table[") and "repeats" in p for p in problems)
    assert any(p.startswith("function_table[") and "repeats entry 2" in p for p in problems)
    req.ClearField("dictionary")
    assert otlp.validate_request(req) == ["no dictionary"]


def test_validator_catches_sample_shapes_and_repeated_keys() -> None:
    req = _valid()
    samples = req.resource_profiles[0].scope_profiles[0].profiles[0].samples
    samples[0].values.append(5)  # 2 values, 1 timestamp
    del samples[1].values[:]
    del samples[1].timestamps_unix_nano[:]
    samples[2].attribute_indices.append(samples[2].attribute_indices[0])
    samples[3].timestamps_unix_nano[0] = 1
    problems = otlp.validate_request(req)
    assert any("2 values but 1 timestamps" in p for p in problems)
    assert any("neither values nor timestamps" in p for p in problems)
    assert any("repeated" in p for p in problems)
    assert any("outside" in p for p in problems)


# -- fuzzing with generated profiles -------------------------------------------------

_names = st.text(min_size=0, max_size=12)
_mappings = st.one_of(
    st.none(),
    st.builds(
        Mapping,
        st.integers(0, 2**40),
        st.integers(0, 2**40),
        st.integers(0, 2**20),
        st.sampled_from(["/bin/a", "/lib/b.so", "[vdso]", ""]),
        st.sampled_from(["", "abcd", "ef01"]),
        st.sampled_from(list(FrameKind)),
    ),
)
_frames = st.builds(
    Frame,
    _names,
    st.integers(0, 2**64 - 1),
    st.sampled_from(list(FrameKind)),
    _mappings,
    system_name=_names,
    filename=st.sampled_from(["", "a.py", "b.c"]),
    line=st.integers(0, 5000),
)
_label_keys = st.sampled_from(
    [
        "pid",
        "tid",
        "comm",
        "cpu",
        "exe",
        "container",
        "cgroup",
        "kind",
        "resource.service.name",
        "resource.host.name",
        "thread.name",
        "process.pid",
    ]
)
_label_values = st.one_of(
    st.integers(-5, 2**40).map(str), st.text(max_size=8), st.just(otlp.DELETED)
)


@st.composite
def profiles(draw: st.DrawFn) -> Profile:
    p = Profile(
        start_ns=draw(st.integers(0, 2**62)),
        duration_ns=draw(st.integers(0, 2**40)),
        period_ns=draw(st.integers(0, 10**9)),
    )
    for _ in range(draw(st.integers(0, 12))):
        frames = draw(st.lists(_frames, max_size=8))
        labels = draw(st.lists(st.tuples(_label_keys, _label_values), max_size=6))
        p.add(frames, draw(st.integers(1, 1000)), dict(labels).items())
    return p


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    profiles(),
    st.sampled_from(["process", "container"]),
    st.dictionaries(_label_keys, _names, max_size=3),
)
def test_fuzz_requests_validate(
    profile: Profile, group_by: otlp.GroupBy, base: dict[str, str]
) -> None:
    req = otlp.to_request(profile, base, group_by=group_by)
    assert otlp.validate_request(req) == []
    # The bytes decode to the same request.
    again = svc.ExportProfilesServiceRequest.FromString(req.SerializeToString())
    assert otlp.validate_request(again) == []
    assert sum(s.count for s in otlp.iter_samples(again)) == profile.total_samples


@settings(max_examples=100, deadline=None)
@given(profiles())
def test_fuzz_validator_never_crashes_on_mutations(profile: Profile) -> None:
    req = otlp.to_request(profile, RESOURCE)
    data = bytearray(req.SerializeToString())
    # Flip bytes; whatever still parses must be checked without an exception.
    for i in range(0, len(data), max(1, len(data) // 7)):
        data[i] ^= 0x5A
        try:
            broken = svc.ExportProfilesServiceRequest.FromString(bytes(data))
        except Exception:
            continue
        assert isinstance(otlp.validate_request(broken), list)


def test_known_processes_in_workload() -> None:
    exes = {
        otlp.any_value(kv.value)
        for rp in otlp.to_request(workload(), RESOURCE).resource_profiles
        for kv in rp.resource.attributes
        if kv.key == "process.executable.path"
    }
    assert exes == {PYTHON_EXE, NGINX_EXE}
