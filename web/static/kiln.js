// Kiln profile explorer. Everything from a profile (function names, label
// values) reaches the DOM through textContent, d3's .text() or attribute
// setters; nothing here parses HTML. The CSP forbids inline script, so this
// file is the whole page logic.
(function () {
  "use strict";

  const ALL_KINDS = ["kernel", "native", "python"];
  const FILTER_KEYS = ["pid", "tid", "comm", "exe", "container"];
  const LIVE_POLL_MS = 5000;
  const HIGHLIGHT = "#e600e6";
  const TRANSITION_MS = 250;

  // ---- state, mirrored in the page URL so a view can be shared ----------

  const state = {
    from: "now-1h",
    to: "now",
    preset: "1h",
    live: false,
    filters: { pid: "", tid: "", comm: "", exe: "", container: "" },
    kinds: ALL_KINDS.slice(),
    collapse: false,
    icicle: false,
    tab: "flame",
    search: "",
    fn: null, // {name, kind}: the function of the sandwich view
    topSort: "self",
    topOrder: "desc",
    topSearch: "",
    diffMode: "previous",
    baseFrom: "",
    baseTo: "",
    basePid: "",
    zoomPath: [], // [{name, kind}] from the root, restored after a refresh
  };
  // The range every request of one refresh uses, resolved by the server to
  // epoch ms, so "now-1h" means one instant for all of them.
  let resolved = null;

  function readUrl() {
    const q = new URLSearchParams(location.search);
    const get = (k, d) => (q.has(k) ? q.get(k) : d);
    state.from = get("from", state.from);
    state.to = get("to", state.to);
    state.preset = get("preset", q.has("from") ? "custom" : state.preset);
    state.live = get("live", "0") === "1";
    for (const k of FILTER_KEYS) state.filters[k] = get(k, "");
    if (q.has("kinds")) state.kinds = q.get("kinds").split(",").filter((k) => ALL_KINDS.includes(k));
    state.collapse = get("collapse", "0") === "1";
    state.icicle = get("icicle", "0") === "1";
    const tab = get("tab", "flame");
    state.tab = ["flame", "top", "sandwich", "diff"].includes(tab) ? tab : "flame";
    state.search = get("q", "");
    if (q.get("fn")) state.fn = { name: q.get("fn"), kind: get("fnkind", "") };
    state.diffMode = get("diff", "previous");
    state.baseFrom = get("base_from", "");
    state.baseTo = get("base_to", "");
    state.basePid = get("base_pid", "");
  }

  function writeUrl() {
    const q = new URLSearchParams();
    q.set("from", String(state.from));
    q.set("to", String(state.to));
    if (state.preset !== "custom") q.set("preset", state.preset);
    if (state.live) q.set("live", "1");
    for (const k of FILTER_KEYS) if (state.filters[k]) q.set(k, state.filters[k]);
    if (state.kinds.length !== ALL_KINDS.length) q.set("kinds", state.kinds.join(","));
    if (state.collapse) q.set("collapse", "1");
    if (state.icicle) q.set("icicle", "1");
    if (state.tab !== "flame") q.set("tab", state.tab);
    if (state.search) q.set("q", state.search);
    if (state.fn) {
      q.set("fn", state.fn.name);
      if (state.fn.kind) q.set("fnkind", state.fn.kind);
    }
    if (state.tab === "diff") {
      q.set("diff", state.diffMode);
      if (state.baseFrom) q.set("base_from", state.baseFrom);
      if (state.baseTo) q.set("base_to", state.baseTo);
      if (state.basePid) q.set("base_pid", state.basePid);
    }
    history.replaceState(null, "", "?" + q.toString());
  }

  // The query of the current view, for the API and the download links.
  function viewParams(extra) {
    const q = new URLSearchParams();
    q.set("from", resolved ? String(resolved.from) : String(state.from));
    q.set("to", resolved ? String(resolved.to) : String(state.to));
    for (const k of FILTER_KEYS) {
      const v = state.filters[k].trim();
      if (!v) continue;
      if (k === "pid" || k === "tid") q.set(k, v.replace(/\s+/g, ""));
      else q.set(k, v);
    }
    q.set("kinds", state.kinds.join(","));
    if (state.collapse) q.set("collapse", "1");
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q;
  }

  // ---- small DOM helpers (text only) ------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  const fmtInt = d3.format(",d");
  const fmtPct = (x) => (x >= 10 ? x.toFixed(1) : x >= 1 ? x.toFixed(2) : x.toFixed(3)) + "%";

  function setStatus(name, value) {
    document.body.dataset[name] = value;
  }

  function banner(text, kind) {
    const b = $("banner");
    if (!text) {
      b.hidden = true;
      b.textContent = "";
      return;
    }
    b.className = "banner " + (kind || "error");
    b.textContent = text;
    b.hidden = false;
  }

  // ---- API --------------------------------------------------------------

  class ApiError extends Error {}

  async function api(path, params) {
    const url = path + (params ? "?" + params.toString() : "");
    let response;
    try {
      response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    } catch (e) {
      throw new ApiError("Kiln does not answer (" + e.message + "). Is the agent running?");
    }
    if (response.status === 401) {
      location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
      throw new ApiError("login required");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      throw new ApiError("Kiln answered " + response.status + " without JSON");
    }
    if (!response.ok) throw new ApiError(body && body.error ? body.error : "HTTP " + response.status);
    return body;
  }

  // ---- colors -----------------------------------------------------------

  function nameHash(name) {
    let h = 0;
    for (let i = 0; i < name.length && i < 24; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
    return (h % 1000) / 1000;
  }

  function kindColor(d) {
    const kind = d.data.kind;
    const v = nameHash(d.data.name || "");
    if (kind === "root") return "rgb(200, 200, 200)";
    if (kind === "other") return "rgb(215, 215, 215)";
    if (kind === "kernel") return d3.hsl(30 + 10 * v, 0.85, 0.55 + 0.1 * v).formatRgb();
    if (kind === "python") return d3.hsl(140 + 40 * v, 0.45, 0.55 + 0.1 * v).formatRgb();
    return d3.hsl(5 + 25 * v, 0.75, 0.58 + 0.1 * v).formatRgb();
  }

  // Red for a larger share in the comparison, blue for a smaller one,
  // saturated in proportion to the largest change in the view.
  function diffColor(maxAbs) {
    return (d) => {
      if (d.data.kind === "root") return "rgb(200, 200, 200)";
      const delta = d.data.delta || 0;
      const t = maxAbs > 0 ? Math.min(1, Math.abs(delta) / maxAbs) : 0;
      if (Math.abs(delta) < 1e-9) return "rgb(225, 225, 225)";
      const strength = 0.15 + 0.85 * t;
      const fade = (full) => Math.round(225 + (full - 225) * strength);
      return delta > 0
        ? `rgb(${fade(220)}, ${fade(40)}, ${fade(40)})`
        : `rgb(${fade(40)}, ${fade(90)}, ${fade(220)})`;
    };
  }

  // ---- tooltip ----------------------------------------------------------

  const tipEl = $("tooltip");
  let tipLines = null; // function (d) -> [lines], set per chart

  // d3-flame-graph calls tooltip(svg) once and tooltip.show/hide after.
  function makeTooltip(lines) {
    function tip() {}
    tip.show = function (event, d) {
      clear(tipEl);
      const rows = lines(d);
      rows.forEach((text, i) => tipEl.appendChild(el("div", text, i === 0 ? "tip-name" : "")));
      tipEl.hidden = false;
      const pad = 12;
      let x = event.clientX + pad;
      let y = event.clientY + pad;
      const r = tipEl.getBoundingClientRect();
      if (x + r.width > window.innerWidth) x = Math.max(0, event.clientX - r.width - pad);
      if (y + r.height > window.innerHeight) y = Math.max(0, event.clientY - r.height - pad);
      tipEl.style.left = x + "px";
      tipEl.style.top = y + "px";
      return tip;
    };
    tip.hide = function () {
      tipEl.hidden = true;
      return tip;
    };
    tip.destroy = function () {};
    return tip;
  }

  function flameLines(total) {
    return (d) => {
      const data = d.data;
      const pct = (n) => (total > 0 ? fmtPct((100 * n) / total) : "-");
      if (data.kind === "root") return [data.name, "all samples: " + fmtInt(data.value)];
      const out = [data.name, "kind: " + data.kind];
      out.push("total: " + fmtInt(data.value) + " samples (" + pct(data.value) + ")");
      out.push("self: " + fmtInt(data.self) + " samples (" + pct(data.self) + ")");
      return out;
    };
  }

  function diffLines(d) {
    const x = d.data;
    const pp = (v) => (v >= 0 ? "+" : "") + (100 * v).toFixed(2) + " points";
    return [
      x.name,
      "kind: " + x.kind,
      "baseline: " + fmtInt(x.base) + " samples (" + fmtPct(100 * x.base_share) + ")",
      "comparison: " + fmtInt(x.comp) + " samples (" + fmtPct(100 * x.comp_share) + ")",
      "change: " + pp(x.delta) + " (self " + pp(x.self_delta) + ")",
    ];
  }

  // ---- flamegraphs ------------------------------------------------------

  function chartWidth(container) {
    return Math.max(300, container.clientWidth || container.parentNode.clientWidth || 960);
  }

  function newChart(container, opts) {
    const chart = flamegraph.default()
      .width(chartWidth(container))
      .cellHeight(18)
      .transitionDuration(TRANSITION_MS)
      .minFrameSize(1) // frames under a pixel are not drawn (their parents still are)
      .resetHeightOnZoom(true)
      .inverted(!!opts.inverted)
      .sort(false) // the server orders children by name
      .tooltip(makeTooltip(opts.lines))
      .getName((d) => d.data.name)
      .setSearchMatch((d, term) => !!term && d.data.name.toLowerCase().includes(term.toLowerCase()))
      .setColorMapper((d) => (d.highlight ? HIGHLIGHT : opts.color(d)));
    if (opts.onClick) chart.onClick(opts.onClick);
    if (opts.onSearch) chart.setSearchHandler(opts.onSearch);
    chart.setDetailsHandler(() => {});
    return chart;
  }

  function draw(container, chart, tree) {
    const sel = d3.select(container);
    if (sel.select("svg").empty()) sel.datum(tree).call(chart);
    else chart.update(tree);
  }

  function afterPaint() {
    return new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  }

  // d3-flame-graph animates widths and sets labels after its transition;
  // the page reports "ready" once that is over, so what it shows is final.
  function settled() {
    return new Promise((resolve) => setTimeout(resolve, 2 * TRANSITION_MS + 50));
  }

  const main = {
    chart: null,
    total: 0,
  };

  function rootNode(container) {
    return d3.select(container).datum();
  }

  function setBreadcrumbs(node) {
    const nav = $("breadcrumbs");
    clear(nav);
    const path = node ? node.ancestors().reverse() : [];
    path.forEach((n, i) => {
      if (i > 0) nav.appendChild(el("span", "›", "sep"));
      const b = el("button", n.data.name);
      b.type = "button";
      b.addEventListener("click", () => main.chart.zoomTo(n));
      nav.appendChild(b);
    });
  }

  function selectFunction(name, kind) {
    if (!name) {
      state.fn = null;
      $("selected").textContent = "";
      $("to-sandwich").hidden = true;
      return;
    }
    state.fn = { name: name, kind: kind || "" };
    $("selected").textContent = "selected: " + name;
    $("to-sandwich").hidden = false;
  }

  function onFlameClick(d) {
    setBreadcrumbs(d);
    state.zoomPath = d.ancestors().reverse().slice(1).map((n) => ({ name: n.data.name, kind: n.data.kind }));
    if (d.data.kind !== "root" && d.data.kind !== "other") selectFunction(d.data.name, d.data.kind);
    writeUrl();
  }

  function onSearch(results, sum, total) {
    const m = $("matched");
    if (!state.search) {
      m.textContent = "";
      return;
    }
    const pct = total > 0 ? (100 * sum) / total : 0;
    m.textContent = "matched: " + fmtPct(pct) + " (" + fmtInt(sum) + " of " + fmtInt(total) + " samples)";
  }

  function restoreZoom() {
    const root = rootNode($("flame"));
    let node = root;
    for (const step of state.zoomPath) {
      const next = (node.children || []).find((c) => c.data.name === step.name && c.data.kind === step.kind);
      if (!next) break;
      node = next;
    }
    if (node !== root) main.chart.zoomTo(node);
    else setBreadcrumbs(root);
  }

  async function loadFlame() {
    setStatus("flameState", "loading");
    const t0 = performance.now();
    const data = await api("/api/flame", viewParams());
    const t1 = performance.now();
    const container = $("flame");
    main.total = data.total;
    if (!main.chart) {
      main.chart = newChart(container, {
        inverted: state.icicle,
        lines: flameLines(0),
        color: kindColor,
        onClick: onFlameClick,
        onSearch: onSearch,
      });
    }
    main.chart.tooltip(makeTooltip(flameLines(data.total)));
    main.chart.inverted(state.icicle);
    draw(container, main.chart, data.tree);
    restoreZoom();
    if (state.search) main.chart.search(state.search);
    const info = [];
    info.push(fmtInt(data.total) + " samples, " + fmtInt(data.nodes) + " frames");
    if (data.truncated) info.push(fmtInt(data.dropped_nodes) + " small frames merged into (other)");
    $("flame-info").textContent = data.message || info.join("; ");
    if (data.message) banner(data.message, "info");
    await afterPaint();
    const t2 = performance.now();
    window.kilnTiming = { fetchMs: t1 - t0, renderMs: t2 - t1, nodes: data.nodes };
    await settled();
    setStatus("flameState", data.total > 0 ? "ready" : "empty");
    return data;
  }

  // ---- timeline ---------------------------------------------------------

  async function loadTimeline() {
    setStatus("timelineState", "loading");
    const params = viewParams();
    // The timeline resolves the range for the other requests of this refresh.
    params.set("from", String(state.from));
    params.set("to", String(state.to));
    const data = await api("/api/timeline", params);
    resolved = data.range;
    drawTimeline(data);
    const total = data.points.reduce((s, p) => s + p.samples, 0);
    $("timeline-info").textContent =
      new Date(data.range.from).toISOString().replace("T", " ").slice(0, 19) + " to " +
      new Date(data.range.to).toISOString().replace("T", " ").slice(0, 19) + " UTC · " +
      fmtInt(total) + " samples · one bar per " + (data.step_ms / 1000) + " s · drag to zoom in";
    setStatus("timelineState", "ready");
    return data;
  }

  function drawTimeline(data) {
    const box = $("timeline");
    clear(box);
    const w = Math.max(300, box.clientWidth || 960);
    const h = 96;
    const m = { l: 48, r: 8, t: 16, b: 18 };
    const x = d3.scaleUtc().domain([data.range.from, data.range.to]).range([m.l, w - m.r]);
    const maxRate = d3.max(data.points, (p) => p.rate) || 1;
    const y = d3.scaleLinear().domain([0, maxRate]).nice().range([h - m.b, m.t]);
    const svg = d3.select(box).append("svg").attr("width", w).attr("height", h);
    const points = data.points.concat(
      data.points.length ? [{ t: data.points[data.points.length - 1].t + data.step_ms, rate: 0 }] : []
    );
    const area = d3.area()
      .curve(d3.curveStepAfter)
      .x((p) => x(Math.min(Math.max(p.t, data.range.from), data.range.to)))
      .y0(y(0))
      .y1((p) => y(p.rate));
    svg.append("path").datum(points).attr("class", "area").attr("d", area);
    svg.append("g").attr("class", "axis").attr("transform", `translate(0,${h - m.b})`)
      .call(d3.axisBottom(x).ticks(Math.max(2, Math.floor(w / 110))));
    svg.append("g").attr("class", "axis").attr("transform", `translate(${m.l},0)`)
      .call(d3.axisLeft(y).ticks(3).tickFormat(d3.format("~s")));
    svg.append("text").attr("class", "axis-label").attr("x", m.l + 6).attr("y", 11).text("samples/s");
    const brush = d3.brushX()
      .extent([[m.l, m.t], [w - m.r, h - m.b]])
      .on("end", (event) => {
        if (!event.selection || !event.sourceEvent) return;
        const [a, b] = event.selection.map((px) => Math.round(+x.invert(px)));
        if (b - a < 1000) return;
        state.from = a;
        state.to = b;
        state.preset = "custom";
        state.live = false;
        syncControls();
        refresh();
      });
    svg.append("g").attr("class", "brush").call(brush);
  }

  // ---- top table --------------------------------------------------------

  async function loadTop() {
    setStatus("topState", "loading");
    const data = await api("/api/top", viewParams({
      sort: state.topSort, order: state.topOrder, limit: "500", q: state.topSearch,
    }));
    const body = $("top-table").querySelector("tbody");
    clear(body);
    for (const r of data.rows) {
      const tr = document.createElement("tr");
      tr.appendChild(el("td", r.name, "name"));
      tr.appendChild(el("td", r.kind));
      tr.appendChild(el("td", fmtInt(r.self), "num"));
      tr.appendChild(el("td", fmtPct(r.self_pct), "num"));
      tr.appendChild(el("td", fmtInt(r.total), "num"));
      tr.appendChild(el("td", fmtPct(r.total_pct), "num"));
      tr.addEventListener("click", () => {
        selectFunction(r.name, r.kind);
        showTab("sandwich");
      });
      body.appendChild(tr);
    }
    for (const b of document.querySelectorAll("#top-table th button")) {
      b.setAttribute("aria-sort", b.dataset.sort === state.topSort
        ? (state.topOrder === "desc" ? "descending" : "ascending") : "none");
    }
    $("top-info").textContent = data.message ||
      "showing " + fmtInt(data.rows.length) + " of " + fmtInt(data.functions) + " functions, " +
      fmtInt(data.total) + " samples";
    setStatus("topState", data.rows.length ? "ready" : "empty");
  }

  // ---- sandwich ---------------------------------------------------------

  const sandwichCharts = { callers: null, callees: null };

  async function loadSandwich() {
    const title = $("sandwich-title");
    if (!state.fn) {
      title.textContent = "Click a frame in the flamegraph or a row of the table to choose a function.";
      setStatus("sandwichState", "empty");
      return;
    }
    setStatus("sandwichState", "loading");
    const extra = { function: state.fn.name };
    if (state.fn.kind && ALL_KINDS.includes(state.fn.kind)) extra.kind = state.fn.kind;
    const data = await api("/api/sandwich", viewParams(extra));
    const pct = (n) => (data.all_samples ? fmtPct((100 * n) / data.all_samples) : "-");
    title.textContent = data.message || (state.fn.name + " — total " + fmtInt(data.total) +
      " samples (" + pct(data.total) + "), self " + fmtInt(data.self) + " (" + pct(data.self) + ")");
    for (const [key, id, inverted] of [["callers", "sandwich-callers", false], ["callees", "sandwich-callees", true]]) {
      const container = $(id);
      if (!sandwichCharts[key]) {
        sandwichCharts[key] = newChart(container, { inverted: inverted, lines: flameLines(0), color: kindColor });
      }
      sandwichCharts[key].tooltip(makeTooltip(flameLines(data.all_samples)));
      draw(container, sandwichCharts[key], data[key]);
    }
    await settled();
    setStatus("sandwichState", data.found ? "ready" : "empty");
  }

  // ---- diff -------------------------------------------------------------

  let diffChart = null;

  async function loadDiff() {
    setStatus("diffState", "loading");
    const extra = {};
    if (state.diffMode === "previous" && resolved) {
      const span = resolved.to - resolved.from;
      extra.base_from = String(resolved.from - span);
      extra.base_to = String(resolved.from);
    } else if (state.diffMode === "range") {
      if (state.baseFrom) extra.base_from = state.baseFrom;
      if (state.baseTo) extra.base_to = state.baseTo;
    } else if (state.diffMode === "pid") {
      extra.base_pid = state.basePid;
    }
    const data = await api("/api/diff", viewParams(extra));
    const container = $("diff-flame");
    if (diffChart) {
      diffChart.destroy();
      clear(container);
    }
    diffChart = newChart(container, { lines: diffLines, color: diffColor(data.max_abs_delta) });
    diffChart.inverted(state.icicle);
    draw(container, diffChart, data.tree);
    const b = data.baseline.range;
    $("diff-info").textContent = (data.message ? data.message + " " : "") +
      "Baseline " + fmtInt(data.baseline_total) + " samples (" + new Date(b.from).toISOString() +
      " to " + new Date(b.to).toISOString() + (data.baseline.filters.pid.length ? ", pid " +
      data.baseline.filters.pid.join(",") : "") + ") vs comparison " + fmtInt(data.comparison_total) + " samples.";
    await settled();
    setStatus("diffState", data.baseline_total && data.comparison_total ? "ready" : "empty");
  }

  // ---- labels for the filter inputs --------------------------------------

  async function loadLabels() {
    for (const key of FILTER_KEYS) {
      const q = new URLSearchParams({ from: String(resolved.from), to: String(resolved.to), limit: "100" });
      let data;
      try {
        data = await api("/api/labels/" + key, q);
      } catch (e) {
        return; // suggestions only; the views report errors
      }
      const list = $("dl-" + key);
      clear(list);
      for (const v of data.values) {
        const o = document.createElement("option");
        o.value = v.value;
        o.label = fmtInt(v.samples) + " samples";
        list.appendChild(o);
      }
    }
  }

  // ---- controls ---------------------------------------------------------

  function syncControls() {
    $("from").value = String(state.from);
    $("to").value = String(state.to);
    $("preset").value = state.preset;
    $("live").checked = state.live;
    for (const k of FILTER_KEYS) $("f-" + k).value = state.filters[k];
    for (const box of document.querySelectorAll('input[name="kind"]')) box.checked = state.kinds.includes(box.value);
    $("collapse").checked = state.collapse;
    $("icicle").checked = state.icicle;
    $("search").value = state.search;
    $("top-search").value = state.topSearch;
    for (const r of document.querySelectorAll('input[name="diff-mode"]')) r.checked = r.value === state.diffMode;
    $("base-from").value = state.baseFrom;
    $("base-to").value = state.baseTo;
    $("base-pid").value = state.basePid;
  }

  function readControls() {
    const preset = $("preset").value;
    const from = $("from").value.trim();
    const to = $("to").value.trim();
    if (preset !== "custom" && from === "now-" + preset && to === "now") {
      state.preset = preset;
    } else if (from !== String(state.from) || to !== String(state.to)) {
      state.preset = "custom";
    }
    state.from = /^\d+$/.test(from) ? Number(from) : from || "now-1h";
    state.to = /^\d+$/.test(to) ? Number(to) : to || "now";
    state.live = $("live").checked;
    for (const k of FILTER_KEYS) state.filters[k] = $("f-" + k).value.trim();
    state.kinds = Array.from(document.querySelectorAll('input[name="kind"]:checked')).map((b) => b.value);
    state.collapse = $("collapse").checked;
  }

  function applyPreset(preset) {
    state.preset = preset;
    if (preset !== "custom") {
      state.from = "now-" + preset;
      state.to = "now";
    }
  }

  function showTab(tab) {
    state.tab = tab;
    for (const b of document.querySelectorAll('[role="tab"]')) {
      b.setAttribute("aria-selected", String(b.dataset.tab === tab));
    }
    for (const t of ["flame", "top", "sandwich", "diff"]) $("tab-" + t).hidden = t !== tab;
    writeUrl();
    if (resolved) loadTab().catch(report);
  }

  function loadTab() {
    if (state.tab === "top") return loadTop();
    if (state.tab === "sandwich") return loadSandwich();
    if (state.tab === "diff") return loadDiff();
    return loadFlame();
  }

  function updateDownloads() {
    const q = viewParams();
    $("dl-pprof").setAttribute("href", "/download/pprof?" + q.toString());
    $("dl-folded").setAttribute("href", "/download/folded?" + q.toString());
    $("dl-otlp").setAttribute("href", "/download/otlp?" + q.toString());
  }

  function report(e) {
    for (const key of ["flameState", "topState", "sandwichState", "diffState", "timelineState"]) {
      if (document.body.dataset[key] === "loading") setStatus(key, "error");
    }
    banner(e instanceof ApiError ? e.message : "Unexpected problem in the page: " + e.message, "error");
  }

  let inFlight = null;
  let labelsLoadedFor = "";

  async function refreshOnce() {
    writeUrl();
    banner("");
    await loadTimeline();
    updateDownloads();
    await loadTab();
    // Label suggestions follow the range, but need not refresh every poll.
    const key = state.preset + "|" + (state.preset === "custom" ? resolved.from + "-" + resolved.to : "");
    if (key !== labelsLoadedFor) {
      labelsLoadedFor = key;
      loadLabels();
    }
  }

  // One refresh at a time; a change made meanwhile runs one more after it,
  // so it is never lost and polls never pile up.
  let again = false;

  function refresh() {
    if (inFlight) {
      again = true;
      return inFlight;
    }
    inFlight = refreshOnce()
      .catch(report)
      .finally(() => {
        inFlight = null;
        if (again) {
          again = false;
          refresh();
        }
      });
    return inFlight;
  }

  function bind() {
    $("controls").addEventListener("submit", (e) => {
      e.preventDefault();
      readControls();
      refresh();
    });
    $("preset").addEventListener("change", () => {
      applyPreset($("preset").value);
      syncControls();
      refresh();
    });
    $("live").addEventListener("change", () => {
      state.live = $("live").checked;
      if (state.live && state.preset === "custom") applyPreset("15m");
      syncControls();
      refresh();
    });
    for (const box of document.querySelectorAll('input[name="kind"], #collapse')) {
      box.addEventListener("change", () => {
        readControls();
        refresh();
      });
    }
    for (const b of document.querySelectorAll('[role="tab"]')) {
      b.addEventListener("click", () => showTab(b.dataset.tab));
    }
    let searchTimer = null;
    $("search").addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        state.search = $("search").value.trim();
        writeUrl();
        if (!main.chart) return;
        if (state.search) main.chart.search(state.search);
        else {
          main.chart.clear();
          onSearch([], 0, 0);
        }
      }, 150);
    });
    $("icicle").addEventListener("change", () => {
      state.icicle = $("icicle").checked;
      writeUrl();
      if (main.chart) {
        main.chart.inverted(state.icicle);
        main.chart.update();
      }
      if (diffChart) {
        diffChart.inverted(state.icicle);
        diffChart.update();
      }
    });
    $("reset-zoom").addEventListener("click", () => {
      if (main.chart) main.chart.resetZoom();
    });
    $("to-sandwich").addEventListener("click", () => showTab("sandwich"));
    for (const b of document.querySelectorAll("#top-table th button")) {
      b.addEventListener("click", () => {
        if (state.topSort === b.dataset.sort) state.topOrder = state.topOrder === "desc" ? "asc" : "desc";
        else {
          state.topSort = b.dataset.sort;
          state.topOrder = b.dataset.sort === "name" ? "asc" : "desc";
        }
        loadTop().catch(report);
      });
    }
    let topTimer = null;
    $("top-search").addEventListener("input", () => {
      clearTimeout(topTimer);
      topTimer = setTimeout(() => {
        state.topSearch = $("top-search").value.trim();
        loadTop().catch(report);
      }, 200);
    });
    $("diff-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const mode = document.querySelector('input[name="diff-mode"]:checked');
      state.diffMode = mode ? mode.value : "previous";
      state.baseFrom = $("base-from").value.trim();
      state.baseTo = $("base-to").value.trim();
      state.basePid = $("base-pid").value.trim();
      writeUrl();
      loadDiff().catch(report);
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        for (const [chart, id] of [[main.chart, "flame"], [diffChart, "diff-flame"],
          [sandwichCharts.callers, "sandwich-callers"], [sandwichCharts.callees, "sandwich-callees"]]) {
          if (chart) chart.width(chartWidth($(id))).update();
        }
      }, 200);
    });
    setInterval(() => {
      if (state.live && !document.hidden) refresh();
    }, LIVE_POLL_MS);
  }

  readUrl();
  if (state.preset !== "custom" && !new URLSearchParams(location.search).has("from")) applyPreset(state.preset);
  if (state.fn) selectFunction(state.fn.name, state.fn.kind);
  syncControls();
  bind();
  showTab(state.tab);
  refresh();
})();
