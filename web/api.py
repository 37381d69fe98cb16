"""The JSON endpoints the page reads (/api/...).

Each parses its parameters with `web.params` (bad ones become 400 with a
reason), reads profiles only through the ProfileSource, and hands them to
one pure view module. An empty selection is not an error: the answer is
an empty result with a `message` saying what was looked for and what the
store holds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request

from profiler.store.api import LABEL_KEYS, Filters
from symbolizer.profile import Profile
from web import diff, flame, params, sandwich, stacks, tables
from web.agent_status import read_status, read_store_stats
from web.params import ParamError, Selection
from web.state import web_state

bp = Blueprint("api", __name__, url_prefix="/api")


def query(selection: Selection) -> Profile:
    """The samples of `selection`, shared with other requests for a few seconds."""
    state = web_state()
    r = selection.range
    return state.cache.get(
        (r.start_ns, r.end_ns, selection.filters),
        lambda: state.source.query(r.start_ns, r.end_ns, selection.filters),
    )


def now_ns() -> int:
    return web_state().clock_ns()


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(selection: Selection) -> dict[str, Any]:
    """The resolved selection, so the page can reuse the exact range."""
    f = selection.filters
    return {
        "range": {
            "from": selection.range.start_ns // params.NS_PER_MS,
            "to": selection.range.end_ns // params.NS_PER_MS,
        },
        "filters": {key: list(getattr(f, field)) for key, field in params.FILTER_KEYS.items()},
    }


def empty_message(selection: Selection) -> str:
    """Why a selection has no samples, in words."""
    r = selection.range
    what = f"No samples from {_iso(r.start_ns)} to {_iso(r.end_ns)}"
    if selection.filters != Filters():
        what += " matching these filters"
    stats, error = read_store_stats(web_state().source)
    if stats is None:
        return f"{what}. (The store cannot say what it holds: {error})"
    if not stats.windows:
        return f"{what}: the store is empty; profiles appear after the first window closes."
    return f"{what}. The store holds data from {_iso(stats.oldest_ns)} to {_iso(stats.newest_ns)}."


def _with_meta(payload: dict[str, Any], selection: Selection, profile: Profile) -> Response:
    payload.update(describe(selection))
    payload["period_ns"] = profile.period_ns
    if not profile.counts:
        payload["message"] = empty_message(selection)
    return jsonify(payload)


@bp.get("/flame")
def flame_graph() -> Response:
    selection = params.selection(request.args, now_ns())
    options = params.flame_options(request.args)
    profile = query(selection)
    return _with_meta(flame.flamegraph(stacks.from_profile(profile), options), selection, profile)


@bp.get("/top")
def top() -> Response:
    args = request.args
    selection = params.selection(args, now_ns())
    options = params.flame_options(args)
    table_query = tables.TableQuery(
        sort=params.choice(args, "sort", tables.SORT_KEYS, "self"),
        descending=params.choice(args, "order", ("desc", "asc"), "desc") == "desc",
        limit=params.integer(args, "limit", 100, 1, 10_000),
        offset=params.integer(args, "offset", 0, 0, 10_000_000),
        search=params.text(args, "q", max_len=500),
    )
    profile = query(selection)
    prepared = flame.prepare(stacks.from_profile(profile), options)
    return _with_meta(tables.top_functions(prepared, table_query), selection, profile)


@bp.get("/sandwich")
def sandwich_view() -> Response:
    args = request.args
    selection = params.selection(args, now_ns())
    options = params.flame_options(args)
    name = params.text(args, "function", required=True)
    kind = params.frame_kind(args, "kind")
    profile = query(selection)
    prepared = flame.prepare(stacks.from_profile(profile), options)
    payload = sandwich.sandwich(prepared, name, kind, options.max_nodes)
    if profile.counts and not payload["found"]:
        payload["message"] = f"No sample in this view has the function {name!r}."
    return _with_meta(payload, selection, profile)


@bp.get("/diff")
def diff_view() -> Response:
    """Comparison = the view's own parameters; baseline = the same with every
    `base_`-prefixed parameter (base_from, base_to, base_pid, ...) replacing
    its unprefixed twin."""
    args = request.args
    now = now_ns()
    comparison = params.selection(args, now)
    base_range = params.time_range(
        args,
        now,
        prefix="base_",
        default=(args.get("from") or params.DEFAULT_FROM, args.get("to") or params.DEFAULT_TO),
    )
    baseline = Selection(base_range, params.filters(args, "base_", fallback=comparison.filters))
    options = params.flame_options(args)
    base_profile = query(baseline)
    comp_profile = query(comparison)
    payload = diff.diff(base_profile, comp_profile, options)
    payload["baseline"] = describe(baseline)
    payload["comparison"] = describe(comparison)
    messages = []
    if baseline == comparison:
        messages.append("Baseline and comparison are the same selection; nothing can differ.")
    if not base_profile.counts:
        messages.append("Baseline: " + empty_message(baseline))
    if not comp_profile.counts:
        messages.append("Comparison: " + empty_message(comparison))
    if messages:
        payload["message"] = " ".join(messages)
    return jsonify(payload)


@bp.get("/timeline")
def timeline() -> Response:
    args = request.args
    selection = params.selection(args, now_ns())
    r = selection.range
    step = params.timeline_step(args, r.duration_ns)
    # Buckets aligned to the step, so live refreshes keep the same buckets.
    start = r.start_ns - r.start_ns % step
    points = web_state().source.timeline(start, r.end_ns, step, selection.filters)
    seconds = step / 1e9
    payload: dict[str, Any] = {
        "step_ms": step // params.NS_PER_MS,
        "points": [
            {
                "t": p.start_ns // params.NS_PER_MS,
                "samples": p.samples,
                "rate": round(p.samples / seconds, 3),
            }
            for p in points
        ],
    }
    payload.update(describe(selection))
    if not any(p.samples for p in points):
        payload["message"] = empty_message(selection)
    return jsonify(payload)


@bp.get("/labels/<key>")
def label_values(key: str) -> Response:
    if key not in LABEL_KEYS:
        raise ParamError("key", f"{key[:40]!r} is not a label; use one of {', '.join(LABEL_KEYS)}")
    r = params.time_range(request.args, now_ns())
    limit = params.integer(request.args, "limit", 200, 1, 1000)
    values = web_state().source.label_values(key, r.start_ns, r.end_ns, limit)
    return jsonify({"key": key, "values": [{"value": v, "samples": n} for v, n in values]})


@bp.get("/agent")
def agent() -> Response:
    state = web_state()
    stats, error = read_store_stats(state.source)
    store: dict[str, Any] = (
        {"error": error}
        if stats is None
        else {
            "path": stats.path,
            "bytes_on_disk": stats.bytes_on_disk,
            "windows": stats.windows,
            "samples": stats.samples,
            "oldest_ms": stats.oldest_ns // params.NS_PER_MS,
            "newest_ms": stats.newest_ns // params.NS_PER_MS,
            "schema_version": stats.schema_version,
            "write_errors": stats.write_errors,
        }
    )
    return jsonify(
        {
            "agent": read_status(state.agent_status),
            "store": store,
            "ui": {"vendor": dict(state.vendor.versions), "auth": state.token is not None},
            "now_ms": state.clock_ns() // params.NS_PER_MS,
        }
    )
