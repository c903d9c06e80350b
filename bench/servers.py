"""Private servers and project processes for a benchmark run (shared with the tests, tests/support.py).

Every server a phase needs is its own: a redis-server started with
`deploy/redis.conf` on a free port and a data directory in the run's scratch
folder, gunicorn started with `deploy/gunicorn.conf.py`, and the project's own
processes in sessions of their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from bench.common import ROOT
from bench.common import BenchError
from bench.common import free_port
from bench.common import wait_until
from bench.procfs import alive
from bench.procfs import children
from bench.procfs import descendants
from bench.procfs import kill_tree


def stop_process(process: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """TERM the process, then KILL whatever is left of the session it leads (it was started in its own)."""
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(timeout=10)



# --- Redis -------------------------------------------------------------------------------------


class RedisServer:
    """A private redis-server with the production settings of `deploy/redis.conf`.

    `aof=False` turns the append-only file off (the extra, clearly labelled lines).
    """

    def __init__(self, directory: Path, aof: bool = True):
        if not shutil.which("redis-server"):
            raise BenchError("redis-server is not on PATH (Debian: apt-get install redis-server)")
        self.dir = directory
        self.aof = aof
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Over the Unix socket, as `make run` connects to its private Redis."""
        return f"unix://{self.dir / 'redis.sock'}?db=0"

    def start(self) -> RedisServer:
        args = ["redis-server", str(ROOT / "deploy" / "redis.conf"), "--port", str(self.port), "--dir", str(self.dir),
                "--unixsocket", str(self.dir / "redis.sock"), "--unixsocketperm", "700"]
        if not self.aof:
            args += ["--appendonly", "no"]
        self.log = open(self.dir / "redis.log", "wb")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_redis(self.process, self.url, self.dir / "redis.log", 15)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None
        if not getattr(self, "log", None) or self.log.closed:
            return
        self.log.close()


def wait_for_redis(process: subprocess.Popen, url: str, log_path: Path, timeout: float,
                   error: type[Exception] = BenchError) -> None:
    """Wait until the redis-server `process` answers PING at `url` with its data loaded.

    `error` (BenchError, or the tests' AssertionError) with the end of its log at
    `log_path` if it exits first, or after `timeout` seconds. Shared with the
    tests (tests/support.py).
    """
    def ready() -> bool:
        if process.poll() is not None:
            raise error(f"redis-server exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            return client.ping()
        except (redis.ConnectionError, redis.BusyLoadingError):  # not listening yet, or loading its data
            return False

    client = redis.Redis.from_url(url)
    try:
        wait_until(ready, timeout, "redis-server to start and load its data", error=error)
    finally:
        client.close()


@contextmanager
def redis_server(directory: Path, aof: bool = True) -> Iterator[RedisServer]:
    server = RedisServer(directory, aof).start()
    try:
        yield server
    finally:
        server.stop()


# --- gunicorn ------------------------------------------------------------------------------------


class Gunicorn:
    """gunicorn serving `app` (e.g. `wsgi:app`) with `deploy/gunicorn.conf.py`, its log kept in a file.

    Shared with the tests (tests/support.py). `start()` returns once /healthz answers
    200 and, when WEB_CONCURRENCY is set, every worker has booted; `stop()` TERMs the
    master and KILLs whatever is left of its session after 40 s.
    """

    def __init__(self, app: str, env: dict[str, str], log_path: Path, error: type[Exception] = BenchError):
        self.app = app
        self.error = error
        self.port = free_port()
        self.env = {**env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gunicorn:
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", self.app],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_until(self._answers, 60, f"gunicorn ({self.app}) to answer /healthz", interval=0.1,
                       error=self.error)
            expected = int(self.env.get("WEB_CONCURRENCY") or 0)
            if expected:
                wait_until(lambda: len(self.worker_pids()) >= expected, 60, "every gunicorn worker to boot",
                           error=self.error)
        except BaseException:
            self.stop()  # a server that did not start leaves no process and no open log behind
            raise
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise self.error(f"gunicorn exited: {self.output()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                return sock.recv(64).split(b" ", 2)[1:2] == [b"200"]
        except OSError:
            return False

    def worker_pids(self) -> list[int]:
        return children(self.process.pid) if self.process else []

    def output(self) -> str:
        """Everything gunicorn (and the app) logged so far."""
        if getattr(self, "log", None) and not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, timeout=40)
        self.process = None
        if getattr(self, "log", None):
            self.log.close()


@contextmanager
def gunicorn(app: str, env: dict[str, str], log_path: Path) -> Iterator[Gunicorn]:
    server = Gunicorn(app, env, log_path).start()
    try:
        yield server
    finally:
        server.stop()


# --- project processes ---------------------------------------------------------------------------


class Service:
    """A long-running project process in a session of its own, its output appended to `log_path`.

    `kill()` is kill -9 of the process and everything it forked (a lost container),
    `kill(tree=False)` of the process alone. `stop()` TERMs it, kills it after
    `timeout`, then kills whatever it forked and left behind (RQ's work horse leaves
    the process group). Shared with the tests (tests/support.py).
    """

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path):
        self.argv, self.env, self.log_path = argv, env, log_path
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Service:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, tree: bool = True) -> None:
        if self.running():
            if tree:
                kill_tree(self.process.pid)
            else:
                self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 30) -> None:
        if not self.running():
            return
        leftovers = descendants(self.process.pid)
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        for pid in leftovers:  # whatever it forked and left behind
            if alive(pid):
                kill_tree(pid)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
