"""The query API for dashboards and callers: `GET /api/tasks/<taskUUID>`, read token required."""

from __future__ import annotations

from flask import Blueprint
from flask import jsonify

from receiver.auth import require_bearer
from receiver.errors import error_response
from receiver.state import engine
from store import queries
from workers.payloads import UUID_RE

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/tasks/<task_uuid>")
@require_bearer("read_tokens")
def get_task(task_uuid: str):
    if not UUID_RE.match(task_uuid):
        return error_response(400, "taskUUID must be a UUID")
    with engine().connect() as conn:
        task = queries.get_task(conn, task_uuid.lower())
    if task is None:
        return error_response(404, f"no task {task_uuid.lower()}")
    return jsonify(task)
