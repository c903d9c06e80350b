"""Reading the store for the API and dashboards: one function per question, SQLAlchemy Core.

Time windows are half-open, `since <= t < until`, either end optional. Which
timestamp a question filters on is part of its answer, so each docstring says:
task counts use `created_at`, spend and finished tasks use `result_at` (when the
result was received), deliveries `received_at`, dead letters `created_at`.

Money is exact: `tasks.cost` is NUMERIC(20, 10). PostgreSQL sums it as numeric.
SQLite keeps it as a REAL, so there every cost is first rounded to whole units
of 1e-10 USD and the integers are summed (`_cost_sum`); either way the total
comes back as a `Decimal` with 10 places.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa

from store import search as search_query
from store.schema import FINAL_STATUSES
from store.schema import SOURCES
from store.schema import STATUSES
from store.schema import dead_letters
from store.schema import deliveries
from store.schema import tasks

PUBLIC_FIELDS = {
    "taskUUID": tasks.c.task_uuid,
    "status": tasks.c.status,
    "source": tasks.c.source,
    "taskType": tasks.c.task_type,
    "model": tasks.c.model,
    "text": tasks.c.text,
    "cost": tasks.c.cost,
    "errorCode": tasks.c.error_code,
    "errorMessage": tasks.c.error_message,
    "conflict": tasks.c.conflict,
    "deliveryCount": tasks.c.delivery_count,
    "firstDeliveryAt": tasks.c.first_delivery_at,
    "lastDeliveryAt": tasks.c.last_delivery_at,
    "submittedAt": tasks.c.submitted_at,
    "createdAt": tasks.c.created_at,
    "updatedAt": tasks.c.updated_at,
}
"""What the API shows of a task, by the name it shows it under."""

COST_SCALE = 10
"""Decimal places of `tasks.cost`; every sum of costs is exact to this many places."""

COST_QUANTUM = Decimal(1).scaleb(-COST_SCALE)

OUTCOMES = ("stored", "partial", "rejected")
"""Outcomes of a logged delivery (see `store.results.Delivery.outcome`)."""


@dataclass(frozen=True)
class Window:
    """A half-open time window `since <= t < until`; a missing end is unbounded."""

    since: datetime | None = None
    until: datetime | None = None

    def covers(self, column: sa.ColumnElement) -> list[sa.ColumnElement]:
        """WHERE conditions putting `column` inside the window (none for all time)."""
        conditions = []
        if self.since is not None:
            conditions.append(column >= self.since)
        if self.until is not None:
            conditions.append(column < self.until)
        return conditions


@dataclass(frozen=True)
class DaySpend:
    """Finished tasks and their cost on one UTC day (the day their result was received)."""

    day: date
    tasks: int
    successes: int
    errors: int
    spend: Decimal


@dataclass(frozen=True)
class Waiting:
    """Submitted tasks still waiting for a result, and the one waiting longest."""

    count: int
    oldest_uuid: str | None
    oldest_submitted_at: datetime | None


def task_json(row: sa.Row) -> dict:
    """A task row as JSON-ready values (ISO times, cost as a number of USD)."""
    record = dict(zip(PUBLIC_FIELDS, row))
    for name, value in record.items():
        if hasattr(value, "isoformat"):
            record[name] = value.isoformat()
    if record["cost"] is not None:
        record["cost"] = float(record["cost"])
    return record


def get_task(conn: sa.Connection, task_uuid: str) -> dict | None:
    row = conn.execute(sa.select(*PUBLIC_FIELDS.values()).where(tasks.c.task_uuid == task_uuid)).first()
    return task_json(row) if row else None


def read_snapshot(conn: sa.Connection) -> sa.Connection:
    """Make the next transaction on `conn` see one snapshot, so several queries agree.

    PostgreSQL: a read-only REPEATABLE READ transaction. SQLite (WAL) reads are
    already consistent per statement, and the dialect offers no such level.
    """
    if conn.dialect.name == "postgresql":
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return conn


def list_tasks(
    conn: sa.Connection,
    *,
    statuses: tuple[str, ...] = (),
    sources: tuple[str, ...] = (),
    window: Window = Window(),
    search: search_query.Query | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> tuple[list[dict], tuple[datetime, str] | None]:
    """One page of tasks, newest `updated_at` first (ties: higher taskUUID first).

    `window` filters on `updated_at`; `search` matches caption words (see
    `store.search`) or, when it is a UUID prefix, the taskUUID; `after` is the
    sort key (updated_at, task_uuid) of the previous page's last row. Returns the
    page and the sort key to continue after, or None when this is the last page.
    """
    conditions = window.covers(tasks.c.updated_at)
    if statuses:
        conditions.append(tasks.c.status.in_(statuses))
    if sources:
        conditions.append(tasks.c.source.in_(sources))
    if after is not None:
        updated_at, task_uuid = after
        conditions.append(sa.or_(
            tasks.c.updated_at < updated_at,
            sa.and_(tasks.c.updated_at == updated_at, tasks.c.task_uuid < task_uuid),
        ))
    if search is None:
        rows = _newest(conn, conditions, limit + 1)
    else:
        rows = _newest(conn, [*conditions, search_query.caption_matches(search, conn.dialect.name)], limit + 1)
        by_uuid = search_query.uuid_matches(search)
        if by_uuid is not None:  # a second query, so that each is served by its own index
            found = {row.task_uuid: row for row in [*rows, *_newest(conn, [*conditions, by_uuid], limit + 1)]}
            rows = sorted(found.values(), key=lambda row: (row.updated_at, row.task_uuid), reverse=True)
    page = rows[:limit]
    more = len(rows) > limit
    return [task_json(row) for row in page], ((page[-1].updated_at, page[-1].task_uuid) if more else None)


def _newest(conn: sa.Connection, conditions: list[sa.ColumnElement], limit: int) -> list[sa.Row]:
    """The first `limit` tasks meeting every condition, in the list's order."""
    query = (
        sa.select(*PUBLIC_FIELDS.values())
        .where(*conditions)
        .order_by(tasks.c.updated_at.desc(), tasks.c.task_uuid.desc())
        .limit(limit)
    )
    return conn.execute(query).all()


def task_counts(conn: sa.Connection, window: Window = Window()) -> tuple[dict[str, int], dict[str, int]]:
    """How many tasks were created in `window`, by status and by source (every key present)."""
    query = (
        sa.select(tasks.c.status, tasks.c.source, sa.func.count())
        .where(*window.covers(tasks.c.created_at))
        .group_by(tasks.c.status, tasks.c.source)
    )
    by_status = dict.fromkeys(STATUSES, 0)
    by_source = dict.fromkeys(SOURCES, 0)
    for status, source, count in conn.execute(query):
        by_status[status] = by_status.get(status, 0) + count
        by_source[source] = by_source.get(source, 0) + count
    return by_status, by_source


def conflict_count(conn: sa.Connection, window: Window = Window()) -> int:
    """How many tasks created in `window` got successes that disagreed (`conflict`)."""
    query = sa.select(sa.func.count()).where(tasks.c.conflict.is_(True), *window.covers(tasks.c.created_at))
    return conn.scalar(query)


def average_deliveries(conn: sa.Connection, window: Window = Window()) -> Decimal | None:
    """Webhook items per task, over tasks created in `window` that got at least one (None: no such task)."""
    query = sa.select(sa.func.sum(tasks.c.delivery_count), sa.func.count()).where(
        tasks.c.delivery_count > 0, *window.covers(tasks.c.created_at)
    )
    total, count = conn.execute(query).one()
    return Decimal(total) / Decimal(count) if count else None


def _cost_sum(dialect: str, only: sa.ColumnElement | None = None) -> sa.ColumnElement:
    """SUM of `tasks.cost` (of rows matching `only`), exact: see the module docstring."""
    cost = tasks.c.cost if only is None else sa.case((only, tasks.c.cost))
    if dialect == "sqlite":
        units = sa.cast(sa.func.round(cost * sa.literal(10**COST_SCALE, sa.BigInteger)), sa.BigInteger)
        return sa.func.sum(units, type_=sa.BigInteger)
    return sa.func.sum(cost, type_=sa.Numeric(38, COST_SCALE))


def _money(value: int | Decimal | None, dialect: str) -> Decimal:
    """A `_cost_sum` result as a Decimal with COST_SCALE places (0 for an empty sum)."""
    if value is None:
        return Decimal(0).quantize(COST_QUANTUM)
    if dialect == "sqlite":
        value = Decimal(value).scaleb(-COST_SCALE)
    return Decimal(value).quantize(COST_QUANTUM)


def total_spend(conn: sa.Connection, window: Window = Window()) -> tuple[Decimal, int]:
    """What the successes whose result was received in `window` cost (USD, exact), and how many there were."""
    dialect = conn.dialect.name
    query = sa.select(_cost_sum(dialect), sa.func.count()).where(
        tasks.c.status == "success", *window.covers(tasks.c.result_at)
    )
    spend, successes = conn.execute(query).one()
    return _money(spend, dialect), successes


def utc_day(column: sa.ColumnElement, dialect: str) -> sa.ColumnElement:
    """The UTC calendar day of a timestamp column, as a DATE on both databases."""
    if dialect == "sqlite":
        return sa.func.date(column, type_=sa.Date)  # SQLite keeps UTC times as text
    return sa.cast(sa.func.timezone("UTC", column), sa.Date)


def spend_by_day(conn: sa.Connection, window: Window = Window()) -> list[DaySpend]:
    """Per UTC day of `result_at` in `window`: finished tasks, successes, errors and spend.

    Only days with at least one finished task appear (the `daily_spend` view has
    the same rows); oldest day first.
    """
    dialect = conn.dialect.name
    day = utc_day(tasks.c.result_at, dialect).label("day")
    success = tasks.c.status == "success"
    query = (
        sa.select(
            day,
            sa.func.count(),
            sa.func.sum(sa.case((success, 1), else_=0)),
            sa.func.sum(sa.case((tasks.c.status == "error", 1), else_=0)),
            _cost_sum(dialect, only=success),
        )
        .where(tasks.c.status.in_(FINAL_STATUSES), tasks.c.result_at.is_not(None), *window.covers(tasks.c.result_at))
        .group_by(day)
        .order_by(day)
    )
    return [
        DaySpend(day=d, tasks=n, successes=ok, errors=bad, spend=_money(spend, dialect))
        for d, n, ok, bad, spend in conn.execute(query)
    ]


def deliveries_by_outcome(conn: sa.Connection, window: Window = Window()) -> dict[str, int]:
    """Webhook POSTs logged with a `received_at` in `window`, by outcome (every outcome present)."""
    query = (
        sa.select(deliveries.c.outcome, sa.func.count())
        .where(*window.covers(deliveries.c.received_at))
        .group_by(deliveries.c.outcome)
    )
    counts = dict.fromkeys(OUTCOMES, 0)
    counts.update((outcome, n) for outcome, n in conn.execute(query))
    return counts


def dead_letter_counts(conn: sa.Connection, window: Window = Window()) -> tuple[int, int]:
    """Dead letters created in `window`: how many, and how many are not replayed yet."""
    query = sa.select(
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(sa.case((dead_letters.c.replayed_at.is_(None), 1), else_=0)), 0),
    ).where(*window.covers(dead_letters.c.created_at))
    total, pending = conn.execute(query).one()
    return total, pending


def waiting_tasks(conn: sa.Connection) -> Waiting:
    """Tasks this service submitted that still wait for a result, now (no window: age is the point)."""
    submitted = tasks.c.status == "submitted"
    count = conn.scalar(sa.select(sa.func.count()).where(submitted))
    oldest = conn.execute(
        sa.select(tasks.c.task_uuid, tasks.c.submitted_at)
        .where(submitted)
        .order_by(tasks.c.submitted_at.asc().nulls_last(), tasks.c.task_uuid)
        .limit(1)
    ).first()
    return Waiting(count, *(oldest or (None, None)))
