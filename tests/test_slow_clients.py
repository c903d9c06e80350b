"""Slow clients cannot hold gunicorn's workers beyond its timeout (deploy/gunicorn.conf.py).

A sync worker serves one request at a time, so a client that sends a few bytes
a second ties one up. In production nginx buffers whole requests in front of
gunicorn (deploy/nginx.conf: proxy_request_buffering, client_body_timeout); the
last line of defence is gunicorn's `timeout`, after which the arbiter kills a
silent worker and starts a new one. The test shortens it to 3 s (the deployed
value is 30 s) through GUNICORN_CMD_ARGS, trickles bodies and headers into every
worker, and checks that the service answers again soon after the timeout.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import TOKENS
from tests.helpers import new_uuid
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import ROOT
from tests.support import Gunicorn

TIMEOUT = 3
WORKERS = 2


class Trickle(threading.Thread):
    """A client that sends `head`, then one byte of `rest` every `interval` seconds until closed."""

    def __init__(self, port: int, head: bytes, rest: bytes, interval: float = 0.5):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.head, self.rest, self.interval = head, rest, interval
        self.closed_after: float | None = None
        self.started_at = time.monotonic()

    def run(self) -> None:
        try:
            self.sock.sendall(self.head)
            for byte in self.rest:
                time.sleep(self.interval)
                self.sock.sendall(bytes([byte]))
            self.sock.recv(1)
        except OSError:
            pass
        self.closed_after = time.monotonic() - self.started_at
        self.sock.close()


@pytest.fixture
def server(redis_url, sqlite_url):
    env = {"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": sqlite_url, **TOKENS,
           "GUNICORN_CMD_ARGS": f"--timeout {TIMEOUT} --graceful-timeout 1"}
    gunicorn = Gunicorn(env, workers=WORKERS, kind="api")  # sync workers; the intake's threads: test_group_commit
    gunicorn.start()
    yield gunicorn
    gunicorn.stop()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["body", "headers"])
def test_trickling_clients_lose_their_worker_at_the_timeout(server, stage):
    body = wrapped(success(new_uuid()))
    head = (b"POST /api/captions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer submit-token\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n" % len(body))
    if stage == "body":
        head, rest = head + b"\r\n", body
    else:
        head, rest = head, b"X-Slow: " + b"a" * 200 + b"\r\n\r\n" + body
    clients = [Trickle(server.port, head, rest) for _ in range(WORKERS)]
    for client in clients:
        client.start()
    time.sleep(0.5)  # both workers are now reading from a trickling client

    started = time.monotonic()
    answer = requests.get(f"{server.url}/healthz", timeout=TIMEOUT + 20)
    waited = time.monotonic() - started
    assert answer.status_code == 200
    assert waited > TIMEOUT - 1.5, "a worker was free: the slow clients did not hold them all"
    assert waited < TIMEOUT + 8, f"the service was tied up for {waited:.1f}s"
    for client in clients:
        client.join(timeout=TIMEOUT + 10)
        assert client.closed_after is not None and client.closed_after < TIMEOUT + 8, "a slow client kept its worker"
    assert "WORKER TIMEOUT" in server.output()


def test_the_deployed_timeouts_bound_slow_clients():
    """gunicorn kills a silent worker after 30 s; nginx gives up on a slow client well before that."""
    conf = (ROOT / "deploy" / "gunicorn.conf.py").read_text()
    assert re.search(r"^worker_class = \"gthread\" if kind == \"intake\" else \"sync\"$", conf, re.M)
    assert re.search(r"^timeout = 30$", conf, re.M)
    nginx = Path(ROOT / "deploy" / "nginx.conf").read_text()
    settings = dict(re.findall(r"^\s*(\w+)\s+([^;]+);", nginx, re.M))
    seconds = {name: int(settings[name].rstrip("s")) for name in
               ("client_body_timeout", "client_header_timeout", "proxy_read_timeout", "proxy_send_timeout")}
    assert settings["proxy_request_buffering"] == "on", "nginx must read whole bodies before passing them on"
    assert seconds["client_body_timeout"] < 30 and seconds["client_header_timeout"] < 30
    assert seconds["proxy_read_timeout"] >= 30, "nginx must not give up on gunicorn before its own timeout"
    assert settings["client_max_body_size"] == "1m"
