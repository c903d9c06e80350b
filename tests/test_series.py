"""`GET /api/stats/series`: every figure of every bucket equals a full scan of the tasks and deliveries, on both
stores; the window's rules are 400s naming the parameter.

The random writes are tests/test_aggregates.py's (the service's own write paths);
the expected answer is computed here from every row, percentiles from the exact
latencies (nearest rank), then put in the bucket the histogram would hold it in.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from decimal import ROUND_HALF_EVEN
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from store.schema import FINAL_STATUSES
from store.schema import LATENCY_BOUNDS
from store.schema import STATUSES
from store.schema import deliveries
from store.schema import tasks
from tests.conftest import clear
from tests.test_aggregates import START
from tests.test_aggregates import apply
from tests.test_aggregates import bucket
from tests.test_aggregates import operations

READ = {"Authorization": "Bearer read-token"}
STEPS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


def series(client, **params) -> dict:
    answer = client.get("/api/stats/series", query_string=params, headers=READ)
    assert answer.status_code == 200, answer.get_json()
    assert answer.headers["Cache-Control"] == "no-store"
    return answer.get_json()


# -- the scan --------------------------------------------------------------------------------------


def nearest_rank(micros: list[int], q: float) -> float | None:
    """The bound of the histogram bucket of the exact nearest-rank percentile (None: none, or past the last)."""
    if not micros:
        return None
    value = sorted(micros)[math.ceil(q * len(micros)) - 1]
    n = next((n for n, bound in enumerate(LATENCY_BOUNDS) if value <= bound * 1_000_000), None)
    return None if n is None else LATENCY_BOUNDS[n]


def latency(pairs: list[tuple[datetime, datetime]]) -> dict:
    micros = [(end - start) // timedelta(microseconds=1) for start, end in pairs]
    histogram = [0] * (len(LATENCY_BOUNDS) + 1)
    for start, end in pairs:
        histogram[bucket(start, end)] += 1
    return {"count": len(pairs), "p50": nearest_rank(micros, 0.5), "p95": nearest_rank(micros, 0.95),
            "p99": nearest_rank(micros, 0.99), "histogram": histogram}


def money(amount: Decimal) -> dict:
    exact = amount.quantize(Decimal("1e-10"))
    return {"usd": float(exact.quantize(Decimal("1e-6"))), "exact": format(exact, "f")}


def expected(created: list, finished: list, logged: list | None) -> dict:
    """The figures of a bucket or a model from its rows: tasks created, tasks finished, deliveries."""
    successes = [t for t in finished if t.status == "success"]
    spend = sum((Decimal(t.cost) for t in successes if t.cost is not None), Decimal(0))
    by_status = dict.fromkeys(STATUSES, 0)
    for t in created:
        by_status[t.status] += 1
    return {
        "tasks": {"total": len(created), "byStatus": by_status},
        "finished": {"successes": len(successes), "errors": len(finished) - len(successes),
                     "successRate": round(len(successes) / len(finished), 6) if finished else None},
        "spend": money(spend),
        "meanCost": money((spend / len(successes)).quantize(Decimal("1e-10"), ROUND_HALF_EVEN))
        if successes else None,
        "latency": {"submittedToResult": latency([(t.submitted_at, t.result_at) for t in finished
                                                  if t.submitted_at is not None]),
                    "receivedToStored": None if logged is None else
                    latency([(d.received_at, d.stored_at) for d in logged])},
    }


def scan(engine: sa.Engine, step: timedelta, since: datetime, until: datetime) -> dict:
    """What the series of `since` to `until` must say, from every row."""
    with engine.connect() as conn:
        task_rows = conn.execute(sa.select(tasks)).all()
        delivery_rows = conn.execute(sa.select(deliveries)).all()

    def within(t, start, end):
        return t is not None and start <= t < end

    def figures(start, end, keep=lambda t: True, with_deliveries=True):
        created = [t for t in task_rows if within(t.created_at, start, end) and keep(t)]
        finished = [t for t in task_rows if t.status in FINAL_STATUSES and within(t.result_at, start, end)
                    and keep(t)]
        logged = [d for d in delivery_rows if within(d.received_at, start, end)] if with_deliveries else None
        return expected(created, finished, logged)

    starts = [since + n * step for n in range((until - since) // step)]
    models = defaultdict(int)
    for t in task_rows:
        if within(t.created_at, since, until) or (t.status in FINAL_STATUSES and within(t.result_at, since, until)):
            models[t.model or ""] += 1
    return {
        "buckets": [{"start": start.isoformat(), **figures(start, start + step)} for start in starts],
        "total": figures(since, until),
        "byModel": [{"model": name, **figures(since, until, lambda t, name=name: (t.model or "") == name, False)}
                    for name in sorted(models)],
    }


# -- exactness ------------------------------------------------------------------------------------

FIRST_DAY = START.replace(hour=0)
hour_ends = st.integers(0, 50).map(lambda h: START + timedelta(hours=h - 1))
day_ends = st.integers(0, 3).map(lambda d: FIRST_DAY + timedelta(days=d))
windows = st.one_of(
    st.tuples(st.just("hour"), hour_ends, hour_ends),
    st.tuples(st.just("day"), day_ends, day_ends),
).filter(lambda w: w[1] != w[2]).map(lambda w: (w[0], min(w[1:]), max(w[1:])))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operations, min_size=1, max_size=12), chosen=st.lists(windows, min_size=2, max_size=4))
def test_every_bucket_equals_a_full_scan(database_url, client, ops, chosen):
    clear(database_url)
    engine = sa.create_engine(database_url)
    try:
        for n, operation in enumerate(ops):
            apply(engine, operation, n)
        for size, since, until in chosen:
            body = series(client, bucket=size, since=since.isoformat(), until=until.isoformat())
            want = scan(engine, STEPS[size], since, until)
            assert {k: body[k] for k in want} == want, (size, since, until)
    finally:
        engine.dispose()


def test_days_of_the_reporting_store_by_hand(client, store):
    """tests/reporting_data.py, worked out by hand: created A B | C D E F I | G H; finished A B | C D E I."""
    body = series(client, bucket="day", since="2026-03-01", until="2026-03-04")
    assert [b["start"] for b in body["buckets"]] == [f"2026-03-0{d}T00:00:00+00:00" for d in (1, 2, 3)]
    first, second, third = body["buckets"]
    assert first["tasks"] == {"total": 2, "byStatus": {"queued": 0, "submitted": 0, "error": 0, "success": 2}}
    assert second["tasks"]["byStatus"] == {"queued": 0, "submitted": 1, "error": 1, "success": 3}
    assert third["tasks"]["byStatus"] == {"queued": 1, "submitted": 1, "error": 0, "success": 0}
    assert first["spend"]["exact"] == "0.1019000000" and first["meanCost"]["exact"] == "0.0509500000"
    assert second["finished"] == {"successes": 3, "errors": 1, "successRate": 0.75}
    assert second["spend"]["exact"] == "1.4345678901" and second["meanCost"]["exact"] == "0.4781892967"
    assert third["finished"]["successRate"] is None and third["meanCost"] is None
    assert body["total"]["spend"]["exact"] == "1.5364678901"
    # Submitted -> result: B (1 March: 23:00 -> 23:59:59.999999) and C (2 March: 23:30 -> 00:00, 1,800 s).
    assert body["total"]["latency"]["submittedToResult"]["count"] == 2
    assert second["latency"]["submittedToResult"] == {"count": 1, "p50": 3600, "p95": 3600, "p99": 3600,
                                                      "histogram": [0] * 11 + [1, 0]}
    assert second["latency"]["receivedToStored"]["histogram"][0] == 1  # d3, stored as received


def test_the_default_window_ends_with_the_bucket_under_way(client, engine):
    now = datetime.now(UTC)
    hours = series(client)
    assert hours["bucket"] == "hour" and len(hours["buckets"]) == 48
    assert hours["buckets"][-1]["start"] == now.replace(minute=0, second=0, microsecond=0).isoformat()
    days = series(client, bucket="day", since=(now - timedelta(days=3)).date().isoformat())
    assert [b["start"][:10] for b in days["buckets"]] == [(now - timedelta(days=d)).date().isoformat()
                                                          for d in (3, 2, 1, 0)]


@pytest.mark.parametrize("query, parameter, words", [
    ({"bucket": "week"}, "bucket", "'week' is not one of hour, day"),
    ({"since": "2026-03-01T10:30:00Z"}, "since", "whole UTC hour"),
    ({"bucket": "day", "until": "2026-03-02T01:00:00Z"}, "until", "UTC day"),
    ({"since": "2026-03-02", "until": "2026-03-01"}, "until", "later than since"),
    ({"since": "2026-01-01", "until": "2026-03-01"}, "since", "holds 1416 hours; at most 1000"),
    ({"bucket": "day", "until": "0001-01-02"}, "until", "before year 1"),
    ({"buckets": "hour"}, "buckets", "unknown parameter"),
])
def test_a_bad_bucket_or_window_is_a_400_naming_it(client, query, parameter, words):
    answer = client.get("/api/stats/series", query_string=query, headers=READ)
    error = answer.get_json()["error"]
    assert answer.status_code == 400 and error["parameter"] == parameter and words in error["message"], error


def test_the_read_token_is_required(client):
    assert client.get("/api/stats/series").status_code == 401
    assert client.get("/api/stats/series", headers={"Authorization": "Bearer submit-token"}).status_code == 401
