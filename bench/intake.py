"""Intake: webhook POSTs a second taken by the service, beside a bare Flask app on the same gunicorn.

Both servers run `deploy/gunicorn.conf.py` with the same environment (workers,
worker class, access log, limits); wrk sends both the same bodies from
`bench/wrk/webhook.lua` (a fresh taskUUID per request) with the same threads
and connections, after a warm-up run. The service queues into a private Redis
started with `deploy/redis.conf` (AOF on, fsync always); the same run with AOF
off is an extra line. After each service run the stream must hold every
delivery wrk saw acknowledged: no worker runs, so nothing leaves it.
"""

from __future__ import annotations

import time

from bench.common import WEBHOOK_PATH
from bench.common import Context
from bench.common import cpu_seconds
from bench.common import gunicorn
from bench.common import redis_server
from bench.common import rss_kib
from bench.common import run_wrk
from bench.common import sqlite_database
from bench.common import tree_cpu_seconds


def _measure(ctx: Context, app: str, env: dict, label: str, log_name: str, stream=None,
             redis_pid: int | None = None) -> dict:
    """Warm up, then one timed wrk run against `app`; with `stream` (a Redis client), the accounting too."""
    from workers.queues import DELIVERY_STREAM

    sizes = ctx.sizes
    with gunicorn(app, env, ctx.workdir / "intake" / log_name) as server:
        url = f"{server.url}{WEBHOOK_PATH}?token={ctx.webhook_token}"
        wrk_args = {"threads": sizes["wrk_threads"], "connections": sizes["wrk_connections"], "seed": ctx.seed}
        if sizes["intake_warmup"]:
            ctx.progress(f"intake: {label}: warm-up {sizes['intake_warmup']}s")
            run_wrk(url, sizes["intake_warmup"], **wrk_args)
            time.sleep(0.5)  # the warm-up's last requests are still being answered
        before = stream.xlen(DELIVERY_STREAM) if stream is not None else None
        ctx.progress(f"intake: {label}: wrk {sizes['intake_seconds']}s "
                     f"(-t{wrk_args['threads']} -c{wrk_args['connections']})")
        web_cpu, redis_cpu = tree_cpu_seconds(server.process.pid), cpu_seconds(redis_pid) if redis_pid else 0.0
        figures = run_wrk(url, sizes["intake_seconds"], **wrk_args)
        web_cpu = tree_cpu_seconds(server.process.pid) - web_cpu
        redis_cpu = (cpu_seconds(redis_pid) if redis_pid else 0.0) - redis_cpu
        time.sleep(0.5)  # requests still in flight when wrk stopped finish now
        # Where the two cores went, per answered request: a figure that other load on the machine
        # shifts far less than req/s.
        per_request = 1000 / max(figures["requests"], 1)
        figures["cpu_ms_per_request"] = {
            "web": round(web_cpu * per_request, 3),
            "redis": round(redis_cpu * per_request, 3) if redis_pid else None,
            "wrk": round(figures["client_cpu_s"] * per_request, 3),
        }
        workers = server.worker_pids()
        figures["label"] = label
        figures["web_workers"] = len(workers)
        figures["worker_rss_kib"] = [rss_kib(pid) for pid in workers]
        figures["master_rss_kib"] = rss_kib(server.process.pid)
    if stream is not None:
        queued = stream.xlen(DELIVERY_STREAM) - before
        # wrk stops with up to one request per connection in flight, and gives up on a request that
        # times out or whose socket fails: the server may have queued those without wrk counting them.
        in_flight = queued - figures["ok"]
        figures["queued"] = queued
        figures["accounted"] = 0 <= in_flight <= figures["connections"] + sum(figures["socket_errors"].values())
        figures["accounting"] = (f"{queued} queued for {figures['ok']} acknowledged "
                                 f"({in_flight} answered after wrk stopped counting)")
    ctx.progress(f"intake: {label}: {figures['rps']:.0f} req/s, p50 {figures['latency_ms']['p50']:.1f} ms, "
                 f"p99 {figures['latency_ms']['p99']:.1f} ms, non-2xx {figures['non_2xx']}")
    return figures


def _service(ctx: Context, aof: bool, database_url: str) -> dict:
    label = "service" if aof else "service, Redis AOF off (extra)"
    scratch = ctx.scratch("intake/redis-aof" if aof else "intake/redis-no-aof")
    with redis_server(scratch, aof=aof) as server:
        env = ctx.service_env(server.url, database_url)
        figures = _measure(ctx, "wsgi:intake", env, label, f"gunicorn-service-{'aof' if aof else 'no-aof'}.log",
                           stream=server.client(), redis_pid=server.process.pid)
    figures["redis_aof"] = aof
    problems = []
    if figures["non_2xx"]:
        problems.append(f"{figures['non_2xx']} answers were not 2xx")
    if not figures["accounted"]:
        problems.append("deliveries missing from the stream: " + figures["accounting"])
    figures["valid"] = not problems
    if problems:
        figures["problems"] = problems
    return figures


def run(ctx: Context) -> dict:
    """The intake figure: bare Flask, the service (AOF on), and the service with AOF off."""
    scratch = ctx.scratch("intake")
    database_url = sqlite_database(scratch)  # the service needs one; the webhook path never touches it
    bare_env = ctx.service_env("redis://127.0.0.1:1/0", database_url)
    bare = _measure(ctx, "bench.bare_app:app", bare_env, "bare Flask", "gunicorn-bare.log")
    service = _service(ctx, True, database_url)
    result = {
        "settings": {k: ctx.sizes[k] for k in ("intake_seconds", "intake_warmup", "wrk_threads", "wrk_connections")},
        "bare": bare,
        "service": service,
        "ratio": round(service["rps"] / bare["rps"], 3) if bare["rps"] else None,
    }
    if ctx.sizes.get("aof_off_lines"):
        extra = _service(ctx, False, database_url)
        result["service_aof_off"] = extra
        result["ratio_aof_off"] = round(extra["rps"] / bare["rps"], 3) if bare["rps"] else None
    problems = [p for line in ("service", "service_aof_off") for p in result.get(line, {}).get("problems", [])]
    result["status"] = "failed" if problems else "ok"
    if problems:
        result["note"] = "; ".join(problems)
    return result
