"""`GET /api/tasks/<taskUUID>/thumbnail`: the WEBP thumbnail of a task's image (store/thumbnails.py); read token.

A task's thumbnail never changes once made, so the answer may be kept a year by
the caller's own cache (`private`: never by a shared one, the token chose it).
The dashboard reads it with its token and draws it on a canvas, so the page's
Content-Security-Policy is unchanged.
"""

from __future__ import annotations

from flask import Blueprint
from flask import Response

from receiver.auth import require_bearer
from receiver.errors import error_response
from receiver.openapi import operation
from receiver.state import engine
from store import thumbnails
from workers.payloads import UUID_RE

bp = Blueprint("thumbnails", __name__, url_prefix="/api")

CACHE_CONTROL = "private, max-age=31536000, immutable"


@bp.get("/tasks/<task_uuid>/thumbnail")
@operation(summary="The thumbnail of a task's image (WEBP)", tags=["tasks"], auth=("read",),
           responses={200: {"image/webp": None}}, errors=(400, 404, 503))
@require_bearer("read_tokens")
def thumbnail(task_uuid: str):
    """400 for a malformed taskUUID; 404 for a task without a thumbnail (an image given by URL or UUID, one
    older than THUMBNAIL_RETENTION_DAYS, or no such task)."""
    if not UUID_RE.match(task_uuid):
        return error_response(400, "taskUUID must be a UUID")
    with engine().connect() as conn:
        image = thumbnails.get(conn, task_uuid.lower())
    if image is None:
        return error_response(404, f"no thumbnail of task {task_uuid.lower()}")
    return Response(image, mimetype="image/webp",
                    headers={"Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"})
