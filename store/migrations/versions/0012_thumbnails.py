"""thumbnails: a small WEBP of each image this service queues for captioning, kept under its own retention

`thumbnails` holds one row per task whose image came as bytes (store/thumbnails.py),
written in the transaction that queues the task; `ix_thumbnails_created` serves the
retention purge (THUMBNAIL_RETENTION_DAYS, workers/maintenance.py).

Revision ID: 0012
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'thumbnails',
        sa.Column('task_uuid', sa.String(36), primary_key=True),
        sa.Column('image', sa.LargeBinary, nullable=False, comment='WEBP'),
        sa.Column('width', sa.Integer, nullable=False),
        sa.Column('height', sa.Integer, nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_thumbnails_created', 'thumbnails', ['created_at'])


def downgrade() -> None:
    op.drop_index('ix_thumbnails_created', table_name='thumbnails')
    op.drop_table('thumbnails')
