"""Structured logs: one JSON object per line everywhere, task_uuid on lines about a task, no secret anywhere."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

import logs
from config import signing_keys
from receiver import signatures
from store.results import Delivery
from store.results import Result
from store.schema import utcnow
from tests.helpers import new_uuid
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import ROOT
from tests.support import WebServers
from workers import persist
from workers.queues import PERSIST_QUEUE

TOKENS = {"WEBHOOK_TOKENS": "hook-tok-7Qx1,hook-tok-9Zr2", "READ_TOKENS": "read-tok-4Lm8",
          "SUBMIT_TOKENS": "submit-tok-2Hp5", "METRICS_TOKENS": "metrics-tok-6Vb3"}
SIGNING_SECRET = "whsec_" + "c2lnbmluZy1zZWNyZXQtb2YtdGhlLWxvZy10ZXN0LTE="
OTHER_SECRET = "whsec_" + "bm90LWNvbmZpZ3VyZWQtc2VjcmV0LW9mLWEtZm9yZ2Vy"
SECRETS = [t for v in TOKENS.values() for t in v.split(",")] + [
    s for secret in (SIGNING_SECRET, OTHER_SECRET) for s in (secret, secret.removeprefix("whsec_"))
]


def json_lines(text: str) -> list[dict]:
    """Each non-empty line parsed as a JSON object (fails on any line that is not one)."""
    parsed = []
    for line in text.splitlines():
        if line.strip():
            try:
                doc = json.loads(line)
            except ValueError:
                raise AssertionError(f"not a JSON log line: {line!r}") from None
            assert isinstance(doc, dict) and {"time", "level", "logger", "message"} <= doc.keys(), line
            parsed.append(doc)
    return parsed


def test_a_line_is_one_json_object_with_extra_and_bound_fields():
    stream = io.StringIO()
    log = logging.getLogger("tests.logging.unit")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        with logs.bind(task_uuid="t-1"):
            log.warning("submitted %s", "once", extra={"attempt": 2})
            with logs.bind(delivery_id="1-0"):
                try:
                    raise ValueError("boom\nsecond line")
                except ValueError:
                    log.exception("failed")
        log.info("outside")
    finally:
        log.removeHandler(handler)
    first, second, third = json_lines(stream.getvalue())
    assert first["message"] == "submitted once" and first["level"] == "warning"
    assert first["task_uuid"] == "t-1" and first["attempt"] == 2 and first["logger"] == "tests.logging.unit"
    assert first["time"].endswith("Z") and len(first["time"]) == 24
    assert second["task_uuid"] == "t-1" and second["delivery_id"] == "1-0"
    assert "ValueError: boom" in second["exc"]
    assert "task_uuid" not in third and "delivery_id" not in third


def test_configure_sends_the_root_logger_to_json(monkeypatch):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        logs.configure("warning", stream=stream)
        logging.getLogger("tests.logging.root").warning("hello", extra={"task_uuid": "t-2"})
        logging.getLogger("tests.logging.root").info("not at this level")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    (line,) = json_lines(stream.getvalue())
    assert line["message"] == "hello" and line["task_uuid"] == "t-2"


def test_dead_letter_lines_carry_the_task_uuid(engine, caplog):
    tasks = [new_uuid(), new_uuid()]
    delivery = Delivery("99-0", utcnow(), None, 10, [Result(t, "success", utcnow(), text="x") for t in tasks], [])
    with caplog.at_level(logging.ERROR, logger="workers.persist"):
        persist._dead_letter(engine, delivery, "value too long")
    lines = [r for r in caplog.records if r.name == "workers.persist"]
    assert sorted(r.task_uuid for r in lines) == sorted(tasks)
    assert all(r.delivery_id == "99-0" for r in lines)


def raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.recv(4096)


def signed(secret: str, body: bytes, msg_id: str = "msg_log_1") -> dict:
    at = int(time.time())
    (key,) = signing_keys(secret)
    signature = signatures.sign(key, msg_id, at, body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(at), "webhook-signature": signature,
            "Content-Type": "application/json"}


@pytest.mark.slow
def test_no_token_or_secret_in_any_log_line_of_the_real_stack(config, redis_server, tmp_path):
    env = {"APP_ENV": "development", "REDIS_URL": config.redis_url, "DATABASE_URL": config.database_url, **TOKENS,
           "WEBHOOK_SIGNING_SECRETS": SIGNING_SECRET, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "LOG_LEVEL": "debug"}
    server = WebServers(env).start()
    task, url = new_uuid(), f"{server.intake.url}/webhooks/runware"
    body = wrapped(success(task, text="a kite over a beach"))
    plain = {"Content-Type": "application/json"}
    try:
        statuses = [
            requests.post(url, params={"token": "hook-tok-7Qx1"}, data=body, headers=signed(SIGNING_SECRET, body)),
            requests.post(url, params={"token": "hook-tok-9Zr2"}, data=body, headers=signed(OTHER_SECRET, body)),
            requests.post(url, params={"token": "hook-tok-9Zr2"}, data=body, headers=plain),
            requests.post(url, params={"token": "read-tok-4Lm8"}, data=body, headers=signed(SIGNING_SECRET, body)),
            requests.post(url, params={"token": "hook-tok-7Qx1"}, data=b"{", headers=signed(SIGNING_SECRET, b"{")),
            requests.get(f"{server.api.url}/metrics", headers={"Authorization": "Bearer submit-tok-2Hp5"}),
            requests.get(f"{server.api.url}/metrics", headers={"Authorization": "Bearer metrics-tok-6Vb3"}),
            requests.get(f"{server.api.url}/api/tasks/{task}", headers={"Authorization": "Bearer hook-tok-7Qx1"}),
        ]
        assert [r.status_code for r in statuses] == [202, 401, 401, 401, 400, 401, 200, 401]
        raw(server.intake.port, b"GET /webhooks/runware?token=hook-tok-7Qx1 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        raw(server.intake.port, b"POST /webhooks/runware?token=hook-tok-9Zr2&x=" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n")

        worker = subprocess.run([sys.executable, "-m", "workers", PERSIST_QUEUE, "--burst"], cwd=ROOT, timeout=60,
                                env={**os.environ, **env}, capture_output=True, text=True, check=True)
        read = requests.get(f"{server.api.url}/api/tasks/{task}", headers={"Authorization": "Bearer read-tok-4Lm8"})
        assert read.status_code == 200 and read.json()["text"] == "a kite over a beach"

        redis_server.stop()
        try:
            down = requests.post(url, params={"token": "hook-tok-7Qx1"}, data=body,
                                 headers=signed(SIGNING_SECRET, body, "msg_log_2"), timeout=10)
            assert down.status_code == 503
        finally:
            redis_server.start()
    finally:
        server.stop()

    web, drain = server.output(), worker.stdout + worker.stderr
    web_lines, drain_lines = json_lines(web), json_lines(drain)
    access = [line["message"] for line in web_lines if line["logger"] == "gunicorn.access"]
    assert any("POST /webhooks/runware" in message for message in access)
    assert any(line["logger"] == "receiver.webhooks" and line["level"] == "error" for line in web_lines), "503 logged"
    assert any(line["message"] == "drain stored 1 deliveries" and line["stored"] == 1 for line in drain_lines)
    for line in web_lines + drain_lines:  # the service's own lines (gunicorn's name request paths)
        if task in line["message"] and not line["logger"].startswith("gunicorn."):
            assert line.get("task_uuid") == task or task in line.get("task_uuids", []), line
    # The loop above finds no line today (none names the task in its message): they carry it as a field.
    assert any(line["logger"] == "receiver.webhooks" and task in line.get("task_uuids", []) for line in web_lines), \
        "the 503's error line carries the task as a field"
    for secret in SECRETS:
        assert secret not in web and secret not in drain, secret
