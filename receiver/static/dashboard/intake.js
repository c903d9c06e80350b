// GET /api/intake, the sibling of /api/stats: whether webhooks are accepted (backpressure),
// Redis memory against its bound, the deliveries waiting there, and the time until the
// intake refuses at the current rate. The panel is built on its first answer.

import {$, el, setText} from "./dom.js";
import {count, duration} from "./format.js";

const CARDS = [["intake-state", "Webhooks"], ["intake-memory", "Redis memory / bound"],
  ["intake-backlog", "Deliveries waiting in Redis"], ["intake-full", "Refusing at this rate in"]];

function intakePanel() {
  if ($("intake")) return;
  const panel = el("section", null, "panel");
  panel.id = "intake";
  const cards = el("div", null, "cards");
  for (const [id, label] of CARDS) {
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

export function drawIntake(status) {
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
