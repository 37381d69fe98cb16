"""Dropping old windows and collecting the interned rows nobody uses any more.

Windows go by age, then oldest first until the live data fits the size
budget. Interned rows (stacks, locations, ...) are shared between windows, so
they are collected by mark and sweep, which scans `samples` and `stacks`:
seconds for a full store, hence only occasionally (see SqliteStore).
Every function runs inside the caller's write transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np

_STACK_CHUNK = 20_000


@dataclass(frozen=True, slots=True)
class GcReport:
    """Interned rows removed because no remaining window referred to them."""

    stacks: int = 0
    locations: int = 0
    functions: int = 0
    mappings: int = 0
    strings: int = 0
    label_sets: int = 0


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What `apply_retention` removed."""

    windows_by_age: int = 0
    windows_by_size: int = 0
    sample_rows: int = 0
    gc: GcReport | None = None  # None when no garbage collection ran
    bytes_before: int = 0
    bytes_after: int = 0

    @property
    def windows(self) -> int:
        return self.windows_by_age + self.windows_by_size


def delete_windows_ending_before(conn: sqlite3.Connection, cutoff_ns: int) -> tuple[int, int]:
    """Delete windows that ended at or before cutoff_ns; (windows, sample rows)."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM windows WHERE start_ns < ? AND start_ns + duration_ns <= ?",
            (cutoff_ns, cutoff_ns),
        )
    ]
    return _delete_windows(conn, ids)


def delete_oldest_windows(conn: sqlite3.Connection, n: int) -> tuple[int, int]:
    ids = [r[0] for r in conn.execute("SELECT id FROM windows ORDER BY start_ns, id LIMIT ?", (n,))]
    return _delete_windows(conn, ids)


def _delete_windows(conn: sqlite3.Connection, ids: list[int]) -> tuple[int, int]:
    rows = 0
    for wid in ids:
        # samples is clustered by window_id: each delete is one contiguous range.
        rows += conn.execute("DELETE FROM samples WHERE window_id = ?", (wid,)).rowcount
    conn.executemany("DELETE FROM windows WHERE id = ?", [(w,) for w in ids])
    return len(ids), rows


def collect_garbage(conn: sqlite3.Connection) -> GcReport:
    """Mark and sweep, children after parents: stacks, then what they refer to."""
    stacks = conn.execute(
        "DELETE FROM stacks WHERE id NOT IN (SELECT stack_id FROM samples)"
    ).rowcount
    label_sets = conn.execute(
        "DELETE FROM label_sets WHERE id NOT IN (SELECT labels_id FROM samples)"
    ).rowcount
    locations = _sweep_locations(conn)
    functions = conn.execute(
        "DELETE FROM functions WHERE id NOT IN (SELECT function_id FROM locations)"
    ).rowcount
    mappings = conn.execute(
        "DELETE FROM mappings WHERE id NOT IN "
        "(SELECT mapping_id FROM locations WHERE mapping_id IS NOT NULL)"
    ).rowcount
    strings = conn.execute(
        "DELETE FROM strings WHERE id NOT IN ("
        "SELECT name_id FROM functions UNION SELECT system_name_id FROM functions "
        "UNION SELECT filename_id FROM functions UNION SELECT filename_id FROM mappings "
        "UNION SELECT build_id_id FROM mappings)"
    ).rowcount
    return GcReport(stacks, locations, functions, mappings, strings, label_sets)


def referenced_locations(conn: sqlite3.Connection) -> np.ndarray:
    """Every location id some stack refers to (sorted, unique). Stacks are blobs
    SQL cannot look into, so they are read in chunks and unpacked with numpy."""
    seen = np.zeros(0, dtype=np.int64)
    cur = conn.execute("SELECT locs FROM stacks")
    while chunk := cur.fetchmany(_STACK_CHUNK):
        ids = np.frombuffer(b"".join(r[0] for r in chunk), dtype="<u4")
        seen = np.union1d(seen, ids.astype(np.int64))
    return seen


def _location_ids(conn: sqlite3.Connection) -> np.ndarray:
    return np.fromiter((r[0] for r in conn.execute("SELECT id FROM locations")), np.int64)


def _sweep_locations(conn: sqlite3.Connection) -> int:
    keep = referenced_locations(conn)
    all_ids = _location_ids(conn)
    dead = np.setdiff1d(all_ids, keep, assume_unique=True)
    conn.executemany("DELETE FROM locations WHERE id = ?", [(i,) for i in dead.tolist()])
    return int(dead.size)


def dangling_stack_refs(conn: sqlite3.Connection) -> list[str]:
    """Location ids that stacks refer to but `locations` lacks."""
    keep = referenced_locations(conn)
    have = _location_ids(conn)
    missing = np.setdiff1d(keep, have, assume_unique=True)
    if not missing.size:
        return []
    shown = ", ".join(str(i) for i in missing[:10].tolist())
    return [f"stacks refer to {missing.size} missing locations ({shown})"]
