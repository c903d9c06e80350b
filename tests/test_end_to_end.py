"""End to end with every fault on: gunicorn, real RQ workers, the reconcile job, the emulator as Runware.

Images go in through POST /api/captions on the api's gunicorn; the submit worker
sends them to the emulator, which answers 429 and 503 at random, fails some tasks,
and sends webhooks back to the intake's gunicorn duplicated, reordered, in both envelopes,
failing some attempts and dropping some altogether. The persist worker drains
the webhooks; the reconcile job (run directly, RECONCILE_AFTER_SECONDS=1)
polls what never came. In the end every task has exactly one final state,
the one the emulator gave it, and the stored spend is the emulator's.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
import requests

from emulator.dice import Dice
from store.submissions import clear_inputs
from tests.conftest import TOKENS
from tests.submitting import data_uri
from tests.submitting import emulator  # noqa: F401  (fixture)
from tests.submitting import rows
from tests.submitting import run_scheduling_worker
from tests.submitting import use_runware  # noqa: F401  (fixture)
from tests.support import WebServers
from tests.support import run_worker
from workers import reconcile as reconcile_module
from workers.queues import PERSIST_QUEUE
from workers.queues import SUBMIT_QUEUE
from workers.reconcile import reconcile
from workers.runware import RetryableError

FAULTS = {
    "seed": 20261124,
    "rate_limit_rate": 0.15,
    "unavailable_rate": 0.15,
    "task_error_rate": 0.1,
    "drop_rate": 0.15,
    "duplicate_rate": 0.3,
    "reorder": 4,
    "reorder_hold_ms": 100,
    "webhook_fail_rate": 0.3,
    "max_attempts": 3,
    "backoff_base_ms": 20,
    "backoff_cap_ms": 100,
    "jitter_ms": 50,
    "envelope": "mixed",
}
COLOURS = ["red", "green", "blue", "white", "black", "yellow", "purple", "orange", "grey", "pink"]


def faults_certain(task_uuids: list[str]) -> bool:
    """True when the emulator's dice will drop some of these tasks' webhooks and duplicate several others."""
    dice = Dice(FAULTS["seed"])
    dropped = [u for u in task_uuids if dice.chance(FAULTS["drop_rate"], "drop", u)]
    doubled = [u for u in task_uuids if u not in dropped and dice.chance(FAULTS["duplicate_rate"], "duplicate", u, 1)]
    return len(dropped) >= 2 and len(doubled) >= 3


@pytest.fixture
def stack(config, emulator, use_runware, monkeypatch):  # noqa: F811
    """The intake and api gunicorns, and the environment of the workers pointed at them and at the faulty emulator."""
    monkeypatch.setattr(reconcile_module, "POLL_BACKOFF_BASE_S", 0.2)  # polls backed off in tenths, not seconds
    monkeypatch.setattr(reconcile_module, "POLL_BACKOFF_CAP_S", 2.0)
    runware_url = emulator(**FAULTS)
    server = WebServers({"APP_ENV": "development", "REDIS_URL": config.redis_url,
                         "DATABASE_URL": config.database_url, **TOKENS})
    use_runware(runware_url, PUBLIC_URL=server.intake.url, SUBMIT_BATCH_SIZE=5, RECONCILE_AFTER_SECONDS=1)
    server.start()
    yield server, runware_url.removesuffix("/v1")
    server.stop()


def submit(server, images: list[str], **options) -> list[str]:
    response = requests.post(f"{server.api.url}/api/captions", json={"images": images, **options},
                             headers={"Authorization": f"Bearer {TOKENS['SUBMIT_TOKENS']}"}, timeout=10)
    assert response.status_code == 202, response.text
    return [t["taskUUID"] for t in response.json()["tasks"] if "taskUUID" in t]


@pytest.mark.slow
def test_every_task_reaches_one_final_state_and_the_spend_adds_up(stack, engine, redis_url):
    server, emulator_url = stack
    images = [data_uri(fmt, colour, (10 + i, 8 + i % 5))
              for i, (fmt, colour) in enumerate((f, c) for f in ("PNG", "JPEG", "WEBP") for c in COLOURS)]
    uuids = submit(server, images[:24]) + submit(server, images[24:], deliveryMethod="sync")
    uuids += submit(server, images[:3] + ["not an image"], includeCost=False)
    assert len(uuids) == 33
    webhooked = uuids[:24] + uuids[30:]
    extra = 0
    while not faults_certain(webhooked):  # the emulator's dice are keyed by taskUUID: make sure they bite
        extra += 1
        webhooked += submit(server, [data_uri("PNG", "teal", (40 + extra, 30))])
        uuids.append(webhooked[-1])

    deadline = time.monotonic() + 60
    while True:
        run_scheduling_worker(redis_url, SUBMIT_QUEUE)
        run_worker(redis_url, PERSIST_QUEUE)
        try:
            reconcile()
        except RetryableError:
            pass  # an injected 429/503 on getResponse; the next round polls again
        stored = rows(engine, uuids)
        if all(r.status in ("success", "error") for r in stored.values()):
            break
        assert time.monotonic() < deadline, {u: r.status for u, r in stored.items() if r.status not in
                                             ("success", "error")}
        time.sleep(0.3)
    time.sleep(0.5)  # late duplicate webhooks still in flight
    run_worker(redis_url, PERSIST_QUEUE)
    with engine.begin() as conn:  # what reconcile's housekeeping does for tasks finished by late webhooks
        clear_inputs(conn, uuids)

    truth = {t["taskUUID"]: t for t in requests.get(f"{emulator_url}/_emulator/tasks", timeout=10).json()["tasks"]}
    stored = rows(engine, uuids)
    assert set(uuids) <= set(truth), "every task reached Runware, whatever the 429s and 503s"
    for task_uuid in uuids:
        row, fact = stored[task_uuid], truth[task_uuid]
        assert row.status == fact["status"], (task_uuid, row.status, fact)
        assert row.conflict is False and row.input_ref is None
        if fact["status"] == "success":
            assert row.text == fact["result"]["text"]
            assert row.cost == (Decimal(str(fact["result"]["cost"])) if "cost" in fact["result"] else None)
        else:
            assert row.error_code == fact["error"]["code"] == "timeoutProvider"

    spent = sum(Decimal(str(truth[u]["result"].get("cost", 0))) for u in uuids if truth[u]["status"] == "success")
    assert sum(r.cost or 0 for r in stored.values()) == spent > 0, "no cost counted twice"

    webhooks = {u: truth[u]["webhook"] for u in uuids}
    dropped = [u for u, w in webhooks.items() if w == "dropped"]
    failed = [u for u, w in webhooks.items() if w == "failed"]
    assert dropped, "the seed drops some webhooks"
    for task_uuid in dropped + failed:
        assert stored[task_uuid].delivery_count == 0, "recovered by getResponse, not by a webhook"
    assert any(r.delivery_count > 1 for r in stored.values()), "some webhooks came more than once"
    assert any(truth[u]["delivery"] == "sync" for u in uuids) and all(
        stored[u].delivery_count == 0 for u in uuids if truth[u]["delivery"] == "sync")
