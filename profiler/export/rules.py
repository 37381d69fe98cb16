"""An exporter's OTTL rules over one window: `filter` drops samples, `transform` edits them.

Each distinct (stack, label set) of the window's Profile is one OTTL
sample (`profiler.ottl.SampleContext`):

* `resource.attributes`: the batch's resource (`host.name`,
  `service.name`, ...) plus the process's attributes under the names the
  OTLP exporter sends (`process.pid`, `process.executable.path`,
  `process.executable.name`, `container.id`, ...; see
  `symbolizer.otlp.split_labels`);
* `attributes`: the sample's labels under Kiln's names (`pid`, `tid`,
  `comm`, `cpu`, `exe`, `container`, ...), `pid`/`tid`/`cpu` as ints;
* `frames`: the stack, leaf first; `value`: the sample count;
  `time_unix_nano`: the window's start;
* `stack_key` names the stack, so rules that read only the stack run once
  per distinct stack, not once per sample.

The filter runs first: a sample any condition holds for is dropped. Then
the transform's statements run in order. What a sample looks like
afterwards becomes its labels in a new Profile: `attributes` as labels
(values as text), and every resource attribute a rule set or deleted as a
`resource.<key>` label (`symbolizer.otlp.DELETED` for a deletion), which
each exporter applies to the resource it sends. A sample whose `value` a
rule set to 0 or less is dropped too.

With error_mode `propagate`, a failing rule raises `OttlRuntimeError` out
of `apply_rules`; the caller drops the batch, as the collector does.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from profiler.ottl import (
    ConditionSet,
    SampleContext,
    StatementSet,
    compile_conditions,
    compile_statements,
)
from profiler.ottl import Frame as RuleFrame
from profiler.ottl.errors import ErrorMode
from symbolizer import otlp
from symbolizer.profile import FrameKind, Labels, Location, Profile

_KIND_LABELS = {kind: kind.label for kind in FrameKind}

# Stack keys must differ between windows (a compiled rule memoizes per key
# across calls), so each call's keys carry a number of their own.
_calls = itertools.count()


@dataclass(frozen=True, slots=True)
class Rules:
    """One exporter's compiled rules; either part may be absent."""

    filter: ConditionSet | None = None
    transform: StatementSet | None = None

    def __bool__(self) -> bool:
        return bool(self.filter) or bool(self.transform)


def compile_rules(
    filter: Iterable[str] = (),
    transform: Iterable[str] = (),
    error_mode: ErrorMode | str = ErrorMode.PROPAGATE,
) -> Rules:
    """Compile an exporter's `filter` conditions and `transform` statements.

    Raises `profiler.ottl.OttlError` for the first invalid rule, so a config
    reload can keep the rules it had.
    """
    conditions = list(filter)
    statements = list(transform)
    return Rules(
        compile_conditions(conditions, error_mode) if conditions else None,
        compile_statements(statements, error_mode) if statements else None,
    )


def apply_rules(
    profile: Profile,
    resource: Mapping[str, str] | None = None,
    *,
    filter: ConditionSet | None = None,
    transform: StatementSet | None = None,
) -> tuple[Profile, int]:
    """(the window after the rules, samples dropped).

    `resource` is the batch's resource. When the rules change nothing, the
    same Profile comes back; otherwise a new one holding only what is kept.
    """
    if not filter and not transform:
        return profile, 0
    base = dict(resource or {})
    call = next(_calls)
    frames_of_loc = _RuleFrames(profile)
    frames_of_stack: dict[int, list[RuleFrame]] = {}
    keys: dict[int, tuple[int, int]] = {}
    per_label: dict[int, _LabelView] = {}
    kept: dict[tuple[int, Labels], int] = {}
    dropped = 0
    changed = False
    start = profile.start_ns

    for (sid, lid), n in profile.counts.items():
        if n <= 0:
            continue
        frames = frames_of_stack.get(sid)
        if frames is None:
            frames = frames_of_stack[sid] = list(
                map(frames_of_loc.__getitem__, profile.stacks[sid])
            )
            keys[sid] = (call, sid)
        view = per_label.get(lid)
        if view is None:
            view = per_label[lid] = _LabelView.of(profile.label_sets[lid], base)
        # Conditions do not write, so the filter may share the cached maps.
        ctx = SampleContext(view.resource, view.attributes, frames, n, start, keys[sid])
        if filter is not None and filter.evaluate(ctx):
            dropped += n
            changed = True
            continue
        labels = view.labels
        value = n
        if transform is not None:
            ctx.resource_attributes = dict(view.resource)
            ctx.attributes = dict(view.attributes)
            transform.apply(ctx)
            labels = view.after(ctx)
            value = ctx.value
            if value <= 0:
                dropped += n
                changed = True
                continue
            changed = changed or value != n or labels != view.labels
        key = (sid, labels)
        kept[key] = kept.get(key, 0) + value

    if not changed:
        return profile, 0
    return rebuild(profile, ((sid, labels, n) for (sid, labels), n in kept.items())), dropped


@dataclass(frozen=True, slots=True)
class _LabelView:
    """One label set as rules see it, converted once per window."""

    labels: Labels
    resource: dict[str, Any]
    attributes: dict[str, Any]
    texts: dict[str, str]  # each attribute's label text
    overrides: tuple[tuple[str, str], ...]  # its own resource.<key> labels

    @classmethod
    def of(cls, labels: Labels, base: Mapping[str, str]) -> _LabelView:
        resource, _ = otlp.split_labels(labels, base)
        attributes: dict[str, Any] = {}
        texts: dict[str, str] = {}
        overrides = []
        for key, value in labels:
            if key.startswith(otlp.RESOURCE_PREFIX):
                overrides.append((key, value))
            else:
                attributes[key] = otlp.typed(key, value)
                texts[key] = value
        return cls(labels, resource, attributes, texts, tuple(overrides))

    def after(self, ctx: SampleContext) -> Labels:
        """The labels of the sample as the rules left it."""
        attrs = ctx.attributes
        after = ctx.resource_attributes
        before = self.resource
        # Most statements leave most samples alone. (== says 1 and True are
        # equal; a rule turning one into the other keeps the old text.)
        if attrs == self.attributes and after == before:
            return self.labels
        out = dict(self.overrides)
        original = self.attributes
        texts = self.texts
        for key, value in attrs.items():
            if value is None:
                continue
            # A value the rules did not replace keeps its label text.
            out[key] = texts[key] if original.get(key) is value else _text(value)
        for key, value in after.items():
            if value is None:
                continue
            old = before.get(key)
            if old is None or type(old) is not type(value) or old != value:
                out[otlp.RESOURCE_PREFIX + key] = _text(value)
        for key in before:
            if after.get(key) is None:
                out[otlp.RESOURCE_PREFIX + key] = otlp.DELETED
        return tuple(sorted((k, v) for k, v in out.items() if v != ""))


def _text(value: object) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=otlp.label_value)
    return otlp.label_value(value)


class _RuleFrames(dict[int, RuleFrame]):
    """Model location id -> the frame rules see, built on first use (a dict, so
    known ids are looked up in C: a window has tens of thousands of frames)."""

    def __init__(self, profile: Profile) -> None:
        super().__init__()
        self.profile = profile

    def __missing__(self, lid: int) -> RuleFrame:
        profile = self.profile
        loc = profile.locations[lid]
        assert loc is not None, f"a stack refers to empty location {lid}"
        fn = profile.functions[loc.function_id]
        assert fn is not None, f"location {lid} has no function"
        mapping = profile.mappings[loc.mapping_id]
        # The fields RuleFrame.from_symbolized takes from a symbolized Frame,
        # read straight from the tables (no Frame built per location).
        frame = self[lid] = RuleFrame(
            fn.name,
            fn.filename,
            loc.line,
            _KIND_LABELS[loc.kind],
            mapping.filename if mapping else "",
        )
        return frame


def rebuild(profile: Profile, samples: Iterable[tuple[int, Labels, int]]) -> Profile:
    """A new Profile with `samples` (stack id of `profile`, labels, count) only.

    Its tables hold only what those samples use, so writers that emit whole
    tables (pprof) stay as small as the samples they carry.
    """
    out = Profile(
        start_ns=profile.start_ns, duration_ns=profile.duration_ns, period_ns=profile.period_ns
    )
    out.comments = list(profile.comments)
    fn_ids: dict[int, int] = {}
    map_ids: dict[int, int] = {0: 0}
    loc_ids: dict[int, int] = {}
    stack_ids: dict[int, int] = {}
    label_ids: dict[Labels, int] = {}
    for sid, labels, n in samples:
        new_sid = stack_ids.get(sid)
        if new_sid is None:
            locs = []
            for lid in profile.stacks[sid]:
                new_lid = loc_ids.get(lid)
                if new_lid is None:
                    loc = profile.locations[lid]
                    assert loc is not None, f"stack {sid} refers to empty location {lid}"
                    fid = fn_ids.get(loc.function_id)
                    if fid is None:
                        fn = profile.functions[loc.function_id]
                        assert fn is not None, f"location {lid} has no function"
                        fid = fn_ids[loc.function_id] = out.function_id(fn)
                    mid = map_ids.get(loc.mapping_id)
                    if mid is None:
                        mid = map_ids[loc.mapping_id] = out.mapping_id(
                            profile.mappings[loc.mapping_id]
                        )
                    # The source interned its locations, so their images are
                    # distinct too: append, and index them as Profile would
                    # (it has no public call taking a Location).
                    new = Location(mid, loc.address, fid, loc.line, loc.kind)
                    new_lid = loc_ids[lid] = len(out.locations)
                    out.locations.append(new)
                    out._location_ids[new] = new_lid
                locs.append(new_lid)
            new_sid = stack_ids[sid] = out.stack_id_of_locations(tuple(locs))
        lab = label_ids.get(labels)
        if lab is None:
            lab = label_ids[labels] = out.labels_id(labels)
        out.add_by_ids(new_sid, lab, n)
    return out


def subset(profile: Profile, keys: Iterable[tuple[int, int]]) -> Profile:
    """A compact Profile with the samples of `profile` under `keys` (stack id, labels id)."""
    return rebuild(
        profile, ((sid, profile.label_sets[lid], profile.counts[(sid, lid)]) for sid, lid in keys)
    )
