"""The drain's metrics: items persisted and failed, and how long deliveries took to reach the store.

Observed in the RQ work horse that runs the drain; with PROMETHEUS_MULTIPROC_DIR set
(see receiver/metrics.py) the values outlive the horse and `GET /metrics` adds them up.
A delivery is counted when it is first stored: one replayed after a crash (already in
the delivery log) is not counted again.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from prometheus_client import Counter
from prometheus_client import Histogram

from store.results import Delivery
from store.schema import utcnow

FAILURE_REASONS = ("invalid_item", "dead_letter")
"""`invalid_item`: an item of an accepted body without a usable taskUUID or with a bad field;
`dead_letter`: an item the database refused, kept in the dead_letters table."""

PERSISTED_ITEMS = Counter("captions_persisted_items", "Result items written to the store")
PERSISTED_DELIVERIES = Counter("captions_persisted_deliveries", "Webhook deliveries written to the delivery log")
FAILED_ITEMS = Counter("captions_failed_items", "Items not stored as results, by reason", ["reason"])
RECEIPT_TO_STORED = Histogram(
    "captions_receipt_to_stored_seconds", "From a delivery's receipt by the webhook to its commit in the store",
    buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
for _reason in FAILURE_REASONS:
    FAILED_ITEMS.labels(_reason)


def stored(deliveries: Iterable[Delivery], at: datetime | None = None) -> None:
    """Count deliveries just committed (first time only) and their items."""
    at = at or utcnow()
    items = skipped = count = 0
    for delivery in deliveries:
        count += 1
        items += len(delivery.results)
        skipped += len(delivery.skipped)
        RECEIPT_TO_STORED.observe(max(0.0, (at - delivery.received_at).total_seconds()))
    if count:
        PERSISTED_DELIVERIES.inc(count)
        PERSISTED_ITEMS.inc(items)
    if skipped:
        FAILED_ITEMS.labels("invalid_item").inc(skipped)


def dead_lettered(delivery: Delivery, at: datetime | None = None) -> None:
    """Count a delivery just logged whose items the database refused (kept in dead_letters)."""
    at = at or utcnow()
    PERSISTED_DELIVERIES.inc()
    RECEIPT_TO_STORED.observe(max(0.0, (at - delivery.received_at).total_seconds()))
    if delivery.results:
        FAILED_ITEMS.labels("dead_letter").inc(len(delivery.results))
    if delivery.skipped:
        FAILED_ITEMS.labels("invalid_item").inc(len(delivery.skipped))
