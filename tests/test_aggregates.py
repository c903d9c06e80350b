"""The hourly aggregates are exact: stats from them equal a full scan of the tasks and deliveries.

Random writes go through the service's own write paths (webhook batches, polls,
submissions, dead-letter replays, the retention purge), in random order, so the
triggers see inserts, upserts that update, updates that change nothing counted,
and deletes; late deliveries change hours long past. Then, for random windows
(aligned to the hour or not, open at either end), every figure of store.stats
is compared with the same figure computed here, in Python, from every row.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from decimal import Decimal

import sqlalchemy as sa
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from store import stats
from store.migrate import downgrade
from store.migrate import upgrade
from store.queries import Window
from store.results import Delivery
from store.results import Result
from store.results import apply_results
from store.results import save_deliveries
from store.schema import AGGREGATES
from store.schema import DAYS
from store.schema import FINAL_STATUSES
from store.schema import LATENCY_BOUNDS
from store.schema import deliveries
from store.schema import tasks
from store.submissions import NewTask
from store.submissions import claim_queued
from store.submissions import mark_submitted
from store.submissions import queue_tasks
from tests.conftest import clear
from workers.maintenance import purge
from workers.maintenance import replay_dead_letters
from workers.persist import _dead_letter as dead_letter

START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=30)
"""Every time drawn lies within 48 hours from here (so at least one whole UTC day), and created_at (now) too."""

SPAN_US = 48 * 3600 * 1_000_000
MODELS = (None, "runware:150@2", "runware:151@1")

moments = st.integers(0, SPAN_US).map(lambda us: START + timedelta(microseconds=us))
hours = st.integers(0, 48).map(lambda h: START + timedelta(hours=h))
midnights = st.integers(1, 2).map(lambda d: START.replace(hour=0) + timedelta(days=d))
ends = st.one_of(st.none(), moments, hours, midnights)
costs = st.one_of(st.none(), st.integers(0, 10**8).map(lambda units: Decimal(units).scaleb(-10)))

def result(task: int, kind: str, at: datetime, cost: Decimal | None, model: str | None, variant: int) -> Result:
    """A result for task number `task`: an acknowledgement, an error, or one of two different successes."""
    task_uuid = str(uuid.UUID(int=task + 1))
    if kind == "ack":
        return Result(task_uuid, "submitted", at)
    if kind == "error":
        return Result(task_uuid, "error", at, error_code="failed", model=model)
    return Result(task_uuid, "success", at, text=f"caption {variant}", cost=cost, model=model)


results = st.builds(result, task=st.integers(0, 9), kind=st.sampled_from(("ack", "error", "success", "success")),
                    at=moments, cost=costs, model=st.sampled_from(MODELS), variant=st.integers(0, 1))

operations = st.one_of(
    st.tuples(st.just("webhooks"), st.lists(st.tuples(moments, st.lists(results, max_size=3), st.booleans()),
                                            min_size=1, max_size=4)),
    st.tuples(st.just("poll"), st.lists(results, min_size=1, max_size=3)),
    st.tuples(st.just("submit"), st.sets(st.integers(6, 9), min_size=1), st.sampled_from(MODELS), moments),
    st.tuples(st.just("dead letter"), results),
    st.tuples(st.just("replay")),
    st.tuples(st.just("purge"), moments),
)


def apply(engine: sa.Engine, operation: tuple, n: int) -> None:
    """Run one random write through the service's own code."""
    kind, *args = operation
    if kind == "webhooks":
        batch = [Delivery(f"{n}-{i}", at, "127.0.0.1", 100, items, ["item 9: bad"] if partial else [])
                 for i, (at, items, partial) in enumerate(args[0])]
        for again in (batch, batch[:1]):  # the first delivery comes again (a drain that died before its ack)
            with engine.begin() as conn:
                save_deliveries(conn, again)
    elif kind == "poll":
        with engine.begin() as conn:
            apply_results(conn, args[0], delivered=False)
    elif kind == "submit":
        numbers, model, at = args
        chosen = [str(uuid.UUID(int=task + 1)) for task in sorted(numbers)]
        with engine.begin() as conn:
            known = set(conn.scalars(sa.select(tasks.c.task_uuid).where(tasks.c.task_uuid.in_(chosen))))
            queue_tasks(conn, [NewTask(t, "https://example.com/cat.png", model=model) for t in chosen
                               if t not in known])
            claimed = claim_queued(conn, len(chosen), 30)  # a claim: an update that changes nothing counted
            apply_results(conn, [Result(t.task_uuid, "submitted", at) for t in claimed], delivered=False)
            mark_submitted(conn, chosen, poll_at=at + timedelta(minutes=1), now=at)  # finished ones too (sync)
    elif kind == "dead letter":
        item = args[0]
        dead_letter(engine, Delivery(f"{n}-dead", item.received_at, None, 10, [item]), "refused")
    elif kind == "replay":
        replay_dead_letters(engine)
    elif kind == "purge":
        purge(engine, args[0], batch_size=3)


# -- the scan, independent of the aggregates ------------------------------------------------------


def inside(t: datetime | None, window: Window) -> bool:
    return t is not None and (window.since is None or t >= window.since) and (window.until is None or t < window.until)


def bucket(start: datetime, end: datetime) -> int:
    micros = (end - start) // timedelta(microseconds=1)
    return next((n for n, bound in enumerate(LATENCY_BOUNDS) if micros <= bound * 1_000_000), len(LATENCY_BOUNDS))


def scan(engine: sa.Engine, window: Window) -> dict:
    """Every figure of the stats, from every row of tasks and deliveries."""
    with engine.connect() as conn:
        task_rows = conn.execute(sa.select(tasks)).all()
        delivery_rows = conn.execute(sa.select(deliveries)).all()
    created = [t for t in task_rows if inside(t.created_at, window)]
    delivered = [t.delivery_count for t in created if t.delivery_count > 0]
    finished = [t for t in task_rows if t.status in FINAL_STATUSES and inside(t.result_at, window)]
    days: dict = {}
    latency = [0] * (len(LATENCY_BOUNDS) + 1)
    for t in sorted(finished, key=lambda t: t.result_at):
        day = days.setdefault(t.result_at.date(), [0, 0, 0, Decimal(0)])
        day[0] += 1
        day[1 if t.status == "success" else 2] += 1
        if t.status == "success" and t.cost is not None:
            day[3] += Decimal(t.cost)
        if t.submitted_at is not None:
            latency[bucket(t.submitted_at, t.result_at)] += 1
    logged = [d for d in delivery_rows if inside(d.received_at, window)]
    stored_latency = [0] * (len(LATENCY_BOUNDS) + 1)
    for d in logged:
        stored_latency[bucket(d.received_at, d.stored_at)] += 1
    waiting = sorted((t for t in task_rows if t.status == "submitted"),
                     key=lambda t: (t.submitted_at is None, t.submitted_at, t.task_uuid))
    return {
        "by_status": Counter(t.status for t in created),
        "by_source": Counter(t.source for t in created),
        "by_model": Counter(t.model or "" for t in created),
        "conflicts": sum(t.conflict for t in created),
        "average": Decimal(sum(delivered)) / Decimal(len(delivered)) if delivered else None,
        "spend": sum((d[3] for d in days.values()), Decimal(0)),
        "successes": sum(d[1] for d in days.values()),
        "days": [(day, n, ok, bad, spend) for day, (n, ok, bad, spend) in days.items()],
        "latency": latency,
        "outcomes": Counter(d.outcome for d in logged),
        "stored_latency": stored_latency,
        "waiting": (len(waiting), waiting[0].task_uuid if waiting else None),
    }


def from_aggregates(engine: sa.Engine, window: Window) -> dict:
    """The same figures from store.stats."""
    with engine.connect() as conn:
        created = stats.task_totals(conn, window)
        finished = stats.result_totals(conn, window)
        outcomes, stored_latency = stats.delivery_totals(conn, window)
        waiting = stats.waiting_tasks(conn)
    return {
        "by_status": +Counter(created.by_status),
        "by_source": +Counter(created.by_source),
        "by_model": Counter(created.by_model),
        "conflicts": created.conflicts,
        "average": created.average_deliveries,
        "spend": finished.spend,
        "successes": finished.successes,
        "days": [(d.day, d.tasks, d.successes, d.errors, d.spend) for d in finished.days],
        "latency": finished.latency,
        "outcomes": +Counter(outcomes),
        "stored_latency": stored_latency,
        "waiting": (waiting.count, waiting.oldest_uuid),
    }


def assert_exact(engine: sa.Engine, windows: list[Window]) -> None:
    for window in windows:
        assert from_aggregates(engine, window) == scan(engine, window), window


def window(a: datetime | None, b: datetime | None) -> Window:
    """The window between two ends drawn at random (either may be open)."""
    if a is not None and b is not None:
        return Window(min(a, b), max(a, b)) if a != b else Window(a, None)
    return Window(a, b)


windows = st.lists(st.builds(window, ends, ends), min_size=3, max_size=6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operations, min_size=1, max_size=12), chosen=windows)
def test_stats_from_aggregates_equal_a_full_scan(database_url, ops, chosen):
    clear(database_url)
    engine = sa.create_engine(database_url)
    try:
        for n, operation in enumerate(ops):
            apply(engine, operation, n)
        assert_exact(engine, [Window(), *chosen])
    finally:
        engine.dispose()


def test_aggregates_follow_every_change_and_return_to_zero(engine):
    """A manual UPDATE and DELETE in SQL are counted too: no application code keeps the aggregates."""
    at = START + timedelta(minutes=30, microseconds=7)
    with engine.begin() as conn:
        apply_results(conn, [Result(str(uuid.UUID(int=1)), "success", at, text="x", cost=Decimal("0.25"),
                                    model=MODELS[1])])
    assert_exact(engine, [Window(), Window(START, at), Window(at, None)])
    with engine.begin() as conn:
        conn.execute(tasks.update().values(status="error", cost=None, model=None))
    assert_exact(engine, [Window(), Window(START + timedelta(minutes=1), None)])
    with engine.begin() as conn:
        conn.execute(tasks.delete())
    with engine.connect() as conn:
        totals = [conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(column), 0)))
                  for table in AGGREGATES for column in table.c if not column.primary_key]
    # the hourly tables, their day rollups, the label aggregates (0008), theirs (0010) and the label totals (0015)
    assert len(totals) == 28 and not any(totals)


def test_the_migration_builds_the_aggregates_of_an_existing_store(database_url):
    """A store taken down to revision 0003 (no aggregates, no triggers) with its rows, upgraded, gives the stats of a
    scan. (Filled at the head first: the write path writes the head's tables.)"""
    late = [result(0, "success", START + timedelta(minutes=5), Decimal("0.1"), None, 0),
            result(1, "error", START + timedelta(hours=2, seconds=1), None, MODELS[2], 0),
            result(0, "success", START + timedelta(minutes=4), Decimal("0.2"), None, 1),
            result(6, "success", START + timedelta(hours=4), Decimal("0.0000000001"), MODELS[1], 0),
            result(2, "success", START + timedelta(hours=40), Decimal("0.3"), MODELS[2], 0)]
    ops = [("submit", {6, 7}, MODELS[1], START + timedelta(hours=1, minutes=59, seconds=59, microseconds=999999)),
           *(("webhooks", [(START + timedelta(hours=h, minutes=7 * h), [r], h % 2 == 1)]) for h, r in enumerate(late)),
           ("purge", START + timedelta(hours=1))]
    engine = sa.create_engine(database_url)
    try:
        try:
            for n, operation in enumerate(ops):
                apply(engine, operation, n)
            downgrade(database_url, "0003")  # the rows stay; the aggregates and their triggers go
        finally:
            upgrade(database_url)
        with engine.connect() as conn:
            assert all(conn.scalar(sa.select(sa.func.count()).select_from(table)) > 0  # no labels here
                       for table in (*DAYS, *DAYS.values()) if "key" not in table.c)
        assert_exact(engine, [Window(), Window(START + timedelta(minutes=4, microseconds=1), None),
                              Window(None, START + timedelta(hours=2)), Window(START, START + timedelta(hours=4)),
                              Window(START.replace(hour=0) + timedelta(days=1), START + timedelta(days=2))])
    finally:
        engine.dispose()


def write_latencies_under_their_bounds(engine: sa.Engine) -> None:
    """A task whose latency is 0.9996 s (its result at a fraction of a millisecond before a whole second: SQLite's
    date functions round such a time up to the next second), and its delivery stored 2.4996 s after receipt."""
    submitted = START + timedelta(minutes=10)
    at = submitted + timedelta(seconds=1, microseconds=-400)
    apply(engine, ("submit", {6}, MODELS[1], submitted), 0)
    apply(engine, ("webhooks", [(at, [result(6, "success", at, Decimal("0.1"), MODELS[1], 0)], False)]), 1)
    with engine.begin() as conn:
        for delivery_id, received_at in conn.execute(sa.select(deliveries.c.id, deliveries.c.received_at)).all():
            conn.execute(deliveries.update().where(deliveries.c.id == delivery_id)
                         .values(stored_at=received_at + timedelta(seconds=2.5, microseconds=-400)))


def assert_latencies_under_their_bounds(engine: sa.Engine) -> None:
    figures = from_aggregates(engine, Window())
    within = {bound: n for n, bound in enumerate(LATENCY_BOUNDS)}
    assert figures["latency"][within[1]] == 1 and sum(figures["latency"]) == 1, figures["latency"]
    assert figures["stored_latency"][within[2.5]] == sum(figures["stored_latency"]) == 1, figures["stored_latency"]
    assert_exact(engine, [Window(), Window(START, START + timedelta(days=2))])


def test_a_latency_a_fraction_of_a_millisecond_under_a_bound_stays_in_its_bucket(engine):
    write_latencies_under_their_bounds(engine)
    assert_latencies_under_their_bounds(engine)


def test_the_migration_corrects_the_latency_histograms_of_an_existing_store(database_url):
    """Written under revision 0012's triggers (on SQLite a second too long), corrected by the upgrade to the head."""
    engine = sa.create_engine(database_url)
    try:
        downgrade(database_url, "0012")
        try:
            write_latencies_under_their_bounds(engine)
        finally:
            upgrade(database_url)
        assert_latencies_under_their_bounds(engine)
    finally:
        engine.dispose()
