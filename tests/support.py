"""Real processes for the tests: a private redis-server, gunicorn, RQ workers in burst mode."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import redis
from flask import Flask
from rq import Queue
from rq import Worker

# The process helpers are shared with the benchmarks (bench/servers.py, bench/procfs.py);
# here they fail a test with AssertionError.
from bench import servers
from bench.common import free_port
from bench.common import wait_until
from bench.procfs import alive  # noqa: F401  (for the tests)
from bench.procfs import children  # noqa: F401  (for tests/test_crash.py)
from bench.servers import wait_for_redis

ROOT = Path(__file__).resolve().parent.parent


def wait_for(check, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll `check()` until it returns a truthy value; fail the test after `timeout` seconds."""
    return wait_until(check, timeout, what, interval, error=AssertionError)


class RedisServer:
    """A private redis-server on a free port, which tests may stop and start again."""

    def __init__(self, *args: str, address: str = "127.0.0.1", on: Callable[[list[str]], list[str]] = list):
        """`address`: where it listens; `on(argv)`: how it runs (on another host: tests/netns.py)."""
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server)")
        self.address, self.on = address, on
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-test-")
        self.log_path = Path(self.dir) / "redis.log"
        self.args = args or ("--save", "", "--appendonly", "no")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}"

    def argv(self) -> list[str]:
        return ["redis-server", "--port", str(self.port), "--bind", self.address, "--dir", self.dir, *self.args]

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.on(self.argv()), stdout=log, stderr=subprocess.STDOUT)
        wait_for_redis(self.process, self.url, self.log_path, timeout=30, error=AssertionError)

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


def with_intake(api: Flask, intake: Flask) -> Flask:
    """`api`, passing /webhooks/ requests to `intake` as deploy/nginx.conf does: one test client for both apps."""
    readers = api.wsgi_app

    def route(environ, start_response):
        app = intake if environ.get("PATH_INFO", "").startswith("/webhooks/") else readers
        return app(environ, start_response)

    api.wsgi_app = route
    return api


APP_NAMES = {"intake": "wsgi:intake", "api": "wsgi:app"}
"""The WSGI app each kind of gunicorn serves (wsgi.py)."""


class Gunicorn(servers.Gunicorn):
    """gunicorn serving the `kind` app (intake or api) with the project's config and `workers` workers.

    Its logs are captured to a file.
    """

    def __init__(self, env: dict[str, str], workers: int = 2, kind: str = "api"):
        log_path = Path(tempfile.mkdtemp(prefix=f"gunicorn-{kind}-")) / "gunicorn.log"
        super().__init__(APP_NAMES[kind], {**os.environ, **env, "APP_KIND": kind, "WEB_CONCURRENCY": str(workers)},
                         log_path, error=AssertionError)


class WebServers:
    """An intake and an api gunicorn on the same settings, as production runs them (`workers` each)."""

    def __init__(self, env: dict[str, str], workers: int = 2):
        self.intake = Gunicorn(env, workers, kind="intake")
        self.api = Gunicorn(env, workers, kind="api")

    def start(self) -> WebServers:
        self.intake.start()
        self.api.start()
        return self

    def stop(self) -> None:
        for server in (self.intake, self.api):
            server.stop()

    def output(self) -> str:
        """Everything both logged so far."""
        return self.intake.output() + self.api.output()


# -- crash and outage helpers (killing and restarting real processes) ----------------------------


class ProjectRedisServer(RedisServer):
    """A private redis-server with the project's deploy/redis.conf (append-only file, fsync always).

    redis-server takes a config file only as its first argument, so the project's
    file comes first and only the port, address and data directory are overridden.
    `stop(kill=True)` then `start()` is a crash and a restart on the same data.
    """

    def __init__(self, config_file: Path = ROOT / "deploy" / "redis.conf", address: str = "127.0.0.1",
                 on: Callable[[list[str]], list[str]] = list):
        super().__init__(address=address, on=on)
        self.config_file = config_file

    def argv(self) -> list[str]:
        return ["redis-server", str(self.config_file), "--port", str(self.port), "--bind", self.address,
                "--dir", self.dir]


SWEEP_EVERY_SECOND = """
from rq import cron
from workers.maintenance import sweep
cron.register(sweep, "persist", interval=1, result_ttl=0, ttl=30)
"""
"""A schedule file for `Service.cron`: the drain sweep as workers/schedule.py registers it, every second here."""


class Service(servers.Service):
    """A long-running project process (`python -m workers persist`, `python -m workers cron`) in a session of its own.

    Its output goes to a file; `kill()` is kill -9 of the process and everything
    it forked (a lost container), `kill(tree=False)` of the process alone.
    """

    def __init__(self, argv: list[str], env: dict[str, str], name: str = "service"):
        super().__init__(argv, {**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                         Path(tempfile.mkdtemp(prefix=f"{name}-")) / f"{name}.log")

    @classmethod
    def worker(cls, queue: str, env: dict[str, str]) -> Service:
        return cls([sys.executable, "-m", "workers", queue], env, name=f"worker-{queue}")

    @classmethod
    def cron(cls, schedule: Path | str, env: dict[str, str]) -> Service:
        """The scheduler as production runs it, for `schedule` (a file, or a dotted module such as workers.schedule)."""
        return cls([sys.executable, "-m", "workers", "cron", "--schedule", str(schedule)], env, name="cron")


class TcpProxy:
    """A TCP relay to a server (here PostgreSQL), which a test can cut as a network outage would.

    `cut()` closes every relayed connection and refuses new ones until `restore()`.
    """

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def start(self) -> TcpProxy:
        self.restore()
        return self

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for sock in doomed:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
