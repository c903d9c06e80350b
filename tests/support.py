"""Real processes for the tests: a private redis-server, gunicorn, RQ workers in burst mode."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from rq import Queue
from rq import Worker

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll `check()` until it returns a truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A private redis-server on a free port, which tests may stop and start again."""

    def __init__(self, *args: str):
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-test-")
        self.args = args or ("--save", "", "--appendonly", "no")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_for(lambda: self._pings(client), what="redis-server to start")

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_worker(redis_url: str, queue: str) -> None:
    """Run a real (forking) RQ worker on `queue` until the queue is empty."""
    conn = redis.Redis.from_url(redis_url)
    Worker([Queue(queue, connection=conn)], connection=conn).work(burst=True, logging_level="WARNING")


class Gunicorn:
    """gunicorn serving wsgi:app with the project's config, its logs captured to a file."""

    def __init__(self, env: dict[str, str], workers: int = 2):
        self.port = free_port()
        self.log_path = Path(tempfile.mkdtemp(prefix="gunicorn-test-")) / "gunicorn.log"
        self.env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port), "WEB_CONCURRENCY": str(workers)}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "wsgi:app",
             "--access-logfile", "-", "--error-logfile", "-"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for(self._answers, timeout=30, what="gunicorn to answer /healthz")

    def _answers(self) -> bool:
        import requests

        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited: {self.output()}")
        try:
            return requests.get(self.url + "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.log.close()
