// Building the page from strings that are never markup: every text goes in through textContent.

export const $ = (id) => document.getElementById(id);

export function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

export function setText(id, text) {
  $(id).textContent = text;
}

// A table row of one cell spanning `columns`, saying there is nothing to show.
export function emptyRow(text, columns) {
  const row = el("tr");
  const cell = el("td", text, "empty");
  cell.colSpan = columns;
  row.append(cell);
  return row;
}
