"""Through real gunicorns over real HTTP (the intake and the api): the webhook round trip, and no token in any log."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

import pytest
import requests

from tests.conftest import TOKENS
from tests.helpers import new_uuid
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import ROOT
from tests.support import WebServers
from workers.queues import PERSIST_QUEUE

SECRETS = [token for value in TOKENS.values() for token in value.split(",")]


@pytest.fixture
def server(config):
    env = {"APP_ENV": "development", "REDIS_URL": config.redis_url, "DATABASE_URL": config.database_url, **TOKENS}
    servers = WebServers(env).start()
    yield servers
    servers.stop()


def raw_request(server, line: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.intake.port), timeout=5) as sock:
        sock.sendall(line)
        return sock.recv(4096)


def test_webhook_round_trip_through_gunicorn_logs_no_token(server, config, redis_server, caplog):
    caplog.set_level(logging.DEBUG)
    task = new_uuid()
    url = f"{server.intake.url}/webhooks/runware"
    body = wrapped(success(task, text="a lighthouse at dusk"))
    headers = {"Content-Type": "application/json"}

    assert requests.post(url, params={"token": "hook-old"}, data=body, headers=headers, timeout=5).status_code == 202
    assert requests.post(url, params={"token": "hook-new"}, data=body, headers=headers, timeout=5).status_code == 202
    assert requests.post(url, params={"token": "read-token"}, data=body, headers=headers, timeout=5).status_code == 401
    bad = requests.post(url, params={"token": "hook-new"}, data=b"{", headers=headers, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("body is not valid JSON")
    raw_request(server, b"GET /webhooks/runware?token=submit-token HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")

    worker = subprocess.run([sys.executable, "-m", "workers", PERSIST_QUEUE, "--burst"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    read = requests.get(f"{server.api.url}/api/tasks/{task}", headers={"Authorization": "Bearer read-token"}, timeout=5)
    assert read.status_code == 200
    assert read.json()["text"] == "a lighthouse at dusk"
    assert read.json()["deliveryCount"] == 2

    redis_server.stop()
    down = requests.post(url, params={"token": "hook-new"}, data=body, headers=headers, timeout=10)
    assert down.status_code == 503 and down.headers["Retry-After"]
    redis_server.start()

    server.stop()
    output = server.output()
    assert "POST /webhooks/runware" in output, "the access log names the path"
    # Everything the service logged; the test's own HTTP client (urllib3) is the sender, not us.
    service_records = [r for r in caplog.records if not r.name.startswith("urllib3")]
    captured = "\n".join([output, worker.stdout, worker.stderr, *(r.getMessage() for r in service_records)])
    assert "drain stored 2 deliveries" in captured, "the worker's log was captured"
    for secret in SECRETS:
        assert secret not in captured
