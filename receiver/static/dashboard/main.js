// The dashboard's entry module: signs in with a read token, then polls the read API and draws the
// board (figures, charts, spend by label, the latest tasks, the intake) or the page of one task.
//
// Rules its modules keep:
// - the token lives in sessionStorage (this tab only) and travels only in the
//   Authorization header: never in a URL, a cookie or the console (api.js);
// - every string from the server (captions above all) is untrusted and reaches
//   the page through textContent, never as HTML (the page's CSP enforces
//   Trusted Types, so an HTML sink would throw).

import {$, setText} from "./dom.js";
import {DAY_MS} from "./format.js";
import {AuthError, getJSON, token, URLS} from "./api.js";
import {readURL, rememberDefaults, view, writeURL} from "./view.js";
import {configure, poll, restart, showStatus, stop, visibilityChanged} from "./poll.js";
import {drawStats, statsParams} from "./stats.js";
import {drawGroups, drawKeys} from "./labels.js";
import {drawTasks, exportTasks, paging, resetPaging, taskParams} from "./tasks.js";
import {clearTask, drawTask, loadTask} from "./task.js";
import {drawIntake} from "./intake.js";
import {drawDays, drawHours, resizeCharts, seriesParams} from "./charts.js";

// The board's panels, in the order a poll refreshes them (the stats first).
const BOARD = [
  {load: (bearer, now) => getJSON(URLS.stats, statsParams(now), bearer),
    draw: (stats, now) => { drawStats(stats, now); drawGroups(stats); }},
  {load: (bearer, now) => getJSON(URLS.series, seriesParams("hour", now), bearer), draw: drawHours},
  {load: (bearer, now) => getJSON(URLS.series, seriesParams("day", now), bearer), draw: drawDays},
  {load: (bearer) => getJSON(URLS.tasks, taskParams(), bearer), draw: (page) => drawTasks(page, openTask)},
  {load: (bearer) => getJSON(URLS.intake, {}, bearer), draw: drawIntake},
  {load: (bearer) => getJSON(URLS.labels, {values: 1}, bearer), draw: drawKeys},
];

// A task's page refreshes alone.
const TASK = [{load: (bearer) => loadTask(view.task, bearer), draw: drawTask}];

configure({
  panels: () => (view.task ? TASK : BOARD),
  refused: () => signOut("The token was refused. Sign in again."),
  signedOut: () => showLogin(""),
});

// --- the view shown -------------------------------------------------------------------------

// The board, or the open task's page, as the view says.
function showView() {
  const signedIn = Boolean(token.get());
  $("login").hidden = signedIn;
  $("controls").hidden = !signedIn;
  $("board").hidden = !signedIn || Boolean(view.task);
  $("task-detail").hidden = !signedIn || !view.task;
  if (signedIn && view.task) clearTask(view.task, "Loading…");
  if (signedIn && !view.task) resizeCharts();
}

function openTask(uuid) {
  view.task = uuid;
  writeURL(true);
  showView();
  window.scrollTo(0, 0);
  restart();
}

function closeTask() {
  view.task = "";
  writeURL(true);
  showView();
  restart();
}

// A control of the board changed `field` to `value`; the list starts again at its first page when `repage`.
function changed(field, value, repage) {
  view[field] = value;
  if (repage) resetPaging();
  writeURL(false);
  restart();
}

// --- signing in and out -------------------------------------------------------------------

function showLogin(message) {
  stop();
  showView();
  setText("login-error", message || "");
  showStatus("signed-out", "");
  $("token").focus();
}

function signOut(message) {
  token.forget();
  showLogin(message);
}

async function signIn(event) {
  event.preventDefault();
  const input = $("token");
  const given = input.value.trim();
  input.value = "";
  if (!given) return;
  setText("login-error", "Checking…");
  try {
    await getJSON(URLS.stats, {since: new Date(Date.now() - DAY_MS).toISOString()}, given);
  } catch (error) {
    setText("login-error", error instanceof AuthError ? "That token was refused." : "Sign-in failed: " + error.message);
    return;
  }
  token.set(given);
  setText("login-error", "");
  showView();
  resetPaging();
  restart();
}

// --- wiring -------------------------------------------------------------------------------

// Typing waits for a pause before it filters.
function onTyping(id, field) {
  let typing = null;
  $(id).addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => changed(field, e.target.value.trim(), true), 300);
  });
}

function start() {
  $("login-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  $("range").addEventListener("change", (e) => changed("range", e.target.value, false));
  $("status-filter").addEventListener("change", (e) => changed("status", e.target.value, true));
  $("page-size").addEventListener("change", (e) => changed("pageSize", Number(e.target.value), true));
  onTyping("search", "search");
  onTyping("label-key", "labelKey");
  onTyping("label-value", "labelValue");
  $("group-key").addEventListener("change", (e) => changed("groupKey", e.target.value, false));
  $("group-form").addEventListener("submit", (e) => e.preventDefault());
  $("task-filter").addEventListener("submit", (e) => e.preventDefault());
  for (const button of document.querySelectorAll("button.export")) {
    button.addEventListener("click", () => exportTasks(button.dataset.format));
  }
  $("detail-close").addEventListener("click", closeTask);
  $("next-page").addEventListener("click", () => {
    if (!paging.next) return;
    paging.cursors[paging.page + 1] = paging.next;
    paging.page += 1;
    restart();
  });
  $("prev-page").addEventListener("click", () => {
    if (paging.page === 0) return;
    paging.page -= 1;
    restart();
  });
  // Back, forward, or a shared link pasted into this tab: show the view its fragment holds.
  window.addEventListener("popstate", () => {
    readURL();
    resetPaging();
    showView();
    restart();
  });
  window.addEventListener("resize", resizeCharts);
  document.addEventListener("visibilitychange", () => {
    if (token.get()) visibilityChanged();
  });

  rememberDefaults();
  readURL();
  showView();
  if (token.get()) poll();
  else showLogin("");
}

start();
