"""Stats per hour or per UTC day, for charts (`GET /api/stats/series`), read from the aggregates alone.

A series covers a window of whole buckets, so it reads the hourly aggregates
(`task_hours`, `result_hours`, `delivery_hours`) or their day rollups and never a
base row: its cost grows with the buckets (and the models), not the tasks. Per
bucket it holds the tasks created by status, the tasks finished (successes,
errors) and their spend, and the two latency histograms (submitted -> result of
the finished tasks, received -> stored of the deliveries); per model, the same
over the whole window. Percentiles are read off the histograms: the bound of
the bucket holding the rank, so they equal the bucket a scan of the exact
latencies would put the same percentile in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta
from decimal import ROUND_HALF_EVEN
from decimal import Decimal

import sqlalchemy as sa

from store.schema import DAYS
from store.schema import LATENCY_BOUNDS
from store.schema import NO_LATENCY
from store.schema import STATUSES
from store.schema import delivery_hours
from store.schema import result_hours
from store.schema import task_hours
from store.stats import COST_QUANTUM
from store.stats import COST_SCALE

BUCKETS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
"""The bucket sizes a series takes, by name."""

PERCENTILES = (0.5, 0.95, 0.99)


def _histogram() -> list[int]:
    return [0] * (len(LATENCY_BOUNDS) + 1)


@dataclass
class Figures:
    """Tasks created (by status), finished (successes, errors, spend) and the latency histograms of a bucket or a
    model."""

    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    successes: int = 0
    errors: int = 0
    cost_units: int = 0
    to_result: list[int] = field(default_factory=_histogram)
    to_stored: list[int] = field(default_factory=_histogram)

    @property
    def spend(self) -> Decimal:
        return Decimal(self.cost_units).scaleb(-COST_SCALE).quantize(COST_QUANTUM)

    @property
    def success_rate(self) -> float | None:
        finished = self.successes + self.errors
        return round(self.successes / finished, 6) if finished else None

    @property
    def mean_cost(self) -> Decimal | None:
        """Spend per success (errors cost nothing), rounded half-even to 1e-10 USD."""
        if not self.successes:
            return None
        return (Decimal(self.cost_units) / self.successes).quantize(1, ROUND_HALF_EVEN).scaleb(-COST_SCALE) \
            .quantize(COST_QUANTUM)

    def add(self, other: Figures) -> None:
        for status, count in other.by_status.items():
            self.by_status[status] += count
        self.successes += other.successes
        self.errors += other.errors
        self.cost_units += other.cost_units
        self.to_result = [a + b for a, b in zip(self.to_result, other.to_result, strict=True)]
        self.to_stored = [a + b for a, b in zip(self.to_stored, other.to_stored, strict=True)]


@dataclass
class Series:
    """Figures per bucket (every bucket of the window, oldest first), over the window, and per model ('' none)."""

    starts: list[datetime]
    buckets: list[Figures]
    total: Figures
    by_model: dict[str, Figures]


def percentile(histogram: list[int], q: float) -> float | None:
    """The upper bound (seconds) of the histogram bucket holding the nearest-rank `q` percentile; None when the
    histogram is empty or the rank lies past the last bound."""
    count = sum(histogram)
    if not count:
        return None
    rank, seen = math.ceil(q * count), 0
    for n, bound in enumerate(LATENCY_BOUNDS):
        seen += histogram[n]
        if seen >= rank:
            return bound
    return None


def _table(hourly: sa.Table, bucket: str) -> tuple[sa.Table, sa.Column]:
    table = hourly if bucket == "hour" else DAYS[hourly]
    return table, table.c.hour if bucket == "hour" else table.c.day


def series(conn: sa.Connection, bucket: str, since: datetime, until: datetime) -> Series:
    """The figures of each `bucket` from `since` to `until` (both on bucket boundaries, `until` excluded)."""
    step = BUCKETS[bucket]
    starts = [since + n * step for n in range((until - since) // step)]
    at = {start: n for n, start in enumerate(starts)}
    buckets = [Figures() for _ in starts]
    by_model: dict[str, Figures] = {}

    def model(name: str) -> Figures:
        return by_model.setdefault(name, Figures())

    def read(hourly: sa.Table, keys: tuple[str, ...], measures: tuple[str, ...]):
        table, time = _table(hourly, bucket)
        sums = (sa.cast(sa.func.sum(table.c[m]), sa.BigInteger) for m in measures)
        columns = (time, *(table.c[k] for k in keys))
        query = sa.select(*columns, *sums).where(time >= since, time < until).group_by(*columns)
        for start, *row in conn.execute(query):
            if any(row[len(keys):]):  # an aggregate row back at zero counts nothing
                yield buckets[at[start]], row

    for figures, (status, name, count) in read(task_hours, ("status", "model"), ("tasks",)):
        for target in (figures, model(name)):
            target.by_status[status] += count
    for figures, (status, name, latency, count, units) in read(
            result_hours, ("status", "model", "latency_bucket"), ("tasks", "cost_units")):
        for target in (figures, model(name)):
            if status == "success":
                target.successes += count
                target.cost_units += units
            else:
                target.errors += count
            if latency != NO_LATENCY:
                target.to_result[latency] += count
    for figures, (latency, count) in read(delivery_hours, ("latency_bucket",), ("deliveries",)):
        figures.to_stored[latency] += count
    total = Figures()
    for figures in buckets:
        total.add(figures)
    return Series(starts, buckets, total, dict(sorted(by_model.items())))
