"""What the web UI and the exporters ask of stored profiles (plain data).

`profiler.store.sqlite.SqliteStore` implements `ProfileSource`; the Flask UI
is written against this protocol only, so it never sees SQL.
Times are wall-clock nanoseconds since the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from symbolizer.profile import Profile

# Sample labels the daemon attaches (see profiler.recorder) and the store indexes.
LABEL_KEYS = ("pid", "tid", "comm", "exe", "container", "cgroup")


@dataclass(frozen=True, slots=True)
class Filters:
    """Sample filters; an empty tuple means "any". Values compare as strings."""

    pids: tuple[str, ...] = ()
    tids: tuple[str, ...] = ()
    comms: tuple[str, ...] = ()
    exes: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    start_ns: int  # bucket start
    samples: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    path: str
    bytes_on_disk: int
    windows: int
    samples: int
    oldest_ns: int  # 0 when empty
    newest_ns: int
    schema_version: int
    write_errors: int  # windows that could not be written (disk full, ...)


class StoreError(Exception):
    """A store problem worth a clear message (newer schema, corrupt file, disk full)."""


@runtime_checkable
class ProfileSource(Protocol):
    def query(self, start_ns: int, end_ns: int, filters: Filters = Filters()) -> Profile:
        """All samples of windows overlapping [start_ns, end_ns), merged into one Profile
        (period_ns set; start_ns/duration_ns cover the windows found)."""
        ...

    def timeline(
        self, start_ns: int, end_ns: int, step_ns: int, filters: Filters = Filters()
    ) -> list[TimelinePoint]:
        """Samples per bucket of step_ns, every bucket present (0 where empty)."""
        ...

    def label_values(
        self, key: str, start_ns: int, end_ns: int, limit: int = 200
    ) -> list[tuple[str, int]]:
        """Distinct values of one label (a LABEL_KEYS member) with sample counts, most first."""
        ...

    def stats(self) -> StoreStats: ...
