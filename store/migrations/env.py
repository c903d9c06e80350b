"""Alembic environment: the URL comes from the caller (store.migrate), the tables from store.schema."""

from __future__ import annotations

from alembic import context

from store.db import create_engine
from store.schema import metadata

config = context.config


def run_migrations_online() -> None:
    engine = create_engine(config.attributes["database_url"])
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
