"""Thumbnails of the images this service queues for captioning: a small WEBP per task, made with Pillow.

A task whose image came as bytes (an uploaded file, a data URI, raw base64, a
local file of `captions submit`: all queued as a data URI) gets a thumbnail in the
transaction that queues it, at most MAX_SIDE pixels on its longer side. An image
given by URL or by the UUID of a Runware upload gets none: its bytes are not
here, and the service fetches no URL a caller names. The original is never
served back; the thumbnail is (`GET /api/tasks/<uuid>/thumbnail`), kept for
THUMBNAIL_RETENTION_DAYS (workers/maintenance.py).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
from PIL import Image
from PIL import ImageOps

from store.schema import thumbnails

log = logging.getLogger(__name__)

MAX_SIDE = 160
"""Pixels on a thumbnail's longer side (the dashboard shows it at half that, sharp on a 2x screen)."""

QUALITY = 70
"""WEBP quality of a thumbnail (Pillow's 0-100)."""


def _image_bytes(input_ref: str | None) -> bytes | None:
    """The bytes of a data URI (how a task queues an image given as bytes); None for a URL or a UUID."""
    if not input_ref or not input_ref.startswith("data:"):
        return None
    try:
        return base64.b64decode(input_ref.split(",", 1)[1], validate=True)
    except (IndexError, binascii.Error):
        return None


def make(data: bytes) -> tuple[bytes, int, int]:
    """A WEBP thumbnail of image bytes (checked already: receiver/images.py), and its width and height."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (MAX_SIDE * 2, MAX_SIDE * 2))  # JPEG: decode at a fraction of the size
        small = ImageOps.exif_transpose(image)
        small.thumbnail((MAX_SIDE, MAX_SIDE))
        if small.mode not in ("RGB", "RGBA"):
            small = small.convert("RGBA" if small.has_transparency_data else "RGB")
        out = io.BytesIO()
        small.save(out, "WEBP", quality=QUALITY, method=4)
        return out.getvalue(), small.width, small.height


def save(conn: sa.Connection, queued: Iterable[tuple[str, str | None]], now: datetime) -> int:
    """Thumbnails of the (taskUUID, input_ref) just queued that carry image bytes; how many were made."""
    rows = []
    for task_uuid, input_ref in queued:
        data = _image_bytes(input_ref)
        if data is None:
            continue
        try:
            image, width, height = make(data)
        except (OSError, ValueError) as exc:  # the task is queued all the same: a thumbnail is an extra
            log.warning("no thumbnail for task %s: %s: %s", task_uuid, type(exc).__name__, exc)
            continue
        rows.append({"task_uuid": task_uuid, "image": image, "width": width, "height": height, "created_at": now})
    if rows:
        conn.execute(thumbnails.insert(), rows)
    return len(rows)


def get(conn: sa.Connection, task_uuid: str) -> bytes | None:
    return conn.scalar(sa.select(thumbnails.c.image).where(thumbnails.c.task_uuid == task_uuid))


def kept(conn: sa.Connection, task_uuids: Iterable[str]) -> set[str]:
    """Which of the tasks have a thumbnail (one query)."""
    uuids = list(task_uuids)
    if not uuids:
        return set()
    return set(conn.scalars(sa.select(thumbnails.c.task_uuid).where(thumbnails.c.task_uuid.in_(uuids))))
