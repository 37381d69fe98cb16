"""pprof writer, reader and validator; and the generated protobuf module."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symbolizer import pprof
from symbolizer.profile import Frame, FrameKind, Function, Mapping, Profile
from symbolizer.proto import profile_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "symbolizer" / "proto"

APP = Mapping(0x400000, 0x500000, 0, "/usr/bin/app", "0123abcd")
LIBC = Mapping(0x7F0000000000, 0x7F0000200000, 0x28000, "/usr/lib/libc.so.6", "feedbeef")
KERNEL = Mapping(
    0xFFFFFFFF81000000, 0xFFFFFFFF82000000, 0, "[kernel.kallsyms]", "", FrameKind.KERNEL
)

MAIN = Frame("main", 0x401000, mapping=APP, filename="app.c", line=10)
WORK = Frame("work", 0x402000, mapping=APP, filename="app.c", line=20)
READ = Frame("__read", 0x7F0000001000, mapping=LIBC, system_name="__libc_read")
UNNAMED = Frame("libc.so.6+0x29abc", 0x7F0000001ABC, mapping=LIBC)
SYS_READ = Frame("ksys_read", 0xFFFFFFFF81001000, FrameKind.KERNEL, KERNEL)
HANDLER = Frame("handler", 0, FrameKind.PYTHON, filename="srv.py", line=42)


def sample_profile() -> Profile:
    p = Profile(start_ns=1_700_000_000_000_000_000, duration_ns=10**10, period_ns=10_101_010)
    p.add([SYS_READ, READ, WORK, MAIN], 3, [("pid", "42"), ("tid", "43"), ("comm", "app")])
    p.add([WORK, MAIN], 5, [("pid", "42"), ("tid", "42"), ("cpu", "0"), ("container", "c1")])
    p.add([HANDLER, MAIN], 2, [("pid", "7"), ("kind", "python"), ("exe", "/usr/bin/python3")])
    p.add([UNNAMED, MAIN], 1, [("pid", "007")])
    p.comments.append("kiln test")
    return p


def strings(msg: pb.Profile) -> list[str]:
    return list(msg.string_table)


def content(p: Profile) -> dict[tuple[object, ...], int]:
    """Samples with every id resolved, labels merged by content."""
    out: dict[tuple[object, ...], int] = {}
    for frames, labels, n in p.samples():
        stack = tuple(
            (fn, p.mappings[loc.mapping_id], loc.address, loc.line, loc.kind) for fn, loc in frames
        )
        key = (stack, labels)
        out[key] = out.get(key, 0) + n
    return out


# -- the generated module -----------------------------------------------------


def test_generated_module_matches_the_proto(tmp_path: Path) -> None:
    """profile_pb2.py(i) are exactly what tools/gen_proto.sh makes today."""
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is a dev dependency")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        "profile.proto",
    ]
    assert protoc.main(args) == 0
    for name in ("profile_pb2.py", "profile_pb2.pyi"):
        fresh = (tmp_path / name).read_text()
        committed = (PROTO_DIR / name).read_text()
        assert committed == fresh, f"{name} is stale or hand-edited: run tools/gen_proto.sh"


def test_schema_field_numbers() -> None:
    """Spot checks against the published perftools.profiles numbering."""
    numbers = {
        (m.name, f.name): f.number
        for m in pb.DESCRIPTOR.message_types_by_name.values()
        for f in m.fields
    }
    assert pb.DESCRIPTOR.package == "perftools.profiles"
    assert numbers[("Profile", "string_table")] == 6
    assert numbers[("Profile", "default_sample_type")] == 14
    assert numbers[("Profile", "doc_url")] == 15
    assert numbers[("Mapping", "has_inline_frames")] == 10
    assert numbers[("Location", "is_folded")] == 5
    assert numbers[("Line", "column")] == 3
    assert numbers[("Function", "start_line")] == 5
    assert numbers[("Label", "num_unit")] == 4


# -- writing -----------------------------------------------------------------


def test_encode_tables() -> None:
    p = sample_profile()
    msg = pb.Profile.FromString(pprof.encode(p))
    s = strings(msg)
    assert pprof.validate(msg) == []
    assert s[0] == ""
    assert [(s[t.type], s[t.unit]) for t in msg.sample_type] == [
        ("samples", "count"),
        ("cpu", "nanoseconds"),
    ]
    assert (s[msg.period_type.type], s[msg.period_type.unit]) == ("cpu", "nanoseconds")
    assert msg.period == p.period_ns
    assert msg.time_nanos == p.start_ns
    assert msg.duration_nanos == p.duration_ns
    assert [s[c] for c in msg.comment] == ["kiln test"]

    # One pprof location per model location, same (1-based) ids.
    assert [loc.id for loc in msg.location] == list(range(1, len(p.locations)))
    functions = {f.id: f for f in msg.function}
    mappings = {m.id: m for m in msg.mapping}
    assert sorted(functions) == list(range(1, len(functions) + 1))
    assert sorted(mappings) == [1, 2, 3]
    for loc in msg.location:
        model = p.locations[loc.id]
        assert model is not None
        assert loc.address == model.address
        assert len(loc.line) == 1
        assert loc.line[0].line == model.line
        fn = functions[loc.line[0].function_id]
        model_fn = p.functions[model.function_id]
        assert model_fn is not None
        suffix = {FrameKind.NATIVE: "", FrameKind.KERNEL: "_[k]", FrameKind.PYTHON: "_[py]"}
        assert s[fn.name] == model_fn.name + suffix[model.kind]
        assert s[fn.system_name] == model_fn.system_name
        assert s[fn.filename] == model_fn.filename
        model_mapping = p.mappings[model.mapping_id]
        if model_mapping is None:
            assert loc.mapping_id == 0
        else:
            m = mappings[loc.mapping_id]
            assert (m.memory_start, m.memory_limit, m.file_offset) == (
                model_mapping.start,
                model_mapping.limit,
                model_mapping.offset,
            )
            assert s[m.filename] == model_mapping.filename
            assert s[m.build_id] == model_mapping.build_id

    by_file = {s[m.filename]: m for m in msg.mapping}
    assert s[by_file["/usr/bin/app"].build_id] == "0123abcd"
    assert s[by_file["/usr/lib/libc.so.6"].build_id] == "feedbeef"
    assert by_file["[kernel.kallsyms]"].build_id == 0
    app = by_file["/usr/bin/app"]
    assert (app.has_functions, app.has_filenames, app.has_line_numbers) == (True, True, True)
    libc = by_file["/usr/lib/libc.so.6"]
    assert (libc.has_functions, libc.has_filenames, libc.has_line_numbers) == (True, False, False)
    assert not any(m.has_inline_frames for m in msg.mapping)

    names = {f.id: s[f.name] for f in msg.function}
    got = {}
    for sample in msg.sample:
        stack = tuple(names[loc.line[0].function_id] for loc in _locs(msg, sample.location_id))
        labels = {}
        for label in sample.label:
            labels[s[label.key]] = s[label.str] if label.str else label.num
            if not label.str:
                assert s[label.num_unit] == "id"
        got[stack] = (list(sample.value), labels)
    period = p.period_ns
    assert got == {
        ("ksys_read_[k]", "__read", "work", "main"): (
            [3, 3 * period],
            {"pid": 42, "tid": 43, "comm": "app"},
        ),
        ("work", "main"): (
            [5, 5 * period],
            {"pid": 42, "tid": 42, "cpu": 0, "container": "c1"},
        ),
        ("handler_[py]", "main"): (
            [2, 2 * period],
            {"pid": 7, "kind": "python", "exe": "/usr/bin/python3"},
        ),
        ("libc.so.6+0x29abc", "main"): ([1, period], {"pid": "007"}),
    }


def _locs(msg: pb.Profile, ids: object) -> list[pb.Location]:
    by_id = {loc.id: loc for loc in msg.location}
    return [by_id[i] for i in ids]  # type: ignore[attr-defined]


def test_mapping_of_only_unnamed_frames_has_no_functions() -> None:
    p = Profile()
    p.add([UNNAMED], 1)
    p.add([Frame("0x7f0000001abd", 0x7F0000001ABD, mapping=LIBC)], 1)
    msg = pb.Profile.FromString(pprof.encode(p))
    (m,) = msg.mapping
    assert not m.has_functions


def test_function_in_two_kinds_becomes_two_pprof_functions() -> None:
    p = Profile()
    p.add([Frame("f"), Frame("f", kind=FrameKind.KERNEL)], 1)
    msg = pb.Profile.FromString(pprof.encode(p))
    assert sorted(msg.string_table[f.name] for f in msg.function) == ["f", "f_[k]"]
    q = pprof.decode(pprof.encode(p))
    assert [f.name for f in q.functions if f] == ["f"]
    assert content(q) == content(p)


def test_output_is_deterministic(tmp_path: Path) -> None:
    p = sample_profile()
    assert pprof.encode(p) == pprof.encode(p)
    assert pprof.encode(p) == pprof.encode(pprof.decode(pprof.encode(p)))
    path = tmp_path / "cpu.pb.gz"
    pprof.write(p, path)
    buf = io.BytesIO()
    pprof.write(p, buf)
    assert path.read_bytes() == buf.getvalue() == pprof.dumps(p)
    assert gzip.decompress(path.read_bytes()) == pprof.encode(p)


def test_same_adds_give_same_bytes() -> None:
    assert pprof.encode(sample_profile()) == pprof.encode(sample_profile())


def test_empty_profile() -> None:
    msg = pb.Profile.FromString(pprof.encode(Profile()))
    assert pprof.validate(msg) == []
    assert not msg.sample and not msg.location
    q = pprof.decode(pprof.encode(Profile()))
    assert q.total_samples == 0


def test_empty_stack_sample_survives() -> None:
    p = Profile(period_ns=1)
    p.add([], 4, [("comm", "idle")])
    q = pprof.decode(pprof.dumps(p))
    assert content(q) == content(p)


# -- reading -----------------------------------------------------------------


def test_round_trip_sample_profile(tmp_path: Path) -> None:
    p = sample_profile()
    path = tmp_path / "p.pb.gz"
    pprof.write(p, path)
    for q in (pprof.read(path), pprof.decode(pprof.encode(p))):
        assert content(q) == content(p)
        assert (q.start_ns, q.duration_ns, q.period_ns) == (p.start_ns, p.duration_ns, p.period_ns)
        assert q.comments == p.comments
        assert {m for m in q.mappings if m} == {APP, LIBC, KERNEL}


def _foreign() -> pb.Profile:
    """A profile shaped like other tools write: inlining, bare addresses, units."""
    st_ = ["", "samples", "count", "cpu", "nanoseconds", "/bin/x", "memcpy", "printf", "main"]
    st_ += ["thread", "bytes", "size", "x.c", "build-1"]
    idx = {s: i for i, s in enumerate(st_)}
    msg = pb.Profile(string_table=st_, period=1000, time_nanos=5, duration_nanos=6)
    msg.sample_type.add(type=idx["samples"], unit=idx["count"])
    msg.sample_type.add(type=idx["cpu"], unit=idx["nanoseconds"])
    msg.period_type.type = idx["cpu"]
    msg.period_type.unit = idx["nanoseconds"]
    msg.mapping.add(
        id=7, memory_start=0x1000, memory_limit=0x9000, file_offset=0x200,
        filename=idx["/bin/x"], build_id=idx["build-1"],
    )  # fmt: skip
    msg.function.add(id=11, name=idx["memcpy"], system_name=idx["memcpy"])
    msg.function.add(id=12, name=idx["printf"], filename=idx["x.c"], start_line=3)
    msg.function.add(id=13, name=idx["main"])
    loc = msg.location.add(id=100, mapping_id=7, address=0x1500)
    loc.line.add(function_id=11, line=1)  # memcpy inlined into printf
    loc.line.add(function_id=12, line=9)
    msg.location.add(id=200, mapping_id=7, address=0x2345)  # never symbolized
    msg.location.add(id=300, address=0x77).line.add(function_id=13)
    s1 = msg.sample.add(location_id=[100, 200, 300], value=[2, 2000])
    s1.label.add(key=idx["thread"], str=idx["main"])
    s1.label.add(key=idx["size"], num=64, num_unit=idx["bytes"])
    msg.sample.add(location_id=[300], value=[0, 0])  # zero samples: dropped
    msg.sample.add(location_id=[300], value=[1, 1000])
    return msg


def test_decode_foreign_profile() -> None:
    msg = _foreign()
    assert pprof.validate(msg) == []
    q = pprof.decode(msg.SerializeToString())
    assert (q.start_ns, q.duration_ns, q.period_ns) == (5, 6, 1000)
    mapping = Mapping(0x1000, 0x9000, 0x200, "/bin/x", "build-1")
    got = {
        tuple((fn, q.mappings[loc.mapping_id], loc.line, loc.kind) for fn, loc in frames): (
            labels,
            n,
        )
        for frames, labels, n in q.samples()
    }
    assert got == {
        (
            (Function("memcpy", "memcpy"), mapping, 1, FrameKind.NATIVE),
            (Function("printf", "", "x.c", 3), mapping, 9, FrameKind.NATIVE),
            (Function("x+0x1545"), mapping, 0, FrameKind.NATIVE),
            (Function("main"), None, 0, FrameKind.NATIVE),
        ): ((("size", "64"), ("thread", "main")), 2),
        ((Function("main"), None, 0, FrameKind.NATIVE),): ((), 1),
    }


def test_decode_time_only_profile_counts_periods() -> None:
    st_ = ["", "cpu", "nanoseconds", "f", "microseconds"]
    msg = pb.Profile(string_table=st_, period=10)
    msg.sample_type.add(type=1, unit=4)  # cpu/microseconds
    msg.period_type.type = 1
    msg.period_type.unit = 4  # one sample every 10 us
    msg.function.add(id=1, name=3)
    msg.location.add(id=1).line.add(function_id=1)
    msg.sample.add(location_id=[1], value=[50])  # 50 us = 5 samples
    q = pprof.decode(msg.SerializeToString())
    assert q.period_ns == 10_000
    assert q.total_samples == 5


def test_decode_time_without_period_counts_nanoseconds() -> None:
    msg = pb.Profile(string_table=["", "wall", "milliseconds", "f"])
    msg.sample_type.add(type=1, unit=2)
    msg.function.add(id=1, name=3)
    msg.location.add(id=1).line.add(function_id=1)
    msg.sample.add(location_id=[1], value=[3])
    q = pprof.decode(gzip.compress(msg.SerializeToString()))
    assert (q.period_ns, q.total_samples) == (1, 3_000_000)


def test_decode_prefers_samples_count() -> None:
    msg = pb.Profile(string_table=["", "cpu", "nanoseconds", "samples", "count", "f"])
    msg.sample_type.add(type=1, unit=2)
    msg.sample_type.add(type=3, unit=4)
    msg.function.add(id=1, name=5)
    msg.location.add(id=1).line.add(function_id=1)
    msg.sample.add(location_id=[1], value=[999, 4])
    assert pprof.decode(msg.SerializeToString()).total_samples == 4


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff\xff", gzip.compress(b"\xff\xff\xff\xff"), b"\x1f\x8bnot gzip at all"],
)
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(pprof.PprofFormatError):
        pprof.decode(data)


def test_decode_rejects_broken_references() -> None:
    msg = _foreign()
    msg.sample[0].location_id.append(999)
    with pytest.raises(pprof.PprofFormatError, match="location id 999"):
        pprof.decode(msg.SerializeToString())


# -- validate ------------------------------------------------------------------


def _set_string0(m: pb.Profile) -> None:
    m.string_table[0] = "x"


def _clear_strings(m: pb.Profile) -> None:
    del m.string_table[:]


def _dup_location(m: pb.Profile) -> None:
    m.location.add(id=m.location[0].id)


def _zero_function_id(m: pb.Profile) -> None:
    m.function[0].id = 0


def _dup_mapping(m: pb.Profile) -> None:
    m.mapping.add(id=m.mapping[0].id)


def _missing_mapping(m: pb.Profile) -> None:
    m.location[0].mapping_id = 99


def _missing_function(m: pb.Profile) -> None:
    m.location[0].line[0].function_id = 99


def _missing_location(m: pb.Profile) -> None:
    m.sample[0].location_id[0] = 99


def _zero_location_ref(m: pb.Profile) -> None:
    m.sample[0].location_id.append(0)


def _bad_name(m: pb.Profile) -> None:
    m.function[0].name = len(m.string_table)


def _negative_string(m: pb.Profile) -> None:
    m.mapping[0].build_id = -1


def _bad_label(m: pb.Profile) -> None:
    m.sample[0].label.add(key=10_000, str=1)


def _two_valued_label(m: pb.Profile) -> None:
    m.sample[0].label.add(key=1, str=1, num=3)


def _short_values(m: pb.Profile) -> None:
    del m.sample[0].value[1:]


def _bad_sample_type(m: pb.Profile) -> None:
    m.sample_type[0].unit = 10_000


def _bad_comment(m: pb.Profile) -> None:
    m.comment.append(10_000)


def _bad_doc_url(m: pb.Profile) -> None:
    m.doc_url = 10_000


BREAKS: dict[str, tuple[Callable[[pb.Profile], None], str]] = {
    "string0": (_set_string0, "string_table[0]"),
    "no strings": (_clear_strings, "string_table is empty"),
    "duplicate location": (_dup_location, "location id 1 is not unique"),
    "zero function id": (_zero_function_id, "function id 0"),
    "duplicate mapping": (_dup_mapping, "mapping id 1 is not unique"),
    "missing mapping": (_missing_mapping, "mapping id 99 does not exist"),
    "missing function": (_missing_function, "function id 99 does not exist"),
    "missing location": (_missing_location, "location id 99 does not exist"),
    "zero location ref": (_zero_location_ref, "location id 0 does not exist"),
    "name out of range": (_bad_name, "name: string index"),
    "negative index": (_negative_string, "build_id: string index -1"),
    "label key": (_bad_label, "key: string index 10000"),
    "label both": (_two_valued_label, "both a string and a numeric value"),
    "values": (_short_values, "1 values for 2 sample types"),
    "sample type": (_bad_sample_type, "sample_type[0].unit"),
    "comment": (_bad_comment, "comment[1]"),
    "doc_url": (_bad_doc_url, "doc_url"),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_validate_catches(name: str) -> None:
    breaker, expected = BREAKS[name]
    msg = pb.Profile.FromString(pprof.encode(sample_profile()))
    assert pprof.validate(msg) == []
    breaker(msg)
    problems = pprof.validate(msg)
    assert any(expected in p for p in problems), problems


# -- property tests -----------------------------------------------------------

_name = st.text(st.characters(blacklist_characters="[", blacklist_categories=["Cs"]), max_size=8)
_plain_names = st.sampled_from(["main", "f", "g", "libc.so.6+0x10", "0xdead", ""])


@st.composite
def profiles(draw: st.DrawFn) -> Profile:
    names = draw(st.lists(st.one_of(_plain_names, _name), min_size=1, max_size=6))
    mappings = [
        Mapping(
            start=0x1000 * (i + 1) << 20,
            limit=(0x1000 * (i + 1) << 20) + draw(st.integers(1, 1 << 20)),
            offset=draw(st.integers(0, 1 << 32)),
            filename=f"/lib/m{i}.so",
            build_id=draw(st.sampled_from(["", "00ff", "deadbeef" * 5])),
            kind=draw(st.sampled_from([FrameKind.NATIVE, FrameKind.KERNEL])),
        )
        for i in range(draw(st.integers(0, 3)))
    ]

    def frame() -> Frame:
        mapping = draw(st.sampled_from([None, *mappings]))
        if mapping is None:
            kind = draw(st.sampled_from(FrameKind))
            address = draw(st.integers(0, 2**64 - 1))
        else:
            kind = mapping.kind
            address = draw(st.integers(mapping.start, mapping.limit - 1))
        return Frame(
            function=draw(st.sampled_from(names)),
            address=address,
            kind=kind,
            mapping=mapping,
            system_name=draw(st.sampled_from(["", "_Z1fv"])),
            filename=draw(st.sampled_from(["", "a.c", "b.py"])),
            line=draw(st.integers(0, 5000)),
        )

    label_value = st.one_of(
        st.integers(-(2**63), 2**63 - 1).map(str),
        st.sampled_from(["0", "007", "-0", "1e3", " 5", "", "x", str(2**63)]),
        _name,
    )
    label = st.tuples(
        st.sampled_from(["pid", "tid", "cpu", "comm", "container", "exe", "kind", "other"]),
        label_value,
    )
    p = Profile(
        start_ns=draw(st.integers(0, 2**63 - 1)),
        duration_ns=draw(st.integers(0, 2**40)),
        period_ns=draw(st.integers(0, 10**9)),
        comments=draw(st.lists(_name, max_size=2)),
    )
    for _ in range(draw(st.integers(0, 8))):
        frames = [frame() for _ in range(draw(st.integers(0, 6)))]
        p.add(frames, draw(st.integers(0, 10**6)), draw(st.lists(label, max_size=4)))
    return p


@settings(max_examples=200)
@given(profiles())
def test_round_trip(p: Profile) -> None:
    data = pprof.encode(p)
    msg = pb.Profile.FromString(data)
    assert pprof.validate(msg) == []
    q = pprof.decode(data)
    assert content(q) == content(p)
    assert (q.start_ns, q.duration_ns, q.period_ns, q.comments) == (
        p.start_ns,
        p.duration_ns,
        p.period_ns,
        p.comments,
    )
    assert pprof.encode(q) == data
    assert [s.value[1] for s in msg.sample] == [s.value[0] * p.period_ns for s in msg.sample]
