"""Drop ix_tasks_last_delivery: no query filters or sorts on last_delivery_at, and every write paid for it.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_tasks_last_delivery', table_name='tasks')


def downgrade() -> None:
    op.create_index('ix_tasks_last_delivery', 'tasks', ['last_delivery_at'])
