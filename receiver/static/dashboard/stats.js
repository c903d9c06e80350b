// The figures of GET /api/stats for the range shown: cards and the spend per day.

import {$, el, emptyRow, setText} from "./dom.js";
import {count, DAY_MS, duration, midnight, money, utcDay} from "./format.js";
import {view} from "./view.js";

// The window asked of /api/stats: whole UTC days for 7 and 30 days, so the
// per-day rows are complete; the last 24 hours from now.
export function rangeSince(range, now) {
  switch (range) {
    case "24h": return new Date(now.getTime() - DAY_MS);
    case "7d": return new Date(midnight(now) - 6 * DAY_MS);
    case "30d": return new Date(midnight(now) - 29 * DAY_MS);
    default: return null;
  }
}

function rangeLabel(range) {
  return {"24h": "in the last 24 hours", "7d": "in the last 7 days", "30d": "in the last 30 days"}[range]
    || "all time";
}

export function statsParams(now) {
  const since = rangeSince(view.range, now);
  return {since: since ? since.toISOString() : null, groupBy: view.groupKey ? "label." + view.groupKey : null};
}

export function drawStats(stats, now) {
  const tasks = stats.tasks;
  setText("count-total", count(tasks.total));
  for (const status of ["success", "error", "submitted", "queued"]) {
    setText("count-" + status, count(tasks.byStatus[status] || 0));
  }
  setText("count-sources", count(tasks.bySource.submitted || 0) + " / " + count(tasks.bySource.external || 0));
  setText("conflicts", count(tasks.conflicts));
  setText("avg-deliveries", tasks.averageDeliveries === null ? "–" : tasks.averageDeliveries.toFixed(2));
  setText("deliveries", count(stats.deliveries.received));
  setText("dead-letters", count(stats.deadLetters.total) + " (" + count(stats.deadLetters.pending) + ")");

  const waiting = stats.waiting;
  setText("waiting", waiting.count === 0 ? "none"
    : count(waiting.count) + " · oldest " + duration(waiting.oldest.ageSeconds || 0));

  // Shown only when the figures come from DATABASE_READ_URL's replica: how old they may be.
  $("replica-card").hidden = stats.replica === null;
  if (stats.replica !== null) {
    const lag = stats.replica.lagSeconds;
    setText("replica-lag", lag < 1 ? lag.toFixed(1) + "s" : duration(lag));
  }

  const spend = stats.spend;
  setText("spend-range", money(spend.usd));
  $("spend-range").title = spend.exact + " USD exactly, " + count(spend.successes) + " successes";
  const today = spend.byDay.find((d) => d.day === utcDay(now));
  setText("spend-today", money(today ? today.usd : 0));
  $("spend-today").title = (today ? today.exact : "0") + " USD exactly";
  for (const label of document.querySelectorAll(".range-label")) label.textContent = rangeLabel(view.range);
  drawDays(spend.byDay, stats.window.since ? new Date(stats.window.since) : null, now);
}

// One row per day of the window, newest first; days without results show zeros.
// "All time" shows only the days that had results.
function drawDays(byDay, since, now) {
  const known = new Map(byDay.map((d) => [d.day, d]));
  let days = byDay.map((d) => d.day);
  if (since) {
    days = [];
    for (let t = Date.parse(utcDay(since)); t <= now.getTime(); t += DAY_MS) days.push(utcDay(new Date(t)));
  }
  days.reverse();
  const most = Math.max(0, ...byDay.map((d) => d.usd));
  const rows = days.map((day) => {
    const d = known.get(day) || {tasks: 0, successes: 0, errors: 0, usd: 0, exact: "0"};
    const row = el("tr");
    row.dataset.day = day;
    row.append(el("td", day), el("td", count(d.tasks), "num"), el("td", count(d.successes), "num"),
      el("td", count(d.errors), "num"));
    const spendCell = el("td", money(d.usd), "num");
    spendCell.title = d.exact + " USD exactly";
    const bar = el("span", null, "bar");
    bar.style.width = (most > 0 ? (100 * d.usd) / most : 0).toFixed(1) + "%";
    const barCell = el("td", null, "bar-cell");
    barCell.append(bar);
    row.append(spendCell, barCell);
    return row;
  });
  $("days").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow("No results in this range.", 6)]));
}
