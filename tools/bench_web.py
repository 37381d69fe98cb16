"""The web UI's figures: /api/flame over an hour of data, and drawing it in Chromium.

`measure()` writes one hour of windows (the store benchmark's workload:
99 Hz x 2 CPUs, stacks 10-40 deep over ~5,000 functions, 2 % new stacks
per window) into a fresh SqliteStore, then times

- server side: GET /api/flame for the whole hour through Flask's test
  client with a cold cache (store query + call tree + JSON), and the two
  halves separately;
- in headless Chromium (/usr/bin/chromium, via Playwright): the page
  drawing that flamegraph, limited to 20,000 nodes, from the moment its
  JSON has arrived to the second animation frame after d3-flame-graph
  built the SVG (the page's own `window.kilnTiming`).

    python tools/bench_web.py [--windows N] [--no-browser]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from profiler.store.sqlite import SqliteStore  # noqa: E402
from tools.bench_store import T0_NS, WINDOW_S, Workload  # noqa: E402
from web import create_app, flame, stacks  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
MS = 1_000_000


def measure(
    tmpdir: Path | None = None, windows: int = 360, repeat: int = 3, browser: bool = True
) -> dict[str, Any]:
    """Figures as a flat dict (seconds unless the key says otherwise)."""
    if tmpdir is None:
        with tempfile.TemporaryDirectory(prefix="kiln-bench-web-") as tmp:
            return measure(Path(tmp), windows, repeat, browser)
    work = Workload.build()
    end = T0_NS + windows * WINDOW_S * 1_000_000_000
    with SqliteStore(tmpdir / "bench.kiln.db") as store:
        for k in range(windows):
            p = work.window(k)
            store.write_window(p, start_ns=p.start_ns, duration_ns=p.duration_ns)
        out = _server_side(store, end, repeat)
        if browser:
            out.update(_browser(store, end, repeat))
    out["windows"] = windows
    return out


def _server_side(store: SqliteStore, end: int, repeat: int) -> dict[str, Any]:
    app = create_app(store, token=None, agent_status=None, clock_ns=lambda: end)
    client = app.test_client()
    request_s: list[float] = []
    body = b""
    for i in range(repeat):
        # A range 1 ms longer each time: the UI's profile cache never hits.
        url = f"/api/flame?from={T0_NS // MS}&to={end // MS + i}"
        t0 = time.perf_counter()
        response = client.get(url)
        body = response.get_data()
        request_s.append(time.perf_counter() - t0)
        assert response.status_code == 200, body[:300]
    payload = json.loads(body)

    query_s: list[float] = []
    view_s: list[float] = []
    profile = store.query(T0_NS, end)
    for _ in range(repeat):
        t0 = time.perf_counter()
        profile = store.query(T0_NS, end)
        t1 = time.perf_counter()
        json.dumps(flame.flamegraph(stacks.from_profile(profile)))
        t2 = time.perf_counter()
        query_s.append(t1 - t0)
        view_s.append(t2 - t1)
    full = flame.build(stacks.from_profile(profile))
    return {
        "samples": profile.total_samples,
        "distinct_stacks": len(profile.stacks) - 1,
        "flame_nodes_before_limit": len(full),
        "flame_nodes": payload["nodes"],
        "flame_json_bytes": len(body),
        "flame_request_s": round(statistics.median(request_s), 4),
        "store_query_s": round(statistics.median(query_s), 4),
        "tree_and_json_s": round(statistics.median(view_s), 4),
    }


def _browser(store: SqliteStore, end: int, repeat: int) -> dict[str, Any]:
    if not CHROMIUM.exists():
        return {"page_draw_s": None, "page_note": f"{CHROMIUM} missing"}
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    app = create_app(store, token=None, agent_status=None, clock_ns=lambda: end)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    draw: list[float] = []
    fetch: list[float] = []
    drawn = nodes = 0
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = b.new_page(viewport={"width": 1600, "height": 1000})
            url = f"http://127.0.0.1:{server.server_port}/?from={T0_NS // MS}&to={end // MS}"
            for _ in range(repeat + 1):  # the first load warms caches and the JIT
                page.goto(url)
                page.wait_for_selector("body[data-flame-state=ready]", timeout=60_000)
                timing = page.evaluate("window.kilnTiming")
                draw.append(timing["renderMs"] / 1000)
                fetch.append(timing["fetchMs"] / 1000)
                nodes = int(timing["nodes"])
                drawn = int(page.evaluate("document.querySelectorAll('#flame g.frame').length"))
            every = [page.evaluate(_DRAW_EVERY_FRAME) for _ in range(repeat)]
            b.close()
    finally:
        server.shutdown()
        server.server_close()
    return {
        "page_draw_s": round(statistics.median(draw[1:]), 4),
        "page_fetch_s": round(statistics.median(fetch[1:]), 4),
        "page_nodes": nodes,
        "page_frames_drawn": drawn,
        "every_frame_draw_s": round(statistics.median(e["ms"] for e in every) / 1000, 4),
        "every_frame_frames": every[0]["frames"],
    }


# The page leaves out frames narrower than a pixel; this draws the same tree
# with every frame in the SVG, as a worst case (same library, same page).
_DRAW_EVERY_FRAME = """async () => {
  const q = new URLSearchParams(location.search);
  const data = await (await fetch("/api/flame?" + q.toString())).json();
  const box = document.createElement("div");
  document.body.appendChild(box);
  const t0 = performance.now();
  const chart = flamegraph.default().width(1560).minFrameSize(0).transitionDuration(0);
  d3.select(box).datum(data.tree).call(chart);
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const ms = performance.now() - t0;
  const frames = box.querySelectorAll("g.frame").length;
  chart.destroy();
  box.remove();
  return { ms, frames };
}"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--windows", type=int, default=360, help="10 s windows (360 = 1 h)")
    ap.add_argument("--no-browser", action="store_true", help="server-side figures only")
    args = ap.parse_args(argv)
    print(json.dumps(measure(windows=args.windows, browser=not args.no_browser), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
