"""What the benchmark phases share: paths, errors, progress lines, a run's context, waiting, percentiles.

The other shared pieces have modules of their own: bench/servers.py (private
Redis, gunicorn, project processes), bench/procfs.py (/proc readings),
bench/stores.py (SQLite files and PostgreSQL databases for a run) and
bench/traffic.py (wrk and realistic deliveries).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

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



def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of `values`, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]
