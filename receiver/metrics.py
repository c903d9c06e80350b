"""Prometheus metrics: the webhook's counters, and `GET /metrics` for the whole service.

Counters and histograms are written by every process that observes them: gunicorn
workers (webhook outcomes, enqueue latency: receiver/intake_metrics.py) and the drain jobs of the RQ workers
(persisted and failed items, receipt-to-stored latency, see workers/metrics.py).
With PROMETHEUS_MULTIPROC_DIR set, each process keeps its values in files in that
directory and a scrape adds them all up, so `/metrics` shows the whole service
whichever gunicorn worker answers. The directory must be the same for the web and
worker processes of a host; the files of processes that have exited are merged as
they pile up (receiver/metric_files.py). Without it, each process shows only its
own values.

Queue depth, the age of the oldest pending delivery and the spend are not counted
but read at scrape time: from the Redis stream (one pipelined round trip) and from
the store (from the hourly aggregates, cached for SPEND_CACHE_SECONDS), so they are right
across restarts, duplicates and replays.

The webhook path pays one counter increment per request and one histogram
observation per accepted delivery; nothing else.

`GET /metrics` needs `Authorization: Bearer <token>`, a READ_TOKENS or a METRICS_TOKENS value.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import redis
import sqlalchemy as sa
from flask import Blueprint
from flask import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client import REGISTRY
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import GaugeMetricFamily
from rq import Queue

from receiver import backpressure
from receiver import metric_files
from receiver.auth import bearer_token
from receiver.auth import token_matches
from receiver.errors import error_response
from receiver.openapi import operation
from receiver.state import engine
from receiver.state import redis_client
from receiver.state import settings
from store import stats
from store.replica import replica_lag
from workers.queues import DELIVERY_GROUP
from workers.queues import DELIVERY_STREAM
from workers.queues import MAINTENANCE_QUEUE
from workers.queues import PERSIST_QUEUE
from workers.queues import SUBMIT_QUEUE

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

RQ_QUEUES = (PERSIST_QUEUE, SUBMIT_QUEUE, MAINTENANCE_QUEUE)
"""The RQ queues whose waiting jobs `/metrics` counts."""

SPEND_CACHE_SECONDS = 15.0
"""How long a scrape reuses the spend summed from the store."""


class _Spend:
    """The store's total spend, summed at most once per SPEND_CACHE_SECONDS per process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.value: float | None = None
        self.at = 0.0

    def get(self, engine: sa.Engine) -> float:
        with self.lock:
            if self.value is None or time.monotonic() - self.at > SPEND_CACHE_SECONDS:
                with engine.connect() as conn:
                    total = stats.total_spend(conn)
                self.value, self.at = float(total), time.monotonic()
            return self.value


_spend = _Spend()


class ServiceCollector:
    """What a scrape exports: the counted metrics of every process, then the values read now."""

    def __init__(self, conn: redis.Redis, db: sa.Engine):
        self.conn = conn
        self.db = db

    def collect(self):
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory and os.path.isdir(directory):
            yield from metric_files.collect(Path(directory))
        else:
            yield from REGISTRY.collect()
        up = GaugeMetricFamily("captions_up", "1 when the dependency answered this scrape", labels=["dependency"])
        yield from self.queue_metrics(up)
        yield from self.store_metrics(up)
        yield up

    def queue_metrics(self, up: GaugeMetricFamily):
        try:
            pipe = self.conn.pipeline(transaction=False)
            pipe.xlen(DELIVERY_STREAM)
            pipe.xrange(DELIVERY_STREAM, count=1)
            pipe.xpending(DELIVERY_STREAM, DELIVERY_GROUP)
            for name in RQ_QUEUES:
                pipe.llen(Queue.redis_queue_namespace_prefix + name)
            depth, oldest, pending, *jobs = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable: %s", type(exc).__name__)
            up.add_metric(["redis"], 0)
            return
        up.add_metric(["redis"], 1)
        yield GaugeMetricFamily("captions_queue_depth", "Accepted deliveries not yet in the store (stream length)",
                                value=depth if isinstance(depth, int) else 0)
        age = 0.0
        if isinstance(oldest, list) and oldest:
            age = max(0.0, time.time() - int(oldest[0][0].split(b"-")[0]) / 1000)
        yield GaugeMetricFamily("captions_oldest_pending_seconds",
                                "Age of the oldest accepted delivery not yet in the store", value=age)
        in_flight = pending.get("pending", 0) if isinstance(pending, dict) else 0
        yield GaugeMetricFamily("captions_queue_in_flight",
                                "Deliveries read by a drain job but not yet acknowledged", value=in_flight)
        queued = GaugeMetricFamily("captions_rq_queued_jobs", "Jobs waiting in an RQ queue", labels=["queue"])
        for name, count in zip(RQ_QUEUES, jobs):
            queued.add_metric([name], count if isinstance(count, int) else 0)
        yield queued
        yield from backpressure.gauges(backpressure.gate().status())

    def store_metrics(self, up: GaugeMetricFamily):
        try:
            spend = _spend.get(self.db)
            lag = None
            if settings().database_read_url:
                with self.db.connect() as conn:
                    lag = replica_lag(conn)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics: database unavailable: %s", type(exc).__name__)
            up.add_metric(["database"], 0)
            return
        up.add_metric(["database"], 1)
        yield CounterMetricFamily("captions_spend_usd", "Sum of the cost of every successful task in the store",
                                  value=spend)
        if lag is not None:
            yield GaugeMetricFamily("captions_read_replica_lag_seconds",
                                    "How far the readers' replica (DATABASE_READ_URL) is behind its primary", value=lag)


@bp.get("/metrics")
@operation(summary="Prometheus metrics", tags=["operations"], auth=("read", "metrics"),
           responses={200: {"text/plain": None}})
def metrics():
    config = settings()
    if not token_matches(bearer_token(), config.read_tokens + config.metrics_tokens):
        return error_response(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    body = generate_latest(ServiceCollector(redis_client(), engine()))
    return Response(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)
