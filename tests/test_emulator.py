"""The Runware emulator over real HTTP: the emulator runs in a thread, webhooks go to a real receiver.

Nothing of the emulator is mocked. Fault tests use a fixed seed and fixed task
UUIDs, so their random choices are the same on every run.
"""

from __future__ import annotations

import base64
import io
import json
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from PIL import Image
from werkzeug.serving import make_server
from werkzeug.wrappers import Request
from werkzeug.wrappers import Response

from emulator import Faults
from emulator import Settings
from emulator import serve_in_thread
from emulator.captioner import cost as caption_cost
from emulator.settings import parse_args
from tests.helpers import new_uuid
from tests.support import free_port
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SAMPLE_NAMES = sorted(p.name for p in SAMPLES.iterdir() if p.suffix in (".png", ".jpg", ".webp"))
KEY = "test-key"
TOKEN = "s3cret-hook-token"
BASE = Settings(port=0, api_key=KEY, seed=1234, processing_ms=10, backoff_base_ms=20, backoff_cap_ms=100,
                max_attempts=4, webhook_timeout_s=2.0)


# ---------------------------------------------------------------- helpers


def fixed_uuids(n: int, salt: int = 0) -> list[str]:
    """UUID v4 strings that are the same on every run (fault choices depend on them)."""
    rng = random.Random(1000 + salt)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def sample_bytes(name: str = "sunset-gradient.png") -> bytes:
    return (SAMPLES / name).read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{b64(data)}"


def encoded(fmt: str, size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def caption_task(image: str | None = None, task_uuid: str | None = None, **extra) -> dict:
    task = {"taskType": "imageCaption", "taskUUID": task_uuid or new_uuid(), **extra}
    if image is not None:
        task["inputImage"] = image
    return task


class Emu:
    """A small client for an emulator run by the test."""

    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, tasks, auth: str | None = "bearer", key: str = KEY, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if auth == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        elif auth == "task":
            tasks = [{"taskType": "authentication", "apiKey": key}, *tasks]
        if "data" in kwargs:
            return requests.post(self.url + "/v1", headers=headers, timeout=10, **kwargs)
        return requests.post(self.url + "/v1", json=tasks, headers=headers, timeout=10, **kwargs)

    def get_response(self, task_uuid: str) -> requests.Response:
        return self.post([{"taskType": "getResponse", "taskUUID": task_uuid}])

    def tasks(self, task_uuid: str | None = None) -> list[dict]:
        params = {"taskUUID": task_uuid} if task_uuid else {}
        return requests.get(self.url + "/_emulator/tasks", params=params, timeout=10).json()["tasks"]

    def attempts(self, task_uuid: str | None = None) -> list[dict]:
        params = {"taskUUID": task_uuid} if task_uuid else {}
        return requests.get(self.url + "/_emulator/attempts", params=params, timeout=10).json()["attempts"]

    def wait_webhooks(self, uuids, states=("delivered", "failed", "dropped"), timeout: float = 10.0) -> list[dict]:
        def settled():
            records = {t["taskUUID"]: t for t in self.tasks()}
            if all(u in records and records[u]["webhook"] in states for u in uuids):
                return [records[u] for u in uuids]
            return None
        return wait_for(settled, timeout, what="webhooks to settle")

    def wait_idle(self, timeout: float = 10.0) -> None:
        def idle():
            health = requests.get(self.url + "/healthz", timeout=10).json()
            return health["pendingTasks"] == 0 and health["pendingDeliveries"] == 0
        wait_for(idle, timeout, what="the emulator to go idle")


class Receiver:
    """A real webhook receiver: records every POST; can fail the first N, or answer slowly; serves GET files."""

    def __init__(self, fail_first: int = 0, fail_status: int = 500, slow_first: int = 0, slow_s: float = 0.0):
        self.calls: list[dict] = []
        self.files: dict[str, tuple[bytes, str]] = {}
        self.fail_first, self.fail_status = fail_first, fail_status
        self.slow_first, self.slow_s = slow_first, slow_s
        self._cond = threading.Condition()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    def url(self, path: str = "/hook", token: str = TOKEN) -> str:
        return f"{self.base}{path}?token={token}&project=p1"

    @Request.application
    def _app(self, request: Request) -> Response:
        if request.method == "GET":
            body, mimetype = self.files.get(request.path, (b"", ""))
            return Response(body, 200 if body else 404, mimetype=mimetype or "text/plain")
        with self._cond:
            n = len(self.calls) + 1
            self.calls.append({"at": time.monotonic(), "path": request.path, "args": dict(request.args),
                               "content_type": request.content_type, "body": json.loads(request.get_data())})
            self._cond.notify_all()
        if n <= self.slow_first:
            time.sleep(self.slow_s)
        if n <= self.fail_first:
            return Response("nope", self.fail_status)
        return Response("", 204)

    def wait(self, n: int, timeout: float = 10.0) -> list[dict]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.calls) >= n, timeout):
                pytest.fail(f"receiver got {len(self.calls)} calls, expected {n}")
            return list(self.calls)

    def bodies_by_uuid(self) -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {}
        for call in self.calls:
            body = call["body"]
            item = (body.get("data") or body.get("errors") or [body])[0]
            found.setdefault(item["taskUUID"], []).append(body)
        return found

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)
        self._server.server_close()


@pytest.fixture
def start_emulator():
    stops = []

    def start(**changes) -> Emu:
        url, stop = serve_in_thread(BASE.replace(**changes))
        stops.append(stop)
        return Emu(url)

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def emu(start_emulator) -> Emu:
    return start_emulator()


@pytest.fixture
def receiver_factory():
    receivers = []

    def make(**kwargs) -> Receiver:
        receivers.append(Receiver(**kwargs))
        return receivers[-1]

    yield make
    for r in receivers:
        r.close()


@pytest.fixture
def receiver(receiver_factory) -> Receiver:
    return receiver_factory()


# ---------------------------------------------------------------- auth and envelopes


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


# ---------------------------------------------------------------- captions, images and cost


def test_sync_caption_and_cost_formula(emu):
    with_cost = caption_task(b64(sample_bytes()), includeCost=True)
    without = caption_task(b64(sample_bytes()))
    data = emu.post([with_cost, without]).json()["data"]
    assert data[0]["cost"] == round(0.0019 + 0.0001 * 320 * 200 / 1e6, 6) == caption_cost(320, 200)
    assert set(data[0]) == {"taskType", "taskUUID", "text", "cost"}
    assert "cost" not in data[1]
    assert data[0]["text"] == data[1]["text"]
    assert data[0]["text"].startswith("a landscape image, 320×200, a smooth gradient from orange")
    assert caption_cost(4000, 3000) == 0.0031


@pytest.mark.parametrize("name", SAMPLE_NAMES)
@pytest.mark.parametrize("form", ["data-uri", "base64"])
def test_png_jpg_and_webp_are_captioned(emu, name, form):
    data = sample_bytes(name)
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
    image = data_uri(data, "application/octet-stream") if form == "data-uri" else b64(data)
    resp = emu.post([caption_task(image)])
    assert resp.status_code == 200, resp.text
    text = resp.json()["data"][0]["text"]
    orientation = "square" if width == height else "landscape" if width > height else "portrait"
    assert text.startswith(f"a {orientation} image, {width}×{height}, ")


def test_captions_depend_on_the_image_only(start_emulator):
    first, second = start_emulator(), start_emulator(seed=99)
    texts = {}
    for name in SAMPLE_NAMES:
        data = sample_bytes(name)
        a = first.post([caption_task(b64(data))]).json()["data"][0]["text"]
        b = first.post([caption_task(data_uri(data))]).json()["data"][0]["text"]
        c = second.post([caption_task(b64(data))]).json()["data"][0]["text"]
        assert a == b == c
        texts[name] = a
    assert len(set(texts.values())) == len(SAMPLE_NAMES), texts
    assert "horizontal stripes" in texts["pastel-stripes.webp"]
    assert "small bright spots on a dark background" in texts["night-sky.jpg"]
    assert "greyscale" in texts["checkerboard.webp"]
    assert "green" in texts["forest-portrait.jpg"]
    assert not any(word in " ".join(texts.values()) for word in ("neural", "model", "AI "))


def test_gif_garbage_truncated_and_oversized_images_are_rejected(start_emulator):
    emu = start_emulator(max_image_bytes=3000)
    png = sample_bytes("shapes-on-white.png")
    cases = {
        "gif": caption_task(b64(encoded("GIF"))),
        "bmp": caption_task(data_uri(encoded("BMP", size=(10, 10)), "image/png")),
        "garbage": caption_task(b64(b"hello, this is not an image at all")),
        "not-base64": caption_task("%%% not base64 %%%"),
        "truncated": caption_task(b64(png[: len(png) // 2])),
        "too-large": caption_task(b64(sample_bytes("forest-portrait.jpg"))),
        "not-a-string": caption_task(42),
    }
    resp = emu.post(list(cases.values()))
    assert resp.status_code == 400
    errors = {e["taskUUID"]: e for e in resp.json()["errors"]}
    got = {name: errors[task["taskUUID"]] for name, task in cases.items()}
    assert got["gif"]["code"] == "unsupportedImageFormat" and "GIF" in got["gif"]["message"]
    assert "PNG, JPG, WEBP" in got["gif"]["message"]
    assert got["bmp"]["code"] == "unsupportedImageFormat"
    assert got["garbage"]["code"] == "invalidInputImage"
    assert got["not-base64"]["code"] == "invalidInputImage"
    assert got["truncated"]["code"] == "invalidInputImage" and "corrupt" in got["truncated"]["message"]
    assert got["too-large"]["code"] == "imageTooLarge"
    assert got["not-a-string"]["code"] == "invalidInputImage"
    assert all(e["parameter"] == "inputImage" for e in errors.values())


def test_image_by_url(emu, receiver):
    receiver.files["/img/night.jpg"] = (sample_bytes("night-sky.jpg"), "image/jpeg")
    ok = caption_task(receiver.base + "/img/night.jpg")
    missing = caption_task(receiver.base + "/img/missing.jpg")
    refused = caption_task(f"http://127.0.0.1:{free_port()}/img.png")
    resp = emu.post([ok, missing, refused])
    assert resp.status_code == 200
    assert resp.json()["data"][0]["text"].startswith("a landscape image, 320×180")
    messages = {e["taskUUID"]: e["message"] for e in resp.json()["errors"]}
    assert "HTTP 404" in messages[missing["taskUUID"]]
    assert "ConnectionError" in messages[refused["taskUUID"]]


def test_caption_task_type_with_model_and_inputs(emu):
    image = b64(sample_bytes("checkerboard.webp"))
    ok = {"taskType": "caption", "taskUUID": new_uuid(), "model": "runware:150@2", "inputs": {"image": image},
          "includeCost": True}
    no_model = {"taskType": "caption", "taskUUID": new_uuid(), "inputs": {"image": image}}
    no_image = {"taskType": "caption", "taskUUID": new_uuid(), "model": "runware:150@2", "inputs": {}}
    bad_model = {"taskType": "caption", "taskUUID": new_uuid(), "model": "llava", "inputs": {"image": image}}
    resp = emu.post([ok, no_model, no_image, bad_model])
    (item,) = resp.json()["data"]
    assert item["taskType"] == "caption" and item["taskUUID"] == ok["taskUUID"]
    assert item["text"].startswith("a square image, 240×240") and item["cost"] == caption_cost(240, 240)
    codes = [(e["code"], e["parameter"]) for e in resp.json()["errors"]]
    assert codes == [("missingModel", "model"), ("missingInputImage", "inputs.image"), ("invalidModel", "model")]


def test_image_upload_then_caption_by_image_uuid(emu):
    data = sample_bytes("pastel-stripes.webp")
    upload = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": data_uri(data, "image/webp")}
    resp = emu.post([upload])
    assert resp.status_code == 200
    (item,) = resp.json()["data"]
    assert item["taskType"] == "imageUpload" and item["taskUUID"] == upload["taskUUID"]
    assert uuid.UUID(item["imageUUID"]).version == 4
    fetched = requests.get(item["imageURL"], timeout=5)
    assert fetched.content == data and fetched.headers["Content-Type"] == "image/webp"
    by_uuid = emu.post([caption_task(item["imageUUID"])]).json()["data"][0]["text"]
    inline = emu.post([caption_task(b64(data))]).json()["data"][0]["text"]
    assert by_uuid == inline
    by_url = emu.post([caption_task(item["imageURL"])]).json()["data"][0]["text"]
    assert by_url == inline
    resp = emu.post([caption_task(new_uuid())])
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["code"] == "invalidInputImage"
    assert "No uploaded image" in resp.json()["errors"][0]["message"]


def test_upload_accepts_gif_but_not_garbage(emu):
    gif = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": b64(encoded("GIF"))}
    junk = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": b64(b"junk junk junk")}
    missing = {"taskType": "imageUpload", "taskUUID": new_uuid()}
    resp = emu.post([gif, junk, missing])
    (item,) = resp.json()["data"]
    assert [e["code"] for e in resp.json()["errors"]] == ["invalidInputImage", "missingImage"]
    text = emu.post([caption_task(item["imageUUID"])]).json()["data"][0]["text"]
    assert text.startswith("a landscape image, 40×30, a single flat colour, mostly red")


# ---------------------------------------------------------------- async, webhooks and getResponse


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


# ---------------------------------------------------------------- faults


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


# ---------------------------------------------------------------- settings and the command line


def test_settings_from_flags_and_environment():
    env = {"EMULATOR_DUPLICATE_RATE": "0.25", "EMULATOR_DROP_RATE": "0.1", "EMULATOR_PORT": "9999",
           "EMULATOR_API_KEY": "from-env"}
    settings = parse_args(["--drop-rate", "0.5", "--envelope", "bare", "--seed", "3"], env)
    assert settings.faults == Faults(duplicate_rate=0.25, drop_rate=0.5, envelope="bare")
    assert (settings.port, settings.api_key, settings.seed) == (9999, "from-env", 3)
    assert Settings.from_env({}) == Settings()
    assert Settings().port == 8010 and Settings().api_key == "emulator-key"
    with pytest.raises(ValueError, match="drop_rate"):
        Settings.from_env({"EMULATOR_DROP_RATE": "2"})
    with pytest.raises(ValueError, match="EMULATOR_MAX_ATTEMPTS"):
        Settings.from_env({"EMULATOR_MAX_ATTEMPTS": "many"})
    with pytest.raises(SystemExit):
        parse_args(["--envelope", "sideways"], {})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_command_line_server_stops_cleanly_on_signals(signum):
    proc = subprocess.Popen([sys.executable, "-m", "emulator", "--port", "0", "--seed", "5", "--api-key", KEY],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("emulator listening on http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[3]
        assert requests.get(url + "/healthz", timeout=5).json()["seed"] == 5
        resp = Emu(url).post([caption_task(b64(sample_bytes()))])
        assert resp.status_code == 200
        proc.send_signal(signum)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_a_taken_port_is_an_os_error(emu):
    port = int(emu.url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match="in use"):
        serve_in_thread(BASE.replace(port=port))
