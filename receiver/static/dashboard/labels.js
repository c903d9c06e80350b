// Spend by label: the groups of /api/stats?groupBy=label.K, and the keys of /api/labels to choose K from.

import {$, el, emptyRow} from "./dom.js";
import {count, money} from "./format.js";
import {setDefault, view} from "./view.js";

// The 50 largest values, the other values summed, and the tasks without the label.
export function drawGroups(stats) {
  const groups = stats.groups || null;
  const rows = [];
  if (groups && groups.key === view.groupKey) {
    for (const group of groups.values) rows.push(groupRow(group.value, group, "value"));
    if (groups.other) {
      rows.push(groupRow("other " + count(groups.distinctValues - groups.values.length) + " values", groups.other,
        "other"));
    }
    rows.push(groupRow("without " + groups.key, groups.unlabeled, "unlabeled"));
  } else {
    rows.push(emptyRow(view.groupKey ? "Loading…" : "No labels yet.", 6));
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

// The keys fill the chooser; the first is chosen until another is. Returns whether the key chosen changed
// (its groups are then to be read at once).
export function drawKeys(answer) {
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
  let changed = false;
  if (!keys.includes(view.groupKey)) {
    const first = keys.length ? keys[0] : "";
    setDefault("groupKey", first);
    view.groupKey = first;
    changed = Boolean(first);
  }
  chooser.value = view.groupKey;
  return changed;
}
