"""The outage-until-full scenario (`python -m bench.chaos --scenario outage`): the store out until Redis is full.

Everything private to the run: redis-server with `deploy/redis.conf` (AOF fsynced
always) and a small bound (`--redis-maxmemory`), a fresh PostgreSQL database, the
intake's gunicorn, the persist workers (one per drain that may run at once) and
cron, as deployed. Webhook senders post at full speed, each delivery retried until
a 2xx, waiting as Retry-After says (at most `--max-wait` seconds, to keep the run
short).

1. PostgreSQL refuses the service (ALTER DATABASE … ALLOW_CONNECTIONS false, its
   sessions ended) from the start: deliveries pile up in Redis until the intake
   answers 503 (backpressure); the outage lasts `--hold` seconds more.
2. The store comes back: the time until the intake accepts again, and until every
   delivery acknowledged before that moment is stored (the time to drain).
3. The senders stop after `--after` seconds more, their last deliveries retried to
   a 2xx; the stream drains.

The ledger: deliveries acknowledged (202), answers refused (by status and outcome),
any other answer (must be none: never a 5xx but the 503s), stored (acknowledged ids
in the delivery log), lost (acknowledged, not in the log), doubled (a task counting
a delivery twice), commands Redis refused, Redis's peak memory against its bound,
and processes that exited (must be none: nobody restarts them). Exit status 1 when
anything is lost or doubled, a process exited, or the backlog did not drain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from datetime import UTC
from datetime import datetime
from pathlib import Path

import redis
import requests
import sqlalchemy as sa

from bench import common
from bench import servers
from bench.chaos.stack import Service
from bench.common import BenchError
from bench.common import Progress
from bench.common import free_port
from bench.common import wait_until
from bench.servers import Gunicorn
from bench.servers import wait_for_redis
from config import Config
from config import database_url as normalise_url
from workers.queues import DELIVERY_STREAM

WEBHOOK = "/webhooks/runware"

CAPTION = "a long, detailed caption of the picture " * 25
"""A kilobyte of caption text per delivery, so that a small bound fills within minutes on a busy machine."""

SERVICE_SETTINGS = {"PERSIST_STALE_AFTER_MS": "5000", "PERSIST_BATCH_SIZE": "200"}
"""A drain's read of a batch sits in Redis's output buffer, counted in its memory: three drains reading
1000 bodies of 1 KB would take more than the headroom of a few-megabyte bound, 200 fit."""


class Ledger:
    """What the senders were told: each 2xx (delivery id -> task), each other answer, each task's attempts."""

    def __init__(self):
        self.acknowledged: dict[str, str] = {}
        self.acknowledged_at: dict[str, float] = {}
        self.answers: Counter = Counter()
        self.attempts: Counter = Counter()
        self.lock = threading.Lock()

    def answer(self, what: str) -> None:
        with self.lock:
            self.answers[what] += 1


class Outage:
    """PostgreSQL refusing the run's database, as a server taken away would, and given back."""

    def __init__(self, url: str):
        self.name = sa.engine.make_url(url).database
        self.admin = sa.create_engine(normalise_url(common.PG_ADMIN_URL), isolation_level="AUTOCOMMIT")

    def begin(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false'))
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                         {"name": self.name})

    def end(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true'))

    def close(self) -> None:
        self.end()
        self.admin.dispose()


def send(url: str, ledger: Ledger, stop: threading.Event, max_wait: float) -> None:
    """Post fresh results until `stop`, each until its 2xx, waiting as Retry-After says (capped)."""
    with requests.Session() as session:
        while not stop.is_set():
            task = str(uuid.uuid4())
            body = json.dumps({"data": [{"taskType": "imageCaption", "taskUUID": task, "cost": 0.0019,
                                         "text": f"a caption of {task} " + CAPTION}]})
            while True:
                with ledger.lock:
                    ledger.attempts[task] += 1
                try:
                    answer = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
                except requests.RequestException as exc:
                    ledger.answer(type(exc).__name__)
                    time.sleep(0.5)
                    continue
                if answer.status_code == 202:
                    with ledger.lock:
                        ledger.acknowledged[answer.json()["delivery"]] = task
                        ledger.acknowledged_at[answer.json()["delivery"]] = time.monotonic()
                    break
                ledger.answer(label(answer))
                time.sleep(min(max_wait, float(answer.headers.get("Retry-After", 1))))


def label(answer: requests.Response) -> str:
    """A refused answer's status, and for a 503 why: backpressure, or Redis unavailable."""
    if answer.status_code != 503:
        return str(answer.status_code)
    try:
        message = answer.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return "503"
    return "503 backpressure" if message.startswith("the queue is full") else "503 redis unavailable"


def run(args, workdir: Path, database_url: str, progress: Progress, cleanup: ExitStack) -> dict:
    """Set the stack up, run the three phases, and return the ledger."""
    redis_dir = workdir / "redis"
    redis_dir.mkdir()
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    log = redis_dir / "redis.log"
    with open(log, "ab") as out:
        server = subprocess.Popen(
            ["redis-server", str(common.ROOT / "deploy" / "redis.conf"), "--port", str(port), "--dir", str(redis_dir),
             "--maxmemory", args.redis_maxmemory], stdout=out, stderr=subprocess.STDOUT)
    cleanup.callback(servers.stop_process, server)
    wait_for_redis(server, redis_url, log, 30)
    conn = redis.Redis.from_url(redis_url)
    env = {**os.environ, "APP_ENV": "production", "REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "WEBHOOK_TOKENS": "outage-hook", "READ_TOKENS": "outage-read", "SUBMIT_TOKENS": "outage-submit",
           "APP_KIND": "intake", "WEB_CONCURRENCY": str(args.web_workers), "PYTHONUNBUFFERED": "1",
           **SERVICE_SETTINGS}
    web = Gunicorn("wsgi:intake", env, workdir / "intake.log").start()
    cleanup.callback(web.stop)
    logs = workdir / "logs"
    logs.mkdir()
    python = sys.executable
    drains = Config.from_env(env).persist_concurrency
    services = [*(Service(f"persist-{n}", [python, "-m", "workers", "persist"], env, logs) for n in range(drains)),
                Service("cron", [python, "-m", "workers", "cron"], env, logs)]
    for service in services:
        service.start()
        cleanup.callback(service.stop)
    outage = Outage(database_url)
    cleanup.callback(outage.close)
    progress(f"redis-server (deploy/redis.conf, maxmemory {args.redis_maxmemory}), intake gunicorn "
             f"({args.web_workers} workers), {drains} persist workers, cron; {args.senders} senders")

    ledger, stop, peak = Ledger(), threading.Event(), [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.25):
            try:
                peak[0] = max(peak[0], conn.info("memory")["used_memory"])
            except redis.RedisError:
                pass

    threading.Thread(target=sample, daemon=True).start()
    outage.begin()
    started = time.monotonic()
    url = f"{web.url}{WEBHOOK}?token=outage-hook"
    senders = [threading.Thread(target=send, args=(url, ledger, stop, args.max_wait), daemon=True)
               for _ in range(args.senders)]
    for thread in senders:
        thread.start()
    wait_until(lambda: "503 backpressure" in ledger.answers, args.fill_timeout,
               "the intake to refuse (backpressure)", interval=0.5)
    full_at = time.monotonic()
    progress(f"full after {full_at - started:.0f}s: {len(ledger.acknowledged)} acknowledged; "
             f"holding the outage {args.hold:.0f}s more")
    time.sleep(args.hold)
    before = dict(ledger.acknowledged)
    outage.end()
    restored_at = time.monotonic()
    progress("store back")
    wait_until(lambda: any(at > restored_at for at in list(ledger.acknowledged_at.values())), 300,
               "the intake to accept again", interval=0.2)
    resumed_at = time.monotonic()
    progress(f"intake accepting again after {resumed_at - restored_at:.1f}s")
    engine = sa.create_engine(database_url)
    cleanup.callback(engine.dispose)
    from store.schema import deliveries
    from store.schema import tasks

    def logged() -> set[str]:
        with engine.connect() as db:
            return set(db.scalars(sa.select(deliveries.c.id)))

    try:
        wait_until(lambda: set(before) <= logged(), args.drain_timeout, "the outage's backlog stored", interval=0.5)
        drained = round(time.monotonic() - restored_at, 1)
    except BenchError:
        drained = None
    progress(f"the outage's backlog ({len(before)} deliveries) stored {drained}s after the store came back")
    time.sleep(args.after)
    stop.set()
    for thread in senders:
        thread.join(timeout=60)
    wait_until(lambda: conn.xlen(DELIVERY_STREAM) == 0, args.drain_timeout, "the stream drained", interval=0.5)
    sampling.set()
    ids = logged()
    with engine.connect() as db:
        counts = dict(db.execute(sa.select(tasks.c.task_uuid, tasks.c.delivery_count)).all())
    lost = [d for d in ledger.acknowledged if d not in ids]
    per_task = Counter(ledger.acknowledged.values())
    doubled = [t for t, n in counts.items() if n > ledger.attempts[t] or n < per_task[t]]
    refused = {name: stat["rejected_calls"] for name, stat in conn.info("commandstats").items()
               if stat.get("rejected_calls")}
    exited = [s.name for s in services if not s.running()] + (["intake"] if web.process.poll() is not None else [])
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "redis_maxmemory": args.redis_maxmemory, "senders": args.senders, "hold_s": args.hold,
        "service": SERVICE_SETTINGS,
        "acknowledged": len(ledger.acknowledged),
        "acknowledged_before_full": len(before),
        "answers_refused": {k: v for k, v in ledger.answers.items() if k.startswith("503")},
        "answers_other": {k: v for k, v in ledger.answers.items() if not k.startswith("503")},
        "stored": len(set(ledger.acknowledged) & ids),
        "logged_without_2xx": len(ids - set(ledger.acknowledged)),
        "lost": len(lost), "doubled": len(doubled),
        "seconds_to_full": round(full_at - started, 1),
        "seconds_to_resume": round(resumed_at - restored_at, 1),
        "seconds_to_drain": drained,
        "redis_peak_used_memory": peak[0],
        "redis_maxmemory_bytes": conn.config_get("maxmemory")["maxmemory"],
        "redis_refused_commands": refused,
        "processes_exited": exited,
    }
    result["failed"] = bool(lost or doubled or exited or drained is None or result["answers_other"])
    return result


def print_ledger(result: dict) -> None:
    rows = [(key.replace("_", " "), value) for key, value in result.items() if key != "when"]
    width = max(len(name) for name, _ in rows)
    print("\n" + "=" * (width + 14))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("=" * (width + 14))
