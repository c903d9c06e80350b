"""Stats from the aggregates: what `GET /api/stats` and the metrics read, in time proportional to hours, not tasks.

The hourly aggregate tables (`task_hours`, `result_hours`, `delivery_hours`,
see store/schema.py) are kept by database triggers in the same transactions
that change `tasks` and `deliveries` (revision 0004 defines them). A window
`since <= t < until` (either end optional, to the microsecond) is answered from
the aggregates for its whole UTC hours, and from the base rows, through their
time index, for the partial hour at each end; so the answer equals a scan of
the base tables exactly. Which timestamp a figure is windowed on is part of it:
task counts use `created_at`, finished tasks and spend `result_at`, deliveries
`received_at`, dead letters `created_at`.

Money is exact: the aggregates and the edges both sum cost as whole units of
1e-10 USD (on SQLite, where cost is a REAL, each cost is rounded to a unit
first, as the stats always did), and the total comes back as a `Decimal` with
10 places. Dead letters are rare, so they are counted from their own small,
indexed table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import date
from datetime import datetime
from datetime import timedelta
from decimal import Decimal

import sqlalchemy as sa

from store.queries import Window
from store.schema import DAYS
from store.schema import FINAL_STATUSES
from store.schema import LATENCY_BOUNDS
from store.schema import NO_LATENCY
from store.schema import SOURCES
from store.schema import STATUSES
from store.schema import dead_letters
from store.schema import deliveries
from store.schema import delivery_hours
from store.schema import result_days
from store.schema import result_hours
from store.schema import task_days
from store.schema import task_hours
from store.schema import tasks

COST_SCALE = 10
"""Decimal places of `tasks.cost`; every sum of costs is exact to this many places."""

COST_UNITS = 10**COST_SCALE
"""Units of 1e-10 USD per USD: the aggregates' `cost_units`."""

COST_QUANTUM = Decimal(1).scaleb(-COST_SCALE)

OUTCOMES = ("stored", "partial", "rejected")
"""Outcomes of a logged delivery (see `store.results.Delivery.outcome`)."""

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class DaySpend:
    """Finished tasks and their cost on one UTC day (the day their result was received)."""

    day: date
    tasks: int
    successes: int
    errors: int
    spend: Decimal


@dataclass(frozen=True)
class TaskTotals:
    """Tasks created in a window: by status, source and model ('' for none), conflicts, deliveries."""

    by_status: dict[str, int]
    by_source: dict[str, int]
    by_model: dict[str, int]
    conflicts: int
    average_deliveries: Decimal | None


@dataclass(frozen=True)
class ResultTotals:
    """Tasks finished in a window: spend and successes, per UTC day, and the submitted -> result histogram."""

    spend: Decimal
    successes: int
    days: list[DaySpend]
    latency: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Waiting:
    """Submitted tasks still waiting for a result, and the one waiting longest."""

    count: int
    oldest_uuid: str | None
    oldest_submitted_at: datetime | None


# -- the definitions, for the base rows at a window's edges (the triggers have the same, frozen) ------


def micros_between(start: sa.ColumnElement, end: sa.ColumnElement, dialect: str) -> sa.ColumnElement:
    """Whole microseconds from `start` to `end`, exactly; NULL without either (SQLite: from the text, no floating
    point; the seconds from the text before the fraction, since SQLite's date functions round a time to the
    millisecond first; as revision 0013's triggers)."""
    million = sa.literal(1_000_000, sa.BigInteger)
    if dialect == "sqlite":
        def seconds(t):
            return sa.func.unixepoch(sa.func.substr(t, 1, 19))

        def fraction(t):
            return sa.cast(sa.func.substr(t, 21, 6), sa.BigInteger)
        return (seconds(end) - seconds(start)) * million + fraction(end) - fraction(start)
    return sa.extract("epoch", end - start) * million


def latency_bucket(micros: sa.ColumnElement) -> sa.ColumnElement:
    """The bucket (index into LATENCY_BOUNDS) of a latency in microseconds; NO_LATENCY when it is NULL.

    `micros` is read once per bound: give a column (see `combined`), not an expression.
    """
    return sa.case(
        (micros.is_(None), NO_LATENCY),
        *((micros <= sa.literal(int(bound * 1_000_000), sa.BigInteger), n) for n, bound in enumerate(LATENCY_BOUNDS)),
        else_=len(LATENCY_BOUNDS),
    )


def cost_units(cost: sa.ColumnElement, dialect: str) -> sa.ColumnElement:
    """A cost in whole units of 1e-10 USD."""
    scaled = sa.func.coalesce(cost, 0) * sa.literal(COST_UNITS, sa.BigInteger)
    return sa.cast(sa.func.round(scaled) if dialect == "sqlite" else scaled, sa.BigInteger)


def utc_day(column: sa.ColumnElement, dialect: str) -> sa.ColumnElement:
    """The UTC calendar day of a timestamp column, as a DATE on both databases."""
    if dialect == "sqlite":
        return sa.func.date(column, type_=sa.Date)  # SQLite keeps UTC times as text
    return sa.cast(sa.func.timezone("UTC", column), sa.Date)


# -- windows ------------------------------------------------------------------------------------------


def _floor(t: datetime, unit: timedelta) -> datetime:
    t = t.astimezone(UTC)
    return t.replace(minute=0, second=0, microsecond=0) if unit == HOUR else \
        t.replace(hour=0, minute=0, second=0, microsecond=0)


def _ceil(t: datetime, unit: timedelta) -> datetime:
    floor = _floor(t, unit)
    return floor if floor == t else floor + unit


@dataclass(frozen=True)
class Parts:
    """A window cut along UTC days and hours: whole days, whole hours outside them, partial hours at the ends."""

    days: Window | None
    hours: list[Window]
    edges: list[Window]


def split(window: Window) -> Parts:
    """`window` as the whole days and whole hours it spans (either may be empty) and the partial hours at its ends."""
    start = None if window.since is None else _ceil(window.since, HOUR)
    end = None if window.until is None else _floor(window.until, HOUR)
    if start is not None and end is not None and start >= end:
        return Parts(None, [], [window])
    edges = []
    if start is not None and start != window.since:
        edges.append(Window(window.since, start))
    if end is not None and end != window.until:
        edges.append(Window(end, window.until))
    first_day = None if start is None else _ceil(start, DAY)
    last_day = None if end is None else _floor(end, DAY)
    if first_day is not None and last_day is not None and first_day >= last_day:
        return Parts(None, [Window(start, end)], edges)
    hours = []
    if first_day is not None and first_day != start:
        hours.append(Window(start, first_day))
    if last_day is not None and last_day != end:
        hours.append(Window(last_day, end))
    return Parts(Window(first_day, last_day), hours, edges)


def combined(window: Window, hourly: sa.Table, whole, base_time: sa.Column, facts: dict, edge,
             *where: sa.ColumnElement, kept=lambda columns: (), name: str = "edge_rows") -> sa.Subquery:
    """Rows of the day rollup of `hourly` for the whole days of `window`, of `hourly` for its other whole hours,
    UNION ALL the base rows of its edges.

    `whole(columns, time)` gives the columns to read from an aggregate table and
    `kept(columns)` the conditions its rows must meet (none: all);
    `facts` (name: expression) what to compute once per base row at the edges
    (those meeting `where`), in a materialized CTE called `name` (one statement reading two of these
    names each its own), and `edge(columns)` the row's columns from those.
    """
    parts, daily = split(window), DAYS[hourly]
    selects = []
    if parts.days is not None:
        selects.append(sa.select(*whole(daily.c, daily.c.day))
                       .where(*kept(daily.c), *parts.days.covers(daily.c.day)))
    selects += [sa.select(*whole(hourly.c, hourly.c.hour)).where(*kept(hourly.c), *hours.covers(hourly.c.hour))
                for hours in parts.hours]
    if parts.edges:
        rows = (sa.select(*(expression.label(name) for name, expression in facts.items()))
                .where(*where, sa.or_(*(sa.and_(*part.covers(base_time)) for part in parts.edges)))
                .cte(name).prefix_with("MATERIALIZED"))
        selects.append(sa.select(*edge(rows.c)))
    return sa.union_all(*selects).subquery("rows")


def final(status: sa.Column, dialect: str) -> sa.ColumnElement:
    """`status` is final. On SQLite as an expression: without statistics SQLite would search the
    (status, created_at) index for `status IN (…)`, reading every finished task, not the result_at index."""
    return (sa.cast(status, sa.Text) if dialect == "sqlite" else status).in_(FINAL_STATUSES)


def _money(units: int | Decimal | None) -> Decimal:
    return Decimal(int(units or 0)).scaleb(-COST_SCALE).quantize(COST_QUANTUM)


# -- the figures --------------------------------------------------------------------------------------


def task_totals(conn: sa.Connection, window: Window = Window()) -> TaskTotals:
    """Tasks created in `window`: by status, source and model, conflicts, and webhook items per delivered task."""
    t = tasks.c
    rows = combined(
        window, task_hours,
        lambda a, _: [a.status, a.source, a.model, a.tasks, a.conflicts, a.delivered_tasks, a.deliveries],
        t.created_at,
        {"status": t.status, "source": t.source, "model": sa.func.coalesce(t.model, ""),
         "tasks": sa.literal(1, sa.BigInteger), "conflicts": sa.case((t.conflict, 1), else_=0),
         "delivered_tasks": sa.case((t.delivery_count > 0, 1), else_=0), "deliveries": t.delivery_count},
        list,
    )
    c = list(rows.c)
    query = sa.select(*c[:3], *(sa.cast(sa.func.sum(x), sa.BigInteger) for x in c[3:])).group_by(*c[:3])
    by_status, by_source = dict.fromkeys(STATUSES, 0), dict.fromkeys(SOURCES, 0)
    by_model, conflicts, delivered, items = Counter(), 0, 0, 0
    for status, source, model, count, conflicted, with_deliveries, delivery_items in conn.execute(query):
        if not count and not with_deliveries and not delivery_items:
            continue
        by_status[status] = by_status.get(status, 0) + count
        by_source[source] = by_source.get(source, 0) + count
        by_model[model] += count
        conflicts += conflicted
        delivered += with_deliveries
        items += delivery_items
    average = Decimal(items) / Decimal(delivered) if delivered else None
    return TaskTotals(by_status, by_source, dict(+by_model), conflicts, average)


def result_totals(conn: sa.Connection, window: Window = Window()) -> ResultTotals:
    """Tasks whose final result was received in `window`: spend, per UTC day, and the latency histogram.

    Days with no finished task do not appear (the `daily_spend` view has the same
    rows); oldest day first. The histogram counts finished tasks this service
    submitted, by the time from submission to result.
    """
    dialect = conn.dialect.name
    t = tasks.c
    rows = combined(
        window, result_hours,
        lambda a, at: [utc_day(at, dialect).label("day"), a.status, a.latency_bucket, a.tasks, a.cost_units],
        t.result_at,
        {"day": utc_day(t.result_at, dialect), "status": t.status,
         "micros": micros_between(t.submitted_at, t.result_at, dialect), "cost_units": cost_units(t.cost, dialect)},
        lambda c: [c.day, c.status, latency_bucket(c.micros), sa.literal(1, sa.BigInteger), c.cost_units],
        final(t.status, dialect), t.result_at.is_not(None),
    )
    c = list(rows.c)
    query = sa.select(*c[:3], *(sa.cast(sa.func.sum(x), sa.BigInteger) for x in c[3:])).group_by(*c[:3]).order_by(c[0])
    days: dict[date, list] = {}
    latency = [0] * (len(LATENCY_BOUNDS) + 1)
    for day, status, bucket, count, units in conn.execute(query):
        if not count:
            continue
        totals = days.setdefault(day, [0, 0, 0, 0])
        totals[0] += count
        totals[1 if status == "success" else 2] += count
        if status == "success":
            totals[3] += units
        if bucket != NO_LATENCY:
            latency[bucket] += count
    spend_by_day = [DaySpend(day, n, ok, bad, _money(units)) for day, (n, ok, bad, units) in days.items()]
    return ResultTotals(
        spend=_money(sum(d[3] for d in days.values())),
        successes=sum(d[1] for d in days.values()),
        days=spend_by_day,
        latency=latency,
    )


def delivery_totals(conn: sa.Connection, window: Window = Window()) -> tuple[dict[str, int], list[int]]:
    """Webhook POSTs logged with a `received_at` in `window`: by outcome, and the received -> stored histogram."""
    dialect = conn.dialect.name
    d = deliveries.c
    rows = combined(
        window, delivery_hours, lambda a, _: [a.outcome, a.latency_bucket, a.deliveries], d.received_at,
        {"outcome": d.outcome, "micros": micros_between(d.received_at, d.stored_at, dialect)},
        lambda c: [c.outcome, latency_bucket(c.micros), sa.literal(1, sa.BigInteger)],
    )
    c = list(rows.c)
    by_outcome = dict.fromkeys(OUTCOMES, 0)
    latency = [0] * (len(LATENCY_BOUNDS) + 1)
    query = sa.select(*c[:2], sa.cast(sa.func.sum(c[2]), sa.BigInteger)).group_by(*c[:2])
    for outcome, bucket, count in conn.execute(query):
        if count:
            by_outcome[outcome] = by_outcome.get(outcome, 0) + count
            latency[bucket] += count
    return by_outcome, latency


def total_spend(conn: sa.Connection) -> Decimal:
    """What every success in the store cost (USD, exact), from the aggregates."""
    units = conn.scalar(sa.select(sa.func.sum(result_days.c.cost_units)).where(result_days.c.status == "success"))
    return _money(units)


def dead_letter_counts(conn: sa.Connection, window: Window = Window()) -> tuple[int, int]:
    """Dead letters created in `window`: how many, and how many are not replayed yet (a scan: they are rare)."""
    query = sa.select(
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(sa.case((dead_letters.c.replayed_at.is_(None), 1), else_=0)), 0),
    ).where(*window.covers(dead_letters.c.created_at))
    total, pending = conn.execute(query).one()
    return total, pending


def waiting_tasks(conn: sa.Connection) -> Waiting:
    """Tasks still `submitted` now (no window: age is the point): counted from the aggregates.

    The oldest is the first of `ix_tasks_waiting`, the partial index of
    submitted tasks by submission time; one without a submission time, if any,
    comes last.
    """
    count = conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(task_days.c.tasks), 0))
                        .where(task_days.c.status == "submitted"))
    submitted = tasks.c.status == sa.literal_column("'submitted'")  # a literal, as the partial index has it
    if conn.dialect.name == "sqlite":
        # Without statistics SQLite would read every submitted task through the (status, created_at) index
        # and sort them: saying the status matches most rows makes it take the partial index.
        submitted = sa.func.likelihood(submitted, sa.literal_column("0.9"))
    oldest = None
    for timed in (True, False):
        oldest = conn.execute(
            sa.select(tasks.c.task_uuid, tasks.c.submitted_at)
            .where(submitted, tasks.c.submitted_at.is_not(None) if timed else tasks.c.submitted_at.is_(None))
            .order_by(tasks.c.submitted_at, tasks.c.task_uuid)
            .limit(1)
        ).first()
        if oldest is not None or not count:
            break
    return Waiting(int(count), *(oldest or (None, None)))
