"""Database engines: SQLite in WAL mode by default, PostgreSQL (psycopg 3) in production.

Two kinds, kept apart. `engine_for(url)` is the write path's (RQ workers,
migrations, tools): no time limit, a drain's transaction takes what it takes.
`reader_engine_for(url, timeout_ms)` is the readers' (the query API, dashboard,
submission API, metrics): each checkout of a connection, which is one request's
database work, gets a deadline `timeout_ms` away, and the database cancels what
runs past it:

- SQLite: a progress handler, called every READ_CHECK_EVERY virtual-machine
  instructions, interrupts the statement once the checkout's deadline has passed;
- PostgreSQL: `statement_timeout` on the connection (libpq options) cancels any
  statement that runs longer, lock waits included; a statement that would start
  after the checkout's deadline is refused, so a request's reads end within twice
  the budget however many statements it makes.

Behind a pooler in transaction pooling (PgBouncer's `pool_mode = transaction`,
`pooling="transaction"`, DATABASE_POOLING), a client's transactions may each run
on another server connection, so nothing may live in a session: the readers'
`statement_timeout` is set in each transaction (`set_config(..., true)`, as
`SET LOCAL` sets it; PgBouncer refuses the `options` startup parameter), and
psycopg prepares no statement on the server (`prepare_threshold=None`: another
client's transaction would find it, or not find its own). The write path's staging table is created, if missing, in
the transaction that uses it, and emptied at its commit (store/results.py).

Either way the caller gets `ReadTimeout`, which the receiver answers with 503
and Retry-After (receiver/errors.py).
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

_engines: dict[str, sa.Engine] = {}
PG_CONNECT_TIMEOUT_S = 5
"""Seconds a new PostgreSQL connection may take before it fails (libpq's connect_timeout)."""

WRITER_IDLE_IN_TRANSACTION_MS = 30_000
"""PostgreSQL ends a write-path session left idle inside its transaction this long (set in each transaction,
so behind PgBouncer too). A drain's statements follow each other within milliseconds; a drain whose host is
lost between two of them sends no reset, and its open transaction's row locks then blocked every other drain
until TCP gave up on the connection, hours later (tests/test_multihost.py)."""

SQLITE_BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite connection waits for a lock held by another (a reader waits at most its timeout)."""

SQLITE_CACHE_MIB = 64
"""Page cache of each SQLite connection (SQLite's own default is 2 MiB, too small for a store of millions)."""

READ_CHECK_EVERY = 1000
"""SQLite virtual-machine instructions between two looks at a read's deadline (a few microseconds)."""

PG_QUERY_CANCELED = "57014"
"""SQLSTATE of a statement cancelled by statement_timeout (or by pg_cancel_backend)."""


class ReadTimeout(Exception):
    """A reader's database work ran past its deadline and was cancelled."""

    def __init__(self, timeout_ms: int):
        super().__init__(f"the query was cancelled after READ_TIMEOUT_MS ({timeout_ms} ms)")
        self.timeout_ms = timeout_ms


class Deadline:
    """When the work of a connection's current checkout must be over (time.monotonic() seconds)."""

    def __init__(self) -> None:
        self.at = math.inf

    def arm(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def disarm(self) -> None:
        self.at = math.inf

    def passed(self) -> bool:
        return time.monotonic() > self.at


def _sqlite_pragmas(cache_mib: int):
    def set_pragmas(dbapi_conn, _record) -> None:
        """WAL lets readers (the API) run beside the writer (the persist worker)."""
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")  # negative: KiB
        cursor.close()

    return set_pragmas


def create_engine(url: str, read_timeout_ms: int | None = None, sqlite_cache_mib: int = SQLITE_CACHE_MIB,
                  pooling: str = "session") -> sa.Engine:
    """A new engine for `url`; with `read_timeout_ms`, a readers' engine; `pooling` "transaction" behind a
    transaction-pooling PgBouncer (see the module docstring)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # sqlite3's `timeout` is SQLite's busy timeout, in seconds.
        busy_ms = min(SQLITE_BUSY_TIMEOUT_MS, read_timeout_ms or SQLITE_BUSY_TIMEOUT_MS)
        engine = sa.create_engine(url, connect_args={"timeout": busy_ms / 1000})
        sa.event.listen(engine, "connect", _sqlite_pragmas(sqlite_cache_mib))
    else:
        connect_args = {}
        if backend == "postgresql" and "connect_timeout" not in parsed.query:
            # libpq waits for an unreachable server for ever by default; a
            # connect_timeout given in the URL is kept.
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        pooled = backend == "postgresql" and pooling == "transaction"
        if pooled:
            connect_args["prepare_threshold"] = None
        elif backend == "postgresql" and read_timeout_ms:
            connect_args["options"] = f"-c statement_timeout={int(read_timeout_ms)}"
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args)
        if backend == "postgresql":
            sa.event.listen(engine, "checkin", _server_default_access_mode)
        if pooled and read_timeout_ms:
            _in_each_transaction(engine, "statement_timeout", read_timeout_ms)
        if backend == "postgresql" and not read_timeout_ms:
            _in_each_transaction(engine, "idle_in_transaction_session_timeout", WRITER_IDLE_IN_TRANSACTION_MS)
    if read_timeout_ms:
        _bound_reads(engine, read_timeout_ms)
    return engine


def _server_default_access_mode(dbapi_conn, _record) -> None:
    """After a read-only snapshot SQLAlchemy sets psycopg's `read_only` to False, and psycopg then begins every
    transaction READ WRITE, which a hot standby (DATABASE_READ_URL) refuses: leave the access mode to the server."""
    if dbapi_conn is not None:
        dbapi_conn.read_only = None


def _in_each_transaction(engine: sa.Engine, name: str, timeout_ms: int) -> None:
    """The setting `name` for the transaction alone, first thing in each (the pooler's server connection may
    be another's at the next)."""
    setting = sa.text("SELECT set_config(:name, :ms, true)").bindparams(name=name, ms=str(int(timeout_ms)))

    @sa.event.listens_for(engine, "begin")
    def set_timeout(conn) -> None:
        conn.execute(setting)


def _bound_reads(engine: sa.Engine, timeout_ms: int) -> None:
    """Give each checkout a deadline, enforced by the database, and turn its cancellations into ReadTimeout."""
    sqlite = engine.dialect.name == "sqlite"

    @sa.event.listens_for(engine, "connect")
    def add_deadline(dbapi_conn, record) -> None:
        deadline = record.info["read_deadline"] = Deadline()
        if sqlite:
            dbapi_conn.set_progress_handler(deadline.passed, READ_CHECK_EVERY)

    @sa.event.listens_for(engine, "checkout")
    def arm(_dbapi_conn, record, _proxy) -> None:
        record.info["read_deadline"].arm(timeout_ms / 1000)

    @sa.event.listens_for(engine, "reset")
    def disarm(_dbapi_conn, record, _state) -> None:
        record.info["read_deadline"].disarm()  # the pool's rollback must not be interrupted

    @sa.event.listens_for(engine, "before_cursor_execute")
    def refuse_late(conn, _cursor, _statement, _parameters, _context, _executemany) -> None:
        if conn.info["read_deadline"].passed():
            raise ReadTimeout(timeout_ms)

    @sa.event.listens_for(engine, "handle_error")
    def cancelled(context) -> ReadTimeout | None:
        original = context.original_exception
        if isinstance(original, sqlite3.OperationalError) and str(original) == "interrupted":
            return ReadTimeout(timeout_ms)
        if getattr(original, "sqlstate", None) == PG_QUERY_CANCELED:
            return ReadTimeout(timeout_ms)
        return None


def engine_for(url: str, pooling: str = "session") -> sa.Engine:
    """The process's shared write-path engine for `url`, made anew after a fork (pooled connections cannot cross it)."""
    return _shared(url, None, pooling)


def write_engine(config) -> sa.Engine:
    """`engine_for` the service's settings (a `config.Config`: DATABASE_URL, DATABASE_POOLING)."""
    return engine_for(config.database_url, config.database_pooling)


def reader_engine_for(url: str, timeout_ms: int, pooling: str = "session") -> sa.Engine:
    """The process's shared readers' engine for `url`: every request's reads cancelled past `timeout_ms`."""
    return _shared(url, timeout_ms, pooling)


def dispose_engines() -> None:
    """Close the pooled connections of the shared engines this process made (not those of a parent it was
    forked from, whose connections are the parent's)."""
    mine = f"{os.getpid()}:"
    for key, engine in _engines.items():
        if key.startswith(mine):
            engine.dispose()


def _shared(url: str, read_timeout_ms: int | None, pooling: str) -> sa.Engine:
    key = f"{os.getpid()}:{read_timeout_ms}:{pooling}:{url}"
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = create_engine(url, read_timeout_ms, pooling=pooling)
    return engine
