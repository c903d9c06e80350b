"""label totals: per label, all time, what a groupBy sums, one row per value

`label_totals` holds, per label key and value, the tasks carrying it by status
(the sums of `label_task_days`) and the finished ones with the successes' cost
(the sums of `label_result_days`), one column per figure. Triggers on the two
day rollups add to a value's row what an insert, update or delete of a day row
changed, in the same transaction, as revision 0007's keep days from hours: on
SQLite row triggers (an update adds NEW - OLD), on PostgreSQL statement
triggers over transition tables, their upserts in key order. The rows of the
day rollups already there are summed in.

A groupBy over all time then reads one row per value of the key (a range of
the primary key), not one per value, day and status of two tables.

Revision ID: 0015
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0013'
branch_labels = None
depends_on = None

STATUSES = ('queued', 'submitted', 'error', 'success')

SUCCESS = "{row}.status = 'success'"

FIGURES = {
    'label_task_days': {s: (f"{{row}}.status = '{s}'", 'tasks') for s in STATUSES},
    'label_result_days': {'successes': (SUCCESS, 'tasks'), 'errors': (f'NOT ({SUCCESS})', 'tasks'),
                          'cost_units': (SUCCESS, 'cost_units')},
}
"""Day rollup: {column of label_totals: (which of the rollup's rows it sums, and which measure)}."""

DAY_KEY = ('key', 'day', 'value', 'status')
EVENTS = ('insert', 'update', 'delete')


def upsert(days: str, source: str, row: str, delta, grouped: bool) -> str:
    """INSERT into label_totals the figures of rows `row` of `source` (rows of `days`), `delta(measure)` each."""
    figures = FIGURES[days]
    sums = [f'CASE WHEN {condition.format(row=row)} THEN {delta(measure)} ELSE 0 END'
            for condition, measure in figures.values()]
    columns = ', '.join(('key', 'value', *figures))
    updates = ', '.join(f'{c} = label_totals.{c} + excluded.{c}' for c in figures)
    if grouped:
        # SQLite needs a WHERE to tell the upsert's ON CONFLICT from a join's ON.
        select = (f"SELECT {row}.key, {row}.value, {', '.join(f'sum({s})' for s in sums)} FROM {source} WHERE true "
                  f'GROUP BY {row}.key, {row}.value ORDER BY {row}.key, {row}.value')
    else:  # one row of a SQLite trigger
        select = f"SELECT {row}.key, {row}.value, {', '.join(sums)}"
    return f'INSERT INTO label_totals ({columns}) {select} ON CONFLICT (key, value) DO UPDATE SET {updates}'


def sqlite_triggers(days: str) -> list[str]:
    deltas = {'insert': ('NEW', lambda m: f'NEW.{m}'), 'update': ('NEW', lambda m: f'(NEW.{m} - OLD.{m})'),
              'delete': ('OLD', lambda m: f'-OLD.{m}')}
    return [f'CREATE TRIGGER {days}_totals_{event} AFTER {event.upper()} ON {days} FOR EACH ROW BEGIN '
            f'{upsert(days, row, row, delta, grouped=False)}; END'
            for event, (row, delta) in deltas.items()]


def postgresql_triggers(days: str) -> list[str]:
    measures = sorted({measure for _, measure in FIGURES[days].values()})
    key = ', '.join(DAY_KEY)
    # (not `new` and `old`: in PL/pgSQL those name the trigger's row variables)
    changed = (f"(SELECT {', '.join(f'after.{k}' for k in DAY_KEY)}, "
               + ', '.join(f'after.{m} - before.{m} AS {m}' for m in measures)
               + f' FROM new_rows AS after JOIN old_rows AS before USING ({key})) AS rows')
    sources = {
        'insert': ('REFERENCING NEW TABLE AS new_rows', 'new_rows AS rows', lambda m: f'rows.{m}'),
        'update': ('REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows', changed, lambda m: f'rows.{m}'),
        'delete': ('REFERENCING OLD TABLE AS old_rows', 'old_rows AS rows', lambda m: f'-rows.{m}'),
    }
    ddl = []
    for event, (referencing, source, delta) in sources.items():
        function = f'{days}_totals_{event}'
        ddl += [
            f'CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ '
            f'BEGIN {upsert(days, source, "rows", delta, grouped=True)}; RETURN NULL; END $$',
            f'CREATE TRIGGER {function} AFTER {event.upper()} ON {days} {referencing} '
            f'FOR EACH STATEMENT EXECUTE FUNCTION {function}()',
        ]
    return ddl


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        'label_totals',
        sa.Column('key', sa.String(64), primary_key=True),
        sa.Column('value', sa.String(256), primary_key=True),
        *(sa.Column(name, sa.BigInteger, nullable=False, server_default='0')
          for figures in FIGURES.values() for name in figures),
    )
    for days in FIGURES:
        # Triggers first: on PostgreSQL they lock out writers until this transaction commits,
        # so the backfill sees every day row written before and the triggers every change after.
        for statement in (sqlite_triggers if dialect == 'sqlite' else postgresql_triggers)(days):
            op.execute(statement)
        op.execute(upsert(days, f'{days} AS rows', 'rows', lambda m: f'rows.{m}', grouped=True))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for days in FIGURES:
        for event in EVENTS:
            op.execute(f'DROP TRIGGER {days}_totals_{event}' + (f' ON {days}' if dialect == 'postgresql' else ''))
            if dialect == 'postgresql':
                op.execute(f'DROP FUNCTION {days}_totals_{event}()')
    op.drop_table('label_totals')
