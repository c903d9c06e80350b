"""End to end: a steady load at 50% and 90% of the intake maximum, with a persist worker running.

The service (gunicorn with `deploy/gunicorn.conf.py`, a private Redis with
`deploy/redis.conf`, a SQLite store in WAL) takes webhooks from wrk paced by
`bench/wrk/paced.lua` (a schedule of evenly spaced sends per thread, so a slow
answer does not lower the rate) while one `python -m workers persist` process
drains them. The maximum is the service's req/s measured by the intake phase of
the same run (measured here, flat out with the worker running, when that phase
was not run).

Per level: receipt-to-stored latency from the `deliveries` table
(`stored_at - received_at`, both stamped by the service), p50 and p99; the
backlog (stream length: entries not yet committed) when the load stops and the
largest seen during it; and the accounting once the backlog is drained: every
delivery wrk saw acknowledged is stored, each task exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC
from datetime import datetime

from bench.common import ROOT
from bench.common import WEBHOOK_PATH
from bench.common import BenchError
from bench.common import Context
from bench.common import percentile
from bench.common import wait_until
from bench.servers import gunicorn
from bench.servers import redis_server
from bench.servers import stop_process
from bench.stores import sqlite_database
from bench.traffic import run_wrk

RATE_REACHED = 0.95
"""A level whose achieved rate is below this share of its target did not load the service as asked:
the server could not answer that fast (wrk's connections were all waiting), and the line says so."""


class BacklogSampler(threading.Thread):
    """Reads the stream length every `every` seconds while the load runs."""

    def __init__(self, client, every: float = 0.2):
        super().__init__(daemon=True)
        self.client = client
        self.every = every
        self.samples: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        from workers.queues import DELIVERY_STREAM

        while not self.stopping.wait(self.every):
            self.samples.append(self.client.xlen(DELIVERY_STREAM))

    def stop(self) -> list[int]:
        self.stopping.set()
        self.join(timeout=5)
        return self.samples


def _stored_since(database_url: str, since: float) -> tuple[list[float], int, int, int]:
    """Receipt-to-stored latencies (ms) of deliveries received since `since`; and, counted in one
    statement (one snapshot, while stragglers may still land), those deliveries, their tasks, and
    how many of those tasks were counted as delivered more than once."""
    import sqlalchemy as sa

    from store.schema import deliveries
    from store.schema import tasks

    moment = datetime.fromtimestamp(since, UTC)

    def count(table, *where):
        return sa.select(sa.func.count()).select_from(table).where(*where).scalar_subquery()

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            stored, task_count, repeated = conn.execute(sa.select(
                count(deliveries, deliveries.c.received_at >= moment),
                count(tasks, tasks.c.first_delivery_at >= moment),
                count(tasks, tasks.c.first_delivery_at >= moment, tasks.c.delivery_count != 1),
            )).one()
            rows = conn.execute(sa.select(deliveries.c.received_at, deliveries.c.stored_at)
                                .where(deliveries.c.received_at >= moment)).all()
    finally:
        engine.dispose()
    return [(stored_at - received).total_seconds() * 1000 for received, stored_at in rows], stored, task_count, repeated


def _drained(client, timeout: float) -> float | None:
    """Seconds until the stream is empty, or None if it is not within `timeout`."""
    from workers.queues import DELIVERY_STREAM

    started = time.monotonic()
    try:
        wait_until(lambda: client.xlen(DELIVERY_STREAM) == 0, timeout, "the backlog to drain", interval=0.02)
    except BenchError:
        return None
    return time.monotonic() - started


def _level(ctx: Context, url: str, client, database_url: str, fraction: float, max_rps: float) -> dict:
    from workers.queues import DELIVERY_STREAM

    sizes = ctx.sizes
    threads, connections = sizes["wrk_threads"], sizes["wrk_connections"]
    target = fraction * max_rps
    ctx.progress(f"endtoend: {fraction:.0%} of {max_rps:.0f} req/s = {target:.0f} req/s for {sizes['e2e_seconds']}s")
    since = time.time()
    sampler = BacklogSampler(client)
    sampler.start()
    try:
        load = run_wrk(url, sizes["e2e_seconds"], threads, connections, seed=ctx.seed + int(fraction * 100),
                       rate_per_thread=target / threads)
    finally:
        samples = sampler.stop()
    backlog_end = client.xlen(DELIVERY_STREAM)
    drain_s = _drained(client, sizes["e2e_drain_wait"])
    latencies, stored, task_count, repeated = _stored_since(database_url, since)
    rate = load["rps"]
    # Answered after wrk stopped counting: at most one per connection, plus any request wrk gave up on.
    extra = stored - load["ok"]
    allowed = connections + sum(load["socket_errors"].values())
    accounted = drain_s is not None and 0 <= extra <= allowed and task_count == stored and repeated == 0
    figures = {
        "fraction": fraction,
        "target_rps": round(target, 1),
        "achieved_rps": rate,
        "rate_reached": rate >= RATE_REACHED * target,
        "seconds": load["seconds"],
        "acknowledged": load["ok"],
        "non_2xx": load["non_2xx"],
        "socket_errors": load["socket_errors"],
        "stored": stored,
        "tasks": task_count,
        "tasks_delivered_twice": repeated,
        "p50_ms": _round(percentile(latencies, 50)),
        "p99_ms": _round(percentile(latencies, 99)),
        "max_ms": _round(max(latencies) if latencies else None),
        "backlog_end": backlog_end,
        "backlog_end_s": round(backlog_end / rate, 3) if rate else None,
        "backlog_max": max(samples, default=backlog_end),
        "drained_after_s": _round(drain_s, 3),
        "http_latency_ms": {k: load["latency_ms"][k] for k in ("p50", "p99")},
        "accounted": accounted,
        "accounting": (f"{stored} stored for {load['ok']} acknowledged ({extra} answered after wrk stopped "
                       f"counting), {task_count} tasks, {repeated} counted twice"
                       + ("" if drain_s is not None else f"; backlog not drained after {sizes['e2e_drain_wait']}s")),
    }
    if not figures["rate_reached"]:
        ctx.progress(f"endtoend: {fraction:.0%}: only {rate:.0f} of {target:.0f} req/s reached "
                     f"(HTTP p50 {load['latency_ms']['p50']:.0f} ms with {connections} connections)")
    ctx.progress(f"endtoend: {fraction:.0%}: {rate:.0f} req/s, receipt-to-stored p50 {figures['p50_ms']} ms, "
                 f"p99 {figures['p99_ms']} ms, backlog at end {backlog_end}, "
                 f"{'accounted' if accounted else 'NOT ACCOUNTED: ' + figures['accounting']}")
    return figures


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def run(ctx: Context, results: dict) -> dict:
    """The end-to-end figure at each load fraction."""
    from rq import Worker

    from workers.queues import DELIVERY_STREAM

    sizes = ctx.sizes
    scratch = ctx.scratch("endtoend")
    database_url = sqlite_database(scratch)
    intake = results.get("phases", {}).get("intake", {})
    max_rps = intake.get("service", {}).get("rps")
    source = "intake phase of this run (service, Redis AOF on)"
    with redis_server(ctx.scratch("endtoend/redis")) as server:
        client = server.client()
        env = ctx.service_env(server.url, database_url, APP_KIND="intake")  # the intake's gunicorn settings
        with gunicorn("wsgi:intake", env, scratch / "gunicorn.log") as web:
            log = open(scratch / "worker.log", "wb")
            worker = subprocess.Popen([sys.executable, "-m", "workers", "persist"], cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            try:
                wait_until(lambda: Worker.all(connection=client) or worker.poll() is not None, 60,
                           "the persist worker to start")
                url = f"{web.url}{WEBHOOK_PATH}?token={ctx.webhook_token}"
                if not max_rps:
                    ctx.progress(f"endtoend: no intake figure in this run: measuring the maximum "
                                 f"({sizes['e2e_calibrate_seconds']}s flat out)")
                    max_rps = run_wrk(url, sizes["e2e_calibrate_seconds"], sizes["wrk_threads"],
                                      sizes["wrk_connections"], seed=ctx.seed)["rps"]
                    source = "measured by this phase, flat out, with the worker running"
                if sizes["e2e_warmup"]:
                    ctx.progress(f"endtoend: warm-up {sizes['e2e_warmup']}s at 50%")
                    run_wrk(url, sizes["e2e_warmup"], sizes["wrk_threads"], sizes["wrk_connections"],
                            seed=ctx.seed + 1, rate_per_thread=max_rps / 2 / sizes["wrk_threads"])
                if _drained(client, sizes["e2e_drain_wait"]) is None:
                    raise BenchError(f"warm-up backlog of {client.xlen(DELIVERY_STREAM)} not drained")
                levels = []
                for fraction in sizes["e2e_fractions"]:
                    levels.append(_level(ctx, url, client, database_url, fraction, max_rps))
                    if worker.poll() is not None:
                        raise BenchError(f"the persist worker exited ({worker.returncode})")
            finally:
                stop_process(worker)
    problems = [f"{level['fraction']:.0%}: {level['accounting']}" for level in levels if not level["accounted"]]
    problems += [f"{level['fraction']:.0%}: {level['non_2xx']} answers not 2xx" for level in levels if level["non_2xx"]]
    return {
        "status": "failed" if problems else "ok",
        **({"note": "; ".join(problems)} if problems else {}),
        "settings": {"seconds": sizes["e2e_seconds"], "threads": sizes["wrk_threads"],
                     "connections": sizes["wrk_connections"], "persist_workers": 1, "database": "sqlite"},
        "max_rps": max_rps,
        "max_rps_source": source,
        "levels": levels,
    }
