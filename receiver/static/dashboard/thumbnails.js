// Thumbnails of the tasks' images (GET /api/tasks/<uuid>/thumbnail), read with the token and drawn on a canvas:
// the page's CSP takes images from this origin's URLs alone (an <img> could not send the token, and a blob: URL
// is not this origin), and a canvas needs neither. Each is read once per page, MAX_AT_ONCE at a time, outside
// the poll loop; one that could not be read is read again when next shown.

import {el} from "./dom.js";
import {token, URLS} from "./api.js";

const MAX_AT_ONCE = 2;
const bitmaps = new Map(); // taskUUID -> Promise of its ImageBitmap, or of null
const waiting = [];
let running = 0;

function next() {
  while (running < MAX_AT_ONCE && waiting.length) {
    const job = waiting.shift();
    running += 1;
    job().finally(() => {
      running -= 1;
      next();
    });
  }
}

// `work()` once fewer than MAX_AT_ONCE run; its result, or null when it failed.
function queued(work) {
  return new Promise((resolve) => {
    waiting.push(() => work().then(resolve, () => resolve(null)));
    next();
  });
}

async function read(uuid) {
  const response = await fetch(URLS.tasks + "/" + encodeURIComponent(uuid) + "/thumbnail", {
    headers: {Authorization: "Bearer " + token.get()},
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  return response.ok ? createImageBitmap(await response.blob()) : null;
}

function bitmap(uuid) {
  if (!bitmaps.has(uuid)) {
    const loading = queued(() => read(uuid));
    bitmaps.set(uuid, loading);
    loading.then((found) => { if (!found) bitmaps.delete(uuid); });
  }
  return bitmaps.get(uuid);
}

// A canvas that shows the task's thumbnail, at most `side` CSS pixels on its longer side, once read; null for a
// task without one.
export function thumbnail(task, side) {
  if (!task.thumbnail) return null;
  const canvas = el("canvas", null, "thumb");
  canvas.width = canvas.height = 0;
  bitmap(task.taskUUID).then((image) => {
    if (!image) return;
    const scale = Math.min(1, side / Math.max(image.width, image.height));
    canvas.width = image.width;
    canvas.height = image.height;
    canvas.style.width = Math.round(image.width * scale) + "px";
    canvas.getContext("2d").drawImage(image, 0, 0);
    canvas.dataset.drawn = "1";
  });
  return canvas;
}
