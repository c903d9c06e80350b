"""The chaos run's processes: Redis, both gunicorns, the workers and cron, the emulator, and their supervisor."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import requests

from bench import servers
from bench.common import ROOT
from bench.common import BenchError
from bench.common import Progress
from bench.common import free_port
from bench.common import wait_until
from bench.procfs import children
from bench.servers import Gunicorn
from bench.servers import wait_for_redis
from config import Config

WEB_APPS = {"intake": "wsgi:intake", "api": "wsgi:app"}
"""APP_KIND -> the WSGI app its gunicorn serves: webhooks go to the intake, submissions and reads to the api."""

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



class Service(servers.Service):
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
        self.webs: dict[str, Gunicorn] = {}
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
                    "--max-attempts", "10", "--delivery-workers", "8",
                    "--state-dir", ""]  # records in memory, apart from make run's
        for flag, value in EMULATOR_FAULTS.items():
            emulator += [flag, value]
        self.emulator = Service("emulator", emulator, self.env(), self.logs, supervised=False).start()
        wait_until(self._emulator_answers, 30, "the emulator to answer")
        for kind in WEB_APPS:
            self.webs[kind] = Gunicorn(WEB_APPS[kind], self.env(WEB_CONCURRENCY=str(args.web_workers), APP_KIND=kind),
                                       self.logs / f"{kind}.log")
        public = self.intake.url  # Runware's webhooks go to the intake
        for web in self.webs.values():
            web.env["PUBLIC_URL"] = public
            web.start()
        env = self.env(PUBLIC_URL=public)
        if args.persist_workers is None:  # as deployed: one per drain that may run at once
            args.persist_workers = Config.from_env(env).persist_concurrency
        python = sys.executable
        self.services = [
            *(Service(f"persist-{i}", [python, "-m", "workers", "persist"], env, self.logs)
              for i in range(args.persist_workers)),
            *(Service(f"submit-{i}", [python, "-m", "workers", "submit"], env, self.logs)
              for i in range(args.submit_workers)),
            Service("maintenance-0", [python, "-m", "workers", "maintenance"], env, self.logs),
            Service("cron", [python, "-m", "workers", "cron"], env, self.logs),
        ]
        for service in self.services:
            service.start()
        self.progress(f"gunicorn intake and api ({args.web_workers} workers each), {args.persist_workers} persist and "
                      f"{args.submit_workers} submit workers, a maintenance worker, cron, emulator with faults")
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

        The killer never kills a gunicorn master, but should one die all the same, a new one is started on
        the same port (the intake's is the webhook URL the emulator was given).
        """
        while not self._stop.wait(0.2):
            for kind in self.webs:
                if self.web_exited(kind):
                    with self.supervise_lock:
                        if not self._stop.is_set() and self.web_exited(kind):
                            self.progress(f"gunicorn's {kind} master exited ({self.webs[kind].process.returncode});"
                                          " starting it again")
                            self.restart_web(kind)
                            self.restarts[kind] += 1
            for service in self.services:
                if service.supervised and not service.running():
                    time.sleep(random.uniform(0.3, 1.0))
                    with self.supervise_lock:
                        if not self._stop.is_set() and not service.running():
                            service.start()
                            self.restarts[service.name.split("-")[0]] += 1

    @property
    def intake(self) -> Gunicorn:
        return self.webs["intake"]

    @property
    def api(self) -> Gunicorn:
        return self.webs["api"]

    def web_exited(self, kind: str) -> bool:
        process = self.webs[kind].process
        return process is not None and process.poll() is not None

    def restart_web(self, kind: str) -> None:
        old = self.webs[kind]
        web = Gunicorn(WEB_APPS[kind], old.env, self.logs / f"{kind}-{self.restarts[kind] + 2}.log")
        web.port, web.env["PORT"] = old.port, str(old.port)
        self.webs[kind] = web.start()

    def web_worker_pids(self) -> list[int]:
        """The workers of both gunicorns."""
        return [pid for web in self.webs.values() for pid in children(web.process.pid)]

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
            for kind in self.webs:
                if self.web_exited(kind):
                    self.restart_web(kind)
            for service in self.services:
                if not service.running():
                    service.start()
        wait_until(lambda: len(self.web_worker_pids()) >= 2 * self.args.web_workers, 30, "gunicorn's workers")

    def stop(self) -> None:
        self._stop.set()
        with self.supervise_lock:
            pass
        for service in self.services:
            service.stop()
        for web in self.webs.values():
            web.stop()
        if getattr(self, "emulator", None):
            self.emulator.stop()
        self.redis.stop()
