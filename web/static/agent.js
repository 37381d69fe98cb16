// Kiln agent page: polls /api/agent and shows it, as text only.
(function () {
  "use strict";

  const POLL_MS = 5000;
  const $ = (id) => document.getElementById(id);
  const KNOWN = new Set([
    "version", "uptime_seconds", "frequency_hz", "samples_per_second", "samples_total",
    "lost_samples", "cpu_percent", "rss_bytes", "windows_written", "exporters", "remote_control", "error",
  ]);

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function fmtNumber(v, digits) {
    if (typeof v !== "number") return v === undefined || v === null ? "–" : String(v);
    return v.toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 2 : digits });
  }

  function fmtBytes(n) {
    if (typeof n !== "number") return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function fmtTime(ms) {
    return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–";
  }

  function fmtDuration(s) {
    if (typeof s !== "number") return "–";
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m";
  }

  function fill(dl, rows) {
    clear(dl);
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.appendChild(dt);
      dl.appendChild(dd);
    }
  }

  function banner(text) {
    const b = $("banner");
    b.className = "banner error";
    b.textContent = text || "";
    b.hidden = !text;
  }

  function render(data) {
    const a = data.agent || {};
    const s = data.store || {};
    const problems = [];
    if (a.error) problems.push(a.error);
    if (s.error) problems.push("Store: " + s.error);
    if (s.write_errors) problems.push("The store could not write " + s.write_errors + " window(s): is the disk full?");
    banner(problems.join("\n"));
    fill($("agent-sampling"), [
      ["version", a.version || "–"],
      ["uptime", fmtDuration(a.uptime_seconds)],
      ["frequency", fmtNumber(a.frequency_hz) + " Hz"],
      ["samples/s", fmtNumber(a.samples_per_second, 1)],
      ["samples", fmtNumber(a.samples_total, 0)],
      ["own CPU", fmtNumber(a.cpu_percent) + " % of a core"],
      ["memory", fmtBytes(a.rss_bytes)],
      ["windows written", fmtNumber(a.windows_written, 0)],
    ]);
    const lost = a.lost_samples && typeof a.lost_samples === "object" ? Object.entries(a.lost_samples) : [];
    fill($("agent-lost"), lost.length ? lost.map(([k, v]) => [k, fmtNumber(v, 0)]) : [["none", "0"]]);
    fill($("agent-store"), s.error ? [["error", s.error]] : [
      ["path", s.path || "–"],
      ["size", fmtBytes(s.bytes_on_disk)],
      ["windows", fmtNumber(s.windows, 0)],
      ["samples", fmtNumber(s.samples, 0)],
      ["oldest", fmtTime(s.oldest_ms)],
      ["newest", fmtTime(s.newest_ms)],
      ["schema", fmtNumber(s.schema_version, 0)],
      ["write errors", fmtNumber(s.write_errors, 0)],
    ]);
    const rc = a.remote_control && typeof a.remote_control === "object" ? Object.entries(a.remote_control) : [];
    fill($("agent-remote"), rc.length ? rc.map(([k, v]) => [k, String(v)]) : [["state", "not configured"]]);
    const body = $("agent-exporters").querySelector("tbody");
    clear(body);
    for (const e of Array.isArray(a.exporters) ? a.exporters : []) {
      const tr = document.createElement("tr");
      for (const [v, cls] of [[e.name, ""], [e.state, ""], [fmtNumber(e.sent, 0), "num"],
        [fmtNumber(e.failed, 0), "num"], [e.last_error || "", ""]]) {
        const td = document.createElement("td");
        td.textContent = v === undefined ? "–" : String(v);
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    const other = Object.entries(a).filter(([k, v]) => !KNOWN.has(k) && (typeof v !== "object" || v === null));
    fill($("agent-other"), other.map(([k, v]) => [k, String(v)]));
    $("agent-updated").textContent = "updated " + fmtTime(data.now_ms) + ", every " + POLL_MS / 1000 + " s";
    document.body.dataset.agentState = "ready";
  }

  async function poll() {
    try {
      const r = await fetch("/api/agent", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (r.status === 401) {
        location.assign("/login?next=/agent");
        return;
      }
      const data = await r.json();
      if (!r.ok) throw new Error(data.error || "HTTP " + r.status);
      render(data);
    } catch (e) {
      banner("Cannot read the agent status: " + e.message);
      document.body.dataset.agentState = "error";
    }
  }

  poll();
  setInterval(() => {
    if (!document.hidden) poll();
  }, POLL_MS);
})();
