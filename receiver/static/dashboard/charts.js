// Charts of GET /api/stats/series, drawn with uPlot (vendored: receiver/static/vendor/uplot): tasks per hour by
// status, spend per day, and latency percentiles per hour. uPlot draws on a canvas and writes its legend as
// text; its styles are its own stylesheet, linked by the page.

import uPlot from "../vendor/uplot/uPlot.esm.js";
import {$} from "./dom.js";
import {DAY_MS, HOUR_MS, midnight, money} from "./format.js";
import {view} from "./view.js";

const HEIGHT = 220;
const STATUSES = ["success", "error", "submitted", "queued"];
const charts = new Map(); // the element's id -> its uPlot

function color(name) {
  return getComputedStyle(document.documentElement).getPropertyValue("--" + name).trim();
}

// The series asked for: hours of the range (30 days at most, as for all time), days of it (a week at
// least, a year for all time).
export function seriesParams(bucket, now) {
  const today = midnight(now);
  let since;
  if (bucket === "hour") {
    since = view.range === "24h" ? Math.floor(now.getTime() / HOUR_MS) * HOUR_MS - 23 * HOUR_MS
      : today - (view.range === "7d" ? 6 : 29) * DAY_MS;
  } else {
    since = today - ({"24h": 6, "7d": 6, "30d": 29}[view.range] ?? 364) * DAY_MS;
  }
  return {bucket, since: new Date(since).toISOString()};
}

// Draw `data` (x first) in the element `id` with `series`; the chart is made on the first answer, then fed.
function draw(id, series, data, y = {}) {
  let chart = charts.get(id);
  if (chart) {
    chart.setData(data);
    return;
  }
  const box = $(id);
  chart = new uPlot({
    width: box.clientWidth || 600,
    height: HEIGHT,
    series: [{}, ...series],
    scales: {x: {time: true}, y: y.scale || {}},
    axes: [{}, {size: 64, values: y.values, splits: y.splits, filter: y.splits && ((u, splits) => splits)}],
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    hooks: {draw: [(u) => { u.root.dataset.drawn = String(Number(u.root.dataset.drawn || 0) + 1); }]},
  }, data, box);
  charts.set(id, chart);
}

// A series drawn as a line; `dots` marks each value too (a value between two gaps would show no line).
function line(label, stroke, dash, dots = false) {
  return {label, stroke, width: 2, dash, points: dots ? {show: true, size: 5, fill: stroke} : {show: false},
    spanGaps: false};
}

function times(answer) {
  return answer.buckets.map((b) => Date.parse(b.start) / 1000);
}

// Tasks created per hour, by their status now; latency percentiles of the tasks finished each hour.
export function drawHours(answer) {
  const x = times(answer);
  draw("chart-tasks", STATUSES.map((s) => line(s, color(s))),
    [x, ...STATUSES.map((s) => answer.buckets.map((b) => b.tasks.byStatus[s]))]);
  const toResult = (p) => answer.buckets.map((b) => b.latency.submittedToResult[p]);
  draw("chart-latency", [
    line("p50 submitted → result", color("accent"), null, true), line("p95", color("submitted"), null, true),
    line("p99", color("error"), null, true), line("p99 received → stored", color("muted"), [4, 4], true),
  ], [x, toResult("p50"), toResult("p95"), toResult("p99"), answer.buckets.map((b) => b.latency.receivedToStored.p99)],
  {scale: {distr: 3, range: () => [answer.boundsSeconds[0], answer.boundsSeconds.at(-1)]},
    splits: () => answer.boundsSeconds, values: (u, ticks) => ticks.map(seconds)});
}

// A bound of the latency histograms, as it reads best.
function seconds(s) {
  if (s < 1) return Math.round(s * 1000) + " ms";
  return s >= 60 ? s / 60 + " min" : s + " s";
}

// Spend per day (USD, the day of the result), as bars.
export function drawDays(answer) {
  draw("chart-spend", [{label: "spend (USD)", stroke: color("accent"), fill: color("accent"),
    paths: uPlot.paths.bars({size: [0.7, 60]}), points: {show: false}, value: (u, v) => (v === null ? "–" : money(v))}],
  [times(answer), answer.buckets.map((b) => b.spend.usd)], {values: (u, ticks) => ticks.map((v) => money(v))});
}

export function resizeCharts() {
  for (const [id, chart] of charts) chart.setSize({width: $(id).clientWidth, height: HEIGHT});
}
