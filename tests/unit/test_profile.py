"""The Profile model itself: interning, samples, merge, determinism."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from symbolizer.profile import (
    Frame,
    FrameKind,
    Function,
    Location,
    Mapping,
    Profile,
    StringTable,
)

LIBC = Mapping(0x7F0000000000, 0x7F0000200000, 0x1000, "/usr/lib/libc.so.6", "ab12")
APP = Mapping(0x400000, 0x500000, 0, "/usr/bin/app", "cd34")
MAIN = Frame("main", 0x401000, mapping=APP)
WORK = Frame("work", 0x402000, mapping=APP, filename="work.c", line=7)
READ = Frame("read", 0x7F0000001000, mapping=LIBC)
SYSCALL = Frame("do_syscall_64", 0xFFFFFFFF81000000, kind=FrameKind.KERNEL)


def content(p: Profile) -> Counter[tuple[object, ...]]:
    """A profile's samples with every id resolved; independent of interning order."""
    out: Counter[tuple[object, ...]] = Counter()
    for frames, labels, n in p.samples():
        stack = tuple(
            (fn, p.mappings[loc.mapping_id], loc.address, loc.line, loc.kind) for fn, loc in frames
        )
        out[(stack, labels)] += n
    return out


# -- interning --------------------------------------------------------------


def test_string_table_keeps_empty_string_at_zero() -> None:
    t = StringTable()
    assert len(t) == 1 and t[0] == ""
    assert t.intern("") == 0
    a = t.intern("a")
    assert t.intern("b") == a + 1
    assert t.intern("a") == a
    assert list(t) == ["", "a", "b"]


def test_index_zero_of_every_table_means_none() -> None:
    p = Profile()
    assert p.mappings == [None] and p.functions == [None] and p.locations == [None]
    assert p.stacks == [()] and p.label_sets == [()]
    assert p.mapping_id(None) == 0
    assert p.stack_id([]) == 0
    assert p.labels_id([]) == 0


def test_equal_frames_intern_once() -> None:
    p = Profile()
    a = p.location_id(WORK)
    assert p.location_id(Frame("work", 0x402000, mapping=APP, filename="work.c", line=7)) == a
    assert a >= 1
    loc = p.locations[a]
    assert loc is not None
    assert loc == Location(p.mapping_id(APP), 0x402000, loc.function_id, 7, FrameKind.NATIVE)
    assert p.functions[loc.function_id] == Function("work", "work", "work.c")
    # Same function at another address: a new location, the same function.
    b = p.location_id(Frame("work", 0x402010, mapping=APP, filename="work.c", line=7))
    assert b != a
    assert p.locations[b].function_id == loc.function_id  # type: ignore[union-attr]
    # Kind is part of a location's identity.
    c = p.location_id(Frame("work", 0x402000, FrameKind.PYTHON, APP, filename="work.c", line=7))
    assert c not in (a, b)


def test_system_name_defaults_to_the_display_name() -> None:
    p = Profile()
    loc = p.locations[p.location_id(Frame("f()", system_name="_Z1fv"))]
    assert loc is not None
    assert p.functions[loc.function_id] == Function("f()", "_Z1fv")
    loc = p.locations[p.location_id(Frame("g"))]
    assert loc is not None
    assert p.functions[loc.function_id] == Function("g", "g")


def test_stacks_intern_leaf_first() -> None:
    p = Profile()
    s1 = p.stack_id([READ, WORK, MAIN])
    assert p.stack_id([READ, WORK, MAIN]) == s1
    assert p.stack_id([WORK, MAIN]) != s1
    assert [fn.name for fn, _ in p.frames_of(s1)] == ["read", "work", "main"]


def test_empty_labels_intern_to_zero() -> None:
    p = Profile()
    assert p.labels_id([("container", "")]) == 0


def test_labels_are_sorted_and_empty_values_dropped() -> None:
    p = Profile()
    a = p.labels_id([("pid", "1"), ("comm", "app"), ("container", "")])
    assert p.label_sets[a] == (("comm", "app"), ("pid", "1"))
    assert p.labels_id([("comm", "app"), ("pid", "1")]) == a
    assert p.label_sets[p.labels_id([("container", "")])] == ()


# -- samples ----------------------------------------------------------------


def test_add_sums_counts_per_stack_and_labels() -> None:
    p = Profile()
    p.add([WORK, MAIN], 2, [("pid", "1")])
    p.add([WORK, MAIN], 3, [("pid", "1")])
    p.add([WORK, MAIN], 4, [("pid", "2")])
    p.add([WORK, MAIN], 0, [("pid", "3")])
    p.add([WORK, MAIN], -1, [("pid", "3")])
    assert sorted(p.counts.values()) == [4, 5]
    assert p.total_samples == 9


def test_samples_come_out_in_id_order() -> None:
    p = Profile()
    p.add([MAIN], 1, [("pid", "2")])
    p.add([WORK, MAIN], 1, [("pid", "1")])
    p.add([MAIN], 1, [("pid", "1")])
    got = [([fn.name for fn, _ in frames], labels) for frames, labels, _ in p.samples()]
    assert got == [
        (["main"], (("pid", "2"),)),
        (["main"], (("pid", "1"),)),
        (["work", "main"], (("pid", "1"),)),
    ]


# -- merge ------------------------------------------------------------------


def test_merge_reinterns_and_sums() -> None:
    a = Profile(start_ns=1000, duration_ns=100, period_ns=10)
    a.add([WORK, MAIN], 2, [("pid", "1")])
    b = Profile(start_ns=1050, duration_ns=200, period_ns=10)
    b.add([SYSCALL, READ], 1)  # interned in b before anything shared
    b.add([WORK, MAIN], 3, [("pid", "1")])
    b.add([READ, WORK, MAIN], 4, [("pid", "2")])
    expected = content(a) + content(b)
    a.merge(b)
    assert content(a) == expected
    assert a.start_ns == 1000 and a.duration_ns == 250 and a.period_ns == 10
    assert len(a.locations) == 1 + 4  # main, work, read, syscall; no duplicates


def test_merge_into_empty_takes_window_and_period() -> None:
    b = Profile(start_ns=500, duration_ns=20, period_ns=7)
    b.add([MAIN], 1)
    a = Profile()
    a.merge(b)
    assert (a.start_ns, a.duration_ns, a.period_ns) == (500, 20, 7)
    assert content(a) == content(b)


def test_merge_earlier_window_extends_start() -> None:
    a = Profile(start_ns=1000, duration_ns=100)
    a.merge(Profile(start_ns=900, duration_ns=50))
    assert (a.start_ns, a.duration_ns) == (900, 200)


# -- property tests -----------------------------------------------------------

_mappings = st.sampled_from([None, APP, LIBC])
_frames = st.builds(
    Frame,
    function=st.sampled_from(["main", "work", "read", "f", ""]),
    address=st.integers(0, 2**64 - 1),
    kind=st.sampled_from(FrameKind),
    mapping=_mappings,
    line=st.integers(0, 3),
)
_labels = st.lists(st.tuples(st.sampled_from(["pid", "comm", "cpu"]), st.sampled_from(["", "1"])))
_adds = st.lists(
    st.tuples(st.lists(_frames, max_size=5), st.integers(-1, 50), _labels), max_size=20
)


def build(adds: list[tuple[list[Frame], int, list[tuple[str, str]]]]) -> Profile:
    p = Profile()
    for frames, n, labels in adds:
        p.add(frames, n, labels)
    return p


@given(_adds, _adds)
def test_merge_adds_content(
    xs: list[tuple[list[Frame], int, list[tuple[str, str]]]],
    ys: list[tuple[list[Frame], int, list[tuple[str, str]]]],
) -> None:
    a, b = build(xs), build(ys)
    expected = content(a) + content(b)
    a.merge(b)
    assert content(a) == expected
    assert a.total_samples == sum(expected.values())


@given(_adds)
def test_same_adds_give_identical_tables(
    xs: list[tuple[list[Frame], int, list[tuple[str, str]]]],
) -> None:
    a, b = build(xs), build(xs)
    assert (a.mappings, a.functions, a.locations, a.stacks, a.label_sets) == (
        b.mappings,
        b.functions,
        b.locations,
        b.stacks,
        b.label_sets,
    )
    assert list(a.samples()) == list(b.samples())
    assert a.total_samples == sum(max(n, 0) for _, n, _ in xs)
