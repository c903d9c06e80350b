"""The chaos run (`make chaos`): the whole stack under load and faults while processes are killed at random.

Everything is private to the run, in a scratch folder:

- redis-server with `deploy/redis.conf` (append-only file, fsync always), killed with SIGKILL and
  started again on the same data and port;
- the store: a fresh PostgreSQL database, dropped at the end (SQLite when no server answers, or
  with `--database sqlite`);
- gunicorn with `deploy/gunicorn.conf.py`; its workers are killed and its master replaces them;
- persist and submit workers (`python -m workers persist|submit`) and the cron process
  (`python -m workers cron`: reconcile, the drain sweep, retention), each started again a moment
  after it dies, as systemd's `Restart=always` would;
- the Runware emulator with its faults on: duplicate and reordered webhooks, failed webhook
  attempts, 429 and 503 answers, task errors, dropped webhooks.

Load, for `--duration` seconds: a submitter posts images to `POST /api/captions` in batches, and
a sender posts webhook results for tasks this service never submitted (source external); both
retry until they get a 2xx, as a client and Runware do. Meanwhile a killer picks, every
`--kill-every` seconds on average, one of: a persist work horse (mid-job) or a whole persist
worker, a submit worker, a gunicorn worker, the cron process, or Redis (down 0.5 to 5 s).

Then the killer stops, everything is brought up, and the run waits for the stack to settle: the
stream drained, the emulator idle, every task final. The ledger accounts for:

- every task submitted (answered 202), and every task stored as submitted although its 202 was
  lost (the request was cut after the commit): stored exactly once with the emulator's caption and
  cost, or failed with a reason (Runware's error code, or `timeout` from reconciliation);
- every acknowledged delivery: each webhook attempt the emulator saw answered 2xx, and each 2xx
  the sender got, is in the delivery log, and each task counts each of its logged deliveries once.

`lost`: an acknowledged task or delivery missing from the store, or a task never settled.
`doubled`: a task counting a delivery twice, more deliveries logged than ever reached the
service, or a stored result that differs from the emulator's (a cost added up twice, say).
The exit status is 1 if either is not zero.

    python -m bench.chaos                 # about 3 minutes of chaos, then the settling
    python -m bench.chaos --quick         # 30 s, lighter load
    python -m bench.chaos --duration 600 --seed 7 --keep
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import redis
import requests
import sqlalchemy as sa

from bench import common
from bench.common import ROOT
from bench.common import BenchError
from bench.common import Gunicorn
from bench.common import PostgresUnavailable
from bench.common import Progress
from bench.common import children
from bench.common import free_port
from bench.common import postgres_database
from bench.common import sqlite_database
from bench.common import wait_for_redis
from bench.common import wait_until
from config import Config

WEBHOOK = "/webhooks/runware"
KILL_WEIGHTS = {"persist-horse": 3, "persist-worker": 2, "submit-worker": 2, "gunicorn-worker": 3, "cron": 1,
                "redis": 1}
"""How often each kind of kill is drawn, relative to the others."""

EMULATOR_FAULTS = {
    "--duplicate-rate": "0.2", "--reorder": "4", "--reorder-hold-ms": "100", "--webhook-fail-rate": "0.1",
    "--rate-limit-rate": "0.05", "--unavailable-rate": "0.05", "--task-error-rate": "0.05", "--drop-rate": "0.05",
    "--envelope": "mixed", "--jitter-ms": "200",
}
"""The emulator's faults during the run (see emulator/README.md)."""

SERVICE_SETTINGS = {
    "PERSIST_STALE_AFTER_MS": "5000",
    "RECONCILE_AFTER_SECONDS": "15",
    "RECONCILE_INTERVAL_SECONDS": "5",
}
"""Settings of the service processes beyond the defaults: faster reclaiming and reconciliation, so the
run settles in minutes (the mechanisms are the same as with the defaults)."""


# -- processes ---------------------------------------------------------------------------------


class Service(common.Service):
    """A process of the stack, its output appended to `<logs>/<name>.log`.

    `supervised` ones are started again when they die (`Stack._supervise`).
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path, supervised: bool = True):
        super().__init__(argv, env, logs / f"{name}.log")
        self.name, self.supervised = name, supervised


class Redis:
    """redis-server with the project's config on a fixed port and data folder: crash it, start it again."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with open(self.dir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", str(ROOT / "deploy" / "redis.conf"), "--port", str(self.port), "--dir", str(self.dir)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_redis(self.process, self.url, self.dir / "redis.log", 60)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.running():
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class Stack:
    """Every process of the run, and the supervisor that restarts the supervised ones."""

    def __init__(self, args, workdir: Path, database_url: str, progress: Progress):
        self.args, self.workdir, self.progress = args, workdir, progress
        self.logs = workdir / "logs"
        self.logs.mkdir()
        (workdir / "redis").mkdir()
        (workdir / "metrics").mkdir()
        self.redis = Redis(workdir / "redis")
        self.tokens = {k: f"chaos-{k.split('_')[0].lower()}-{uuid.uuid4().hex}"
                       for k in ("WEBHOOK_TOKENS", "READ_TOKENS", "SUBMIT_TOKENS", "ADMIN_TOKENS")}
        self.database_url = database_url
        self.emulator_port = free_port()
        self.web: Gunicorn | None = None
        self.services: list[Service] = []
        self.restarts: Counter = Counter()
        self._stop = threading.Event()
        self.redis_lock = threading.Lock()
        self.supervise_lock = threading.Lock()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "WEB_CONCURRENCY"))}
        env.update(APP_ENV="production", REDIS_URL=self.redis.url, DATABASE_URL=self.database_url,
                   RUNWARE_API_URL=f"http://127.0.0.1:{self.emulator_port}/v1", RUNWARE_API_KEY="chaos-key",
                   PROMETHEUS_MULTIPROC_DIR=str(self.workdir / "metrics"), PYTHONUNBUFFERED="1",
                   **self.tokens, **SERVICE_SETTINGS)
        env.update(extra)
        return env

    def start(self) -> None:
        args = self.args
        self.redis.start()
        self.progress(f"redis-server (deploy/redis.conf) on port {self.redis.port}")
        emulator = [sys.executable, "-m", "emulator", "--port", str(self.emulator_port), "--seed", str(args.seed),
                    "--api-key", "chaos-key", "--processing-ms", "20", "--max-records", "2000000",
                    "--max-attempts", "10", "--delivery-workers", "8"]
        for flag, value in EMULATOR_FAULTS.items():
            emulator += [flag, value]
        self.emulator = Service("emulator", emulator, self.env(), self.logs, supervised=False).start()
        wait_until(self._emulator_answers, 30, "the emulator to answer")
        self.web = Gunicorn("wsgi:app", self.env(WEB_CONCURRENCY=str(args.web_workers)), self.logs / "web.log")
        public = f"http://127.0.0.1:{self.web.port}"
        self.web.env["PUBLIC_URL"] = public
        self.web.start()
        env = self.env(PUBLIC_URL=public)
        if args.persist_workers is None:  # as deployed: one per drain that may run at once
            args.persist_workers = Config.from_env(env).persist_concurrency
        python = sys.executable
        self.services = [
            *(Service(f"persist-{i}", [python, "-m", "workers", "persist"], env, self.logs)
              for i in range(args.persist_workers)),
            *(Service(f"submit-{i}", [python, "-m", "workers", "submit"], env, self.logs)
              for i in range(args.submit_workers)),
            Service("cron", [python, "-m", "workers", "cron"], env, self.logs),
        ]
        for service in self.services:
            service.start()
        self.progress(f"gunicorn ({args.web_workers} workers) at {public}, {args.persist_workers} persist and "
                      f"{args.submit_workers} submit workers, cron, emulator with faults")
        threading.Thread(target=self._supervise, daemon=True).start()

    def _emulator_answers(self) -> bool:
        if not self.emulator.running():
            raise BenchError(f"the emulator exited: {self.emulator.log_path.read_text()[-1000:]}")
        try:
            return requests.get(self.emulator_url + "/healthz", timeout=2).ok
        except requests.RequestException:
            return False

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    def named(self, prefix: str) -> list[Service]:
        return [s for s in self.services if s.name.startswith(prefix)]

    def _supervise(self) -> None:
        """Start again, after a short pause, every supervised process that died (systemd's Restart=always).

        The killer never kills gunicorn's master, but should it die all the same, a new one is started on
        the same port (it is the webhook URL the emulator was given).
        """
        while not self._stop.wait(0.2):
            if self.web_exited():
                with self.supervise_lock:
                    if not self._stop.is_set() and self.web_exited():
                        self.progress(f"gunicorn's master exited ({self.web.process.returncode}); starting it again")
                        self.restart_web()
                        self.restarts["web"] += 1
            for service in self.services:
                if service.supervised and not service.running():
                    time.sleep(random.uniform(0.3, 1.0))
                    with self.supervise_lock:
                        if not self._stop.is_set() and not service.running():
                            service.start()
                            self.restarts[service.name.split("-")[0]] += 1

    def web_exited(self) -> bool:
        process = self.web.process
        return process is not None and process.poll() is not None

    def restart_web(self) -> None:
        old = self.web
        web = Gunicorn("wsgi:app", old.env, self.logs / f"web-{self.restarts['web'] + 2}.log")
        web.port, web.env["PORT"] = old.port, str(old.port)
        self.web = web.start()

    def restart_redis(self, down_for: float) -> None:
        with self.redis_lock:
            self.redis.kill()
            time.sleep(down_for)
            self.redis.start()

    def ensure_up(self) -> None:
        with self.redis_lock:
            if not self.redis.running():
                self.redis.start()
        with self.supervise_lock:
            if self.web_exited():
                self.restart_web()
            for service in self.services:
                if not service.running():
                    service.start()
        wait_until(lambda: len(children(self.web.process.pid)) >= self.args.web_workers, 30, "gunicorn's workers")

    def stop(self) -> None:
        self._stop.set()
        with self.supervise_lock:
            pass
        for service in self.services:
            service.stop()
        if self.web is not None:
            self.web.stop()
        if getattr(self, "emulator", None):
            self.emulator.stop()
        self.redis.stop()


# -- load ----------------------------------------------------------------------------------------


def sample_images(n: int, seed: int) -> list[str]:
    """Small distinct PNGs, as data URIs."""
    from PIL import Image
    from PIL import ImageDraw

    rng = random.Random(seed)
    images = []
    for i in range(n):
        image = Image.new("RGB", (48 + i % 7 * 8, 32 + i % 5 * 8), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        draw.rectangle((4, 4, 4 + i % 20, 20), fill=tuple(rng.randrange(256) for _ in range(3)))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        images.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return images


@dataclass
class Ledger:
    """What the clients were told: every 2xx, and every other answer that made them try again."""

    submitted: dict[str, int] = field(default_factory=dict)  # taskUUID -> batch number
    submit_requests: int = 0
    delivered: dict[str, str] = field(default_factory=dict)  # delivery id (from the 2xx) -> taskUUID
    expected: dict[str, dict] = field(default_factory=dict)  # external taskUUID -> the item sent
    attempts: Counter = field(default_factory=Counter)  # external taskUUID -> POSTs made
    refused: Counter = field(default_factory=Counter)  # answer (status or error) -> count
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refuse(self, what: str) -> None:
        with self.lock:
            self.refused[what] += 1


def paced(rate: float, stop: threading.Event, threads: int):
    """Yield at about `rate` per second in total, shared by `threads` threads, until `stop`."""
    interval = threads / rate
    next_at = time.monotonic()
    while not stop.is_set():
        yield
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))


def submitter(stack: Stack, ledger: Ledger, stop: threading.Event, rate: float, threads: int, batch: int,
              images: list[str], rng: random.Random) -> None:
    """POST /api/captions in batches, each until a 2xx (a cut answer may leave tasks the client never hears of)."""
    url = f"{stack.web.url}/api/captions"
    headers = {"Authorization": f"Bearer {stack.tokens['SUBMIT_TOKENS']}"}
    with requests.Session() as session:
        for _ in paced(rate / batch, stop, threads):
            body = {"images": [rng.choice(images) for _ in range(batch)], "includeCost": True}
            while True:
                with ledger.lock:
                    ledger.submit_requests += 1
                    number = ledger.submit_requests
                try:
                    answer = session.post(url, json=body, headers=headers, timeout=30)
                    if answer.status_code == 202:
                        with ledger.lock:
                            for task in answer.json()["tasks"]:
                                ledger.submitted[task["taskUUID"]] = number
                        break
                    ledger.refuse(f"captions {answer.status_code}")
                except requests.RequestException as exc:
                    ledger.refuse(f"captions {type(exc).__name__}")
                time.sleep(0.5)


def sender(stack: Stack, ledger: Ledger, stop: threading.Event, rate: float, threads: int,
           rng: random.Random) -> None:
    """Webhook results for tasks submitted elsewhere (source external), each posted until a 2xx."""
    url = f"{stack.web.url}{WEBHOOK}"
    params = {"token": stack.tokens["WEBHOOK_TOKENS"]}
    with requests.Session() as session:
        for _ in paced(rate, stop, threads):
            task = str(uuid.uuid4())
            if rng.random() < 0.1:
                item = {"taskType": "imageCaption", "taskUUID": task, "code": "timeoutProvider",
                        "message": "the provider timed out"}
                body = {"errors": [item]}
            else:
                item = {"taskType": "imageCaption", "taskUUID": task, "text": f"external caption {task[:8]}",
                        "cost": round(rng.uniform(0.001, 0.01), 6)}
                body = {"data": [item]}
            with ledger.lock:
                ledger.expected[task] = item
            while True:
                with ledger.lock:
                    ledger.attempts[task] += 1
                try:
                    answer = session.post(url, params=params, data=json.dumps(body),
                                          headers={"Content-Type": "application/json"}, timeout=10)
                    if answer.ok:
                        with ledger.lock:
                            ledger.delivered[answer.json()["delivery"]] = task
                        break
                    ledger.refuse(f"webhook {answer.status_code}")
                except requests.RequestException as exc:
                    ledger.refuse(f"webhook {type(exc).__name__}")
                time.sleep(0.3)


# -- the killer ----------------------------------------------------------------------------------


def killer(stack: Stack, stop: threading.Event, every: float, rng: random.Random, kills: Counter,
           events: list) -> None:
    kinds, weights = zip(*KILL_WEIGHTS.items())
    while not stop.wait(rng.expovariate(1 / every)):
        kind = rng.choices(kinds, weights)[0]
        what = kill_one(stack, kind, rng)
        if what:
            kills[what] += 1
            events.append({"at": round(stack.progress.elapsed(), 2), "kill": what})


def kill_one(stack: Stack, kind: str, rng: random.Random) -> str | None:
    """Carry out one kill; returns what was killed (a busy-less horse becomes a worker kill)."""
    if kind == "redis":
        stack.restart_redis(rng.uniform(0.5, 5.0))
        return "redis"
    if kind == "gunicorn-worker":
        pids = children(stack.web.process.pid)
        if not pids:
            return None
        try:
            os.kill(rng.choice(pids), signal.SIGKILL)
        except ProcessLookupError:
            return None
        return kind
    if kind == "persist-horse":
        # A horse runs only while a job does: watch for one for up to two seconds, as a crash mid-job would.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            horses = [pid for s in stack.named("persist") if s.running() for pid in children(s.pid)]
            if horses:
                try:
                    os.kill(rng.choice(horses), signal.SIGKILL)
                    return kind
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        kind = "persist-worker"
    prefix = {"persist-worker": "persist", "submit-worker": "submit", "cron": "cron"}[kind]
    candidates = [s for s in stack.named(prefix) if s.running()]
    if not candidates:
        return None
    rng.choice(candidates).kill()
    return kind


# -- settling and the ledger ---------------------------------------------------------------------


def read_store(url: str) -> tuple[dict[str, dict], Counter, set[str]]:
    """Tasks by uuid, the logged deliveries naming each task, and the ids of all logged deliveries."""
    from store.schema import deliveries
    from store.schema import tasks

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            stored = {r["task_uuid"]: dict(r) for r in conn.execute(sa.select(
                tasks.c.task_uuid, tasks.c.status, tasks.c.source, tasks.c.text, tasks.c.cost, tasks.c.error_code,
                tasks.c.error_message, tasks.c.delivery_count)).mappings()}
            logged: Counter = Counter()
            ids = set()
            for delivery_id, items in conn.execute(sa.select(deliveries.c.id, deliveries.c["items"])):
                ids.add(delivery_id)
                for task in {item["task_uuid"] for item in items}:
                    logged[task] += 1
    finally:
        engine.dispose()
    return stored, logged, ids


def settled(stack: Stack, ledger: Ledger) -> bool:
    try:
        health = requests.get(stack.emulator_url + "/healthz", timeout=5).json()
        if health["pendingTasks"] or health["pendingDeliveries"]:
            return False
        if redis.Redis.from_url(stack.redis.url).xlen("captions:deliveries"):
            return False
    except (requests.RequestException, redis.RedisError):
        return False
    stored, _, ids = read_store(stack.database_url)
    mine = [t for t, row in stored.items() if row["source"] == "submitted"]
    return (all(t in stored for t in ledger.submitted) and set(ledger.delivered) <= ids
            and all(stored[t]["status"] in ("success", "error") for t in mine))


def account(stack: Stack, ledger: Ledger) -> dict:
    """Compare what the clients and the emulator were told with what the store holds."""
    stored, logged, ids = read_store(stack.database_url)
    emulated = {t["taskUUID"]: t for t in requests.get(stack.emulator_url + "/_emulator/tasks", timeout=60)
                .json()["tasks"]}
    attempts = requests.get(stack.emulator_url + "/_emulator/attempts", timeout=60).json()["attempts"]
    return balance(ledger, stored, logged, ids, emulated, attempts)


def balance(ledger: Ledger, stored: dict[str, dict], logged: Counter, ids: set[str], emulated: dict[str, dict],
            attempts: list[dict]) -> dict:
    """The ledger's figures and problems, from the clients' ledger, the store and the emulator's records."""
    acked_by_us, reached_us = Counter(), Counter()
    for attempt in attempts:
        if attempt["outcome"] == "delivered":
            acked_by_us[attempt["taskUUID"]] += 1
        if attempt["outcome"] != "injected-failure":
            reached_us[attempt["taskUUID"]] += 1

    problems: list[dict] = []

    def problem(kind: str, task: str, detail: str) -> None:
        problems.append({"kind": kind, "taskUUID": task, "detail": detail})

    submitted = [t for t, row in stored.items() if row["source"] == "submitted"]
    unanswered = sorted(set(submitted) - set(ledger.submitted))
    succeeded, failed = 0, Counter()
    for task in set(ledger.submitted) | set(submitted):
        row = stored.get(task)
        if row is None:
            problem("lost", task, "submitted (202) but not in the store")
            continue
        if row["status"] not in ("success", "error"):
            problem("lost", task, f"never settled: still {row['status']}")
            continue
        if row["status"] == "error":
            if not row["error_code"]:
                problem("lost", task, "failed without a reason")
            failed[row["error_code"]] += 1
        else:
            succeeded += 1
            truth = emulated.get(task)
            if truth is None or truth["status"] != "success":
                problem("doubled", task, "stored a success the emulator never produced")
            elif row["text"] != truth["result"]["text"] or costs_differ(row["cost"], truth["result"].get("cost")):
                problem("doubled", task, f"stored {row['text']!r} {row['cost']}, emulator {truth['result']}")
        check_counts(task, row, logged, acked_by_us[task], reached_us[task], problem)

    external_ok = 0
    acked_external = Counter(ledger.delivered.values())
    for delivery_id, task in ledger.delivered.items():
        if delivery_id not in ids:
            problem("lost", task, f"delivery {delivery_id} acknowledged but not in the delivery log")
    for task, item in ledger.expected.items():
        row = stored.get(task)
        if not acked_external[task]:
            continue  # the run stopped before its 2xx (not acknowledged, nothing promised)
        if row is None:
            problem("lost", task, "external result acknowledged but not stored")
            continue
        wanted = ("error", item.get("code")) if "code" in item else ("success", item["text"])
        got = ("error", row["error_code"]) if row["status"] == "error" else (row["status"], row["text"])
        if got != wanted or ("cost" in item and costs_differ(row["cost"], item["cost"])):
            problem("doubled", task, f"stored {got} {row['cost']}, sent {item}")
        else:
            external_ok += 1
        check_counts(task, row, logged, acked_external[task], ledger.attempts[task], problem)

    kinds = Counter(p["kind"] for p in problems)
    return {
        "tasks_submitted": len(ledger.submitted),
        "tasks_stored_unanswered": len(unanswered),
        "submit_requests": ledger.submit_requests,
        "tasks_succeeded": succeeded,
        "tasks_failed_with_reason": dict(failed),
        "webhook_attempts_acknowledged": sum(acked_by_us.values()),
        "external_deliveries_acknowledged": len(ledger.delivered),
        "deliveries_acknowledged": sum(acked_by_us.values()) + len(ledger.delivered),
        "deliveries_logged": len(ids),
        "external_results_stored": external_ok,
        "emulator_webhooks": dict(Counter(t["webhook"] for t in emulated.values())),
        "refused_answers_seen": dict(ledger.refused),
        "lost": kinds["lost"],
        "doubled": kinds["doubled"],
        "problems": problems[:200],
    }


def costs_differ(stored, sent) -> bool:
    """True when the two costs differ (None equals None)."""
    if stored is None or sent is None:
        return stored is not sent
    return Decimal(str(stored)) != Decimal(str(sent))


def check_counts(task: str, row: dict, logged: Counter, acknowledged: int, reached: int, problem) -> None:
    """Each acknowledged delivery logged; no task counting a delivery twice; no more logged than were sent."""
    if logged[task] < acknowledged:
        problem("lost", task, f"{acknowledged} deliveries acknowledged, {logged[task]} in the delivery log")
    if row["delivery_count"] != logged[task]:
        problem("doubled", task, f"delivery_count {row['delivery_count']}, {logged[task]} deliveries logged")
    if logged[task] > reached:
        problem("doubled", task, f"{logged[task]} deliveries logged, only {reached} ever sent")


def print_table(result: dict) -> None:
    rows = [
        ("duration (s)", result["duration_s"]),
        ("tasks submitted (202)", result["tasks_submitted"]),
        ("tasks stored, 202 lost", result["tasks_stored_unanswered"]),
        ("tasks succeeded", result["tasks_succeeded"]),
        ("tasks failed, with reason", sum(result["tasks_failed_with_reason"].values())),
        ("  reasons", ", ".join(f"{k} {v}" for k, v in sorted(result["tasks_failed_with_reason"].items()))),
        ("deliveries acknowledged", result["deliveries_acknowledged"]),
        ("  emulator webhooks (2xx)", result["webhook_attempts_acknowledged"]),
        ("  external results (2xx)", result["external_deliveries_acknowledged"]),
        ("deliveries in the log", result["deliveries_logged"]),
        ("kills", sum(result["kills"].values())),
        *((f"  {kind}", n) for kind, n in sorted(result["kills"].items())),
        ("restarts by the supervisor", sum(result["restarts"].values())),
        ("refused answers (retried)", sum(result["refused_answers_seen"].values())),
        ("settled in (s)", result["settle_s"]),
        ("LOST", result["lost"]),
        ("DOUBLED", result["doubled"]),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n" + "=" * (width + 14))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("=" * (width + 14))


# -- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load and kills (default 180)")
    parser.add_argument("--quick", action="store_true", help="30 s, lighter load (a check of the setup)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every random choice (default: random)")
    parser.add_argument("--database", choices=("auto", "postgres", "sqlite"), default="auto")
    parser.add_argument("--task-rate", type=float, default=15.0, help="tasks submitted per second")
    parser.add_argument("--webhook-rate", type=float, default=10.0, help="external webhook results per second")
    parser.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between two kills")
    parser.add_argument("--web-workers", type=int, default=3)
    parser.add_argument("--persist-workers", type=int, default=None,
                        help="default: PERSIST_CONCURRENCY for the store (2 on SQLite, 3 on PostgreSQL)")
    parser.add_argument("--submit-workers", type=int, default=2)
    parser.add_argument("--settle", type=float, default=420.0, help="longest wait for the stack to settle")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "chaos", help="folder of the ledgers")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, Redis data)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.task_rate, args.webhook_rate = 30.0, 10.0, 8.0
    if args.seed is None:
        args.seed = random.randrange(1, 2**31)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = Progress()
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="captions-chaos-"))
    progress(f"chaos run: {args.duration:.0f}s, seed {args.seed}, scratch {workdir}")
    ledger, kills, events = Ledger(), Counter(), []
    with ExitStack() as cleanup:
        database_url = choose_database(args, workdir, cleanup, progress)
        stack = Stack(args, workdir, database_url, progress)
        cleanup.callback(stack.stop)
        stack.start()
        images = sample_images(40, args.seed)
        stop_load, stop_kills = threading.Event(), threading.Event()
        threads = [
            *(threading.Thread(target=submitter, daemon=True, args=(
                stack, ledger, stop_load, args.task_rate, 2, 10, images, random.Random(rng.random())))
              for _ in range(2)),
            *(threading.Thread(target=sender, daemon=True, args=(
                stack, ledger, stop_load, args.webhook_rate, 2, random.Random(rng.random())))
              for _ in range(2)),
        ]
        chaos = threading.Thread(target=killer, daemon=True,
                                 args=(stack, stop_kills, args.kill_every, random.Random(rng.random()), kills, events))
        for thread in threads:
            thread.start()
        chaos.start()
        started = time.monotonic()
        while time.monotonic() - started < args.duration:
            time.sleep(min(15.0, args.duration - (time.monotonic() - started)))
            progress(f"{len(ledger.submitted)} tasks submitted, {len(ledger.delivered)} external deliveries "
                     f"acknowledged, {sum(kills.values())} kills ({dict(kills)})")
        stop_kills.set()
        chaos.join(timeout=30)
        stack.ensure_up()
        progress("kills stopped, every process up; finishing the clients' retries")
        stop_load.set()
        for thread in threads:
            thread.join(timeout=120)
        settle_start = time.monotonic()
        try:
            wait_until(lambda: settled(stack, ledger), args.settle, "the stack to settle", interval=2.0)
            progress(f"settled in {time.monotonic() - settle_start:.0f}s")
        except BenchError as exc:
            progress(f"did not settle: {exc}")
        result = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "seed": args.seed, "duration_s": round(args.duration), "database": database_url.split(":")[0],
            "settle_s": round(time.monotonic() - settle_start),
            **account(stack, ledger),
            "kills": dict(kills), "restarts": dict(stack.restarts), "kill_log": events,
            "settings": {"emulator_faults": EMULATOR_FAULTS, "service": SERVICE_SETTINGS,
                         "task_rate": args.task_rate, "webhook_rate": args.webhook_rate,
                         "kill_every": args.kill_every, "web_workers": args.web_workers,
                         "persist_workers": args.persist_workers, "submit_workers": args.submit_workers},
        }
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"ledger-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{args.seed}.json"
        path.write_text(json.dumps(result, indent=2))
        print_table(result)
        progress(f"ledger written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        for item in result["problems"][:20]:
            print(f"  {item['kind']}: {item['taskUUID']}: {item['detail']}")
        failed = result["lost"] or result["doubled"]
    if failed or args.keep:
        progress(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def choose_database(args, workdir: Path, cleanup: ExitStack, progress: Progress) -> str:
    if args.database in ("auto", "postgres"):
        try:
            url = cleanup.enter_context(postgres_database("captions_chaos"))
            progress("store: a fresh PostgreSQL database")
            return url
        except PostgresUnavailable as exc:
            if args.database == "postgres":
                raise
            progress(f"{exc}; using SQLite")
    return sqlite_database(workdir)


if __name__ == "__main__":
    sys.exit(main())
