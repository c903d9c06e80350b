// What the page shows (range, filters, grouping, rows, the open task) and its place in the URL's
// fragment, so a view can be shared and reloads as it was: #range=all&status=error&q=dog&task=<uuid>.
// The fragment never reaches the server, so searches stay out of its logs.

import {$} from "./dom.js";

export const view = {
  range: "7d",
  status: "",
  search: "",
  labelKey: "", // the label filter of the task list: both key and value, or none
  labelValue: "",
  groupKey: "", // the label key spend is grouped by ("" until the keys are known)
  pageSize: 20,
  task: "", // the taskUUID of the task page shown, or none
};

// Each field's name in the fragment, and the form control that shows it (if any).
const FIELDS = {
  range: ["range", "range"], status: ["status", "status-filter"], search: ["q", "search"],
  labelKey: ["labelKey", "label-key"], labelValue: ["labelValue", "label-value"], groupKey: ["groupBy", "group-key"],
  pageSize: ["rows", "page-size"], task: ["task", null],
};

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const defaults = {};

// Whether `value` may be `field`'s: one of its list's options, a UUID for the task, any text otherwise.
function allowed(field, value) {
  if (field === "task") return UUID.test(value);
  const control = FIELDS[field][1] && $(FIELDS[field][1]);
  if (control && control.tagName === "SELECT" && field !== "groupKey") {
    return [...control.options].some((option) => option.value === value);
  }
  return value.length <= 256;
}

// The view the form holds when the page opens, to leave out of the fragment what is as it comes.
export function rememberDefaults() {
  for (const field of Object.keys(FIELDS)) {
    const id = FIELDS[field][1];
    if (id && $(id).tagName === "SELECT" && field !== "groupKey") view[field] = fieldValue(field, $(id).value);
    defaults[field] = view[field];
  }
}

// A default found later (the first label key, once the keys are known): the URL leaves it out.
export function setDefault(field, value) {
  defaults[field] = value;
}

function fieldValue(field, text) {
  return field === "pageSize" ? Number(text) : text;
}

// The view of the URL's fragment: fields it names and allows; the others as they come. The fragment is then
// rewritten to the view taken.
export function readURL() {
  const given = new URLSearchParams(location.hash.slice(1));
  for (const [field, [name]] of Object.entries(FIELDS)) {
    let value = (given.get(name) || "").trim();
    if (field === "task") value = value.toLowerCase();
    view[field] = value && allowed(field, value) ? fieldValue(field, value) : defaults[field];
  }
  for (const [field, [, id]] of Object.entries(FIELDS)) {
    if (id && field !== "groupKey") $(id).value = String(view[field]);
  }
  writeURL(false);
}

// The fragment of the view; `push` makes a history entry (opening or leaving a task page), else it replaces.
export function writeURL(push) {
  const fragment = new URLSearchParams();
  for (const [field, [name]] of Object.entries(FIELDS)) {
    if (view[field] !== defaults[field]) fragment.set(name, String(view[field]));
  }
  const text = fragment.toString();
  const url = location.pathname + location.search + (text ? "#" + text : "");
  if (url === location.pathname + location.search + location.hash) return;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}
