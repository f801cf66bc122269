'''The run page: one self-contained HTML document (no CDN, no fonts, no network) drawn by its
own JavaScript from a JSON "view document".

``render_page(view)`` embeds ``view`` (the static report); ``render_page(None, live_url=URL)``
makes a page that fetches ``URL`` about once a second and redraws (the live dashboard).

The view document (``version`` 1; every key optional unless said, so a live server may send
only what it knows; times are seconds, absolute ones since the epoch):

- ``version``: 1 (required). ``title``: heading text. ``generated_at``: when it was built.
- ``summary``: ``{"dag_id", "state": "running"|"finished"|"failed", "functions", "done",
  "failed", "running", "nodes", "workers", "attempts", "retries", "started_at",
  "finished_at", "wall", "bytes_moved", "transfers"}``.
- ``nodes``: ``[{"name", "workers": [slot, ...], "attempts", "busy"}]`` (busy: seconds of
  attempts run there), one row each in the page's node table.
- ``timeline``: ``{"start", "end", "binned": bool, "bins": int, "groups": [name, ...],
  "lanes": [{"node", "worker", "spans": [[t0, t1, group, ok], ...]} | {"node", "worker",
  "busy": [fraction, ...]}]}``; span times are seconds from ``start``, ``group`` indexes
  ``groups``, ``ok`` is 1 or 0; a binned lane gives, per bin of ``(end - start) / bins``
  seconds, the fraction of it the slot was busy (used past a few thousand attempts).
- ``groups``: ``[{"name", "total", "done", "failed", "running", "seconds"}]``.
- ``graph``: ``{"collapsed": bool, "functions": int, "nodes": [{"id", "label", "group",
  "count", "pin", "cost", "state": "done"|"failed"|"running"|"pending"}], "edges":
  [[from, to, count], ...]}``; ``from``/``to`` index ``nodes``; a collapsed graph has one
  node per group (``count`` functions) and edges counted between groups.
- ``slowest``: ``[{"function_id", "group", "node", "worker", "attempt", "seconds",
  "fetch_seconds", "bytes_in", "bytes_out"}]``, slowest first.
- ``transfers``: ``[{"source", "target", "count", "bytes"}]``, per pair of nodes.
- ``failures``: ``[{"function_id", "node", "worker", "attempt", "exc_type", "message",
  "traceback", "final": bool}]``; ``failures_total``: how many there were in all.
- ``cluster``: ``[{"name", "state", "address", "capacity": {}, "used": {}, "running",
  "queued"}]`` (the dashboard's view of the members).
- ``runs``: ``[{"dag_id", "state", "done", "total"}]`` (the dashboard's runs in flight).
'''

from __future__ import annotations

import json
from typing import Any

__all__ = ["render_page", "VIEW_VERSION"]

VIEW_VERSION = 1


def render_page(view: dict[str, Any] | None, live_url: str | None = None,
                refresh_seconds: float = 1.0) -> str:
    """The page as HTML text: ``view`` embedded, or fetched from ``live_url`` and redrawn."""
    if view is None and live_url is None:
        raise ValueError("render_page needs a view document or a live_url to fetch one from")
    if refresh_seconds <= 0:
        raise ValueError(f"refresh_seconds must be positive, got {refresh_seconds!r}")
    title = "Handoff run"
    if view is not None:
        title = str(view.get("title") or title)
    config = {"live": live_url, "refresh": refresh_seconds}
    return (_PAGE.replace("__TITLE__", _escape_html(title))
            .replace("__CONFIG__", _script_json(config))
            .replace("__VIEW__", _script_json(view)))


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' can end or confuse it."""
    text = json.dumps(value, ensure_ascii=True, allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _escape_html(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
:root { --fg:#1d2330; --muted:#5f6b7a; --line:#d9dee6; --bg:#f6f7f9; --card:#fff;
        --ok:#2f9e6b; --bad:#d64545; --run:#3b7dd8; --pend:#aab3c0; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--fg); background:var(--bg); }
header { padding:14px 22px; background:#1d2330; color:#fff; display:flex; gap:14px; align-items:baseline; flex-wrap:wrap; }
header h1 { font-size:18px; margin:0; font-weight:600; }
header .state { font-size:12px; padding:2px 8px; border-radius:10px; background:#3b4456; }
header .state.finished { background:var(--ok); } header .state.failed { background:var(--bad); }
header .state.running { background:var(--run); }
header .live { font-size:12px; color:#b8c2d3; margin-left:auto; }
main { padding:16px 22px 40px; max-width:1400px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 16px; margin:0 0 16px; }
section h2 { font-size:15px; margin:0 0 10px; }
.cards { display:flex; flex-wrap:wrap; gap:10px; }
.card { min-width:120px; padding:8px 12px; border:1px solid var(--line); border-radius:6px; background:var(--bg); }
.card .v { font-size:20px; font-weight:600; } .card .k { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; width:100%; font-variant-numeric: tabular-nums; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:500; font-size:12px; }
td.n, th.n { text-align:right; }
.bar { height:8px; background:var(--line); border-radius:4px; overflow:hidden; min-width:80px; display:flex; }
.bar span { display:block; height:100%; }
.scroll { overflow:auto; max-height:560px; border:1px solid var(--line); border-radius:6px; }
canvas { display:block; }
#tip { position:fixed; pointer-events:none; background:#1d2330; color:#fff; font-size:12px; padding:4px 8px; border-radius:4px; display:none; z-index:10; max-width:420px; }
details.failure { border-left:3px solid var(--bad); padding:4px 10px; margin:6px 0; background:#fdf3f3; }
details.failure summary { cursor:pointer; }
pre { white-space:pre-wrap; font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; margin:6px 0; }
.muted { color:var(--muted); }
svg text { font: 11px system-ui, sans-serif; }
.legend span { display:inline-block; margin-right:12px; font-size:12px; }
.legend i { display:inline-block; width:10px; height:10px; margin-right:4px; border-radius:2px; vertical-align:middle; }
</style>
</head>
<body>
<header><h1 id="title">__TITLE__</h1><span id="state" class="state"></span><span id="live" class="live"></span></header>
<main id="main"><p class="muted">Loading...</p></main>
<div id="tip"></div>
<script id="config" type="application/json">__CONFIG__</script>
<script id="view" type="application/json">__VIEW__</script>
<script>
"use strict";
(function () {
  const config = JSON.parse(document.getElementById("config").textContent);
  const embedded = JSON.parse(document.getElementById("view").textContent);
  const tip = document.getElementById("tip");

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    if (attrs) for (const k in attrs) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    }
    if (children) for (const c of children) if (c) e.appendChild(c);
    return e;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function num(x) { return (x === undefined || x === null) ? "-" : Number(x).toLocaleString("en-US"); }
  function secs(x) {
    if (x === undefined || x === null) return "-";
    if (x === 0) return "0 s";
    if (x < 0.001) return (x * 1e6).toFixed(0) + " us";
    if (x < 1) return (x * 1000).toFixed(1) + " ms";
    if (x < 120) return x.toFixed(2) + " s";
    return (x / 60).toFixed(1) + " min";
  }
  function bytes(x) {
    if (x === undefined || x === null) return "-";
    const u = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
    while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
    return (i ? x.toFixed(1) : String(x)) + " " + u[i];
  }
  function hue(name) {
    let h = 0; const s = String(name);
    for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) >>> 0;
    return 35 + h % 290;  // keeps clear of red, which marks failures
  }
  // well-separated colours for the first groups (none red, which marks failures), then hues
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#edc948", "#76b7b2", "#9c755f",
                   "#8cd17d", "#bab0ac", "#499894", "#d4a6c8", "#86bcb6"];
  let palette = {};  // group name -> its number in the document
  function groupColor(name) {
    const i = palette[name];
    if (i !== undefined && i < PALETTE.length) return PALETTE[i];
    return "hsl(" + hue(name) + ",55%,50%)";
  }
  const STATE_COLOR = { done: "#2f9e6b", failed: "#d64545", running: "#3b7dd8", pending: "#aab3c0" };

  function showTip(ev, text) {
    tip.textContent = text; tip.style.display = "block";
    tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px";
  }
  function hideTip() { tip.style.display = "none"; }

  function table(id, head, rows, numeric) {
    const thead = el("thead", null, [el("tr", null, head.map((h, i) => el("th", { text: h, cls: numeric && numeric[i] ? "n" : "" })))]);
    const tbody = el("tbody", null, rows.map(r => el("tr", null, r.map((c, i) => {
      if (c instanceof Node) { const td = el("td"); td.appendChild(c); return td; }
      return el("td", { text: c === undefined || c === null ? "-" : String(c), cls: numeric && numeric[i] ? "n" : "" });
    }))));
    return el("table", { id: id }, [thead, tbody]);
  }
  function section(id, title, children) {
    return el("section", { id: id }, [el("h2", { text: title })].concat(children));
  }

  function summarySection(s) {
    const items = [
      ["functions", "functions", num(s.functions)], ["done", "done", num(s.done)],
      ["failed", "failed", num(s.failed)], ["running", "running", num(s.running)],
      ["nodes", "nodes", num(s.nodes)], ["workers", "worker slots", num(s.workers)],
      ["wall", "wall time", secs(s.wall)], ["attempts", "attempts", num(s.attempts)],
      ["retries", "retries", num(s.retries)], ["bytes_moved", "bytes moved", bytes(s.bytes_moved)],
      ["transfers", "transfers", num(s.transfers)],
    ];
    const cards = items.filter(it => s[it[0]] !== undefined).map(it =>
      el("div", { cls: "card", "data-k": it[0] }, [el("div", { cls: "v", text: it[2] }), el("div", { cls: "k", text: it[1] })]));
    return section("summary", "Summary", [el("div", { cls: "cards" }, cards)]);
  }

  function nodesSection(nodes) {
    const rows = nodes.map(n => [n.name, (n.workers || []).length, num(n.attempts), secs(n.busy)]);
    return section("nodes-section", "Nodes", [table("nodes", ["node", "worker slots", "attempts", "busy"], rows, [0, 1, 1, 1])]);
  }

  function clusterSection(members) {
    const fmt = o => o ? Object.keys(o).sort().map(k => k + "=" + (+o[k].toFixed ? +Number(o[k]).toFixed(2) : o[k])).join(", ") : "-";
    const rows = members.map(m => [m.name, m.state, m.address, fmt(m.capacity), fmt(m.used), num(m.running), num(m.queued)]);
    return section("cluster-section", "Cluster", [table("cluster", ["node", "state", "address", "capacity", "used", "running", "queued"], rows, [0, 0, 0, 0, 0, 1, 1])]);
  }

  function runsSection(runs) {
    const rows = runs.map(r => [String(r.dag_id), r.state || "running", num(r.done) + " / " + num(r.total)]);
    return section("runs-section", "Runs", [table("runs", ["DAG", "state", "done"], rows)]);
  }

  function groupsSection(groups) {
    const rows = groups.map(g => {
      const total = Math.max(g.total || 0, 1);
      const bar = el("div", { cls: "bar" }, [
        el("span", { style: "width:" + (100 * (g.done || 0) / total) + "%;background:var(--ok)" }),
        el("span", { style: "width:" + (100 * (g.running || 0) / total) + "%;background:var(--run)" }),
        el("span", { style: "width:" + (100 * (g.failed || 0) / total) + "%;background:var(--bad)" })]);
      const name = el("span", null, [el("i", { style: "display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px;background:" + groupColor(g.name) }), document.createTextNode(g.name)]);
      return [name, num(g.done) + " / " + num(g.total), num(g.running), num(g.failed), secs(g.seconds), bar];
    });
    return section("groups-section", "Function groups", [table("groups", ["group", "done", "running", "failed", "time", "progress"], rows, [0, 1, 1, 1, 1, 0])]);
  }

  function timelineSection(tl) {
    const lanes = tl.lanes || [];
    const span = Math.max((tl.end || 0) - (tl.start || 0), 1e-9);
    const labelW = 150, rowH = 16, axisH = 20;
    const wrap = el("div", { cls: "scroll" });
    const canvas = el("canvas", { id: "timeline" });
    wrap.appendChild(canvas);
    const groups = tl.groups || [];
    function draw() {
      const width = Math.max((wrap.clientWidth || 900) - 2, 400);
      const height = axisH + lanes.length * rowH + 4;
      const dpr = window.devicePixelRatio || 1;
      canvas.width = width * dpr; canvas.height = height * dpr;
      canvas.style.width = width + "px"; canvas.style.height = height + "px";
      const g = canvas.getContext("2d");
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.fillStyle = "#fff"; g.fillRect(0, 0, width, height);
      const plotW = width - labelW - 8;
      const x = t => labelW + (t / span) * plotW;
      g.fillStyle = "#5f6b7a"; g.font = "11px system-ui, sans-serif"; g.textBaseline = "middle";
      for (let k = 0; k <= 5; k++) {
        const t = span * k / 5, px = x(t);
        g.fillRect(px, axisH - 4, 1, 4);
        g.textAlign = k === 0 ? "left" : (k === 5 ? "right" : "center");
        g.fillText(secs(t), px, axisH / 2 - 1);
      }
      g.textAlign = "left";
      let lastNode = null;
      lanes.forEach((lane, i) => {
        const y = axisH + i * rowH;
        if (lane.node !== lastNode) {
          g.fillStyle = "#d9dee6"; g.fillRect(0, y, width, 1); lastNode = lane.node;
          g.fillStyle = "#1d2330"; g.fillText(String(lane.node).slice(0, 16), 4, y + rowH / 2);
        }
        g.fillStyle = "#5f6b7a"; g.fillText("w" + lane.worker, labelW - 34, y + rowH / 2);
        if (lane.busy) {
          const n = lane.busy.length, bw = plotW / Math.max(n, 1);
          for (let b = 0; b < n; b++) {
            const f = lane.busy[b]; if (!f) continue;
            g.fillStyle = "rgba(59,125,216," + (0.15 + 0.85 * Math.min(f, 1)) + ")";
            g.fillRect(labelW + b * bw, y + 2, Math.max(bw, 1), rowH - 4);
          }
        } else {
          for (const s of lane.spans || []) {
            const x0 = x(s[0]), w = Math.max(x(s[1]) - x0, 1);
            g.fillStyle = s[3] ? groupColor(groups[s[2]] || "") : "#d64545";
            g.fillRect(x0, y + 2, w, rowH - 4);
          }
        }
      });
    }
    canvas.addEventListener("mousemove", ev => {
      const r = canvas.getBoundingClientRect();
      const i = Math.floor((ev.clientY - r.top - axisH) / rowH);
      const lane = lanes[i];
      if (!lane || lane.busy) { hideTip(); return; }
      const plotW = r.width - labelW - 8;
      const t = (ev.clientX - r.left - labelW) / plotW * span;
      const hit = (lane.spans || []).find(s => s[0] <= t && t <= s[1] + span / plotW);
      if (!hit) { hideTip(); return; }
      showTip(ev, (groups[hit[2]] || "") + " on " + lane.node + " w" + lane.worker + ": " + secs(hit[1] - hit[0]) + (hit[3] ? "" : " (failed)"));
    });
    canvas.addEventListener("mouseleave", hideTip);
    const note = el("p", { cls: "muted", text: lanes.length + " worker slots" + (tl.binned ? "; busy fraction per " + secs(span / Math.max(tl.bins || 1, 1)) + " bin (too many attempts to draw each)" : "; one box per attempt, coloured by group, failed ones red") });
    const sec = section("timeline-section", "Timeline per node and worker", [note, wrap]);
    requestAnimationFrame(draw);
    return sec;
  }

  function graphSection(graph) {
    const nodes = graph.nodes || [], edges = graph.edges || [];
    const n = nodes.length;
    const preds = nodes.map(() => []), succs = nodes.map(() => []);
    for (const e of edges) { if (e[0] < n && e[1] < n) { succs[e[0]].push(e[1]); preds[e[1]].push(e[0]); } }
    // layers: longest path from a source (Kahn order; the graph is acyclic)
    const indeg = preds.map(p => p.length), layer = new Array(n).fill(0), order = [];
    const queue = []; for (let i = 0; i < n; i++) if (!indeg[i]) queue.push(i);
    while (queue.length) {
      const i = queue.shift(); order.push(i);
      for (const j of succs[i]) { layer[j] = Math.max(layer[j], layer[i] + 1); if (--indeg[j] === 0) queue.push(j); }
    }
    const layers = [];
    for (const i of order) (layers[layer[i]] = layers[layer[i]] || []).push(i);
    const pos = new Array(n).fill(0);
    layers.forEach(l => l.forEach((i, k) => pos[i] = k));
    for (let sweep = 0; sweep < 2; sweep++) {   // barycentre ordering cuts crossings
      for (let li = 1; li < layers.length; li++) {
        const bc = i => preds[i].length ? preds[i].reduce((a, p) => a + pos[p], 0) / preds[i].length : pos[i];
        layers[li].sort((a, b) => bc(a) - bc(b));
        layers[li].forEach((i, k) => pos[i] = k);
      }
    }
    const boxW = 150, boxH = 34, colW = 200, rowH = 46, pad = 12;
    const tallest = Math.max(1, ...layers.map(l => l.length));
    const W = pad * 2 + Math.max(layers.length, 1) * colW, H = pad * 2 + tallest * rowH;
    const X = i => pad + layer[i] * colW, Y = i => pad + pos[i] * rowH;
    const root = svg("svg", { id: "dag", width: W, height: H, viewBox: "0 0 " + W + " " + H });
    root.appendChild(svg("rect", { x: 0, y: 0, width: W, height: H, fill: "#fff" }));
    for (const e of edges) {
      if (e[0] >= n || e[1] >= n) continue;
      const x1 = X(e[0]) + boxW, y1 = Y(e[0]) + boxH / 2, x2 = X(e[1]), y2 = Y(e[1]) + boxH / 2, mx = (x1 + x2) / 2;
      root.appendChild(svg("path", { d: "M" + x1 + "," + y1 + " C" + mx + "," + y1 + " " + mx + "," + y2 + " " + x2 + "," + y2, fill: "none", stroke: "#9aa5b4", "stroke-width": Math.min(1 + Math.log10(e[2] || 1), 4) }));
      if (graph.collapsed && e[2] > 1) {
        const t = svg("text", { x: mx, y: (y1 + y2) / 2 - 3, "text-anchor": "middle", fill: "#5f6b7a" }); t.textContent = num(e[2]); root.appendChild(t);
      }
    }
    nodes.forEach((d, i) => {
      const g = svg("g", { "class": "fn", transform: "translate(" + X(i) + "," + Y(i) + ")" });
      g.appendChild(svg("rect", { width: boxW, height: boxH, rx: 5, fill: "#fff", stroke: STATE_COLOR[d.state] || "#aab3c0", "stroke-width": 2 }));
      g.appendChild(svg("rect", { width: 5, height: boxH, rx: 2, fill: groupColor(d.group || d.label) }));
      const label = String(d.label); const t = svg("text", { x: 10, y: 14, fill: "#1d2330" });
      t.textContent = label.length > 22 ? label.slice(0, 21) + "\u2026" : label; g.appendChild(t);
      const sub = [];
      if (graph.collapsed) sub.push(num(d.count) + " functions");
      if (d.pin) sub.push("@" + d.pin);
      if (d.cost) sub.push(d.cost);
      const s = svg("text", { x: 10, y: 27, fill: "#5f6b7a" }); s.textContent = sub.join("  ").slice(0, 28); g.appendChild(s);
      const title = svg("title", {}); title.textContent = label + (sub.length ? "\n" + sub.join("\n") : "") + "\n" + d.state; g.appendChild(title);
      root.appendChild(g);
    });
    const legend = el("div", { cls: "legend" }, Object.keys(STATE_COLOR).map(k => el("span", null, [el("i", { style: "background:" + STATE_COLOR[k] }), document.createTextNode(k)])));
    const note = graph.collapsed ? el("p", { cls: "muted", text: num(graph.functions) + " functions, drawn as one box per group (" + n + " groups)" }) : null;
    return section("graph-section", "DAG", [note, legend, el("div", { cls: "scroll" }, [root])]);
  }

  function slowestSection(rows) {
    return section("slowest-section", "Slowest functions", [table("slowest", ["function", "group", "node", "worker", "attempt", "time", "argument fetch", "bytes in", "bytes out"],
      rows.map(r => [r.function_id, r.group, r.node, r.worker, r.attempt, secs(r.seconds), secs(r.fetch_seconds), bytes(r.bytes_in), bytes(r.bytes_out)]), [0, 0, 0, 1, 1, 1, 1, 1, 1])]);
  }

  function transfersSection(rows) {
    return section("transfers-section", "Transfers between nodes", [rows.length ? table("transfers", ["from", "to", "values", "bytes"],
      rows.map(r => [r.source, r.target, num(r.count), bytes(r.bytes)]), [0, 0, 1, 1]) : el("p", { cls: "muted", text: "No value crossed nodes." })]);
  }

  function failuresSection(rows, total) {
    const items = rows.map(f => el("details", { cls: "failure" + (f.final ? " final" : "") }, [
      el("summary", { text: f.function_id + " attempt " + f.attempt + " on " + f.node + (f.worker >= 0 ? " w" + f.worker : "") + ": " + f.exc_type + ": " + f.message + (f.final ? "  (final)" : "") }),
      el("pre", { text: f.traceback || "(no traceback)" })]));
    const note = total > rows.length ? el("p", { cls: "muted", text: "showing " + rows.length + " of " + num(total) + " failed attempts" }) : null;
    return section("failures-section", "Failed attempts", rows.length ? [note].concat(items) : [el("p", { cls: "muted", text: "No attempt failed." })]);
  }

  function render(doc) {
    const main = document.getElementById("main");
    const parts = [];
    palette = {};
    const names = (doc.timeline && doc.timeline.groups) || (doc.groups || []).map(g => g.name);
    names.forEach((name, i) => { if (!(name in palette)) palette[name] = i; });
    if (doc.title) { document.getElementById("title").textContent = doc.title; document.title = doc.title; }
    const s = doc.summary;
    const st = document.getElementById("state");
    st.textContent = s && s.state ? s.state : ""; st.className = "state " + (s && s.state ? s.state : "");
    if (doc.runs) parts.push(runsSection(doc.runs));
    if (s) parts.push(summarySection(s));
    if (doc.cluster) parts.push(clusterSection(doc.cluster));
    if (doc.nodes) parts.push(nodesSection(doc.nodes));
    if (doc.groups) parts.push(groupsSection(doc.groups));
    if (doc.timeline) parts.push(timelineSection(doc.timeline));
    if (doc.graph) parts.push(graphSection(doc.graph));
    if (doc.slowest) parts.push(slowestSection(doc.slowest));
    if (doc.transfers) parts.push(transfersSection(doc.transfers));
    if (doc.failures) parts.push(failuresSection(doc.failures, doc.failures_total || doc.failures.length));
    if (!parts.length) parts.push(el("p", { cls: "muted", text: "Nothing to show yet." }));
    main.replaceChildren.apply(main, parts);
    document.body.setAttribute("data-rendered", String(Date.now()));
  }

  if (config.live) {
    const live = document.getElementById("live");
    let busy = false;
    function poll() {
      if (busy) return; busy = true;
      fetch(config.live, { cache: "no-store" }).then(r => {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      }).then(doc => { render(doc); live.textContent = "live, updated " + new Date().toLocaleTimeString(); })
        .catch(err => { live.textContent = "disconnected (" + err.message + "), retrying"; })
        .finally(() => { busy = false; });
    }
    poll();
    setInterval(poll, Math.max(config.refresh, 0.2) * 1000);
  } else if (embedded) {
    render(embedded);
  }
})();
</script>
</body>
</html>
"""
