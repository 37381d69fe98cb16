"""The embedded store: profile windows in one SQLite file (see schema.py).

`SqliteStore` implements `ProfileSource` for the web UI and adds what the
daemon needs: `write_window`, `apply_retention`, `integrity_check`.

Durability. The file is in WAL mode with synchronous=NORMAL. A window is
committed in one transaction; once `write_window` returns, the window
survives kill -9 of Kiln at any moment (the commit is in the WAL, in the OS
page cache). A power loss or kernel crash can roll back the windows written
since the WAL was last synced to disk, which happens at a checkpoint at least
once a minute; it never leaves a torn or corrupt file: SQLite replays only
complete, checksummed WAL transactions. (synchronous=FULL would sync every
commit: a disk flush every 10 s for one minute less to lose.)
A window being written when Kiln dies is lost whole, never half-stored.

Threads. One SqliteStore may be shared by the daemon's writer thread and
the web server's threads: writes and retention are serialized by a lock on
the one write connection; every read takes its own connection from a small
pool, reads one snapshot, and never blocks or waits for the writer. Call
`close` only once other threads have stopped using the store. Only one
process may open a store for writing (a lock file next to it says so);
any number may open it with readonly=True.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from profiler.store import read, retention, schema
from profiler.store.api import LABEL_KEYS, Filters, StoreError, StoreStats, TimelinePoint
from profiler.store.intern import Interners
from profiler.store.retention import GcReport, RetentionReport
from symbolizer.profile import Profile

_ANY = Filters()  # no filter; one shared (frozen) instance as the default
_READER_POOL = 4
_MAX_BUCKETS = 100_000
_SIZE_ROUNDS = 20
_LOW_WATERMARK = 0.9  # size retention deletes down to 90 % so it does not run every window
_NS = 1_000_000_000
_CHECKPOINT_WAIT_MS = 50
_CHECKPOINT_EVERY_S = 60.0

# Primary SQLite result codes worth their own remedy.
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL = 8, 10, 11, 13
_SQLITE_CANTOPEN, _SQLITE_NOTADB, _SQLITE_BUSY = 14, 26, 5


class SqliteStore:
    """Profile windows in an SQLite file; see the module docstring for guarantees."""

    def __init__(
        self,
        path: Path,
        *,
        retention_s: float = 86400,
        max_bytes: int = 2 << 30,
        readonly: bool = False,
        gc_interval_s: float = 3600,
    ) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self.readonly = readonly
        self.gc_interval_s = gc_interval_s
        self.schema_version = 0
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._pool: list[sqlite3.Connection] = []
        self._writer: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._interners = Interners()
        self._caches_valid = False
        self._write_errors = 0
        self._last_gc_ns: int | None = None
        self._windows_removed_since_gc = 0
        self._next_checkpoint = time.monotonic() + _CHECKPOINT_EVERY_S
        self._closed = False
        try:
            self._open_readonly() if readonly else self._open_for_writing()
        except BaseException:
            self.close()
            raise

    # -- opening and closing ----------------------------------------------

    def _open_for_writing(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = self._take_write_lock()
            if not self.path.exists():
                # Profiles name every process on the host: owner-only, and SQLite
                # gives the -wal and -shm files the same mode.
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except OSError as e:
            raise StoreError(
                f"cannot create the store {self.path}: {e.strerror}; check that the "
                "directory is writable by Kiln, or choose another --data-dir"
            ) from e
        with self._translate("open"):
            self._writer = schema.connect(self.path, query_only=False)
            if schema.is_blank(self._writer):
                schema.create(self._writer)
            # Refuse a newer or foreign file before changing anything in it.
            self.schema_version = schema.check_version(self._writer, self.path)
            schema.set_wal(self._writer)
            self._interners.reset(self._writer)
            self._caches_valid = True

    def _open_readonly(self) -> None:
        if not self.path.exists():
            raise StoreError(
                f"no Kiln store at {self.path}: start `kiln run` (it creates the store) "
                "or check --data-dir"
            )
        with self._reading("open") as conn:
            if schema.is_blank(conn):
                raise StoreError(
                    f"{self.path} is empty, not yet a Kiln store: start `kiln run` first"
                )
            self.schema_version = schema.check_version(conn, self.path)

    def _take_write_lock(self) -> int:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"{self.path} is already open for writing by another Kiln process "
                f"(it holds {lock_path}): stop that process, or open the store read-only"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def close(self) -> None:
        """Close every connection and release the write lock; idempotent."""
        self._closed = True
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()
        if self._writer is not None:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("PRAGMA optimize")
            self._writer.close()
            self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections, transactions and errors ------------------------------

    @contextlib.contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """SQLite's exceptions → StoreError naming the file and the remedy."""
        try:
            yield
        except sqlite3.Error as e:
            raise StoreError(self._explain(what, e)) from e
        except read.MissingRows as e:
            raise StoreError(
                f"could not {what} in {self.path}: the store is damaged ({e}); "
                f"{schema.remedy_for_unreadable(self.path)}"
            ) from e

    def _explain(self, what: str, e: sqlite3.Error) -> str:
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        head = f"could not {what} in {self.path}: {e}"
        if code == _SQLITE_FULL:
            return (
                f"{head}. The disk is full: free space on the filesystem of {self.path.parent}, "
                "or lower the store's retention or size limit; earlier data is intact"
            )
        if code == _SQLITE_IOERR:
            return (
                f"{head}. The disk reported an I/O error: check it (dmesg); earlier data is intact"
            )
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return (
                f"{self.path} is not a readable Kiln store ({e}): "
                + schema.remedy_for_unreadable(self.path)
            )
        if code in (_SQLITE_READONLY, _SQLITE_CANTOPEN):
            return f"{head}. Check that Kiln may read and write {self.path} and its directory"
        if code == _SQLITE_BUSY:
            return f"{head}. Another process keeps the store locked: is a second Kiln writing?"
        return head

    def _take_reader(self) -> sqlite3.Connection:
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
        if self._closed:
            raise StoreError(f"the store {self.path} is closed")
        return schema.connect(self.path, query_only=True)

    def _give_back(self, conn: sqlite3.Connection, healthy: bool) -> None:
        with self._pool_lock:
            if healthy and not self._closed and len(self._pool) < _READER_POOL:
                self._pool.append(conn)
                return
        conn.close()

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        """A pooled connection inside one read transaction (one snapshot)."""
        with self._translate(what):
            conn = self._take_reader()
        healthy = False
        try:
            with self._translate(what):
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
            healthy = True
        finally:
            self._give_back(conn, healthy)

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[sqlite3.Connection]:
        """The write connection inside one IMMEDIATE transaction, committed at the
        end; on any failure rolled back, with the writer's caches dropped."""
        with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StoreError(
                    f"cannot {what}: {self.path} is open read-only (or closed) in this process"
                )
            try:
                with self._translate(what):
                    if not self._caches_valid:
                        self._interners.reset(conn)
                        self._caches_valid = True
                    conn.execute("BEGIN IMMEDIATE")
                    yield conn
                    conn.execute("COMMIT")
            except BaseException:
                self._abandon(conn)
                raise

    def _abandon(self, conn: sqlite3.Connection) -> None:
        # SQLite may have rolled back already (disk full, I/O error); ids handed
        # out in the failed transaction are void, so the caches go too.
        self._caches_valid = False
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    # -- writing ------------------------------------------------------------

    def write_window(self, profile: Profile, *, start_ns: int, duration_ns: int) -> None:
        """Store one closed window atomically: all of it, or (on error) none of it.

        Raises StoreError when the store cannot take it (disk full, I/O error);
        the store stays usable and `stats().write_errors` counts the loss."""
        if duration_ns < 0:
            raise ValueError(f"a window cannot last {duration_ns} ns")
        try:
            with self._writing(f"write the window of {_when(start_ns)}") as conn:
                self._interners.write_window(conn, profile, start_ns, duration_ns)
        except Exception:
            with self._write_lock:
                self._write_errors += 1
            raise
        self._checkpoint_if_due()

    def _checkpoint_if_due(self) -> None:
        """Sync the WAL (and copy it into the file) at least once a minute, which
        bounds what a power loss can take; SQLite alone would wait for 1000 pages."""
        with self._write_lock:
            if self._writer is None or time.monotonic() < self._next_checkpoint:
                return
            self._next_checkpoint = time.monotonic() + _CHECKPOINT_EVERY_S
            # The window is committed already; a failed checkpoint is retried by
            # the next one and must not count as a lost window.
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    # -- reading (ProfileSource) ---------------------------------------------

    def query(self, start_ns: int, end_ns: int, filters: Filters = _ANY) -> Profile:
        """All samples of windows overlapping [start_ns, end_ns), merged into one
        Profile holding only the frames they use. No window: an empty Profile
        (start_ns, duration_ns and period_ns 0)."""
        with self._reading("query profiles") as conn:
            windows = read.windows_overlapping(conn, start_ns, end_ns)
            if not windows:
                return Profile()
            return read.build_profile(conn, windows, read.aggregate(conn, windows, filters))

    def timeline(
        self, start_ns: int, end_ns: int, step_ns: int, filters: Filters = _ANY
    ) -> list[TimelinePoint]:
        """Samples per bucket of step_ns from start_ns (every bucket present, the
        last one may reach past end_ns). A window's samples are spread over the
        buckets it overlaps. ValueError for a step ≤ 0 or over 100,000 buckets."""
        if step_ns <= 0:
            raise ValueError(f"timeline step must be positive, not {step_ns} ns")
        if end_ns <= start_ns:
            return []
        buckets = -(-(end_ns - start_ns) // step_ns)
        if buckets > _MAX_BUCKETS:
            raise ValueError(
                f"{buckets} timeline buckets is too many: use a step of at least "
                f"{-(-(end_ns - start_ns) // _MAX_BUCKETS)} ns for this range"
            )
        with self._reading("read the timeline") as conn:
            windows = read.windows_overlapping(conn, start_ns, end_ns)
            per_window = read.window_samples(conn, windows, filters)
        return read.bucket_samples(per_window, start_ns, end_ns, step_ns)

    def label_values(
        self, key: str, start_ns: int, end_ns: int, limit: int = 200
    ) -> list[tuple[str, int]]:
        """Distinct values of one label with their samples, most first.
        ValueError when key is not one of LABEL_KEYS."""
        if key not in LABEL_KEYS:
            raise ValueError(f"unknown label {key!r}: choose one of {', '.join(LABEL_KEYS)}")
        if limit <= 0:
            return []
        with self._reading("list label values") as conn:
            windows = read.windows_overlapping(conn, start_ns, end_ns)
            return read.label_values(conn, key, windows, limit) if windows else []

    def stats(self) -> StoreStats:
        """Size and extent; newest_ns is the end of the newest window, so
        [oldest_ns, newest_ns) covers everything stored."""
        with self._reading("read statistics") as conn:
            n, samples, oldest, newest = conn.execute(
                "SELECT count(*), coalesce(sum(samples), 0), coalesce(min(start_ns), 0), "
                "coalesce(max(start_ns + duration_ns), 0) FROM windows"
            ).fetchone()
        return StoreStats(
            path=str(self.path),
            bytes_on_disk=self.bytes_on_disk(),
            windows=int(n),
            samples=int(samples),
            oldest_ns=int(oldest),
            newest_ns=int(newest),
            schema_version=self.schema_version,
            write_errors=self._write_errors,
        )

    def bytes_on_disk(self) -> int:
        """The database file plus its write-ahead log."""
        total = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    # -- retention -----------------------------------------------------------

    def apply_retention(self, now_ns: int) -> RetentionReport:
        """Delete windows that ended more than retention_s before now_ns, then the
        oldest windows until the file (+WAL) fits in max_bytes (down to 90 % of it,
        so this does not run again at the next window), and give freed pages back
        to the filesystem. Collects unused stacks, frames and strings when the size
        limit bit or gc_interval_s has passed since the last collection."""
        before = self.bytes_on_disk()
        cutoff = now_ns - int(self.retention_s * _NS)
        with self._writing("delete windows older than the retention") as conn:
            by_age, rows = retention.delete_windows_ending_before(conn, cutoff)
        self._windows_removed_since_gc += by_age
        by_size, size_rows, gc = self._fit_size(now_ns)
        if gc is None and self._gc_due(now_ns):
            gc = self.collect_garbage(now_ns)
        self._return_free_pages(
            force=by_size > 0 or gc is not None or self.bytes_on_disk() > self.max_bytes
        )
        return RetentionReport(
            windows_by_age=by_age,
            windows_by_size=by_size,
            sample_rows=rows + size_rows,
            gc=gc,
            bytes_before=before,
            bytes_after=self.bytes_on_disk(),
        )

    def collect_garbage(self, now_ns: int = 0) -> GcReport:
        """Remove interned rows no window refers to any more (seconds on a full store).
        now_ns is when, for scheduling the next collection from apply_retention."""
        with self._writing("collect unused stacks and frames") as conn:
            report = retention.collect_garbage(conn)
            # Deleted ids may sit in the writer's caches; drop them before the
            # write lock lets the next window in.
            self._caches_valid = False
        self._last_gc_ns = now_ns
        self._windows_removed_since_gc = 0
        return report

    def _gc_due(self, now_ns: int) -> bool:
        if not self._windows_removed_since_gc:
            return False
        last = self._last_gc_ns
        return last is None or now_ns - last >= self.gc_interval_s * _NS

    def _fit_size(self, now_ns: int) -> tuple[int, int, GcReport | None]:
        """Delete oldest windows while the live data exceeds the budget."""
        if self._live_bytes() <= self.max_bytes:
            return 0, 0, None
        target = int(self.max_bytes * _LOW_WATERMARK)
        windows = rows = 0
        gc: GcReport | None = None
        for _ in range(_SIZE_ROUNDS):
            live = self._live_bytes()
            if live <= target:
                break
            with self._writing("delete the oldest windows to fit the size limit") as conn:
                n_windows = conn.execute("SELECT count(*) FROM windows").fetchone()[0]
                if not n_windows:
                    break
                # Shared stacks make bytes per window uneven: estimate, then re-measure.
                n = max(1, math.ceil(n_windows * (live - target) / live))
                w, r = retention.delete_oldest_windows(conn, n)
            windows += w
            rows += r
            self._windows_removed_since_gc += w
            gc = _add_gc(gc, self.collect_garbage(now_ns))
        return windows, rows, gc

    def _live_bytes(self) -> int:
        """Bytes the file would take once checkpointed and vacuumed."""
        with self._reading("measure the store") as conn:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _return_free_pages(self, *, force: bool) -> None:
        """Incremental vacuum, then a truncating checkpoint so the file shrinks.
        Unless forced, only when the free pages are worth it: pages freed by
        one window's deletion are better reused by the next window."""
        with self._write_lock:
            conn = self._writer
            if conn is None:
                return
            with self._translate("return free space to the filesystem"):
                free = conn.execute("PRAGMA freelist_count").fetchone()[0]
                size = conn.execute("PRAGMA page_size").fetchone()[0]
                if not force and free * size < min(16 << 20, self.max_bytes // 20):
                    return
                # sqlite3's execute() steps a statement once, which frees one page;
                # executescript runs it to completion.
                conn.executescript("PRAGMA incremental_vacuum;")
                # A truncating checkpoint waits for readers on older snapshots; wait
                # briefly, not the full busy timeout: the WAL can shrink next time.
                conn.execute(f"PRAGMA busy_timeout = {_CHECKPOINT_WAIT_MS}")
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {int(schema.BUSY_TIMEOUT_S * 1000)}")

    # -- checking ------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        """Problems found (empty when the store is sound): SQLite's page-level
        check, dangling references, and windows whose samples do not add up."""
        problems: list[str] = []
        try:
            with self._reading("check the store") as conn:
                problems += [
                    str(r[0]) for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"
                ]
                problems += [
                    f"{table} row {rowid} refers to a missing {parent} row"
                    for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check")
                ]
                problems += retention.dangling_stack_refs(conn)
                problems += [
                    f"window {wid} says {n} samples but holds {got}"
                    for wid, n, got in conn.execute(
                        "SELECT w.id, w.samples, coalesce(s.n, 0) FROM windows w LEFT JOIN "
                        "(SELECT window_id, sum(count) AS n FROM samples GROUP BY window_id) s "
                        "ON s.window_id = w.id WHERE coalesce(s.n, 0) != w.samples"
                    )
                ]
        except StoreError as e:
            problems.append(str(e))
        return problems


def _add_gc(a: GcReport | None, b: GcReport) -> GcReport:
    if a is None:
        return b
    return GcReport(
        a.stacks + b.stacks,
        a.locations + b.locations,
        a.functions + b.functions,
        a.mappings + b.mappings,
        a.strings + b.strings,
        a.label_sets + b.label_sets,
    )


def _when(ns: int) -> str:
    try:
        return datetime.datetime.fromtimestamp(ns / _NS, datetime.UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"{ns} ns"
