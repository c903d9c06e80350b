"""The intake's Prometheus counters: webhook outcomes and the time to queue a delivery in Redis.

A module of their own so that the intake's processes count without importing
`GET /metrics` (receiver/metrics.py), which reads the store. With
PROMETHEUS_MULTIPROC_DIR shared by every process of a host, the readers'
/metrics adds the intake's counters up with everyone else's.
"""

from __future__ import annotations

from prometheus_client import Counter
from prometheus_client import Histogram

OUTCOMES = ("accepted", "unauthorized", "bad_signature", "unsupported_media_type", "too_large", "bad_json",
            "unprocessable", "redis_unavailable", "replicas_behind", "backpressure")
"""Values of the `outcome` label of captions_webhook_requests_total."""

WEBHOOK_REQUESTS = Counter("captions_webhook_requests", "Webhook POSTs by outcome (accepted, or why rejected)",
                           ["outcome"])
ENQUEUE_SECONDS = Histogram("captions_enqueue_seconds", "Time to write an accepted delivery to Redis, in the request",
                            buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
for _outcome in OUTCOMES:
    WEBHOOK_REQUESTS.labels(_outcome)


def webhook_outcome(outcome: str) -> None:
    """Count one webhook request with its outcome (one of OUTCOMES)."""
    WEBHOOK_REQUESTS.labels(outcome).inc()


def enqueued(seconds: float) -> None:
    """Count an accepted delivery and how long its Redis write took."""
    WEBHOOK_REQUESTS.labels("accepted").inc()
    ENQUEUE_SECONDS.observe(seconds)
