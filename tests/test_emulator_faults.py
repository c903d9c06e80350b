"""The emulator's injected faults over REST and webhooks, drawn from the seed."""

from __future__ import annotations

import time

import pytest

from tests.emulating import b64
from tests.emulating import caption_task
from tests.emulating import fixed_uuids
from tests.emulating import sample_bytes
from tests.helpers import new_uuid

pytest_plugins = ["tests.emulator_fixtures"]  # the emulator and receiver fixtures
pytestmark = pytest.mark.timeout(60)


def test_injected_delivery_failures_are_recorded_and_retried(start_emulator, receiver):
    emu = start_emulator(webhook_fail_rate=1.0, max_attempts=3)
    task = caption_task(b64(sample_bytes()), webhookURL=receiver.url())
    emu.post([task])
    (record,) = emu.wait_webhooks([task["taskUUID"]])
    assert record["webhook"] == "failed"
    attempts = emu.attempts(task["taskUUID"])
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(i, "injected-failure") for i in (1, 2, 3)]
    assert receiver.calls == []


def test_some_injected_failures_still_end_delivered(start_emulator, receiver):
    emu = start_emulator(webhook_fail_rate=0.5, max_attempts=8)
    uuids = fixed_uuids(10, salt=1)
    emu.post([caption_task(b64(sample_bytes()), u, webhookURL=receiver.url()) for u in uuids])
    records = emu.wait_webhooks(uuids)
    assert all(r["webhook"] == "delivered" for r in records)
    outcomes = [a["outcome"] for a in emu.attempts()]
    assert outcomes.count("delivered") == 10 and outcomes.count("injected-failure") >= 1
    assert sorted(receiver.bodies_by_uuid()) == sorted(uuids)


def test_duplicate_deliveries(start_emulator, receiver):
    emu = start_emulator(duplicate_rate=1.0)
    tasks = [caption_task(b64(sample_bytes()), webhookURL=receiver.url()) for _ in range(2)]
    emu.post(tasks)
    receiver.wait(8)
    emu.wait_idle()
    by_uuid = receiver.bodies_by_uuid()
    assert sorted(by_uuid) == sorted(t["taskUUID"] for t in tasks)
    for bodies in by_uuid.values():
        assert len(bodies) == 4 and all(b == bodies[0] for b in bodies)
    assert all(t["webhookCopies"] == 4 and t["webhook"] == "delivered" for t in emu.tasks())
    assert sorted({a["copy"] for a in emu.attempts()}) == [0, 1, 2, 3]


def test_dropped_webhooks_are_still_available_by_get_response(start_emulator, receiver):
    emu = start_emulator(drop_rate=1.0)
    tasks = [caption_task(b64(sample_bytes()), webhookURL=receiver.url()) for _ in range(3)]
    emu.post(tasks)
    records = emu.wait_webhooks([t["taskUUID"] for t in tasks])
    assert all(r["webhook"] == "dropped" and r["status"] == "success" for r in records)
    emu.wait_idle()
    time.sleep(0.1)
    assert receiver.calls == [] and emu.attempts() == []
    item = emu.get_response(tasks[0]["taskUUID"]).json()["data"][0]
    assert item["status"] == "success" and item["text"].startswith("a landscape image")


def test_fault_choices_follow_the_seed(start_emulator, receiver_factory):
    uuids = fixed_uuids(12, salt=2)

    def run(seed):
        receiver = receiver_factory()
        emu = start_emulator(seed=seed, drop_rate=0.5)
        emu.post([caption_task(b64(sample_bytes()), u, webhookURL=receiver.url()) for u in uuids])
        return {r["taskUUID"]: r["webhook"] for r in emu.wait_webhooks(uuids)}

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert set(first.values()) == {"delivered", "dropped"}
    assert first != other


@pytest.mark.parametrize("fault,status,code", [("rate_limit_rate", 429, "rateLimitExceeded"),
                                               ("unavailable_rate", 503, "serviceUnavailable")])
def test_capacity_faults(start_emulator, fault, status, code):
    emu = start_emulator(**{fault: 1.0})
    resp = emu.post([caption_task(b64(sample_bytes()))])
    assert resp.status_code == status
    assert [e["code"] for e in resp.json()["errors"]] == [code]
    assert emu.tasks() == []


def test_capacity_faults_are_seeded_and_retries_can_reuse_the_uuid(start_emulator):
    def statuses(emu):
        return [emu.get_response(new_uuid()).status_code for _ in range(20)]

    first = statuses(start_emulator(rate_limit_rate=0.3, unavailable_rate=0.3, seed=5))
    again = statuses(start_emulator(rate_limit_rate=0.3, unavailable_rate=0.3, seed=5))
    assert first == again and {404, 429, 503} <= set(first)
    emu = start_emulator(rate_limit_rate=0.5)
    histories = []
    for _ in range(5):  # each task is resent with the same UUID until it is accepted
        task, seen = caption_task(b64(sample_bytes())), []
        while not seen or seen[-1] == 429:
            assert len(seen) < 30
            seen.append(emu.post([task]).status_code)
        histories.append(seen)
    assert all(h[-1] == 200 and set(h[:-1]) <= {429} for h in histories)
    assert any(len(h) > 1 for h in histories)
    assert len(emu.tasks()) == 5


def test_task_errors_sync_webhook_and_get_response(start_emulator, receiver):
    emu = start_emulator(task_error_rate=1.0)
    sync = caption_task(b64(sample_bytes()))
    resp = emu.post([sync])
    assert resp.status_code == 500
    (error,) = resp.json()["errors"]
    assert (error["code"], error["status"], error["taskUUID"]) == ("timeoutProvider", "error", sync["taskUUID"])
    hooked = caption_task(b64(sample_bytes()), webhookURL=receiver.url())
    assert emu.post([hooked]).status_code == 200
    (call,) = receiver.wait(1)
    (delivered,) = call["body"]["errors"]
    assert delivered["code"] == "timeoutProvider" and delivered["status"] == "error"
    assert delivered["taskUUID"] == hooked["taskUUID"] and delivered["taskType"] == "imageCaption"
    polled = emu.get_response(hooked["taskUUID"])
    assert polled.status_code == 200
    assert polled.json()["errors"][0]["status"] == "error" and "data" not in polled.json()


def test_delay_fault(start_emulator, receiver):
    emu = start_emulator(delay_ms=300)
    started = time.monotonic()
    emu.post([caption_task(b64(sample_bytes()), webhookURL=receiver.url())])
    (call,) = receiver.wait(1)
    assert call["at"] - started >= 0.3


def test_reorder_fault_shuffles_a_group(start_emulator, receiver):
    emu = start_emulator(reorder=6, reorder_hold_ms=2000)
    tasks = [caption_task(b64(sample_bytes()), webhookURL=receiver.url()) for _ in range(6)]
    emu.post(tasks)
    calls = receiver.wait(6)
    order = [c["body"]["data"][0]["taskUUID"] for c in calls]
    submitted = [t["taskUUID"] for t in tasks]
    assert sorted(order) == sorted(submitted) and order != submitted
