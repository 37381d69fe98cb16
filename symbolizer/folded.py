"""Brendan Gregg's collapsed ("folded") stack format, written and parsed.

One line per distinct stack, frames root first and joined by ";", then a
space and the sample count::

    main;run;do_work 12
    main;sys_read_[k] 3

Frame names carry their kind as a suffix, and every writer in Kiln (this
one, `symbolizer.pprof` and `symbolizer.top`) uses the same convention:

* native frames: the name as it is, no suffix;
* kernel frames: ``name_[k]``, the suffix `stackcollapse-perf.pl` uses, so
  `flamegraph.pl` colours them as kernel code;
* Python frames: ``name_[py]``.

Parsing strips a known suffix and sets the frame's kind from it; any other
bracketed suffix (`_[j]`, `_[i]`, ...) stays part of a native name. A
native function whose real name already ends in one of those suffixes
would read back as kernel/Python; that is the price of a text convention.

Output is deterministic: lines are sorted, label sets are merged (the
format has no labels), and names are made safe by `safe_name`: ";" becomes
":", line breaks become spaces and whitespace at the ends is trimmed, so a
name can neither split a frame nor a line. An empty name, and a sample with
an empty stack, is written as `[unknown]` (the name `perf script` uses), so
no sample is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from profiler.errors import KilnError
from symbolizer.profile import Frame, FrameKind, Profile

KIND_SUFFIX: dict[FrameKind, str] = {
    FrameKind.NATIVE: "",
    FrameKind.KERNEL: "_[k]",
    FrameKind.PYTHON: "_[py]",
}
"""The suffix appended to a frame's name to show its kind."""

EMPTY_STACK_FRAME = "[unknown]"

_SUFFIXED_KINDS = [(s, k) for k, s in KIND_SUFFIX.items() if s]
# ";" splits frames; these split lines for str.splitlines() and friends.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_UNSAFE = str.maketrans({";": ":", **dict.fromkeys(_LINE_BREAKS, " ")})
_LINE = re.compile(r"(.*?)\s+([0-9]+)", re.DOTALL)


class FoldedFormatError(KilnError, ValueError):
    """Text that is not collapsed stacks at all."""


def display_name(name: str, kind: FrameKind) -> str:
    """`name` with the suffix of `kind` (none for native frames)."""
    return name + KIND_SUFFIX[kind]


def split_display_name(name: str) -> tuple[str, FrameKind]:
    """Undo `display_name`: the bare name and the kind its suffix names."""
    for suffix, kind in _SUFFIXED_KINDS:
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, FrameKind.NATIVE


def safe_name(name: str) -> str:
    """`name` as one folded frame: ";" and anything `str.splitlines` breaks
    lines at replaced, whitespace at either end trimmed (a parser could not
    keep it), `[unknown]` if nothing is left.
    """
    return name.translate(_UNSAFE).strip() or EMPTY_STACK_FRAME


def folded_stacks(profile: Profile) -> dict[str, int]:
    """Each distinct folded stack (root first) and its total count."""
    names: dict[int, str] = {}
    for lid, loc in enumerate(profile.locations):
        if loc is None:
            continue
        fn = profile.functions[loc.function_id]
        names[lid] = safe_name(display_name(fn.name if fn else "", loc.kind))
    per_stack: dict[int, int] = {}
    for (sid, _labels), n in profile.counts.items():
        per_stack[sid] = per_stack.get(sid, 0) + n
    out: dict[str, int] = {}
    for sid, n in per_stack.items():
        stack = profile.stacks[sid]
        line = ";".join(names[lid] for lid in reversed(stack)) if stack else EMPTY_STACK_FRAME
        out[line] = out.get(line, 0) + n
    return out


def lines(profile: Profile) -> list[str]:
    """The folded lines of `profile`, sorted, without line terminators."""
    return [f"{stack} {n}" for stack, n in sorted(folded_stacks(profile).items())]


def dumps(profile: Profile) -> str:
    return "".join(line + "\n" for line in lines(profile))


def write(profile: Profile, file: TextIO) -> None:
    for line in lines(profile):
        file.write(line + "\n")


@dataclass
class ParseResult:
    """A parsed folded file and the lines that could not be read."""

    profile: Profile
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """(1-based line number, text) of every malformed line."""


def parse_report(text: str | bytes) -> ParseResult:
    """Parse collapsed stacks, keeping going past malformed lines.

    Lines end at "\n" ("\r\n" works too); blank lines are ignored. A line
    is malformed unless it is a stack, whitespace and a non-negative
    decimal count. Raises
    `FoldedFormatError` only when there were non-blank lines and none of
    them parsed.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    result = ParseResult(Profile())
    profile = result.profile
    parsed = 0
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            result.skipped.append((lineno, raw))
            continue
        parsed += 1
        profile.add(_frames(m[1].split(";")), int(m[2]))
    if result.skipped and not parsed:
        lineno, first = result.skipped[0]
        raise FoldedFormatError(
            f"no line is in collapsed-stack format (line {lineno}: {first[:80]!r})",
            "expected lines like 'main;work;leaf 12' (root first, then a sample count)",
        )
    return result


def parse(text: str | bytes) -> Profile:
    """Parse collapsed stacks into a Profile (leaf-first stacks, counts only).

    Malformed lines are skipped; when there are any, a comment on the
    returned profile says how many and where the first one was, so the loss
    shows up in every format written from it. Use `parse_report` for the
    full list.
    """
    result = parse_report(text)
    if result.skipped:
        lineno, _ = result.skipped[0]
        result.profile.comments.append(
            f"folded: skipped {len(result.skipped)} malformed line(s), first at line {lineno}"
        )
    return result.profile


def _frames(names: Iterable[str]) -> list[Frame]:
    """Leaf-first frames from root-first names."""
    frames = []
    for shown in names:
        name, kind = split_display_name(shown)
        frames.append(Frame(function=name, kind=kind))
    frames.reverse()
    return frames
