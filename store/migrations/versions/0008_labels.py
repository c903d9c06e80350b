"""labels: a task's labels, their aggregates and views; the labels of each logged delivery

- `task_labels` (task_uuid, key, value, labeled_at, conflict), with an index on
  (key, value, task_uuid) for `GET /api/tasks?label.K=V`;
- `deliveries.labels`: the labels of the webhook URL a delivery came to;
- three aggregates, kept by triggers as in revision 0004: `label_task_hours` per
  hour of `tasks.created_at`, label and status (tasks); `label_result_hours` per
  hour of `tasks.result_at`, label and final status (tasks and their cost in
  units of 1e-10 USD); `label_values` per label (tasks carrying it);
- the views: `task_results` and `delivery_log` gain a `labels` column (a JSON
  object), and `spend_by_label` gives per label and UTC day of result what
  `daily_spend` gives per day.

A task-and-label aggregate counts the pair (task row, label row) while both
rows exist, so triggers on both tables keep it: a change to a task moves the
contributions of its labels, a change to a label that of its task. The
application writes a task's labels after its task row, in the same
transaction, so two writers of one task are serialised on the task row and
each trigger sees the other's committed rows. SQLite takes row triggers
(NEW +1, OLD -1), PostgreSQL statement triggers over transition tables,
grouped and in key order. The definitions are frozen here, as a migration
must be; store/labels.py reads the tables and computes a window's partial
hours from base rows.

Revision ID: 0008
Revises: 0007
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.sql.ddl import CreateView
from sqlalchemy.sql.ddl import DropView

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

COST_UNITS = 10**10
"""Units per USD of tasks.cost, NUMERIC(20, 10)."""

FINAL = "('error', 'success')"

_spec = importlib.util.spec_from_file_location('views_0002', Path(__file__).with_name('0002_reporting_views.py'))
views_0002 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(views_0002)
"""Revision 0002's view definitions (frozen), which the views here extend."""


def hour_of(column: str, dialect: str) -> str:
    if dialect == 'sqlite':
        return f"strftime('%Y-%m-%d %H:00:00.000000', {column})"
    return f"date_trunc('hour', {column}, 'UTC')"


def cost_units(column: str, dialect: str) -> str:
    scaled = f'coalesce({column}, 0) * {COST_UNITS}'
    return f'CAST(round({scaled}) AS BIGINT)' if dialect == 'sqlite' else f'CAST({scaled} AS BIGINT)'


def definition(name: str, t: str, lr: str, sign: str, dialect: str):
    """Aggregate `name`: its key and measures as SQL over task row `t` and label row `lr`, and its condition."""
    label = {'key': f'{lr}.key', 'value': f'{lr}.value'}
    if name == 'label_task_hours':
        return {'key': label['key'], 'hour': hour_of(f'{t}.created_at', dialect), 'value': label['value'],
                'status': f'{t}.status'}, \
            {'tasks': sign}, 'true'
    if name == 'label_result_hours':
        return {'key': label['key'], 'hour': hour_of(f'{t}.result_at', dialect), 'value': label['value'],
                'status': f'{t}.status'}, \
            {'tasks': sign, 'cost_units': f'{sign} * {cost_units(f"{t}.cost", dialect)}'}, \
            f'{t}.status IN {FINAL} AND {t}.result_at IS NOT NULL'
    return label, {'tasks': sign}, 'true'


PAIRED = ('label_task_hours', 'label_result_hours')
"""The aggregates of a task and its labels; `label_values` counts label rows alone."""

WATCHED = {'label_task_hours': ('status', 'created_at'),
           'label_result_hours': ('status', 'result_at', 'cost')}
"""The task columns each paired aggregate reads (a task update changing none of them moves nothing)."""


def upsert(name: str, source: str, where: str, t: str, lr: str, sign: str, dialect: str, grouped: bool) -> str:
    """INSERT aggregate `name`'s contribution of the rows of `source`, adding to the rows already there."""
    key, measures, condition = definition(name, t, lr, sign, dialect)
    columns = ', '.join([*key, *measures])
    conflict = f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET " + ', '.join(
        f'{m} = {name}.{m} + excluded.{m}' for m in measures)
    if not grouped:
        select = f"SELECT {', '.join([*key.values(), *measures.values()])} {source} WHERE {where} AND {condition}"
        return f'INSERT INTO {name} ({columns}) {select} {conflict}'
    facts = ', '.join(f'{e} AS {k}' for k, e in {**key, **measures}.items())
    sums = ', '.join(f'sum({m})' for m in measures)
    having = ' OR '.join(f'sum({m}) <> 0' for m in measures)
    keys = ', '.join(key)
    return (f'INSERT INTO {name} ({columns}) SELECT {keys}, {sums} FROM '
            f'(SELECT {facts} {source} WHERE {where} AND {condition}) AS facts '
            f'GROUP BY {keys} HAVING {having} ORDER BY {keys} {conflict}')


# Trigger DDL has no bound parameters: its text is made only of this module's constants.

def sqlite_triggers() -> list[str]:
    """Row triggers on tasks (per paired aggregate) and on task_labels (every aggregate)."""
    ddl = []
    for name in PAIRED:
        changed = ' OR '.join(f'OLD.{c} IS NOT NEW.{c}' for c in WATCHED[name])
        for event, rows, when in (('insert', ['NEW'], ''), ('update', ['OLD', 'NEW'], f' WHEN {changed}'),
                                  ('delete', ['OLD'], '')):
            body = ' '.join(
                upsert(name, 'FROM task_labels AS l', f'l.task_uuid = {row}.task_uuid', row, 'l',
                       '1' if row == 'NEW' else '-1', 'sqlite', grouped=False) + ';'
                for row in rows)
            ddl.append(f'CREATE TRIGGER {name}_tasks_{event} AFTER {event.upper()} ON tasks FOR EACH ROW{when} '
                       f'BEGIN {body} END')
    for event, rows, when in (('insert', ['NEW'], ''), ('update', ['OLD', 'NEW'], ' WHEN OLD.value IS NOT NEW.value'),
                              ('delete', ['OLD'], '')):
        body = []
        for row in rows:
            sign = '1' if row == 'NEW' else '-1'
            body += [upsert(name, 'FROM tasks AS t', f't.task_uuid = {row}.task_uuid', 't', row, sign, 'sqlite',
                            grouped=False) for name in PAIRED]
            body.append(upsert('label_values', '', 'true', '', row, sign, 'sqlite', grouped=False))
        ddl.append(f'CREATE TRIGGER task_labels_{event} AFTER {event.upper()} ON task_labels FOR EACH ROW{when} '
                   f"BEGIN {' '.join(b + ';' for b in body)} END")
    return ddl


def postgresql_triggers() -> list[str]:
    """Statement triggers on tasks and on task_labels, one per event, over their transition tables."""
    ddl = []
    for table, other in (('tasks', 'task_labels'), ('task_labels', 'tasks')):
        for event, sides in (('insert', [('new', 1)]), ('update', [('old', -1), ('new', 1)]),
                             ('delete', [('old', -1)])):
            rows = ' UNION ALL '.join(f'SELECT *, {sign} AS sign FROM {which}_{table}' for which, sign in sides)
            changed = f'({rows}) AS changed'
            if table == 'tasks':
                source, t, lr = f'FROM {changed} JOIN task_labels AS l ON l.task_uuid = changed.task_uuid', \
                    'changed', 'l'
                names = PAIRED
            else:
                source, t, lr = f'FROM {changed} JOIN tasks AS t ON t.task_uuid = changed.task_uuid', 't', 'changed'
                names = (*PAIRED, 'label_values')
            body = []
            for name in names:
                src = f'FROM {changed}' if name == 'label_values' else source
                body.append(upsert(name, src, 'true', t, lr, 'changed.sign', 'postgresql', grouped=True))
            function = f'{table}_labels_{event}'
            referencing = ' '.join(f'{which.upper()} TABLE AS {which}_{table}' for which, _ in sides)
            ddl += [
                f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN {' '.join(b + ';' for b in body)} RETURN NULL; END $$",
                f'CREATE TRIGGER {function} AFTER {event.upper()} ON {table} REFERENCING {referencing} '
                f'FOR EACH STATEMENT EXECUTE FUNCTION {function}()',
            ]
    return ddl


def backfill(dialect: str) -> list[str]:
    """The aggregates of the labels already stored."""
    source = 'FROM task_labels AS l JOIN tasks AS t ON t.task_uuid = l.task_uuid'
    return [*(upsert(name, source, 'true', 't', 'l', '1', dialect, grouped=True) for name in PAIRED),
            upsert('label_values', 'FROM task_labels AS l', 'true', '', 'l', '1', dialect, grouped=True)]


# -- views --------------------------------------------------------------------------------------------

task_labels = sa.table('task_labels', sa.column('task_uuid'), sa.column('key'), sa.column('value'))


def labels_object(task_uuid, dialect: str):
    """The labels of a task as one JSON object ({} without any)."""
    label = task_labels.c
    if dialect == 'sqlite':
        pairs = sa.func.json_group_object(label.key, label.value)
    else:
        pairs = sa.func.coalesce(sa.func.json_object_agg(label.key, label.value), sa.literal_column("'{}'::json"))
    return sa.select(pairs).where(label.task_uuid == task_uuid).scalar_subquery().label('labels')


def task_results(dialect: str):
    return views_0002.task_results(dialect).add_columns(labels_object(views_0002.tasks.c.task_uuid, dialect))


def delivery_log(dialect: str):
    return views_0002.delivery_log(dialect).add_columns(sa.literal_column('deliveries.labels').label('labels'))


def spend_by_label(dialect: str):
    """Per label and UTC day of result: finished tasks, successes, errors and what the successes cost."""
    c, label = views_0002.tasks.c, task_labels.c
    day = views_0002.utc_day(c.result_at, dialect).label('day')
    return (
        sa.select(
            label.key, label.value, day,
            sa.func.count().label('tasks'),
            sa.func.sum(sa.case((c.status == 'success', 1), else_=0)).label('successes'),
            sa.func.sum(sa.case((c.status == 'error', 1), else_=0)).label('errors'),
            views_0002.spend(dialect, c.status == 'success').label('spend'),
        )
        .select_from(views_0002.tasks.join(task_labels, label.task_uuid == c.task_uuid))
        .where(c.status.in_(('error', 'success')), c.result_at.is_not(None))
        .group_by(label.key, label.value, day)
    )


def replace_views(dialect: str, views: dict) -> None:
    for name in ('task_results', 'delivery_log'):
        op.execute(DropView(sa.table(name)))
    for name, build in views.items():
        op.execute(CreateView(build(dialect), name))


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.add_column('deliveries', sa.Column('labels', sa.JSON))
    op.create_table(
        'task_labels',
        sa.Column('task_uuid', sa.String(36), primary_key=True),
        sa.Column('key', sa.String(64), primary_key=True),
        sa.Column('value', sa.String(256), nullable=False),
        sa.Column('labeled_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('conflict', sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index('ix_task_labels_key_value', 'task_labels', ['key', 'value', 'task_uuid'])

    def key():
        return sa.Column('key', sa.String(64), primary_key=True)

    def value():
        return sa.Column('value', sa.String(256), primary_key=True)

    def measures(*names):
        return [sa.Column(n, sa.BigInteger, nullable=False) for n in names]

    for name, counted in (('label_task_hours', ('tasks',)), ('label_result_hours', ('tasks', 'cost_units'))):
        # Key first: a groupBy reads one key's hours as one range of the primary key.
        op.create_table(name, key(), sa.Column('hour', sa.DateTime(timezone=True), primary_key=True),
                        value(), sa.Column('status', sa.String(16), primary_key=True), *measures(*counted))
    op.create_table('label_values', key(), value(), *measures('tasks'))
    # Triggers first: on PostgreSQL they lock out writers until this transaction commits.
    for statement in (sqlite_triggers() if dialect == 'sqlite' else postgresql_triggers()) + backfill(dialect):
        op.execute(statement)
    replace_views(dialect, {'task_results': task_results, 'delivery_log': delivery_log})
    op.execute(CreateView(spend_by_label(dialect), 'spend_by_label'))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(DropView(sa.table('spend_by_label')))
    replace_views(dialect, {'task_results': views_0002.task_results, 'delivery_log': views_0002.delivery_log})
    if dialect == 'sqlite':
        names = [f'{name}_tasks_{event}' for name in PAIRED for event in ('insert', 'update', 'delete')]
        drops = [f'DROP TRIGGER {name}' for name in names]
        drops += [f'DROP TRIGGER task_labels_{event}' for event in ('insert', 'update', 'delete')]
    else:
        drops = [ddl for table in ('tasks', 'task_labels') for event in ('insert', 'update', 'delete')
                 for ddl in (f'DROP TRIGGER {table}_labels_{event} ON {table}',
                             f'DROP FUNCTION {table}_labels_{event}()')]
    for statement in drops:
        op.execute(statement)
    for name in ('label_values', 'label_result_hours', 'label_task_hours', 'task_labels'):
        op.drop_table(name)
    op.drop_column('deliveries', 'labels')
