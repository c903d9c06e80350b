"""PostgreSQL behind PgBouncer in transaction pooling (DATABASE_POOLING=transaction).

Each client transaction may run on another server connection, and clients share
them: nothing of a session survives a transaction, and what one client leaves in
a session another finds. Through a private PgBouncer with fewer server
connections than clients:

- the whole service (intake and api gunicorn, a persist worker) stores every
  acknowledged webhook, through the COPY path's staging table, while readers poll;
- a long read is still cancelled after READ_TIMEOUT_MS and answered 503, and the
  timeout set for a reader's transaction does not stay on the server connection
  for the next client's;
- without the setting the service cannot run there, which is why it exists.
"""

from __future__ import annotations

import threading

import pytest
import requests
import sqlalchemy as sa

from store.db import ReadTimeout
from store.db import create_engine
from store.schema import deliveries
from store.schema import tasks
from tests.conftest import TOKENS
from tests.conftest import clear
from tests.helpers import WEBHOOK
from tests.helpers import new_uuid
from tests.helpers import success
from tests.helpers import wrapped
from tests.pgbouncer import POOL_SIZE
from tests.pgbouncer import pgbouncer  # noqa: F401  (a fixture)
from tests.support import Service
from tests.support import WebServers
from tests.support import wait_for

pytestmark = pytest.mark.postgres

READ = {"Authorization": f"Bearer {TOKENS['READ_TOKENS']}"}
WEBHOOKS = 300
READERS = 4


def post_webhooks(url: str, uuids: list[str], answers: list[int]) -> None:
    with requests.Session() as session:
        for task in uuids:
            response = session.post(f"{url}{WEBHOOK}", params={"token": "hook-new"}, data=wrapped(success(task)),
                                    headers={"Content-Type": "application/json"}, timeout=30)
            answers.append(response.status_code)


def poll(url: str, stop: threading.Event, answers: list[tuple[str, int]]) -> None:
    with requests.Session() as session:
        while not stop.is_set():
            for path in ("/api/stats", "/api/tasks?status=success", "/api/tasks?q=square"):
                response = session.get(f"{url}{path}", headers=READ, timeout=30)
                answers.append((path, response.status_code))


@pytest.mark.slow
def test_the_service_stores_every_webhook_through_pgbouncer_while_readers_poll(pgbouncer, postgres_url,  # noqa: F811
                                                                               redis_url):
    clear(postgres_url)
    env = {"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": pgbouncer.url(postgres_url),
           "DATABASE_POOLING": "transaction", **TOKENS}
    servers = WebServers(env).start()
    worker = Service.worker("persist", env).start()
    uuids = [new_uuid() for _ in range(WEBHOOKS)]
    hooks: list[int] = []
    reads: list[tuple[str, int]] = []
    stop = threading.Event()
    readers = [threading.Thread(target=poll, args=(servers.api.url, stop, reads)) for _ in range(READERS)]
    engine = sa.create_engine(postgres_url)
    try:
        for reader in readers:
            reader.start()
        senders = [threading.Thread(target=post_webhooks, args=(servers.intake.url, uuids[n::3], hooks))
                   for n in range(3)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()

        def stored() -> int:
            with engine.connect() as conn:
                return conn.scalar(sa.select(sa.func.count()).select_from(deliveries))
        wait_for(lambda: stored() == WEBHOOKS, timeout=60, what="every acknowledged webhook stored")
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=60)
        worker.stop()
        servers.stop()
    with engine.connect() as conn:
        stored_uuids = set(conn.scalars(sa.select(tasks.c.task_uuid).where(tasks.c.status == "success")))
    engine.dispose()
    assert hooks == [202] * WEBHOOKS
    assert stored_uuids == set(uuids)
    assert len(reads) > 3 * READERS and {status for _, status in reads} == {200}, \
        [r for r in reads if r[1] != 200][:5]
    assert "ERROR" not in worker.output() and "Traceback" not in worker.output() + servers.output()


def interleave(url: str, pooling: str) -> None:
    """More clients than server connections, each running the same statement again and again, a transaction each."""
    clients = [create_engine(url, pooling=pooling) for _ in range(POOL_SIZE + 1)]
    try:
        for run in range(10):
            for engine in clients:
                with engine.connect() as conn:
                    assert conn.scalar(sa.text("SELECT :n"), {"n": run}) == run
                    conn.commit()
    finally:
        for engine in clients:
            engine.dispose()


def test_clients_share_server_connections_statement_after_statement(pgbouncer, postgres_url):  # noqa: F811
    interleave(pgbouncer.url(postgres_url), "transaction")


def test_a_long_read_is_cancelled_and_its_timeout_stays_in_its_transaction(pgbouncer, postgres_url):  # noqa: F811
    url = pgbouncer.url(postgres_url)
    readers = create_engine(url, read_timeout_ms=200, pooling="transaction")
    writers = create_engine(url, pooling="transaction")
    try:
        with readers.connect() as conn:
            with pytest.raises(ReadTimeout):
                conn.execute(sa.text("SELECT pg_sleep(2)"))
        # Every server connection has served a reader's transaction; the write path's sees no timeout.
        with readers.connect() as first, readers.connect() as second:
            for conn in (first, second)[:POOL_SIZE]:
                conn.execute(sa.text("SELECT 1"))
        for _ in range(2 * POOL_SIZE):
            with writers.connect() as conn:
                assert conn.scalar(sa.text("SELECT current_setting('statement_timeout')")) == "0"
    finally:
        readers.dispose()
        writers.dispose()


def test_without_the_setting_pgbouncer_refuses_the_readers_and_prepared_statements_collide(
        pgbouncer, postgres_url):  # noqa: F811
    url = pgbouncer.url(postgres_url)
    readers = create_engine(url, read_timeout_ms=200)
    with pytest.raises(sa.exc.OperationalError, match="unsupported startup parameter: options"):
        with readers.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    readers.dispose()
    # psycopg prepares a statement on the server after its 5th run on a connection, under the same name on every
    # client; with more clients than server connections, one finds another's, or misses its own.
    with pytest.raises(sa.exc.DBAPIError, match="prepared statement"):
        interleave(url, "session")
