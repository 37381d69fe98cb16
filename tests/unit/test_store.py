"""The embedded SQLite store: round trips, filters, time, retention, failures, threads.

Every test uses a real SQLite file under tmp_path: it is cheap, and the
failure modes (disk full, corruption, newer schema) are SQLite's own.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler.store.api import Filters, ProfileSource, StoreError, TimelinePoint
from profiler.store.schema import SCHEMA_VERSION
from profiler.store.sqlite import SqliteStore
from symbolizer.profile import Frame, FrameKind, Mapping, Profile

S = 1_000_000_000
T0 = 1_700_000_000 * S
WINDOW = 10 * S
PERIOD = S // 99

APP = Mapping(0x5555_5555_0000, 0x5555_5556_0000, 0x1000, "/usr/bin/app", "a1b2")
LIBC = Mapping(0x7F00_0000_0000, 0x7F00_0020_0000, 0, "/usr/lib/libc.so.6", "c3d4")
MAIN = Frame("main", 0x5555_5555_1000, mapping=APP, filename="app.c", line=3)
WORK = Frame("work", 0x5555_5555_2000, mapping=APP, filename="app.c", line=9)
READ = Frame("read", 0x7F00_0000_1000, mapping=LIBC)
SYSCALL = Frame("do_syscall_64", 0xFFFF_FFFF_8100_0000, kind=FrameKind.KERNEL)
PYFUNC = Frame("handler", 0x7F00_0000_2000, kind=FrameKind.PYTHON, filename="srv.py", line=42)
ORPHAN = Frame("[unknown]", 0x1234)  # outside any mapping


def labels(
    pid: int, tid: int = 0, comm: str = "app", cpu: int = 0, **more: str
) -> list[tuple[str, str]]:
    return [
        ("pid", str(pid)),
        ("tid", str(tid or pid)),
        ("comm", comm),
        ("cpu", str(cpu)),
        *more.items(),
    ]


def sample_profile(scale: int = 1) -> Profile:
    p = Profile(period_ns=PERIOD)
    p.add([WORK, MAIN], 5 * scale, labels(10, exe="/usr/bin/app", container="c0ffee"))
    p.add([READ, WORK, MAIN], 3 * scale, labels(10, tid=11, cpu=1, exe="/usr/bin/app"))
    p.add([SYSCALL, READ, MAIN], 2 * scale, labels(20, comm="db", exe="/usr/bin/db"))
    p.add([PYFUNC, ORPHAN], 1 * scale, labels(30, comm="python3", cgroup="/system.slice/x"))
    return p


def content(p: Profile) -> Counter[tuple[object, ...]]:
    """Samples with every id resolved, so two profiles compare by meaning."""
    out: Counter[tuple[object, ...]] = Counter()
    for frames, labs, n in p.samples():
        stack = tuple(
            (fn, p.mappings[loc.mapping_id], loc.address, loc.line, loc.kind) for fn, loc in frames
        )
        out[(stack, labs)] += n
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "kiln.db") as s:
        yield s


def write(store: SqliteStore, p: Profile, k: int) -> None:
    """Window k of a run of 10 s windows from T0."""
    store.write_window(p, start_ns=T0 + k * WINDOW, duration_ns=WINDOW)


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def rows(path: Path, table: str) -> int:
    with raw(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# -- round trips -----------------------------------------------------------


def test_store_is_a_profile_source(store: SqliteStore) -> None:
    assert isinstance(store, ProfileSource)


def test_round_trip_keeps_samples_frames_kinds_and_labels(store: SqliteStore) -> None:
    p = sample_profile()
    write(store, p, 0)
    q = store.query(T0, T0 + WINDOW)
    assert content(q) == content(p)
    assert (q.start_ns, q.duration_ns, q.period_ns) == (T0, WINDOW, PERIOD)
    kinds = {loc.kind for loc in q.locations[1:] if loc}
    assert kinds == {FrameKind.NATIVE, FrameKind.KERNEL, FrameKind.PYTHON}
    assert store.integrity_check() == []


def test_query_loads_only_the_frames_it_uses(store: SqliteStore) -> None:
    write(store, sample_profile(), 0)
    q = store.query(T0, T0 + WINDOW, Filters(comms=("db",)))
    names = {fn.name for fn in q.functions[1:] if fn}
    assert names == {"do_syscall_64", "read", "main"}
    assert q.total_samples == 2


def test_round_trip_after_reopening_with_cold_caches(tmp_path: Path) -> None:
    path = tmp_path / "kiln.db"
    with SqliteStore(path) as s:
        write(s, sample_profile(), 0)
    counts = {t: rows(path, t) for t in ("stacks", "locations", "functions", "strings")}
    with SqliteStore(path) as s:
        write(s, sample_profile(), 1)
        assert content(s.query(T0 + WINDOW, T0 + 2 * WINDOW)) == content(sample_profile())
    # The reopened writer found every interned row instead of adding copies.
    assert {t: rows(path, t) for t in counts} == counts


def test_repeated_stacks_cost_no_new_rows(store: SqliteStore) -> None:
    write(store, sample_profile(), 0)
    interned = {t: rows(store.path, t) for t in ("stacks", "locations", "label_sets")}
    for k in range(1, 20):
        write(store, sample_profile(scale=k), k)
    assert {t: rows(store.path, t) for t in interned} == interned


def test_a_steady_state_window_costs_two_statements(store: SqliteStore) -> None:
    write(store, sample_profile(), 0)
    assert store._writer is not None  # the test reaches in to trace the writer
    traced: list[str] = []
    store._writer.set_trace_callback(traced.append)
    write(store, sample_profile(scale=2), 1)
    store._writer.set_trace_callback(None)
    statements = {" ".join(t.split()[:3]) for t in traced}  # executemany traces each row
    assert statements == {
        "BEGIN IMMEDIATE",
        "INSERT INTO windows",
        "INSERT INTO samples",
        "COMMIT",
    }


def test_query_of_several_windows_equals_profile_merge(store: SqliteStore) -> None:
    a, b = sample_profile(), Profile(period_ns=PERIOD)
    b.add([WORK, MAIN], 7, labels(10, exe="/usr/bin/app", container="c0ffee"))
    b.add([MAIN], 4, labels(40, comm="new"))
    write(store, a, 0)
    write(store, b, 1)
    expected = Profile()
    expected.merge(a)
    expected.merge(b)
    q = store.query(T0, T0 + 2 * WINDOW)
    assert content(q) == content(expected)
    assert (q.start_ns, q.duration_ns) == (T0, 2 * WINDOW)


def test_merged_result_reinterns_like_any_profile(store: SqliteStore) -> None:
    write(store, sample_profile(), 0)
    q = store.query(T0, T0 + WINDOW)
    before = len(q.locations)
    q.merge(sample_profile())  # the same frames: nothing new may be added
    assert len(q.locations) == before
    assert q.total_samples == 2 * sample_profile().total_samples


def test_undecodable_names_are_stored_not_fatal(store: SqliteStore) -> None:
    p = Profile(period_ns=PERIOD)
    odd = Frame("f\udcff", 0x10, mapping=Mapping(0, 0x100, 0, "/tmp/\udcfe.so"))
    p.add([odd], 1, labels(1, exe="/tmp/\udcfe"))
    write(store, p, 0)
    q = store.query(T0, T0 + WINDOW)
    assert q.total_samples == 1
    assert q.functions[1] is not None and q.functions[1].name == "f\\udcff"


def test_an_empty_window_is_recorded(store: SqliteStore) -> None:
    write(store, Profile(period_ns=PERIOD), 0)
    assert store.stats().windows == 1
    q = store.query(T0, T0 + WINDOW)
    assert q.total_samples == 0 and q.start_ns == T0


frames_st = st.builds(
    Frame,
    function=st.sampled_from(["main", "work", "read", "λ", "do_sys", "op<int>"]),
    address=st.integers(0, (1 << 64) - 1),
    kind=st.sampled_from(list(FrameKind)),
    mapping=st.one_of(st.none(), st.sampled_from([APP, LIBC])),
    filename=st.sampled_from(["", "a.c", "b.py"]),
    line=st.integers(0, 5000),
)
labels_st = st.lists(
    st.tuples(
        st.sampled_from(["pid", "tid", "comm", "cpu", "exe", "container", "cgroup", "x"]),
        st.text(min_size=0, max_size=5),
    ),
    max_size=5,
)
samples_st = st.lists(
    st.tuples(st.lists(frames_st, max_size=6), st.integers(1, 1000), labels_st), max_size=12
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(windows=st.lists(samples_st, min_size=1, max_size=3))
def test_random_profiles_round_trip(
    windows: list[list[tuple[list[Frame], int, list[tuple[str, str]]]]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp, SqliteStore(Path(tmp) / "kiln.db") as s:
        expected = Profile()
        for k, samples in enumerate(windows):
            p = Profile(period_ns=PERIOD)
            for frames, n, labs in samples:
                p.add(frames, n, labs)
            write(s, p, k)
            expected.merge(p)
            assert content(s.query(T0 + k * WINDOW, T0 + (k + 1) * WINDOW)) == content(p)
        assert content(s.query(T0, T0 + len(windows) * WINDOW)) == content(expected)
        assert s.integrity_check() == []


# -- filters and time ------------------------------------------------------


def test_filters_select_by_any_indexed_label(store: SqliteStore) -> None:
    write(store, sample_profile(), 0)

    def total(f: Filters) -> int:
        return store.query(T0, T0 + WINDOW, f).total_samples

    assert total(Filters()) == 11
    assert total(Filters(pids=("10",))) == 8
    assert total(Filters(pids=("10", "20"))) == 10  # any of the values
    assert total(Filters(tids=("11",))) == 3
    assert total(Filters(comms=("python3",))) == 1
    assert total(Filters(exes=("/usr/bin/app",))) == 8
    assert total(Filters(containers=("c0ffee",))) == 5
    assert total(Filters(pids=("10",), tids=("11",))) == 3  # all of the keys
    assert total(Filters(pids=("20",), comms=("app",))) == 0
    assert total(Filters(pids=("999",))) == 0


def test_time_ranges_pick_overlapping_windows(store: SqliteStore) -> None:
    for k in range(3):
        p = Profile(period_ns=PERIOD)
        p.add([MAIN], k + 1, labels(1))
        write(store, p, k)
    assert store.query(T0, T0 + 3 * WINDOW).total_samples == 6
    assert store.query(T0 + WINDOW, T0 + 2 * WINDOW).total_samples == 2  # ends are exclusive
    assert store.query(T0 + WINDOW - 1, T0 + WINDOW + 1).total_samples == 3
    middle = store.query(T0 + 15 * S, T0 + 16 * S)
    assert (middle.start_ns, middle.duration_ns) == (T0 + WINDOW, WINDOW)


def test_an_empty_time_range_gives_an_empty_profile(store: SqliteStore) -> None:
    write(store, sample_profile(), 0)
    for start, end in ((T0 - 100 * S, T0), (T0 + 5 * WINDOW, T0 + 9 * WINDOW), (T0 + S, T0)):
        q = store.query(start, end)
        assert q.total_samples == 0 and q.counts == {} and len(q.stacks) == 1
    assert store.query(0, 0).total_samples == 0


def test_timeline_has_every_bucket_and_spreads_windows(store: SqliteStore) -> None:
    for k in (0, 1, 3):  # window 2 missing
        p = Profile(period_ns=PERIOD)
        p.add([MAIN], 100, labels(1))
        p.add([WORK], 10 * (k + 1), labels(2))
        write(store, p, k)
    points = store.timeline(T0, T0 + 4 * WINDOW, WINDOW)
    assert points == [
        TimelinePoint(T0, 110),
        TimelinePoint(T0 + WINDOW, 120),
        TimelinePoint(T0 + 2 * WINDOW, 0),
        TimelinePoint(T0 + 3 * WINDOW, 140),
    ]
    halves = store.timeline(T0, T0 + 2 * WINDOW, WINDOW // 2)
    assert [pt.samples for pt in halves] == [55, 55, 60, 60]
    thirds = store.timeline(T0, T0 + WINDOW, WINDOW // 3 + 1)
    assert sum(pt.samples for pt in thirds) == 110  # rounding loses nothing
    filtered = store.timeline(T0, T0 + 4 * WINDOW, WINDOW, Filters(pids=("2",)))
    assert [pt.samples for pt in filtered] == [10, 20, 0, 40]
    assert store.timeline(T0 + 10 * WINDOW, T0 + 11 * WINDOW, S) == [
        TimelinePoint(T0 + 10 * WINDOW + i * S, 0) for i in range(10)
    ]


def test_timeline_rejects_bad_steps(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="positive"):
        store.timeline(T0, T0 + WINDOW, 0)
    with pytest.raises(ValueError, match="too many"):
        store.timeline(T0, T0 + 3600 * S, 1)
    assert store.timeline(T0, T0, S) == []


def test_label_values_most_samples_first(store: SqliteStore) -> None:
    write(store, sample_profile(), 0)
    write(store, sample_profile(), 1)
    assert store.label_values("comm", T0, T0 + 2 * WINDOW) == [
        ("app", 16),
        ("db", 4),
        ("python3", 2),
    ]
    assert store.label_values("pid", T0, T0 + WINDOW, limit=1) == [("10", 8)]
    assert store.label_values("container", T0, T0 + WINDOW) == [("c0ffee", 5)]
    assert store.label_values("exe", T0 + 9 * WINDOW, T0 + 10 * WINDOW) == []
    with pytest.raises(ValueError, match="unknown label 'cpu'"):
        store.label_values("cpu", T0, T0 + WINDOW)


def test_stats_describe_the_store(store: SqliteStore) -> None:
    empty = store.stats()
    assert (empty.windows, empty.samples, empty.oldest_ns, empty.newest_ns) == (0, 0, 0, 0)
    write(store, sample_profile(), 0)
    write(store, sample_profile(), 4)
    st_ = store.stats()
    assert st_.windows == 2 and st_.samples == 22
    assert (st_.oldest_ns, st_.newest_ns) == (T0, T0 + 5 * WINDOW)
    assert st_.schema_version == SCHEMA_VERSION and st_.write_errors == 0
    assert st_.bytes_on_disk > 0 and st_.path == str(store.path)


# -- retention -------------------------------------------------------------


def unique_profile(k: int, stacks: int = 1, depth: int = 3) -> Profile:
    """A window whose stacks and functions no other window has."""
    p = Profile(period_ns=PERIOD)
    for j in range(stacks):
        frames = [
            Frame(f"fn_{k}_{j}_{d}", 0x1000 * d + j, mapping=APP, filename=f"f{k}.c")
            for d in range(depth)
        ]
        p.add([*frames, MAIN], 1 + j % 3, labels(1000 + k, comm=f"c{k}"))
    return p


def test_retention_by_age_drops_old_windows_and_their_frames(store: SqliteStore) -> None:
    store.retention_s = 50
    for k in range(10):
        write(store, unique_profile(k), k)
    now = T0 + 10 * WINDOW
    report = store.apply_retention(now)
    assert report.windows_by_age == 5 and report.windows_by_size == 0
    assert report.gc is not None and report.gc.stacks == 5 and report.gc.functions == 15
    assert store.stats().oldest_ns == T0 + 5 * WINDOW
    assert store.query(T0, T0 + 5 * WINDOW).total_samples == 0
    assert content(store.query(T0 + 9 * WINDOW, now)) == content(unique_profile(9))
    assert store.label_values("comm", T0, now) == [(f"c{k}", 1) for k in range(5, 10)]
    assert rows(store.path, "functions") == 5 * 3 + 1  # main is still used
    assert store.integrity_check() == []
    # Nothing more is old: nothing is removed, and no collection is due yet.
    again = store.apply_retention(now)
    assert again.windows == 0 and again.gc is None


def test_garbage_collection_keeps_what_newer_windows_share(store: SqliteStore) -> None:
    store.retention_s = 10
    write(store, sample_profile(), 0)
    write(store, unique_profile(1), 1)
    p = Profile(period_ns=PERIOD)
    p.add([WORK, MAIN], 1, labels(10))  # shares a stack prefix and functions with window 0
    write(store, p, 2)
    report = store.apply_retention(T0 + 3 * WINDOW)
    assert report.windows_by_age == 2 and report.gc is not None
    assert content(store.query(T0, T0 + 3 * WINDOW)) == content(p)
    # The writer's caches forgot the collected rows: old content comes back whole.
    write(store, sample_profile(), 3)
    assert content(store.query(T0 + 3 * WINDOW, T0 + 4 * WINDOW)) == content(sample_profile())
    assert store.integrity_check() == []


def test_retention_by_size_really_shrinks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "kiln.db"
    with SqliteStore(path) as s:
        for k in range(120):
            write(s, unique_profile(k, stacks=40, depth=8), k)
    before = path.stat().st_size
    assert before > 2_000_000
    budget = before // 3
    with SqliteStore(path, max_bytes=budget) as s:
        report = s.apply_retention(T0 + 120 * WINDOW)  # nothing is old by age
        assert report.windows_by_age == 0 and report.windows_by_size > 60
        assert report.gc is not None and report.gc.stacks > 0
        assert s.bytes_on_disk() <= budget
        assert report.bytes_after < report.bytes_before
        newest = s.query(T0 + 119 * WINDOW, T0 + 120 * WINDOW)
        assert content(newest) == content(unique_profile(119, stacks=40, depth=8))
        assert s.stats().windows == 120 - report.windows_by_size
        assert s.integrity_check() == []
    assert path.stat().st_size <= budget < before


# -- failures --------------------------------------------------------------


def test_a_store_from_a_newer_kiln_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "kiln.db"
    SqliteStore(path).close()
    with raw(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for readonly in (False, True):
        with pytest.raises(StoreError, match="newer Kiln") as e:
            SqliteStore(path, readonly=readonly)
        assert str(path) in str(e.value) and "upgrade Kiln" in str(e.value)


def test_a_corrupt_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "kiln.db"
    path.write_bytes(b"this is not an SQLite database, just junk" * 200)
    with pytest.raises(StoreError, match="not a readable Kiln store") as e:
        SqliteStore(path)
    assert str(path) in str(e.value) and "move" in str(e.value)


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with raw(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a Kiln store"):
        SqliteStore(path)


def test_damaged_pages_are_reported_not_crashed_on(tmp_path: Path) -> None:
    path = tmp_path / "kiln.db"
    with SqliteStore(path) as s:
        for k in range(30):
            write(s, unique_profile(k, stacks=20), k)
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(8 * page, len(data), 3 * page):  # scribble over many pages
        data[offset + 100 : offset + 400] = b"\xa5" * 300
    path.write_bytes(bytes(data))
    try:
        s = SqliteStore(path)
    except StoreError as e:
        assert str(path) in str(e)
        return
    with s:
        assert s.integrity_check() != []
        with contextlib.suppress(StoreError):
            s.query(T0, T0 + 30 * WINDOW)  # a StoreError, or data, but no other exception


def test_disk_full_fails_the_window_and_nothing_else(store: SqliteStore) -> None:
    write(store, sample_profile(), 0)
    assert store._writer is not None  # the test reaches in to cap the file
    pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
    store._writer.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreError, match="disk is full") as e:
        write(store, unique_profile(1, stacks=300, depth=10), 1)
    assert str(store.path) in str(e.value)
    assert store.stats().write_errors == 1
    assert store.stats().windows == 1
    assert store.integrity_check() == []
    store._writer.execute("PRAGMA max_page_count = 1073741823")
    write(store, unique_profile(1, stacks=300, depth=10), 1)
    write(store, sample_profile(), 2)
    assert content(store.query(T0, T0 + WINDOW)) == content(sample_profile())
    assert content(store.query(T0 + WINDOW, T0 + 2 * WINDOW)) == content(
        unique_profile(1, stacks=300, depth=10)
    )
    assert store.stats().windows == 3 and store.stats().write_errors == 1
    assert store.integrity_check() == []


def test_one_writer_at_a_time_any_number_of_readers(store: SqliteStore) -> None:
    write(store, sample_profile(), 0)
    with pytest.raises(StoreError, match="already open for writing"):
        SqliteStore(store.path)
    with SqliteStore(store.path, readonly=True) as reader:
        assert reader.query(T0, T0 + WINDOW).total_samples == 11
        with pytest.raises(StoreError, match="read-only"):
            write(reader, sample_profile(), 1)
        with pytest.raises(StoreError, match="read-only"):
            reader.apply_retention(T0)


def test_readonly_without_a_store_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"no Kiln store at .*kiln run"):
        SqliteStore(tmp_path / "missing.db", readonly=True)


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "kiln.db")
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.query(T0, T0 + WINDOW)
    with pytest.raises(StoreError):
        write(s, sample_profile(), 0)


def test_new_store_files_are_private(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "sub" / "kiln.db") as s:
        write(s, sample_profile(), 0)
        assert (s.path.stat().st_mode & 0o777) == 0o600


# -- threads ----------------------------------------------------------------


def test_readers_see_whole_windows_while_the_writer_writes(store: SqliteStore) -> None:
    per_window = sample_profile().total_samples
    errors: list[BaseException] = []
    done = threading.Event()
    reads = Counter[str]()

    def reader(source: SqliteStore) -> None:
        try:
            while not done.is_set():
                q = source.query(T0, T0 + 1000 * WINDOW)
                found = q.duration_ns // WINDOW
                assert q.total_samples == found * per_window  # one consistent snapshot
                source.timeline(T0, T0 + 100 * WINDOW, WINDOW)
                source.label_values("comm", T0, T0 + 100 * WINDOW)
                source.stats()
                reads[threading.current_thread().name] += 1
        except BaseException as e:
            errors.append(e)

    with SqliteStore(store.path, readonly=True) as other:
        threads = [
            threading.Thread(target=reader, args=(src,), name=f"r{i}")
            for i, src in enumerate((store, store, other))
        ]
        for t in threads:
            t.start()
        try:
            for k in range(60):
                write(store, sample_profile(), k)
        finally:
            done.set()
            for t in threads:
                t.join(30)
    assert errors == []
    assert len(reads) == 3 and all(n > 0 for n in reads.values())
    assert store.stats().windows == 60


def test_a_long_reader_does_not_hold_up_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "kiln.db"
    with SqliteStore(path, retention_s=30, gc_interval_s=0) as s:
        write(s, sample_profile(), 0)
        with raw(path) as reader:
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM windows").fetchone()[0] == 1
            t0 = time.monotonic()
            for k in range(1, 10):
                write(s, unique_profile(k, stacks=20), k)
                s.apply_retention(T0 + (k + 1) * WINDOW)  # deletes, collects, checkpoints
            assert time.monotonic() - t0 < 3
            # The reader still sees its snapshot, untouched by deletes and vacuum.
            assert reader.execute("SELECT count(*) FROM windows").fetchone()[0] == 1
            reader.execute("COMMIT")
        assert s.stats().windows == 3
        assert s.integrity_check() == []
