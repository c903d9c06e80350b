"""search: a full-text index of captions, built for the tasks already stored

SQLite: an FTS5 table over tasks.text (external content on the tasks' rowid,
tokenizer unicode61 with diacritics removed), kept by triggers on insert,
update of text and delete, and filled with FTS5's 'rebuild'. PostgreSQL: a GIN
index on to_tsvector('simple', coalesce(text, '')), an expression (not a
column: the drain COPYs rows shaped like every column of tasks). Both split
words alike and neither stems nor drops stop words. The definitions are frozen
here, as a migration must be; store.schema and store.search use the same ones.

Also an index on tasks (status, updated_at, task_uuid): the task list filtered
by a status, in its order, without reading the tasks of other statuses.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

SQLITE_UPGRADE = (
    "CREATE VIRTUAL TABLE tasks_fts USING fts5("
    "text, content='tasks', content_rowid='rowid', tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER tasks_fts_insert AFTER INSERT ON tasks WHEN new.text IS NOT NULL BEGIN "
    "INSERT INTO tasks_fts (rowid, text) VALUES (new.rowid, new.text); END",
    "CREATE TRIGGER tasks_fts_update AFTER UPDATE OF text ON tasks WHEN old.text IS NOT new.text BEGIN "
    "INSERT INTO tasks_fts (tasks_fts, rowid, text) SELECT 'delete', old.rowid, old.text WHERE old.text IS NOT NULL; "
    "INSERT INTO tasks_fts (rowid, text) SELECT new.rowid, new.text WHERE new.text IS NOT NULL; END",
    "CREATE TRIGGER tasks_fts_delete AFTER DELETE ON tasks WHEN old.text IS NOT NULL BEGIN "
    "INSERT INTO tasks_fts (tasks_fts, rowid, text) VALUES ('delete', old.rowid, old.text); END",
    "INSERT INTO tasks_fts (tasks_fts) VALUES ('rebuild')",
)
"""The FTS5 table, its triggers, and the index of the captions already stored."""

SQLITE_DOWNGRADE = (
    "DROP TRIGGER tasks_fts_delete",
    "DROP TRIGGER tasks_fts_update",
    "DROP TRIGGER tasks_fts_insert",
    "DROP TABLE tasks_fts",
)

POSTGRESQL_UPGRADE = (
    "CREATE INDEX ix_tasks_text_search ON tasks USING gin (to_tsvector('simple', coalesce(text, '')))",
)

POSTGRESQL_DOWNGRADE = ("DROP INDEX ix_tasks_text_search",)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == 'sqlite'
    for statement in SQLITE_UPGRADE if sqlite else POSTGRESQL_UPGRADE:
        op.execute(statement)
    op.create_index('ix_tasks_status_updated', 'tasks', ['status', 'updated_at', 'task_uuid'])


def downgrade() -> None:
    op.drop_index('ix_tasks_status_updated', table_name='tasks')
    sqlite = op.get_bind().dialect.name == 'sqlite'
    for statement in SQLITE_DOWNGRADE if sqlite else POSTGRESQL_DOWNGRADE:
        op.execute(statement)
