// The latest tasks: the table of GET /api/tasks, page by page, and its exports (.csv, .ndjson).

import {$, el, emptyRow, setText} from "./dom.js";
import {costText, count, utcTime} from "./format.js";
import {get, token, URLS} from "./api.js";
import {thumbnail} from "./thumbnails.js";
import {view} from "./view.js";

export const paging = {
  cursors: [null], // cursors[n] opens page n; page 0 needs none
  page: 0,
  next: null,
};

export function resetPaging() {
  paging.cursors = [null];
  paging.page = 0;
}

// The table's filters: what the list shows page by page, and what an export holds whole.
export function filterParams() {
  const params = {status: view.status, q: view.search};
  if (view.labelKey && view.labelValue) params["label." + view.labelKey] = view.labelValue;
  return params;
}

export function taskParams() {
  return {...filterParams(), limit: view.pageSize, cursor: paging.cursors[paging.page]};
}

// The labels of a task as chips, those given other values flagged.
export function labelChips(task) {
  const chips = [];
  const conflicting = task.labelConflicts || [];
  for (const [key, value] of Object.entries(task.labels || {})) {
    const chip = el("span", key + "=" + value, "chip");
    if (conflicting.includes(key)) {
      chip.classList.add("conflict");
      chip.title = "other values were given for " + key + "; the earliest is kept";
    }
    chips.push(chip);
  }
  return chips;
}

// A task's outcome as text: its caption, or its error code and message.
export function outcomeText(task) {
  return task.status === "error" ? [task.errorCode, task.errorMessage].filter(Boolean).join(": ") : task.text || "";
}

// `open(uuid)` shows a task's page.
export function drawTasks(page, open) {
  const rows = page.tasks.map((task) => {
    const row = el("tr");
    row.dataset.taskUuid = task.taskUUID;
    const uuid = el("td", null, "uuid");
    const button = el("button", task.taskUUID, "open-task");
    button.type = "button";
    button.title = "open this task's page";
    button.addEventListener("click", () => open(task.taskUUID));
    uuid.append(button);
    const status = el("td");
    status.append(el("span", task.status, "badge status-" + task.status));
    if (task.conflict) status.append(el("span", "conflict", "badge conflict"));
    const labels = el("td", null, "labels");
    labels.append(...labelChips(task));
    const caption = el("td", null, "caption");
    const image = thumbnail(task, 64);
    if (image) caption.append(image);
    caption.append(el("span", outcomeText(task), task.status === "error" ? "error-text" : "caption-text"));
    row.append(
      el("td", utcTime(task.updatedAt), "time"), uuid, status, el("td", task.source), labels, caption,
      el("td", task.cost === null ? "–" : costText(task.cost), "num"),
      el("td", count(task.deliveryCount), "num"), el("td", utcTime(task.createdAt), "time"),
    );
    return row;
  });
  $("tasks").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow("No tasks match.", 9)]));
  paging.next = page.nextCursor;
  $("prev-page").disabled = paging.page === 0;
  $("next-page").disabled = !page.nextCursor;
  setText("page-label", "Page " + (paging.page + 1));
}

// Every task of the table's filters, from GET /api/tasks.csv or .ndjson, saved as a file.
export async function exportTasks(format) {
  const bearer = token.get();
  if (!bearer) return;
  setText("export-status", "Exporting…");
  try {
    const response = await get(URLS.tasks + "." + format, filterParams(), bearer, "*/*");
    const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
    const link = el("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = named ? named[1] : "tasks." + format;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    setText("export-status", "Saved " + link.download);
  } catch (error) {
    setText("export-status", "Export failed: " + error.message);
  }
}
