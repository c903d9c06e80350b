"""`GET /api/stats/series?bucket=hour|day&since=&until=`: the stats per bucket, for charts; read token required.

The window is whole buckets: `since` and `until` must fall on UTC hours
(`bucket=hour`) or UTC midnights (`bucket=day`), and may span at most
MAX_BUCKETS of them. Without `until` the window ends with the bucket now under
way; without `since` it starts DEFAULT_BUCKETS before `until`. Every bucket of the
window is listed, empty ones too, so a chart can take the list as its x axis.
The figures come from the aggregates alone (store/series.py).
"""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint
from flask import jsonify
from flask import request

from receiver import api
from receiver.auth import require_bearer
from receiver.openapi import operation
from receiver.params import ParamError
from receiver.params import Params
from receiver.state import engine
from store import queries
from store import series as series_from
from store.schema import LATENCY_BOUNDS
from store.schema import utcnow

bp = Blueprint("series", __name__, url_prefix="/api")
bp.after_request(api.never_cache)
bp.errorhandler(ParamError)(api.bad_parameter)

MAX_BUCKETS = 1000
"""Most buckets one series may hold (41 days of hours, 2.7 years of days)."""

DEFAULT_BUCKETS = {"hour": 48, "day": 30}
"""Buckets a series holds when `since` is not given."""


def _start_of(t: datetime, bucket: str) -> datetime:
    t = t.replace(minute=0, second=0, microsecond=0)
    return t.replace(hour=0) if bucket == "day" else t


def window(params: Params, bucket: str, now: datetime) -> tuple[datetime, datetime]:
    """The series' window, checked: whole buckets, `since` before `until`, at most MAX_BUCKETS."""
    step = series_from.BUCKETS[bucket]
    since, until = params.time_range()
    for name, t in (("since", since), ("until", until)):
        if t is not None and _start_of(t, bucket) != t:
            raise ParamError(name, f"must be a whole {'UTC hour' if bucket == 'hour' else 'UTC day (midnight)'}"
                                   f" for bucket={bucket}")
    try:
        until = until or _start_of(now, bucket) + step
        since = since or until - DEFAULT_BUCKETS[bucket] * step
    except OverflowError:
        raise ParamError("until", "too early: the default since would fall before year 1") from None
    if until <= since:
        raise ParamError("until", "must be later than since")
    if (until - since) // step > MAX_BUCKETS:
        raise ParamError("since", f"the window holds {(until - since) // step} {bucket}s; at most {MAX_BUCKETS}")
    return since, until


def _latency(histogram: list[int]) -> dict:
    points = {f"p{round(q * 100)}": bound for q, bound in series_from.percentiles(histogram).items()}
    return {"count": sum(histogram), **points, "histogram": histogram}


def figures_json(figures: series_from.Figures, deliveries: bool = True) -> dict:
    """A bucket's (or a model's) figures; `deliveries` False leaves out received -> stored (no model of its own)."""
    mean = figures.mean_cost
    return {
        "tasks": {"total": sum(figures.by_status.values()), "byStatus": figures.by_status},
        "finished": {"successes": figures.successes, "errors": figures.errors, "successRate": figures.success_rate},
        "spend": api.money(figures.spend),
        "meanCost": api.money(mean) if mean is not None else None,
        "latency": {"submittedToResult": _latency(figures.to_result),
                    "receivedToStored": _latency(figures.to_stored) if deliveries else None},
    }


@bp.get("/stats/series")
@operation(summary="Stats per hour or day, for charts", tags=["stats"], auth=("read",), query="SeriesQuery",
           responses={200: "StatsSeries"}, errors=(400, 503))
@require_bearer("read_tokens")
def stats_series():
    """Per bucket: tasks created by status, tasks finished, spend, mean cost, success rate, latency percentiles;
    the same over the window, and per model (`""`: none)."""
    params = Params(request.args, ("bucket", "since", "until"))
    bucket = params.text("bucket") or "hour"
    if bucket not in series_from.BUCKETS:
        raise ParamError("bucket", f"{bucket!r} is not one of {', '.join(series_from.BUCKETS)}")
    since, until = window(params, bucket, utcnow())
    with engine().connect() as conn, queries.read_snapshot(conn).begin():
        found = series_from.series(conn, bucket, since, until)
    return jsonify(
        bucket=bucket,
        window={"since": since.isoformat(), "until": until.isoformat()},
        boundsSeconds=list(LATENCY_BOUNDS),
        buckets=[{"start": start.isoformat(), **figures_json(figures)}
                 for start, figures in zip(found.starts, found.buckets, strict=True)],
        total=figures_json(found.total),
        byModel=[{"model": name, **figures_json(figures, deliveries=False)}
                 for name, figures in found.by_model.items()],
    )
