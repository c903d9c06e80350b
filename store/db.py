"""Database engines: SQLite in WAL mode by default, PostgreSQL (psycopg 3) in production."""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

_engines: dict[str, sa.Engine] = {}
PG_CONNECT_TIMEOUT_S = 5
"""Seconds a new PostgreSQL connection may take before it fails (libpq's connect_timeout)."""


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    """WAL lets readers (the API) run beside the writer (the persist worker)."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str) -> sa.Engine:
    """A new engine for `url`; for a SQLite file, its folder is created first."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        # libpq waits for an unreachable server for ever by default; a
        # connect_timeout given in the URL is kept.
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args)


def engine_for(url: str) -> sa.Engine:
    """The process's shared engine for `url`, made anew after a fork (pooled connections must not cross it)."""
    key = f"{os.getpid()}:{url}"
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = create_engine(url)
    return engine
