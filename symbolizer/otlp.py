"""OTLP Profiles (opentelemetry-proto `profiles/v1development`): writer, reader, validator.

The schema is the one of opentelemetry-proto v1.10, as generated in the
PyPI package `opentelemetry-proto==1.45.*`. Profiles is still a development
signal whose messages change between releases (v1.10 has one sample type
per profile, a `stack_table`, `KeyValueAndUnit` attributes), so the package
is pinned: a mismatch would not fail, it would misread fields.

Writing (`to_request`) lays a Profile out the way the OpenTelemetry eBPF
profiler does, so collectors and backends that read its output read ours:

* one `ResourceProfiles` per process (or per container with
  `group_by="container"`), each with one `ScopeProfiles` (scope "kiln")
  holding one `Profile`;
* resource attributes: the batch's own (`host.name`, `service.name`, ...),
  then the process's under semantic-convention names (`process.pid`,
  `process.executable.path` and `.name`, `container.id`,
  `process.linux.cgroup`), then any `resource.<key>` label (see below);
* sample attributes: `thread.id`, `thread.name`, `cpu.logical_number` from
  the `tid`, `comm` and `cpu` labels, every other label under its own key;
  `pid`, `tid` and `cpu` are ints, everything else a string;
* sample type `samples/count`, period type `cpu/nanoseconds` with the
  sampling period, so CPU time = value * period; each sample carries its
  count in `values` and, when the window's start is known, that start in
  `timestamps_unix_nano` (one observation of `count` samples);
* frames: each Location has one Line naming its Function (none when
  nothing about the function is known), its Mapping (with the GNU build
  id as `process.executable.build_id.gnu`) and its kind as
  `profile.frame.type` = `native`, `kernel` or `cpython`;
* one `ProfilesDictionary` for the whole request; every table starts with
  its zero value and holds each distinct entry once;
* `profile_id` is a hash of the resource and the window, so a retried batch
  carries the same id and a receiver can drop the duplicate.

Labels that name resource attributes: a label `resource.<key>` sets the
resource attribute `<key>` for its samples (the value `DELETED` removes
it). `profiler.export.rules` writes such labels when an OTTL rule edits
`resource.attributes`, so every exporter sees the edit.

Reading (`iter_samples`, `to_profile`) turns a request back into samples or
a model Profile; `validate_request` lists every broken reference.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb

from symbolizer.profile import Frame, FrameKind, Labels, Profile, int_label
from symbolizer.profile import Mapping as ModelMapping

OTLP_PROTO_VERSION = "1.10.0"
"""The opentelemetry-proto release whose Profiles schema this module writes."""
SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
"""Semantic conventions the attribute names follow (those of the eBPF profiler)."""
SCOPE_NAME = "kiln"

SAMPLE_TYPE = ("samples", "count")
PERIOD_TYPE = ("cpu", "nanoseconds")

FRAME_TYPE_KEY = "profile.frame.type"
FRAME_TYPES: dict[FrameKind, str] = {
    FrameKind.NATIVE: "native",
    FrameKind.KERNEL: "kernel",
    FrameKind.PYTHON: "cpython",
}
"""`profile.frame.type` values, as the OpenTelemetry eBPF profiler names them."""
BUILD_ID_KEY = "process.executable.build_id.gnu"

PROCESS_LABELS: dict[str, str] = {
    "pid": "process.pid",
    "exe": "process.executable.path",
    "container": "container.id",
    "cgroup": "process.linux.cgroup",
}
"""Kiln's per-process labels and the resource attributes they become."""
THREAD_LABELS: dict[str, str] = {
    "tid": "thread.id",
    "comm": "thread.name",
    "cpu": "cpu.logical_number",
}
"""Kiln's per-sample labels and the sample attributes they become."""
EXE_NAME_KEY = "process.executable.name"  # derived from `exe`
INT_ATTRIBUTES = frozenset({"process.pid", "thread.id", "cpu.logical_number"})
INT_LABELS = frozenset({"pid", "tid", "cpu"})
RESOURCE_PREFIX = "resource."
DELETED = "\x00"
"""The value of a `resource.<key>` label that removes `<key>` from the resource."""

GroupBy = Literal["process", "container"]
AttrValue = str | int | bool | float
Attributes = dict[str, AttrValue]

_PROCESS_ATTRS = {v: k for k, v in PROCESS_LABELS.items()}
_THREAD_ATTRS = {v: k for k, v in THREAD_LABELS.items()}


# -- labels <-> attributes -------------------------------------------------


def typed(key: str, value: str) -> AttrValue:
    """An attribute's value from a label's: ints for the keys that hold ids."""
    if key in INT_ATTRIBUTES or key in INT_LABELS:
        n = int_label(value)
        if n is not None:
            return n
    return value


def split_labels(
    labels: Labels, base: Mapping[str, str], group_by: GroupBy = "process"
) -> tuple[Attributes, Attributes]:
    """(resource attributes, sample attributes) of a sample with `labels`.

    `base` is the batch's resource. With group_by="container" the process
    attributes stay on the sample and only the container names the resource.
    """
    resource: Attributes = dict(base)
    sample: Attributes = {}
    derived: list[tuple[str, str]] = []
    overrides: list[tuple[str, str]] = []
    for key, value in labels:
        if key.startswith(RESOURCE_PREFIX):
            overrides.append((key[len(RESOURCE_PREFIX) :], value))
        elif key in PROCESS_LABELS or key in THREAD_LABELS:
            derived.append((key, value))
        else:
            sample[key] = typed(key, value)
    for key, value in derived:
        attr = PROCESS_LABELS.get(key)
        if attr is None:
            # A label already named like the attribute (an OTTL rule set it) wins.
            attr = THREAD_LABELS[key]
            sample.setdefault(attr, typed(attr, value))
            continue
        if group_by == "process" or key == "container":
            resource[attr] = typed(attr, value)
            if key == "exe":
                resource[EXE_NAME_KEY] = os.path.basename(value)
        else:
            sample.setdefault(attr, typed(attr, value))
            if key == "exe":
                sample.setdefault(EXE_NAME_KEY, os.path.basename(value))
    for key, value in overrides:
        if value == DELETED:
            resource.pop(key, None)
        else:
            resource[key] = typed(key, value)
    return resource, sample


def label_value(value: object) -> str:
    """A label's text for an attribute value (as OTTL's `String` would print it)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def labels_of(
    resource: Mapping[str, object], attributes: Mapping[str, object], base: Mapping[str, str]
) -> Labels:
    """The model labels of an OTLP sample: the inverse of `split_labels`.

    Resource attributes equal to `base` (the batch's) are left out; others
    that no Kiln label stands for become `resource.<key>` labels.
    """
    out: dict[str, str] = {}
    exe = resource.get("process.executable.path")
    for key, value in resource.items():
        if value is None:
            continue
        if key in _PROCESS_ATTRS:
            out[_PROCESS_ATTRS[key]] = label_value(value)
        elif base.get(key) == value or (
            key == EXE_NAME_KEY and isinstance(exe, str) and value == os.path.basename(exe)
        ):
            continue  # the batch's own, or derived from `exe`
        else:
            out[RESOURCE_PREFIX + key] = label_value(value)
    for key in base:
        if key not in resource:
            out[RESOURCE_PREFIX + key] = DELETED
    for key, value in attributes.items():
        if value is None:
            continue
        name = _THREAD_ATTRS.get(key) or _PROCESS_ATTRS.get(key) or key
        path = attributes.get("process.executable.path")
        if key == EXE_NAME_KEY and isinstance(path, str) and value == os.path.basename(path):
            continue
        out[name] = label_value(value)
    return tuple(sorted((k, v) for k, v in out.items() if v != ""))


# -- writing ---------------------------------------------------------------


def _any_value(value: AttrValue) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    return common_pb2.AnyValue(string_value=value)


class _Dictionary:
    """The ProfilesDictionary under construction: every table interned by content."""

    def __init__(self, msg: pb.ProfilesDictionary) -> None:
        self.msg = msg
        self._strings: dict[str, int] = {"": 0}
        self._attrs: dict[tuple[str, type, AttrValue], int] = {}
        self._mappings: dict[tuple[int, int, int, str, str], int] = {}
        self._functions: dict[tuple[int, int, int, int], int] = {}
        self._locations: dict[tuple[int, int, int, int, int], int] = {}
        self._stacks: dict[tuple[int, ...], int] = {(): 0}
        self._kinds: dict[FrameKind, int] = {}
        self.strings: list[str] = [""]
        # Zero values first: index 0 means "none" in every table.
        for table in (
            self.msg.mapping_table,
            self.msg.location_table,
            self.msg.function_table,
            self.msg.link_table,
            self.msg.attribute_table,
            self.msg.stack_table,
        ):
            table.add()

    def string(self, s: str) -> int:
        idx = self._strings.get(s)
        if idx is None:
            idx = self._strings[s] = len(self.strings)
            self.strings.append(s)
        return idx

    def attribute(self, key: str, value: AttrValue) -> int:
        # The type is part of the identity: 1, True and "1" are three entries.
        k = (key, type(value), value)
        idx = self._attrs.get(k)
        if idx is None:
            idx = self._attrs[k] = len(self.msg.attribute_table)
            self.msg.attribute_table.add(key_strindex=self.string(key), value=_any_value(value))
        return idx

    def mapping(self, m: ModelMapping | None) -> int:
        if m is None:
            return 0
        # Keyed by what OTLP keeps: the model's kind lives on the locations.
        key = (m.start, m.limit, m.offset, m.filename, m.build_id)
        idx = self._mappings.get(key)
        if idx is None:
            if key == (0, 0, 0, "", ""):
                return 0  # the zero value: index 0 already is this mapping
            idx = self._mappings[key] = len(self.msg.mapping_table)
            attrs = [self.attribute(BUILD_ID_KEY, m.build_id)] if m.build_id else []
            self.msg.mapping_table.add(
                memory_start=m.start,
                memory_limit=m.limit,
                file_offset=m.offset,
                filename_strindex=self.string(m.filename),
                attribute_indices=attrs,
            )
        return idx

    def function(self, name: str, system_name: str, filename: str, start_line: int) -> int:
        k = (self.string(name), self.string(system_name), self.string(filename), start_line)
        if k == (0, 0, 0, 0):
            return 0  # nothing known: the location gets no line
        idx = self._functions.get(k)
        if idx is None:
            idx = self._functions[k] = len(self.msg.function_table)
            self.msg.function_table.add(
                name_strindex=k[0],
                system_name_strindex=k[1],
                filename_strindex=k[2],
                start_line=k[3],
            )
        return idx

    def location(
        self, mapping_index: int, address: int, function_index: int, line: int, kind: FrameKind
    ) -> int:
        type_attr = self._kinds.get(kind)
        if type_attr is None:
            type_attr = self._kinds[kind] = self.attribute(FRAME_TYPE_KEY, FRAME_TYPES[kind])
        if not function_index:
            line = 0  # no Line without a function, so no line number either
        k = (mapping_index, address, function_index, line, type_attr)
        idx = self._locations.get(k)
        if idx is None:
            idx = self._locations[k] = len(self.msg.location_table)
            loc = self.msg.location_table.add(
                mapping_index=mapping_index, address=address, attribute_indices=[type_attr]
            )
            if function_index:
                loc.lines.add(function_index=function_index, line=line)
        return idx

    def stack(self, location_indices: tuple[int, ...]) -> int:
        idx = self._stacks.get(location_indices)
        if idx is None:
            idx = self._stacks[location_indices] = len(self.msg.stack_table)
            self.msg.stack_table.add(location_indices=location_indices)
        return idx

    def finish(self) -> None:
        self.msg.string_table.extend(self.strings)


_ResourceKey = tuple[tuple[str, AttrValue], ...]


def to_request(
    profile: Profile,
    resource: Mapping[str, str] | None = None,
    *,
    group_by: GroupBy = "process",
    scope_version: str = "",
    sample_timestamps: bool = True,
    part: int = 0,
) -> svc.ExportProfilesServiceRequest:
    """The OTLP export request for `profile` (see the module docstring).

    `resource` is the batch's resource (host.name, service.name, ...); `part`
    tells apart the profile ids of a window sent as several requests.
    """
    base = dict(resource or {})
    req = svc.ExportProfilesServiceRequest()
    d = _Dictionary(req.dictionary)
    # Every distinct location, stack and label set is converted once.
    loc_index = _Locator(d, profile)
    stack_index: dict[int, int] = {}
    label_index: dict[int, tuple[_ResourceKey, tuple[int, ...]]] = {}
    groups: dict[_ResourceKey, list[tuple[int, tuple[int, ...], int]]] = {}

    for (sid, lid), n in sorted(profile.counts.items()):
        if n <= 0:
            continue
        si = stack_index.get(sid)
        if si is None:
            locs = tuple(map(loc_index.__getitem__, profile.stacks[sid]))
            si = stack_index[sid] = d.stack(locs)
        labelled = label_index.get(lid)
        if labelled is None:
            res, attrs = split_labels(profile.label_sets[lid], base, group_by)
            # Keys are unique, so sorting the pairs never compares two values.
            rkey = tuple(sorted(res.items()))
            indices = tuple(d.attribute(k, v) for k, v in sorted(attrs.items()) if k)
            labelled = label_index[lid] = (rkey, indices)
            groups.setdefault(rkey, [])
        rkey, indices = labelled
        groups[rkey].append((si, indices, n))

    sample_type = pb.ValueType(
        type_strindex=d.string(SAMPLE_TYPE[0]), unit_strindex=d.string(SAMPLE_TYPE[1])
    )
    period_type = pb.ValueType(
        type_strindex=d.string(PERIOD_TYPE[0]), unit_strindex=d.string(PERIOD_TYPE[1])
    )
    stamp = [profile.start_ns] if sample_timestamps and profile.start_ns > 0 else []
    for rkey, samples in groups.items():
        rp = req.resource_profiles.add(schema_url=SCHEMA_URL)
        for key, value in rkey:
            if key:
                rp.resource.attributes.add(key=key, value=_any_value(value))
        sp = rp.scope_profiles.add(schema_url=SCHEMA_URL)
        sp.scope.name = SCOPE_NAME
        sp.scope.version = scope_version
        prof = sp.profiles.add(
            sample_type=sample_type,
            period_type=period_type,
            period=profile.period_ns,
            time_unix_nano=profile.start_ns,
            duration_nano=profile.duration_ns,
            profile_id=_profile_id(rkey, profile, part),
        )
        add = prof.samples.add
        for si, indices, n in samples:
            add(stack_index=si, attribute_indices=indices, values=(n,), timestamps_unix_nano=stamp)
    d.finish()
    return req


def encode(
    profile: Profile,
    resource: Mapping[str, str] | None = None,
    *,
    group_by: GroupBy = "process",
    scope_version: str = "",
    sample_timestamps: bool = True,
) -> bytes:
    """`to_request(...)` serialized (not compressed); deterministic."""
    req = to_request(
        profile,
        resource,
        group_by=group_by,
        scope_version=scope_version,
        sample_timestamps=sample_timestamps,
    )
    return req.SerializeToString(deterministic=True)


class _Locator(dict[int, int]):
    """Model location id -> dictionary location index, filled on first use
    (a dict, so known ids are looked up in C); functions and mappings are
    converted once per model id."""

    def __init__(self, d: _Dictionary, profile: Profile) -> None:
        super().__init__()
        self.d = d
        self.profile = profile
        self.functions: dict[int, int] = {}
        self.mappings: dict[int, int] = {0: 0}

    def __missing__(self, model_loc: int) -> int:
        profile = self.profile
        loc = profile.locations[model_loc]
        assert loc is not None, f"stack refers to location {model_loc}, which is empty"
        fi = self.functions.get(loc.function_id)
        if fi is None:
            fn = profile.functions[loc.function_id]
            assert fn is not None, f"location {model_loc} has no function"
            fi = self.d.function(fn.name, fn.system_name, fn.filename, fn.start_line)
            self.functions[loc.function_id] = fi
        mi = self.mappings.get(loc.mapping_id)
        if mi is None:
            mi = self.mappings[loc.mapping_id] = self.d.mapping(profile.mappings[loc.mapping_id])
        idx = self[model_loc] = self.d.location(mi, loc.address, fi, loc.line, loc.kind)
        return idx


def _profile_id(rkey: _ResourceKey, profile: Profile, part: int = 0) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    key: tuple[object, ...] = (rkey, profile.start_ns, profile.duration_ns, profile.period_ns)
    h.update(repr((*key, part) if part else key).encode())
    return h.digest()


# -- reading ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OtlpFrame:
    function: str
    kind: str  # profile.frame.type
    filename: str = ""
    line: int = 0
    mapping: str = ""
    address: int = 0
    system_name: str = ""


@dataclass(frozen=True, slots=True)
class OtlpSample:
    resource: dict[str, object]
    attributes: dict[str, object]
    frames: tuple[OtlpFrame, ...]  # leaf first; an inlined Location gives one per Line
    values: tuple[int, ...]
    timestamps: tuple[int, ...]
    sample_type: tuple[str, str]
    period: int

    @property
    def count(self) -> int:
        """Events this sample stands for: its values summed, else one per timestamp."""
        return sum(self.values) if self.values else len(self.timestamps)


def any_value(value: common_pb2.AnyValue) -> object:
    """A Python value for an AnyValue (None when unset)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def iter_samples(req: svc.ExportProfilesServiceRequest) -> Iterator[OtlpSample]:
    """Every sample of a (valid) request with its resource, attributes and frames."""
    d = req.dictionary
    st = d.string_table
    attrs = [(st[a.key_strindex], any_value(a.value)) for a in d.attribute_table]
    frames_of_loc: list[tuple[OtlpFrame, ...]] = []
    for loc in d.location_table:
        loc_attrs = dict(attrs[i] for i in loc.attribute_indices)
        kind = str(loc_attrs.get(FRAME_TYPE_KEY, ""))
        m = d.mapping_table[loc.mapping_index]
        mapping = st[m.filename_strindex]
        out = []
        for line in loc.lines:
            f = d.function_table[line.function_index]
            out.append(
                OtlpFrame(
                    st[f.name_strindex],
                    kind,
                    st[f.filename_strindex],
                    line.line,
                    mapping,
                    loc.address,
                    st[f.system_name_strindex],
                )
            )
        if not out:
            name = f"{os.path.basename(mapping) or '[unknown]'}+0x{loc.address:x}"
            out.append(OtlpFrame(name, kind, mapping=mapping, address=loc.address))
        frames_of_loc.append(tuple(out))
    for rp in req.resource_profiles:
        resource = {kv.key: any_value(kv.value) for kv in rp.resource.attributes}
        for sp in rp.scope_profiles:
            for prof in sp.profiles:
                stype = (st[prof.sample_type.type_strindex], st[prof.sample_type.unit_strindex])
                for s in prof.samples:
                    stack = d.stack_table[s.stack_index]
                    frames = tuple(f for li in stack.location_indices for f in frames_of_loc[li])
                    yield OtlpSample(
                        resource,
                        dict(attrs[i] for i in s.attribute_indices),
                        frames,
                        tuple(s.values),
                        tuple(s.timestamps_unix_nano),
                        stype,
                        prof.period,
                    )


_KINDS = {v: k for k, v in FRAME_TYPES.items()}


def to_profile(
    req: svc.ExportProfilesServiceRequest, resource: Mapping[str, str] | None = None
) -> Profile:
    """A model Profile of a request (the inverse of `to_request`).

    `resource` is the batch resource the request was written with: the
    attributes it holds are not turned into labels.
    """
    base = dict(resource or {})
    out = Profile()
    for rp in req.resource_profiles:
        for sp in rp.scope_profiles:
            for prof in sp.profiles:
                if prof.time_unix_nano and (not out.start_ns or prof.time_unix_nano < out.start_ns):
                    out.start_ns = prof.time_unix_nano
                out.duration_ns = max(out.duration_ns, prof.duration_nano)
                out.period_ns = out.period_ns or prof.period
    for s in iter_samples(req):
        frames = [
            Frame(
                f.function,
                f.address,
                _KINDS.get(f.kind, FrameKind.NATIVE),
                _model_mapping(f),
                system_name=f.system_name,
                filename=f.filename,
                line=f.line,
            )
            for f in s.frames
        ]
        out.add(frames, s.count, labels_of(s.resource, s.attributes, base))
    return out


def _model_mapping(f: OtlpFrame) -> ModelMapping | None:
    # Frames keep their mapping's file; to_profile is for tests and tools, where
    # the address range is not needed, so the mapping is rebuilt from the name.
    if not f.mapping:
        return None
    return ModelMapping(0, 0, 0, f.mapping, kind=_KINDS.get(f.kind, FrameKind.NATIVE))


# -- validation ------------------------------------------------------------


def validate_request(req: svc.ExportProfilesServiceRequest) -> list[str]:
    """Every problem with a request; empty when it is sound.

    Checks that the dictionary is there and each of its tables starts with
    its zero value and holds no duplicate; that every index (strings,
    attributes, mappings, functions, locations, stacks, links) is in range;
    that no attribute list repeats a key; and that each sample has values or
    timestamps (the same number when both), timestamps inside its profile's
    time range.
    """
    problems: list[str] = []
    if not req.HasField("dictionary"):
        return ["no dictionary"]
    d = req.dictionary
    sizes = {
        "string": len(d.string_table),
        "attribute": len(d.attribute_table),
        "mapping": len(d.mapping_table),
        "function": len(d.function_table),
        "location": len(d.location_table),
        "stack": len(d.stack_table),
        "link": len(d.link_table),
    }

    def check(kind: str, idx: int, where: str, nonzero: bool = False) -> None:
        n = sizes[kind]
        if not 0 <= idx < n:
            problems.append(f"{where}: {kind} index {idx} out of range 0..{n - 1}")
        elif nonzero and idx == 0:
            problems.append(f"{where}: {kind} index 0 is the zero value, not an entry")

    def attribute_list(indices: Sequence[int], where: str) -> None:
        keys: set[int] = set()
        for i in indices:
            check("attribute", i, where, nonzero=True)
            if 0 < i < sizes["attribute"]:
                key = d.attribute_table[i].key_strindex
                if key in keys:
                    problems.append(f"{where}: attribute key {_str(d, key)!r} repeated")
                keys.add(key)

    # Zero values and duplicates.
    if not d.string_table:
        problems.append("string_table is empty (entry 0 must be '')")
    elif d.string_table[0] != "":
        problems.append(f"string_table[0] is {d.string_table[0]!r}, not ''")
    seen_strings: dict[str, int] = {}
    for i, text in enumerate(d.string_table):
        if text in seen_strings:
            problems.append(f"string_table[{i}] repeats entry {seen_strings[text]} ({text!r})")
        seen_strings.setdefault(text, i)
    for name in ("mapping", "location", "function", "link", "attribute", "stack"):
        table = getattr(d, f"{name}_table")
        if not len(table):
            problems.append(f"{name}_table is empty (entry 0 must be the zero value)")
            continue
        if table[0].ByteSize():
            problems.append(f"{name}_table[0] is not the zero value")
        seen: dict[bytes, int] = {}
        for i, entry in enumerate(table):
            key = entry.SerializeToString(deterministic=True)
            if key in seen:
                problems.append(f"{name}_table[{i}] repeats entry {seen[key]}")
            seen.setdefault(key, i)

    # References from the dictionary's own tables.
    for i, m in enumerate(d.mapping_table):
        check("string", m.filename_strindex, f"mapping {i} filename")
        attribute_list(m.attribute_indices, f"mapping {i}")
    for i, f in enumerate(d.function_table):
        check("string", f.name_strindex, f"function {i} name")
        check("string", f.system_name_strindex, f"function {i} system_name")
        check("string", f.filename_strindex, f"function {i} filename")
    for i, loc in enumerate(d.location_table):
        check("mapping", loc.mapping_index, f"location {i}")
        for j, line in enumerate(loc.lines):
            check("function", line.function_index, f"location {i} line {j}", nonzero=True)
        attribute_list(loc.attribute_indices, f"location {i}")
    for i, a in enumerate(d.attribute_table):
        check("string", a.key_strindex, f"attribute {i} key")
        check("string", a.unit_strindex, f"attribute {i} unit")
        if i and not _str(d, a.key_strindex):
            problems.append(f"attribute {i} has an empty key")
    for i, stack in enumerate(d.stack_table):
        for j, li in enumerate(stack.location_indices):
            check("location", li, f"stack {i} frame {j}", nonzero=True)

    # The profiles.
    for r, rp in enumerate(req.resource_profiles):
        keys: set[str] = set()
        for kv in rp.resource.attributes:
            if kv.key in keys:
                problems.append(f"resource {r}: attribute key {kv.key!r} repeated")
            keys.add(kv.key)
        for s_i, sp in enumerate(rp.scope_profiles):
            for p_i, prof in enumerate(sp.profiles):
                where = f"resource {r} scope {s_i} profile {p_i}"
                for vt_name in ("sample_type", "period_type"):
                    vt = getattr(prof, vt_name)
                    check("string", vt.type_strindex, f"{where} {vt_name}.type")
                    check("string", vt.unit_strindex, f"{where} {vt_name}.unit")
                attribute_list(prof.attribute_indices, where)
                start, end = prof.time_unix_nano, prof.time_unix_nano + prof.duration_nano
                for k, s in enumerate(prof.samples):
                    sw = f"{where} sample {k}"
                    check("stack", s.stack_index, sw)
                    check("link", s.link_index, sw)
                    attribute_list(s.attribute_indices, sw)
                    nv, nt = len(s.values), len(s.timestamps_unix_nano)
                    if not nv and not nt:
                        problems.append(f"{sw}: neither values nor timestamps")
                    elif nv and nt and nv != nt:
                        problems.append(f"{sw}: {nv} values but {nt} timestamps")
                    for t in s.timestamps_unix_nano:
                        if start and not start <= t <= max(start, end):
                            problems.append(f"{sw}: timestamp {t} outside [{start}, {end}]")
    return problems


def _str(d: pb.ProfilesDictionary, idx: int) -> str:
    return d.string_table[idx] if 0 <= idx < len(d.string_table) else ""
