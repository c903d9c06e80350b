"""Housekeeping: the drain sweep, delivery-log retention, and dead-letter listing and replay.

- `sweep` (RQ cron, every `SWEEP_INTERVAL_S`): guarantees progress when no new
  delivery arrives to enqueue a drain. It enqueues one when the stream holds
  entries and no drain is wanted, or when entries sit abandoned or unread while
  the flag of a dead drain lingers. So a delivery in Redis reaches the store
  within seconds of a crash, not after RQ's ten-minute maintenance pass.
- `cleanup` (RQ cron, hourly, on the maintenance queue): deletes the delivery
  log older than `DELIVERY_RETENTION_DAYS` with the task events (history) as old, dead letters replayed before
  that, and thumbnails older than `THUMBNAIL_RETENTION_DAYS`, in batches, each batch its own short transaction.
  One job is a slice of at most `CLEANUP_SLICE_S`; while rows remain it enqueues the next slice. It
  never deletes the log of a delivery still in the stream (its idempotency record).
- `list_dead_letters` / `replay_dead_letters`: what the API and the CLI
  (`flask deadletters ...`) call. A replay applies a letter's item, with the
  labels of the delivery it came with, to the store and marks the letter
  replayed in one transaction, claimed first, so replaying the same letters
  twice, even concurrently, stores each once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from decimal import Decimal

import redis
import sqlalchemy as sa
from rq import Queue

from config import Config
from store.db import write_engine
from store.results import Label
from store.results import Result
from store.results import apply_results
from store.results import merge_labels
from store.schema import dead_letters
from store.schema import deliveries
from store.schema import task_events
from store.schema import thumbnails
from store.schema import utcnow
from workers.connection import connect
from workers.persist import _is_outage as is_outage
from workers.persist import ensure_group
from workers.queues import DELIVERY_GROUP
from workers.queues import DELIVERY_STREAM
from workers.queues import MAINTENANCE_QUEUE
from workers.queues import enqueue_drain
from workers.queues import want_drain

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 5
"""How often the cron process (`python -m workers cron`) runs `sweep`."""

RESCUE_KEY = "captions:drain:rescue"
"""Set (for one stale period) when the sweep enqueued a drain for abandoned entries: one rescue at a time."""

CLEANUP_BATCH = 5000
"""Rows deleted per transaction by the retention cleanup."""

CLEANUP_SLICE_S = 10.0
"""Seconds after which a cleanup job starts no new batch; the next slice, which it enqueues, goes on."""

CLEANUP_JOB_OPTIONS = {"job_timeout": 120, "result_ttl": 3600, "failure_ttl": 7 * 86400}
"""RQ options of a cleanup slice, scheduled or enqueued by the slice before."""

CLOCK_MARGIN = timedelta(hours=1)
"""Kept beyond the oldest stream entry, for clock skew between Redis and the web hosts."""

REPLAY_LIMIT = 1000
"""Letters one replay call handles at most; the answer says how many remain."""


# -- the sweep -----------------------------------------------------------------------------------


def unread_for_ms(conn: redis.Redis) -> int:
    """How long the oldest entry no drain has read yet has waited (0 when there is none)."""
    group = next(g for g in conn.xinfo_groups(DELIVERY_STREAM) if g["name"].decode() == DELIVERY_GROUP)
    first = conn.xrange(DELIVERY_STREAM, f"({group['last-delivered-id'].decode()}", "+", count=1)
    if not first:
        return 0
    seconds, micros = conn.time()
    return seconds * 1000 + micros // 1000 - int(first[0][0].split(b"-")[0])


def sweep_stream(conn: redis.Redis, stale_after_ms: int) -> str:
    """Enqueue a drain if deliveries wait and none will come; says what it did.

    The flag says a drain is queued or running, but a drain killed with the
    flag set (or a flag restored by Redis after a restart) keeps it for up to
    DRAIN_FLAG_TTL. So the sweep also looks at the entries: some read by a
    drain and left unacknowledged for the stale period, or none read at all for
    that long, mean no drain is at work, and it enqueues one (at most one per
    stale period; a spare drain alongside a live one is harmless).
    """
    if not conn.xlen(DELIVERY_STREAM):
        return "idle"
    if want_drain(conn):
        return "enqueued"
    ensure_group(conn)
    abandoned = conn.xpending_range(DELIVERY_STREAM, DELIVERY_GROUP, "-", "+", 1, idle=stale_after_ms)
    stuck = abandoned or unread_for_ms(conn) > stale_after_ms
    if stuck and conn.set(RESCUE_KEY, 1, nx=True, px=stale_after_ms):
        enqueue_drain(conn)
        return "rescued"
    return "draining"


def sweep() -> str:
    """RQ job: see `sweep_stream`."""
    config = Config.from_env()
    outcome = sweep_stream(connect(config), config.persist_stale_after_ms)
    if outcome == "rescued":
        log.warning("sweep: deliveries abandoned by a dead drain; enqueued a new drain")
    return outcome


def run_cron(conn: redis.Redis, schedule: str = "workers.schedule") -> int:
    """Run RQ's cron scheduler for `schedule`, and keep running it across Redis outages.

    `rq cron` exits on the first Redis connection error; under honcho that stops
    the whole stack, under systemd it is restarted until its start limit gives up.
    The sweep is what guarantees the drain's progress, so its scheduler waits
    Redis out instead, and returns only when asked to stop (SIGTERM, Ctrl-C).
    """
    from rq.cron import CronScheduler
    from rq.exceptions import StopRequested

    scheduler = CronScheduler(connection=conn)
    scheduler.load_config_from_file(schedule)
    delay = 1.0
    while True:
        started = time.monotonic()
        try:
            scheduler.start()  # returns when stopped; raises when Redis fails
            return 0
        except redis.RedisError as exc:
            if time.monotonic() - started > 60:
                delay = 1.0
            log.warning("cron: Redis unavailable (%s); starting again in %.0fs", type(exc).__name__, delay)
        try:
            time.sleep(delay)
        except (StopRequested, KeyboardInterrupt):
            return 0
        delay = min(delay * 2, 30.0)


# -- retention -----------------------------------------------------------------------------------


def oldest_queued_at(conn: redis.Redis) -> datetime | None:
    """When the oldest entry still in the delivery stream was added (from its id), if any."""
    first = conn.xrange(DELIVERY_STREAM, "-", "+", count=1)
    if not first:
        return None
    millis = int(first[0][0].split(b"-")[0])
    return datetime.fromtimestamp(millis / 1000, UTC)


def _delete_in_batches(engine: sa.Engine, table: sa.Table, key: sa.Column, *where, batch_size: int,
                       stop_at: float) -> tuple[int, bool]:
    """Delete the rows matching `where`, a batch per transaction: (rows deleted, True once none is left).

    No batch starts after `stop_at` (a `time.monotonic()` value) but the first, so every call progresses.
    """
    deleted = 0
    while True:
        chosen = sa.select(key).where(*where).limit(batch_size).scalar_subquery()
        with engine.begin() as conn:
            count = conn.execute(table.delete().where(key.in_(chosen))).rowcount
        deleted += count
        if count < batch_size:
            return deleted, True
        if time.monotonic() >= stop_at:
            return deleted, False


def purge(engine: sa.Engine, before: datetime, batch_size: int = CLEANUP_BATCH,
          seconds: float = CLEANUP_SLICE_S, thumbnails_before: datetime | None = None) -> dict:
    """Delete the delivery log received before `before`, the task events (history) before it, then dead letters
    replayed before it, then the thumbnails made before `thumbnails_before` (none without it), for `seconds`.

    Returns the rows deleted per table, and `finished`: False when time ran out first.
    """
    stop_at = time.monotonic() + seconds
    log_rows, finished = _delete_in_batches(engine, deliveries, deliveries.c.id, deliveries.c.received_at < before,
                                            batch_size=batch_size, stop_at=stop_at)
    events = letters = 0
    if finished:
        events, finished = _delete_in_batches(engine, task_events, task_events.c.id, task_events.c.at < before,
                                              batch_size=batch_size, stop_at=stop_at)
    if finished:
        letters, finished = _delete_in_batches(engine, dead_letters, dead_letters.c.id,
                                               dead_letters.c.replayed_at < before, batch_size=batch_size,
                                               stop_at=stop_at)
    images = 0
    if finished and thumbnails_before is not None:
        images, finished = _delete_in_batches(engine, thumbnails, thumbnails.c.task_uuid,
                                              thumbnails.c.created_at < thumbnails_before, batch_size=batch_size,
                                              stop_at=stop_at)
    return {"deliveries": log_rows, "task_events": events, "dead_letters": letters, "thumbnails": images,
            "finished": finished}


def retention_cutoff(config: Config, conn: redis.Redis | None, now: datetime | None = None) -> datetime:
    """`DELIVERY_RETENTION_DAYS` ago, or earlier if a delivery that old is still in the stream."""
    cutoff = (now or utcnow()) - timedelta(days=config.delivery_retention_days)
    oldest = oldest_queued_at(conn) if conn is not None else None
    if oldest is not None:
        cutoff = min(cutoff, oldest - CLOCK_MARGIN)
    return cutoff


def cleanup() -> dict:
    """RQ job: one slice of the retention period (`purge`); enqueues the next slice while rows remain.

    Two chains of slices at once (the next hour's beside one still going) are
    harmless: they delete old rows only, and both end when none is left.
    """
    config = Config.from_env()
    conn = connect(config)
    cutoff = retention_cutoff(config, conn)
    thumbnails_cutoff = utcnow() - timedelta(days=config.thumbnail_retention_days)
    deleted = purge(write_engine(config), cutoff, CLEANUP_BATCH, CLEANUP_SLICE_S, thumbnails_cutoff)
    log.info("retention: deleted %s (before %s)", deleted, cutoff.isoformat())
    if not deleted["finished"]:
        Queue(MAINTENANCE_QUEUE, connection=conn).enqueue(cleanup, **CLEANUP_JOB_OPTIONS)
    return deleted


# -- dead letters --------------------------------------------------------------------------------

LETTER_FIELDS = ("id", "delivery_id", "task_uuid", "item", "labels", "reason", "attempts", "created_at", "replayed_at")


def letter_json(row: sa.RowMapping) -> dict:
    return {name: row[name].isoformat() if isinstance(row[name], datetime) else row[name] for name in LETTER_FIELDS}


def _selection(*, ids=None, since=None, until=None) -> list:
    where = []
    if ids is not None:
        where.append(dead_letters.c.id.in_(list(ids)))
    if since is not None:
        where.append(dead_letters.c.created_at >= since)
    if until is not None:
        where.append(dead_letters.c.created_at < until)
    return where


def list_dead_letters(conn: sa.Connection, *, state: str = "pending", since: datetime | None = None,
                      until: datetime | None = None, after: int = 0, limit: int = 100) -> list[dict]:
    """Dead letters in id order; `state` is pending (not replayed), replayed or all."""
    where = [*_selection(since=since, until=until), dead_letters.c.id > after]
    if state == "pending":
        where.append(dead_letters.c.replayed_at.is_(None))
    elif state == "replayed":
        where.append(dead_letters.c.replayed_at.is_not(None))
    rows = conn.execute(sa.select(dead_letters).where(*where).order_by(dead_letters.c.id).limit(limit)).mappings()
    return [letter_json(row) for row in rows]


def count_dead_letters(conn: sa.Connection) -> dict[str, int]:
    pending = sa.func.count().filter(dead_letters.c.replayed_at.is_(None))
    row = conn.execute(sa.select(pending, sa.func.count()).select_from(dead_letters)).one()
    return {"pending": row[0], "replayed": row[1] - row[0]}


@dataclass
class ReplayReport:
    """What a replay did: letters stored, letters refused again (with the reason), how many remain."""

    replayed: list[int] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    remaining: int = 0

    def as_json(self) -> dict:
        return {"replayed": len(self.replayed), "replayed_ids": self.replayed, "failed": self.failed,
                "remaining": self.remaining}


def to_result(item: dict, received_at: datetime) -> Result:
    """A dead letter's item (as `Result.as_json` wrote it) as a Result again."""
    values = {k: v for k, v in item.items() if k in Result.__dataclass_fields__ and k != "received_at"}
    if values.get("cost") is not None:
        values["cost"] = Decimal(str(values["cost"]))
    return Result(received_at=received_at, **values)


def _replay_one(conn: sa.Connection, letter: sa.RowMapping) -> bool:
    """Claim the letter (it may have been replayed meanwhile), then store its item. False if claimed already."""
    claimed = conn.execute(
        dead_letters.update()
        .where(dead_letters.c.id == letter["id"], dead_letters.c.replayed_at.is_(None))
        .values(replayed_at=utcnow())
    ).rowcount
    if claimed != 1:
        return False
    result = to_result(letter["item"], letter["received_at"] or letter["created_at"])
    apply_results(conn, [result])
    merge_labels(conn, (Label(result.task_uuid, key, value, result.received_at)
                        for key, value in (letter["labels"] or {}).items()))
    return True


def replay_dead_letters(engine: sa.Engine, *, ids: list[int] | None = None, since: datetime | None = None,
                        until: datetime | None = None, limit: int = REPLAY_LIMIT) -> ReplayReport:
    """Store the items of pending dead letters chosen by id, by dead-lettering time, or all (no filter).

    Each letter is stored in a transaction of its own, so one refused again does
    not hold back the others; it stays pending, its attempts counted and its
    reason updated. A database outage raises (nothing is marked replayed that
    was not stored).
    """
    where = [*_selection(ids=ids, since=since, until=until), dead_letters.c.replayed_at.is_(None)]
    query = (
        sa.select(dead_letters, deliveries.c.received_at)
        .select_from(dead_letters.outerjoin(deliveries, deliveries.c.id == dead_letters.c.delivery_id))
        .where(*where).order_by(dead_letters.c.id)
    )
    report = ReplayReport()
    with engine.connect() as conn:
        letters = conn.execute(query.limit(limit)).mappings().all()
    for letter in letters:
        try:
            with engine.begin() as conn:
                if _replay_one(conn, letter):
                    report.replayed.append(letter["id"])
        except (sa.exc.DBAPIError, TypeError, ValueError) as exc:
            if isinstance(exc, sa.exc.DBAPIError) and is_outage(exc):
                raise
            reason = str(exc.orig) if isinstance(exc, sa.exc.DBAPIError) else f"the item is not a stored result: {exc}"
            with engine.begin() as conn:
                conn.execute(dead_letters.update().where(dead_letters.c.id == letter["id"])
                             .values(attempts=dead_letters.c.attempts + 1, reason=reason))
            report.failed.append({"id": letter["id"], "reason": reason})
    with engine.connect() as conn:
        report.remaining = conn.scalar(sa.select(sa.func.count()).select_from(dead_letters).where(*where))
    log.info("dead letters replayed: %d, refused again: %d, still pending: %d",
             len(report.replayed), len(report.failed), report.remaining)
    return report


def replay(*, ids: list[int] | None = None, since: datetime | None = None, until: datetime | None = None,
           limit: int = REPLAY_LIMIT) -> dict:
    """RQ job (and CLI helper): `replay_dead_letters` on the configured store."""
    config = Config.from_env()
    return replay_dead_letters(write_engine(config), ids=ids, since=since, until=until,
                               limit=limit).as_json()
