"""Worker processes: `python -m workers persist`, `python -m workers submit [--burst]`, `python -m workers cron`.

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
from rq import Queue
from rq import Worker

import logs
import workers.persist  # noqa: F401  (preloaded before the fork)
import workers.reconcile  # noqa: F401
import workers.submit  # noqa: F401
from config import Config
from config import ConfigError
from workers.queues import PERSIST_QUEUE
from workers.queues import SUBMIT_QUEUE
from workers.queues import connect

QUEUES = (PERSIST_QUEUE, SUBMIT_QUEUE)
REDIS_RETRY_S = 2
"""Seconds between attempts to serve the queue again after RQ gave up on a Redis connection error."""


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
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs.configure()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    else:
        logging.getLogger(__name__).warning("PROMETHEUS_MULTIPROC_DIR is not set: worker metrics are not exported")
    conn = connect(config.redis_url, timeout=None)
    if args.queue == "cron":
        from workers.maintenance import run_cron

        return run_cron(conn, args.schedule)
    name = args.name
    while True:
        worker = None
        try:
            worker = Worker([Queue(args.queue, connection=conn)], connection=conn, name=name)
            worker.work(burst=args.burst, with_scheduler=args.queue == SUBMIT_QUEUE)
            return 0
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # RQ waits out Redis while it waits for a job, but quits on a connection error
            # anywhere else (a heartbeat after a job): serve the queue again once Redis is back,
            # unless a stop was asked for (RQ's own signal handler recorded it).
            if worker is not None and worker._stop_requested:
                return 0
            if args.burst:
                raise
            logging.getLogger(__name__).warning("Redis unavailable (%s); serving %s again in %ss",
                                                type(exc).__name__, args.queue, REDIS_RETRY_S)
            name = args.name and f"{args.name}-{int(time.time())}"  # the old name may still look alive
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            time.sleep(REDIS_RETRY_S)


if __name__ == "__main__":
    sys.exit(main())
