import { createHash } from 'node:crypto'

/** How often the page asks `/regions` for every region's status. */
export const DASHBOARD_POLL_MS = 2000
/** How much history the page keeps, in the browser only: the server stores nothing for it. */
export const DASHBOARD_HISTORY_MS = 10 * 60_000

const STYLE = `
:root { color-scheme: light; --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --card: #fff;
  --lag: #2563eb; --pending: #7c3aed; --ok: #15803d; --ok-bg: #dcfce7; --warn: #a16207; --warn-bg: #fef3c7;
  --bad: #b91c1c; --bad-bg: #fee2e2; --none-bg: #eef0f3; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { display: flex; align-items: baseline; gap: 16px; padding: 18px 28px 8px; flex-wrap: wrap; }
h1 { font-size: 20px; margin: 0; font-weight: 650; letter-spacing: -0.01em; }
h1 span { color: var(--muted); font-weight: 400; }
#state { margin-left: auto; color: var(--muted); display: flex; align-items: center; gap: 8px; }
#state::before { content: ""; width: 9px; height: 9px; border-radius: 50%; background: #9aa5b1; }
#state.live::before { background: var(--ok); }
#state.stale { color: var(--bad); }
#state.stale::before { background: var(--bad); }
main { padding: 8px 28px 28px; display: grid; gap: 20px; }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 9px 14px; text-align: left; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { font-size: 12px; font-weight: 600; color: var(--muted); text-transform: uppercase; letter-spacing: 0.04em; }
tbody tr:last-child td { border-bottom: 0; }
td.num, th.num { text-align: right; }
td.region { font-weight: 650; }
td.error { white-space: normal; color: var(--muted); min-width: 220px; max-width: 460px; }
td.error.has { color: var(--bad); }
td.error .msg { display: -webkit-box; -webkit-box-orient: vertical; -webkit-line-clamp: 2; overflow: hidden; overflow-wrap: anywhere; }
td.error .when { color: var(--muted); margin-right: 8px; }
.scroll { overflow-x: auto; }
body.stale main { opacity: 0.55; }
.bad { color: var(--bad); font-weight: 650; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600; }
.badge.closed { color: var(--ok); background: var(--ok-bg); }
.badge.half-open { color: var(--warn); background: var(--warn-bg); }
.badge.open { color: var(--bad); background: var(--bad-bg); }
.badge.none { color: var(--muted); background: var(--none-bg); }
#empty { padding: 18px; color: var(--muted); }
#charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 20px; }
.card { padding: 14px 18px 16px; }
.card.down { border-color: #f5b5b5; }
.card h2 { font-size: 16px; margin: 0 0 10px; display: flex; align-items: center; gap: 10px; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
figure { margin: 0; }
figcaption { display: flex; justify-content: space-between; font-size: 12px; color: var(--muted); margin-bottom: 4px; }
figcaption b { color: var(--ink); font-size: 13px; font-variant-numeric: tabular-nums; }
.plot { position: relative; height: 96px; border-left: 1px solid var(--line); border-bottom: 1px solid var(--line); }
.plot svg { position: absolute; inset: 0; width: 100%; height: 100%; overflow: visible; }
.plot .grid { stroke: var(--line); stroke-dasharray: 3 3; }
.plot .line { fill: none; stroke-width: 2; stroke-linejoin: round; }
.plot .area { stroke: none; opacity: 0.12; }
.lag .line { stroke: var(--lag); } .lag .area { fill: var(--lag); }
.pending .line { stroke: var(--pending); } .pending .area { fill: var(--pending); }
.ymax, .ymid { position: absolute; left: 4px; font-size: 11px; color: var(--muted); background: rgba(255,255,255,0.8); padding: 0 2px; }
.ymax { top: 0; } .ymid { top: calc(50% - 8px); }
.xaxis { display: flex; justify-content: space-between; font-size: 11px; color: var(--muted); margin-top: 2px; }
footer { padding: 0 28px 24px; color: var(--muted); font-size: 12px; }
footer a { color: inherit; }
`

// Browser code: plain ES2020, no template literals (this file holds it in one), text set through
// textContent only, since last errors quote target responses.
const SCRIPT = `
'use strict';
(function () {
  var POLL_MS = ${DASHBOARD_POLL_MS};
  var HISTORY_MS = ${DASHBOARD_HISTORY_MS};
  var SVG = 'http://www.w3.org/2000/svg';
  var W = 300, H = 100;
  var history = new Map();
  var rows = new Map();
  var cards = new Map();

  function el (tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg (tag, attrs) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function clock (d) { return d.toLocaleTimeString([], { hour12: false }); }
  function seconds (s) {
    if (s < 100) return s.toFixed(1) + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.floor(s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }
  // A chart's scale from its largest value: the top of the axis, and how to label a value on it.
  function lagScale (v) {
    var u = v <= 100 ? 1 : v <= 6000 ? 60 : 3600;
    var unit = u === 1 ? ' s' : u === 60 ? ' min' : ' h';
    return {
      max: niceMax(v / u, 1, [1, 2, 5]) * u,
      fmt: function (x) { var y = x / u; return (y % 1 === 0 ? String(y) : y.toFixed(1)) + unit; }
    };
  }
  function pendingScale (v) {
    return { max: niceMax(v, 2, [1, 2, 4]), fmt: count };
  }
  function count (n) { return n.toLocaleString('en-US'); }
  function span (ms) {
    var s = Math.round(ms / 1000);
    return s < 120 ? s + ' s ago' : Math.round(s / 60) + ' min ago';
  }
  // Top of a chart's scale: the next of steps[i] * 10^k at or above v. Counts use 1, 2, 4, 10 so
  // that the middle line falls on a whole number of events.
  function niceMax (v, floor, steps) {
    v = Math.max(v, floor);
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    for (var i = 0; i < steps.length; i++) if (v <= steps[i] * p) return steps[i] * p;
    return 10 * p;
  }

  function setState (cls, text) {
    var s = document.getElementById('state');
    s.className = cls;
    s.textContent = text;
    document.body.classList.toggle('stale', cls === 'stale');
  }

  function cell (row, field, cls) {
    var td = el('td', cls);
    td.dataset.field = field;
    row.appendChild(td);
    return td;
  }
  function setNum (td, value, text) {
    td.dataset.value = String(value);
    td.textContent = text;
  }

  function row (region) {
    var r = rows.get(region);
    if (r) return r;
    var tr = el('tr');
    tr.dataset.region = region;
    r = { tr: tr };
    cell(tr, 'region', 'region').textContent = region;
    r.instances = cell(tr, 'instances', 'num');
    r.pending = cell(tr, 'pending', 'num');
    r.lag = cell(tr, 'lag', 'num');
    r.applied = cell(tr, 'applied', 'num');
    r.dlq = cell(tr, 'deadLetters', 'num');
    r.breaker = cell(tr, 'breaker');
    r.divergent = cell(tr, 'divergent', 'num');
    r.error = cell(tr, 'lastError', 'error');
    rows.set(region, r);
    return r;
  }

  function chart (kind, region, title) {
    var fig = el('figure', kind);
    var cap = el('figcaption');
    var now = el('b');
    cap.append(el('span', '', title), now);
    var plot = el('div', 'plot');
    var s = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, preserveAspectRatio: 'none', role: 'img', 'aria-label': title + ' over time, ' + region });
    s.dataset.chart = kind;
    s.dataset.region = region;
    s.append(
      svg('line', { class: 'grid', x1: 0, x2: W, y1: H / 2, y2: H / 2, 'vector-effect': 'non-scaling-stroke' }),
      svg('path', { class: 'area', d: '' }),
      svg('path', { class: 'line', d: '', 'vector-effect': 'non-scaling-stroke' }));
    var ymax = el('span', 'ymax');
    var ymid = el('span', 'ymid');
    plot.append(s, ymax, ymid);
    var axis = el('div', 'xaxis');
    var from = el('span');
    axis.append(from, el('span', '', 'now'));
    fig.append(cap, plot, axis);
    return { fig: fig, now: now, area: s.children[1], line: s.children[2], ymax: ymax, ymid: ymid, from: from };
  }

  function card (region) {
    var c = cards.get(region);
    if (c) return c;
    var sec = el('section', 'panel card');
    sec.dataset.region = region;
    var h = el('h2');
    var badge = el('span', 'badge');
    h.append(el('span', '', region), badge);
    var lag = chart('lag', region, 'Lag');
    var pending = chart('pending', region, 'Pending events');
    var grid = el('div', 'charts');
    grid.append(lag.fig, pending.fig);
    sec.append(h, grid);
    c = { sec: sec, badge: badge, lag: lag, pending: pending };
    cards.set(region, c);
    return c;
  }

  function draw (c, samples, key, scaleOf, now) {
    var first = samples.length > 0 ? samples[0].t : now;
    var windowMs = Math.min(HISTORY_MS, Math.max(now - first, 10000));
    var start = now - windowMs;
    var scale = scaleOf(samples.reduce(function (m, s) { return Math.max(m, s[key]); }, 0));
    var max = scale.max;
    var line = '', area = '', seg = [], x0 = 0, x1 = 0;
    function flush () {
      if (seg.length === 0) return;
      line += 'M' + seg.join('L');
      area += 'M' + x0.toFixed(1) + ',' + H + 'L' + seg.join('L') + 'L' + x1.toFixed(1) + ',' + H + 'Z';
      seg = [];
    }
    for (var i = 0; i < samples.length; i++) {
      var s = samples[i];
      // A gap in polling (page hidden, server unreachable) breaks the line instead of bridging it.
      if (i > 0 && s.t - samples[i - 1].t > POLL_MS * 3) flush();
      var x = ((s.t - start) / windowMs) * W;
      var y = H - (s[key] / max) * H;
      if (seg.length === 0) x0 = x;
      x1 = x;
      seg.push(x.toFixed(1) + ',' + y.toFixed(1));
    }
    flush();
    c.line.setAttribute('d', line);
    c.area.setAttribute('d', area);
    c.ymax.textContent = scale.fmt(max);
    c.ymid.textContent = scale.fmt(max / 2);
    c.from.textContent = span(windowMs);
  }

  function render (regions, now) {
    var tbody = document.getElementById('regions');
    var charts = document.getElementById('charts');
    var seen = new Set();
    document.getElementById('empty').hidden = regions.length > 0;
    regions.forEach(function (r) {
      seen.add(r.region);
      var live = r.instances.length;
      var x = row(r.region);
      setNum(x.instances, live, String(live));
      x.instances.classList.toggle('bad', live === 0);
      x.instances.title = r.instances.map(function (i) { return i.instance; }).join(', ') || 'no replicator is running for this region';
      setNum(x.pending, r.pending, count(r.pending));
      setNum(x.lag, r.lagSeconds, seconds(r.lagSeconds));
      setNum(x.applied, r.appliedPerSecond, live === 0 ? '-' : r.appliedPerSecond.toFixed(1));
      setNum(x.dlq, r.deadLetters, count(r.deadLetters));
      x.dlq.classList.toggle('bad', r.deadLetters > 0);
      var breaker = r.breaker || 'none';
      var b = el('span', 'badge ' + breaker, r.breaker || 'no replicator');
      x.breaker.replaceChildren(b);
      x.breaker.dataset.value = breaker;
      var divergent = r.divergent === undefined ? null : r.divergent;
      setNum(x.divergent, divergent === null ? -1 : divergent, divergent === null ? '-' : count(divergent));
      x.divergent.classList.toggle('bad', divergent !== null && divergent > 0);
      x.divergent.title = divergent === null ? 'regionsync verify has not run for this region' : 'at the last regionsync verify, ' + r.verifiedAt;
      x.error.classList.toggle('has', r.lastError !== null);
      if (r.lastError === null) {
        x.error.textContent = '-';
        x.error.title = '';
      } else {
        var msg = el('span', 'msg');
        msg.append(el('span', 'when', clock(new Date(r.lastError.at))), r.lastError.message + ' (' + r.lastError.instance + ')');
        x.error.replaceChildren(msg);
        x.error.title = r.lastError.at + ' ' + r.lastError.instance + ': ' + r.lastError.message;
      }
      tbody.appendChild(x.tr);

      var c = card(r.region);
      c.sec.classList.toggle('down', live === 0);
      // No replicator with events waiting is an outage, not a neutral state.
      c.badge.className = 'badge ' + (live === 0 && r.pending > 0 ? 'open' : breaker);
      c.badge.textContent = live === 0 ? 'no replicator' : live + (live === 1 ? ' instance' : ' instances') + ', breaker ' + breaker;
      var samples = history.get(r.region) || [];
      c.lag.now.textContent = seconds(r.lagSeconds);
      c.pending.now.textContent = count(r.pending);
      draw(c.lag, samples, 'lag', lagScale, now);
      draw(c.pending, samples, 'pending', pendingScale, now);
      charts.appendChild(c.sec);
    });
    rows.forEach(function (x, region) { if (!seen.has(region)) { x.tr.remove(); rows.delete(region); } });
    cards.forEach(function (c, region) { if (!seen.has(region)) { c.sec.remove(); cards.delete(region); history.delete(region); } });
  }

  function record (regions, now) {
    regions.forEach(function (r) {
      var h = history.get(r.region);
      if (!h) { h = []; history.set(r.region, h); }
      h.push({ t: now, lag: r.lagSeconds, pending: r.pending });
      while (h.length > 0 && h[0].t < now - HISTORY_MS) h.shift();
    });
  }

  async function poll () {
    var started = Date.now();
    try {
      var res = await fetch('regions', { cache: 'no-store', headers: { accept: 'application/json' } });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      var regions = await res.json();
      var now = Date.now();
      record(regions, now);
      render(regions, now);
      setState('live', 'updated ' + clock(new Date(now)));
    } catch (err) {
      setState('stale', 'cannot reach the replicator (' + err.message + '), retrying');
    }
    setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
  }
  poll();
})();
`

const HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>regionsync</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<header>
<h1>regionsync <span>replication by region</span></h1>
<div id="state">connecting</div>
</header>
<main>
<section class="panel scroll">
<table>
<thead><tr><th>Region</th><th class="num">Instances</th><th class="num">Pending</th><th class="num">Lag</th><th class="num">Applied/s</th><th class="num">DLQ</th><th>Breaker</th><th class="num">Divergent</th><th>Last error</th></tr></thead>
<tbody id="regions"></tbody>
</table>
<div id="empty">No regions yet: a region shows once its first replicator has started.</div>
</section>
<div id="charts"></div>
</main>
<footer>Every ${DASHBOARD_POLL_MS / 1000} s from <a href="regions">/regions</a>; the last ${DASHBOARD_HISTORY_MS / 60_000} minutes are kept in this tab only. This replicator also serves <a href="status">/status</a> and <a href="metrics">/metrics</a>.</footer>
<noscript>This page draws with JavaScript; <a href="regions">/regions</a> has the same numbers as JSON.</noscript>
<script>${SCRIPT}</script>
</body>
</html>
`

function sha256Source (text: string): string {
  return `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`
}

/** The page served on `/`: one self-contained HTML document, no external assets, no build step. */
export const DASHBOARD_HTML: string = HTML

/**
 * Content-Security-Policy for {@link DASHBOARD_HTML}: its own inline style and script by hash,
 * fetches to its own origin, nothing else (no other script, frame, form or plugin).
 */
export const DASHBOARD_CSP: string = [
  "default-src 'none'",
  `script-src ${sha256Source(SCRIPT)}`,
  `style-src ${sha256Source(STYLE)}`,
  "connect-src 'self'",
  'img-src data:',
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'"
].join('; ')
