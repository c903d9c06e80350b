"""What the emulator's tests share: fixed UUIDs, sample images, a client for an emulator, a real webhook receiver.

The emulator runs in a thread on a free port; nothing of it is mocked. Fault
tests use a fixed seed and fixed task UUIDs, so their random choices are the
same on every run.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
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
from websockets.sync.client import connect
from werkzeug.serving import make_server
from werkzeug.wrappers import Request
from werkzeug.wrappers import Response

from emulator import Settings
from tests.helpers import new_uuid
from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SAMPLE_NAMES = sorted(p.name for p in SAMPLES.iterdir() if p.suffix in (".png", ".jpg", ".webp"))
KEY = "test-key"
TOKEN = "s3cret-hook-token"
BASE = Settings(port=0, api_key=KEY, seed=1234, processing_ms=10, backoff_base_ms=20, backoff_cap_ms=100,
                max_attempts=4, webhook_timeout_s=2.0)


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


class WsClient:
    """A plain WebSocket client of the emulator (the `websockets` library), one JSON message at a time.

    Its incoming message limit is the library's default, 1 MiB, as in runware-sdk.
    """

    def __init__(self, emu: Emu) -> None:
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(emu.url.replace("http://", "ws://") + "/v1", open_timeout=10))

    def send(self, *tasks: dict) -> None:
        self.ws.send(json.dumps(list(tasks)))

    def recv(self, timeout: float = 10.0) -> dict:
        return json.loads(self.ws.recv(timeout))

    def authenticate(self, key: str = KEY, session: str | None = None) -> dict:
        task = {"taskType": "authentication", "apiKey": key}
        if session:
            task["connectionSessionUUID"] = session
        self.send(task)
        return self.recv()

    def close(self) -> None:
        self._stack.close()


class EmulatorProcess:
    """`python -m emulator ARGS` in a process of its own, started in `cwd`; `stop(signum)` returns its exit status."""

    def __init__(self, *args: str, cwd: Path = ROOT) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "emulator", "--port", "0", "--api-key", KEY, *args],
                                     cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("emulator listening on http://127.0.0.1:"):
            self.stop(signal.SIGKILL)
            pytest.fail(f"the emulator did not start: {line}{self.proc.stderr.read()}")
        self.emu = Emu(line.split()[3])

    def stop(self, signum: int = signal.SIGTERM) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signum)
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc.stderr.close()
