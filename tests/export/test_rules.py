"""profiler.export.rules: an exporter's OTTL filter and transform over a window."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from profiler.export.rules import apply_rules, compile_rules, rebuild, subset
from profiler.ottl import OttlError, OttlRuntimeError, compile_conditions
from symbolizer import otlp, pprof
from symbolizer.profile import Frame, Profile
from tests.export.workload import (
    CONTAINER,
    HOT,
    NGINX_EXE,
    RESOURCE,
    canonical,
    profile_share,
    workload,
)


def run(
    profile: Profile, filter: Sequence[str] = (), transform: Sequence[str] = (), **kw: str
) -> tuple[Profile, int]:
    rules = compile_rules(filter, transform, **kw)
    return apply_rules(profile, RESOURCE, filter=rules.filter, transform=rules.transform)


def labels_of(profile: Profile) -> set[tuple[tuple[str, str], ...]]:
    return {labels for _, labels, _ in profile.samples()}


def test_no_rules_is_the_same_profile() -> None:
    p = workload(samples=300)
    assert apply_rules(p, RESOURCE) == (p, 0)
    assert not compile_rules()


def test_a_filter_that_matches_nothing_keeps_the_profile() -> None:
    p = workload(samples=300)
    out, dropped = run(p, ['attributes["comm"] == "nobody"'])
    assert out is p and dropped == 0


def test_drop_by_stack_contains() -> None:
    p = workload()
    out, dropped = run(p, [f'StackContains("^{HOT}$")'])
    assert dropped == round(p.total_samples * 0.4)
    assert out.total_samples == p.total_samples - dropped
    assert profile_share(out) == 0.0
    assert out.start_ns == p.start_ns and out.period_ns == p.period_ns


def test_drop_by_resource_and_frames() -> None:
    p = workload()
    nginx = sum(n for _, labels, n in p.samples() if ("exe", NGINX_EXE) in labels)
    _, dropped = run(p, ['resource.attributes["process.executable.name"] == "nginx"'])
    assert dropped == nginx
    out2, dropped2 = run(p, ['frames[0].kind == "kernel"'])
    kernel_leaf = sum(n for frames, _, n in p.samples() if frames and frames[0][1].kind == 1)
    assert dropped2 == kernel_leaf > 0
    assert all(not frames or frames[0][1].kind != 1 for frames, _, _ in out2.samples())


def test_set_and_delete_attributes_with_where() -> None:
    p = workload(samples=500)
    out, dropped = run(
        p,
        transform=[
            'set(attributes["team"], "web") where attributes["comm"] == "nginx"',
            'delete_key(attributes, "tid")',
            'set(attributes["kernel"], true) where frames[0].kind == "kernel"',
            'set(attributes["cpu"], attributes["cpu"] + 100)',
        ],
    )
    assert dropped == 0 and out.total_samples == p.total_samples
    for frames, labels, _ in out.samples():
        d = dict(labels)
        assert "tid" not in d
        assert (d.get("team") == "web") == (d["comm"] == "nginx")
        assert (d.get("kernel") == "true") == (frames[0][1].kind == 1)
        assert int(d["cpu"]) >= 100  # was an int in the rule, a label again after
    # Samples that now share labels were merged.
    assert len(out.counts) < len(p.counts)


def test_resource_edits_reach_the_otlp_resource() -> None:
    p = workload(samples=500)
    out, _ = run(
        p,
        transform=[
            'set(resource.attributes["service.name"], "proxy")'
            ' where resource.attributes["process.executable.name"] == "nginx"',
            'delete_key(resource.attributes, "host.name")',
            'replace_pattern(attributes["exe"], "^/usr/sbin/", "/redacted/")',
        ],
    )
    req = otlp.to_request(out, RESOURCE)
    assert otlp.validate_request(req) == []
    resources = [
        {kv.key: otlp.any_value(kv.value) for kv in rp.resource.attributes}
        for rp in req.resource_profiles
    ]
    by_pid = {r["process.pid"]: r for r in resources}
    assert by_pid[2000]["service.name"] == "proxy"
    assert by_pid[1000]["service.name"] == "checkout"
    assert all("host.name" not in r for r in resources)
    assert by_pid[2000]["process.executable.path"] == "/redacted/nginx"
    assert by_pid[2000]["container.id"] == CONTAINER


def test_value_edits() -> None:
    p = workload(samples=300)
    _, dropped = run(p, transform=['set(value, 0) where attributes["comm"] == "nginx"'])
    nginx = sum(n for _, labels, n in p.samples() if ("comm", "nginx") in labels)
    assert dropped == nginx
    out2, _ = run(p, transform=["set(value, value * 2)"])
    assert out2.total_samples == 2 * p.total_samples


def test_filter_then_transform() -> None:
    p = workload(samples=300)
    out, dropped = run(
        p, filter=['attributes["comm"] == "nginx"'], transform=['set(attributes["seen"], "yes")']
    )
    assert all(dict(labels)["seen"] == "yes" for labels in labels_of(out))
    assert all(dict(labels)["comm"] != "nginx" for labels in labels_of(out))
    assert dropped + out.total_samples == p.total_samples


def test_stack_rules_run_once_per_stack_and_never_leak_between_windows() -> None:
    a = Profile(start_ns=1, duration_ns=1, period_ns=1)
    a.add([Frame("alpha")], 1, [("tid", "1")])
    a.add([Frame("alpha")], 1, [("tid", "2")])
    b = Profile(start_ns=2, duration_ns=1, period_ns=1)
    b.add([Frame("beta")], 1, [("tid", "1")])  # stack id 1 too, other frames
    rules = compile_conditions(['StackContains("^alpha$")'])
    out_a, dropped_a = apply_rules(a, filter=rules)
    out_b, dropped_b = apply_rules(b, filter=rules)
    assert dropped_a == 2 and out_a.total_samples == 0
    assert dropped_b == 0 and out_b is b


def test_error_modes() -> None:
    p = workload(samples=100)
    bad = ['set(attributes["x"], Int("not a number") + 1)']  # fails at run time
    with pytest.raises(OttlRuntimeError):
        run(p, transform=bad, error_mode="propagate")
    out, dropped = run(p, transform=bad, error_mode="silent")
    assert out is p and dropped == 0


def test_invalid_rules_are_refused_when_compiled() -> None:
    with pytest.raises(OttlError):
        compile_rules(["attributes[ == 1"])


def test_rebuild_and_subset_are_compact() -> None:
    p = workload(samples=1000)
    keys = sorted(p.counts)[:10]
    small = subset(p, keys)
    assert small.total_samples == sum(p.counts[k] for k in keys)
    used = {loc for sid in {s for s, _ in small.counts} for loc in small.stacks[sid]}
    assert used == set(range(1, len(small.locations)))  # nothing unused
    msg = pprof.to_message(small)
    assert pprof.validate(msg) == []
    assert [loc.id for loc in msg.location] == list(range(1, len(msg.location) + 1))
    whole = rebuild(p, [(sid, p.label_sets[lid], n) for (sid, lid), n in p.counts.items()])
    assert canonical(whole) == canonical(p)
