"""Drain: queued deliveries persisted a second, beside a raw bulk upsert and one RQ job per delivery.

For each database (SQLite in WAL in the scratch folder; PostgreSQL in a database
made for the run) these lines, each on an empty store:

- raw: the rows the drain writes for N deliveries (a delivery-log row and a
  `tasks` row each), prepared beforehand and written with one plain `executemany`
  per table per 1,000 deliveries (and a commit) through the driver itself
  (sqlite3 / psycopg): no parsing, no Redis. The target's baseline. A second raw
  line upserts the `tasks` rows alone: a stricter figure, reported beside it.
- drain: N deliveries XADDed to the stream beforehand (fields body, at, ip, as
  the receiver writes them) in a private Redis with `deploy/redis.conf`; one drain
  job is enqueued the receiver's way and a real worker process
  (`python -m workers persist --burst`) persists them. Timed from the job's start
  (RQ's `started_at`) to the stream being empty (the drain deletes an entry only
  once its batch is committed); the worker's final idle wait is not counted.
- one job per delivery: N' RQ jobs, each storing one delivery through
  `store.results.save_deliveries`, run by the same worker (`workers.__main__`,
  RQ's forking `Worker`, the job module imported before the fork). Time-boxed:
  the rate is what was stored over the time taken.

Run as `python -m bench.drain worker`, this module is that worker.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from datetime import UTC
from datetime import datetime
from decimal import Decimal

from bench.common import ROOT
from bench.common import BenchError
from bench.common import Context
from bench.procfs import children
from bench.procfs import rss_kib
from bench.servers import redis_server
from bench.servers import stop_process
from bench.stores import PostgresUnavailable
from bench.stores import count_rows
from bench.stores import postgres_database
from bench.stores import sqlite_database
from bench.traffic import make_deliveries
from bench.traffic import prefill

RAW_CHUNK = 1000
"""Rows per `executemany` (and per commit) in the raw baseline, as the drain's default batch."""

TASK_COLUMNS = (
    "task_uuid", "status", "source", "task_type", "model", "text", "cost", "error_code", "error_message",
    "conflict", "result_at", "delivery_count", "first_delivery_at", "last_delivery_at", "created_at", "updated_at",
)
RAW_UPDATE = (
    "status = excluded.status, text = excluded.text, cost = excluded.cost, result_at = excluded.result_at, "
    "delivery_count = tasks.delivery_count + excluded.delivery_count, "
    "last_delivery_at = excluded.last_delivery_at, updated_at = excluded.updated_at"
)


def store_one(entry_id: str, body: bytes, at: float, ip: str) -> int:
    """RQ job of the baseline: store one delivery, as a design with one job per webhook would."""
    from config import Config
    from store.db import engine_for
    from store.results import save_deliveries
    from workers.persist import to_delivery

    delivery = to_delivery(entry_id, {b"body": body, b"at": repr(at).encode(), b"ip": ip.encode()})
    with engine_for(Config.from_env().database_url).begin() as conn:
        return len(save_deliveries(conn, [delivery]))


# --- raw baseline --------------------------------------------------------------------------------


def task_rows(entries: list[dict], dialect: str) -> tuple[list[dict], list[dict]]:
    """The `tasks` and delivery-log rows the drain writes for these deliveries, as driver-ready values."""
    import orjson

    now = datetime.now(UTC)
    tasks, log = [], []
    for n, fields in enumerate(entries):
        item = orjson.loads(fields["body"])["data"][0]
        at = datetime.fromtimestamp(fields["at"], UTC)
        tasks.append({
            "task_uuid": item["taskUUID"], "status": "success", "source": "external", "task_type": item["taskType"],
            "model": None, "text": item["text"], "cost": Decimal(repr(item["cost"])), "error_code": None,
            "error_message": None, "conflict": False, "result_at": at, "delivery_count": 1,
            "first_delivery_at": at, "last_delivery_at": at, "created_at": now, "updated_at": now,
        })
        stored = {"task_uuid": item["taskUUID"], "status": "success", "text": item["text"],
                  "cost": repr(item["cost"]), "task_type": item["taskType"]}
        log.append({
            "id": f"{n + 1}-0", "received_at": at, "remote_addr": fields["ip"], "size": len(fields["body"]),
            "outcome": "stored", "items": orjson.dumps([stored]).decode(), "detail": None, "stored_at": now,
        })
    if dialect == "sqlite":  # SQLite keeps UTC times as text and decimals as numbers, as the store writes them
        for row in (*tasks, *log):
            for key in ("result_at", "first_delivery_at", "last_delivery_at", "created_at", "updated_at",
                        "received_at", "stored_at"):
                if key in row:
                    row[key] = row[key].replace(tzinfo=None).isoformat(" ", "microseconds")
        for row in tasks:
            row["cost"] = str(row["cost"])
            row["conflict"] = 0
    return tasks, log


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def _insert(table: str, columns: tuple[str, ...], placeholder: str) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(placeholder % c for c in columns)})"


def raw_upsert(url: str, dialect: str, rows: list[dict], log: list[dict] | None = None) -> dict:
    """Upsert `rows` into `tasks` (after inserting `log` into the delivery log, if given),
    one executemany per table and one commit per RAW_CHUNK deliveries."""
    if dialect == "sqlite":
        placeholder = ":%s"
        conn = sqlite3.connect(_sqlite_path(url))
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000", "foreign_keys=ON"):
            conn.execute(f"PRAGMA {pragma}")  # as store.db opens it
        driver = f"sqlite3 {sqlite3.sqlite_version}"
    else:
        import psycopg

        placeholder = "%%(%s)s"
        conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        driver = f"psycopg {psycopg.__version__}"
    upsert = f"{_insert('tasks', TASK_COLUMNS, placeholder)} ON CONFLICT (task_uuid) DO UPDATE SET {RAW_UPDATE}"
    append = _insert("deliveries", tuple(log[0]), placeholder) if log else None
    try:
        started = time.perf_counter()
        for i in range(0, len(rows), RAW_CHUNK):
            cur = conn.cursor()
            if append:
                cur.executemany(append, log[i:i + RAW_CHUNK])
            cur.executemany(upsert, rows[i:i + RAW_CHUNK])
            conn.commit()
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    stored = count_rows(url, "tasks")
    logged = count_rows(url, "deliveries") if log else len(rows)
    return {
        "deliveries": len(rows), "seconds": round(seconds, 3), "per_s": round(len(rows) / seconds, 1),
        "stored": stored, "accounted": stored == logged == len(rows),
        "how": f"executemany of {RAW_CHUNK} rows{' per table' if log else ''} + commit, {driver}",
        "rows": "delivery log + tasks" if log else "tasks alone",
    }


# --- the drain and the one-job-per-delivery baseline -----------------------------------------------


def _epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _job_started(client, job_id: str) -> float | None:
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    try:
        return _epoch(Job.fetch(job_id, connection=client).started_at)
    except NoSuchJobError:
        return None


class RssSampler:
    """The largest resident memory seen for a worker process and for its work horse(s)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.parent = 0
        self.horse = 0
        self.last = 0.0

    def sample(self, every: float = 0.25) -> None:
        if time.monotonic() - self.last < every:
            return
        self.last = time.monotonic()
        self.parent = max(self.parent, rss_kib(self.pid) or 0)
        for child in children(self.pid):
            self.horse = max(self.horse, rss_kib(child) or 0)

    def figures(self) -> dict:
        return {"parent": self.parent or None, "horse": self.horse or None}


def _worker(ctx: Context, args: list[str], env: dict, log_name: str) -> subprocess.Popen:
    (ctx.workdir / "drain").mkdir(exist_ok=True)
    log = open(ctx.workdir / "drain" / log_name, "wb")
    try:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()


def worker_drain(ctx: Context, url: str, entries: list[dict], label: str, aof: bool = True) -> dict:
    """Prefill the stream with `entries`, then time a real worker persisting them all."""
    from rq import Queue
    from rq.registry import FailedJobRegistry

    from config import Config
    from workers.queues import DELIVERY_GROUP
    from workers.queues import DELIVERY_STREAM
    from workers.queues import PERSIST_QUEUE
    from workers.queues import want_drain

    n = len(entries)
    with redis_server(ctx.scratch(f"drain/redis-{label}"), aof=aof) as server:
        client = server.client()
        started = time.monotonic()
        prefill(client, entries)
        prefill_s = time.monotonic() - started
        ctx.progress(f"drain: {label}: {n} deliveries queued in {prefill_s:.1f}s; worker draining")
        want_drain(client)  # what the first webhook does: set the flag, enqueue one drain job
        job_id = Queue(PERSIST_QUEUE, connection=client).job_ids[0]
        spawned = time.time()
        # As many persist workers as drains may run at once (PERSIST_CONCURRENCY), as deployed.
        env = ctx.service_env(server.url, url)
        concurrency = Config.from_env(env).persist_concurrency
        workers = [_worker(ctx, ["-m", "workers", "persist", "--burst"], env, f"worker-{label}-{n}.log")
                   for n in range(concurrency)]
        worker = workers[0]
        rss = RssSampler(worker.pid)
        job_start = ended = None
        deadline = time.monotonic() + ctx.sizes["drain_timeout"]
        try:
            while True:
                if job_start is None:
                    job_start = _job_started(client, job_id)
                if client.xlen(DELIVERY_STREAM) == 0:
                    ended = time.time()
                    break
                rss.sample()
                if all(w.poll() is not None for w in workers):
                    raise BenchError(f"the workers exited ({worker.returncode}) with "
                                     f"{client.xlen(DELIVERY_STREAM)} deliveries left")
                if time.monotonic() > deadline:
                    raise BenchError(f"drain not done after {ctx.sizes['drain_timeout']}s")
                time.sleep(0.01)
            for w in workers:
                w.wait(timeout=30)  # burst mode: each leaves once the stream and the queue are empty
        finally:
            for w in workers:
                stop_process(w)
        left = client.xlen(DELIVERY_STREAM)
        pending = client.xpending(DELIVERY_STREAM, DELIVERY_GROUP)["pending"]
        failed = FailedJobRegistry(PERSIST_QUEUE, connection=client).count
    stored, tasks = count_rows(url, "deliveries"), count_rows(url, "tasks")
    timed_from = "job start (RQ started_at)"
    if job_start is None:
        job_start, timed_from = spawned, "worker spawn (the job's start was not seen)"
    seconds = ended - job_start
    return {
        "deliveries": n, "seconds": round(seconds, 3), "per_s": round(n / seconds, 1), "timed_from": timed_from,
        "prefill_s": round(prefill_s, 3), "stored": stored, "tasks": tasks, "stream_left": left,
        "pending": pending, "failed_jobs": failed, "worker_exit": worker.returncode, "redis_aof": aof,
        "drains": concurrency,
        "accounted": stored == n and tasks == n and left == 0 and failed == 0,
        "worker_rss_kib": rss.figures(),
    }


def one_job_per_delivery(ctx: Context, url: str, entries: list[dict], label: str) -> dict:
    """N' RQ jobs of one delivery each, run by the same kind of worker; time-boxed."""
    from rq import Queue

    from workers.queues import PERSIST_QUEUE

    n = len(entries)
    cap = ctx.sizes["per_job_seconds"]
    with redis_server(ctx.scratch(f"drain/redis-per-job-{label}")) as server:
        client = server.client()
        queue = Queue(PERSIST_QUEUE, connection=client)
        base = int(time.time() * 1000)
        jobs = queue.enqueue_many([
            Queue.prepare_data(store_one, args=(f"{base}-{i}", e["body"], e["at"], e["ip"]),
                               result_ttl=60 if i == 0 else 0)  # the first is kept to read its start time
            for i, e in enumerate(entries)
        ])
        ctx.progress(f"drain: {label}: one job per delivery, {n} jobs (at most {cap}s)")
        worker = _worker(ctx, ["-m", "bench.drain", "worker"], ctx.service_env(server.url, url),
                         f"worker-per-job-{label}.log")
        job_start = None
        capped = False
        deadline = time.monotonic() + cap + 30  # the cap counts from the first job; allow for the worker's start
        try:
            while True:
                time.sleep(0.1)
                if job_start is None:
                    job_start = _job_started(client, jobs[0].id)
                    if job_start is not None:
                        deadline = min(deadline, time.monotonic() + cap)
                done = count_rows(url, "deliveries")
                ended = time.time()
                if done >= n:
                    break
                if time.monotonic() > deadline:
                    capped = True
                    break
                if worker.poll() is not None:
                    raise BenchError(f"the per-job worker exited ({worker.returncode}) after {done} of {n} jobs")
        finally:
            stop_process(worker)
    if job_start is None:
        raise BenchError("the first per-delivery job never started")
    seconds = ended - job_start
    return {
        "jobs": n, "done": done, "seconds": round(seconds, 3), "per_s": round(done / seconds, 1),
        "capped": capped, "how": "RQ Worker (forking), one save_deliveries per job",
    }


# --- per database --------------------------------------------------------------------------------


def _reset(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE tasks, deliveries, dead_letters"))
    engine.dispose()


def _lines(ctx: Context, dialect: str, fresh_url, entries: list[dict]) -> dict:
    """The lines on one database; `fresh_url(name)` gives an empty, migrated store."""
    n_jobs = ctx.sizes["per_job_deliveries"]
    rows, log = task_rows(entries, dialect)
    ctx.progress(f"drain: {dialect}: raw write of the same rows, {len(rows)} deliveries")
    raw = raw_upsert(fresh_url("raw"), dialect, rows, log)
    raw_tasks = raw_upsert(fresh_url("raw-tasks"), dialect, rows)
    ctx.progress(f"drain: {dialect}: raw {raw['per_s']:.0f}/s (tasks alone {raw_tasks['per_s']:.0f}/s)")
    drained = worker_drain(ctx, fresh_url("drain"), entries, dialect)
    ctx.progress(f"drain: {dialect}: drain {drained['per_s']:.0f}/s")
    per_job = one_job_per_delivery(ctx, fresh_url("per-job"), entries[:n_jobs], dialect)
    ctx.progress(f"drain: {dialect}: one job per delivery {per_job['per_s']:.1f}/s")
    problems = [f"{name}: stored does not match queued"
                for name, line in (("raw", raw), ("raw, tasks alone", raw_tasks), ("drain", drained))
                if not line["accounted"]]
    return {
        "status": "failed" if problems else "ok",
        **({"note": "; ".join(problems)} if problems else {}),
        "raw": raw,
        "raw_tasks": raw_tasks,
        "drain": drained,
        "per_job": per_job,
        "ratio_raw": round(drained["per_s"] / raw["per_s"], 3),
        "ratio_raw_tasks": round(drained["per_s"] / raw_tasks["per_s"], 3),
        "ratio_per_job": round(drained["per_s"] / per_job["per_s"], 1) if per_job["per_s"] else None,
    }


def run(ctx: Context) -> dict:
    """The drain figure on SQLite and PostgreSQL, plus the SQLite drain with Redis AOF off."""
    n = ctx.sizes["drain_deliveries"]
    scratch = ctx.scratch("drain")
    entries = make_deliveries(n, ctx.seed)
    result: dict = {"settings": {k: ctx.sizes[k] for k in ("drain_deliveries", "per_job_deliveries",
                                                            "per_job_seconds")}}
    result["sqlite"] = _lines(ctx, "sqlite", lambda name: sqlite_database(scratch, f"{name}.db"), entries)
    try:
        with postgres_database() as url:
            def fresh(name: str, url=url) -> str:
                _reset(url)
                return url

            result["postgres"] = _lines(ctx, "postgresql", fresh, entries)
    except PostgresUnavailable as exc:
        ctx.progress(f"drain: postgresql lines skipped: {exc}")
        result["postgres"] = {"status": "skipped", "note": str(exc)}
    if ctx.sizes.get("aof_off_lines"):
        extra = worker_drain(ctx, sqlite_database(scratch, "drain-no-aof.db"), entries, "sqlite-no-aof", aof=False)
        extra["label"] = "drain on SQLite, Redis AOF off (extra)"
        extra["ratio_raw"] = round(extra["per_s"] / result["sqlite"]["raw"]["per_s"], 3)
        ctx.progress(f"drain: sqlite, AOF off: {extra['per_s']:.0f}/s")
        result["sqlite_aof_off"] = extra
    failed = [name for name in ("sqlite", "postgres") if result[name]["status"] == "failed"]
    result["status"] = "failed" if failed else "ok"
    if failed:
        result["note"] = "; ".join(f"{name}: {result[name]['note']}" for name in failed)
    return result


def _serve() -> int:
    """The one-job-per-delivery worker: the project's worker with this module loaded before it forks."""
    import bench.drain  # noqa: F401  (the job function, imported once, not in every work horse)
    from workers.__main__ import main

    return main(["persist", "--burst"])


if __name__ == "__main__":
    if sys.argv[1:] != ["worker"]:
        sys.exit("usage: python -m bench.drain worker")
    sys.exit(_serve())
