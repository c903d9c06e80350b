"""The emulator's WebSocket API, spoken by a plain client: pings, authentication, sessions, replies, faults, limits."""

from __future__ import annotations

import io
import json
import os
import time

import pytest
import requests
from PIL import Image
from websockets.exceptions import ConnectionClosedError

from emulator.captioner import cost as caption_cost
from emulator.sessions import MAX_FRAME_BYTES
from tests.emulating import b64
from tests.emulating import caption_task
from tests.emulating import data_uri
from tests.emulating import sample_bytes
from tests.helpers import new_uuid
from tests.support import wait_for

pytest_plugins = ["tests.emulator_fixtures"]  # the emulator and receiver fixtures
pytestmark = pytest.mark.timeout(60)

PONG = {"data": [{"taskType": "ping", "pong": True}]}


def test_pings_are_answered_before_and_after_authentication(emu, ws_client):
    client = ws_client(emu)
    client.send({"taskType": "ping", "ping": True})
    assert client.recv() == PONG
    client.ws.ping().wait(5)  # a protocol ping gets its pong
    client.authenticate()
    client.send({"taskType": "ping", "ping": True})
    assert client.recv() == PONG


def test_authentication_gives_a_session_that_a_new_connection_resumes(emu, ws_client):
    first = ws_client(emu).authenticate()
    (item,) = first["data"]
    assert item["taskType"] == "authentication"
    session = item["connectionSessionUUID"]
    assert ws_client(emu).authenticate(session=session)["data"][0]["connectionSessionUUID"] == session
    unknown = ws_client(emu).authenticate(session=new_uuid())["data"][0]["connectionSessionUUID"]
    assert unknown not in (session, None)


def test_a_bad_key_and_tasks_before_authentication_are_refused(emu, ws_client):
    client = ws_client(emu)
    (error,) = client.authenticate(key="wrong-key")["errors"]
    assert (error["code"], error["taskType"], error["parameter"]) == ("invalidApiKey", "authentication", "apiKey")
    task = caption_task(b64(sample_bytes()))
    client.send(task)
    (error,) = client.recv()["errors"]
    assert (error["code"], error["taskUUID"], error["taskType"]) == ("missingApiKey", task["taskUUID"], "imageCaption")
    assert emu.tasks() == []
    assert "data" in client.authenticate()  # the connection stays open for a good key


@pytest.mark.parametrize("message", ["not json", '{"taskType": "ping"}', "[]", "[1]"])
def test_a_message_that_is_not_a_task_array_is_invalid_payload(emu, ws_client, message):
    client = ws_client(emu)
    client.authenticate()
    client.ws.send(message)
    assert client.recv()["errors"][0]["code"] == "invalidPayload"


def test_sync_caption_comes_in_a_reply_of_its_own_and_errors_never_share_a_frame(emu, ws_client):
    client = ws_client(emu)
    client.authenticate()
    good = caption_task(b64(sample_bytes()), includeCost=True)
    bad = caption_task(None)
    client.send(good, bad)
    errors, data = client.recv(), client.recv()
    assert set(errors) == {"errors"} and errors["errors"][0]["taskUUID"] == bad["taskUUID"]
    assert set(data) == {"data"}
    (item,) = data["data"]
    assert item["taskUUID"] == good["taskUUID"] and item["cost"] == caption_cost(320, 200)
    assert item["text"].startswith("a landscape image, 320×200")
    client.send(good)
    assert client.recv()["errors"][0]["code"] == "conflictTaskUUID"


def test_caption_task_type_and_several_input_images(emu, ws_client):
    client = ws_client(emu)
    client.authenticate()
    image = b64(sample_bytes("checkerboard.webp"))
    client.send({"taskType": "caption", "taskUUID": new_uuid(), "model": "runware:150@2", "inputs": {"image": image}})
    (caption,) = client.recv()["data"]
    assert caption["taskType"] == "caption" and caption["text"].startswith("a square image, 240×240")
    client.send(caption_task(b64(sample_bytes())))
    sunset = client.recv()["data"][0]["text"]
    client.send(caption_task(None, inputImages=[image, b64(sample_bytes())], includeCost=True))
    (item,) = client.recv()["data"]
    assert item["text"] == f"image 1: {caption['text']}; image 2: {sunset}"
    assert item["cost"] == round(caption_cost(240, 240) + caption_cost(320, 200), 6)
    client.send(caption_task(b64(sample_bytes()), inputImages=[image]), caption_task(None, inputImages=[]))
    assert [e["code"] for e in client.recv()["errors"]] == ["invalidInputImages", "invalidInputImages"]


@pytest.mark.parametrize("drop_rate", [0.0, 1.0])
def test_async_caption_is_acknowledged_then_pushed_unless_dropped(start_emulator, ws_client, drop_rate):
    emu = start_emulator(processing_ms=100, drop_rate=drop_rate)
    client = ws_client(emu)
    client.authenticate()
    task = caption_task(b64(sample_bytes()), deliveryMethod="async")
    client.send(task)
    assert client.recv() == {"data": [{"taskType": "imageCaption", "taskUUID": task["taskUUID"]}]}
    if drop_rate:
        with pytest.raises(TimeoutError):
            client.recv(timeout=0.5)
    else:
        assert client.recv()["data"][0]["text"].startswith("a landscape image")
    client.send({"taskType": "getResponse", "taskUUID": task["taskUUID"]})
    (item,) = client.recv()["data"]
    assert item["status"] == "success" and item["text"].startswith("a landscape image")


def test_upload_then_caption_by_image_uuid_and_get_response(emu, ws_client):
    client = ws_client(emu)
    client.authenticate()
    upload = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": data_uri(sample_bytes())}
    client.send(upload)
    (uploaded,) = client.recv()["data"]
    assert requests.get(uploaded["imageURL"], timeout=5).content == sample_bytes()
    task = caption_task(uploaded["imageUUID"])
    client.send(task)
    text = client.recv()["data"][0]["text"]
    assert text.startswith("a landscape image, 320×200")
    unknown = new_uuid()
    client.send({"taskType": "getResponse", "taskUUID": task["taskUUID"]}, {"taskType": "getResponse",
                                                                             "taskUUID": unknown})
    assert client.recv()["data"][0]["text"] == text
    assert client.recv()["errors"][0]["code"] == "taskNotFound"


def test_large_messages_in_and_replies_split_under_1_mib(start_emulator, ws_client):
    emu = start_emulator(max_image_bytes=8 * 1024 * 1024)
    client = ws_client(emu)
    client.authenticate()
    buffer = io.BytesIO()
    Image.frombytes("RGB", (1200, 1000), os.urandom(1200 * 1000 * 3)).save(buffer, "PNG")
    assert len(buffer.getvalue()) > 3 * 1024 * 1024
    client.send(caption_task(data_uri(buffer.getvalue())))
    assert client.recv()["data"][0]["text"].startswith("a landscape image, 1200×1000")
    unknown = [new_uuid() for _ in range(5000)]
    client.send(*({"taskType": "getResponse", "taskUUID": u} for u in unknown))
    frames = [client.ws.recv(10) for _ in range(2)]  # over 1 MiB of errors in all, so two frames
    assert all(len(frame.encode()) <= MAX_FRAME_BYTES for frame in frames)
    seen = [e["taskUUID"] for frame in frames for e in json.loads(frame)["errors"]]
    assert seen == unknown


@pytest.mark.parametrize("fault,code", [("rate_limit_rate", "rateLimitExceeded"),
                                        ("unavailable_rate", "serviceUnavailable")])
def test_capacity_faults_name_each_task(start_emulator, ws_client, fault, code):
    emu = start_emulator(**{fault: 1.0})
    client = ws_client(emu)
    client.authenticate()
    tasks = [caption_task(b64(sample_bytes())) for _ in range(2)]
    client.send(*tasks)
    errors = client.recv()["errors"]
    assert [(e["code"], e["taskUUID"]) for e in errors] == [(code, t["taskUUID"]) for t in tasks]
    assert emu.tasks() == []


def test_task_errors_over_websocket(start_emulator, ws_client):
    emu = start_emulator(task_error_rate=1.0)
    client = ws_client(emu)
    client.authenticate()
    task = caption_task(b64(sample_bytes()))
    client.send(task)
    (error,) = client.recv()["errors"]
    assert (error["code"], error["status"], error["taskUUID"]) == ("timeoutProvider", "error", task["taskUUID"])


def test_disconnect_fault_closes_mid_task_and_the_task_goes_on(start_emulator, ws_client):
    emu = start_emulator(disconnect_rate=1.0, processing_ms=50)
    client = ws_client(emu)
    client.authenticate()
    client.send({"taskType": "ping", "ping": True})
    assert client.recv() == PONG  # no caption accepted yet: the connection stays
    task = caption_task(b64(sample_bytes()))
    started = time.monotonic()
    client.send(task)
    with pytest.raises(ConnectionClosedError) as closed:
        client.recv()
    assert closed.value.rcvd.code == 1012 and time.monotonic() - started < 5
    done = wait_for(lambda: emu.get_response(task["taskUUID"]).json()["data"][0]["status"] == "success", 5,
                    what="the task to finish")
    assert done


def test_delay_fault_holds_back_a_pushed_result(start_emulator, ws_client):
    emu = start_emulator(delay_ms=400)
    client = ws_client(emu)
    client.authenticate()
    task = caption_task(b64(sample_bytes()), deliveryMethod="async")
    client.send(task)
    assert "text" not in client.recv()["data"][0]  # the acknowledgement, at once
    acknowledged = time.monotonic()
    (item,) = client.recv()["data"]
    assert item["taskUUID"] == task["taskUUID"] and time.monotonic() - acknowledged >= 0.3
