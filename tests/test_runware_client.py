"""The Runware REST client against the emulator, and against a bare HTTP stand-in for the statuses it never sends."""

from __future__ import annotations

import base64
import http.server
import io
import random
import threading
import time

import orjson
import pytest
from PIL import Image

from tests.helpers import new_uuid
from tests.submitting import EMULATOR_KEY
from tests.submitting import Counting
from tests.submitting import data_uri
from tests.submitting import emulator  # noqa: F401  (fixture)
from tests.support import free_port
from workers.runware import RetryableError
from workers.runware import RunwareClient
from workers.runware import RunwareError
from workers.runware import backoff
from workers.runware import caption_task
from workers.runware import poll_task

KEY = EMULATOR_KEY


def test_a_batch_is_one_request_and_answers_every_task(emulator):  # noqa: F811
    session = Counting()
    client = RunwareClient(emulator(), KEY, session=session)
    uuids = [new_uuid() for _ in range(10)]
    answer = client.run([caption_task(u, data_uri(colour=c), delivery_method="sync")
                         for u, c in zip(uuids, ["red", "blue"] * 5)])
    assert len(session.sent) == 1 and len(session.sent[0]) == 10
    assert answer.status == 200 and not answer.errors
    assert sorted(item["taskUUID"] for item in answer.data) == sorted(uuids)
    assert all(item["text"] and item["cost"] > 0 for item in answer.data)


def test_async_tasks_are_acknowledged_and_polled_with_get_response(emulator):  # noqa: F811
    client = RunwareClient(emulator(), KEY)
    task_uuid = new_uuid()
    ack = client.run([caption_task(task_uuid, data_uri(), delivery_method="async", include_cost=False)])
    assert ack.data == [{"taskType": "imageCaption", "taskUUID": task_uuid}]
    deadline = time.monotonic() + 5
    while True:
        item = client.run([poll_task(task_uuid)]).data[0]
        if item["status"] == "success" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert item["status"] == "success" and item["text"] and "cost" not in item


def test_per_task_errors_come_back_beside_the_results_matched_by_task_uuid(emulator):  # noqa: F811
    client = RunwareClient(emulator(), KEY)
    good, bad, gif = new_uuid(), new_uuid(), new_uuid()
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "GIF")
    answer = client.run([
        caption_task(good, data_uri(), delivery_method="sync"),
        caption_task(bad, "not an image at all", delivery_method="sync"),
        caption_task(gif, base64.b64encode(buffer.getvalue()).decode(), delivery_method="sync"),
    ])
    assert answer.status == 200
    assert [item["taskUUID"] for item in answer.data] == [good]
    errors = {item["taskUUID"]: item for item in answer.errors}
    assert errors[bad]["code"] == "invalidInputImage" and errors[bad]["message"]
    assert errors[gif]["code"] == "unsupportedImageFormat"


def test_a_request_where_every_task_fails_raises_with_the_per_task_errors(emulator):  # noqa: F811
    client = RunwareClient(emulator(), KEY)
    task_uuid = new_uuid()
    with pytest.raises(RunwareError) as caught:
        client.run([caption_task(task_uuid, "bm90IGFuIGltYWdl")])
    error = caught.value
    assert not error.retryable and error.status == 400 and error.code == "invalidInputImage"
    assert error.answer.errors[0]["taskUUID"] == task_uuid and not error.request_wide


def test_a_task_uuid_sent_twice_is_a_conflict(emulator):  # noqa: F811
    client = RunwareClient(emulator(), KEY)
    task = caption_task(new_uuid(), data_uri(), delivery_method="async")
    client.run([task])
    with pytest.raises(RunwareError) as caught:
        client.run([task])
    assert caught.value.code == "conflictTaskUUID" and caught.value.status == 400


def test_a_wrong_key_is_refused_for_the_whole_request(emulator):  # noqa: F811
    with pytest.raises(RunwareError) as caught:
        RunwareClient(emulator(), "wrong-key").run([caption_task(new_uuid(), data_uri())])
    error = caught.value
    assert (error.status, error.code, error.retryable, error.request_wide) == (401, "invalidApiKey", False, True)


@pytest.mark.parametrize(("fault", "status", "code"), [
    ({"rate_limit_rate": 1.0}, 429, "rateLimitExceeded"),
    ({"unavailable_rate": 1.0}, 503, "serviceUnavailable"),
])
def test_capacity_faults_are_retryable(emulator, fault, status, code):  # noqa: F811
    with pytest.raises(RetryableError) as caught:
        RunwareClient(emulator(**fault), KEY).run([caption_task(new_uuid(), data_uri())])
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (status, code, True)


def test_a_failed_sync_task_is_a_500_carrying_the_task_outcome(emulator):  # noqa: F811
    task_uuid = new_uuid()
    with pytest.raises(RetryableError) as caught:
        RunwareClient(emulator(task_error_rate=1.0), KEY).run([caption_task(task_uuid, data_uri(),
                                                                            delivery_method="sync")])
    assert caught.value.status == 500 and caught.value.code == "timeoutProvider"
    item = caught.value.answer.errors[0]
    assert item["taskUUID"] == task_uuid and item["status"] == "error"


def test_an_unknown_task_polled_is_a_404_scoped_to_that_task(emulator):  # noqa: F811
    task_uuid = new_uuid()
    with pytest.raises(RunwareError) as caught:
        RunwareClient(emulator(), KEY).run([poll_task(task_uuid)])
    assert caught.value.status == 404 and caught.value.code == "taskNotFound" and not caught.value.request_wide


class StandIn(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the status, body and delay the server was given."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append(self.headers.get("Authorization"))
        time.sleep(self.server.delay)
        try:
            self.send_response(self.server.status)
            self.send_header("Content-Type", self.server.content_type)
            self.send_header("Content-Length", str(len(self.server.body)))
            self.end_headers()
            self.wfile.write(self.server.body)
        except OSError:  # the client gave up (the timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    servers = []

    def start(status: int, body: bytes, content_type: str = "application/json", delay: float = 0.0) -> tuple:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
        server.status, server.body, server.content_type, server.delay = status, body, content_type, delay
        server.seen = []
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/v1", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def envelope(code: str, message: str) -> bytes:
    return orjson.dumps({"errors": [{"code": code, "message": message, "taskType": None, "taskUUID": None}]})


@pytest.mark.parametrize(("status", "retryable"), [
    (400, False), (401, False), (402, False), (403, False), (404, False), (409, False),
    (429, True), (500, True), (502, True), (503, True), (504, True),
])
def test_every_status_is_classified_with_runwares_code_and_message(stand_in, status, retryable):
    url, server = stand_in(status, envelope(f"code{status}", f"message {status}"))
    with pytest.raises(RunwareError) as caught:
        RunwareClient(url, "the-key").run([caption_task(new_uuid(), data_uri())])
    error = caught.value
    assert (error.status, error.code, error.message, error.retryable) == (status, f"code{status}",
                                                                          f"message {status}", retryable)
    assert isinstance(error, RetryableError) is retryable
    assert server.seen == ["Bearer the-key"]


def test_a_status_without_an_envelope_gets_a_code_from_the_status(stand_in):
    url, _ = stand_in(504, b"<html>Gateway Timeout</html>", "text/html")
    with pytest.raises(RetryableError) as caught:
        RunwareClient(url, "k").run([caption_task(new_uuid(), data_uri())])
    assert (caught.value.code, caught.value.message) == ("http504", "Gateway Timeout")


def test_the_older_single_error_shape_is_read(stand_in):
    url, _ = stand_in(402, orjson.dumps({"error": {"code": "insufficientCredits", "message": "top up"}}))
    with pytest.raises(RunwareError) as caught:
        RunwareClient(url, "k").run([caption_task(new_uuid(), data_uri())])
    assert (caught.value.code, caught.value.message, caught.value.status) == ("insufficientCredits", "top up", 402)


def test_an_unreadable_2xx_answer_is_retryable(stand_in):
    url, _ = stand_in(200, b"not json", "text/plain")
    with pytest.raises(RetryableError) as caught:
        RunwareClient(url, "k").run([caption_task(new_uuid(), data_uri())])
    assert caught.value.code == "badAnswer"


def test_network_errors_and_timeouts_are_retryable(stand_in):
    with pytest.raises(RetryableError) as caught:
        RunwareClient(f"http://127.0.0.1:{free_port()}/v1", "k").run([caption_task(new_uuid(), data_uri())])
    assert caught.value.code == "network" and caught.value.status is None
    url, _ = stand_in(200, b'{"data": []}', delay=1.0)
    with pytest.raises(RetryableError) as caught:
        RunwareClient(url, "k", timeout=0.2).run([caption_task(new_uuid(), data_uri())])
    assert caught.value.code == "timeout"


def test_no_tasks_is_a_programming_error(emulator):  # noqa: F811
    with pytest.raises(ValueError):
        RunwareClient(emulator(), KEY).run([])


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2**attempt)
        delays = [backoff(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100, "jittered"
    assert backoff(10_000, 1.0, 60.0) <= 60.0
