"""Writing results: one merge rule for webhooks, sync answers, polls and submission errors.

Per taskUUID the stored state converges whatever the order and number of writes:
a higher status wins (success > error > submitted > queued); between two results
of the same final status the one received first wins; a success that disagrees
with another success sets `conflict`; delivery counts and first/last times add
up commutatively. The rule lives in one SQL `INSERT … ON CONFLICT DO UPDATE`, so
concurrent writers cannot race it, and it is the same on SQLite and PostgreSQL.

Labels converge the same way (`merge_labels`): per task and key, whatever the
order and number of submissions and deliveries, the value given *earliest* wins
(`labeled_at`: queue time for a submission, receipt time for a delivery; the
smaller value between two given at the same instant), and a key given another
value by any of them is flagged (`conflict`), as a disagreeing success is. So a
submission's labels are never overridden by a delivery's, and a delivery
without labels removes none. A task's labels are written after its task row,
in the same transaction (the aggregates' triggers rely on it: revision 0008).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from decimal import Decimal

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

from store.schema import FINAL_STATUSES
from store.schema import STATUSES
from store.schema import deliveries
from store.schema import task_events
from store.schema import task_labels
from store.schema import tasks
from store.schema import utcnow

FINAL_RANK = STATUSES.index(FINAL_STATUSES[0])


@dataclass(frozen=True)
class Result:
    """One normalised result item for a task."""

    task_uuid: str
    status: str
    received_at: datetime
    text: str | None = None
    cost: Decimal | None = None
    task_type: str | None = None
    model: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    def as_json(self) -> dict:
        """The item as it is kept in the delivery log."""
        item = {k: v for k, v in self.__dict__.items() if v is not None and k != "received_at"}
        if self.cost is not None:
            item["cost"] = str(self.cost)
        return item


@dataclass(frozen=True)
class Delivery:
    """One accepted webhook POST, parsed: its usable results and the items it had to skip."""

    id: str
    received_at: datetime
    remote_addr: str | None
    size: int
    results: list[Result] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        if not self.results:
            return "rejected"
        return "partial" if self.skipped else "stored"


@dataclass(frozen=True)
class Label:
    """One label given to a task, and when: a submission's queue time or a delivery's receipt time."""

    task_uuid: str
    key: str
    value: str
    at: datetime


def _reduce_labels(labels: Iterable[Label]) -> list[dict]:
    """One row per (task, key): the earliest value (smallest among equals), flagged if any value differed."""
    best: dict[tuple[str, str], dict] = {}
    for label in labels:
        row = {"task_uuid": label.task_uuid, "key": label.key, "value": label.value, "labeled_at": label.at,
               "conflict": False}
        old = best.setdefault((label.task_uuid, label.key), row)
        if old is row:
            continue
        conflict = old["conflict"] or old["value"] != row["value"]
        if (row["labeled_at"], row["value"]) < (old["labeled_at"], old["value"]):
            old.update(value=row["value"], labeled_at=row["labeled_at"])
        old["conflict"] = conflict
    return list(best.values())


def _label_merge_statement(dialect: str) -> sa.Insert:
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(task_labels)
    new, old = stmt.excluded, task_labels.c
    wins = sa.or_(new.labeled_at < old.labeled_at, sa.and_(new.labeled_at == old.labeled_at, new.value < old.value))
    return stmt.on_conflict_do_update(
        index_elements=[old.task_uuid, old.key],
        set_={
            "value": sa.case((wins, new.value), else_=old.value),
            "labeled_at": sa.case((wins, new.labeled_at), else_=old.labeled_at),
            "conflict": sa.or_(old.conflict, new.conflict, old.value != new.value),
        },
    )


def merge_labels(conn: sa.Connection, labels: Iterable[Label]) -> int:
    """Merge labels into `task_labels` (after their tasks' rows, in the same transaction). Returns rows written."""
    rows = sorted(_reduce_labels(labels), key=lambda row: (row["task_uuid"], row["key"]))  # one lock order for all
    insert_rows(conn, _label_merge_statement(conn.dialect.name), rows)
    return len(rows)


STATEMENT_ROWS = 1000
"""Rows per multi-row INSERT on PostgreSQL (`insert_rows`)."""


def insert_rows(conn: sa.Connection, stmt: sa.Insert, rows: list[dict]) -> None:
    """INSERT rows: on PostgreSQL in multi-row statements, since an `executemany` runs one statement per row and
    the aggregates' statement triggers (revisions 0004, 0008) would fire once per row; on SQLite an `executemany`
    (its row triggers fire per row anyway)."""
    if conn.dialect.name != "postgresql":
        if rows:
            conn.execute(stmt, rows)
        return
    for first in range(0, len(rows), STATEMENT_ROWS):
        conn.execute(stmt.values(rows[first:first + STATEMENT_ROWS]))


@dataclass(frozen=True)
class Event:
    """One line of a task's history (`task_events`): a delivery item, a submission attempt or a poll."""

    task_uuid: str
    at: datetime
    kind: str
    status: str | None = None
    detail: str | None = None
    delivery_id: str | None = None
    item_index: int | None = None

    @classmethod
    def of(cls, result: Result, kind: str, detail: str | None = None, **where) -> Event:
        """The event of a result applied through `apply_results`; `detail` defaults to its error."""
        if detail is None and result.error_code is not None:
            detail = f"{result.error_code}: {result.error_message or ''}".rstrip(": ")
        return cls(result.task_uuid, result.received_at, kind, result.status, detail, **where)


def _literal(value: str | int) -> sa.ColumnElement:
    """A constant inlined in the SQL (bound parameters would be repeated for every row of a batch)."""
    return sa.literal_column(f"'{value}'" if isinstance(value, str) else str(value))


def _rank(status: sa.ColumnElement) -> sa.ColumnElement:
    return sa.case(*((status == _literal(name), _literal(rank)) for rank, name in enumerate(STATUSES)))


def _earliest(new: sa.ColumnElement, old: sa.ColumnElement, earlier: bool = True) -> sa.ColumnElement:
    """The earlier (or later) of two nullable timestamps."""
    better = new < old if earlier else new > old
    return sa.case((new.is_(None), old), (old.is_(None), new), (better, new), else_=old)


STAGING = sa.Table(
    "tasks_staging", sa.MetaData(), *(sa.Column(c.name, c.type) for c in tasks.c),
    prefixes=["TEMPORARY"], postgresql_on_commit="DELETE ROWS",
)
"""PostgreSQL: a session's temporary table, shaped like `tasks`, that a batch is COPYed into before the merge."""


def _merge_statement(dialect: str, staged: tuple[str, ...] = ()) -> sa.Insert:
    """The merge as `INSERT … VALUES`, or with `staged` columns as `INSERT … SELECT` from STAGING."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(tasks)
    if staged:
        stmt = stmt.from_select(staged, sa.select(*(STAGING.c[name] for name in staged)))
    new, old = stmt.excluded, tasks.c
    wins = sa.or_(
        _rank(new.status) > _rank(old.status),
        sa.and_(new.status == old.status, _rank(new.status) >= _literal(FINAL_RANK), new.result_at < old.result_at),
    )

    def pick(name: str) -> sa.ColumnElement:
        return sa.case((wins, new[name]), else_=old[name])

    disagree = sa.or_(old.text.is_distinct_from(new.text), old.cost.is_distinct_from(new.cost))
    second_success = sa.and_(old.status == _literal("success"), new.status == old.status)
    return stmt.on_conflict_do_update(
        index_elements=[tasks.c.task_uuid],
        set_={
            **{name: pick(name) for name in ("status", "text", "cost", "error_code", "error_message", "result_at")},
            "task_type": sa.func.coalesce(old.task_type, new.task_type),
            "model": sa.func.coalesce(old.model, new.model),
            "conflict": sa.or_(old.conflict, sa.and_(second_success, disagree)),
            "delivery_count": old.delivery_count + new.delivery_count,
            "first_delivery_at": _earliest(new.first_delivery_at, old.first_delivery_at),
            "last_delivery_at": _earliest(new.last_delivery_at, old.last_delivery_at, earlier=False),
            "updated_at": new.updated_at,
        },
    )


def _rounds(rows: list[dict]) -> Iterable[list[dict]]:
    """Split rows so that no task appears twice in one statement (PostgreSQL forbids it)."""
    rounds: list[list[dict]] = []
    seen: dict[str, int] = {}
    for row in rows:
        n = seen.get(row["task_uuid"], 0)
        seen[row["task_uuid"]] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(row)
    return rounds


LOGS = {"log": deliveries, "events": task_events}
"""Tables written by plain inserts (no merge), by the name `_run` takes."""


@functools.cache
def _sql(statement: str, dialect: str, columns: tuple[str, ...]) -> str:
    """A statement compiled once per dialect, with named parameters, for `exec_driver_sql`."""
    if statement in LOGS:
        stmt = LOGS[statement].insert()
    else:
        stmt = _merge_statement(dialect, columns if statement == "merge staged" else ())
    target = sqlite.dialect(paramstyle="named") if dialect == "sqlite" else postgresql.psycopg.dialect()
    return str(stmt.compile(dialect=target, column_keys=list(columns)))


def _copy_type(column: sa.Column) -> str:
    """The PostgreSQL type a binary COPY sends a column's driver-ready value as."""
    kind = column.type.impl if isinstance(column.type, sa.TypeDecorator) else column.type
    for python_type, name in ((sa.Boolean, "bool"), (sa.Integer, "int4"), (sa.Numeric, "numeric"),
                              (sa.DateTime, "timestamptz"), (sa.String, "text"), (sa.JSON, "text")):
        if isinstance(kind, python_type):
            return name  # JSON arrives as serialised text, which is also json's binary form
    raise TypeError(f"no COPY type for column {column.name} ({kind!r})")


def _copy(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> None:
    """Binary COPY of rows into `table`, inside the connection's transaction."""
    from psycopg import sql as psycopg_sql  # here, so that a SQLite deployment never loads libpq

    columns = tuple(rows[0])
    statement = psycopg_sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        psycopg_sql.Identifier(table.name), psycopg_sql.SQL(", ").join(map(psycopg_sql.Identifier, columns)))
    with conn.connection.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types([_copy_type(table.c[name]) for name in columns])
        for row in rows:
            copy.write_row(tuple(row.values()))


def _run(conn: sa.Connection, statement: str, rounds: list[list[dict]]) -> None:
    """Write rows, each round in one go. This is the drain's hot path.

    Rows arrive with driver-ready values (`_db_values`): per-value type processing
    cost more than the database spent writing. SQLite takes an `executemany` of the
    statement compiled once. PostgreSQL takes a COPY: straight into the logs (LOGS),
    and for the merge into STAGING, then one `INSERT … SELECT … ON CONFLICT` (an
    `executemany` of the merge set up its long `DO UPDATE` clause once per row, which
    took twice the time).
    """
    dialect = conn.dialect.name
    if dialect != "postgresql":
        for rows in rounds:
            conn.exec_driver_sql(_sql(statement, dialect, tuple(rows[0])), rows)
    elif statement in LOGS:
        for rows in rounds:
            _copy(conn, LOGS[statement], rows)
    else:
        conn.execute(sa.schema.CreateTable(STAGING, if_not_exists=True))
        for rows in rounds:
            _copy(conn, STAGING, rows)
            conn.exec_driver_sql(_sql("merge staged", dialect, tuple(rows[0])))
            conn.execute(STAGING.delete())  # emptied at once: the transaction may merge again before it commits


def _db_values(conn: sa.Connection):
    """Converters to driver values: SQLite keeps UTC times as text and decimals as numbers."""
    if conn.dialect.name != "sqlite":
        return (lambda t: t), (lambda d: d)
    cache: dict[datetime, str | None] = {None: None}

    def time(value: datetime | None) -> str | None:
        if value not in cache:
            cache[value] = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        return cache[value]

    return time, lambda d: None if d is None else str(d)


def apply_results(conn: sa.Connection, results: Iterable[Result], *, delivered: bool = True) -> int:
    """Merge results into `tasks`. `delivered` counts each as a webhook delivery. Returns how many."""
    time, number = _db_values(conn)
    now = time(utcnow())
    rows = [
        {
            "task_uuid": r.task_uuid,
            "status": r.status,
            "source": "external",
            "task_type": r.task_type,
            "model": r.model,
            "text": r.text,
            "cost": number(r.cost),
            "error_code": r.error_code,
            "error_message": r.error_message,
            "conflict": False,
            "result_at": time(r.received_at) if r.status in FINAL_STATUSES else None,
            "delivery_count": 1 if delivered else 0,
            "first_delivery_at": time(r.received_at) if delivered else None,
            "last_delivery_at": time(r.received_at) if delivered else None,
            "created_at": now,
            "updated_at": now,
        }
        for r in results
    ]
    if rows:
        _run(conn, "merge", _rounds(rows))
    return len(rows)


def record_events(conn: sa.Connection, events: list[Event]) -> None:
    """Add events to their tasks' histories (store/history.py), in the transaction that applies their results."""
    if events:
        time, _ = _db_values(conn)
        _run(conn, "events", [[{"task_uuid": e.task_uuid, "at": time(e.at), "kind": e.kind, "status": e.status,
                                "detail": e.detail, "delivery_id": e.delivery_id, "item_index": e.item_index}
                               for e in events]])


def _among(conn: sa.Connection, column: sa.Column, values: list[str]) -> sa.ColumnElement:
    """WHERE `column` is one of `values`. PostgreSQL takes one array parameter: an IN list of 1,000
    costs more to build than to run."""
    if conn.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam("among", values, type_=postgresql.ARRAY(sa.Text)))
    return column.in_(values)


def known_deliveries(conn: sa.Connection, ids: list[str]) -> set[str]:
    """The ids among `ids` already in the delivery log (a batch seen again after a crash)."""
    if not ids:
        return set()
    return set(conn.scalars(sa.select(deliveries.c.id).where(_among(conn, deliveries.c.id, ids))))


def save_deliveries(conn: sa.Connection, batch: list[Delivery]) -> list[Delivery]:
    """Log and apply the deliveries not stored before, with an event per item; returns those it stored.

    Idempotent per delivery id: a batch replayed after a crash adds nothing twice.
    """
    seen = known_deliveries(conn, [d.id for d in batch])
    fresh = [d for d in batch if d.id not in seen]
    if not fresh:
        return []
    time, _ = _db_values(conn)
    now = time(utcnow())
    log = [
        {
            "id": d.id,
            "received_at": time(d.received_at),
            "remote_addr": d.remote_addr,
            "size": d.size,
            "outcome": d.outcome,
            "items": orjson.dumps([r.as_json() for r in d.results]).decode(),
            "detail": "; ".join(d.skipped) or None,
            "stored_at": now,
        }
        for d in fresh
    ]
    if any(d.labels for d in fresh):  # the column only when needed: most batches carry no labels
        for row, d in zip(log, fresh):
            row["labels"] = orjson.dumps(d.labels).decode() if d.labels else None
    _run(conn, "log", [log])
    apply_results(conn, (r for d in fresh for r in d.results))
    record_events(conn, [Event.of(r, "delivery", delivery_id=d.id, item_index=i)
                         for d in fresh for i, r in enumerate(d.results)])
    merge_labels(conn, (Label(r.task_uuid, key, value, d.received_at)
                        for d in fresh if d.labels for r in d.results for key, value in d.labels.items()))
    return fresh
