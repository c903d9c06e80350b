"""initial schema

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dead_letters',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('delivery_id', sa.String(length=40), nullable=True),
    sa.Column('task_uuid', sa.String(length=36), nullable=True),
    sa.Column('item', sa.JSON(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='1', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('replayed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_dead_letters_created', 'dead_letters', ['created_at'])

    op.create_table('deliveries',
    sa.Column('id', sa.String(length=40), nullable=False, comment='Redis stream entry id, unique per accepted POST'),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('remote_addr', sa.String(length=64), nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False, comment='stored | partial | rejected'),
    sa.Column('items', sa.JSON(), nullable=False, comment='the parsed items, as stored'),
    sa.Column('detail', sa.Text(), nullable=True, comment='why items were skipped'),
    sa.Column('stored_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_deliveries_received', 'deliveries', ['received_at'])

    op.create_table('tasks',
    sa.Column('task_uuid', sa.String(length=36), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('task_type', sa.String(length=64), nullable=True),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('cost', sa.Numeric(precision=20, scale=10), nullable=True, comment='USD, as reported by Runware'),
    sa.Column('error_code', sa.String(length=128), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('conflict', sa.Boolean(), server_default=sa.false(), nullable=False,
              comment='a later success disagreed with the stored one'),
    sa.Column('result_at', sa.DateTime(timezone=True), nullable=True,
              comment='receipt time of the delivery that set the result'),
    sa.Column('delivery_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('first_delivery_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_delivery_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('input_ref', sa.Text(), nullable=True, comment='image to send: URL, data URI, base64 or image UUID'),
    sa.Column('input_name', sa.String(length=512), nullable=True, comment='file name or URL the caller gave'),
    sa.Column('include_cost', sa.Boolean(), nullable=True),
    sa.Column('delivery_method', sa.String(length=8), nullable=True),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('submit_attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('poll_attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_poll_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('task_uuid')
    )
    op.create_index('ix_tasks_last_delivery', 'tasks', ['last_delivery_at'])
    op.create_index('ix_tasks_next_poll', 'tasks', ['next_poll_at'])
    op.create_index('ix_tasks_status_created', 'tasks', ['status', 'created_at'])


def downgrade() -> None:
    op.drop_index('ix_tasks_status_created', table_name='tasks')
    op.drop_index('ix_tasks_next_poll', table_name='tasks')
    op.drop_index('ix_tasks_last_delivery', table_name='tasks')

    op.drop_table('tasks')
    op.drop_index('ix_deliveries_received', table_name='deliveries')

    op.drop_table('deliveries')
    op.drop_index('ix_dead_letters_created', table_name='dead_letters')

    op.drop_table('dead_letters')
