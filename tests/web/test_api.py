"""The JSON endpoints through Flask's test client, over a real SqliteStore."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from profiler.store.api import Filters, StoreError, StoreStats, TimelinePoint
from symbolizer.profile import Profile
from tests.web.conftest import AppFactory
from tests.web.profiles import EVIL, HOT, SAMPLES_PER_WINDOW, T0, WINDOW, WINDOWS, ms
from tests.web.test_flame import check_consistent, path
from web import create_app

ALL = f"from={ms(T0)}&to={ms(T0 + WINDOWS * WINDOW)}"
FIRST_HALF = f"from={ms(T0)}&to={ms(T0 + 3 * WINDOW)}"
SECOND_HALF = f"from={ms(T0 + 3 * WINDOW)}&to={ms(T0 + 6 * WINDOW)}"


def get_json(client: FlaskClient, url: str, status: int = 200) -> Any:
    r = client.get(url)
    assert r.status_code == status, (url, r.status_code, r.get_data(as_text=True)[:500])
    assert r.content_type == "application/json"
    return r.get_json()


def test_flame(client: FlaskClient) -> None:
    data = get_json(client, f"/api/flame?{ALL}")
    assert data["total"] == WINDOWS * SAMPLES_PER_WINDOW
    assert path(data["tree"], "main", "run", HOT)["value"] == WINDOWS * 200
    assert data["range"] == {"from": ms(T0), "to": ms(T0 + WINDOWS * WINDOW)}
    assert data["period_ns"] > 0 and "message" not in data
    check_consistent(data["tree"])


def test_flame_relative_range_uses_the_app_clock(client: FlaskClient) -> None:
    # The clock stands 10 minutes after T0: the last hour holds everything.
    data = get_json(client, "/api/flame?from=now-1h")
    assert data["total"] == WINDOWS * SAMPLES_PER_WINDOW


def test_flame_filters_and_options(client: FlaskClient) -> None:
    data = get_json(client, f"/api/flame?{ALL}&pid=200")
    main = path(data["tree"], "main")
    assert sorted(c["name"] for c in main["children"]) == [EVIL, "read"]
    data = get_json(client, f"/api/flame?{ALL}&comm=python3&container=c0ffee")
    assert data["total"] == WINDOWS * 15
    data = get_json(client, f"/api/flame?{ALL}&kinds=kernel")
    assert [c["name"] for c in data["tree"]["children"]] == ["vfs_read"]
    data = get_json(client, f"/api/flame?{ALL}&collapse=1")
    assert [c["name"] for c in path(data["tree"], "main", "recurse")["children"]] == ["leaf"]
    data = get_json(client, f"/api/flame?{ALL}&max_nodes=4")
    assert data["nodes"] <= 4 and data["truncated"]


def test_flame_empty_range_has_a_message(client: FlaskClient) -> None:
    data = get_json(client, f"/api/flame?from={ms(T0) - 3_600_000}&to={ms(T0) - 60_000}")
    assert data["total"] == 0 and data["tree"]["value"] == 0
    assert "No samples" in data["message"] and "store holds data from" in data["message"]
    data = get_json(client, f"/api/flame?{ALL}&pid=999")
    assert "matching these filters" in data["message"]


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/api/flame?from=yesterday", "from"),
        ("/api/flame?to=now-", "to"),
        ("/api/flame?from=now&to=now-1h", "to"),
        ("/api/flame?from=now-90d", "to"),
        ("/api/flame?pid=1%3B2", "pid"),
        ("/api/flame?tid=abc", "tid"),
        ("/api/flame?kinds=jit", "kinds"),
        ("/api/flame?collapse=perhaps", "collapse"),
        ("/api/flame?max_nodes=0", "max_nodes"),
        ("/api/flame?max_nodes=10e9", "max_nodes"),
        ("/api/flame?comm=a%00b", "comm"),
        ("/api/top?sort=cpu", "sort"),
        ("/api/top?order=up", "order"),
        ("/api/top?limit=-1", "limit"),
        ("/api/top?offset=x", "offset"),
        ("/api/sandwich", "function"),
        ("/api/sandwich?function=f&kind=jit", "kind"),
        ("/api/diff?base_from=later", "base_from"),
        ("/api/diff?base_pid=x", "base_pid"),
        ("/api/timeline?step=0", "step"),
        ("/api/timeline?step=1s&from=now-30d", "step"),
        ("/api/labels/password", "key"),
        ("/api/labels/pid?limit=100000", "limit"),
        ("/download/pprof?from=x", "from"),
        ("/download/folded?kinds=x", "kinds"),
    ],
)
def test_bad_parameters_are_400_with_a_reason(client: FlaskClient, url: str, param: str) -> None:
    data = get_json(client, url, 400)
    assert data["param"] == param
    assert data["error"].startswith(f"bad parameter {param}: ")


def test_top(client: FlaskClient) -> None:
    data = get_json(client, f"/api/top?{ALL}")
    assert data["rows"][0]["name"] == HOT
    assert data["rows"][0]["self"] == WINDOWS * 200
    assert data["total"] == WINDOWS * SAMPLES_PER_WINDOW
    data = get_json(client, f"/api/top?{ALL}&sort=total&limit=2")
    assert [r["name"] for r in data["rows"]] == ["main", HOT]
    data = get_json(client, f"/api/top?{ALL}&sort=name&order=asc&q=me")
    assert [r["name"] for r in data["rows"]] == ["grow_me", "shrink_me"]
    empty = get_json(client, f"/api/top?from={ms(T0) - 60_000}&to={ms(T0)}")
    assert empty["rows"] == [] and "message" in empty


def test_sandwich(client: FlaskClient) -> None:
    data = get_json(client, f"/api/sandwich?{ALL}&function=work")
    assert data["found"] and data["total"] == WINDOWS * 100
    assert [c["name"] for c in data["callers"]["children"]] == ["main"]
    assert sorted(c["name"] for c in data["callees"]["children"]) == ["grow_me", "shrink_me"]
    data = get_json(client, f"/api/sandwich?{ALL}&function=vfs_read&kind=kernel")
    assert data["found"] and data["kind"] == "kernel"
    data = get_json(client, f"/api/sandwich?{ALL}&function=nothing")
    assert not data["found"] and "nothing" in data["message"]


def test_diff_two_ranges(client: FlaskClient) -> None:
    b = FIRST_HALF.replace("from=", "base_from=").replace("to=", "base_to=")
    data = get_json(client, f"/api/diff?{SECOND_HALF}&{b}")
    assert path(data["tree"], "main", "work", "grow_me")["delta"] > 0
    assert path(data["tree"], "main", "work", "shrink_me")["delta"] < 0
    assert data["baseline"]["range"]["to"] == ms(T0 + 3 * WINDOW)
    assert data["comparison"]["range"]["from"] == ms(T0 + 3 * WINDOW)


def test_diff_two_processes(client: FlaskClient) -> None:
    data = get_json(client, f"/api/diff?{ALL}&pid=200&base_pid=100")
    main = path(data["tree"], "main")
    assert path(main, EVIL)["delta"] > 0
    assert path(main, "run")["delta"] < 0
    assert data["baseline"]["filters"]["pid"] == ["100"]
    assert data["comparison"]["filters"]["pid"] == ["200"]


def test_diff_messages(client: FlaskClient) -> None:
    same = get_json(client, f"/api/diff?{ALL}")
    assert "same selection" in same["message"]
    empty = get_json(client, f"/api/diff?{ALL}&base_from={ms(T0) - 60_000}&base_to={ms(T0)}")
    assert empty["message"].startswith("Baseline: No samples")


def test_timeline(client: FlaskClient) -> None:
    data = get_json(client, f"/api/timeline?{ALL}&step=10s")
    assert data["step_ms"] == 10_000
    assert [p["samples"] for p in data["points"]] == [SAMPLES_PER_WINDOW] * WINDOWS
    assert data["points"][0]["t"] == ms(T0)
    assert data["points"][0]["rate"] == SAMPLES_PER_WINDOW / 10
    data = get_json(client, f"/api/timeline?{ALL}&step=10s&pid=300")
    assert {p["samples"] for p in data["points"]} == {15}
    data = get_json(client, "/api/timeline?from=now-1h")
    assert sum(p["samples"] for p in data["points"]) == WINDOWS * SAMPLES_PER_WINDOW
    assert 200 <= len(data["points"]) <= 300
    empty = get_json(client, f"/api/timeline?from={ms(T0) - 60_000}&to={ms(T0)}")
    assert "message" in empty


def test_labels(client: FlaskClient) -> None:
    data = get_json(client, f"/api/labels/pid?{ALL}")
    assert data["values"][0] == {"value": "100", "samples": WINDOWS * 305}
    assert {v["value"] for v in data["values"]} == {"100", "200", "300"}
    data = get_json(client, f"/api/labels/comm?{ALL}&limit=1")
    assert [v["value"] for v in data["values"]] == ["burner"]
    assert get_json(client, f"/api/labels/container?{ALL}")["values"] == [
        {"value": "c0ffee", "samples": WINDOWS * 15}
    ]


def test_agent(client: FlaskClient) -> None:
    data = get_json(client, "/api/agent")
    assert data["agent"]["samples_per_second"] == 38.2
    assert data["store"]["windows"] == WINDOWS
    assert data["store"]["samples"] == WINDOWS * SAMPLES_PER_WINDOW
    assert data["ui"]["vendor"]["d3-flame-graph"]


def test_agent_status_failures_are_reported(make_app: AppFactory) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("sampler thread died")

    client = make_app(agent_status=broken).test_client()
    assert "sampler thread died" in get_json(client, "/api/agent")["agent"]["error"]
    client = make_app(agent_status=None).test_client()
    assert get_json(client, "/api/agent")["agent"] == {}


def test_unknown_paths_and_methods_are_json(client: FlaskClient) -> None:
    assert "not found" in get_json(client, "/api/nothing", 404)["error"].lower()
    r = client.delete("/api/flame")
    assert r.status_code in (403, 405) and r.is_json


ANY = Filters()


class BrokenStore:
    """A store written by a newer Kiln: every read refuses."""

    def query(self, start_ns: int, end_ns: int, filters: Filters = ANY) -> Profile:
        raise StoreError("the store has schema 9; this Kiln reads up to 1: upgrade Kiln")

    def timeline(
        self, start_ns: int, end_ns: int, step_ns: int, filters: Filters = ANY
    ) -> list[TimelinePoint]:
        raise StoreError("the store has schema 9; this Kiln reads up to 1: upgrade Kiln")

    def label_values(
        self, key: str, start_ns: int, end_ns: int, limit: int = 200
    ) -> list[tuple[str, int]]:
        raise StoreError("the store has schema 9; this Kiln reads up to 1: upgrade Kiln")

    def stats(self) -> StoreStats:
        raise StoreError("the store has schema 9; this Kiln reads up to 1: upgrade Kiln")


class CrashingStore(BrokenStore):
    def query(self, start_ns: int, end_ns: int, filters: Filters = ANY) -> Profile:
        raise ZeroDivisionError("bug")


@pytest.fixture
def broken_app() -> Flask:
    return create_app(BrokenStore(), token=None, agent_status=None)


@pytest.mark.parametrize(
    "url", ["/api/flame", "/api/top", "/api/timeline", "/api/labels/pid", "/download/pprof"]
)
def test_store_errors_are_503_with_the_reason(broken_app: Flask, url: str) -> None:
    data = get_json(broken_app.test_client(), url, 503)
    assert "upgrade Kiln" in data["error"]


def test_store_errors_elsewhere(broken_app: Flask) -> None:
    client = broken_app.test_client()
    assert "upgrade Kiln" in get_json(client, "/api/agent")["store"]["error"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "kiln_store_up 0" in metrics
    assert client.get("/").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_unexpected_errors_are_json_500(caplog: pytest.LogCaptureFixture) -> None:
    client = create_app(CrashingStore(), token=None, agent_status=None).test_client()
    data = get_json(client, "/api/flame", 500)
    assert data["error"] == "internal error (ZeroDivisionError); the agent log has details"
    assert "unexpected error on /api/flame" in caplog.text


def test_security_headers(client: FlaskClient) -> None:
    for url in ("/", "/api/flame", "/static/kiln.js"):
        r = client.get(url)
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Frame-Options"] == "DENY"
        r.close()


def test_page_has_no_inline_script(client: FlaskClient) -> None:
    for url in ("/", "/agent"):
        html = client.get(url).get_data(as_text=True)
        scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S)
        assert scripts and all(s.strip() == "" for s in scripts)
        assert not re.search(r"\son[a-z]+\s*=", html)
        assert "style=" not in html
