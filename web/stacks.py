"""A Profile's stacks as flat numpy arrays: the input of every web view.

Views group frames by function (name and kind), not by address, so a
function sampled at many instructions is one node. Every distinct stack of
the profile becomes one row: its function codes root first, stored back to
back in `codes` with `lengths` saying where rows end, and its samples in
`weights` (one column per profile, so a diff carries baseline and
comparison side by side). Transformations (frame-kind filter, recursion
collapse, sandwich slices) are vectorized masks over these arrays, which
keeps a 20,000-node flamegraph of an hour of data well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import numpy.typing as npt

from symbolizer.profile import FrameKind, Profile

Int64s = npt.NDArray[np.int64]

UNKNOWN = "[unknown]"
"""Name of a frame whose function has no name (the `perf script` word)."""

ALL_KINDS = frozenset(FrameKind)


class FunctionIndex:
    """Function codes shared by every profile of one view: code -> (name, kind)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.kinds: list[FrameKind] = []
        self._codes: dict[tuple[str, FrameKind], int] = {}

    def code(self, name: str, kind: FrameKind) -> int:
        key = (name, kind)
        idx = self._codes.get(key)
        if idx is None:
            idx = self._codes[key] = len(self.names)
            self.names.append(name)
            self.kinds.append(kind)
        return idx

    def find(self, name: str, kind: FrameKind | None = None) -> list[int]:
        """Codes of the function `name` (of one kind, or of any kind when None)."""
        kinds = list(FrameKind) if kind is None else [kind]
        return [c for k in kinds if (c := self._codes.get((name, k))) is not None]

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Stacks:
    """Distinct stacks as flat arrays (see the module docstring)."""

    functions: FunctionIndex
    codes: Int64s  # function codes of every row, root first, rows back to back
    lengths: Int64s  # frames per row
    weights: Int64s  # samples per row, shape (rows, sides)

    @property
    def starts(self) -> Int64s:
        return np.cumsum(self.lengths) - self.lengths

    @property
    def rows(self) -> Int64s:
        """The row of every frame."""
        return np.repeat(np.arange(len(self.lengths), dtype=np.int64), self.lengths)

    @property
    def positions(self) -> Int64s:
        """The depth of every frame in its row (0 = root)."""
        return np.arange(len(self.codes), dtype=np.int64) - np.repeat(self.starts, self.lengths)

    def select(self, keep: npt.NDArray[np.bool_]) -> Stacks:
        """The same rows with only the frames where `keep` is true."""
        lengths = np.bincount(self.rows[keep], minlength=len(self.lengths)).astype(np.int64)
        return Stacks(self.functions, self.codes[keep], lengths, self.weights)


def from_profiles(profiles: Sequence[Profile]) -> Stacks:
    """The stacks of several profiles over one function index; side i holds
    the samples of profiles[i] (label sets merged)."""
    functions = FunctionIndex()
    codes: list[Int64s] = []
    lengths: list[Int64s] = []
    weights: list[Int64s] = []
    for side, profile in enumerate(profiles):
        c, ln, w = _profile_rows(profile, functions)
        codes.append(c)
        lengths.append(ln)
        column = np.zeros((len(w), len(profiles)), dtype=np.int64)
        column[:, side] = w
        weights.append(column)
    if not profiles:
        empty = np.zeros(0, dtype=np.int64)
        return Stacks(functions, empty, empty, np.zeros((0, 0), dtype=np.int64))
    return Stacks(
        functions, np.concatenate(codes), np.concatenate(lengths), np.concatenate(weights)
    )


def from_profile(profile: Profile) -> Stacks:
    return from_profiles([profile])


def _profile_rows(profile: Profile, functions: FunctionIndex) -> tuple[Int64s, Int64s, Int64s]:
    loc_code = np.full(len(profile.locations), -1, dtype=np.int64)
    for lid, loc in enumerate(profile.locations):
        if loc is None:
            continue
        fn = profile.functions[loc.function_id]
        loc_code[lid] = functions.code((fn.name if fn else "") or UNKNOWN, loc.kind)

    if not profile.counts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    keys = np.fromiter(
        (sid for sid, _ in profile.counts), dtype=np.int64, count=len(profile.counts)
    )
    counts = np.fromiter(profile.counts.values(), dtype=np.int64, count=len(profile.counts))
    # Label sets merged: samples per stack id.
    per_stack = np.zeros(len(profile.stacks), dtype=np.int64)
    np.add.at(per_stack, keys, counts)
    sids = np.flatnonzero(per_stack > 0)
    lengths = np.fromiter((len(profile.stacks[s]) for s in sids), dtype=np.int64, count=len(sids))
    leaf_first = np.fromiter(
        chain.from_iterable(profile.stacks[s] for s in sids),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    # Reverse every row in place: frame p of a row of length n goes to n-1-p.
    starts = np.cumsum(lengths) - lengths
    row_start = np.repeat(starts, lengths)
    row_len = np.repeat(lengths, lengths)
    pos = np.arange(len(leaf_first), dtype=np.int64) - row_start
    root_first = np.empty_like(leaf_first)
    root_first[row_start + row_len - 1 - pos] = leaf_first
    codes = loc_code[root_first]
    if (codes < 0).any():  # a stack naming no location (a broken store row)
        codes[codes < 0] = functions.code(UNKNOWN, FrameKind.NATIVE)
    return codes, lengths, per_stack[sids]


def keep_kinds(stacks: Stacks, kinds: frozenset[FrameKind]) -> Stacks:
    """Drop frames of other kinds; a stack left without frames still counts
    (at the root), so percentages stay relative to the whole profile."""
    if kinds >= ALL_KINDS or not len(stacks.codes):
        return stacks
    allowed = np.array([k in kinds for k in FrameKind], dtype=np.bool_)
    kind_of = np.array([int(k) for k in stacks.functions.kinds], dtype=np.int64)
    return stacks.select(allowed[kind_of[stacks.codes]])


def collapse_recursion(stacks: Stacks) -> Stacks:
    """Merge directly recursive calls: a run of one function becomes one frame."""
    if len(stacks.codes) < 2:
        return stacks
    rows = stacks.rows
    repeat = np.zeros(len(stacks.codes), dtype=np.bool_)
    repeat[1:] = (stacks.codes[1:] == stacks.codes[:-1]) & (rows[1:] == rows[:-1])
    return stacks.select(~repeat)


def reverse_rows(stacks: Stacks) -> Stacks:
    """Every row read leaf first (used for the callers side of a sandwich)."""
    rows = stacks.rows
    order = np.lexsort((-stacks.positions, rows))
    return Stacks(stacks.functions, stacks.codes[order], stacks.lengths, stacks.weights)
