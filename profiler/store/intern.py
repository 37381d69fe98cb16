"""Writer-side interning: map profile content to store ids with few statements.

Each interned table has an `Interner`: a bounded in-memory cache from content
to id in front of a content-hash lookup. In steady state a window's strings,
functions, locations, stacks and label sets are all cache hits, so writing it
costs one INSERT for the window and one executemany for its samples. Misses
are resolved in one SELECT per table (by hash, content compared) and one
executemany INSERT for what is really new.

The single writer assigns ids itself (from sqlite_sequence), so new rows need
no read-back. The caches and counters are only valid for committed data:
after a rollback or a garbage collection the owner calls `reset`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar, cast

import numpy as np

from profiler.store.api import LABEL_KEYS, StoreError
from symbolizer.profile import Function, Labels, Location, Mapping, Profile

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
Row = tuple[object, ...]

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1
_U32_MAX = (1 << 32) - 1


def to_i64(x: int) -> int:
    """SQLite integers are signed 64-bit; kernel addresses are not. int() also
    turns a numpy integer into a Python one, which sqlite3 would store as a blob."""
    x = int(x)
    return x - _U64 if x > _I64_MAX else x


def to_u64(x: int) -> int:
    return x % _U64


def text(s: str) -> str:
    """SQLite stores UTF-8; a lone surrogate (an undecodable byte in a file name,
    kept by os.fsdecode) would make the whole window fail, so escape it."""
    return s if s.isascii() else s.encode("utf-8", "backslashreplace").decode("utf-8")


def row_hash(row: Row) -> int:
    # repr of ints, strs and None is stable across Python versions, unlike hash().
    return _digest(repr(row).encode("utf-8"))


def blob_hash(row: Row) -> int:
    blob = row[0]
    assert isinstance(blob, bytes)
    return _digest(blob)


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def sequence(conn: sqlite3.Connection, table: str) -> int:
    """The largest id ever given out in `table` (AUTOINCREMENT keeps it)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return int(row[0]) if row else 0


class Interner(Generic[K]):
    """Content → id for one interned table, cached up to `capacity` entries."""

    def __init__(
        self,
        table: str,
        columns: Sequence[str],
        *,
        capacity: int,
        hasher: Callable[[Row], int] = row_hash,
    ) -> None:
        self.table = table
        self.capacity = capacity
        self._hasher = hasher
        self._cache: dict[K, int] = {}
        self._next_id = 1
        cols = ", ".join(columns)
        marks = ", ".join("?" * (len(columns) + 2))
        self._select = (
            f"SELECT id, {cols} FROM {table} WHERE hash IN (SELECT value FROM json_each(?))"
        )
        self._insert = f"INSERT INTO {table} (id, hash, {cols}) VALUES ({marks})"

    def reset(self, conn: sqlite3.Connection) -> None:
        self._cache.clear()
        self._next_id = sequence(conn, self.table) + 1

    def ids(
        self,
        conn: sqlite3.Connection,
        keys: Sequence[K],
        to_row: Callable[[K], Row],
        prepare: Callable[[list[K]], None] | None = None,
    ) -> list[int]:
        """The id of each key, inserting rows for content the store lacks.
        `prepare` sees the keys missing from the cache before `to_row` does."""
        cache = self._cache
        got = list(map(cache.get, keys))  # one hash per key: the steady-state path
        if None not in got:
            return cast(list[int], got)
        missing = list(dict.fromkeys(k for k, i in zip(keys, got, strict=True) if i is None))
        if len(cache) + len(missing) > self.capacity:
            # Crude but bounded: start over rather than track recency per hit.
            cache.clear()
            missing = list(dict.fromkeys(keys))
        if prepare is not None:
            prepare(missing)
        self._resolve(conn, missing, to_row)
        return list(map(cache.__getitem__, keys))

    def _resolve(self, conn: sqlite3.Connection, keys: list[K], to_row: Callable[[K], Row]) -> None:
        rows = [to_row(k) for k in keys]
        hashes = [self._hasher(r) for r in rows]
        found: dict[Row, int] = {
            tuple(r[1:]): int(r[0])
            for r in conn.execute(self._select, (json.dumps(sorted(set(hashes))),))
        }
        new: list[Row] = []
        for key, row, h in zip(keys, rows, hashes, strict=True):
            rid = found.get(row)
            if rid is None:
                rid = self._next_id
                self._next_id += 1
                found[row] = rid
                new.append((rid, h, *row))
            self._cache[key] = rid
        if new:
            conn.executemany(self._insert, new)


class Interners:
    """One interner per table, and the walk from a Profile to store ids."""

    def __init__(self, capacity: int = 50_000) -> None:
        # A window uses a few thousand rows per table; 50,000 cached entries per
        # table keep the writer under ~30 MB on a host with very much code.
        self.strings: Interner[str] = Interner("strings", ("s",), capacity=capacity)
        self.mappings: Interner[Mapping] = Interner(
            "mappings",
            ("start", "limit_", "offset_", "filename_id", "build_id_id", "kind"),
            capacity=capacity,
        )
        self.functions: Interner[Function] = Interner(
            "functions",
            ("name_id", "system_name_id", "filename_id", "start_line"),
            capacity=capacity,
        )
        self.locations: Interner[Row] = Interner(
            "locations",
            ("mapping_id", "address", "function_id", "line", "kind"),
            capacity=capacity,
        )
        self.stacks: Interner[bytes] = Interner(
            "stacks", ("locs",), capacity=capacity // 2, hasher=blob_hash
        )
        self.labels: Interner[Labels] = Interner(
            "label_sets", (*LABEL_KEYS, "extra"), capacity=capacity
        )

    def reset(self, conn: sqlite3.Connection) -> None:
        for interner in (
            self.strings,
            self.mappings,
            self.functions,
            self.locations,
            self.stacks,
            self.labels,
        ):
            interner.reset(conn)

    def write_window(
        self, conn: sqlite3.Connection, profile: Profile, start_ns: int, duration_ns: int
    ) -> int:
        """Insert one window and everything it references; returns the window id.
        The caller owns the transaction."""
        stack_ids = sorted({s for s, _ in profile.counts})
        label_ids = sorted({lab for _, lab in profile.counts})
        stack_db = self._stacks(conn, profile, stack_ids)
        labels_db = dict(
            zip(
                label_ids,
                self.labels.ids(conn, [profile.label_sets[i] for i in label_ids], label_row),
                strict=True,
            )
        )
        merged: dict[tuple[int, int], int] = {}
        for (sid, lid), n in profile.counts.items():
            if n > 0:
                key = (stack_db[sid], labels_db[lid])
                merged[key] = merged.get(key, 0) + int(n)
        cur = conn.execute(
            "INSERT INTO windows (start_ns, duration_ns, period_ns, samples) VALUES (?, ?, ?, ?)",
            (int(start_ns), int(duration_ns), int(profile.period_ns), sum(merged.values())),
        )
        window_id = cur.lastrowid
        assert window_id is not None
        conn.executemany(
            "INSERT INTO samples (window_id, stack_id, labels_id, count) VALUES (?, ?, ?, ?)",
            [(window_id, s, lab, n) for (s, lab), n in merged.items()],
        )
        return window_id

    def _stacks(
        self, conn: sqlite3.Connection, profile: Profile, stack_ids: list[int]
    ) -> dict[int, int]:
        """Profile stack id → store stack id, interning what they reference."""
        stacks = [profile.stacks[s] for s in stack_ids]
        lengths = np.fromiter((len(s) for s in stacks), dtype=np.int64, count=len(stacks))
        flat = np.fromiter(
            itertools.chain.from_iterable(stacks), dtype=np.int64, count=int(lengths.sum())
        )
        loc_ids = np.unique(flat)
        lut = np.zeros(len(profile.locations), dtype=np.int64)
        lut[loc_ids] = self._locations(conn, profile, loc_ids.tolist())
        packed = lut[flat].astype("<u4").tobytes()
        ends = (np.cumsum(lengths) * 4).tolist()
        blobs = [packed[a:b] for a, b in zip([0, *ends], ends, strict=False)]
        return dict(zip(stack_ids, self.stacks.ids(conn, blobs, lambda b: (b,)), strict=True))

    def _locations(
        self, conn: sqlite3.Connection, profile: Profile, loc_ids: list[int]
    ) -> list[int]:
        locs: list[Location] = []
        for i in loc_ids:
            loc = profile.locations[i]
            if loc is None:
                raise ValueError(f"a stack refers to location {i}, the profile's zero value")
            locs.append(loc)
        fn_ids = sorted({loc.function_id for loc in locs})
        map_ids = sorted({loc.mapping_id for loc in locs} - {0})
        functions = [_present(profile.functions[i], "function", i) for i in fn_ids]
        mappings = [_present(profile.mappings[i], "mapping", i) for i in map_ids]
        # Strings are only needed for rows missing from the caches: none in steady state.
        s_db: dict[str, int] = {}

        def strings_of(items: list[Function] | list[Mapping]) -> None:
            needed = sorted({s for item in items for s in _strings_of(item)} - s_db.keys())
            s_db.update(zip(needed, self.strings.ids(conn, needed, _text_row), strict=True))

        m_lut: list[int | None] = [None] * len(profile.mappings)
        m_db = self.mappings.ids(conn, mappings, _mapping_row(s_db), strings_of)
        for i, db in zip(map_ids, m_db, strict=True):
            m_lut[i] = db
        f_lut = [0] * len(profile.functions)
        f_db = self.functions.ids(conn, functions, _function_row(s_db), strings_of)
        for i, db in zip(fn_ids, f_db, strict=True):
            f_lut[i] = db
        keys: list[Row] = [
            (
                m_lut[loc.mapping_id],
                to_i64(loc.address),
                f_lut[loc.function_id],
                int(loc.line),
                int(loc.kind),
            )
            for loc in locs
        ]
        ids = self.locations.ids(conn, keys, lambda k: k)
        if ids and max(ids) > _U32_MAX:
            raise StoreError(
                "the store has used up 32-bit location ids: move the store aside to start a new one"
            )
        return ids


def _present(item: T | None, what: str, i: int) -> T:
    if item is None:
        raise ValueError(f"a location refers to {what} {i}, the profile's zero value")
    return item


def _strings_of(item: Function | Mapping) -> tuple[str, ...]:
    if isinstance(item, Function):
        return (item.name, item.system_name, item.filename)
    return (item.filename, item.build_id)


def _text_row(s: str) -> Row:
    return (text(s),)


def _mapping_row(s_db: dict[str, int]) -> Callable[[Mapping], Row]:
    def row(m: Mapping) -> Row:
        return (
            to_i64(m.start),
            to_i64(m.limit),
            to_i64(m.offset),
            s_db[m.filename],
            s_db[m.build_id],
            int(m.kind),
        )

    return row


def _function_row(s_db: dict[str, int]) -> Callable[[Function], Row]:
    def row(f: Function) -> Row:
        return (s_db[f.name], s_db[f.system_name], s_db[f.filename], int(f.start_line))

    return row


def label_row(labels: Labels) -> Row:
    """Indexed columns for LABEL_KEYS (first value of each), the rest as JSON."""
    columns = dict.fromkeys(LABEL_KEYS, "")
    extra: list[tuple[str, str]] = []
    for k, v in labels:
        if k in columns and not columns[k]:
            columns[k] = text(v)
        else:
            extra.append((k, v))
    return (*columns.values(), json.dumps(extra))
