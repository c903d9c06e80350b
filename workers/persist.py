"""The drain job: persists queued webhook deliveries into the store, in batches.

A drain reads up to `PERSIST_BATCH_SIZE` stream entries at a time through a Redis
consumer group, writes them in one transaction, then acknowledges and deletes
them. Entries stay in the group's pending list until they are in the store, so a
drain killed mid-batch loses nothing: the next drain claims entries left idle by
a dead consumer (`STALE_AFTER_MS`) and stores them again, which the delivery log
makes a no-op for those already committed.

A batch that the database rejects is split until the offending delivery is
alone; that delivery is tried again with backoff (`REJECTED_RETRY_DELAYS`), and
only then do its items go to the dead-letter table. A database outage is waited
out (the batch is retried with backoff) rather than dead-lettered; while it
waits, the drain keeps its entries claimed so no other drain takes it for dead.

A drain frees Redis memory whatever Redis's memory. With `maxmemory` and
`noeviction`, Redis refuses the commands flagged `denyoom` (XADD, SET, LPUSH,
HSET, LMOVE, ...) once over its bound, and inside MULTI it refuses every queued
command, so a MULTI around XACK and XDEL would never run. What a drain needs in
order to free memory is only commands without that flag, sent without MULTI:
XREADGROUP and XAUTOCLAIM to read, XDEL then XACK to remove, EXPIRE and DEL for
its flag. XDEL comes first: a pair cut in the middle then leaves a pending id
whose entry is gone, which the next XAUTOCLAIM drops (Redis 7), never an
acknowledged entry still in the stream that no drain would read again. Its
other writes (taking a flag back, waking another drain, enqueuing its
successor) are SET and RQ enqueues, which Redis refuses over the bound: a
refusal there is logged and the drain carries on. When RQ itself cannot run
(it dequeues with LMOVE), the persist worker drains in its own process
(`drain_in_process`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import UTC
from datetime import datetime

import orjson
import redis
import sqlalchemy as sa

from config import Config
from store.db import write_engine
from store.results import Delivery
from store.results import known_deliveries
from store.results import save_deliveries
from store.schema import dead_letters
from store.schema import utcnow
from workers import metrics
from workers import payloads
from workers.connection import connect
from workers.queues import DELIVERY_GROUP
from workers.queues import DELIVERY_STREAM
from workers.queues import DRAIN_FLAG_TTL
from workers.queues import drain_flag
from workers.queues import enqueue_drain

log = logging.getLogger(__name__)

STALE_AFTER_MS = 15_000
"""An entry pending this long with its consumer silent is taken for abandoned and claimed
(the default of the PERSIST_STALE_AFTER_MS setting)."""

IDLE_BLOCK_MS = 500
"""How long a drain waits for new entries before it considers stopping."""

HAND_OVER_AFTER_S = 60.0
"""A drain that has run this long enqueues its successor and ends (keeps jobs short for RQ)."""

KEEP_ALIVE_EVERY_S = 1.0
"""While a drain waits for the database, how often it re-claims its entries and refreshes the flag."""

DB_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30, 30, 30, 30)
"""Seconds between attempts to write a batch while the database is unreachable."""

REJECTED_RETRY_DELAYS = (0.5, 2.0)
"""Seconds between attempts at a delivery the database rejects; after the last one it is dead-lettered."""

REFUSED_WRITES = (redis.OutOfMemoryError, redis.ReadOnlyError)
"""Redis refusing a write: over its `maxmemory` (noeviction), or a replica during a failover."""


def ensure_group(conn: redis.Redis) -> None:
    """Create the consumer group (and the stream) if missing, reading from the start.

    Redis over its bound refuses XGROUP CREATE even when the group exists: then look.
    """
    try:
        conn.xgroup_create(DELIVERY_STREAM, DELIVERY_GROUP, id="0", mkstream=True)
    except redis.OutOfMemoryError:
        if not any(g["name"].decode() == DELIVERY_GROUP for g in conn.xinfo_groups(DELIVERY_STREAM)):
            raise
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def to_delivery(entry_id: str, fields: dict[bytes, bytes]) -> Delivery:
    """A stream entry as a parsed Delivery; an unparseable body keeps its reason."""
    body = fields.get(b"body", b"")
    received_at = datetime.fromtimestamp(float(fields[b"at"]), UTC)
    try:
        results, skipped = payloads.parse(body, received_at)
    except payloads.PayloadError as exc:
        results, skipped = [], [exc.message]
    remote = fields.get(b"ip", b"").decode() or None
    labels = orjson.loads(fields[b"labels"]) if b"labels" in fields else {}
    return Delivery(entry_id, received_at, remote, len(body), results, skipped, labels)


def _is_outage(exc: sa.exc.DBAPIError) -> bool:
    return exc.connection_invalidated or isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))


def write(engine: sa.Engine, batch: list[Delivery]) -> int:
    """Store a batch, isolating deliveries the database rejects. Returns how many were new."""
    try:
        with engine.begin() as conn:
            fresh = save_deliveries(conn, batch)
        metrics.stored(fresh)
        return len(fresh)
    except sa.exc.DBAPIError as exc:
        if _is_outage(exc):
            raise
        if len(batch) > 1:
            with engine.connect() as conn:
                seen = known_deliveries(conn, [d.id for d in batch])
            if seen:
                # Another drain stored some of these meanwhile (it was slow, not dead): drop them.
                return write(engine, [d for d in batch if d.id not in seen])
            middle = len(batch) // 2
            return write(engine, batch[:middle]) + write(engine, batch[middle:])
        return _retry_rejected(engine, batch[0], exc)


def _retry_rejected(engine: sa.Engine, delivery: Delivery, exc: sa.exc.DBAPIError) -> int:
    """Try a rejected delivery again with backoff; dead-letter it when every attempt fails."""
    for delay in REJECTED_RETRY_DELAYS:
        log.warning("delivery %s rejected by the database (%s); retrying in %ss", delivery.id, exc.orig, delay)
        time.sleep(delay)
        try:
            with engine.begin() as conn:
                fresh = save_deliveries(conn, [delivery])
            metrics.stored(fresh)
            return len(fresh)
        except sa.exc.DBAPIError as again:
            if _is_outage(again):
                raise
            exc = again
    attempts = len(REJECTED_RETRY_DELAYS) + 1
    log.error("delivery %s rejected by the database %d times, dead-lettered: %s", delivery.id, attempts, exc.orig)
    return _dead_letter(engine, delivery, str(exc.orig), attempts)


def _dead_letter(engine: sa.Engine, delivery: Delivery, reason: str, attempts: int = 1) -> int:
    """Keep a delivery's items that cannot be stored, with the reason and the delivery's labels, for replay."""
    now = utcnow()
    kept = Delivery(delivery.id, delivery.received_at, delivery.remote_addr, delivery.size, [],
                    [*delivery.skipped, f"dead-lettered: {reason}"], delivery.labels)
    with engine.begin() as conn:
        # Logged once: a delivery seen again (a drain that died before acknowledging it) adds no letters.
        saved = save_deliveries(conn, [kept])
        if saved and delivery.results:
            conn.execute(dead_letters.insert(), [
                {"delivery_id": delivery.id, "task_uuid": r.task_uuid, "item": r.as_json(),
                 "labels": delivery.labels or None, "reason": reason, "attempts": attempts, "created_at": now}
                for r in delivery.results
            ])
    if saved:
        metrics.dead_lettered(delivery)
        for r in delivery.results:
            log.error("item dead-lettered", extra={"delivery_id": delivery.id, "task_uuid": r.task_uuid})
    return 1


def write_with_retry(engine: sa.Engine, batch: list[Delivery], keep_alive) -> int:
    """`write`, waiting out a database outage with backoff; re-raises when it lasts too long."""
    for delay in (*DB_RETRY_DELAYS, None):
        try:
            return write(engine, batch)
        except sa.exc.DBAPIError as exc:
            if delay is None:
                raise
            log.warning("database unavailable (%s); retrying batch in %ss", type(exc.orig).__name__, delay)
            waited = 0.0
            while waited < delay:
                keep_alive()
                step = min(KEEP_ALIVE_EVERY_S, delay - waited)
                time.sleep(step)
                waited += step
    raise AssertionError("unreachable")


class Drainer:
    """One drain job's reading position and identity in the consumer group."""

    def __init__(self, conn: redis.Redis, engine: sa.Engine, batch_size: int, stale_after_ms: int = STALE_AFTER_MS,
                 slot: int = 0, concurrency: int = 1):
        self.conn = conn
        self.slot = slot
        self.flag = drain_flag(slot)
        self.concurrency = concurrency
        self.engine = engine
        self.batch_size = batch_size
        self.stale_after_ms = stale_after_ms
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self.stored = 0
        self.in_hand: list[str] = []

    def read(self, block_ms: int | None) -> list[tuple[str, dict]]:
        """Abandoned entries first, then our own unacknowledged ones, then new ones."""
        _, claimed, _ = self.conn.xautoclaim(
            DELIVERY_STREAM, DELIVERY_GROUP, self.consumer, self.stale_after_ms, "0-0", count=self.batch_size
        )
        entries = [e for e in claimed if e[1]]
        if not entries:
            reply = self.conn.xreadgroup(
                DELIVERY_GROUP, self.consumer, {DELIVERY_STREAM: ">"}, count=self.batch_size, block=block_ms
            )
            entries = reply[0][1] if reply else []
        return [(entry_id.decode(), fields) for entry_id, fields in entries]

    def persist(self, entries: list[tuple[str, dict]]) -> None:
        """Store the entries, then acknowledge and delete them from the stream."""
        batch = [to_delivery(entry_id, fields) for entry_id, fields in entries]
        ids = self.in_hand = [entry_id for entry_id, _ in entries]
        self.stored += write_with_retry(self.engine, batch, self.keep_alive)
        pipe = self.conn.pipeline(transaction=False)  # no MULTI: see the module's docstring
        pipe.xdel(DELIVERY_STREAM, *ids)
        pipe.xack(DELIVERY_STREAM, DELIVERY_GROUP, *ids)
        pipe.expire(self.flag, DRAIN_FLAG_TTL)
        pipe.execute()

    def keep_alive(self) -> None:
        """Show this drain is alive: refresh the flag and reset the idle time of the entries in hand."""
        pipe = self.conn.pipeline(transaction=False)
        pipe.expire(self.flag, DRAIN_FLAG_TTL)
        if self.in_hand:
            pipe.xclaim(DELIVERY_STREAM, DELIVERY_GROUP, self.consumer, 0, self.in_hand, justid=True)
        try:
            pipe.execute()
        except redis.RedisError as exc:  # the batch is still worth writing; acknowledging it will tell
            log.warning("could not refresh the drain's claim: %s", type(exc).__name__)

    def scale_out(self) -> None:
        """A full batch means a backlog: wake the next drain slot, up to PERSIST_CONCURRENCY."""
        nxt = self.slot + 1
        try:
            if nxt < self.concurrency and self.conn.set(drain_flag(nxt), 1, nx=True, ex=DRAIN_FLAG_TTL):
                enqueue_drain(self.conn, nxt)
        except REFUSED_WRITES as exc:
            log.warning("could not wake drain %d (%s); draining alone", nxt, type(exc).__name__)

    def hand_over(self) -> bool:
        """Enqueue this drain's successor; False when Redis refuses it (the drain then goes on itself)."""
        try:
            enqueue_drain(self.conn)
        except REFUSED_WRITES as exc:
            log.warning("could not enqueue the next drain (%s); this one goes on", type(exc).__name__)
            return False
        return True

    def take_flag(self) -> bool:
        """Set this drain's flag again; True when it is ours (also when Redis refuses the SET:
        then no one else could take it either)."""
        try:
            return bool(self.conn.set(self.flag, 1, nx=True, ex=DRAIN_FLAG_TTL))
        except REFUSED_WRITES as exc:
            log.warning("could not set the drain's flag (%s); draining on", type(exc).__name__)
            return True

    def run(self, hand_over_after: float = HAND_OVER_AFTER_S) -> int:
        """Drain until the stream is empty or it is time to hand over. Returns deliveries stored.

        Slot 0 guarantees progress (see the flag dance below); the drains that join
        it under a backlog simply stop, clearing their own flag, when idle or due.
        """
        ensure_group(self.conn)
        deadline = time.monotonic() + hand_over_after
        while True:
            entries = self.read(IDLE_BLOCK_MS)
            if len(entries) == self.batch_size:
                self.scale_out()
            if self.slot and (not entries or time.monotonic() > deadline):
                if entries:
                    self.persist(entries)
                self.conn.delete(self.flag)
                return self.stored
            if not entries:
                # Clear the flag, then look once more: a delivery added before the clear
                # is seen here; one added after it sets the flag and enqueues a new drain.
                self.conn.delete(self.flag)
                entries = self.read(None)
                if not entries:
                    return self.stored
                if not self.take_flag():
                    self.persist(entries)
                    return self.stored
            self.persist(entries)
            if time.monotonic() > deadline and self.hand_over():
                return self.stored


def drain_in_process(config: Config, hand_over_after: float = HAND_OVER_AFTER_S) -> int:
    """Drain in the calling process, outside RQ: what the persist worker does while Redis
    refuses RQ's own writes. It takes the spare slot (`PERSIST_CONCURRENCY`, one past the
    joiners), so it runs beside the RQ drains, wakes none, and stops when idle or due."""
    drainer = Drainer(connect(config), write_engine(config), config.persist_batch_size,
                      config.persist_stale_after_ms, config.persist_concurrency, config.persist_concurrency)
    try:
        return drainer.run(hand_over_after)
    finally:
        drainer.conn.close()


def drain(hand_over_after: float = HAND_OVER_AFTER_S, slot: int = 0) -> int:
    """RQ job: persist queued deliveries in batches. Returns how many deliveries were stored."""
    config = Config.from_env()
    drainer = Drainer(connect(config), write_engine(config), config.persist_batch_size,
                      config.persist_stale_after_ms, slot, config.persist_concurrency)
    stored = drainer.run(hand_over_after)
    log.info("drain stored %d deliveries", stored, extra={"stored": stored})
    return stored
