"""Downloads of the current view: gzipped pprof, folded stacks and OTLP Profiles.

The file holds what the page shows: the same time range and label filters,
and, when the view hides frame kinds or collapses recursion, the same
frames (the file's comments say so). The writers are the CLI's own
(`symbolizer.pprof`, `symbolizer.folded`) and the exporters' OTLP encoder
(`symbolizer.otlp`: an ExportProfilesServiceRequest, protobuf, gzipped).
"""

from __future__ import annotations

import gzip
import socket
from datetime import UTC, datetime

from flask import Blueprint, Response, request

from symbolizer import folded, otlp, pprof
from symbolizer.profile import FrameKind, Profile
from web import params
from web.api import now_ns, query
from web.params import Selection
from web.stacks import ALL_KINDS

bp = Blueprint("downloads", __name__, url_prefix="/download")


def view_profile(profile: Profile, kinds: frozenset[FrameKind], collapse: bool) -> Profile:
    """`profile` with frames of other kinds removed and directly recursive
    frames merged (the innermost location of each run is kept)."""
    if kinds >= ALL_KINDS and not collapse:
        return profile
    # Laid out on the source's own tables, then re-interned by merge(), the
    # way symbolizer.pprof builds a Profile from decoded tables.
    raw = Profile()
    raw.mappings = profile.mappings
    raw.functions = profile.functions
    raw.label_sets = profile.label_sets
    new_stack: dict[int, int] = {}
    for (sid, lid), n in profile.counts.items():
        idx = new_stack.get(sid)
        if idx is None:
            idx = new_stack[sid] = len(raw.stacks)
            raw.stacks.append(_view_stack(profile, profile.stacks[sid], kinds, collapse))
        raw.counts[(idx, lid)] = n
    # Only locations still in a stack, so hidden frames leave no trace.
    used = {lid for stack in raw.stacks for lid in stack}
    raw.locations = [loc if i in used else None for i, loc in enumerate(profile.locations)]
    out = Profile()
    out.merge(raw)
    out.start_ns, out.duration_ns, out.period_ns = (
        profile.start_ns,
        profile.duration_ns,
        profile.period_ns,
    )
    notes = []
    if not kinds >= ALL_KINDS:
        shown = ", ".join(k.label for k in FrameKind if k in kinds) or "none"
        notes.append(f"frames of kinds {shown} only")
    if collapse:
        notes.append("direct recursion collapsed")
    out.comments = [*profile.comments, "kiln web view: " + "; ".join(notes)]
    return out


def _view_stack(
    profile: Profile, stack: tuple[int, ...], kinds: frozenset[FrameKind], collapse: bool
) -> tuple[int, ...]:
    out: list[int] = []
    last: tuple[str, FrameKind] | None = None
    for lid in stack:
        loc = profile.locations[lid]
        if loc is None or loc.kind not in kinds:
            continue
        fn = profile.functions[loc.function_id]
        ident = (fn.name if fn else "", loc.kind)
        if collapse and ident == last:
            continue
        last = ident
        out.append(lid)
    return tuple(out)


def _selected() -> tuple[Selection, Profile]:
    args = request.args
    selection = params.selection(args, now_ns())
    options = params.flame_options(args)
    profile = view_profile(query(selection), options.kinds, options.collapse_recursion)
    return selection, profile


def _filename(selection: Selection, suffix: str) -> str:
    start = datetime.fromtimestamp(selection.range.start_ns / 1e9, UTC)
    seconds = selection.range.duration_ns // 10**9
    return f"kiln-{start:%Y%m%dT%H%M%SZ}-{seconds}s{suffix}"


@bp.get("/pprof")
def download_pprof() -> Response:
    selection, profile = _selected()
    return Response(
        pprof.dumps(profile),
        content_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{_filename(selection, ".pb.gz")}"'},
    )


@bp.get("/folded")
def download_folded() -> Response:
    selection, profile = _selected()
    return Response(
        folded.dumps(profile),
        content_type="text/plain; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{_filename(selection, ".folded")}"'
        },
    )


@bp.get("/otlp")
def download_otlp() -> Response:
    selection, profile = _selected()
    resource = {"host.name": socket.gethostname(), "service.name": "kiln"}
    return Response(
        gzip.compress(otlp.encode(profile, resource), mtime=0),
        content_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{_filename(selection, ".otlp.pb.gz")}"'
        },
    )
