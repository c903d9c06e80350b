"""The host-wide read budget (receiver/read_budget.py): READ_CONCURRENCY requests in the database at once, all api
processes together; a request that finds no slot within READ_QUEUE_MS is answered 503 with Retry-After."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import requests
import sqlalchemy as sa

from receiver.read_budget import ReadBudget
from receiver.read_budget import ReadBudgetExhausted
from tests.support import ROOT
from tests.support import WebServers
from tests.support import wait_for
from tests.test_isolation import READ
from tests.test_isolation import Read
from tests.test_isolation import env_for
from tests.test_isolation import webhook_latencies

HOLD_A_SLOT = """
import sys, time
from pathlib import Path
from receiver.read_budget import ReadBudget
with ReadBudget(Path(sys.argv[1]), 1, 1000).slot():
    print("holding", flush=True)
    time.sleep(60)
"""


def test_slots_are_shared_across_processes_and_freed_when_a_holder_dies(tmp_path):
    budget = ReadBudget(tmp_path, 1, 200)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_SLOT, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        with pytest.raises(ReadBudgetExhausted, match="READ_QUEUE_MS"), budget.slot():
            pass
        assert 0.2 <= time.monotonic() - started < 2, "a request waits READ_QUEUE_MS for a slot, then gives up"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        with budget.slot():  # the kernel released the dead holder's lock
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_slots_are_held_per_request_not_per_thread(tmp_path):
    """Two holders in one process (threads of one worker) take two slots: flock is per open file."""
    budget = ReadBudget(tmp_path, 2, 100)
    with budget.slot(), budget.slot():
        with pytest.raises(ReadBudgetExhausted), budget.slot():
            pass
    with budget.slot(), budget.slot():  # both given back
        pass


@pytest.mark.postgres
@pytest.mark.slow
def test_one_read_at_a_time_on_the_host_and_the_rest_refused_quickly(postgres_url, redis_url, tmp_path):
    """READ_CONCURRENCY=1 over two api workers: while a read waits on a lock, a second one gets 503 `read_budget`
    after READ_QUEUE_MS (not READ_TIMEOUT_MS), the database sees only one reader, and webhooks are still answered."""
    env = env_for(redis_url, postgres_url, READ_TIMEOUT_MS="6000", READ_CONCURRENCY="1", READ_QUEUE_MS="500",
                  READ_SLOTS_DIR=str(tmp_path / "slots"))
    servers = WebServers(env, workers=2).start()
    holder = sa.create_engine(postgres_url)
    try:
        with holder.connect() as lock, holder.connect() as watch:
            lock.execute(sa.text("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE"))
            first = Read(f"{servers.api.url}/api/tasks?limit=5")
            first.start()

            def readers_waiting() -> int:
                query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND wait_event_type = 'Lock' AND query LIKE '%FROM tasks%'")
                waiting = watch.execute(query).scalar()
                watch.rollback()
                return waiting

            wait_for(lambda: readers_waiting() == 1, timeout=10, what="the first read waiting on the lock")
            second = Read(f"{servers.api.url}/api/tasks?limit=5")
            second.start()
            second.join(timeout=10)
            assert readers_waiting() == 1, "the second read never reached the database"
            assert webhook_latencies(servers.intake.url, 5)
            lock.rollback()
            first.join(timeout=20)
        after = requests.get(f"{servers.api.url}/api/tasks?limit=5", headers=READ, timeout=10)
    finally:
        holder.dispose()
        servers.stop()

    assert second.response.status_code == 503, second.response.text
    assert int(second.response.headers["Retry-After"]) > 0
    error = second.response.json()["error"]
    assert error["cause"] == "read_budget" and "READ_CONCURRENCY" in error["message"], error
    assert 0.5 <= second.seconds < 3, second.seconds
    assert first.response.status_code == 200, "the first read finished once the lock was gone"
    assert after.status_code == 200, "and gave its slot back"
