// A task's page: GET /api/tasks/<uuid> drawn as text (status, caption, cost, labels, times) and its timeline.

import {$, el, setText} from "./dom.js";
import {costText, utcTime} from "./format.js";
import {getJSON, URLS} from "./api.js";
import {labelChips, outcomeText} from "./tasks.js";
import {thumbnail} from "./thumbnails.js";

const KINDS = {delivery: "webhook", submission: "sent to Runware", poll: "polled"};

export function loadTask(uuid, bearer) {
  return getJSON(URLS.tasks + "/" + encodeURIComponent(uuid), {}, bearer);
}

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

// The facts of a task, as term and value.
function facts(task) {
  return [
    ["Status", task.status + (task.conflict ? " (conflict: a later success disagreed)" : "")],
    ["Cost", task.cost === null ? "–" : costText(task.cost) + " USD"],
    ["Model", task.model || "–"], ["Task type", task.taskType || "–"], ["Source", task.source],
    ["Submitted", utcTime(task.submittedAt)], ["Created", utcTime(task.createdAt)],
    ["Updated", utcTime(task.updatedAt)], ["Deliveries", String(task.deliveryCount)],
  ];
}

export function drawTask(task) {
  setText("detail-uuid", task.taskUUID);
  const caption = $("detail-caption");
  caption.textContent = outcomeText(task) || "(no caption yet)";
  caption.className = task.status === "error" ? "detail-caption error-text" : "detail-caption";
  const holder = $("detail-thumb");
  if (holder.dataset.taskUuid !== task.taskUUID) { // made once per task shown, not at every refresh
    holder.dataset.taskUuid = task.taskUUID;
    const image = thumbnail(task, 160);
    holder.replaceChildren(...(image ? [image] : []));
  }
  setText("detail-summary", [task.status, task.cost === null ? null : costText(task.cost) + " USD", outcomeText(task)]
    .filter(Boolean).join(" · "));
  $("detail-facts").replaceChildren(...facts(task).flatMap(([term, value]) => [el("dt", term), el("dd", value)]));
  const chips = labelChips(task);
  $("detail-labels").replaceChildren(...(chips.length ? chips : [el("span", "none", "muted")]));
  const items = task.history.map(timelineItem);
  $("timeline").replaceChildren(...(items.length ? items : [el("li", "No event yet, or none kept (older than the log).")]));
}

// The page while its task is read, or when it cannot be.
export function clearTask(uuid, message) {
  setText("detail-uuid", uuid);
  setText("detail-summary", message);
  for (const id of ["detail-thumb", "detail-caption", "detail-facts", "detail-labels", "timeline"]) {
    $(id).replaceChildren();
  }
  delete $("detail-thumb").dataset.taskUuid;
}
