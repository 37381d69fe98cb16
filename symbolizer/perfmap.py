"""JIT perf maps (`/tmp/perf-<pid>.map`): parsing and batch lookup.

A JIT (CPython's `-X perf`, V8's `--perf-basic-prof`, the JVM's
perf-map-agent...) names the code it generates by appending one line per
code block to a text file:

    START SIZE name

START and SIZE are hex, with or without `0x`; the name is the rest of the
line and may hold spaces (`py::f:<frozen importlib._bootstrap>`). Nothing
else about the format is promised, so the parser is tolerant: blank,
malformed, empty (size 0) and overflowing lines are skipped and counted.

`parse_perf_map` is a pure function over text or bytes. `PerfMap` holds one
process' map and is fed the file's bytes as the JIT appends them (only
complete lines are taken; the caller keeps reading from where it stopped).
It is bounded: lines past `max_lines` are not kept and are counted in
`truncated_lines`. Lookups are vectorized through a `SymbolTable`; when two
lines start at the same address (code freed and the space reused), the
later line wins. Overlapping blocks with different starts are resolved as
for ELF symbols: the nearest start at or below the address, if it covers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from symbolizer.symtab import SymbolTable

U64_MAX = (1 << 64) - 1
DEFAULT_MAX_LINES = 1_000_000
DEFAULT_MAX_BYTES = 64 << 20
"""A 64 MiB map holds ~1M entries: far more than a JIT keeps alive."""


@dataclass(frozen=True, slots=True)
class PerfMapLines:
    """Parsed entries, in file order.

    `malformed` counts the bad lines skipped; `over_limit` the non-blank
    lines left unread because `max_lines` entries had been taken.
    """

    starts: npt.NDArray[np.uint64]
    sizes: npt.NDArray[np.uint64]
    names: list[str]
    malformed: int = 0
    over_limit: int = 0

    def __len__(self) -> int:
        return len(self.names)


def _hex(field: str) -> int:
    """A non-negative hex number with an optional 0x; ValueError otherwise."""
    if not field.isascii() or "_" in field or field.startswith(("-", "+")):
        raise ValueError(field)
    return int(field, 16)


def parse_perf_map(data: str | bytes, *, max_lines: int | None = None) -> PerfMapLines:
    """Parse perf map text. Blank lines are ignored; other bad lines are counted.

    At most `max_lines` entries are returned (the first ones). Undecodable
    bytes in names are replaced.
    """
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    starts: list[int] = []
    sizes: list[int] = []
    names: list[str] = []
    malformed = over_limit = 0
    limit = U64_MAX if max_lines is None else max_lines
    lines = text.split("\n")  # not splitlines(): names may hold \x0c, \x85...
    for i, line in enumerate(lines):
        if len(names) >= limit:
            over_limit = sum(1 for rest in lines[i:] if rest.strip())
            break
        parts = line.split(None, 2)
        if not parts:
            continue
        if len(parts) < 3:
            malformed += 1
            continue
        try:
            start, size = _hex(parts[0]), _hex(parts[1])
        except ValueError:
            malformed += 1
            continue
        name = parts[2].strip()
        if size == 0 or start + size > U64_MAX or not name:
            malformed += 1
            continue
        starts.append(start)
        sizes.append(size)
        names.append(name)
    return PerfMapLines(
        np.array(starts, dtype=np.uint64),
        np.array(sizes, dtype=np.uint64),
        names,
        malformed,
        over_limit,
    )


class PerfMap:
    """The perf map of one process, grown by `feed`; see the module docstring."""

    def __init__(self, *, max_lines: int = DEFAULT_MAX_LINES) -> None:
        if max_lines < 1:
            raise ValueError("max_lines must be at least 1")
        self.max_lines = max_lines
        self.malformed = 0
        self.truncated_lines = 0
        self._parts: list[PerfMapLines] = []
        self._count = 0
        self._table: SymbolTable | None = None

    def __len__(self) -> int:
        return self._count

    def feed(self, data: bytes, *, final: bool = False) -> int:
        """Parse the complete lines of `data`; return how many bytes were used.

        A trailing partial line is left for the next call (the JIT may be
        half way through writing it) unless `final` says no more will come.
        """
        used = len(data) if final else data.rfind(b"\n") + 1
        if used == 0:
            return 0
        lines = parse_perf_map(data[:used], max_lines=self.max_lines - self._count)
        self.malformed += lines.malformed
        self.truncated_lines += lines.over_limit
        if len(lines):
            self._parts.append(lines)
            self._count += len(lines)
            self._table = None
        return used

    def lookup(self, addrs: Sequence[int] | npt.NDArray[np.uint64]) -> list[str | None]:
        """The name covering each address, None where no entry does."""
        table = self._symbols()
        return table.names_of(table.lookup(addrs))

    def _symbols(self) -> SymbolTable:
        if self._table is None:
            if not self._parts:
                self._table = SymbolTable.empty()
            else:
                starts = np.concatenate([p.starts for p in self._parts])
                sizes = np.concatenate([p.sizes for p in self._parts])
                names = [n for p in self._parts for n in p.names]
                # Lower rank wins among entries at one start: the later line.
                ranks = -np.arange(len(names), dtype=np.int64)
                self._table = SymbolTable.build(starts, sizes, names, ranks=ranks)
                self._parts = [PerfMapLines(starts, sizes, names)]
        return self._table
