"""day aggregates: the hourly aggregates rolled up per UTC day, kept by triggers on the hourly tables

`task_days`, `result_days` and `delivery_days` hold, per UTC day, the sums of
the rows of `task_hours`, `result_hours` and `delivery_hours` of that day, with
the same keys and measures. Each hourly table gets triggers that add to its
day row what an insert, update or delete of an hourly row changed, in the same
transaction: on SQLite row triggers (an hourly row's update adds NEW - OLD), on
PostgreSQL statement triggers over transition tables, whose upserts go in key
order as the hourly ones do, so that concurrent writers lock day rows in the
same order. Hourly rows never change their key, only their measures.

A window of many days then reads one row per day and key for its whole days
(store/stats.py), not one per hour: 24 times fewer rows.

`ix_tasks_waiting`, a partial index of the submitted tasks by submission time,
finds the one waiting longest without reading the others.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)

ROLLUPS = {
    'task_hours': ('task_days', ('status', 'source', 'model'), ('tasks', 'conflicts', 'delivered_tasks', 'deliveries')),
    'result_hours': ('result_days', ('status', 'model', 'latency_bucket'), ('tasks', 'cost_units')),
    'delivery_hours': ('delivery_days', ('outcome', 'latency_bucket'), ('deliveries',)),
}
"""Hourly table: (its day table, key columns besides the time, measures)."""

KEY_TYPES = {'status': sa.String(16), 'source': sa.String(16), 'outcome': sa.String(16),
             'model': sa.String(128), 'latency_bucket': sa.SmallInteger}

EVENTS = ('insert', 'update', 'delete')


def day_of(hour: str, dialect: str) -> str:
    """The UTC day (midnight) of an hourly row's `hour`, as the day tables key it (SQLite: the same text layout)."""
    if dialect == 'sqlite':
        return f"substr({hour}, 1, 10) || ' 00:00:00.000000'"
    return f"date_trunc('day', {hour}, 'UTC')"


def upsert(hours: str, source: str, deltas: dict[str, str], dialect: str, grouped: bool) -> str:
    """INSERT into the day table of `hours` the `deltas` (measure: expression) of rows from `source`."""
    days, keys, measures = ROLLUPS[hours]
    day = day_of('hour', dialect)
    columns = ', '.join(('day', *keys, *measures))
    conflict = ', '.join(('day', *keys))
    updates = ', '.join(f'{m} = {days}.{m} + excluded.{m}' for m in measures)
    if grouped:
        # SQLite needs a WHERE to tell the upsert's ON CONFLICT from a join's ON.
        where = ' WHERE true' if dialect == 'sqlite' else ''
        group = ', '.join((day, *keys))
        sums = ', '.join(f'sum({deltas[m]})' for m in measures)
        select = f'SELECT {group}, {sums} FROM {source}{where} GROUP BY {group} ORDER BY {group}'
    else:  # one row of a SQLite trigger
        select = 'SELECT ' + ', '.join((day_of(f'{source}.hour', dialect), *(f'{source}.{k}' for k in keys),
                                        *(deltas[m] for m in measures)))
    return f'INSERT INTO {days} ({columns}) {select} ON CONFLICT ({conflict}) DO UPDATE SET {updates}'


def sqlite_triggers(hours: str) -> list[str]:
    _, _, measures = ROLLUPS[hours]
    deltas = {
        'insert': ('NEW', {m: f'NEW.{m}' for m in measures}),
        'update': ('NEW', {m: f'NEW.{m} - OLD.{m}' for m in measures}),
        'delete': ('OLD', {m: f'-OLD.{m}' for m in measures}),
    }
    return [f'CREATE TRIGGER {hours}_days_{event} AFTER {event.upper()} ON {hours} FOR EACH ROW BEGIN '
            f'{upsert(hours, row, delta, "sqlite", grouped=False)}; END'
            for event, (row, delta) in deltas.items()]


def postgresql_triggers(hours: str) -> list[str]:
    _, keys, measures = ROLLUPS[hours]
    key = ', '.join(('hour', *keys))
    # (not `new` and `old`: in PL/pgSQL those name the trigger's row variables)
    changed = (f'(SELECT after.{key.replace(", ", ", after.")}, '
               + ', '.join(f'after.{m} - before.{m} AS {m}' for m in measures)
               + f' FROM new_rows AS after JOIN old_rows AS before USING ({key})) AS rows')
    sources = {
        'insert': ('REFERENCING NEW TABLE AS new_rows', 'new_rows', {m: m for m in measures}),
        'update': ('REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows', changed, {m: m for m in measures}),
        'delete': ('REFERENCING OLD TABLE AS old_rows', 'old_rows', {m: f'-{m}' for m in measures}),
    }
    ddl = []
    for event, (referencing, source, deltas) in sources.items():
        function = f'{hours}_days_{event}'
        ddl += [
            f'CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ '
            f'BEGIN {upsert(hours, source, deltas, "postgresql", grouped=True)}; RETURN NULL; END $$',
            f'CREATE TRIGGER {function} AFTER {event.upper()} ON {hours} {referencing} '
            f'FOR EACH STATEMENT EXECUTE FUNCTION {function}()',
        ]
    return ddl


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_index('ix_tasks_waiting', 'tasks', ['submitted_at', 'task_uuid'],
                    sqlite_where=sa.text("status = 'submitted'"), postgresql_where=sa.text("status = 'submitted'"))
    for hours, (days, keys, measures) in ROLLUPS.items():
        op.create_table(
            days,
            sa.Column('day', TIME, primary_key=True),
            *(sa.Column(k, KEY_TYPES[k], primary_key=True) for k in keys),
            *(sa.Column(m, sa.BigInteger, nullable=False) for m in measures),
        )
        # Triggers first: on PostgreSQL they lock out writers until this transaction commits,
        # so the backfill sees every hourly row written before and the triggers every change after.
        for statement in (sqlite_triggers if dialect == 'sqlite' else postgresql_triggers)(hours):
            op.execute(statement)
        op.execute(upsert(hours, hours, {m: m for m in measures}, dialect, grouped=True))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for hours, (days, _, _) in ROLLUPS.items():
        for event in EVENTS:
            op.execute(f'DROP TRIGGER {hours}_days_{event}' + (f' ON {hours}' if dialect == 'postgresql' else ''))
            if dialect == 'postgresql':
                op.execute(f'DROP FUNCTION {hours}_days_{event}()')
        op.drop_table(days)
    op.drop_index('ix_tasks_waiting', table_name='tasks')
