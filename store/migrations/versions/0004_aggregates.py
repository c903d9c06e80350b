"""aggregates: hourly counts, spend and latency, kept by triggers in the transactions that change the store

Three tables (docs/sql.md documents every column):

- `task_hours`: per hour of `tasks.created_at`, status, source and model: tasks,
  conflicts, tasks with deliveries and their deliveries;
- `result_hours`: per hour of `tasks.result_at` (final statuses), status, model
  and latency bucket (submitted -> result): tasks and their cost in units of
  1e-10 USD;
- `delivery_hours`: per hour of `deliveries.received_at`, outcome and latency
  bucket (received -> stored): deliveries.

Each is defined once below, as the contribution of a set of base rows with a
`sign` (+1 added, -1 removed): a SELECT … GROUP BY key. That one definition is
compiled into the triggers, for the dialect at hand, and into the backfill of
an existing store. SQLite takes row triggers that upsert the trigger's NEW
row (+1) or OLD row (-1), both for an UPDATE, with a WHEN clause that skips
updates that change nothing counted; one upsert per row, without GROUP BY,
costs SQLite less than one grouped upsert of both. PostgreSQL takes
statement triggers over transition tables, one per event, with upserts in key
order so that concurrent writers lock aggregate rows in the same order.

The definitions are frozen here, as a migration must be; store/stats.py reads
the tables and computes the partial hours at a window's edges from base rows.

Revision ID: 0004
Revises: 0003
"""

from types import SimpleNamespace

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

COST_UNITS = 10**10
"""Units per USD of tasks.cost, NUMERIC(20, 10)."""

LATENCY_BOUNDS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
"""Upper bounds in seconds (inclusive) of the latency buckets; bucket len(LATENCY_BOUNDS) holds the rest."""

NO_LATENCY = -1
"""The latency bucket of a finished task without a submission time."""

FINAL_STATUSES = ('error', 'success')

TIME = sa.DateTime(timezone=True)


def base(name: str):
    """The columns of a base table the aggregates read, as a lightweight table named `name`."""
    if name in ('tasks', 'new_tasks', 'old_tasks'):
        return sa.table(
            name, sa.column('status'), sa.column('source'), sa.column('model'),
            sa.column('conflict', sa.Boolean), sa.column('delivery_count', sa.Integer),
            sa.column('cost', sa.Numeric(20, 10)),
            *(sa.column(c, TIME) for c in ('created_at', 'result_at', 'submitted_at')),
        )
    return sa.table(name, sa.column('outcome'), sa.column('received_at', TIME), sa.column('stored_at', TIME))


class TriggerRow(ColumnElement):
    """A column of SQLite's NEW or OLD row in a trigger body: `NEW.status` (no FROM)."""

    inherit_cache = True

    def __init__(self, row: str, column: sa.ColumnClause):
        self.row, self.name, self.type = row, column.name, column.type


@compiles(TriggerRow)
def _trigger_row(element, compiler, **kw):
    return '.'.join((element.row, element.name))


def hour_of(column, dialect: str):
    """The UTC hour of a timestamp, as the aggregates key it (SQLite: SQLAlchemy's text layout)."""
    if dialect == 'sqlite':
        return sa.func.strftime('%Y-%m-%d %H:00:00.000000', column)
    return sa.func.date_trunc('hour', column, 'UTC')


def micros_between(start, end, dialect: str):
    """Whole microseconds from `start` to `end`, exactly (SQLite: from the text, no floating point)."""
    if dialect == 'sqlite':
        def micros(t):
            seconds = sa.cast(sa.func.strftime('%s', t), sa.BigInteger) * 1_000_000
            return seconds + sa.cast(sa.func.substr(t, 21, 6), sa.BigInteger)
        return micros(end) - micros(start)
    return sa.extract('epoch', end - start) * 1_000_000


def latency_bucket(micros):
    """The histogram bucket of a latency in microseconds; NO_LATENCY when it is NULL."""
    return sa.case(
        (micros.is_(None), NO_LATENCY),
        *((micros <= int(bound * 1_000_000), n) for n, bound in enumerate(LATENCY_BOUNDS)),
        else_=len(LATENCY_BOUNDS),
    )


def cost_units(cost, dialect: str):
    """A cost in whole units of 1e-10 USD (SQLite keeps cost as a REAL: rounded, as the stats always did)."""
    scaled = sa.func.coalesce(cost, 0) * COST_UNITS
    return sa.cast(sa.func.round(scaled) if dialect == 'sqlite' else scaled, sa.BigInteger)


def task_hours(rows, dialect: str):
    """Per hour of created_at: the key, the measures and the condition of a row's contribution.

    A key named `latency_bucket` is given as microseconds and bucketed by `upsert`.
    """
    c = rows.c
    key = {'hour': hour_of(c.created_at, dialect), 'status': c.status, 'source': c.source,
           'model': sa.func.coalesce(c.model, '')}
    measures = {'tasks': c.sign, 'conflicts': sa.case((c.conflict, c.sign), else_=0),
                'delivered_tasks': sa.case((c.delivery_count > 0, c.sign), else_=0),
                'deliveries': c.sign * c.delivery_count}
    return key, measures, sa.true()


def result_hours(rows, dialect: str):
    """Per hour of result_at, final tasks only."""
    c = rows.c
    key = {'hour': hour_of(c.result_at, dialect), 'status': c.status, 'model': sa.func.coalesce(c.model, ''),
           'latency_bucket': micros_between(c.submitted_at, c.result_at, dialect)}
    measures = {'tasks': c.sign, 'cost_units': c.sign * cost_units(c.cost, dialect)}
    return key, measures, sa.and_(c.status.in_(FINAL_STATUSES), c.result_at.is_not(None))


def delivery_hours(rows, dialect: str):
    """Per hour of received_at."""
    c = rows.c
    key = {'hour': hour_of(c.received_at, dialect), 'outcome': c.outcome,
           'latency_bucket': micros_between(c.received_at, c.stored_at, dialect)}
    return key, {'deliveries': c.sign}, sa.true()


AGGREGATES = {
    'task_hours': ('tasks', task_hours, ('status', 'source', 'model', 'conflict', 'delivery_count', 'created_at')),
    'result_hours': ('tasks', result_hours, ('status', 'model', 'result_at', 'submitted_at', 'cost')),
    'delivery_hours': ('deliveries', delivery_hours, ('outcome', 'received_at', 'stored_at')),
}
"""Aggregate: (base table, definition, the base columns it reads)."""


def upsert(name: str, rows, dialect: str):
    """INSERT the contribution of `rows` into aggregate `name`, adding to the rows already there.

    Rows with nothing to add (an update that moved nothing) are left out by the HAVING.
    """
    _, define, _ = AGGREGATES[name]
    key, measures, condition = define(rows, dialect)
    if isinstance(rows, SimpleNamespace):  # one row of a SQLite trigger: no grouping needed
        select = sa.select(*(latency_bucket(e) if k == 'latency_bucket' else e for k, e in key.items()),
                           *measures.values()).where(condition)
    else:
        facts = sa.select(*(e.label(k) for k, e in {**key, **measures}.items())).where(condition).subquery('facts')
        group = [latency_bucket(facts.c[k]) if k == 'latency_bucket' else facts.c[k] for k in key]
        sums = [sa.func.sum(facts.c[m]) for m in measures]
        select = sa.select(*group, *sums).group_by(*group).having(sa.or_(*(s != 0 for s in sums))).order_by(*group)
    target = sa.table(name, *(sa.column(c) for c in (*key, *measures)))
    stmt = (postgresql if dialect == 'postgresql' else sqlite).insert(target).from_select([*key, *measures], select)
    return stmt.on_conflict_do_update(
        index_elements=list(key), set_={m: target.c[m] + stmt.excluded[m] for m in measures})


def signed(table, sign: int):
    """SELECT the base columns of `table` with a `sign`."""
    return sa.select(*table.c, sa.literal(sign).label('sign'))


def sql(statement, dialect: str) -> str:
    target = sqlite.dialect() if dialect == 'sqlite' else postgresql.dialect()
    return str(statement.compile(dialect=target, compile_kwargs={'literal_binds': True}))


# Trigger DDL has no bound parameters: its text is made only of this module's constants and
# of statements SQLAlchemy compiled from them, never of input.

def trigger_row(prefix: str, table: str, sign: int) -> SimpleNamespace:
    """SQLite's NEW or OLD row of `table`, shaped like a FROM clause (`.c`) for the definitions."""
    return SimpleNamespace(c=SimpleNamespace(**{c.name: TriggerRow(prefix, c) for c in base(table).c},
                                             sign=sa.literal(sign)))


def sqlite_triggers(name: str) -> list[str]:
    """Row triggers on the base table of aggregate `name`, after insert, update and delete."""
    table, define, watched = AGGREGATES[name]
    new, old = trigger_row('NEW', table, 1), trigger_row('OLD', table, -1)
    triggers = []
    for event, rows in (('insert', [new]), ('update', [old, new]), ('delete', [old])):
        if event == 'update':
            when = sa.or_(*(getattr(old.c, c).is_distinct_from(getattr(new.c, c)) for c in watched))
        else:
            when = define(rows[0], 'sqlite')[2]
        body = ' '.join(f'{sql(upsert(name, row, "sqlite"), "sqlite")};' for row in rows)
        triggers.append(
            f'CREATE TRIGGER {name}_{event} AFTER {event.upper()} ON {table} FOR EACH ROW '
            f'WHEN {sql(when, "sqlite")} BEGIN {body} END'
        )
    return triggers


def postgresql_triggers(table: str) -> list[str]:
    """Statement triggers on `table`, one per event, each upserting every aggregate of that table."""
    names = [name for name, (base_table, _, _) in AGGREGATES.items() if base_table == table]
    ddl = []
    for event, tables in (('insert', [('new', 1)]), ('update', [('old', -1), ('new', 1)]), ('delete', [('old', -1)])):
        selects = [signed(base(f'{which}_{table}'), sign) for which, sign in tables]
        rows = (sa.union_all(*selects) if len(selects) > 1 else selects[0]).subquery('rows')
        body = ' '.join(f'{sql(upsert(name, rows, "postgresql"), "postgresql")};' for name in names)
        function = f'{table}_aggregates_{event}'
        referencing = ' '.join(f'{which.upper()} TABLE AS {which}_{table}' for which, _ in tables)
        ddl += [
            f'CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ '
            f'BEGIN {body} RETURN NULL; END $$',
            f'CREATE TRIGGER {function} AFTER {event.upper()} ON {table} REFERENCING {referencing} '
            f'FOR EACH STATEMENT EXECUTE FUNCTION {function}()',
        ]
    return ddl


def create_tables() -> None:
    def hour():
        return sa.Column('hour', TIME, primary_key=True)

    def key(name: str, kind=sa.String(16)):
        return sa.Column(name, kind, primary_key=True)

    def measures(*names: str):
        return [sa.Column(name, sa.BigInteger, nullable=False) for name in names]

    op.create_table('task_hours', hour(), key('status'), key('source'), key('model', sa.String(128)),
                    *measures('tasks', 'conflicts', 'delivered_tasks', 'deliveries'))
    op.create_table('result_hours', hour(), key('status'), key('model', sa.String(128)),
                    key('latency_bucket', sa.SmallInteger), *measures('tasks', 'cost_units'))
    op.create_table('delivery_hours', hour(), key('outcome'), key('latency_bucket', sa.SmallInteger),
                    *measures('deliveries'))


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    create_tables()
    op.create_index('ix_tasks_created', 'tasks', ['created_at'])
    op.create_index('ix_tasks_result', 'tasks', ['result_at'])
    # Triggers first: on PostgreSQL they lock out writers until this transaction commits,
    # so the backfill sees every row written before and the triggers every row after.
    if dialect == 'sqlite':
        ddl = [t for name in AGGREGATES for t in sqlite_triggers(name)]
    else:
        ddl = postgresql_triggers('tasks') + postgresql_triggers('deliveries')
    for statement in ddl:
        op.execute(statement)
    for name, (table, _, _) in AGGREGATES.items():
        op.execute(sql(upsert(name, signed(base(table), 1).subquery('rows'), dialect), dialect))


def drop_triggers(dialect: str) -> list[str]:
    """DROP statements for the triggers (and PostgreSQL functions) of `upgrade`."""
    events = ('insert', 'update', 'delete')
    if dialect == 'sqlite':
        return [f'DROP TRIGGER {name}_{event}' for name in AGGREGATES for event in events]
    return [ddl for table in ('tasks', 'deliveries') for event in events
            for ddl in (f'DROP TRIGGER {table}_aggregates_{event} ON {table}',
                        f'DROP FUNCTION {table}_aggregates_{event}()')]


def downgrade() -> None:
    for statement in drop_triggers(op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_index('ix_tasks_result', table_name='tasks')
    op.drop_index('ix_tasks_created', table_name='tasks')
    for name in reversed(AGGREGATES):
        op.drop_table(name)
