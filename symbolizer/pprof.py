"""The pprof format (perftools.profiles.Profile): writer, reader, validator.

Writing maps the model one to one where pprof has a place for it:

* sample types `samples/count` and `cpu/nanoseconds` (count and
  count * period_ns), period type `cpu/nanoseconds`, `period` = period_ns,
  `time_nanos` = start_ns, `duration_nanos` = duration_ns, comments;
* one pprof Location per model Location, with the same id (model ids are
  already 1-based with 0 meaning none), each with one Line;
* Functions and Mappings numbered from 1 in the order locations first use
  them; unused ones are left out;
* sample labels from the label set: `pid`, `tid` and `cpu` as numeric
  labels (unit `id`, see NUMERIC_LABEL_UNIT) when their value is a plain
  integer, every other key (comm, container, exe, kind, ...) as a string
  label.

Frame kind: pprof has no per-location kind, so the Function's name carries
it with the suffix convention of `symbolizer.folded`: kernel frames end in
`_[k]`, Python frames in `_[py]`, native frames have no suffix. A model
function seen in frames of two kinds becomes two pprof Functions.

Mapping flags: `has_functions` is set when at least one of the mapping's
frames was named (not empty and not the `module+0xoffset` or `0x...`
fallback of an unsymbolized address); `has_filenames` and
`has_line_numbers` when a frame carries a source file or a line.
`has_inline_frames` stays false: the model does not record inlining.

The same Profile always gives the same bytes: samples are ordered by
their stack and labels, strings are interned in a fixed walk, and `write`
gzips with a zero timestamp.

Reading accepts any valid pprof, gzipped or not, including files from
other tools: the value counted is `samples/count` if present (else another
`count` value, else the default or last sample type, turned into samples
with the period when it is a time), a Location with inlined Lines becomes
one model frame per Line, and a Location without Lines gets the fallback
name `module+0xoffset` (or `0xaddress`). A Mapping's model kind is taken
from the first frame that uses it.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from google.protobuf.message import DecodeError

from profiler.errors import KilnError
from symbolizer.folded import display_name, split_display_name
from symbolizer.profile import FrameKind, Function, Labels, Location, Mapping, Profile, int_label
from symbolizer.proto import profile_pb2 as pb

SAMPLE_TYPES = (("samples", "count"), ("cpu", "nanoseconds"))
PERIOD_TYPE = ("cpu", "nanoseconds")
NUMERIC_LABELS = frozenset({"pid", "tid", "cpu"})
"""Label keys written as pprof numeric labels when the value is an integer."""
NUMERIC_LABEL_UNIT = "id"
"""The num_unit of those labels. Without a unit, `pprof` ignores a label whose
number is 0, and cpu 0, pid 0 and tid 0 (the idle task) are common; pprof
shows an unknown unit as a bare number and `-tagfocus pid=42` still works."""

_GZIP_MAGIC = b"\x1f\x8b"
_UNNAMED = re.compile(r"(?:.*\+)?0x[0-9a-fA-F]+|\[unknown\]")
_TIME_UNITS = {"nanoseconds": 1, "microseconds": 1_000, "milliseconds": 1_000_000, "seconds": 10**9}


class PprofFormatError(KilnError, ValueError):
    """Bytes that are not a valid pprof profile."""


# -- writing -------------------------------------------------------------


class _Strings:
    def __init__(self) -> None:
        self.table: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def __call__(self, s: str) -> int:
        idx = self._index.get(s)
        if idx is None:
            idx = self._index[s] = len(self.table)
            self.table.append(s)
        return idx


def is_named(name: str) -> bool:
    """False for an empty name or the fallback name of an unsymbolized address."""
    return bool(name) and not _UNNAMED.fullmatch(name)


def to_message(profile: Profile) -> pb.Profile:
    """The pprof message for `profile` (see the module docstring)."""
    s = _Strings()
    msg = pb.Profile()
    for type_, unit in SAMPLE_TYPES:
        msg.sample_type.add(type=s(type_), unit=s(unit))
    msg.period_type.type = s(PERIOD_TYPE[0])
    msg.period_type.unit = s(PERIOD_TYPE[1])
    msg.period = profile.period_ns
    msg.time_nanos = profile.start_ns
    msg.duration_nanos = profile.duration_ns

    # Keyed by content, not ids, so the order survives a decode/encode trip
    # (and two ids for one stack or label set could not make two samples).
    keyed: dict[tuple[tuple[int, ...], Labels], int] = {}
    for (sid, lid), n in profile.counts.items():
        if n > 0:
            content = (profile.stacks[sid], profile.label_sets[lid])
            keyed[content] = keyed.get(content, 0) + n
    for (stack, labels), n in sorted(keyed.items()):
        sample = msg.sample.add(location_id=stack, value=[n, n * profile.period_ns])
        for key, value in labels:
            label = sample.label.add(key=s(key))
            number = int_label(value) if key in NUMERIC_LABELS else None
            if number is None:
                label.str = s(value)
            else:
                label.num = number
                label.num_unit = s(NUMERIC_LABEL_UNIT)

    mapping_ids: dict[int, int] = {}  # model mapping id -> pprof id
    function_ids: dict[tuple[int, FrameKind], int] = {}  # (model id, kind) -> pprof id
    mappings: list[Mapping] = []
    flags: list[list[bool]] = []  # has_functions, has_filenames, has_line_numbers
    functions: list[tuple[Function, FrameKind]] = []
    for lid, loc in enumerate(profile.locations):
        if loc is None:
            continue
        fn = profile.functions[loc.function_id]
        assert fn is not None, f"location {lid} has no function"
        fkey = (loc.function_id, loc.kind)
        fid = function_ids.get(fkey)
        if fid is None:
            fid = function_ids[fkey] = len(functions) + 1
            functions.append((fn, loc.kind))
        mid = 0
        if loc.mapping_id:
            mid = mapping_ids.get(loc.mapping_id, 0)
            if not mid:
                mapping = profile.mappings[loc.mapping_id]
                assert mapping is not None, f"location {lid} has a dangling mapping"
                mid = mapping_ids[loc.mapping_id] = len(mappings) + 1
                mappings.append(mapping)
                flags.append([False, False, False])
            f = flags[mid - 1]
            f[0] = f[0] or is_named(fn.name)
            f[1] = f[1] or bool(fn.filename)
            f[2] = f[2] or loc.line > 0
        pl = msg.location.add(id=lid, mapping_id=mid, address=loc.address)
        pl.line.add(function_id=fid, line=loc.line)

    for mid, (m, (has_fn, has_files, has_lines)) in enumerate(zip(mappings, flags, strict=True), 1):
        msg.mapping.add(
            id=mid,
            memory_start=m.start,
            memory_limit=m.limit,
            file_offset=m.offset,
            filename=s(m.filename),
            build_id=s(m.build_id),
            has_functions=has_fn,
            has_filenames=has_files,
            has_line_numbers=has_lines,
        )
    for fid, (fn, kind) in enumerate(functions, 1):
        msg.function.add(
            id=fid,
            name=s(display_name(fn.name, kind)),
            system_name=s(fn.system_name),
            filename=s(fn.filename),
            start_line=fn.start_line,
        )
    msg.comment.extend(s(c) for c in profile.comments)
    msg.string_table.extend(s.table)
    return msg


def encode(profile: Profile) -> bytes:
    """The serialized (not gzipped) pprof message for `profile`."""
    return to_message(profile).SerializeToString(deterministic=True)


def dumps(profile: Profile) -> bytes:
    """`encode`, gzipped the way pprof files are stored; deterministic."""
    return gzip.compress(encode(profile), mtime=0)


def write(profile: Profile, dest: str | os.PathLike[str] | BinaryIO) -> None:
    """Write `profile` as a gzipped pprof file to a path or binary file."""
    data = dumps(profile)
    if isinstance(dest, str | os.PathLike):
        with open(dest, "wb") as f:
            f.write(data)
    else:
        dest.write(data)


# -- reading -------------------------------------------------------------


def parse_message(data: bytes) -> pb.Profile:
    """The pprof message in `data` (gzipped or raw), without validating it."""
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise PprofFormatError(
                f"pprof data looks gzipped but does not decompress: {e}",
                "check the file is complete and not truncated",
            ) from e
    try:
        return pb.Profile.FromString(data)
    except DecodeError as e:
        raise PprofFormatError(
            f"not a pprof profile: {e}", "pass a pprof file (gzipped or raw protobuf)"
        ) from e


def decode(data: bytes) -> Profile:
    """A model Profile from pprof bytes, gzipped or raw."""
    return from_message(parse_message(data))


def read(path: str | os.PathLike[str]) -> Profile:
    with open(path, "rb") as f:
        return decode(f.read())


def from_message(msg: pb.Profile) -> Profile:
    """Rebuild a model Profile from a pprof message (see the module docstring).

    Raises `PprofFormatError` if `validate` finds problems.
    """
    problems = validate(msg)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise PprofFormatError(
            "invalid pprof profile: " + "; ".join(problems[:3]) + more,
            "the file was written by a broken tool or is corrupt",
        )
    st = list(msg.string_table)
    counting = _counting(msg, st)

    # The model interns a Location only through a Frame (which cannot carry
    # Function.start_line) or through merge(), so the decoded tables are
    # laid out in a scratch Profile and merged into a fresh one, which
    # re-interns them exactly.
    raw = Profile()
    functions: dict[int, tuple[int, FrameKind]] = {}
    for f in msg.function:
        name, kind = split_display_name(st[f.name])
        raw.functions.append(Function(name, st[f.system_name], st[f.filename], f.start_line))
        functions[f.id] = (len(raw.functions) - 1, kind)

    pprof_mappings = {m.id: m for m in msg.mapping}
    frames: dict[int, list[tuple[int, int, int, FrameKind]]] = {}  # leaf first
    mapping_kind: dict[int, FrameKind] = {}
    for loc in msg.location:
        out: list[tuple[int, int, int, FrameKind]] = []
        for line in loc.line:
            fidx, kind = functions[line.function_id]
            out.append((fidx, loc.address, line.line, kind))
        if not out:
            raw.functions.append(Function(_fallback_name(loc, pprof_mappings, st)))
            out.append((len(raw.functions) - 1, loc.address, 0, FrameKind.NATIVE))
        if loc.mapping_id:
            mapping_kind.setdefault(loc.mapping_id, out[0][3])
        frames[loc.id] = out

    mapping_index: dict[int, int] = {}
    for m in msg.mapping:
        raw.mappings.append(
            Mapping(
                m.memory_start,
                m.memory_limit,
                m.file_offset,
                st[m.filename],
                st[m.build_id],
                mapping_kind.get(m.id, FrameKind.NATIVE),
            )
        )
        mapping_index[m.id] = len(raw.mappings) - 1

    loc_index: dict[int, list[int]] = {}
    for loc in msg.location:
        mid = mapping_index[loc.mapping_id] if loc.mapping_id else 0
        ids = []
        for fidx, address, line_no, kind in frames[loc.id]:
            raw.locations.append(Location(mid, address, fidx, line_no, kind))
            ids.append(len(raw.locations) - 1)
        loc_index[loc.id] = ids

    for sample in msg.sample:
        count = counting.samples(sample.value)
        if count <= 0:
            continue
        stack = tuple(i for lid in sample.location_id for i in loc_index[lid])
        raw.stacks.append(stack)
        raw.label_sets.append(_labels(sample.label, st))
        key = (len(raw.stacks) - 1, len(raw.label_sets) - 1)
        raw.counts[key] = count

    profile = Profile()
    profile.merge(raw)
    profile.start_ns = msg.time_nanos
    profile.duration_ns = msg.duration_nanos
    profile.period_ns = counting.period_ns
    profile.comments = [st[i] for i in msg.comment]
    return profile


def _labels(labels: Iterable[pb.Label], st: Sequence[str]) -> Labels:
    pairs = []
    for label in labels:
        if label.str:
            pairs.append((st[label.key], st[label.str]))
        elif label.num or label.num_unit:  # pprof's rule: no str, no num, no unit = no label
            pairs.append((st[label.key], str(label.num)))
    return tuple(sorted(pairs))


def _fallback_name(loc: pb.Location, mappings: dict[int, pb.Mapping], st: Sequence[str]) -> str:
    m = mappings.get(loc.mapping_id) if loc.mapping_id else None
    if m is None or loc.address < m.memory_start:
        return f"0x{loc.address:x}"
    module = os.path.basename(st[m.filename]) or "[unknown]"
    return f"{module}+0x{loc.address - m.memory_start + m.file_offset:x}"


@dataclass(frozen=True)
class _Counting:
    """Which sample value Kiln counts, and how it becomes a sample count."""

    index: int
    unit_ns: int  # 0 when the value already counts events
    period_ns: int

    def samples(self, values: Sequence[int]) -> int:
        if not values:
            return 0
        v = values[self.index]
        if not self.unit_ns:
            return v
        ns = v * self.unit_ns
        return (ns + self.period_ns // 2) // self.period_ns


def _counting(msg: pb.Profile, st: Sequence[str]) -> _Counting:
    """Pick the sample value to count (see the module docstring).

    Kiln counts samples; a profile that only records a time is turned into
    samples of one period each, or of one nanosecond when it has no period.
    """
    types = [(st[t.type], st[t.unit]) for t in msg.sample_type]
    if not types:
        return _Counting(0, 0, 0)
    index = next((i for i, t in enumerate(types) if t == SAMPLE_TYPES[0]), None)
    if index is None:
        index = next((i for i, t in enumerate(types) if t[1] == "count"), None)
    if index is None and msg.default_sample_type:
        wanted = st[msg.default_sample_type]
        index = next((i for i, t in enumerate(types) if t[0] == wanted), None)
    if index is None:
        index = len(types) - 1
    period_ns = 0
    if msg.HasField("period_type") and msg.period > 0:
        period_ns = msg.period * _TIME_UNITS.get(st[msg.period_type.unit], 0)
    unit_ns = _TIME_UNITS.get(types[index][1], 0)
    if unit_ns and not period_ns:
        period_ns = 1
    return _Counting(index, unit_ns, period_ns)


# -- validation ----------------------------------------------------------


def validate(msg: pb.Profile) -> list[str]:
    """Every broken reference in a pprof message; empty when it is sound.

    Checks that string_table[0] is "", that every string index is in range,
    that Mapping, Location and Function ids are nonzero and unique, that
    every id a Location, Line or Sample refers to exists, that each sample
    has one value per sample type, and that no label is both string and
    number.
    """
    problems: list[str] = []
    n_strings = len(msg.string_table)
    if not n_strings:
        problems.append("string_table is empty (entry 0 must be '')")
    elif msg.string_table[0] != "":
        problems.append(f"string_table[0] is {msg.string_table[0]!r}, not ''")

    def string(idx: int, where: str) -> None:
        if not 0 <= idx < n_strings:
            problems.append(f"{where}: string index {idx} out of range 0..{n_strings - 1}")

    def ids(kind: str, items: Iterable[int]) -> set[int]:
        seen: set[int] = set()
        for i in items:
            if i == 0:
                problems.append(f"{kind} id 0 (ids must be nonzero)")
            elif i in seen:
                problems.append(f"{kind} id {i} is not unique")
            seen.add(i)
        return seen

    for i, vt in enumerate(msg.sample_type):
        string(vt.type, f"sample_type[{i}].type")
        string(vt.unit, f"sample_type[{i}].unit")
    if msg.HasField("period_type"):
        string(msg.period_type.type, "period_type.type")
        string(msg.period_type.unit, "period_type.unit")
    string(msg.drop_frames, "drop_frames")
    string(msg.keep_frames, "keep_frames")
    string(msg.default_sample_type, "default_sample_type")
    string(msg.doc_url, "doc_url")
    for i, c in enumerate(msg.comment):
        string(c, f"comment[{i}]")

    mapping_ids = ids("mapping", (m.id for m in msg.mapping))
    function_ids = ids("function", (f.id for f in msg.function))
    location_ids = ids("location", (loc.id for loc in msg.location))
    for m in msg.mapping:
        string(m.filename, f"mapping {m.id} filename")
        string(m.build_id, f"mapping {m.id} build_id")
    for f in msg.function:
        string(f.name, f"function {f.id} name")
        string(f.system_name, f"function {f.id} system_name")
        string(f.filename, f"function {f.id} filename")
    for loc in msg.location:
        if loc.mapping_id and loc.mapping_id not in mapping_ids:
            problems.append(f"location {loc.id}: mapping id {loc.mapping_id} does not exist")
        for line in loc.line:
            if line.function_id not in function_ids:
                problems.append(f"location {loc.id}: function id {line.function_id} does not exist")
    n_types = len(msg.sample_type)
    for i, sample in enumerate(msg.sample):
        for lid in sample.location_id:
            if lid not in location_ids:
                problems.append(f"sample {i}: location id {lid} does not exist")
        if len(sample.value) != n_types:
            problems.append(f"sample {i}: {len(sample.value)} values for {n_types} sample types")
        for j, label in enumerate(sample.label):
            where = f"sample {i} label {j}"
            string(label.key, f"{where} key")
            string(label.str, f"{where} str")
            string(label.num_unit, f"{where} num_unit")
            if label.str and label.num:
                problems.append(f"{where}: has both a string and a numeric value")
    return problems
