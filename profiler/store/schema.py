"""The on-disk layout of a Kiln store (SQLite), its version, and opening it.

Layout (schema 1):

- `windows`: one row per closed profile window (start, duration, period, samples).
- `samples(window_id, stack_id, labels_id, count)`: WITHOUT ROWID, clustered by
  window, so a time range is a contiguous read and dropping a window is cheap.
- interned tables, each row written once and shared by every window:
  `strings`, `mappings`, `functions`, `locations` (with the frame kind),
  `stacks` (leaf-first location ids packed as little-endian uint32 in a blob)
  and `label_sets` (one TEXT column per LABEL_KEYS member, indexed for
  filters; other labels such as `cpu` as a JSON list in `extra`).
  Each has a 64-bit content `hash` (indexed, not unique: lookups compare the
  content too, so a collision costs a row, never a wrong answer).

Ids are AUTOINCREMENT and assigned by the single writer, so an id is never
reused after garbage collection: whatever a reader cached about an id stays
true for as long as the id exists.

Foreign keys are declared for `PRAGMA foreign_key_check` but not enforced:
enforcement would make deleting a stack scan `samples`, which has no index on
`stack_id` (one would double its size). The writer keeps them consistent and
`integrity_check` verifies them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from profiler.store.api import LABEL_KEYS, StoreError

SCHEMA_VERSION = 1
# "KILN" in the SQLite header: tells a Kiln store from any other SQLite file.
APPLICATION_ID = 0x4B494C4E

INTERNED_TABLES = ("strings", "mappings", "functions", "locations", "stacks", "label_sets")

_LABEL_COLUMNS = ", ".join(f"{k} TEXT NOT NULL" for k in LABEL_KEYS)
_LABEL_INDEXES = "\n".join(f"CREATE INDEX label_sets_{k} ON label_sets({k});" for k in LABEL_KEYS)

SCHEMA_SQL = f"""
CREATE TABLE windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    start_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL,
    period_ns INTEGER NOT NULL,
    samples INTEGER NOT NULL
);
CREATE INDEX windows_start ON windows(start_ns);

CREATE TABLE strings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash INTEGER NOT NULL,
    s TEXT NOT NULL
);
CREATE INDEX strings_hash ON strings(hash);

CREATE TABLE mappings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash INTEGER NOT NULL,
    start INTEGER NOT NULL,
    limit_ INTEGER NOT NULL,
    offset_ INTEGER NOT NULL,
    filename_id INTEGER NOT NULL REFERENCES strings(id),
    build_id_id INTEGER NOT NULL REFERENCES strings(id),
    kind INTEGER NOT NULL
);
CREATE INDEX mappings_hash ON mappings(hash);

CREATE TABLE functions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash INTEGER NOT NULL,
    name_id INTEGER NOT NULL REFERENCES strings(id),
    system_name_id INTEGER NOT NULL REFERENCES strings(id),
    filename_id INTEGER NOT NULL REFERENCES strings(id),
    start_line INTEGER NOT NULL
);
CREATE INDEX functions_hash ON functions(hash);

CREATE TABLE locations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash INTEGER NOT NULL,
    mapping_id INTEGER REFERENCES mappings(id),  -- NULL: outside any known mapping
    address INTEGER NOT NULL,                     -- u64 stored as its signed 64-bit twin
    function_id INTEGER NOT NULL REFERENCES functions(id),
    line INTEGER NOT NULL,
    kind INTEGER NOT NULL                         -- symbolizer.profile.FrameKind
);
CREATE INDEX locations_hash ON locations(hash);

CREATE TABLE stacks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash INTEGER NOT NULL,
    locs BLOB NOT NULL                            -- leaf first, little-endian uint32 ids
);
CREATE INDEX stacks_hash ON stacks(hash);

CREATE TABLE label_sets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash INTEGER NOT NULL,
    {_LABEL_COLUMNS},                             -- '' when absent
    extra TEXT NOT NULL                           -- JSON [[key, value], ...], sorted
);
CREATE INDEX label_sets_hash ON label_sets(hash);
{_LABEL_INDEXES}

CREATE TABLE samples (
    window_id INTEGER NOT NULL REFERENCES windows(id),
    stack_id INTEGER NOT NULL REFERENCES stacks(id),
    labels_id INTEGER NOT NULL REFERENCES label_sets(id),
    count INTEGER NOT NULL,
    PRIMARY KEY (window_id, stack_id, labels_id)
) WITHOUT ROWID;
"""

# Per-connection settings. WAL: readers never block the writer nor it them.
# synchronous=NORMAL: a commit is in the WAL (the OS page cache) when it returns,
# which survives kill -9; the WAL is fsynced at checkpoints, so a power loss can
# roll back the last few minutes of windows but never corrupts the file.
CONNECTION_PRAGMAS = (
    "PRAGMA synchronous = NORMAL",
    "PRAGMA temp_store = MEMORY",
    "PRAGMA cache_size = -8192",  # KiB per connection; the OS caches the file as well
    "PRAGMA journal_size_limit = 33554432",  # the WAL shrinks back to 32 MiB after checkpoints
)
BUSY_TIMEOUT_S = 5.0


def remedy_for_unreadable(path: Path) -> str:
    return f"move {path} aside (Kiln then starts an empty store there) or restore it from a backup"


def connect(path: Path, *, query_only: bool) -> sqlite3.Connection:
    """A connection in autocommit mode: transactions are opened explicitly."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        for pragma in CONNECTION_PRAGMAS:
            conn.execute(pragma)
        if query_only:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def is_blank(conn: sqlite3.Connection) -> bool:
    """A new (or zero-length) file: no tables, and not claimed by another program."""
    tables = conn.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'table'").fetchone()[0]
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    return not tables and app_id in (0, APPLICATION_ID)


def create(conn: sqlite3.Connection) -> None:
    """Lay out a new store. auto_vacuum must be chosen before the first table."""
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    set_wal(conn)
    try:
        conn.executescript(
            f"""BEGIN IMMEDIATE;
            {SCHEMA_SQL}
            PRAGMA application_id = {APPLICATION_ID};
            PRAGMA user_version = {SCHEMA_VERSION};
            COMMIT;"""
        )
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def set_wal(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(
            f"SQLite refused write-ahead logging (journal_mode={mode}) for this store: "
            "put --data-dir on a local filesystem (not NFS or a read-only mount)"
        )


def check_version(conn: sqlite3.Connection, path: Path) -> int:
    """The store's schema version, after refusing files Kiln cannot read."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if app_id != APPLICATION_ID:
        raise StoreError(
            f"{path} is an SQLite database but not a Kiln store (application_id "
            f"{app_id:#x}): point --data-dir at another directory, or move the file aside"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer Kiln (store schema {version}; this Kiln reads "
            f"schema {SCHEMA_VERSION} and older): upgrade Kiln, or point --data-dir at "
            "another directory to keep this store untouched"
        )
    return version
