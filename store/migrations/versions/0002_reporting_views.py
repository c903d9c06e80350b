"""reporting views for BI tools: task_results, daily_spend, delivery_log

Also an index on tasks (updated_at, task_uuid), the sort key of `GET /api/tasks`.

The views are written with SQLAlchemy Core and compiled for the database at
hand, because SQLite and PostgreSQL differ in three places: the UTC day of a
timestamp, seconds between two timestamps, and exact sums of money (SQLite has
no decimal type: costs are summed as integer units of 1e-10 USD, then divided).
The definitions are frozen here, as a migration must be; docs/sql.md documents
every column.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.sql.ddl import CreateView
from sqlalchemy.sql.ddl import DropView

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

COST_UNITS = 10**10
"""Units per USD of tasks.cost, NUMERIC(20, 10)."""

tasks = sa.table(
    'tasks',
    *(sa.column(name) for name in (
        'task_uuid', 'status', 'source', 'task_type', 'model', 'text', 'error_code', 'error_message',
        'conflict', 'delivery_count',
    )),
    sa.column('cost', sa.Numeric(20, 10)),
    *(sa.column(name, sa.DateTime(timezone=True)) for name in (
        'created_at', 'submitted_at', 'result_at', 'first_delivery_at', 'last_delivery_at', 'updated_at',
    )),
)

deliveries = sa.table(
    'deliveries',
    sa.column('id'), sa.column('received_at'), sa.column('stored_at'), sa.column('size'),
    sa.column('outcome'), sa.column('items'), sa.column('detail'),
)


def utc_day(column, dialect: str):
    """The UTC calendar day of a timestamp (SQLite keeps UTC times as text)."""
    if dialect == 'sqlite':
        return sa.func.date(column)
    return sa.cast(sa.func.timezone('UTC', column), sa.Date)


def seconds_between(start, end, dialect: str):
    """Seconds from `start` to `end`, to the millisecond (NULL if either is NULL)."""
    if dialect == 'sqlite':
        seconds = (sa.func.julianday(end) - sa.func.julianday(start)) * sa.literal(86400.0)
    else:
        seconds = sa.cast(sa.extract('epoch', end - start), sa.Numeric)
    return sa.func.round(seconds, 3)


def spend(dialect: str, only):
    """Exact sum of cost over rows matching `only`, 0 when there are none."""
    cost = sa.case((only, tasks.c.cost))
    if dialect == 'sqlite':
        units = sa.func.sum(sa.cast(sa.func.round(cost * sa.literal(COST_UNITS)), sa.Integer))
        return sa.func.coalesce(units, 0) / sa.literal(float(COST_UNITS))
    return sa.func.coalesce(sa.func.sum(cost), 0)


def task_results(dialect: str):
    """One row per task: its status, result, cost and times (no submission internals)."""
    c = tasks.c
    return sa.select(
        c.task_uuid, c.status, c.status.in_(('error', 'success')).label('is_final'), c.source,
        c.task_type, c.model, c.text, c.cost, c.error_code, c.error_message, c.conflict, c.delivery_count,
        c.created_at, c.submitted_at, c.result_at,
        utc_day(c.result_at, dialect).label('result_day'),
        seconds_between(c.submitted_at, c.result_at, dialect).label('latency_seconds'),
        c.first_delivery_at, c.last_delivery_at, c.updated_at,
    )


def daily_spend(dialect: str):
    """Per UTC day of result: finished tasks, successes, errors and what the successes cost."""
    c = tasks.c
    day = utc_day(c.result_at, dialect).label('day')
    return (
        sa.select(
            day,
            sa.func.count().label('tasks'),
            sa.func.sum(sa.case((c.status == 'success', 1), else_=0)).label('successes'),
            sa.func.sum(sa.case((c.status == 'error', 1), else_=0)).label('errors'),
            spend(dialect, c.status == 'success').label('spend'),
        )
        .where(c.status.in_(('error', 'success')), c.result_at.is_not(None))
        .group_by(day)
    )


def delivery_log(dialect: str):
    """One row per webhook POST accepted: when, how big, outcome; no sender address, no body."""
    c = deliveries.c
    return sa.select(
        c.id, c.received_at, c.stored_at, c.size, c.outcome,
        sa.func.json_array_length(c['items']).label('item_count'), c.detail,
    )


VIEWS = {'task_results': task_results, 'daily_spend': daily_spend, 'delivery_log': delivery_log}


def upgrade() -> None:
    op.create_index('ix_tasks_updated', 'tasks', ['updated_at', 'task_uuid'])
    dialect = op.get_bind().dialect.name
    for name, build in VIEWS.items():
        op.execute(CreateView(build(dialect), name))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, build in reversed(VIEWS.items()):
        op.execute(DropView(CreateView(build(dialect), name).table))
    op.drop_index('ix_tasks_updated', table_name='tasks')
