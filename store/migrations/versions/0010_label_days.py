"""label days: the label aggregates rolled up per UTC day; a dead letter's labels; a task's labels go with it

- `label_task_days` and `label_result_days` hold, per label key, UTC day, value
  and status, the sums of the rows of `label_task_hours` and
  `label_result_hours` of that day. Revision 0007's trigger builders (loaded
  frozen, over these tables) keep them from the hourly tables, and the rows
  already there are backfilled. Key first, as in the hourly tables: a groupBy
  reads one key's days as one range of the primary key.
- `dead_letters.labels`: the labels of the delivery a letter's item came with,
  so that a replay gives its task the labels it would have had.
- `task_labels_of_deleted_task`: a row trigger BEFORE DELETE on tasks deletes
  the task's labels while the task row still exists, so the label triggers of
  revision 0008 take both out of the paired aggregates and out of
  `label_values` (after the delete, the task's own triggers find no labels left).

Revision ID: 0010
Revises: 0009
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_spec = importlib.util.spec_from_file_location('days_0010', Path(__file__).with_name('0007_day_aggregates.py'))
days_0007 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(days_0007)
days_0007.ROLLUPS = {
    'label_task_hours': ('label_task_days', ('key', 'value', 'status'), ('tasks',)),
    'label_result_hours': ('label_result_days', ('key', 'value', 'status'), ('tasks', 'cost_units')),
}
"""A private instance of revision 0007's trigger builders (frozen), over the label aggregates."""

DELETE_LABELS = 'DELETE FROM task_labels WHERE task_uuid = OLD.task_uuid'


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.add_column('dead_letters', sa.Column('labels', sa.JSON))
    for hours, (days, _, measures) in days_0007.ROLLUPS.items():
        op.create_table(
            days,
            sa.Column('key', sa.String(64), primary_key=True),
            sa.Column('day', days_0007.TIME, primary_key=True),
            sa.Column('value', sa.String(256), primary_key=True),
            sa.Column('status', sa.String(16), primary_key=True),
            *(sa.Column(m, sa.BigInteger, nullable=False) for m in measures),
        )
        # Triggers first (see revision 0007), then the rows already there.
        for statement in (days_0007.sqlite_triggers if dialect == 'sqlite' else days_0007.postgresql_triggers)(hours):
            op.execute(statement)
        op.execute(days_0007.upsert(hours, hours, {m: m for m in measures}, dialect, grouped=True))
    if dialect == 'sqlite':
        op.execute(f'CREATE TRIGGER task_labels_of_deleted_task BEFORE DELETE ON tasks FOR EACH ROW '
                   f'BEGIN {DELETE_LABELS}; END')
    else:
        op.execute(f'CREATE FUNCTION task_labels_of_deleted_task() RETURNS trigger LANGUAGE plpgsql AS $$ '
                   f'BEGIN {DELETE_LABELS}; RETURN OLD; END $$')
        op.execute('CREATE TRIGGER task_labels_of_deleted_task BEFORE DELETE ON tasks FOR EACH ROW '
                   'EXECUTE FUNCTION task_labels_of_deleted_task()')
    # Labels a task deleted before this revision left behind.
    op.execute('DELETE FROM task_labels WHERE NOT EXISTS '
               '(SELECT 1 FROM tasks WHERE tasks.task_uuid = task_labels.task_uuid)')


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == 'sqlite':
        op.execute('DROP TRIGGER task_labels_of_deleted_task')
    else:
        op.execute('DROP TRIGGER task_labels_of_deleted_task ON tasks')
        op.execute('DROP FUNCTION task_labels_of_deleted_task()')
    for hours, (days, _, _) in days_0007.ROLLUPS.items():
        for event in days_0007.EVENTS:
            op.execute(f'DROP TRIGGER {hours}_days_{event}' + (f' ON {hours}' if dialect == 'postgresql' else ''))
            if dialect == 'postgresql':
                op.execute(f'DROP FUNCTION {hours}_days_{event}()')
        op.drop_table(days)
    op.drop_column('dead_letters', 'labels')
