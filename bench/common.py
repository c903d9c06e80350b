"""What the benchmark phases share: progress lines, private servers, wrk, realistic deliveries, /proc readings.

Every server a phase needs is its own: a redis-server started with
`deploy/redis.conf` on a free port and a data directory in the run's scratch
folder, gunicorn started with `deploy/gunicorn.conf.py`, SQLite files in the
scratch folder, a PostgreSQL database created for the run and dropped after it.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WRK_DIR = BENCH / "wrk"
CAPTIONS = [line for line in (WRK_DIR / "captions.txt").read_text().splitlines() if line]
WEBHOOK_PATH = "/webhooks/runware"
PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""Where the PostgreSQL lines connect to create (and drop) their own database."""


class BenchError(RuntimeError):
    """A phase cannot go on (a server did not start, a tool is missing)."""


class Progress:
    """Prints one line per step, stamped with the seconds since the run started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def __call__(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)


@dataclass
class Context:
    """One run's settings and scratch folder, handed to every phase."""

    sizes: dict
    workdir: Path
    progress: Progress
    seed: int = field(default_factory=lambda: random.randrange(1, 2**31))
    tokens: dict = field(default_factory=lambda: {
        "WEBHOOK_TOKENS": "bench-" + uuid.uuid4().hex,
        "READ_TOKENS": "bench-" + uuid.uuid4().hex,
        "SUBMIT_TOKENS": "bench-" + uuid.uuid4().hex,
    })

    def scratch(self, name: str) -> Path:
        """A fresh folder in the run's scratch area."""
        path = self.workdir / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def service_env(self, redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
        """The environment of a service process (gunicorn or worker), as in production."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GUNICORN_", "WEB_CONCURRENCY", "PROMETHEUS_MULTIPROC_DIR"))}
        # Each server and its workers share a metrics folder, as under deploy/launch.py and systemd.
        metrics = Path(tempfile.mkdtemp(prefix="metrics-", dir=self.workdir))
        env.update(APP_ENV="production", REDIS_URL=redis_url, DATABASE_URL=database_url, PYTHONUNBUFFERED="1",
                   PROMETHEUS_MULTIPROC_DIR=str(metrics), **self.tokens)
        if self.sizes.get("web_workers"):
            env["WEB_CONCURRENCY"] = str(self.sizes["web_workers"])
        env.update(extra)
        return env

    @property
    def webhook_token(self) -> str:
        return self.tokens["WEBHOOK_TOKENS"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.05,
               error: type[Exception] = BenchError):
    """Poll `check()` until truthy and return its value; `error` after `timeout` seconds (the tests: AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


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
        wait_until(self._answers, 60, f"gunicorn ({self.app}) to answer /healthz", interval=0.1, error=self.error)
        expected = int(self.env.get("WEB_CONCURRENCY") or 0)
        if expected:
            wait_until(lambda: len(self.worker_pids()) >= expected, 30, "every gunicorn worker to boot",
                       error=self.error)
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


# --- wrk -----------------------------------------------------------------------------------------


def wrk_version() -> str | None:
    if not shutil.which("wrk"):
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip() if out else "wrk"


def require_wrk() -> None:
    if not shutil.which("wrk"):
        raise BenchError("wrk is not on PATH: `make bench` installs Debian's package (apt-get install wrk)")


def run_wrk(url: str, seconds: float, threads: int, connections: int, *, seed: int,
            rate_per_thread: float | None = None) -> dict:
    """Run wrk with the webhook script (paced when a rate is given); returns its counts and latencies.

    `ok` is the number of answers with a status below 400 (wrk counts every status
    of 400 and above as an error); latencies are in milliseconds.
    """
    require_wrk()
    script = "paced.lua" if rate_per_thread else "webhook.lua"
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-s", str((WRK_DIR / script).relative_to(ROOT)), url, "--", str(seed)]
    if rate_per_thread:
        args.append(f"{rate_per_thread:.3f}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    raw = json.loads(line[len("WRK_JSON "):])
    seconds_run = raw["duration_us"] / 1e6
    errors = raw["errors"]
    latency = {k: v / 1000 for k, v in raw["latency_us"].items()}
    return {
        "seconds": round(seconds_run, 3),
        "threads": threads,
        "connections": connections,
        "requests": raw["requests"],
        "ok": raw["requests"] - errors["status"],
        "non_2xx": errors["status"],
        "socket_errors": {k: errors[k] for k in ("connect", "read", "write", "timeout")},
        "rps": round(raw["requests"] / seconds_run, 1) if seconds_run else 0.0,
        "latency_ms": {k: round(v, 3) for k, v in latency.items()},
        "client_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3),
    }


# --- deliveries ----------------------------------------------------------------------------------


def webhook_body(task_uuid: str, caption: str) -> bytes:
    """The body the wrk script sends, for the same task and caption."""
    item = f'"taskType":"imageCaption","taskUUID":"{task_uuid}","text":"{caption}","cost":0.0019'
    return ('{"data":[{' + item + '}]}').encode()


def make_deliveries(n: int, seed: int, start: float | None = None) -> list[dict[str, bytes | str]]:
    """`n` stream entries as the receiver writes them (fields body, at, ip), one fresh task each."""
    rng = random.Random(seed)
    start = time.time() if start is None else start
    entries = []
    for i in range(n):
        task = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        entries.append({"body": webhook_body(task, CAPTIONS[i % len(CAPTIONS)]), "at": start + i / 1000,
                        "ip": "127.0.0.1"})
    return entries


def prefill(client: redis.Redis, entries: list[dict], chunk: int = 1000) -> None:
    """XADD the entries to the delivery stream in pipelines of `chunk`."""
    from workers.queues import DELIVERY_STREAM

    for i in range(0, len(entries), chunk):
        pipe = client.pipeline(transaction=False)
        for fields in entries[i:i + chunk]:
            pipe.xadd(DELIVERY_STREAM, fields)
        pipe.execute()


# --- databases -----------------------------------------------------------------------------------


def sqlite_database(directory: Path, name: str = "captions.db") -> str:
    """A fresh, migrated SQLite file (WAL, as the service opens it) in `directory`."""
    from store.migrate import upgrade

    url = f"sqlite:///{directory / name}"
    upgrade(url)
    return url


class PostgresUnavailable(BenchError):
    """The PostgreSQL server at PG_ADMIN_URL cannot be reached: its lines are skipped."""


@contextmanager
def postgres_database(prefix: str = "captions_bench") -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for the run, dropped afterwards."""
    import sqlalchemy as sa

    from config import database_url
    from store.migrate import upgrade

    admin = sa.create_engine(database_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        where = PG_ADMIN_URL.split("@")[-1]
        raise PostgresUnavailable(f"PostgreSQL unreachable at {where} ({type(exc.orig).__name__})") from None
    url = sa.engine.make_url(database_url(PG_ADMIN_URL)).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        from store.db import _engines

        for key in [k for k in _engines if k.endswith(url)]:
            _engines.pop(key).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def count_rows(url: str, table: str) -> int:
    """Rows in `table`, through a short-lived connection."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


# --- processes -----------------------------------------------------------------------------------


# Shared with the tests (tests/support.py imports them from here).


def children(pid: int) -> list[int]:
    """The live direct children of `pid`, from /proc (zombies left out): an RQ work horse, gunicorn's workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of `pid` (RQ's work horse leaves its parent's process group)."""
    found = children(pid)
    for child in list(found):
        found.extend(descendants(child))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything it forked, all at once."""
    for victim in [pid, *descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


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


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def rss_kib(pid: int) -> int | None:
    """Resident memory of `pid` in KiB (VmRSS), or None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, with_children: bool = True) -> float:
    """CPU time (user + system) of `pid`, with that of its children it has waited for; 0 once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: utime, stime, cutime, cstime are fields 14-17 of stat(5), here 11-14.
    ticks = [int(v) for v in fields[11:15]]
    return sum(ticks if with_children else ticks[:2]) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children; children already reaped count through the parent."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of `values`, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]
