"""The emulator's REST contract: auth, the body, per-task errors, conflicts, the errors envelope, getResponse."""

from __future__ import annotations

import pytest
import requests

from emulator.captioner import cost as caption_cost
from tests.emulating import KEY
from tests.emulating import b64
from tests.emulating import caption_task
from tests.emulating import sample_bytes
from tests.helpers import new_uuid
from tests.support import wait_for

pytest_plugins = ["tests.emulator_fixtures"]  # the emulator and receiver fixtures
pytestmark = pytest.mark.timeout(60)


def test_healthz_reports_seed_and_idle(emu):
    health = requests.get(emu.url + "/healthz", timeout=5).json()
    assert health == {"status": "ok", "seed": 1234, "pendingTasks": 0, "pendingDeliveries": 0}


@pytest.mark.parametrize("auth", ["bearer", "task"])
def test_both_ways_of_authenticating_work(emu, auth):
    task = caption_task(b64(sample_bytes()))
    resp = emu.post([task], auth=auth)
    assert resp.status_code == 200, resp.text
    assert resp.json()["data"][0]["taskUUID"] == task["taskUUID"]


@pytest.mark.parametrize("auth,key,headers", [
    (None, KEY, {}),
    ("bearer", "wrong-key", {}),
    ("task", "wrong-key", {}),
    (None, KEY, {"Authorization": f"Basic {KEY}"}),
])
def test_missing_or_wrong_key_is_401(emu, auth, key, headers):
    resp = emu.post([caption_task(b64(sample_bytes()))], auth=auth, key=key, headers=headers)
    assert resp.status_code == 401
    (error,) = resp.json()["errors"]
    assert error["code"] == "invalidApiKey"
    assert emu.tasks() == []


@pytest.mark.parametrize("body", [b"not json", b'{"taskType": "imageCaption"}', b"[]", b"[1, 2]",
                                  b'[{"taskType": "authentication", "apiKey": "test-key"}]'])
def test_malformed_body_is_400_invalid_payload(emu, body):
    resp = emu.post(None, data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    (error,) = resp.json()["errors"]
    assert error["code"] == "invalidPayload"
    assert set(error) == {"code", "message", "parameter", "taskType", "taskUUID", "documentation"}


def test_per_task_errors_sit_beside_successes(emu):
    good = caption_task(b64(sample_bytes()))
    no_image = caption_task(None)
    bad_uuid = caption_task(b64(sample_bytes()), task_uuid="not-a-uuid")
    unknown = {"taskType": "imageInference", "taskUUID": new_uuid()}
    bad_method = caption_task(b64(sample_bytes()), deliveryMethod="later")
    resp = emu.post([good, no_image, bad_uuid, unknown, bad_method])
    assert resp.status_code == 200
    body = resp.json()
    assert [d["taskUUID"] for d in body["data"]] == [good["taskUUID"]]
    errors = {e["code"]: e for e in body["errors"]}
    assert set(errors) == {"missingInputImage", "invalidTaskUUID", "invalidTaskType", "invalidDeliveryMethod"}
    assert errors["missingInputImage"]["parameter"] == "inputImage"
    assert errors["missingInputImage"]["taskUUID"] == no_image["taskUUID"]
    assert errors["missingInputImage"]["taskType"] == "imageCaption"
    assert errors["invalidTaskUUID"]["taskUUID"] == "not-a-uuid"
    assert errors["invalidTaskType"]["parameter"] == "taskType"
    assert errors["invalidDeliveryMethod"]["parameter"] == "deliveryMethod"
    assert all(e["documentation"].startswith("https://") for e in body["errors"])
    # only the valid task was accepted
    assert [t["taskUUID"] for t in emu.tasks()] == [good["taskUUID"]]


def test_all_invalid_request_is_400(emu):
    resp = emu.post([caption_task(None), caption_task("%%% not base64 %%%")])
    assert resp.status_code == 400
    assert "data" not in resp.json()
    assert [e["code"] for e in resp.json()["errors"]] == ["missingInputImage", "invalidInputImage"]


def test_reused_task_uuid_is_a_conflict(emu):
    task = caption_task(b64(sample_bytes()))
    assert emu.post([task]).status_code == 200
    resp = emu.post([task])
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["code"] == "conflictTaskUUID"
    twin = caption_task(b64(sample_bytes()))
    resp = emu.post([twin, dict(twin)])
    assert resp.status_code == 200
    assert len(resp.json()["data"]) == 1
    assert resp.json()["errors"][0]["code"] == "conflictTaskUUID"


def test_oversized_body_and_unknown_path_answer_in_the_errors_envelope(start_emulator):
    emu = start_emulator(max_request_bytes=2000)
    resp = emu.post([caption_task(b64(b"x" * 3000))])
    assert resp.status_code == 413
    assert resp.json()["errors"][0]["code"] == "payloadTooLarge"
    resp = requests.get(emu.url + "/v2", timeout=5)
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "notFound"



def test_get_response_lifecycle(start_emulator):
    emu = start_emulator(processing_ms=800)
    task = caption_task(b64(sample_bytes()), deliveryMethod="async", includeCost=True)
    ack = emu.post([task])
    assert ack.status_code == 200
    assert ack.json() == {"data": [{"taskType": "imageCaption", "taskUUID": task["taskUUID"]}]}
    first = emu.get_response(task["taskUUID"]).json()["data"][0]
    assert first == {"taskType": "imageCaption", "taskUUID": task["taskUUID"], "status": "processing"}
    done = wait_for(lambda: emu.get_response(task["taskUUID"]).json()["data"][0]["status"] == "success"
                    and emu.get_response(task["taskUUID"]).json()["data"][0], 5, what="success")
    assert done["text"].startswith("a landscape image, 320×200") and done["cost"] == caption_cost(320, 200)
    unknown = new_uuid()
    resp = emu.get_response(unknown)
    assert resp.status_code == 404
    (error,) = resp.json()["errors"]
    assert (error["code"], error["parameter"], error["taskUUID"]) == ("taskNotFound", "taskUUID", unknown)
    both = emu.post([{"taskType": "getResponse", "taskUUID": task["taskUUID"]},
                     {"taskType": "getResponse", "taskUUID": unknown}])
    assert both.status_code == 200
    assert len(both.json()["data"]) == 1 and both.json()["errors"][0]["code"] == "taskNotFound"
