// edge-agent status page: polls /api/status and draws one card per sensor (score vs threshold as inline SVG,
// vibration RMS, health counters, alert history, served model). No library, nothing fetched from elsewhere;
// every text goes through textContent, never innerHTML (device ids, reasons and advice are data, not markup).
// The badge tells the truth at a glance (verdict): green NORMAL only for a sensor that is scoring, healthy and
// normal; a sensor that is not monitored has its own badge and colour, with the reason and what to do.
// Beside the badge, never instead of it: the vibration velocity (mm/s) and its ISO zone as a coloured chip (a machine
// can be anomalous in zone A); the last alert in maintenance words (changed / degrading), why, where (the channels
// that carry the error) and the bearing verdict.
// The trend over weeks (1 h / 24 h / 30 d, one span at a time per sensor): /api/sensors/<device>/trend, fetched
// when the span is picked and every 30 s (not at every poll); score vs threshold with the alert episodes shaded,
// the worst state of each row, velocity with its zone; the same rows as CSV for a spreadsheet.
// Answers (acknowledge, confirmed fault, false alarm, silence for N h): the buttons exist only when the gateway
// has a write token (gateway.http.writable); each POST carries the token the technician typed (kept for this tab
// only, sessionStorage) and their name (localStorage), as JSON, to this page's own origin.
"use strict";

// ?poll=MS polls faster or slower (tests); never faster than 4 times a second
const POLL_MS = Math.max(250, Number(new URLSearchParams(location.search).get("poll")) || 2000);
// ?trend=MS refreshes the trend charts faster or slower (tests); never faster than once a second
const TREND_MS = Math.max(1000, Number(new URLSearchParams(location.search).get("trend")) || 30000);
const STALE_S = 5;
const SVG = "http://www.w3.org/2000/svg";
const CHART = { w: 640, h: 180, left: 52, right: 10, top: 10, bottom: 22 };
const SPARK = { w: 640, h: 46, left: 52, right: 10, top: 4, bottom: 4 };
// the trend charts: the plot, then a strip of the rows' worst state (or zone), then the time labels
const TREND = { w: 640, h: 170, left: 52, right: 10, top: 8, bottom: 30 };
const TRENDV = { w: 640, h: 96, left: 52, right: 10, top: 6, bottom: 30 };
const SPANS = [["1h", "1 h", 3600], ["24h", "24 h", 86400], ["30d", "30 d", 30 * 86400]];
const STAGE_WORDS = { changed: "Changed: watch it, plan a look", degrading: "Degrading: act" };
// health counters shown on each card, in this order, when the sensor's status has them: the first ones always,
// the others only when they are not zero (one line says so)
const ALWAYS = new Set(["frames_dropped", "crc_errors", "gaps", "samples_invalid", "bad_payloads"]);
const COUNTERS = [
  ["frames_dropped", "frames dropped (queue full)"], ["crc_errors", "CRC errors"], ["bad_headers", "bad headers"],
  ["frames_rejected", "frames rejected"], ["duplicates", "duplicates"], ["bad_payloads", "bad payloads"],
  ["oversized_payloads", "oversized payloads"], ["bad_lines", "bad CSV lines"], ["gaps", "gaps"],
  ["samples_missing", "samples missing"], ["samples_invalid", "samples invalid"],
  ["samples_over_range", "samples over range"], ["reconnects", "reconnects"], ["read_errors", "read errors"],
  ["open_failures", "open failures"], ["model_rejects", "bundles rejected"], ["internal_errors", "internal errors"],
];
const cards = new Map();
const ANSWERS = { ack: "acknowledged", confirmed: "confirmed fault", false_alarm: "false alarm", silence: "silenced",
                  unsilence: "silence ended" };
const SILENCE_HOURS = [1, 4, 8, 24, 72, 168];  // the same as Home Assistant's select
let writable = false;
let trendOf = undefined;  // the gateway's trend store status (null: it keeps no trend)
let clockOffset = 0;  // the gateway's clock minus this browser's, seconds (the trend is drawn on the gateway's time)

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs, parent) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

function fmt(x, digits = 4) {
  if (x === null || x === undefined) return "–";
  if (typeof x !== "number") return String(x);
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(2);
  return String(Number(x.toPrecision(digits)));
}

function clock(t) {
  if (typeof t !== "number") return "–";
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function when(t) {
  if (typeof t !== "number") return "–";
  const d = new Date(t * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? clock(t) : d.toLocaleString([], { hour12: false, month: "short", day: "numeric", hour: "2-digit",
                                                   minute: "2-digit" });
}

function ago(s) {
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 5400) return `${Number((s / 60).toFixed(1))} min`;
  return `${Number((s / 3600).toFixed(1))} h`;
}

function makeCard(device) {
  const card = el("section", "card");
  card.dataset.sensor = device;
  const head = el("div", "card-head");
  const alertBadge = el("span", "badge alert-badge");
  alertBadge.hidden = true;
  // velocity and zone beside the badge: a second, separate fact, never the anomaly state
  const severity = el("span", "severity");
  severity.hidden = true;
  severity.append(el("span", "velocity"), el("span", "zone"));
  head.append(el("h2", "device", device), el("span", "badge"), alertBadge, severity, el("span", "where"),
              el("span", "health"));
  const advice = el("p", "advice");
  advice.hidden = true;
  const condition = el("p", "condition");
  condition.hidden = true;
  const lastAlert = el("div", "last-alert");
  lastAlert.hidden = true;
  const stats = el("dl", "stats");
  const chartBox = el("div", "chart-box");
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${CHART.w} ${CHART.h}`, role: "img",
                             "aria-label": `anomaly score of ${device} against its threshold` });
  const spark = svg("svg", { class: "spark", viewBox: `0 0 ${SPARK.w} ${SPARK.h}`, role: "img",
                             "aria-label": `vibration RMS of ${device}` });
  chartBox.append(el("div", "chart-title", "anomaly score vs threshold"), chart,
                  el("div", "chart-title", "vibration RMS (highest channel)"), spark);
  const answer = makeAnswerBox(device);
  const lower = el("div", "lower");
  const counters = el("table", "counters");
  const alertsBox = el("div", "alerts-box");
  const alerts = el("table", "alerts");
  const ahead = el("thead");
  const hr = el("tr");
  for (const h of ["time", "event", "severity", "score", "threshold"]) hr.appendChild(el("th", "", h));
  ahead.appendChild(hr);
  alerts.append(ahead, el("tbody"));
  alertsBox.append(el("h3", "", "alert history"), alerts, el("p", "none", "no alerts since the agent started"));
  const countersBox = el("div", "counters-box");
  countersBox.append(el("h3", "", "health counters"), counters);
  lower.append(countersBox, alertsBox);
  const trend = makeTrend(device);
  card.append(head, advice, condition, lastAlert, answer.box, stats, chartBox, trend.box, lower);
  document.getElementById("sensors").appendChild(card);
  const c = { card, stats, chart, spark, counters, alerts: alerts.tBodies[0], none: alertsBox.lastChild, answer,
              severity, condition, lastAlert, trend };
  cards.set(device, c);
  loadTrend(device);
  return c;
}

// the trend section: span tabs, the CSV link, two charts (score vs threshold; velocity), a line of what is shown
function makeTrend(device) {
  const box = el("div", "trend");
  box.dataset.span = "24h";
  const head = el("div", "trend-head");
  const tabs = el("div", "spans");
  tabs.setAttribute("role", "group");
  tabs.setAttribute("aria-label", `trend span of ${device}`);
  const buttons = {};
  for (const [span, label] of SPANS) {
    const b = el("button", "span", label);
    b.type = "button";
    b.dataset.span = span;
    b.setAttribute("aria-pressed", String(span === box.dataset.span));
    b.addEventListener("click", () => pickSpan(device, span));
    buttons[span] = b;
    tabs.appendChild(b);
  }
  const csv = el("a", "trend-csv");
  const info = el("span", "trend-info");
  head.append(el("h3", "", "trend"), tabs, csv, info);
  const score = svg("svg", { class: "trend-chart trend-score", viewBox: `0 0 ${TREND.w} ${TREND.h}`, role: "img",
                             "aria-label": `trend of the anomaly score of ${device} against its threshold` });
  const velocity = svg("svg", { class: "trend-chart trend-velocity", viewBox: `0 0 ${TRENDV.w} ${TRENDV.h}`,
                                role: "img", "aria-label": `trend of the vibration velocity of ${device}` });
  const scoreTitle = el("div", "chart-title");
  const velocityTitle = el("div", "chart-title");
  const msg = el("p", "trend-msg");
  msg.hidden = true;
  const charts = el("div", "trend-charts");  // an HTML box: hidden with the message (SVG elements have no .hidden)
  charts.append(scoreTitle, score, velocityTitle, velocity);
  box.append(head, charts, msg);
  const t = { box, buttons, csv, info, charts, score, velocity, scoreTitle, velocityTitle, msg, seq: 0, device };
  setCsvLink(t);
  return t;
}

function setCsvLink(t) {
  const span = t.box.dataset.span;
  t.csv.textContent = `CSV of ${SPANS.find((x) => x[0] === span)[1]}`;
  t.csv.setAttribute("href", `/api/sensors/${encodeURIComponent(t.device)}/trend.csv?span=${span}`);
  t.csv.setAttribute("download", `${t.device}-trend-${span}.csv`);
}

function pickSpan(device, span) {
  const t = cards.get(device).trend;
  t.box.dataset.span = span;
  for (const [k, b] of Object.entries(t.buttons)) b.setAttribute("aria-pressed", String(k === span));
  setCsvLink(t);
  loadTrend(device);
}

// fetch the selected span of one sensor's trend and draw it; an answer that comes after a newer request is dropped
async function loadTrend(device) {
  const c = cards.get(device);
  if (!c) return;
  const t = c.trend;
  const seq = ++t.seq;
  const span = t.box.dataset.span;
  if (trendOf === null || (trendOf && trendOf.error)) {
    trendMessage(t, trendOf === null ? "This gateway keeps no trend ([status] trend_file is not set)."
                                     : `No trend on this gateway: ${trendOf.error}`);
    return;
  }
  let doc;
  try {
    const r = await fetch(`/api/sensors/${encodeURIComponent(device)}/trend?span=${span}`, { cache: "no-store" });
    if (!r.ok) throw new Error((await r.text()).trim() || `HTTP ${r.status}`);
    doc = await r.json();
  } catch (err) {
    if (seq === t.seq) trendMessage(t, `Trend not available: ${err.message}`);
    return;
  }
  if (seq !== t.seq) return;
  t.msg.hidden = true;
  t.charts.hidden = t.csv.hidden = false;
  renderTrend(t, doc, Date.now() / 1000 + clockOffset);
}

function trendMessage(t, text) {
  t.msg.textContent = text;
  t.msg.hidden = false;
  t.charts.hidden = t.csv.hidden = true;
  t.info.textContent = "";
  t.box.dataset.rows = "0";
}

async function refreshTrends() {
  for (const device of cards.keys()) await loadTrend(device);
  setTimeout(refreshTrends, TREND_MS);
}

// the answer box: what the alert is and what was answered (always), and the buttons (only when writable)
function makeAnswerBox(device) {
  const box = el("div", "answer-box");
  box.hidden = true;
  const summary = el("p", "answer-summary");
  const silence = el("p", "silenced");
  silence.hidden = true;
  const controls = el("div", "answer-controls");
  const buttons = {};
  for (const [kind, label] of [["ack", "Acknowledge"], ["confirmed", "Confirmed fault"],
                               ["false_alarm", "False alarm"]]) {
    const b = el("button", `answer ${kind}`, label);
    b.type = "button";
    b.dataset.kind = kind;
    b.addEventListener("click", () => sendAnswer(device, { kind }));
    buttons[kind] = b;
  }
  const hours = el("select", "hours");
  hours.setAttribute("aria-label", "silence for");
  for (const h of SILENCE_HOURS) {
    const o = el("option", "", `${h} h`);
    o.value = String(h);
    hours.appendChild(o);
  }
  const silenceButton = el("button", "answer silence", "Silence (maintenance) for");
  silenceButton.type = "button";
  silenceButton.dataset.kind = "silence";
  silenceButton.addEventListener("click", () => sendAnswer(device, { kind: "silence", hours: Number(hours.value) }));
  const unsilence = el("button", "answer unsilence", "End silence");
  unsilence.type = "button";
  unsilence.dataset.kind = "unsilence";
  unsilence.addEventListener("click", () => sendAnswer(device, { kind: "unsilence" }));
  buttons.silence = silenceButton;
  buttons.unsilence = unsilence;
  controls.append(buttons.ack, buttons.confirmed, buttons.false_alarm, silenceButton, hours, unsilence);
  controls.hidden = true;
  const msg = el("p", "answer-msg");
  msg.setAttribute("role", "status");
  box.append(summary, silence, controls, msg);
  return { box, summary, silence, controls, buttons, msg, alert: null };
}

async function sendAnswer(device, body) {
  const c = cards.get(device);
  const by = document.getElementById("by").value.trim();
  const token = document.getElementById("token").value.trim();
  c.answer.msg.dataset.result = "";
  if (!token) {
    c.answer.msg.textContent = "Type the write token above first.";
    c.answer.msg.dataset.result = "error";
    return;
  }
  if (by) localStorage.setItem("edge-agent-by", by);
  sessionStorage.setItem("edge-agent-token", token);
  const doc = Object.assign({ by: by || "unknown" }, body);
  if (c.answer.alert && body.kind !== "silence" && body.kind !== "unsilence") doc.alert = c.answer.alert;
  c.answer.msg.textContent = "sending…";
  try {
    const r = await fetch(`/api/sensors/${encodeURIComponent(device)}/answer`, {
      method: "POST", cache: "no-store", credentials: "omit",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify(doc),
    });
    const reply = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) throw new Error(reply.error || `HTTP ${r.status}`);
    const a = reply.answer;
    c.answer.msg.textContent = `Recorded: ${ANSWERS[a.kind] || a.kind}${a.hours ? ` for ${a.hours} h` : ""} by ${a.by}.`;
    c.answer.msg.dataset.result = "ok";
  } catch (err) {
    c.answer.msg.textContent = `Not recorded: ${err.message}`;
    c.answer.msg.dataset.result = "error";
  }
}

function renderAnswers(c, s) {
  const a = s.answers || {};
  const box = c.answer;
  const alert = a.alert;
  box.alert = alert ? alert.id : null;
  const parts = [];
  if (alert) {
    parts.push(`Alert ${alert.severity}, raised ${when(alert.raised)}${alert.active ? "" : " (cleared)"}`);
    parts.push(a.answer ? `answer: ${ANSWERS[a.answer.kind] || a.answer.kind} by ${a.answer.by}, ${when(a.answer.time)}`
                        : "not answered yet");
  }
  box.summary.textContent = parts.join(" · ");
  box.summary.dataset.answer = a.answer ? a.answer.kind : "";
  box.box.dataset.alert = alert ? alert.id : "";
  const silenced = typeof a.silenced_until === "number";
  box.silence.hidden = !silenced;
  box.silence.textContent = silenced ? `Alerts silenced until ${when(a.silenced_until)} by ${a.silenced_by} ` +
    "(maintenance): scoring and uploads go on; the alert sinks mark what they get as silenced." : "";
  box.controls.hidden = !writable;
  for (const kind of ["ack", "confirmed", "false_alarm"]) box.buttons[kind].disabled = !alert;
  box.buttons.unsilence.disabled = !silenced;
  box.box.hidden = !(writable || alert || silenced);
}

const ALERTING = new Set(["warning", "critical"]);

// [badge text, badge state]: what the sensor's status means for the people reading the page
function verdict(s) {
  const h = s.health && s.health.state;
  if (s.state === "stopped") return ["stopped", "stopped"];
  if (s.state === "no_model" || h === "no_model") return ["no model", "unmonitored"];
  if (h && h !== "ok" && h !== "partial") return ["not monitored", "unmonitored"];
  if (h === "partial") return ["partly monitored", "partial"];
  if (ALERTING.has(s.alert_state)) return [s.alert_state, s.alert_state];
  if (s.alert_state === "calibrating") return ["calibrating", "calibrating"];
  if (!s.windows_scored && !s.over_range_spans) return ["waiting", "waiting"];
  if (s.alert_state === "normal" && (!h || h === "ok")) return ["normal", "normal"];
  return [s.alert_state || s.state || "unknown", "unknown"];
}

function renderStats(c, s) {
  const over = s.advice_key === "over_range" && ALERTING.has(s.alert_state);
  const rows = [
    ["last score", over ? `over range (saturated input); last scored window ${fmt(s.last_score)}` : fmt(s.last_score)],
    ["threshold", s.threshold === undefined ? "–" : `${fmt(s.threshold)} (${s.threshold_source || "bundle"})`],
    ["windows scored", fmt(s.windows_scored, 12)],
    ["inference p50 / p99", s.inference_ms_p50 == null ? "–" :
      `${fmt(s.inference_ms_p50, 3)} / ${fmt(s.inference_ms_p99, 3)} ms`],
    ["model", s.model_version ? `${s.model_id} ${s.model_version} (${s.quantization})` : "none"],
    ["source", `${s.source || "–"}, ${fmt(s.frames_in, 12)} frames, queue ${fmt(s.queued_frames, 12)}`],
  ];
  c.stats.replaceChildren();
  for (const [k, v] of rows) c.stats.append(el("dt", "", k), el("dd", "", v));
}

function renderHealth(c, s) {
  const badge = c.card.querySelector(".badge");
  const [text, state] = verdict(s);
  badge.textContent = text;
  badge.dataset.state = state;
  c.card.dataset.state = state;
  // an alert still active while the sensor is not (fully) monitored: shown beside the monitoring badge
  const alertBadge = c.card.querySelector(".alert-badge");
  const second = state !== s.alert_state && ALERTING.has(s.alert_state) && state !== "stopped";
  alertBadge.hidden = !second;
  alertBadge.textContent = second ? s.alert_state : "";
  alertBadge.dataset.state = second ? s.alert_state : "";
  c.card.querySelector(".where").textContent = [s.asset, s.location].filter((x) => x).join(" · ");
  const advice = c.card.querySelector(".advice");
  advice.hidden = !s.advice;
  advice.dataset.key = s.advice_key || "";
  advice.replaceChildren(el("strong", "", "What to do: "), document.createTextNode(s.advice || ""));
  const health = c.card.querySelector(".health");
  const h = s.health;
  if (h && h.state) {
    const ok = state === "waiting" ? "waiting for the first window" : "monitoring";
    health.textContent = h.state === "ok" ? ok : `${h.state.replaceAll("_", " ")}: ${h.reason || ""}`;
    health.dataset.state = h.state;
  } else if (s.state === "no_model") {
    health.textContent = s.model_last_reject ? `no model: ${s.model_last_reject}` : "waiting for a valid bundle";
    health.dataset.state = "no_model";
  } else {
    health.textContent = "";
    delete health.dataset.state;
  }
  c.counters.replaceChildren();
  let hidden = 0;
  for (const [key, label] of COUNTERS) {
    if (typeof s[key] !== "number") continue;
    if (!ALWAYS.has(key) && s[key] === 0) {
      hidden += 1;
      continue;
    }
    const tr = el("tr", s[key] > 0 ? "nonzero" : "");
    tr.dataset.key = key;
    tr.append(el("td", "", label), el("td", "num", fmt(s[key], 12)));
    c.counters.appendChild(tr);
  }
  if (hidden) {
    const tr = el("tr", "rest");
    tr.append(el("td", "", `${hidden} other counters`), el("td", "num", "0"));
    c.counters.appendChild(tr);
  }
}

function renderAlerts(c, h) {
  const events = (h && h.alerts) || [];
  c.alerts.replaceChildren();
  for (const e of events.slice().reverse()) {
    if (e.kind === "answer") {  // a technician's answer, between the alert events
      const tr = el("tr", `ev-answer ans-${e.answer}`);
      tr.dataset.kind = "answer";
      tr.dataset.answer = e.answer;
      const what = `${ANSWERS[e.answer] || e.answer}${e.hours ? ` for ${e.hours} h` : ""}`;
      const who = el("td", "", `by ${e.by} (${e.via})`);
      who.colSpan = 2;
      tr.append(el("td", "", clock(e.time)), el("td", "", "answer"), el("td", "", what), who);
      c.alerts.appendChild(tr);
      continue;
    }
    const tr = el("tr", `ev-${e.kind} sev-${e.severity}${e.silenced ? " silenced" : ""}`);
    tr.dataset.kind = e.kind;
    tr.append(el("td", "", clock(e.time)), el("td", "", e.silenced ? `${e.kind} (silenced)` : e.kind),
              el("td", "", e.severity),
              el("td", "num", e.score === null ? "over range" : fmt(e.score)), el("td", "num", fmt(e.threshold)));
    c.alerts.appendChild(tr);
  }
  c.none.hidden = events.length > 0;
}

// x: seconds before `now`; the span covers every point kept (at least a minute)
function xScale(box, t0, now) {
  const span = Math.max(60, now - t0);
  return { span, at: (t) => box.left + (box.w - box.left - box.right) * (1 - (now - t) / span) };
}

// vertical grid lines at round times before now (10 s ... 1 h steps, 2 to 6 of them across the span)
const STEPS = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
function drawAxisTimes(g, box, xs) {
  const step = STEPS.find((s) => xs.span / s <= 6) || xs.span / 4;
  const width = box.w - box.left - box.right;
  for (let k = 0; k * step <= xs.span + 1e-9; k++) {
    const x = box.left + width * (1 - (k * step) / xs.span);
    svg("line", { x1: x, x2: x, y1: box.top, y2: box.h - box.bottom, class: "grid" }, g);
    const label = svg("text", { x, y: box.h - 6, class: "tick", "text-anchor": k === 0 ? "end" : "middle" }, g);
    label.textContent = k === 0 ? "now" : `−${ago(k * step)}`;
  }
}

function renderChart(c, h, now) {
  const g = c.chart;
  g.replaceChildren();
  const box = CHART;
  const n = h ? h.t.length : 0;
  g.dataset.points = String(n);
  const bottom = box.h - box.bottom;
  if (!n) {
    const t = svg("text", { x: box.w / 2, y: box.h / 2, class: "empty", "text-anchor": "middle" }, g);
    t.textContent = "no window scored yet";
    return;
  }
  now = Math.max(now, h.t[n - 1]);
  const xs = xScale(box, h.t[0], now);
  const finite = h.score.filter((v) => v !== null);
  const thr = h.threshold.filter((v) => v !== null);
  const top = Math.max(1e-9, 1.1 * Math.max(0, ...finite), 1.5 * Math.max(0, ...thr));
  const y = (v) => bottom - (bottom - box.top) * Math.min(v, top) / top;
  // alert periods: a band behind the curve for every bucket in warning or critical
  for (let i = 0; i < n; i++) {
    const st = h.state[i];
    if (st !== "warning" && st !== "critical") continue;
    const x0 = xs.at(i ? h.t[i - 1] : h.t[i] - h.bucket_s);
    const x1 = xs.at(h.t[i]);
    svg("rect", { x: x0, y: box.top, width: Math.max(1, x1 - x0), height: bottom - box.top, class: `band ${st}` }, g);
  }
  drawAxisTimes(g, box, xs);
  svg("line", { x1: box.left, x2: box.w - box.right, y1: bottom, y2: bottom, class: "axis" }, g);
  for (const v of [0, top / 2, top]) {
    const t = svg("text", { x: box.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, g);
    t.textContent = fmt(v, 2);
  }
  const pts = (vals) => vals.map((v, i) => (v === null ? null : `${xs.at(h.t[i]).toFixed(1)},${y(v).toFixed(1)}`))
    .filter((p) => p !== null).join(" ");
  svg("polyline", { points: pts(h.threshold), class: "threshold" }, g);
  const line = svg("polyline", { points: pts(h.score.map((v) => (v === null ? top : v))), class: "score" }, g);
  line.dataset.points = String(n);
  for (let i = 0; i < n; i++) {
    const v = h.score[i];
    if (v === null) {  // over range: beyond anything the model can score
      const x = xs.at(h.t[i]);
      svg("path", { d: `M${x - 4},${box.top + 7} L${x + 4},${box.top + 7} L${x},${box.top} Z`, class: "over" }, g);
    } else if (h.threshold[i] !== null && v > h.threshold[i]) {
      svg("circle", { cx: xs.at(h.t[i]), cy: y(v), r: 2.2, class: "hit" }, g);
    }
  }
  const last = h.threshold[n - 1];
  if (last !== null) {
    const t = svg("text", { x: box.w - box.right - 2, y: y(last) - 4, class: "thr-label", "text-anchor": "end" }, g);
    t.textContent = `threshold ${fmt(last, 3)}`;
  }
}

function renderSpark(c, h, now) {
  const g = c.spark;
  g.replaceChildren();
  const box = SPARK;
  const idx = h ? h.rms.map((v, i) => (v === null ? -1 : i)).filter((i) => i >= 0) : [];
  if (!idx.length) return;
  now = Math.max(now, h.t[h.t.length - 1]);
  const xs = xScale(box, h.t[0], now);
  const top = Math.max(1e-12, ...idx.map((i) => h.rms[i])) * 1.1;
  const y = (v) => box.h - box.bottom - (box.h - box.top - box.bottom) * v / top;
  svg("polyline", { points: idx.map((i) => `${xs.at(h.t[i]).toFixed(1)},${y(h.rms[i]).toFixed(1)}`).join(" "),
                    class: "rms" }, g);
  const t = svg("text", { x: box.left - 6, y: box.top + 10, class: "tick", "text-anchor": "end" }, g);
  t.textContent = fmt(h.rms[idx[idx.length - 1]], 3);
}

// velocity and zone chip beside the badge; the condition line under it (or why there is no velocity)
function renderCondition(c, s) {
  const k = s.condition || {};
  const has = typeof k.velocity_mm_s === "number";
  c.severity.hidden = !has;
  const zone = c.severity.querySelector(".zone");
  c.severity.querySelector(".velocity").textContent = has ? `${fmt(k.velocity_mm_s, 3)} mm/s` : "";
  zone.hidden = !k.zone;
  zone.textContent = k.zone ? `zone ${k.zone}` : "";
  zone.dataset.zone = k.zone || "";
  zone.title = k.zone ? `ISO zone ${k.zone}: ${k.zone_meaning || ""}${k.zone_table ? ` (${k.zone_table})` : ""}` : "";
  c.severity.title = has ? "vibration velocity RMS, 10-1000 Hz, highest channel: the machine's condition in " +
    "physical terms, beside (never instead of) the anomaly state" : "";
  const parts = [];
  if (has) {
    let text = `Vibration ${fmt(k.velocity_mm_s, 3)} mm/s RMS`;
    if (k.velocity_channel) text += ` (${k.velocity_channel})`;
    if (k.zone) text += `: zone ${k.zone}, ${k.zone_meaning || ""}`;
    parts.push(text);
    if (k.zone_table) parts.push(k.zone_table);
    if (k.velocity_note) parts.push(k.velocity_note);
  } else if (k.velocity_note) {
    parts.push(`No vibration velocity: ${k.velocity_note}`);
  }
  if (typeof k.bearing_baseline_windows === "number" && k.bearing_baseline_windows < 30) {
    parts.push(`bearing baseline: ${k.bearing_baseline_windows} of 30 healthy windows learned`);
  }
  c.condition.textContent = parts.join(" · ");
  c.condition.dataset.velocity = has ? "yes" : "no";
  c.condition.hidden = !parts.length;
}

// the last alert in maintenance words: its stage and why, where the error is, what the bearing analysis says
function renderLastAlert(c, h) {
  const events = ((h && h.alerts) || []).filter((e) => e.kind === "raised" || e.kind === "escalated" ||
                                                       e.kind === "cleared");
  let i = events.length - 1;
  while (i >= 0 && events[i].kind === "cleared") i--;
  const box = c.lastAlert;
  if (i < 0) {
    box.hidden = true;
    box.replaceChildren();
    box.dataset.stage = "";
    return;
  }
  const e = events[i];
  const cleared = events.slice(i + 1).find((x) => x.kind === "cleared");
  const stage = e.stage || (e.severity === "critical" ? "degrading" : "changed");
  box.hidden = false;
  box.dataset.stage = stage;
  box.dataset.severity = e.severity;
  box.dataset.active = cleared ? "no" : "yes";
  const head = el("p", "stage-line");
  head.append(el("strong", `stage ${stage}`, STAGE_WORDS[stage] || stage),
              document.createTextNode(` (${e.severity}, ${e.kind} ${when(e.time)}` +
                                      `${cleared ? `, cleared ${when(cleared.time)}` : ""})` +
                                      (e.reason ? `: ${e.reason}` : "")));
  const lines = [head];
  const x = e.explanation;
  if (x && x.summary) {
    const p = el("p", "explanation");
    p.dataset.channel = x.channels && x.channels.length ? x.channels[0].name : "";
    p.append(el("strong", "", "Where: "), document.createTextNode(x.summary));
    lines.push(p);
  }
  const k = e.condition;
  if (k && (typeof k.velocity_mm_s === "number" || k.zone)) {
    const p = el("p", "alert-severity");
    p.append(el("strong", "", "At the alert: "),
             document.createTextNode(`${fmt(k.velocity_mm_s, 3)} mm/s${k.zone ? `, zone ${k.zone}` : ""}`));
    lines.push(p);
  }
  if (k && k.bearing_verdict) {
    const p = el("p", "bearing");
    p.dataset.verdict = k.bearing_verdict;
    p.append(el("strong", "", "Bearing: "), document.createTextNode(k.bearing_summary || k.bearing_verdict));
    lines.push(p);
  }
  box.replaceChildren(...lines);
}

// the trend: x from (now - span) to now on the gateway's clock; a gap of more than 3 rows breaks the lines
function renderTrend(t, doc, now) {
  const cols = {};
  doc.columns.forEach((name, i) => { cols[name] = i; });
  const rows = doc.rows;
  const step = doc.step_s;
  const spanS = (SPANS.find((x) => x[0] === doc.span) || SPANS[1])[2];
  if (rows.length) now = Math.max(now, rows[rows.length - 1][cols.t]);
  const t0 = now - spanS;
  const col = (name) => rows.map((r) => r[cols[name]]);
  const times = col("t");
  const episodes = episodesOf(doc.events, t0, now);
  const per = step >= 3600 ? "hour" : "minute";
  t.box.dataset.rows = String(rows.length);
  t.box.dataset.episodes = String(episodes.length);
  t.box.dataset.loaded = String(now);
  t.scoreTitle.textContent = `anomaly score (highest per ${per}) vs threshold · alert episodes shaded · ` +
    "strip: worst state";
  t.velocityTitle.textContent = `vibration velocity, mm/s RMS (highest per ${per}) · strip: ISO zone`;
  t.info.textContent = `${rows.length} ${per} rows · ${episodes.length} alert episode${episodes.length === 1 ? "" : "s"}` +
    ` · as of ${clock(now)}`;
  drawTrendScore(t.score, times, col("score_max"), col("threshold"), col("state"), col("over_range"), episodes,
                 step, t0, now);
  drawTrendVelocity(t.velocity, times, col("velocity_max"), col("zone"), step, t0, now);
}

// alert episodes from the events [t, kind, severity, reason]: raised (or the span's start) to cleared (or now).
// An escalation or a clear with no raise before it in the span belongs to an alert raised earlier; but a raise a
// moment after such an escalation is its own raise (a burst of frames can stamp the escalating window earlier).
function episodesOf(events, t0, now) {
  const out = [];
  let open = null;
  const worse = (a, b) => (a === "critical" || b === "critical" ? "critical" : "warning");
  for (const [t, kind, severity, reason] of events || []) {
    if (kind === "raised") {
      if (open && open.before && t - open.last < 60) {
        Object.assign(open, { start: Math.min(open.first, t), before: false, last: t });
        open.severity = worse(open.severity, severity);
        continue;
      }
      if (open) { open.end = t; out.push(open); }
      open = { start: t, first: t, last: t, end: null, before: false, severity, reason: reason || "" };
    } else if (kind === "escalated") {
      if (!open) open = { start: t0, first: t, last: t, end: null, before: true, severity, reason: "" };
      open.severity = worse(open.severity, severity);
      open.last = t;
      if (reason) open.reason = reason;
    } else if (kind === "cleared") {
      if (!open) open = { start: t0, first: t, last: t, end: null, before: true, severity: "warning", reason: "" };
      open.end = t;
      out.push(open);
      open = null;
    }
  }
  if (open) out.push(open);
  return out.map((e) => ({ start: Math.max(e.start, t0), end: Math.min(e.end === null ? now : e.end, now),
                           open: e.end === null, severity: e.severity, reason: e.reason }));
}

function trendX(box, t0, now) {
  const width = box.w - box.left - box.right;
  return (t) => box.left + width * Math.min(1, Math.max(0, (t - t0) / (now - t0)));
}

// clock-time labels: every 10 min (1 h), 3 h (24 h) or week (30 d: Mondays), at local round times
function drawTrendTimes(g, box, t0, now) {
  const x = trendX(box, t0, now);
  const span = now - t0;
  const ticks = [];
  if (span > 3 * 86400) {
    const d = new Date(t0 * 1000);
    d.setHours(0, 0, 0, 0);
    for (d.setDate(d.getDate() + 1); d.getTime() / 1000 <= now; d.setDate(d.getDate() + 1)) {
      if (d.getDay() === 1) {  // Mondays
        ticks.push([d.getTime() / 1000, d.toLocaleDateString([], { month: "short", day: "numeric" })]);
      }
    }
  } else {
    const step = span > 4 * 3600 ? 3 * 3600 : 600;
    const offset = new Date(t0 * 1000).getTimezoneOffset() * 60;  // local round times
    for (let t = Math.ceil((t0 - offset) / step) * step + offset; t <= now; t += step) {
      ticks.push([t, new Date(t * 1000).toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit" })]);
    }
  }
  const bottom = box.h - box.bottom;
  for (const [t, label] of ticks) {
    svg("line", { x1: x(t), x2: x(t), y1: box.top, y2: bottom, class: "grid" }, g);
    const text = svg("text", { x: x(t), y: box.h - 4, class: "tick", "text-anchor": "middle" }, g);
    text.textContent = label;
  }
  svg("line", { x1: box.left, x2: box.w - box.right, y1: bottom, y2: bottom, class: "axis" }, g);
}

// "M x,y L x,y ..." with a new "M" after a gap of more than 3 rows; isolated points as dots
function trendPath(g, times, values, x, y, step, cls) {
  let d = "";
  let run = [];
  const flush = () => {
    if (run.length === 1) svg("circle", { cx: run[0][0], cy: run[0][1], r: 1.8, class: `${cls} dot` }, g);
    run = [];
  };
  let last = null;
  let points = 0;
  for (let i = 0; i < times.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) continue;
    const p = [x(times[i]), y(v)];
    const jump = last === null || times[i] - last > 3 * step;
    if (jump) flush();
    d += `${jump ? "M" : "L"}${p[0].toFixed(1)},${p[1].toFixed(1)} `;
    run.push(p);
    last = times[i];
    points += 1;
  }
  flush();
  const path = svg("path", { d: d.trim() || "M0,0", class: cls }, g);
  path.dataset.points = String(points);
  return path;
}

// a strip of coloured runs under the plot: each row's worst state (or zone), from its start to the next row's
function drawStrip(g, box, times, values, step, x, cls, attr) {
  const y0 = box.h - box.bottom + 3;
  let i = 0;
  while (i < times.length) {
    const v = values[i];
    let j = i;
    while (j + 1 < times.length && values[j + 1] === v && times[j + 1] - times[j] <= 3 * step) j++;
    if (v) {
      const xa = x(times[i]);
      const xb = Math.max(xa + 1, x(times[j] + step));
      const r = svg("rect", { x: xa, y: y0, width: xb - xa, height: 7, class: cls }, g);
      r.dataset[attr] = v;
    }
    i = j + 1;
  }
}

function drawTrendScore(g, times, score, threshold, state, overRange, episodes, step, t0, now) {
  g.replaceChildren();
  const box = TREND;
  const x = trendX(box, t0, now);
  const bottom = box.h - box.bottom;
  if (!times.length) {
    drawTrendTimes(g, box, t0, now);
    const t = svg("text", { x: box.w / 2, y: box.h / 2, class: "empty", "text-anchor": "middle" }, g);
    t.textContent = "nothing scored in this span";
    g.dataset.points = "0";
    return;
  }
  const finite = score.filter((v) => typeof v === "number");
  const thr = threshold.filter((v) => typeof v === "number");
  const hi = Math.max(0, ...finite);
  const ref = thr.length ? thr[thr.length - 1] : 0;
  // a score that grew by orders of magnitude: a log scale keeps the threshold and the healthy level readable
  const log = ref > 0 && hi / ref > 8;
  let y;
  let ticks;
  if (log) {
    const positive = [...finite, ...thr].filter((v) => v > 0);
    const lo = Math.min(...positive) / 1.5;
    const top = hi * 1.3;
    const [a, b] = [Math.log10(lo), Math.log10(top)];
    y = (v) => bottom - (bottom - box.top) * (Math.log10(Math.max(v, lo)) - a) / (b - a);
    ticks = [];
    for (let e = Math.ceil(a); e <= b; e++) ticks.push(10 ** e);
  } else {
    const top = Math.max(1e-9, 1.1 * hi, 1.5 * Math.max(0, ...thr));
    y = (v) => bottom - (bottom - box.top) * Math.min(v, top) / top;
    ticks = [0, top / 2, top];
  }
  for (const e of episodes) {
    const xa = x(e.start);
    const r = svg("rect", { x: xa, y: box.top, width: Math.max(2, x(e.end) - xa), height: bottom - box.top,
                            class: `episode ${e.severity}` }, g);
    r.dataset.start = String(e.start);
    r.dataset.end = String(e.end);
    svg("title", {}, r).textContent = `${e.severity} alert ${when(e.start)} – ${e.open ? "still active" : when(e.end)}` +
      (e.reason ? `: ${e.reason}` : "");
  }
  drawTrendTimes(g, box, t0, now);
  for (const v of ticks) {
    const t = svg("text", { x: box.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, g);
    t.textContent = fmt(v, 2);
  }
  if (log) {
    const t = svg("text", { x: box.left + 4, y: box.top + 10, class: "tick" }, g);
    t.textContent = "log scale";
  }
  trendPath(g, times, threshold, x, y, step, "trend-threshold");
  const line = trendPath(g, times, score, x, y, step, "trend-score-line");
  g.dataset.points = line.dataset.points;
  g.dataset.scale = log ? "log" : "linear";
  for (let i = 0; i < times.length; i++) {
    if (score[i] === null && overRange[i] > 0) {  // over range: beyond anything the model can score
      const xo = x(times[i]);
      svg("path", { d: `M${xo - 4},${box.top + 7} L${xo + 4},${box.top + 7} L${xo},${box.top} Z`, class: "over" }, g);
    }
  }
  if (ref) {
    const t = svg("text", { x: box.w - box.right - 2, y: y(ref) - 4, class: "thr-label", "text-anchor": "end" }, g);
    t.textContent = `threshold ${fmt(ref, 3)}`;
  }
  drawStrip(g, box, times, state, step, x, "state-strip", "state");
}

function drawTrendVelocity(g, times, velocity, zone, step, t0, now) {
  g.replaceChildren();
  const box = TRENDV;
  const x = trendX(box, t0, now);
  const bottom = box.h - box.bottom;
  drawTrendTimes(g, box, t0, now);
  const finite = velocity.filter((v) => typeof v === "number");
  g.dataset.points = String(finite.length);
  if (!finite.length) {
    const t = svg("text", { x: box.w / 2, y: (box.top + bottom) / 2 + 4, class: "empty", "text-anchor": "middle" }, g);
    t.textContent = "no velocity measured in this span";
    return;
  }
  const top = Math.max(1e-6, ...finite) * 1.15;
  const y = (v) => bottom - (bottom - box.top) * v / top;
  for (const v of [0, top]) {
    const t = svg("text", { x: box.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, g);
    t.textContent = fmt(v, 2);
  }
  trendPath(g, times, velocity, x, y, step, "trend-velocity-line");
  drawStrip(g, box, times, zone, step, x, "zone-strip", "zone");
}

function renderSummary(doc) {
  const gw = doc.gateway;
  clockOffset = doc.time - Date.now() / 1000;
  trendOf = gw.trend === undefined ? trendOf : gw.trend;
  document.getElementById("gateway").textContent = gw.gateway;
  document.title = `edge-agent ${gw.gateway}`;
  const parts = [
    `${gw.sensors_total} sensor${gw.sensors_total === 1 ? "" : "s"}`,
    `${gw.sensors_alerting} alerting`,
    `${fmt(gw.windows_scored, 12)} windows scored`,
    `up ${ago(gw.uptime_s)}`,
    gw.mqtt === null ? "no broker" : gw.mqtt_connected ? "broker connected" : "broker DISCONNECTED",
  ];
  const summary = document.getElementById("summary");
  summary.textContent = parts.join(" · ");
  summary.dataset.alerting = String(gw.sensors_alerting);
  const banner = document.getElementById("banner");
  if (gw.status_age_s > STALE_S) {
    banner.textContent = `the scoring loop has not refreshed these numbers for ${ago(gw.status_age_s)}`;
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
}

function renderWriter(doc) {
  writable = !!(doc.gateway.http && doc.gateway.http.writable);
  document.getElementById("writer").hidden = !writable;
  document.getElementById("mode").textContent = writable
    ? "Status of this gateway (answers need the write token)" : "Read-only status of this gateway";
}

function render(doc) {
  renderSummary(doc);
  renderWriter(doc);
  for (const [device, s] of Object.entries(doc.sensors)) {
    const c = cards.get(device) || makeCard(device);
    renderStats(c, s);
    renderHealth(c, s);
    renderAnswers(c, s);
    renderCondition(c, s);
    renderLastAlert(c, s.history);
    renderAlerts(c, s.history);
    renderChart(c, s.history, doc.time);
    renderSpark(c, s.history, doc.time);
  }
  document.body.dataset.updated = String(doc.time);
}

async function poll() {
  try {
    const r = await fetch("/api/status", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    render(await r.json());
  } catch (err) {
    const banner = document.getElementById("banner");
    banner.textContent = `cannot reach the agent (${err.message}); retrying`;
    banner.hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.getElementById("by").value = localStorage.getItem("edge-agent-by") || "";
document.getElementById("token").value = sessionStorage.getItem("edge-agent-token") || "";
poll();
setTimeout(refreshTrends, TREND_MS);
