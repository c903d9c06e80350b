// Talking to the read API: the token (this tab's sessionStorage only, sent only in the
// Authorization header), GET with the parameters that have a value, refusals as errors.

const TOKEN_KEY = "captions.readToken";
const data = document.body.dataset;

export const URLS = {
  stats: data.statsUrl,
  series: data.seriesUrl,
  tasks: data.tasksUrl,
  labels: data.labelsUrl,
  intake: data.statsUrl.replace(/\/stats$/, "/intake"),
};

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  forget: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class AuthError extends Error {}

// The server asked to wait: 503 or 429, with its Retry-After in milliseconds (0 if none).
export class BusyError extends Error {
  constructor(message, retryAfterMs) {
    super(message);
    this.retryAfterMs = retryAfterMs;
  }
}

// A query string of the parameters that have a value ("" for none).
export function queryString(params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") query.set(key, value);
  }
  return query.toString();
}

// GET `url` with `params`; refusals are thrown as AuthError or BusyError, other failures with the server's message.
export async function get(url, params, bearer, accept) {
  const text = queryString(params);
  const response = await fetch(text ? url + "?" + text : url, {
    headers: {Authorization: "Bearer " + bearer, Accept: accept},
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

export async function getJSON(url, params, bearer) {
  return (await get(url, params, bearer, "application/json")).json();
}

// A Retry-After header in milliseconds: delay-seconds or an HTTP date; 0 when absent or unreadable.
function retryAfterMs(header) {
  if (!header) return 0;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(header);
  return Number.isNaN(date) ? 0 : Math.max(0, date - Date.now());
}
