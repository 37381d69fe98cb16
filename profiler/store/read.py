"""Reader side: select windows, aggregate samples in SQL, build one Profile.

Every function here runs inside the caller's read transaction, so it sees one
consistent snapshot however the writer moves on meanwhile.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from profiler.store.api import LABEL_KEYS, Filters, TimelinePoint
from profiler.store.intern import to_u64
from symbolizer.profile import FrameKind, Function, Labels, Location, Mapping, Profile

_IN_IDS = "IN (SELECT value FROM json_each(?))"
_FILTER_COLUMNS = (
    ("pid", "pids"),
    ("tid", "tids"),
    ("comm", "comms"),
    ("exe", "exes"),
    ("container", "containers"),
)


_KINDS = {int(k): k for k in FrameKind}  # a dict lookup is 10x cheaper than FrameKind(n)


class MissingRows(Exception):
    """A row refers to interned rows that are not there: a damaged store."""


@dataclass(frozen=True, slots=True)
class Window:
    id: int
    start_ns: int
    duration_ns: int
    period_ns: int
    samples: int

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns


def windows_overlapping(conn: sqlite3.Connection, start_ns: int, end_ns: int) -> list[Window]:
    """Windows overlapping [start_ns, end_ns); a zero-length window counts where it starts."""
    if end_ns <= start_ns:
        return []
    rows = conn.execute(
        "SELECT id, start_ns, duration_ns, period_ns, samples FROM windows "
        "WHERE start_ns < ? AND start_ns + max(duration_ns, 1) > ? ORDER BY start_ns, id",
        (end_ns, start_ns),
    )
    return [Window(*r) for r in rows]


def label_filter(filters: Filters) -> tuple[str, list[object]]:
    """An `AND labels_id IN (...)` clause for the filters, or "" for none."""
    conds: list[str] = []
    params: list[object] = []
    for column, attr in _FILTER_COLUMNS:
        values: tuple[str, ...] = getattr(filters, attr)
        if values:
            conds.append(f"{column} {_IN_IDS}")
            params.append(json.dumps([str(v) for v in values]))
    if not conds:
        return "", []
    return f" AND labels_id IN (SELECT id FROM label_sets WHERE {' AND '.join(conds)})", params


def aggregate(
    conn: sqlite3.Connection, windows: Sequence[Window], filters: Filters
) -> list[tuple[int, int, int]]:
    """(stack_id, labels_id, samples) summed over the windows."""
    clause, params = label_filter(filters)
    return conn.execute(
        f"SELECT stack_id, labels_id, sum(count) FROM samples WHERE window_id {_IN_IDS}"
        f"{clause} GROUP BY stack_id, labels_id",
        (json.dumps([w.id for w in windows]), *params),
    ).fetchall()


def _by_ids(
    conn: sqlite3.Connection, select: str, table: str, ids: Sequence[int]
) -> list[tuple[Any, ...]]:
    """Rows of `table` for ids (ascending), all of which must exist."""
    rows: list[tuple[Any, ...]] = conn.execute(
        f"{select} FROM {table} WHERE id {_IN_IDS} ORDER BY id", (json.dumps(list(ids)),)
    ).fetchall()
    if len(rows) != len(ids):
        raise MissingRows(f"{len(ids) - len(rows)} referenced {table} rows are missing")
    return rows


def build_profile(
    conn: sqlite3.Connection, windows: Sequence[Window], agg: list[tuple[int, int, int]]
) -> Profile:
    """One Profile holding only what the aggregated samples reference."""
    if not windows:
        return Profile()
    start = min(w.start_ns for w in windows)
    end = max(w.end_ns for w in windows)
    tables = _Tables(conn)
    stack_col, label_col, counts = zip(*agg, strict=True) if agg else ((), (), ())
    stack_ids, stack_inv = np.unique(np.array(stack_col, dtype=np.int64), return_inverse=True)
    label_ids, label_inv = np.unique(np.array(label_col, dtype=np.int64), return_inverse=True)
    stacks, loc_ids = tables.stacks(stack_ids.tolist())
    profile = tables.profile(loc_ids.tolist())
    profile.start_ns, profile.duration_ns = start, end - start
    profile.period_ns = _main_period(windows)
    local_stack = [profile.stack_id_of_locations(s) for s in stacks]
    local_label = [profile.labels_id(labels) for labels in tables.label_sets(label_ids.tolist())]
    profile.counts = {
        (local_stack[s], local_label[lab]): n
        for s, lab, n in zip(stack_inv.tolist(), label_inv.tolist(), counts, strict=True)
    }
    return profile


def _main_period(windows: Sequence[Window]) -> int:
    """The period of most samples: a frequency change mid-range leaves one period
    for the merged profile, and the majority is the least wrong."""
    weight: dict[int, int] = {}
    for w in windows:
        weight[w.period_ns] = weight.get(w.period_ns, 0) + w.samples
    return max(weight.items(), key=lambda kv: (kv[1], kv[0]))[0]


class _Tables:
    """Loads interned rows by id and turns them into model objects."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def stacks(self, ids: list[int]) -> tuple[list[tuple[int, ...]], np.ndarray]:
        """Stacks as tuples of profile-local location ids (1-based, in the order of
        the returned store location ids)."""
        blobs = [r[1] for r in _by_ids(self.conn, "SELECT id, locs", "stacks", ids)]
        flat = np.frombuffer(b"".join(blobs), dtype="<u4").astype(np.int64)
        loc_ids, inv = np.unique(flat, return_inverse=True)
        local = (inv + 1).tolist()
        out: list[tuple[int, ...]] = []
        pos = 0
        for b in blobs:
            n = len(b) // 4
            out.append(tuple(local[pos : pos + n]))
            pos += n
        return out, loc_ids

    def profile(self, loc_ids: list[int]) -> Profile:
        """A Profile whose locations are exactly loc_ids (local id = position + 1)."""
        locs = _by_ids(
            self.conn,
            "SELECT id, mapping_id, address, function_id, line, kind",
            "locations",
            loc_ids,
        )
        fn_ids = sorted({r[3] for r in locs})
        map_ids = sorted({r[1] for r in locs if r[1] is not None})
        fns = _by_ids(
            self.conn,
            "SELECT id, name_id, system_name_id, filename_id, start_line",
            "functions",
            fn_ids,
        )
        maps = _by_ids(
            self.conn,
            "SELECT id, start, limit_, offset_, filename_id, build_id_id, kind",
            "mappings",
            map_ids,
        )
        text = self._strings(
            {*(s for r in fns for s in r[1:4]), *(s for r in maps for s in r[4:6])}
        )
        functions = [Function(text[r[1]], text[r[2]], text[r[3]], r[4]) for r in fns]
        mappings = [
            Mapping(to_u64(r[1]), to_u64(r[2]), to_u64(r[3]), text[r[4]], text[r[5]], _KINDS[r[6]])
            for r in maps
        ]
        fn_local = {r[0]: i for i, r in enumerate(fns, 1)}
        map_local = {r[0]: i for i, r in enumerate(maps, 1)}
        locations = [
            Location(
                map_local[r[1]] if r[1] is not None else 0,
                to_u64(r[2]),
                fn_local[r[3]],
                r[4],
                _KINDS[r[5]],
            )
            for r in locs
        ]
        # The model's own interning dictionaries are filled here too, so the
        # result merges and re-interns like any Profile built with add().
        return Profile(
            mappings=[None, *mappings],
            functions=[None, *functions],
            locations=[None, *locations],
            _mapping_ids={m: i for i, m in enumerate(mappings, 1)},
            _function_ids={f: i for i, f in enumerate(functions, 1)},
            _location_ids={loc: i for i, loc in enumerate(locations, 1)},
        )

    def _strings(self, ids: set[int]) -> dict[int, str]:
        rows = _by_ids(self.conn, "SELECT id, s", "strings", sorted(ids))
        return {int(r[0]): str(r[1]) for r in rows}

    def label_sets(self, ids: list[int]) -> list[Labels]:
        cols = ", ".join(LABEL_KEYS)
        rows = _by_ids(self.conn, f"SELECT id, {cols}, extra", "label_sets", ids)
        return [labels_of_row(r[1:]) for r in rows]


def labels_of_row(row: Sequence[object]) -> Labels:
    pairs = [(k, str(v)) for k, v in zip(LABEL_KEYS, row, strict=False) if v]
    pairs += [(str(k), str(v)) for k, v in json.loads(str(row[len(LABEL_KEYS)]))]
    return tuple(sorted(pairs))


# -- timeline and label values ---------------------------------------------


def window_samples(
    conn: sqlite3.Connection, windows: Sequence[Window], filters: Filters
) -> list[tuple[Window, int]]:
    """Each window with its samples that pass the filters."""
    clause, params = label_filter(filters)
    if not clause:
        return [(w, w.samples) for w in windows]
    sums = dict(
        conn.execute(
            f"SELECT window_id, sum(count) FROM samples WHERE window_id {_IN_IDS}{clause} "
            "GROUP BY window_id",
            (json.dumps([w.id for w in windows]), *params),
        ).fetchall()
    )
    return [(w, int(sums.get(w.id, 0))) for w in windows]


def bucket_samples(
    per_window: Sequence[tuple[Window, int]], start_ns: int, end_ns: int, step_ns: int
) -> list[TimelinePoint]:
    """Spread each window's samples over the buckets it overlaps, in proportion
    to the overlap, so a step shorter than a window draws a level line instead
    of a spike and gaps. Integer shares come from a cumulative split, so no
    sample is lost or invented by rounding."""
    n = -(-(end_ns - start_ns) // step_ns)
    totals = [0] * n
    for w, samples in per_window:
        if w.duration_ns <= 0:
            b = (w.start_ns - start_ns) // step_ns
            if 0 <= b < n:
                totals[b] += samples
            continue
        first = max(0, (w.start_ns - start_ns) // step_ns)
        last = min(n - 1, (w.end_ns - 1 - start_ns) // step_ns)
        for b in range(first, last + 1):
            lo = max(w.start_ns, start_ns + b * step_ns)
            hi = min(w.end_ns, start_ns + (b + 1) * step_ns, end_ns)
            if hi > lo:
                totals[b] += _share(samples, w, hi) - _share(samples, w, lo)
    return [TimelinePoint(start_ns + i * step_ns, t) for i, t in enumerate(totals)]


def _share(samples: int, w: Window, t: int) -> int:
    """Samples of window w before time t, assuming they were spread evenly."""
    return samples * (t - w.start_ns) // w.duration_ns


def label_values(
    conn: sqlite3.Connection, key: str, windows: Sequence[Window], limit: int
) -> list[tuple[str, int]]:
    """Distinct non-empty values of one indexed label with their samples, most first."""
    # Sum per label set first (few rows), then per value: far fewer joins.
    rows = conn.execute(
        f"WITH per AS (SELECT labels_id, sum(count) AS n FROM samples "
        f"WHERE window_id {_IN_IDS} GROUP BY labels_id) "
        f"SELECT l.{key}, sum(per.n) AS total FROM per JOIN label_sets l ON l.id = per.labels_id "
        f"WHERE l.{key} != '' GROUP BY l.{key} ORDER BY total DESC, l.{key} LIMIT ?",
        (json.dumps([w.id for w in windows]), limit),
    ).fetchall()
    return [(str(v), int(n)) for v, n in rows]
