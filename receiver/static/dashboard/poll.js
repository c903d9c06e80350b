// The poll loop: every panel of the view in turn, one request at a time.
//
// It polls responsibly: never a new poll while one is in flight; when answers
// are slow, refused (503, 429) or fail, the wait doubles with each such poll,
// up to a cap, and is never shorter than the server's Retry-After; one good
// answer brings the normal interval back. A hidden tab does not poll at all,
// and refreshes at once when it is shown again. The status line says when the
// figures are stale and why.

import {$} from "./dom.js";
import {utcTime} from "./format.js";
import {AuthError, BusyError, token} from "./api.js";

const body = document.body;
const POLL_MS = Math.max(1000, Number(body.dataset.pollMs) || 3000);
// The longest wait between polls that the backoff reaches (the server's Retry-After may ask for more).
const MAX_BACKOFF_MS = 60000;
// Waits after slow or refused answers are stretched by up to this fraction, at random, so
// that tabs sent away together do not all come back at the same moment.
const BACKOFF_JITTER = 0.1;

const loop = {
  timer: null,
  generation: 0, // bumped on sign-out and on every change of view, to drop stale answers
  inFlight: false, // a poll is running
  again: false, // a poll was asked for while one ran: it starts when that one ends
  strikes: 0, // slow or failed polls in a row
  notBefore: 0, // the server asked not to be polled before this time (ms since the epoch)
  updatedAt: null, // when the poll that drew the figures shown began
};

// panels(): what a poll refreshes, in order, each {load(bearer, now), draw(answer, now)}; a draw that returns
// true asks for another poll at once. refused(): the token was refused. signedOut(): there is no token.
const hooks = {panels: () => [], refused: () => {}, signedOut: () => {}};

export function configure(given) {
  Object.assign(hooks, given);
}

// One poll: every panel in turn. Never two at once: one asked for while another
// runs starts when that one ends. A hidden tab does not poll.
export async function poll() {
  const bearer = token.get();
  if (!bearer) return hooks.signedOut();
  if (loop.inFlight) {
    loop.again = true;
    return;
  }
  clearTimeout(loop.timer);
  if (document.hidden) return showPaused();
  loop.inFlight = true;
  loop.again = false;
  const generation = loop.generation;
  const started = new Date();
  let failure = null;
  try {
    for (const panel of hooks.panels()) {
      const now = new Date();
      const answer = await panel.load(bearer, now);
      if (generation !== loop.generation) break; // the view changed meanwhile: poll again
      if (panel.draw(answer, now) === true) loop.again = true;
    }
  } catch (error) {
    failure = error;
  } finally {
    loop.inFlight = false;
  }
  if (generation === loop.generation) {
    if (failure instanceof AuthError) return hooks.refused();
    if (!failure) {
      loop.updatedAt = started;
      body.dataset.refreshed = String(Number(body.dataset.refreshed || 0) + 1);
    }
  }
  if (!token.get()) return; // signed out meanwhile
  const wait = nextWait(failure, Date.now() - started.getTime());
  showOutcome(failure, wait);
  if (loop.again || generation !== loop.generation) return pollSoon();
  schedule(wait);
}

// The wait before the next poll. After a quick good answer, the interval; after
// a slow poll (longer than the interval) or a failed one, a wait that doubles
// with each such poll in a row, up to MAX_BACKOFF_MS, and never shorter than
// the Retry-After of a server that asked to wait.
function nextWait(failure, elapsed) {
  if (!failure && elapsed < POLL_MS) {
    loop.strikes = 0;
    loop.notBefore = 0;
    return POLL_MS;
  }
  loop.strikes += 1;
  let wait = Math.min(MAX_BACKOFF_MS, POLL_MS * 2 ** loop.strikes);
  if (failure instanceof BusyError) wait = Math.max(wait, failure.retryAfterMs);
  wait = Math.round(wait * (1 + BACKOFF_JITTER * Math.random()));
  if (failure instanceof BusyError) loop.notBefore = Date.now() + wait;
  return wait;
}

function showOutcome(failure, wait) {
  const next = utcTime(new Date(Date.now() + wait)).slice(11) + " UTC"; // the time of day
  if (!failure && loop.strikes === 0) {
    showStatus("fresh", "Updated " + utcTime(loop.updatedAt) + " UTC · refreshing every "
      + Math.round(POLL_MS / 1000) + " s");
  } else if (!failure) {
    showStatus("slow", "Updated " + utcTime(loop.updatedAt) + " UTC · the server is slow; next refresh at " + next);
  } else if (failure instanceof BusyError) {
    showStatus("waiting", "The server asked to wait (" + failure.message + ")" + figuresFrom()
      + " · next try at " + next);
  } else {
    showStatus("stale", "Could not refresh (" + failure.message + ")" + figuresFrom() + " · next try at " + next);
  }
}

function figuresFrom() {
  return loop.updatedAt ? " · the figures are from " + utcTime(loop.updatedAt) + " UTC" : " · no figures yet";
}

function showPaused() {
  showStatus("paused", "Paused while this tab is hidden" + figuresFrom());
}

// The status line: a state (fresh, slow, waiting, stale, paused, signed-out) and a sentence, as text.
export function showStatus(name, text) {
  const line = $("status-line");
  line.dataset.state = name;
  line.textContent = text;
  $("board").classList.toggle("stale", name === "waiting" || name === "stale");
}

function schedule(wait) {
  clearTimeout(loop.timer);
  if (document.hidden) return showPaused();
  loop.timer = setTimeout(poll, wait);
}

// Poll now, or as soon as the server allows it.
function pollSoon() {
  const wait = loop.notBefore - Date.now();
  if (wait > 0) schedule(wait);
  else poll();
}

// The view changed: answers under way are dropped, and a poll of the new view starts as soon as it may.
export function restart() {
  loop.generation += 1;
  pollSoon();
}

// Signed out: no poll until signed in again.
export function stop() {
  clearTimeout(loop.timer);
  loop.generation += 1;
}

// The tab was shown (poll at once, unless one is under way) or hidden (no poll until shown).
export function visibilityChanged() {
  if (!document.hidden) {
    if (!loop.inFlight) pollSoon(); // one in flight brings fresh figures anyway
  } else {
    clearTimeout(loop.timer);
    if (!loop.inFlight) showPaused();
  }
}
