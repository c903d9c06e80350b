// How figures and times read on the page (UTC throughout).

export const DAY_MS = 86400000;
export const HOUR_MS = 3600000;

const countFormat = new Intl.NumberFormat("en-US");
const moneyFormat = new Intl.NumberFormat("en-US", {
  style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 6,
});

export function count(n) {
  return countFormat.format(n);
}

export function money(usd) {
  return moneyFormat.format(usd);
}

// A task's cost in full (costs have up to 10 decimal places), without trailing zeros.
export function costText(usd) {
  return usd.toFixed(10).replace(/\.?0+$/, "");
}

export function utcTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toISOString().slice(0, 19).replace("T", " ");
}

export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), r = s % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + r + "s";
  return r + "s";
}

export function utcDay(date) {
  return date.toISOString().slice(0, 10);
}

// Midnight (UTC) of the day of `now`, in ms since the epoch.
export function midnight(now) {
  return Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
}
