"""The intake's gate: webhooks get 503 before Redis is full, and are taken again once the drains made room.

Redis runs with a `maxmemory` bound and `noeviction` (deploy/redis.conf): over the
bound it refuses XADD, SET and every command inside MULTI, so RQ could no longer
dequeue, record or clean its jobs. The intake therefore stops well before: once
Redis's `used_memory` reaches `INTAKE_HIGH_WATER_PERCENT` of `maxmemory` (or the
stream holds `INTAKE_MAX_BACKLOG` deliveries, when set) it answers 503 with a
Retry-After, leaving the rest of the bound to the workers (the drains' pending
entries, RQ's jobs, registries and heartbeats). It accepts again, by itself,
once memory is back under `INTAKE_LOW_WATER_PERCENT` (and the backlog under the
same share of its limit): the gap between the two marks keeps it from flapping.

The request path pays almost nothing: each process reads `INFO memory` and the
stream's length in one round trip at most every `INTAKE_CHECK_INTERVAL_MS`, and
otherwise compares numbers it has. Between two reads a process may accept one
interval's worth of deliveries more; the headroom is far larger than that.

The same samples give the trend shown by `/metrics` and `GET /api/intake`: how
fast Redis memory grows (or shrinks, while the drains catch up), hence the time
until the high-water mark at the current rate, and the Retry-After of a refusal:
the time the drains need, at their current pace, to bring memory down to the
low-water mark.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import redis
from flask import current_app
from prometheus_client.core import GaugeMetricFamily

from config import Config
from receiver.state import redis_client
from receiver.state import settings
from workers.queues import DELIVERY_STREAM

TREND_WINDOW_S = 30.0
"""Growth rates are measured over the samples of this many last seconds."""

TREND_MIN_S = 1.0
"""No rate is given from samples spanning less than this."""

RETRY_AFTER_MAX_S = 300
"""The longest Retry-After of a refusal, whatever the estimate."""

RETRY_AFTER_STALLED_S = 30
"""Retry-After of a refusal while memory is not going down (the store is still out, say)."""


@dataclass(frozen=True)
class Sample:
    """One look at Redis: when (monotonic seconds), memory used and its bound (0: none), deliveries queued."""

    at: float
    used: int
    bound: int
    backlog: int


class Gate:
    """One process's view of Redis memory and the backlog, and whether the intake accepts."""

    def __init__(self, conn: redis.Redis, config: Config):
        self.conn = conn
        self.high_share = config.intake_high_water_percent / 100
        self.low_share = config.intake_low_water_percent / 100
        self.max_backlog = config.intake_max_backlog
        self.interval = config.intake_check_interval_ms / 1000
        self.retry_after_default = config.retry_after_seconds
        self.samples: deque[Sample] = deque()
        self.open = True
        self.checked_at = -math.inf
        self.lock = threading.Lock()

    def accepting(self) -> bool:
        """True while webhooks may be queued; looks at Redis again when the last look is too old."""
        if time.monotonic() - self.checked_at >= self.interval:
            self.refresh()
        return self.open

    def refresh(self) -> Sample | None:
        """Take a sample (one round trip) and move the gate; None when Redis does not answer.

        An unanswered look leaves the gate as it was: the request then finds Redis out
        itself, when it queues, and answers 503 for that reason.
        """
        if not self.lock.acquire(blocking=False):
            return self.latest()
        try:
            self.checked_at = time.monotonic()
            pipe = self.conn.pipeline(transaction=False)
            pipe.info("memory")
            pipe.xlen(DELIVERY_STREAM)
            try:
                memory, backlog = pipe.execute()
            except redis.RedisError:
                return None
            sample = Sample(time.monotonic(), memory["used_memory"], memory["maxmemory"], backlog)
            self.samples.append(sample)
            while self.samples[0].at < sample.at - TREND_WINDOW_S:
                self.samples.popleft()
            self.open = self.below_low(sample) if not self.open else not self.above_high(sample)
            return sample
        finally:
            self.lock.release()

    def refused(self) -> None:
        """Redis refused a delivery for memory: close at once (the next sample may open again)."""
        self.open = False

    def above_high(self, s: Sample) -> bool:
        return bool(s.bound and s.used >= self.high_share * s.bound
                    or self.max_backlog and s.backlog >= self.max_backlog)

    def below_low(self, s: Sample) -> bool:
        memory_ok = not s.bound or s.used <= self.low_share * s.bound
        backlog_ok = not self.max_backlog or s.backlog <= self.low_share / self.high_share * self.max_backlog
        return memory_ok and backlog_ok

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def rates(self) -> tuple[float, float] | None:
        """Memory growth (bytes/s) and backlog growth (deliveries/s) over the trend window; negative: shrinking."""
        if len(self.samples) < 2 or self.samples[-1].at - self.samples[0].at < TREND_MIN_S:
            return None
        first, last = self.samples[0], self.samples[-1]
        span = last.at - first.at
        return (last.used - first.used) / span, (last.backlog - first.backlog) / span

    def retry_after(self) -> int:
        """Seconds a refused sender should wait: until the drains reach the low-water mark at their pace."""
        sample, rates = self.latest(), self.rates()
        if self.open or sample is None:
            return self.retry_after_default
        if rates is None:
            return RETRY_AFTER_STALLED_S
        waits = []
        if sample.bound:
            waits.append(self._time_to(sample.used, self.low_share * sample.bound, rates[0]))
        if self.max_backlog:
            waits.append(self._time_to(sample.backlog, self.low_share / self.high_share * self.max_backlog, rates[1]))
        wait = max(waits, default=0.0)
        if wait == math.inf:
            return RETRY_AFTER_STALLED_S
        return max(1, min(RETRY_AFTER_MAX_S, math.ceil(wait)))

    @staticmethod
    def _time_to(value: float, target: float, rate: float) -> float:
        """Seconds for `value` to come down to `target` at `rate` per second (inf when it is not falling)."""
        if value <= target:
            return 0.0
        return (value - target) / -rate if rate < 0 else math.inf

    def seconds_to_full(self) -> float | None:
        """Seconds until the high-water mark at the current growth (None: not growing, or no bound)."""
        sample, rates = self.latest(), self.rates()
        if sample is None or rates is None:
            return None
        waits = []
        if sample.bound and rates[0] > 0:
            waits.append(max(0.0, (self.high_share * sample.bound - sample.used) / rates[0]))
        if self.max_backlog and rates[1] > 0:
            waits.append(max(0.0, (self.max_backlog - sample.backlog) / rates[1]))
        return min(waits, default=None)

    def status(self) -> dict:
        """What the dashboard and /metrics show: the gate, memory against its bound, the backlog, the trend."""
        answered = self.refresh()
        sample, rates = answered or self.latest(), self.rates()
        bound = sample.bound if sample else 0
        return {
            "accepting": self.open,
            "redis_answered": answered is not None,
            "used_memory_bytes": sample.used if sample else None,
            "max_memory_bytes": bound or None,
            "high_water_bytes": round(self.high_share * bound) if bound else None,
            "low_water_bytes": round(self.low_share * bound) if bound else None,
            "backlog": sample.backlog if sample else None,
            "max_backlog": self.max_backlog or None,
            "memory_growth_bytes_per_second": round(rates[0], 1) if rates else None,
            "backlog_growth_per_second": round(rates[1], 2) if rates else None,
            "seconds_to_full": None if (full := self.seconds_to_full()) is None else round(full, 1),
            "retry_after_seconds": None if self.open else self.retry_after(),
        }


GAUGES = (
    ("captions_intake_accepting", "accepting", "1 while webhooks are accepted, 0 while they get 503 (backpressure)"),
    ("captions_redis_used_memory_bytes", "used_memory_bytes", "Redis used_memory, which its maxmemory bounds"),
    ("captions_redis_max_memory_bytes", "max_memory_bytes", "Redis maxmemory (absent: no bound)"),
    ("captions_intake_high_water_bytes", "high_water_bytes", "Redis memory at which webhooks start getting 503"),
    ("captions_redis_memory_growth_bytes_per_second", "memory_growth_bytes_per_second",
     "How fast Redis memory grows over the last half minute (negative: the drains are catching up)"),
    ("captions_intake_seconds_to_full", "seconds_to_full",
     "Seconds until the high-water mark at the current growth (+Inf: not growing)"),
)
"""The Prometheus gauges of `Gate.status()`: metric name, status key, help."""


def gauges(status: dict):
    """`status` as Prometheus gauges (receiver/metrics.py); a value not known is left out."""
    for name, key, doc in GAUGES:
        value = status[key]
        if key == "seconds_to_full" and value is None and status["max_memory_bytes"]:
            value = math.inf
        if value is not None:
            yield GaugeMetricFamily(name, doc, value=float(value))


def gate() -> Gate:
    """This process's gate, made on first use (after gunicorn's fork: one per worker)."""
    found = current_app.extensions.get("backpressure")
    if found is None:
        found = current_app.extensions["backpressure"] = Gate(redis_client(), settings())
    return found
