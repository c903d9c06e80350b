"""The query API for dashboards and callers, read token required, JSON, never cached.

- `GET /api/tasks/<taskUUID>`: one task, with its history (deliveries, submission attempts, polls).
- `GET /api/tasks?status=&source=&since=&until=&q=&limit=&cursor=`: tasks, newest first, in pages.
  `q` searches captions by word through a full-text index (`store.search`):
  `red car` (every word), `"red car"` (a phrase: those words in that order),
  `lightho*` (a prefix of at least 2 letters or digits), and a taskUUID or a
  prefix of one of at least 8 hex digits also finds that task. Case does not
  matter; punctuation separates words; nothing is stemmed. A malformed query
  (unbalanced quote, a `*` that ends no prefix, nothing to search for, more
  than 16 terms) is a 400 naming `q` and the problem.
  `label.K=V` keeps the tasks carrying label K with value V (several: all of them).
- `GET /api/stats?since=&until=&groupBy=label.K`: counts, spend, deliveries and backlog for a time
  window; `groupBy` adds `groups`, per value of label K (store/labels.py).
- `GET /api/labels?values=`: the label keys, each with its most frequent values.

Every bad query parameter is a 400 whose JSON body names it (see `receiver.params`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from flask import Blueprint
from flask import jsonify
from flask import request

from receiver import labels as label_rules
from receiver.auth import require_bearer
from receiver.errors import error_response
from receiver.openapi import operation
from receiver.params import ParamError
from receiver.params import Params
from receiver.params import encode_cursor
from receiver.state import engine
from receiver.state import settings
from store import history
from store import labels as labels_from
from store import queries
from store import stats as stats_from
from store.replica import replica_lag
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

LABEL_PREFIX = "label."
"""Query parameters `label.K` filter tasks on label K; `groupBy=label.K` groups stats by it."""

DEFAULT_LABEL_VALUES, MAX_LABEL_VALUES = 10, 100
"""Values listed per key by `GET /api/labels` when `values` is not given, and at most."""

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


def money(amount: Decimal) -> dict:
    """Spend as a number rounded to 6 places (`usd`) and as the exact decimal string (`exact`)."""
    return {"usd": float(amount.quantize(MONEY_PLACES)), "exact": format(amount, "f")}


def label_filters(args) -> tuple[dict[str, str], dict]:
    """The `label.K=V` parameters as labels (checked as labels are), and the other parameters."""
    given = [(name, value) for name, value in args.items(multi=True) if name.startswith(LABEL_PREFIX)]
    try:
        filters = label_rules.checked((name[len(LABEL_PREFIX):], value) for name, value in given)
    except label_rules.LabelError as exc:
        raise ParamError(LABEL_PREFIX + exc.label, str(exc)) from None
    rest = args.copy()
    for name, _ in given:
        rest.pop(name, None)
    return filters, rest


def label_key(params: Params, name: str) -> str | None:
    """A `label.K` choice (as `groupBy` takes), as K; None when not given."""
    value = params.text(name)
    if value is None:
        return None
    key = value[len(LABEL_PREFIX):]
    if not value.startswith(LABEL_PREFIX) or not label_rules.KEY_RE.match(key):
        raise ParamError(name, f"must be {LABEL_PREFIX}K, K a label key (1 to 64 of A-Z a-z 0-9 _ . -)")
    return key


def group_json(group: labels_from.Group) -> dict:
    """One value of a groupBy: tasks by status, spend, and the success rate of the finished ones."""
    finished = group.successes + group.errors
    return {
        "value": group.value,
        "tasks": {"total": group.tasks, "byStatus": group.by_status},
        "spend": {**money(group.spend), "successes": group.successes, "errors": group.errors},
        "successRate": round(group.successes / finished, 6) if finished else None,
    }


@bp.get("/tasks/<task_uuid>")
@operation(summary="One task, with its history", tags=["tasks"], auth=("read",),
           responses={200: "TaskWithHistory"}, errors=(400, 404, 503))
@require_bearer("read_tokens")
def get_task(task_uuid: str):
    return task_response(task_uuid)


def task_response(task_uuid: str, primary: bool = False):
    """One stored task as JSON with its `history` (store/history.py); 400 for a malformed taskUUID, 404 for an
    unknown one. `primary`: read from DATABASE_URL even when the readers read a replica."""
    if not UUID_RE.match(task_uuid):
        return error_response(400, "taskUUID must be a UUID")
    with engine(primary).connect() as conn, queries.read_snapshot(conn).begin():
        task = queries.get_task(conn, task_uuid.lower())
        if task is not None:
            task["history"] = history.task_history(conn, task_uuid.lower())
    if task is None:
        return error_response(404, f"no task {task_uuid.lower()}")
    return jsonify(task)


@bp.get("/tasks")
@operation(summary="Tasks, newest first, in pages", tags=["tasks"], auth=("read",), query="TaskListQuery",
           responses={200: "TaskPage"}, errors=(400, 503))
@require_bearer("read_tokens")
def list_tasks():
    """Tasks, most recently updated first; follow `nextCursor` for the next page."""
    filters, params = list_filters(request.args, ("limit", "cursor"))
    limit = params.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = params.cursor("cursor")
    with engine().connect() as conn:
        page, last = queries.list_tasks(conn, **filters, after=after, limit=limit)
    return jsonify(tasks=page, limit=limit, nextCursor=encode_cursor(*last) if last else None)


LIST_FILTERS = ("status", "source", "since", "until", "q", "label.K")
"""The query parameters that choose which tasks the list (and its exports, receiver/exports.py) holds."""


def list_filters(args, also: tuple[str, ...] = ()) -> tuple[dict, Params]:
    """The list's filters in a query string, as keyword arguments of `store.queries.list_tasks`, and the
    query string's other parameters (`also` names those allowed beside the filters)."""
    labels, rest = label_filters(args)
    params = Params(rest, (*LIST_FILTERS, *also))
    filters = {
        "statuses": params.choices("status", STATUSES),
        "sources": params.choices("source", SOURCES),
        "window": queries.Window(*params.time_range()),
        "search": params.search("q"),
        "labels": labels,
    }
    return filters, params


@bp.get("/stats")
@operation(summary="Counts, spend, latency and backlog of a window", tags=["stats"], auth=("read",),
           query="StatsQuery", responses={200: "Stats"}, errors=(400, 503))
@require_bearer("read_tokens")
def stats():
    """Counts, spend, latency and backlog; `since` (inclusive) and `until` (exclusive) bound the window.

    From the hourly aggregates (store/stats.py), on DATABASE_READ_URL's replica when set (`replica` says how far
    behind its primary it is; null when reading the primary). `tasksByModel` keys a task without a model as "";
    each latency histogram has one count per bound of `boundsSeconds` (at most that many seconds,
    more than the bound before) and a last one for everything slower.
    """
    params = Params(request.args, ("since", "until", "groupBy"))
    window = queries.Window(*params.time_range())
    group_by = label_key(params, "groupBy")
    now = utcnow()
    with engine().connect() as conn, queries.read_snapshot(conn).begin():
        created = stats_from.task_totals(conn, window)
        results = stats_from.result_totals(conn, window)
        outcomes, stored_latency = stats_from.delivery_totals(conn, window)
        dead, dead_pending = stats_from.dead_letter_counts(conn, window)
        waiting = stats_from.waiting_tasks(conn)
        grouping = labels_from.grouping(conn, group_by, window) if group_by is not None else None
        lag = replica_lag(conn) if settings().database_read_url else None
    oldest = None
    if waiting.oldest_uuid is not None:
        age = (now - waiting.oldest_submitted_at).total_seconds() if waiting.oldest_submitted_at else None
        oldest = {"taskUUID": waiting.oldest_uuid, "submittedAt": _iso(waiting.oldest_submitted_at),
                  "ageSeconds": round(age, 3) if age is not None else None}
    grouped = {}
    if grouping is not None:
        # Each task has one value of the key at most: what the values do not hold has no such label.
        unlabeled = labels_from.Group(None, dict(created.by_status), results.successes,
                                      sum(d.errors for d in results.days), labels_from.units(results.spend))
        unlabeled.subtract(grouping.total)
        grouped = {"groups": {"key": group_by, "values": [group_json(g) for g in grouping.values],
                              "other": group_json(grouping.other) if grouping.other else None,
                              "distinctValues": grouping.distinct, "unlabeled": group_json(unlabeled)}}
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
            **money(results.spend),
            "successes": results.successes,
            "byDay": [
                {"day": d.day.isoformat(), "tasks": d.tasks, "successes": d.successes, "errors": d.errors,
                 **money(d.spend)}
                for d in results.days
            ],
        },
        tasksByModel=created.by_model,
        deliveries={"received": sum(outcomes.values()), "byOutcome": outcomes},
        latency={"boundsSeconds": list(LATENCY_BOUNDS), "submittedToResult": results.latency,
                 "receivedToStored": stored_latency},
        deadLetters={"total": dead, "pending": dead_pending},
        waiting={"count": waiting.count, "oldest": oldest},
        replica={"lagSeconds": round(lag, 3)} if lag is not None else None,
        **grouped,
    )


@bp.get("/labels")
@operation(summary="The label keys, each with its most frequent values", tags=["stats"], auth=("read",),
           query="LabelsQuery", responses={200: "Labels"}, errors=(400, 503))
@require_bearer("read_tokens")
def labels():
    """Every label key, most tasks first, with its `values` most frequent values (from `label_values`)."""
    params = Params(request.args, ("values",))
    per_key = params.integer("values", DEFAULT_LABEL_VALUES, 1, MAX_LABEL_VALUES)
    with engine().connect() as conn:
        keys = labels_from.keys(conn, per_key)
    return jsonify(labels=[
        {"key": k.key, "tasks": k.tasks, "distinctValues": k.distinct_values,
         "values": [{"value": value, "tasks": count} for value, count in k.values]}
        for k in keys
    ])
