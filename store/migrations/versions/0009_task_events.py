"""task_events (a task's history: deliveries, submission attempts, polls) and tasks.input_path (caption sidecars).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('task_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task_uuid', sa.String(length=36), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False,
              comment='when the delivery or answer was received'),
    sa.Column('kind', sa.String(length=16), nullable=False, comment='delivery | submission | poll'),
    sa.Column('status', sa.String(length=16), nullable=True,
              comment='the task\'s status by this event; none when it told nothing new'),
    sa.Column('detail', sa.Text(), nullable=True, comment='error code and message, or what became of the task'),
    sa.Column('delivery_id', sa.String(length=40), nullable=True, comment="the delivery log's row (deliveries only)"),
    sa.Column('item_index', sa.Integer(), nullable=True, comment="the item's place in that delivery's items"),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_task_events_task', 'task_events', ['task_uuid', 'at'])
    op.create_index('ix_task_events_at', 'task_events', ['at'])
    op.add_column('tasks', sa.Column('input_path', sa.Text(), nullable=True,
                                     comment='local file `captions submit` read, absolute (caption sidecars)'))


def downgrade() -> None:
    op.drop_column('tasks', 'input_path')
    op.drop_index('ix_task_events_at', table_name='task_events')
    op.drop_index('ix_task_events_task', table_name='task_events')
    op.drop_table('task_events')
