"""ix_tasks_status_next_poll (status, next_poll_at, task_uuid) replaces ix_tasks_next_poll (next_poll_at).

A reconcile slice claims the submitted tasks due a poll, longest due first
(`store.submissions.claim_polls`). With the poll time alone indexed, each claim
sorted every overdue task (0.2 s at 100,000 on SQLite, holding the write lock
the drains and the submit worker wait for); with the status first, a claim
reads the rows it takes in index order.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_tasks_status_next_poll', 'tasks', ['status', 'next_poll_at', 'task_uuid'])
    op.drop_index('ix_tasks_next_poll', table_name='tasks')


def downgrade() -> None:
    op.create_index('ix_tasks_next_poll', 'tasks', ['next_poll_at'])
    op.drop_index('ix_tasks_status_next_poll', table_name='tasks')
