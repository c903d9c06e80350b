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
from store.schema import FINAL_STATUSES
from store.schema import LATENCY_BOUNDS
from store.schema import NO_LATENCY
from store.schema import SOURCES
from store.schema import STATUSES
from store.schema import dead_letters
from store.schema import deliveries
from store.schema import delivery_hours
from store.schema import result_hours
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
    """Whole microseconds from `start` to `end`, exactly (SQLite: from the text, no floating point)."""
    million = sa.literal(1_000_000, sa.BigInteger)
    if dialect == "sqlite":
        def micros(t):
            seconds = sa.cast(sa.func.strftime("%s", t), sa.BigInteger) * million
            return seconds + sa.cast(sa.func.substr(t, 21, 6), sa.BigInteger)
        return micros(end) - micros(start)
    return sa.extract("epoch", end - start) * million


def latency_bucket(start: sa.ColumnElement, end: sa.ColumnElement, dialect: str) -> sa.ColumnElement:
    """The bucket (index into LATENCY_BOUNDS) of the time from `start` to `end`; NO_LATENCY without `start`."""
    micros = micros_between(start, end, dialect)
    return sa.case(
        (start.is_(None), NO_LATENCY),
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


def _floor_hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def split(window: Window) -> tuple[Window | None, list[Window]]:
    """The whole hours of `window` (None when it has none) and the partial hours at its ends."""
    start = None if window.since is None else _floor_hour(window.since)
    if start is not None and start < window.since:
        start += HOUR
    end = None if window.until is None else _floor_hour(window.until)
    if start is not None and end is not None and start >= end:
        return None, [window]
    edges = []
    if start is not None and start != window.since:
        edges.append(Window(window.since, start))
    if end is not None and end != window.until:
        edges.append(Window(end, window.until))
    return Window(start, end), edges


def _combined(window: Window, aggregate: sa.Table, whole: list, base_time: sa.Column, edge: list,
              *where: sa.ColumnElement) -> sa.Subquery:
    """Rows of `aggregate` for the whole hours of `window`, UNION ALL the base rows of its edges."""
    hours, edges = split(window)
    parts = []
    if hours is not None:
        parts.append(sa.select(*whole).where(*hours.covers(aggregate.c.hour)))
    parts += [sa.select(*edge).where(*where, *part.covers(base_time)) for part in edges]
    return sa.union_all(*parts).subquery("rows")


def _final(status: sa.Column, dialect: str) -> sa.ColumnElement:
    """`status` is final. On SQLite as an expression: without statistics SQLite would search the
    (status, created_at) index for `status IN (…)`, reading every finished task, not the result_at index."""
    return (sa.cast(status, sa.Text) if dialect == "sqlite" else status).in_(FINAL_STATUSES)


def _money(units: int | Decimal | None) -> Decimal:
    return Decimal(int(units or 0)).scaleb(-COST_SCALE).quantize(COST_QUANTUM)


# -- the figures --------------------------------------------------------------------------------------


def task_totals(conn: sa.Connection, window: Window = Window()) -> TaskTotals:
    """Tasks created in `window`: by status, source and model, conflicts, and webhook items per delivered task."""
    t, a = tasks.c, task_hours.c
    rows = _combined(
        window, task_hours,
        [a.status, a.source, a.model, a.tasks, a.conflicts, a.delivered_tasks, a.deliveries],
        t.created_at,
        [t.status, t.source, sa.func.coalesce(t.model, ""), sa.literal(1, sa.BigInteger),
         sa.case((t.conflict, 1), else_=0), sa.case((t.delivery_count > 0, 1), else_=0), t.delivery_count],
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
    t, a = tasks.c, result_hours.c
    rows = _combined(
        window, result_hours,
        [utc_day(a.hour, dialect).label("day"), a.status, a.latency_bucket, a.tasks, a.cost_units],
        t.result_at,
        [utc_day(t.result_at, dialect), t.status, latency_bucket(t.submitted_at, t.result_at, dialect),
         sa.literal(1, sa.BigInteger), cost_units(t.cost, dialect)],
        _final(t.status, dialect), t.result_at.is_not(None),
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
    d, a = deliveries.c, delivery_hours.c
    rows = _combined(
        window, delivery_hours, [a.outcome, a.latency_bucket, a.deliveries], d.received_at,
        [d.outcome, latency_bucket(d.received_at, d.stored_at, dialect), sa.literal(1, sa.BigInteger)],
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
    units = conn.scalar(sa.select(sa.func.sum(result_hours.c.cost_units)).where(result_hours.c.status == "success"))
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

    The oldest comes through the (status, created_at) index, which holds the
    submitted tasks together.
    """
    count = conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(task_hours.c.tasks), 0))
                        .where(task_hours.c.status == "submitted"))
    oldest = conn.execute(
        sa.select(tasks.c.task_uuid, tasks.c.submitted_at)
        .where(tasks.c.status == "submitted")
        .order_by(tasks.c.submitted_at.asc().nulls_last(), tasks.c.task_uuid)
        .limit(1)
    ).first()
    return Waiting(int(count), *(oldest or (None, None)))
