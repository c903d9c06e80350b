"""The query API for dashboards and callers, read token required, JSON, never cached.

- `GET /api/tasks/<taskUUID>`: one task.
- `GET /api/tasks?status=&source=&since=&until=&q=&limit=&cursor=`: tasks, newest first, in pages.
  `q` searches captions by word through a full-text index (`store.search`):
  `red car` (every word), `"red car"` (a phrase: those words in that order),
  `lightho*` (a prefix of at least 2 letters or digits), and a taskUUID or a
  prefix of one of at least 8 hex digits also finds that task. Case does not
  matter; punctuation separates words; nothing is stemmed. A malformed query
  (unbalanced quote, a `*` that ends no prefix, nothing to search for, more
  than 16 terms) is a 400 naming `q` and the problem.
- `GET /api/stats?since=&until=`: counts, spend, deliveries and backlog for a time window.

Every bad query parameter is a 400 whose JSON body names it (see `receiver.params`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from flask import Blueprint
from flask import jsonify
from flask import request

from receiver.auth import require_bearer
from receiver.errors import error_response
from receiver.params import ParamError
from receiver.params import Params
from receiver.params import encode_cursor
from receiver.state import engine
from store import queries
from store import stats as stats_from
from store.schema import LATENCY_BOUNDS
from store.schema import SOURCES
from store.schema import STATUSES
from store.schema import utcnow
from workers.payloads import UUID_RE

bp = Blueprint("api", __name__, url_prefix="/api")

DEFAULT_LIMIT = 50
"""Tasks per page when `limit` is not given."""

MAX_LIMIT = 500
"""Most tasks one page may hold."""

MONEY_PLACES = Decimal("0.000001")
"""Spend is also given as a JSON number rounded to 6 places (the string is exact)."""


@bp.after_request
def never_cache(response):
    """Answers carry live data (and need a token): no cache may keep them."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.errorhandler(ParamError)
def bad_parameter(exc: ParamError):
    return error_response(400, exc.message, parameter=exc.parameter)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _money(amount: Decimal) -> dict:
    """Spend as a number rounded to 6 places (`usd`) and as the exact decimal string (`exact`)."""
    return {"usd": float(amount.quantize(MONEY_PLACES)), "exact": format(amount, "f")}


@bp.get("/tasks/<task_uuid>")
@require_bearer("read_tokens")
def get_task(task_uuid: str):
    return task_response(task_uuid)


def task_response(task_uuid: str):
    """One stored task as JSON; 400 for a malformed taskUUID, 404 for an unknown one."""
    if not UUID_RE.match(task_uuid):
        return error_response(400, "taskUUID must be a UUID")
    with engine().connect() as conn:
        task = queries.get_task(conn, task_uuid.lower())
    if task is None:
        return error_response(404, f"no task {task_uuid.lower()}")
    return jsonify(task)


@bp.get("/tasks")
@require_bearer("read_tokens")
def list_tasks():
    """Tasks, most recently updated first; follow `nextCursor` for the next page."""
    params = Params(request.args, ("status", "source", "since", "until", "q", "limit", "cursor"))
    statuses = params.choices("status", STATUSES)
    sources = params.choices("source", SOURCES)
    since, until = params.time_range()
    search = params.search("q")
    limit = params.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = params.cursor("cursor")
    with engine().connect() as conn:
        page, last = queries.list_tasks(
            conn, statuses=statuses, sources=sources, window=queries.Window(since, until),
            search=search, after=after, limit=limit,
        )
    return jsonify(tasks=page, limit=limit, nextCursor=encode_cursor(*last) if last else None)


@bp.get("/stats")
@require_bearer("read_tokens")
def stats():
    """Counts, spend, latency and backlog; `since` (inclusive) and `until` (exclusive) bound the window.

    From the hourly aggregates (store/stats.py). `tasksByModel` keys a task without a model as "";
    each latency histogram has one count per bound of `boundsSeconds` (at most that many seconds,
    more than the bound before) and a last one for everything slower.
    """
    params = Params(request.args, ("since", "until"))
    window = queries.Window(*params.time_range())
    now = utcnow()
    with engine().connect() as conn, queries.read_snapshot(conn).begin():
        created = stats_from.task_totals(conn, window)
        results = stats_from.result_totals(conn, window)
        outcomes, stored_latency = stats_from.delivery_totals(conn, window)
        dead, dead_pending = stats_from.dead_letter_counts(conn, window)
        waiting = stats_from.waiting_tasks(conn)
    oldest = None
    if waiting.oldest_uuid is not None:
        age = (now - waiting.oldest_submitted_at).total_seconds() if waiting.oldest_submitted_at else None
        oldest = {"taskUUID": waiting.oldest_uuid, "submittedAt": _iso(waiting.oldest_submitted_at),
                  "ageSeconds": round(age, 3) if age is not None else None}
    return jsonify(
        window={"since": _iso(window.since), "until": _iso(window.until)},
        generatedAt=now.isoformat(),
        tasks={
            "total": sum(created.by_status.values()),
            "byStatus": created.by_status,
            "bySource": created.by_source,
            "conflicts": created.conflicts,
            "averageDeliveries": (float(round(created.average_deliveries, 6))
                                  if created.average_deliveries is not None else None),
        },
        spend={
            **_money(results.spend),
            "successes": results.successes,
            "byDay": [
                {"day": d.day.isoformat(), "tasks": d.tasks, "successes": d.successes, "errors": d.errors,
                 **_money(d.spend)}
                for d in results.days
            ],
        },
        tasksByModel=created.by_model,
        deliveries={"received": sum(outcomes.values()), "byOutcome": outcomes},
        latency={"boundsSeconds": list(LATENCY_BOUNDS), "submittedToResult": results.latency,
                 "receivedToStored": stored_latency},
        deadLetters={"total": dead, "pending": dead_pending},
        waiting={"count": waiting.count, "oldest": oldest},
    )
