"""Reading the store for the API and dashboards: one function per question, SQLAlchemy Core.

Time windows are half-open, `since <= t < until`, either end optional. The
figures of `GET /api/stats` come from the aggregates, in store/stats.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from store import search as search_query
from store import thumbnails
from store.schema import UTCDateTime
from store.schema import label_values
from store.schema import task_labels
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


def among(conn: sa.Connection, column: sa.ColumnElement, values: list[str]) -> sa.ColumnElement:
    """WHERE condition: `column` is one of `values`. PostgreSQL gets them as one array (`= ANY`, which is what
    it makes of an IN list), not a parameter each: for an export's chunk of thousands, rendering and
    sending those cost more than the query."""
    if conn.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam("values", values, type_=ARRAY(column.type)))
    return column.in_(values)


def labels_of(conn: sa.Connection, task_uuids: Iterable[str]) -> dict[str, tuple[dict[str, str], list[str]]]:
    """The labels of each task (by key) and the keys flagged for disagreement; tasks without labels are absent."""
    found: dict[str, tuple[dict[str, str], list[str]]] = {}
    uuids = list(task_uuids)
    if not uuids:
        return found
    query = (sa.select(task_labels.c.task_uuid, task_labels.c.key, task_labels.c.value, task_labels.c.conflict)
             .where(among(conn, task_labels.c.task_uuid, uuids))
             .order_by(task_labels.c.task_uuid, task_labels.c.key))
    for task_uuid, key, value, conflict in conn.execute(query):
        labels, conflicts = found.setdefault(task_uuid, ({}, []))
        labels[key] = value
        if conflict:
            conflicts.append(key)
    return found


LABEL_FIRST = 1.0
"""SQLite: for `limit` tasks of a label that K of the N tasks carry, walking the list's order reads about
limit x N / K of them (checking each one's labels), and reading the K from `ix_task_labels_key_value`
costs about K (each looked up, then sorted). The rarest label's tasks are read first when
K x K < LABEL_FIRST x limit x N (K from `label_values`, N from the highest rowid). PostgreSQL's planner makes
that choice itself, from its statistics of `task_labels`."""


def labelled_first(conn: sa.Connection, labels: dict[str, str], limit: int) -> list[str] | None:
    """SQLite: the tasks carrying the rarest of `labels` when reading them first costs less (LABEL_FIRST)."""
    if not labels or conn.dialect.name != "sqlite":
        return None
    v = label_values.c
    counts = dict(conn.execute(sa.select(v.key, v.tasks).where(
        sa.or_(*(sa.and_(v.key == key, v.value == value) for key, value in labels.items())))).all())
    key = min(labels, key=lambda k: counts.get(k, 0))
    rarest = counts.get(key, 0)
    stored = conn.scalar(sa.select(sa.func.max(search_query.TASKS_ROWID)).select_from(tasks)) or 0
    if rarest * rarest >= LABEL_FIRST * limit * stored:
        return None
    label = task_labels.c
    return list(conn.scalars(sa.select(label.task_uuid).where(label.key == key, label.value == labels[key])))


def carries(key: str, value: str) -> sa.ColumnElement:
    """WHERE condition on tasks: the task carries label key=value (through ix_task_labels_key_value)."""
    label = task_labels.c
    return sa.exists().where(label.task_uuid == tasks.c.task_uuid, label.key == key, label.value == value)


TIME_FIELDS = tuple(name for name, column in PUBLIC_FIELDS.items() if isinstance(column.type, UTCDateTime))
"""The fields of PUBLIC_FIELDS that hold times (shown in ISO 8601)."""


def task_json(row: sa.Row, labels: tuple[dict[str, str], list[str]] | None = None) -> dict:
    """A task row as JSON-ready values (ISO times, cost as a number of USD), with its labels.

    `labelConflicts` lists the keys that a submission or delivery gave another value (see store.results).
    """
    record = dict(zip(PUBLIC_FIELDS, row))
    for name in TIME_FIELDS:  # exports run this for every row
        if record[name] is not None:
            record[name] = record[name].isoformat()
    if record["cost"] is not None:
        record["cost"] = float(record["cost"])
    record["labels"], record["labelConflicts"] = labels or ({}, [])
    return record


def with_labels(conn: sa.Connection, rows: list[sa.Row]) -> list[dict]:
    """Task rows as JSON, each with its labels and whether it has a thumbnail (one query for each, for them all)."""
    labels = labels_of(conn, (row.task_uuid for row in rows))
    shown = thumbnails.kept(conn, (row.task_uuid for row in rows))
    return [{**task_json(row, labels.get(row.task_uuid)), "thumbnail": row.task_uuid in shown} for row in rows]


def get_task(conn: sa.Connection, task_uuid: str) -> dict | None:
    row = conn.execute(sa.select(*PUBLIC_FIELDS.values()).where(tasks.c.task_uuid == task_uuid)).first()
    return with_labels(conn, [row])[0] if row else None


def read_snapshot(conn: sa.Connection) -> sa.Connection:
    """Make the next transaction on `conn` see one snapshot, so several queries agree.

    PostgreSQL: a read-only REPEATABLE READ transaction. SQLite (WAL) reads are
    already consistent per statement, and the dialect offers no such level.
    """
    if conn.dialect.name == "postgresql":
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return conn


def list_tasks(conn: sa.Connection, **filters) -> tuple[list[dict], tuple[datetime, str] | None]:
    """One page of tasks as the API shows them (`filters`: keyword arguments of `list_rows`), and the sort key
    to continue after, or None when this is the last page."""
    page, after = list_rows(conn, list(PUBLIC_FIELDS.values()), **filters)
    return with_labels(conn, page), after


def list_rows(
    conn: sa.Connection,
    columns: list[sa.ColumnElement],
    *,
    statuses: tuple[str, ...] = (),
    sources: tuple[str, ...] = (),
    window: Window = Window(),
    search: search_query.Query | None = None,
    labels: dict[str, str] | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> tuple[list[sa.Row], tuple[datetime, str] | None]:
    """One page of the list's rows of `columns` (which hold `tasks.c.updated_at` and `tasks.c.task_uuid`),
    newest `updated_at` first (ties: higher taskUUID first).

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
        conditions.append(search_query.older_than(after))
    first = labelled_first(conn, labels or {}, limit + 1)
    if first is not None:
        # The few tasks are looked up by key. SQLite guesses an equality keeps ten rows, so it would walk
        # the index of another condition: saying those keep most rows makes it look the tasks up.
        conditions = [sa.func.likelihood(c, sa.literal_column("0.9")) for c in conditions]
        conditions.append(tasks.c.task_uuid.in_(first))
    conditions += [carries(key, value) for key, value in (labels or {}).items()]
    if search is None:
        rows = search_query.newest(conn, columns, conditions, limit + 1)
    else:
        rows = search_query.newest_matching(conn, search, columns, conditions, limit + 1)
        by_uuid = search_query.uuid_matches(search)
        if by_uuid is not None:  # a second query, so that each is served by its own index
            by_uuid_rows = search_query.newest(conn, columns, [*conditions, by_uuid], limit + 1)
            found = {row.task_uuid: row for row in [*rows, *by_uuid_rows]}
            rows = sorted(found.values(), key=lambda row: (row.updated_at, row.task_uuid), reverse=True)
    page = rows[:limit]
    more = len(rows) > limit
    return page, ((page[-1].updated_at, page[-1].task_uuid) if more else None)
