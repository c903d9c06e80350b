"""The emulator's webhook delivery: envelopes, retries with backoff, giving up, timeouts, redaction."""

from __future__ import annotations

import time

import pytest
import requests

from emulator.captioner import cost as caption_cost
from tests.emulating import KEY
from tests.emulating import TOKEN
from tests.emulating import b64
from tests.emulating import caption_task
from tests.emulating import fixed_uuids
from tests.emulating import sample_bytes
from tests.support import free_port

pytest_plugins = ["tests.emulator_fixtures"]  # the emulator and receiver fixtures
pytestmark = pytest.mark.timeout(60)


def test_webhook_delivery_wrapped(emu, receiver):
    task = caption_task(b64(sample_bytes()), webhookURL=receiver.url(), includeCost=True)
    resp = emu.post([task])
    assert resp.status_code == 200
    assert resp.json() == {"data": [{"taskType": "imageCaption", "taskUUID": task["taskUUID"]}]}
    (call,) = receiver.wait(1)
    assert call["path"] == "/hook" and call["args"] == {"token": TOKEN, "project": "p1"}
    assert call["content_type"] == "application/json"
    (item,) = call["body"]["data"]
    assert set(item) == {"taskType", "taskUUID", "text", "cost"}
    assert item["taskUUID"] == task["taskUUID"] and item["cost"] == caption_cost(320, 200)
    (record,) = emu.wait_webhooks([task["taskUUID"]])
    assert record["webhook"] == "delivered"
    (attempt,) = emu.attempts(task["taskUUID"])
    assert attempt["outcome"] == "delivered" and attempt["status"] == 204 and attempt["attempt"] == 1
    # the result is also there for polling
    assert emu.get_response(task["taskUUID"]).json()["data"][0]["text"] == item["text"]


def test_webhook_delivery_bare(start_emulator, receiver):
    emu = start_emulator(envelope="bare")
    task = caption_task(b64(sample_bytes()), webhookURL=receiver.url())
    emu.post([task])
    (call,) = receiver.wait(1)
    assert call["body"]["taskUUID"] == task["taskUUID"] and "text" in call["body"] and "data" not in call["body"]
    assert "cost" not in call["body"]


def test_mixed_envelopes(start_emulator, receiver):
    emu = start_emulator(envelope="mixed")
    tasks = [caption_task(b64(sample_bytes()), u, webhookURL=receiver.url()) for u in fixed_uuids(8)]
    emu.post(tasks)
    emu.wait_webhooks([t["taskUUID"] for t in tasks])
    calls = receiver.wait(8)
    shapes = {"data" in c["body"] for c in calls}
    assert shapes == {True, False}
    envelopes = {a["taskUUID"]: a["envelope"] for a in emu.attempts()}
    for call in calls:
        body = call["body"]
        if "data" in body:
            assert envelopes[body["data"][0]["taskUUID"]] == "wrapped"
        else:
            assert envelopes[body["taskUUID"]] == "bare"


def test_retries_with_backoff_until_the_receiver_accepts(emu, receiver_factory):
    receiver = receiver_factory(fail_first=2)
    task = caption_task(b64(sample_bytes()), webhookURL=receiver.url())
    emu.post([task])
    calls = receiver.wait(3)
    (record,) = emu.wait_webhooks([task["taskUUID"]])
    assert record["webhook"] == "delivered"
    attempts = emu.attempts(task["taskUUID"])
    assert [(a["attempt"], a["outcome"], a["status"]) for a in attempts] == [
        (1, "failed", 500), (2, "failed", 500), (3, "delivered", 204)]
    assert attempts[0]["error"] == "HTTP 500"
    # base 20 ms doubling, with jitter in [50%, 100%] of the step
    assert 10 <= attempts[0]["nextAttemptInMs"] <= 20
    assert 20 <= attempts[1]["nextAttemptInMs"] <= 40
    assert attempts[2]["nextAttemptInMs"] is None and not attempts[2]["gaveUp"]
    gaps = [(b["at"] - a["at"]) * 1000 for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= attempts[0]["nextAttemptInMs"] - 2 and gaps[1] >= attempts[1]["nextAttemptInMs"] - 2
    assert all(c["body"] == calls[0]["body"] for c in calls)


def test_gives_up_after_max_attempts(emu, receiver_factory):
    receiver = receiver_factory(fail_first=1000, fail_status=503)
    task = caption_task(b64(sample_bytes()), webhookURL=receiver.url())
    emu.post([task])
    (record,) = emu.wait_webhooks([task["taskUUID"]])
    assert record["webhook"] == "failed"
    time.sleep(0.3)  # longer than the capped backoff: no fifth attempt comes
    assert len(receiver.calls) == 4
    attempts = emu.attempts(task["taskUUID"])
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert all(a["status"] == 503 and a["outcome"] == "failed" for a in attempts)
    assert [a["gaveUp"] for a in attempts] == [False, False, False, True]
    assert all(a["nextAttemptInMs"] <= 100 for a in attempts[:3])


def test_timeout_counts_as_a_failed_attempt(start_emulator, receiver_factory):
    emu = start_emulator(webhook_timeout_s=0.4)
    receiver = receiver_factory(slow_first=1, slow_s=1.2)
    task = caption_task(b64(sample_bytes()), webhookURL=receiver.url())
    emu.post([task])
    (record,) = emu.wait_webhooks([task["taskUUID"]])
    assert record["webhook"] == "delivered"
    attempts = emu.attempts(task["taskUUID"])
    assert [a["outcome"] for a in attempts] == ["failed", "delivered"]
    assert "Timeout" in attempts[0]["error"] and attempts[0]["status"] is None


def test_token_is_redacted_in_every_view(start_emulator, receiver):
    emu = start_emulator(max_attempts=2)
    dead = f"http://127.0.0.1:{free_port()}/hook?token={TOKEN}"
    delivered = caption_task(b64(sample_bytes()), webhookURL=receiver.url())
    refused = caption_task(b64(sample_bytes()), webhookURL=dead)
    emu.post([delivered, refused])
    emu.wait_webhooks([delivered["taskUUID"], refused["taskUUID"]])
    assert receiver.wait(1)[0]["args"]["token"] == TOKEN  # the receiver itself gets the real token
    views = [requests.get(emu.url + path, timeout=5).text
             for path in ("/_emulator/attempts", "/_emulator/tasks", "/_emulator/settings")]
    assert all(TOKEN not in view for view in views)
    attempts = emu.attempts(refused["taskUUID"])
    assert len(attempts) == 2 and all(a["outcome"] == "failed" and a["status"] is None for a in attempts)
    assert "ConnectionError" in attempts[0]["error"]
    assert attempts[0]["url"].endswith("/hook?token=REDACTED")
    assert emu.tasks(delivered["taskUUID"])[0]["webhookURL"].endswith("?token=REDACTED&project=p1")
    assert KEY not in views[2]
