"""Stores for a benchmark run: a migrated SQLite file, or a PostgreSQL database created and dropped with it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import PG_ADMIN_URL
from bench.common import BenchError


def sqlite_database(directory: Path, name: str = "captions.db") -> str:
    """A fresh, migrated SQLite file (WAL, as the service opens it) in `directory`."""
    from store.migrate import upgrade

    url = f"sqlite:///{directory / name}"
    upgrade(url)
    return url


class PostgresUnavailable(BenchError):
    """The PostgreSQL server at PG_ADMIN_URL cannot be reached: its lines are skipped."""


@contextmanager
def postgres_database(prefix: str = "captions_bench") -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for the run, dropped afterwards."""
    import sqlalchemy as sa

    from config import database_url
    from store.migrate import upgrade

    admin = sa.create_engine(database_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        where = PG_ADMIN_URL.split("@")[-1]
        raise PostgresUnavailable(f"PostgreSQL unreachable at {where} ({type(exc.orig).__name__})") from None
    url = sa.engine.make_url(database_url(PG_ADMIN_URL)).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        from store.db import _engines

        for key in [k for k in _engines if k.endswith(url)]:
            _engines.pop(key).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def count_rows(url: str, table: str) -> int:
    """Rows in `table`, through a short-lived connection."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()
