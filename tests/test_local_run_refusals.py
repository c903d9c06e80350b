"""A sender that writes its whole body before it reads the answer reads the refusal, through real gunicorn.

Python's urllib (and many simple senders) sends the request line, the headers and
then the entire body before it looks at the answer. When the intake answers a body
it will not take (over MAX_BODY_BYTES, or without a valid token) and closes without
reading the body, the sender's next write meets a reset connection: it sees a broken
pipe instead of the 413 or 401 and sends the whole body again. The intake reads and
discards what is left of such a body, up to a bound, before it answers; a body
announced above that bound is refused unread, and a slow sender of an oversize body
loses its worker at gunicorn's timeout, as every slow client does.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from receiver.webhooks import DISCARD_LIMIT_BYTES
from tests.conftest import TOKENS
from tests.helpers import new_uuid
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import Gunicorn

TIMEOUT = 3
LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def intake(redis_server, sqlite_url):
    env = {"APP_ENV": "development", "REDIS_URL": redis_server.url + "/0", "DATABASE_URL": sqlite_url, **TOKENS,
           "MAX_BODY_BYTES": str(LIMIT), "GUNICORN_CMD_ARGS": f"--timeout {TIMEOUT} --graceful-timeout 1"}
    server = Gunicorn(env, workers=2, kind="intake")
    server.start()
    yield server
    server.stop()


def oversize_body() -> bytes:
    """A valid webhook body, padded with spaces (valid JSON whitespace) to twice the limit."""
    body = wrapped(success(new_uuid()))
    return body + b" " * (2 * LIMIT - len(body))


def urllib_post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.mark.parametrize(("token", "body", "status", "message"), [
    ("hook-new", oversize_body(), 413, f"the body is over the limit of {LIMIT} bytes"),
    ("wrong-token", wrapped(success(new_uuid())) + b" " * (LIMIT - 1024), 401, "missing or invalid token"),
])
def test_urllib_reads_the_refusal_of_a_body_it_sent_whole(intake, token, body, status, message):
    code, answer = urllib_post(f"{intake.url}/webhooks/runware?token={token}", body)
    assert code == status, answer
    assert answer["error"]["status"] == status and message in answer["error"]["message"], answer


def raw_exchange(port: int, head: bytes, body: bytes) -> bytes:
    """Send `head` and `body` in full, then read the answer until the server closes (a reset raises)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_raw_sender_of_an_oversize_body_reads_413_and_a_clean_close(intake):
    body = oversize_body()
    head = (b"POST /webhooks/runware?token=hook-new HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    answer = raw_exchange(intake.port, head, body)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"status":413' in answer.replace(b" ", b"")


def test_a_body_announced_above_the_bound_is_refused_unread(intake):
    """Content-Length over the bound: 413 at once, after a few bytes of a body the sender never finishes."""
    with socket.create_connection(("127.0.0.1", intake.port), timeout=30) as sock:
        sock.sendall(b"POST /webhooks/runware?token=hook-new HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n{\"data\": [" % (DISCARD_LIMIT_BYTES + 1))
        started = time.monotonic()
        answer = sock.recv(65536)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert waited < TIMEOUT, "the worker waited for a body it was never going to take"


def test_a_slow_sender_of_an_oversize_body_loses_its_worker_at_the_timeout(intake):
    with socket.create_connection(("127.0.0.1", intake.port), timeout=30) as sock:
        sock.sendall(b"POST /webhooks/runware?token=hook-new HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (2 * LIMIT))
        started = time.monotonic()
        try:
            while time.monotonic() - started < TIMEOUT + 20:
                sock.sendall(b" " * 1024)
                time.sleep(0.1)
            held = None
        except OSError:  # the worker was killed and the connection with it
            held = time.monotonic() - started
    assert held is not None and held < TIMEOUT + 8, f"a slow sender held an intake worker for {held}s"
    assert "did not arrive within" in intake.output(), "the intake cut the trickling sender off at the timeout"
