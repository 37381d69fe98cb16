"""The in-memory profile model every writer, the UI and the exporters read.

Everything is interned: strings, mappings, functions, locations and whole
stacks are stored once and referred to by index, the way pprof and OTLP
Profiles lay out their dictionaries. Samples are counts keyed by
(stack, label set), so memory grows with distinct stacks, not raw samples.
Index 0 of every table is a zero value, so 0 can always mean "none".
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field


class FrameKind(enum.IntEnum):
    """Where a frame runs; kept in the model and shown by every writer."""

    NATIVE = 0
    KERNEL = 1
    PYTHON = 2

    @property
    def label(self) -> str:
        return _KIND_LABELS[self]


_KIND_LABELS = {FrameKind.NATIVE: "native", FrameKind.KERNEL: "kernel", FrameKind.PYTHON: "python"}


@dataclass(frozen=True, slots=True)
class Mapping:
    """A loaded object (executable, shared library, kernel, module)."""

    start: int
    limit: int
    offset: int
    filename: str
    build_id: str = ""
    kind: FrameKind = FrameKind.NATIVE


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    system_name: str = ""
    filename: str = ""
    start_line: int = 0


@dataclass(frozen=True, slots=True)
class Frame:
    """One symbolized frame as a symbolizer hands it over (plain data).

    `function` is the display name; an address nobody could name keeps the
    `module+0xoffset` form so it is never dropped. `mapping` is None for
    frames outside any known mapping.
    """

    function: str
    address: int = 0
    kind: FrameKind = FrameKind.NATIVE
    mapping: Mapping | None = None
    system_name: str = ""
    filename: str = ""
    line: int = 0
    inlined: bool = False


@dataclass(frozen=True, slots=True)
class Location:
    mapping_id: int
    address: int
    function_id: int
    line: int
    kind: FrameKind


Labels = tuple[tuple[str, str], ...]
"""A sample's labels, sorted by key; interned into label sets."""

_INT64 = (-(1 << 63), (1 << 63) - 1)


def int_label(value: str) -> int | None:
    """A label value as an int when it is the canonical spelling of one in
    int64 (so writing it as a number and reading it back gives the same text)."""
    try:
        n = int(value)
    except ValueError:
        return None
    if str(n) != value or not _INT64[0] <= n <= _INT64[1]:
        return None
    return n


class StringTable:
    """Interned strings; index 0 is always the empty string."""

    def __init__(self) -> None:
        self._strings: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def intern(self, s: str) -> int:
        idx = self._index.get(s)
        if idx is None:
            idx = len(self._strings)
            self._strings.append(s)
            self._index[s] = idx
        return idx

    def __getitem__(self, idx: int) -> str:
        return self._strings[idx]

    def __len__(self) -> int:
        return len(self._strings)

    def __iter__(self) -> Iterator[str]:
        return iter(self._strings)


@dataclass
class Profile:
    """A window of CPU samples.

    `stacks[i]` is a tuple of location ids, leaf first (pprof order).
    `counts[(stack_id, labels_id)]` is the number of samples.
    `period_ns` is the sampling period, so CPU time = count * period_ns.
    """

    start_ns: int = 0
    duration_ns: int = 0
    period_ns: int = 0
    strings: StringTable = field(default_factory=StringTable)
    mappings: list[Mapping | None] = field(default_factory=lambda: [None])
    functions: list[Function | None] = field(default_factory=lambda: [None])
    locations: list[Location | None] = field(default_factory=lambda: [None])
    stacks: list[tuple[int, ...]] = field(default_factory=lambda: [()])
    label_sets: list[Labels] = field(default_factory=lambda: [()])
    counts: dict[tuple[int, int], int] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)
    _mapping_ids: dict[Mapping, int] = field(default_factory=dict, repr=False)
    _function_ids: dict[Function, int] = field(default_factory=dict, repr=False)
    _location_ids: dict[Location, int] = field(default_factory=dict, repr=False)
    _stack_ids: dict[tuple[int, ...], int] = field(default_factory=lambda: {(): 0}, repr=False)
    _label_ids: dict[Labels, int] = field(default_factory=lambda: {(): 0}, repr=False)

    # -- interning -------------------------------------------------------

    def mapping_id(self, mapping: Mapping | None) -> int:
        if mapping is None:
            return 0
        idx = self._mapping_ids.get(mapping)
        if idx is None:
            idx = len(self.mappings)
            self.mappings.append(mapping)
            self._mapping_ids[mapping] = idx
        return idx

    def function_id(self, function: Function) -> int:
        idx = self._function_ids.get(function)
        if idx is None:
            idx = len(self.functions)
            self.functions.append(function)
            self._function_ids[function] = idx
        return idx

    def location_id(self, frame: Frame) -> int:
        fid = self.function_id(
            Function(frame.function, frame.system_name or frame.function, frame.filename)
        )
        loc = Location(self.mapping_id(frame.mapping), frame.address, fid, frame.line, frame.kind)
        idx = self._location_ids.get(loc)
        if idx is None:
            idx = len(self.locations)
            self.locations.append(loc)
            self._location_ids[loc] = idx
        return idx

    def stack_id(self, frames: Sequence[Frame]) -> int:
        """Intern a stack given leaf first."""
        key = tuple(self.location_id(f) for f in frames)
        return self.stack_id_of_locations(key)

    def stack_id_of_locations(self, key: tuple[int, ...]) -> int:
        idx = self._stack_ids.get(key)
        if idx is None:
            idx = len(self.stacks)
            self.stacks.append(key)
            self._stack_ids[key] = idx
        return idx

    def labels_id(self, labels: Iterable[tuple[str, str]]) -> int:
        key: Labels = tuple(sorted((k, v) for k, v in labels if v != ""))
        idx = self._label_ids.get(key)
        if idx is None:
            idx = len(self.label_sets)
            self.label_sets.append(key)
            self._label_ids[key] = idx
        return idx

    # -- samples ---------------------------------------------------------

    def add(
        self, frames: Sequence[Frame], count: int, labels: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.add_by_ids(self.stack_id(frames), self.labels_id(labels), count)

    def add_by_ids(self, stack_id: int, labels_id: int, count: int) -> None:
        if count <= 0:
            return
        k = (stack_id, labels_id)
        self.counts[k] = self.counts.get(k, 0) + count

    @property
    def total_samples(self) -> int:
        return sum(self.counts.values())

    def frames_of(self, stack_id: int) -> list[tuple[Function, Location]]:
        """The (function, location) pairs of a stack, leaf first."""
        out = []
        for lid in self.stacks[stack_id]:
            loc = self.locations[lid]
            assert loc is not None
            fn = self.functions[loc.function_id]
            assert fn is not None
            out.append((fn, loc))
        return out

    def samples(self) -> Iterator[tuple[list[tuple[Function, Location]], Labels, int]]:
        """Every (stack, labels, count), in a deterministic order."""
        for (sid, lid), n in sorted(self.counts.items()):
            yield self.frames_of(sid), self.label_sets[lid], n

    def merge(self, other: Profile) -> None:
        """Add another profile's samples into this one (re-interning)."""
        if not self.period_ns:
            self.period_ns = other.period_ns
        if other.start_ns and (not self.start_ns or other.start_ns < self.start_ns):
            end = max(self.start_ns + self.duration_ns, other.start_ns + other.duration_ns)
            self.start_ns = other.start_ns
            self.duration_ns = end - self.start_ns
        elif other.start_ns:
            end = max(self.start_ns + self.duration_ns, other.start_ns + other.duration_ns)
            self.duration_ns = end - self.start_ns
        loc_map: dict[int, int] = {}
        for i, loc in enumerate(other.locations):
            if loc is None:
                continue
            fn = other.functions[loc.function_id]
            assert fn is not None
            fid = self.function_id(fn)
            mid = self.mapping_id(other.mappings[loc.mapping_id])
            new = Location(mid, loc.address, fid, loc.line, loc.kind)
            idx = self._location_ids.get(new)
            if idx is None:
                idx = len(self.locations)
                self.locations.append(new)
                self._location_ids[new] = idx
            loc_map[i] = idx
        for (sid, lid), n in other.counts.items():
            stack = tuple(loc_map[x] for x in other.stacks[sid])
            self.add_by_ids(
                self.stack_id_of_locations(stack), self.labels_id(other.label_sets[lid]), n
            )
