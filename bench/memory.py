"""Memory: resident memory per gunicorn worker and per RQ worker, Redis bytes per queued delivery.

- gunicorn: VmRSS of each worker of the service right after the intake run
  (read by the intake phase; measured here after a short load when that phase
  was not run).
- RQ: the largest VmRSS of the persist worker process and of its work horse
  seen while it drained the stream in the drain phase (SQLite) (measured here on
  a small drain when that phase was not run).
- Redis: `used_memory` of a fresh private Redis (deploy/redis.conf) before and
  after XADDing N realistic deliveries (fields body, at, ip, as the receiver
  writes them), divided by N, beside the mean body size. `MEMORY USAGE` of the
  stream key is given too.
"""

from __future__ import annotations

from bench.common import WEBHOOK_PATH
from bench.common import Context
from bench.procfs import rss_kib
from bench.servers import gunicorn
from bench.servers import redis_server
from bench.stores import sqlite_database
from bench.traffic import make_deliveries
from bench.traffic import prefill
from bench.traffic import run_wrk


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def _gunicorn_workers(ctx: Context, results: dict) -> dict:
    service = results.get("phases", {}).get("intake", {}).get("service")
    if service and service.get("worker_rss_kib"):
        return {"worker_rss_mib": [_mib(k) for k in service["worker_rss_kib"]],
                "master_rss_mib": _mib(service.get("master_rss_kib")), "after": "the intake run"}
    seconds = ctx.sizes["memory_load_seconds"]
    ctx.progress(f"memory: gunicorn workers after a {seconds}s load (no intake phase in this run)")
    scratch = ctx.scratch("memory/web")
    with redis_server(ctx.scratch("memory/web-redis")) as server:
        env = ctx.service_env(server.url, sqlite_database(scratch))
        with gunicorn("wsgi:app", env, scratch / "gunicorn.log") as web:
            run_wrk(f"{web.url}{WEBHOOK_PATH}?token={ctx.webhook_token}", seconds, ctx.sizes["wrk_threads"],
                    ctx.sizes["wrk_connections"], seed=ctx.seed)
            return {"worker_rss_mib": [_mib(rss_kib(pid)) for pid in web.worker_pids()],
                    "master_rss_mib": _mib(rss_kib(web.process.pid)), "after": f"a {seconds}s load"}


def _rq_worker(ctx: Context, results: dict) -> dict:
    drained = results.get("phases", {}).get("drain", {}).get("sqlite", {}).get("drain")
    if drained and drained.get("worker_rss_kib", {}).get("parent"):
        rss, n = drained["worker_rss_kib"], drained["deliveries"]
    else:
        from bench.drain import worker_drain

        n = ctx.sizes["memory_drain_deliveries"]
        ctx.progress(f"memory: persist worker draining {n} deliveries (no drain phase in this run)")
        entries = make_deliveries(n, ctx.seed)
        rss = worker_drain(ctx, sqlite_database(ctx.scratch("memory/rq")), entries, "memory")["worker_rss_kib"]
    return {"parent_rss_mib": _mib(rss["parent"]), "horse_rss_mib": _mib(rss["horse"]),
            "while": f"draining {n} deliveries into SQLite (largest seen)"}


def _redis_per_delivery(ctx: Context) -> dict:
    from workers.queues import DELIVERY_STREAM

    n = ctx.sizes["memory_deliveries"]
    entries = make_deliveries(n, ctx.seed)
    with redis_server(ctx.scratch("memory/redis")) as server:
        client = server.client()
        before = client.info("memory")["used_memory"]
        prefill(client, entries)
        after = client.info("memory")["used_memory"]
        key = client.memory_usage(DELIVERY_STREAM, samples=0)
    body = sum(len(e["body"]) for e in entries) / n
    per = (after - before) / n
    return {
        "deliveries": n,
        "body_bytes_mean": round(body, 1),
        "bytes_per_delivery": round(per, 1),
        "ratio_to_body": round(per / body, 3),
        "stream_key_bytes_per_delivery": round(key / n, 1) if key else None,
        "how": "used_memory delta after XADD of N deliveries (body, at, ip) to a fresh Redis",
    }


def run(ctx: Context, results: dict) -> dict:
    """The memory figure."""
    ctx.scratch("memory")
    web = _gunicorn_workers(ctx, results)
    rq = _rq_worker(ctx, results)
    ctx.progress("memory: Redis bytes per queued delivery")
    redis_figures = _redis_per_delivery(ctx)
    ctx.progress(f"memory: gunicorn workers {web['worker_rss_mib']} MiB; RQ worker {rq['parent_rss_mib']} MiB, "
                 f"horse {rq['horse_rss_mib']} MiB; Redis {redis_figures['bytes_per_delivery']:.0f} B per delivery "
                 f"for {redis_figures['body_bytes_mean']:.0f} B bodies ({redis_figures['ratio_to_body']:.2f}x)")
    return {"status": "ok", "gunicorn": web, "rq": rq, "redis": redis_figures}
