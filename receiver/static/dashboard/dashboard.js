// The dashboard's script: signs in with a read token, then polls /api/stats,
// /api/tasks and /api/labels and draws them.
//
// It polls responsibly: one request at a time and never a new poll while one is
// in flight; when answers are slow, refused (503, 429) or fail, the wait doubles
// with each such poll, up to a cap, and is never shorter than the server's
// Retry-After; one good answer brings the normal interval back. A hidden tab
// does not poll at all, and refreshes at once when it is shown again. The status
// line says when the figures are stale and why.
//
// Rules this file keeps:
// - the token lives in sessionStorage (this tab only) and travels only in the
//   Authorization header: never in a URL, a cookie or the console;
// - every string from the server (captions above all) is untrusted and reaches
//   the page through textContent, never as HTML (the page's CSP enforces
//   Trusted Types, so an HTML sink would throw).
"use strict";

(function () {
  const TOKEN_KEY = "captions.readToken";
  const body = document.body;
  const POLL_MS = Math.max(1000, Number(body.dataset.pollMs) || 3000);
  // The longest wait between polls that the backoff reaches (the server's Retry-After may ask for more).
  const MAX_BACKOFF_MS = 60000;
  // Waits after slow or refused answers are stretched by up to this fraction, at random, so
  // that tabs sent away together do not all come back at the same moment.
  const BACKOFF_JITTER = 0.1;
  const STATS_URL = body.dataset.statsUrl;
  const TASKS_URL = body.dataset.tasksUrl;
  const LABELS_URL = body.dataset.labelsUrl;
  const DAY_MS = 86400000;

  const state = {
    range: "7d",
    status: "",
    search: "",
    labelKey: "", // the label filter of the task list: both key and value, or none
    labelValue: "",
    groupKey: "", // the label key spend is grouped by ("" until the keys are known)
    pageSize: 20,
    cursors: [null], // cursors[n] opens page n; page 0 needs none
    page: 0,
    nextCursor: null,
    timer: null,
    generation: 0, // bumped on sign-out and on every filter change, to drop stale answers
    inFlight: false, // a poll is running
    again: false, // a poll was asked for while one ran: it starts when that one ends
    strikes: 0, // slow or failed polls in a row
    notBefore: 0, // the server asked not to be polled before this time (ms since the epoch)
    updatedAt: null, // when the poll that drew the figures shown began
  };

  class AuthError extends Error {}

  // The server asked to wait: 503 or 429, with its Retry-After in milliseconds (0 if none).
  class BusyError extends Error {
    constructor(message, retryAfterMs) {
      super(message);
      this.retryAfterMs = retryAfterMs;
    }
  }

  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function setText(id, text) {
    $(id).textContent = text;
  }

  // --- formatting -------------------------------------------------------------------------

  const countFormat = new Intl.NumberFormat("en-US");
  const moneyFormat = new Intl.NumberFormat("en-US", {
    style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 6,
  });

  function count(n) {
    return countFormat.format(n);
  }

  function money(usd) {
    return moneyFormat.format(usd);
  }

  // A task's cost in full (costs have up to 10 decimal places), without trailing zeros.
  function costText(usd) {
    return usd.toFixed(10).replace(/\.?0+$/, "");
  }

  function utcTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toISOString().slice(0, 19).replace("T", " ");
  }

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60), r = s % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + r + "s";
    return r + "s";
  }

  function utcDay(date) {
    return date.toISOString().slice(0, 10);
  }

  // --- the range ----------------------------------------------------------------------------

  // The window asked of /api/stats: whole UTC days for 7 and 30 days, so the
  // per-day rows are complete; the last 24 hours from now.
  function rangeSince(range, now) {
    const midnight = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
    switch (range) {
      case "24h": return new Date(now.getTime() - DAY_MS);
      case "7d": return new Date(midnight - 6 * DAY_MS);
      case "30d": return new Date(midnight - 29 * DAY_MS);
      default: return null;
    }
  }

  function rangeLabel(range) {
    return {"24h": "in the last 24 hours", "7d": "in the last 7 days", "30d": "in the last 30 days"}[range]
      || "all time";
  }

  // --- talking to the API -----------------------------------------------------------------

  // GET `url` with the parameters that have a value; refusals are thrown as AuthError or BusyError.
  async function get(url, params, token, accept) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== "") query.set(key, value);
    }
    const text = query.toString();
    const response = await fetch(text ? url + "?" + text : url, {
      headers: {Authorization: "Bearer " + token, Accept: accept},
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    if (response.status === 401) throw new AuthError("the token was refused");
    if (response.status === 503 || response.status === 429) {
      throw new BusyError("HTTP " + response.status, retryAfterMs(response.headers.get("Retry-After")));
    }
    if (!response.ok) {
      let answer = null;
      try {
        answer = await response.json();
      } catch (ignored) {
        answer = null;
      }
      throw new Error(answer && answer.error ? answer.error.message : "HTTP " + response.status);
    }
    return response;
  }

  async function getJSON(url, params, token) {
    return (await get(url, params, token, "application/json")).json();
  }

  // A Retry-After header in milliseconds: delay-seconds or an HTTP date; 0 when absent or unreadable.
  function retryAfterMs(header) {
    if (!header) return 0;
    const seconds = Number(header);
    if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
    const date = Date.parse(header);
    return Number.isNaN(date) ? 0 : Math.max(0, date - Date.now());
  }

  function statsParams(now) {
    const since = rangeSince(state.range, now);
    return {since: since ? since.toISOString() : null, groupBy: state.groupKey ? "label." + state.groupKey : null};
  }

  // The table's filters: what the list shows page by page, and what an export holds whole.
  function filterParams() {
    const params = {status: state.status, q: state.search};
    if (state.labelKey && state.labelValue) params["label." + state.labelKey] = state.labelValue;
    return params;
  }

  function taskParams() {
    return {...filterParams(), limit: state.pageSize, cursor: state.cursors[state.page]};
  }

  // --- drawing ------------------------------------------------------------------------------

  function drawStats(stats, now) {
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

    const spend = stats.spend;
    setText("spend-range", money(spend.usd));
    $("spend-range").title = spend.exact + " USD exactly, " + count(spend.successes) + " successes";
    const today = spend.byDay.find((d) => d.day === utcDay(now));
    setText("spend-today", money(today ? today.usd : 0));
    $("spend-today").title = (today ? today.exact : "0") + " USD exactly";
    for (const label of document.querySelectorAll(".range-label")) label.textContent = rangeLabel(state.range);
    drawDays(spend.byDay, stats.window.since ? new Date(stats.window.since) : null, now);
    drawGroups(stats.groups || null);
  }

  // --- spend by label -----------------------------------------------------------------------

  // The groups of /api/stats?groupBy=label.K for the range shown: the 50 largest
  // values, the other values summed, and the tasks without the label.
  function drawGroups(groups) {
    const rows = [];
    if (groups && groups.key === state.groupKey) {
      for (const group of groups.values) rows.push(groupRow(group.value, group, "value"));
      if (groups.other) {
        rows.push(groupRow("other " + count(groups.distinctValues - groups.values.length) + " values", groups.other,
          "other"));
      }
      rows.push(groupRow("without " + groups.key, groups.unlabeled, "unlabeled"));
    } else {
      const row = el("tr");
      const cell = el("td", state.groupKey ? "Loading…" : "No labels yet.", "empty");
      cell.colSpan = 6;
      row.append(cell);
      rows.push(row);
    }
    $("label-groups").tBodies[0].replaceChildren(...rows);
  }

  function groupRow(name, group, kind) {
    const row = el("tr", null, kind);
    const rate = group.successRate === null ? "–" : (100 * group.successRate).toFixed(1) + "%";
    const spend = el("td", money(group.spend.usd), "num");
    spend.title = group.spend.exact + " USD exactly";
    row.append(el("td", name), el("td", count(group.tasks.total), "num"), el("td", count(group.spend.successes), "num"),
      el("td", count(group.spend.errors), "num"), el("td", rate, "num"), spend);
    return row;
  }

  // The keys of GET /api/labels fill the chooser; the first is chosen until another is.
  function drawKeys(answer) {
    const keys = answer.labels.map((k) => k.key);
    const chooser = $("group-key");
    if (chooser.dataset.keys !== JSON.stringify(keys)) { // rebuilt only when the keys change (an open list stays)
      chooser.dataset.keys = JSON.stringify(keys);
      chooser.replaceChildren(...keys.map((key) => {
        const option = el("option", key);
        option.value = key;
        return option;
      }));
    }
    chooser.disabled = keys.length === 0;
    if (!keys.includes(state.groupKey)) {
      state.groupKey = keys.length ? keys[0] : "";
      if (state.groupKey) state.again = true; // the groups of the key chosen, at once
    }
    chooser.value = state.groupKey;
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
    if (!rows.length) {
      const row = el("tr");
      const cell = el("td", "No results in this range.", "empty");
      cell.colSpan = 6;
      row.append(cell);
      rows.push(row);
    }
    $("days").tBodies[0].replaceChildren(...rows);
  }

  function drawTasks(page) {
    const rows = page.tasks.map((task) => {
      const row = el("tr");
      row.dataset.taskUuid = task.taskUUID;
      const uuid = el("td", null, "uuid");
      const open = el("button", task.taskUUID, "open-task");
      open.type = "button";
      open.title = "show this task's history";
      open.addEventListener("click", () => showTask(task.taskUUID));
      uuid.append(open);
      const status = el("td");
      status.append(el("span", task.status, "badge status-" + task.status));
      if (task.conflict) status.append(el("span", "conflict", "badge conflict"));
      const labels = el("td", null, "labels");
      const conflicting = task.labelConflicts || [];
      for (const [key, value] of Object.entries(task.labels || {})) {
        const chip = el("span", key + "=" + value, "chip");
        if (conflicting.includes(key)) {
          chip.classList.add("conflict");
          chip.title = "other values were given for " + key + "; the earliest is kept";
        }
        labels.append(chip);
      }
      const caption = el("td", null, "caption");
      if (task.status === "error") {
        caption.append(el("span", [task.errorCode, task.errorMessage].filter(Boolean).join(": "), "error-text"));
      } else {
        caption.textContent = task.text === null ? "" : task.text;
      }
      row.append(
        el("td", utcTime(task.updatedAt), "time"), uuid, status, el("td", task.source), labels, caption,
        el("td", task.cost === null ? "–" : costText(task.cost), "num"),
        el("td", count(task.deliveryCount), "num"), el("td", utcTime(task.createdAt), "time"),
      );
      return row;
    });
    if (!rows.length) {
      const row = el("tr");
      const cell = el("td", "No tasks match.", "empty");
      cell.colSpan = 9;
      row.append(cell);
      rows.push(row);
    }
    $("tasks").tBodies[0].replaceChildren(...rows);
    state.nextCursor = page.nextCursor;
    $("prev-page").disabled = state.page === 0;
    $("next-page").disabled = !page.nextCursor;
    setText("page-label", "Page " + (state.page + 1));
  }

  // --- exports and a task's history ---------------------------------------------------------

  // Every task of the table's filters, from GET /api/tasks.csv or .ndjson, saved as a file.
  async function exportTasks(format) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return;
    setText("export-status", "Exporting…");
    try {
      const response = await get(TASKS_URL + "." + format, filterParams(), token, "*/*");
      const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
      const link = el("a");
      link.href = URL.createObjectURL(await response.blob());
      link.download = named ? named[1] : "tasks." + format;
      body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 60000);
      setText("export-status", "Saved " + link.download);
    } catch (error) {
      setText("export-status", "Export failed: " + error.message);
    }
  }

  const KINDS = {delivery: "webhook", submission: "sent to Runware", poll: "polled"};

  // One line of the timeline: when, what, what it said of the task, and whether that became the result.
  function timelineItem(event) {
    const item = el("li", null, "event kind-" + event.kind);
    item.append(el("span", utcTime(event.at), "time"), el("span", KINDS[event.kind] || event.kind, "badge"));
    if (event.status) item.append(el("span", event.status, "badge status-" + event.status));
    if (event.changedResult) item.append(el("span", "set the result", "badge changed"));
    const delivery = event.delivery;
    const said = delivery && delivery.item ? (delivery.item.text || "") : "";
    const words = [event.detail, said].filter(Boolean).join(" · ");
    if (words) item.append(el("span", words, "event-text"));
    if (delivery) {
      item.append(el("span", "from " + (delivery.remoteAddr || "?") + " · " + delivery.outcome, "event-from"));
    }
    return item;
  }

  async function showTask(uuid) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return;
    const panel = $("task-detail");
    setText("detail-uuid", uuid);
    panel.hidden = false;
    try {
      const task = await getJSON(TASKS_URL + "/" + encodeURIComponent(uuid), {}, token);
      const outcome = task.status === "error" ? [task.errorCode, task.errorMessage].filter(Boolean).join(": ")
        : task.text || "";
      setText("detail-summary", [task.status, task.cost === null ? null : costText(task.cost) + " USD", outcome]
        .filter(Boolean).join(" · "));
      const items = task.history.map(timelineItem);
      $("timeline").replaceChildren(...(items.length ? items : [el("li", "Nothing kept (older than the log).")]));
    } catch (error) {
      setText("detail-summary", "Could not read the task: " + error.message);
      $("timeline").replaceChildren();
    }
    panel.scrollIntoView({block: "nearest"});
  }

  // --- the intake panel ---------------------------------------------------------------------

  // GET /api/intake, the sibling of /api/stats: whether webhooks are accepted (backpressure),
  // Redis memory against its bound, the deliveries waiting there, and the time until the
  // intake refuses at the current rate. The panel is built on its first answer.
  const INTAKE_URL = STATS_URL.replace(/\/stats$/, "/intake");
  const INTAKE_CARDS = [["intake-state", "Webhooks"], ["intake-memory", "Redis memory / bound"],
    ["intake-backlog", "Deliveries waiting in Redis"], ["intake-full", "Refusing at this rate in"]];

  function intakePanel() {
    if ($("intake")) return;
    const panel = el("section", null, "panel");
    panel.id = "intake";
    const cards = el("div", null, "cards");
    for (const [id, label] of INTAKE_CARDS) {
      const value = el("span", "–", "value");
      value.id = id;
      const card = el("div", null, "card");
      card.append(el("span", label, "label"), value);
      cards.append(card);
    }
    panel.append(el("h2", "Intake and Redis memory", "section-title"), cards);
    $("board").append(panel);
  }

  function bytes(n) {
    return n >= 1048576 ? (n / 1048576).toFixed(1) + " MB" : Math.round(n / 1024) + " KB";
  }

  function drawIntake(status) {
    intakePanel();
    setText("intake-state", status.accepting ? "accepting"
      : "refused (503), retry in " + duration(status.retry_after_seconds || 0));
    $("intake-state").parentElement.classList.toggle("status-error", !status.accepting);
    const used = status.used_memory_bytes, bound = status.max_memory_bytes;
    setText("intake-memory", bound === null ? bytes(used) + " (no bound)"
      : bytes(used) + " / " + bytes(bound) + " (" + Math.round((100 * used) / bound) + "%; refused from "
        + Math.round((100 * status.high_water_bytes) / bound) + "%)");
    setText("intake-backlog", count(status.backlog)
      + (status.backlog ? " · oldest " + duration(status.oldest_pending_seconds) : ""));
    setText("intake-full", status.seconds_to_full === null ? "not filling" : duration(status.seconds_to_full));
  }

  // --- the panels ---------------------------------------------------------------------------

  // What a poll refreshes, in this order, one request at a time: each panel loads
  // its answer, then draws it. A new panel is one more entry, with a load and a
  // draw function of its own.
  const PANELS = [
    {load: (token, now) => getJSON(STATS_URL, statsParams(now), token), draw: drawStats},
    {load: (token) => getJSON(TASKS_URL, taskParams(), token), draw: drawTasks},
    {load: (token) => getJSON(INTAKE_URL, {}, token), draw: drawIntake},
    {load: (token) => getJSON(LABELS_URL, {values: 1}, token), draw: drawKeys},
  ];

  // --- the poll loop ------------------------------------------------------------------------

  // One poll: every panel in turn. Never two at once: one asked for while another
  // runs starts when that one ends. A hidden tab does not poll.
  async function poll() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return showLogin("");
    if (state.inFlight) {
      state.again = true;
      return;
    }
    clearTimeout(state.timer);
    if (document.hidden) return showPaused();
    state.inFlight = true;
    state.again = false;
    const generation = state.generation;
    const started = new Date();
    let failure = null;
    try {
      for (const panel of PANELS) {
        const now = new Date();
        const answer = await panel.load(token, now);
        if (generation !== state.generation) break; // the filters changed meanwhile: poll again
        panel.draw(answer, now);
      }
    } catch (error) {
      failure = error;
    } finally {
      state.inFlight = false;
    }
    if (generation === state.generation) {
      if (failure instanceof AuthError) return signOut("The token was refused. Sign in again.");
      if (!failure) {
        state.updatedAt = started;
        body.dataset.refreshed = String(Number(body.dataset.refreshed || 0) + 1);
      }
    }
    if (!sessionStorage.getItem(TOKEN_KEY)) return; // signed out meanwhile
    const wait = nextWait(failure, Date.now() - started.getTime());
    showOutcome(failure, wait);
    if (state.again || generation !== state.generation) return pollSoon();
    schedule(wait);
  }

  // The wait before the next poll. After a quick good answer, the interval; after
  // a slow poll (longer than the interval) or a failed one, a wait that doubles
  // with each such poll in a row, up to MAX_BACKOFF_MS, and never shorter than
  // the Retry-After of a server that asked to wait.
  function nextWait(failure, elapsed) {
    if (!failure && elapsed < POLL_MS) {
      state.strikes = 0;
      state.notBefore = 0;
      return POLL_MS;
    }
    state.strikes += 1;
    let wait = Math.min(MAX_BACKOFF_MS, POLL_MS * 2 ** state.strikes);
    if (failure instanceof BusyError) wait = Math.max(wait, failure.retryAfterMs);
    wait = Math.round(wait * (1 + BACKOFF_JITTER * Math.random()));
    if (failure instanceof BusyError) state.notBefore = Date.now() + wait;
    return wait;
  }

  function showOutcome(failure, wait) {
    const next = utcTime(new Date(Date.now() + wait)).slice(11) + " UTC"; // the time of day
    if (!failure && state.strikes === 0) {
      showStatus("fresh", "Updated " + utcTime(state.updatedAt) + " UTC · refreshing every "
        + Math.round(POLL_MS / 1000) + " s");
    } else if (!failure) {
      showStatus("slow", "Updated " + utcTime(state.updatedAt) + " UTC · the server is slow; next refresh at " + next);
    } else if (failure instanceof BusyError) {
      showStatus("waiting", "The server asked to wait (" + failure.message + ")" + figuresFrom()
        + " · next try at " + next);
    } else {
      showStatus("stale", "Could not refresh (" + failure.message + ")" + figuresFrom() + " · next try at " + next);
    }
  }

  function figuresFrom() {
    return state.updatedAt ? " · the figures are from " + utcTime(state.updatedAt) + " UTC" : " · no figures yet";
  }

  function showPaused() {
    showStatus("paused", "Paused while this tab is hidden" + figuresFrom());
  }

  // The status line: a state (fresh, slow, waiting, stale, paused) and a sentence, as text.
  function showStatus(name, text) {
    const line = $("status-line");
    line.dataset.state = name;
    line.textContent = text;
    $("board").classList.toggle("stale", name === "waiting" || name === "stale");
  }

  function schedule(wait) {
    clearTimeout(state.timer);
    if (document.hidden) return showPaused();
    state.timer = setTimeout(poll, wait);
  }

  // Poll now, or as soon as the server allows it.
  function pollSoon() {
    const wait = state.notBefore - Date.now();
    if (wait > 0) schedule(wait);
    else poll();
  }

  function restart() {
    state.generation += 1;
    pollSoon();
  }

  function resetPaging() {
    state.cursors = [null];
    state.page = 0;
  }

  // --- signing in and out -------------------------------------------------------------------

  function showLogin(message) {
    clearTimeout(state.timer);
    $("board").hidden = true;
    $("controls").hidden = true;
    $("login").hidden = false;
    setText("login-error", message || "");
    showStatus("signed-out", "");
    $("token").focus();
  }

  function showBoard() {
    $("login").hidden = true;
    $("board").hidden = false;
    $("controls").hidden = false;
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.generation += 1;
    showLogin(message);
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("token");
    const token = input.value.trim();
    input.value = "";
    if (!token) return;
    setText("login-error", "Checking…");
    try {
      await getJSON(STATS_URL, {since: new Date(Date.now() - DAY_MS).toISOString()}, token);
    } catch (error) {
      setText("login-error", error instanceof AuthError ? "That token was refused." : "Sign-in failed: " + error.message);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    setText("login-error", "");
    showBoard();
    resetPaging();
    restart();
  }

  // --- wiring -------------------------------------------------------------------------------

  function start() {
    $("login-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    $("range").addEventListener("change", (e) => { state.range = e.target.value; restart(); });
    $("status-filter").addEventListener("change", (e) => { state.status = e.target.value; resetPaging(); restart(); });
    $("page-size").addEventListener("change", (e) => { state.pageSize = Number(e.target.value); resetPaging(); restart(); });
    let typing = null;
    $("search").addEventListener("input", (e) => {
      clearTimeout(typing);
      typing = setTimeout(() => { state.search = e.target.value.trim(); resetPaging(); restart(); }, 300);
    });
    for (const [id, field] of [["label-key", "labelKey"], ["label-value", "labelValue"]]) {
      let labelTyping = null;
      $(id).addEventListener("input", (e) => {
        clearTimeout(labelTyping);
        labelTyping = setTimeout(() => { state[field] = e.target.value.trim(); resetPaging(); restart(); }, 300);
      });
    }
    $("group-key").addEventListener("change", (e) => { state.groupKey = e.target.value; restart(); });
    $("group-form").addEventListener("submit", (e) => e.preventDefault());
    $("task-filter").addEventListener("submit", (e) => e.preventDefault());
    for (const button of document.querySelectorAll("button.export")) {
      button.addEventListener("click", () => exportTasks(button.dataset.format));
    }
    $("detail-close").addEventListener("click", () => { $("task-detail").hidden = true; });
    $("next-page").addEventListener("click", () => {
      if (!state.nextCursor) return;
      state.cursors[state.page + 1] = state.nextCursor;
      state.page += 1;
      restart();
    });
    $("prev-page").addEventListener("click", () => {
      if (state.page === 0) return;
      state.page -= 1;
      restart();
    });
    document.addEventListener("visibilitychange", () => {
      if (!sessionStorage.getItem(TOKEN_KEY)) return;
      if (!document.hidden) {
        if (!state.inFlight) pollSoon(); // one in flight brings fresh figures anyway
      } else {
        clearTimeout(state.timer);
        if (!state.inFlight) showPaused();
      }
    });

    state.range = $("range").value;
    state.status = $("status-filter").value;
    state.pageSize = Number($("page-size").value);
    if (sessionStorage.getItem(TOKEN_KEY)) {
      showBoard();
      poll();
    } else {
      showLogin("");
    }
  }

  start();
})();
