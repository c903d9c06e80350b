"""Worker processes: `python -m workers persist|submit|maintenance [--burst]`, `python -m workers cron`.

Each process serves exactly one RQ queue, so RQ dequeues with BLMOVE (a job id
is never lost between the pop and the started-job registry). The job modules
and their libraries are imported here, before RQ forks a work horse per job,
so no job pays for the imports.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

import redis
import sqlalchemy as sa
from rq import Queue
from rq import Worker

import logs
import workers.maintenance  # noqa: F401  (preloaded before the fork)
import workers.persist  # noqa: F401
import workers.reconcile  # noqa: F401
import workers.submit  # noqa: F401
from config import Config
from config import ConfigError
from workers.connection import connect
from workers.queues import MAINTENANCE_QUEUE
from workers.queues import PERSIST_QUEUE
from workers.queues import SUBMIT_QUEUE

QUEUES = (PERSIST_QUEUE, SUBMIT_QUEUE, MAINTENANCE_QUEUE)
REDIS_RETRY_S = 1
"""Seconds before serving the queue again after RQ gave up on a Redis error; doubled each time."""

REDIS_RETRY_MAX_S = 30
"""The longest wait between attempts to serve the queue again."""

HEALTHY_AFTER_S = 60
"""A worker that served this long before RQ gave up starts again from the shortest wait."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__.splitlines()[0])
    parser.add_argument("queue", choices=(*QUEUES, "cron"),
                        help="the queue to serve, or `cron`: RQ's cron scheduler, which outlives Redis outages")
    parser.add_argument("--schedule", default="workers.schedule", help="cron only: the module of periodic jobs")
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    parser.add_argument("--name", help="worker name (default: RQ's)")
    args = parser.parse_args(argv)
    try:
        config = Config.from_env()
        logs.configure()
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    else:
        logging.getLogger(__name__).warning("PROMETHEUS_MULTIPROC_DIR is not set: worker metrics are not exported")
    conn = connect(config, timeout=None)
    if args.queue == "cron":
        from workers.maintenance import run_cron

        return run_cron(conn, args.schedule)
    return serve(conn, config, args)


def serve(conn: redis.Redis, config: Config, args: argparse.Namespace) -> int:
    """Serve the queue with an RQ worker, and serve it again whenever RQ gives up.

    RQ waits out Redis only while it waits for a job. Anywhere else (a heartbeat, a
    job's bookkeeping, its registries, all in MULTI) a lost connection, Redis over its
    `maxmemory` (OOM) or a read-only replica during a failover makes it log "found an
    unhandled exception, quitting" and return. So unless a stop was asked for (RQ's
    signal handler recorded when, busy or idle), the queue is served again after a backoff; the persist
    worker meanwhile drains in its own process (workers.persist.drain_in_process), which
    frees memory when Redis refuses RQ even the dequeue.
    """
    log = logging.getLogger(__name__)
    name, delay = args.name, REDIS_RETRY_S
    while True:
        worker, started = None, time.monotonic()
        try:
            worker = Worker([Queue(args.queue, connection=conn)], connection=conn, name=name)
            worker.work(burst=args.burst, with_scheduler=args.queue == SUBMIT_QUEUE)
            reason = "RQ's error above"
        except redis.RedisError as exc:
            if args.burst:
                raise
            reason = type(exc).__name__
        if args.burst or (worker is not None and worker._shutdown_requested_date is not None):
            return 0
        if time.monotonic() - started > HEALTHY_AFTER_S:
            delay = REDIS_RETRY_S
        log.warning("RQ gave up serving %s (%s); serving it again in %ss", args.queue, reason, delay)
        name = args.name and f"{args.name}-{int(time.time())}"  # the old name may still look alive
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.queue == PERSIST_QUEUE:
            drain_here(config)
        time.sleep(delay)
        delay = min(delay * 2, REDIS_RETRY_MAX_S)


def drain_here(config: Config) -> None:
    """Drain in this process while RQ cannot; an outage of Redis or the store is only logged here
    (the queue is served again next, and the drains it runs wait the outage out)."""
    try:
        stored = workers.persist.drain_in_process(config)
    except (redis.RedisError, sa.exc.DBAPIError) as exc:
        logging.getLogger(__name__).warning("drain in the worker process stopped: %s", type(exc).__name__)
        return
    if stored:
        logging.getLogger(__name__).info("drain in the worker process stored %d deliveries", stored)


if __name__ == "__main__":
    sys.exit(main())
