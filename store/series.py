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
from bisect import bisect_left
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta
from decimal import ROUND_HALF_EVEN
from decimal import Decimal
from itertools import accumulate

import sqlalchemy as sa

from store.queries import Window
from store.schema import DAYS
from store.schema import LATENCY_BOUNDS
from store.schema import STATUSES
from store.schema import delivery_hours
from store.schema import result_hours
from store.schema import task_hours
from store.stats import COST_QUANTUM
from store.stats import COST_SCALE
from store.stats import split

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


def percentiles(histogram: list[int]) -> dict[float, float | None]:
    """For each of PERCENTILES, the upper bound (seconds) of the histogram bucket holding its nearest rank; None
    when the histogram is empty or the rank lies past the last bound."""
    seen = list(accumulate(histogram))
    count = seen[-1]
    if not count:
        return dict.fromkeys(PERCENTILES)
    found = {}
    for q in PERCENTILES:
        at = bisect_left(seen, math.ceil(q * count))
        found[q] = LATENCY_BOUNDS[at] if at < len(LATENCY_BOUNDS) else None
    return found


def _whole_hours(hourly: sa.Table, since: datetime, until: datetime) -> list[tuple[sa.Table, datetime, datetime]]:
    """A window of whole hours as (table, start, end) reads: `hourly`'s day rollup for its whole UTC days,
    `hourly` for the hours before and after them."""
    parts = split(Window(since, until))
    reads = [(hourly, hours.since, hours.until) for hours in parts.hours]
    if parts.days is not None:
        reads.append((DAYS[hourly], parts.days.since, parts.days.until))
    return reads


def _sums(conn: sa.Connection, reads: list[tuple[sa.Table, datetime, datetime]], keys: tuple[str, ...],
          measures: tuple[str, ...], histogram_of: str | None, per_time: bool):
    """Rows of ([time,] *keys, *sums of `measures`[, *the histogram]) over `reads` ((table, start, end)), summed
    in SQL; the histogram is the sum of `histogram_of` in each latency bucket, one column per bucket, so that a
    row comes back per key and not per key and bucket. Rows whose sums are all zero (aggregate rows back at
    zero) are left out."""
    selects = []
    for table, start, end in reads:
        time = table.c.day if "day" in table.c else table.c.hour
        columns = ((time.label("t"),) if per_time else ()) + tuple(table.c[k] for k in keys)
        latency = (table.c.latency_bucket, table.c[histogram_of].label("counted")) if histogram_of else ()
        selects.append(sa.select(*columns, *latency, *(table.c[m] for m in measures))
                       .where(time >= start, time < end))
    rows = (selects[0] if len(selects) == 1 else sa.union_all(*selects)).subquery("rows")
    grouped = ((rows.c.t,) if per_time else ()) + tuple(rows.c[k] for k in keys)
    sums = [sa.func.sum(rows.c[m]) for m in measures]
    if histogram_of:
        sums += [sa.func.sum(sa.case((rows.c.latency_bucket == n, rows.c.counted), else_=0))
                 for n in range(len(LATENCY_BOUNDS) + 1)]
    query = sa.select(*grouped, *(sa.cast(total, sa.BigInteger) for total in sums)).group_by(*grouped)
    width = len(grouped)
    for row in conn.execute(query):
        if any(row[width:]):
            yield row[:width], row[width:width + len(measures)], list(row[width + len(measures):])


def _add(histogram: list[int], other: list[int]) -> None:
    for n, count in enumerate(other):
        histogram[n] += count


def _add_results(target: Figures, status: str, count: int, units: int, latencies: list[int]) -> None:
    if status == "success":
        target.successes += count
        target.cost_units += units
    else:
        target.errors += count
    _add(target.to_result, latencies)


def series(conn: sa.Connection, bucket: str, since: datetime, until: datetime) -> Series:
    """The figures of each `bucket` from `since` to `until` (both on bucket boundaries, `until` excluded).

    Per bucket the aggregates are summed in SQL over everything but time and
    status, with the latency histograms pivoted into columns; per model, over the
    window, from the day rollups for its whole days.
    """
    step = BUCKETS[bucket]
    starts = [since + n * step for n in range((until - since) // step)]
    at = {start: n for n, start in enumerate(starts)}
    buckets = [Figures() for _ in starts]

    def per_bucket(hourly: sa.Table) -> list[tuple[sa.Table, datetime, datetime]]:
        return [(DAYS[hourly] if bucket == "day" else hourly, since, until)]

    for (start, status), (count,), _ in _sums(conn, per_bucket(task_hours), ("status",), ("tasks",), None, True):
        buckets[at[start]].by_status[status] += count
    for (start, status), (count, units), latencies in _sums(
            conn, per_bucket(result_hours), ("status",), ("tasks", "cost_units"), "tasks", True):
        _add_results(buckets[at[start]], status, count, units, latencies)
    for (start,), _, latencies in _sums(conn, per_bucket(delivery_hours), (), (), "deliveries", True):
        _add(buckets[at[start]].to_stored, latencies)

    by_model: dict[str, Figures] = {}
    for (name, status), (count,), _ in _sums(conn, _whole_hours(task_hours, since, until), ("model", "status"),
                                             ("tasks",), None, False):
        by_model.setdefault(name, Figures()).by_status[status] += count
    for (name, status), (count, units), latencies in _sums(
            conn, _whole_hours(result_hours, since, until), ("model", "status"), ("tasks", "cost_units"), "tasks",
            False):
        _add_results(by_model.setdefault(name, Figures()), status, count, units, latencies)
    total = Figures()
    for figures in buckets:
        total.add(figures)
    return Series(starts, buckets, total, dict(sorted(by_model.items())))
