"""Fixtures: a private Redis, SQLite and PostgreSQL stores, the app and its settings.

PostgreSQL tests run against DATABASE_TEST_URL (default: the local server's
`test` database), each session in a database of its own. Where PostgreSQL is
absent they are skipped, unless REQUIRE_POSTGRES=1 (as in CI), when they fail.
"""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest
import redis
import sqlalchemy as sa

from config import Config
from config import database_url as normalise_url
from receiver import create_app
from store.db import dispose_engines
from store.migrate import upgrade
from store.schema import AGGREGATES
from store.schema import metadata
from store.schema import tasks
from tests import reporting_data
from tests.support import RedisServer
from tests.support import with_intake

# Each test session gets a read budget of its own (receiver/read_budget.py): sessions on one host share no slots.
os.environ["READ_SLOTS_DIR"] = tempfile.mkdtemp(prefix="read-slots-")

PG_URL = normalise_url(os.environ.get("DATABASE_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test"))
TOKENS = {"WEBHOOK_TOKENS": "hook-old,hook-new", "READ_TOKENS": "read-token", "SUBMIT_TOKENS": "submit-token"}


BULK_CLEAR_ROWS = 1000
"""Tasks above which SQLite's clear() deletes without its triggers (faster for many rows, slower for a few)."""


def clear(url: str) -> None:
    """Empty every table of the store at `url`: the base tables first, then the aggregates their triggers keep.

    On SQLite, a store of many tasks is emptied without its row triggers (which keep the aggregates and the
    search index, emptied too): they are dropped and made again in the same transaction.
    """
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        triggers = []
        if engine.dialect.name == "sqlite" and conn.scalar(sa.select(sa.func.count()).select_from(tasks)) > \
                BULK_CLEAR_ROWS:
            triggers = conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")).all()
            for name, _ in triggers:
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
            conn.exec_driver_sql("INSERT INTO tasks_fts (tasks_fts) VALUES ('delete-all')")
        order = {table: n for n, table in enumerate(AGGREGATES, 1)}  # hours before the days their triggers keep
        for table in sorted(reversed(metadata.sorted_tables), key=lambda table: order.get(table, 0)):
            conn.execute(table.delete())
        for _, ddl in triggers:
            conn.exec_driver_sql(ddl)
    engine.dispose()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server):
    if redis_server.process is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url + "/0"
    if redis_server.process is None:
        redis_server.start()
    client.flushall()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'captions.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgres_url():
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            name = f"captions_test_{uuid.uuid4().hex[:10]}"
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        message = f"PostgreSQL unavailable at {PG_URL.split('@')[-1]}: {type(exc.orig).__name__}"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(message + " (REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    url = sa.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request):
    """Each test using the store runs once on SQLite and once on PostgreSQL, on empty tables.

    The workers a test runs in this process start, like a worker process, with no pooled connection of an
    earlier test's (store.db shares one engine per URL and process)."""
    url = request.getfixturevalue(f"{request.param}_url")
    dispose_engines()
    clear(url)
    return url


@pytest.fixture
def config(redis_url, database_url, monkeypatch) -> Config:
    """Settings for the app and, through the environment, for worker processes it forks."""
    env = {"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": database_url, **TOKENS}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Config.from_env()


@pytest.fixture
def app(config):
    """The readers' app, with webhooks passed to an intake app as nginx passes them."""
    intake = create_app(config, kind="intake")
    app = with_intake(create_app(config), intake)
    yield app
    for each in (app, intake):
        each.extensions["redis"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def engine(database_url):
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine):
    """The store holding tests/reporting_data.py's rows (for /api/stats and the reporting views)."""
    reporting_data.load(engine)
    return engine
