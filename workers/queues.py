"""Queue names, Redis keys and the enqueue helpers shared by the receiver and the workers.

A webhook delivery is one entry in a Redis stream, not one RQ job: the RQ job is
the unit of work (a `drain` that persists deliveries in batches), the stream entry
the unit of data. The receiver adds the entry and, in the same round trip, sets a
"drain wanted" flag; only the round trip that sets the flag enqueues a drain job.
"""

from __future__ import annotations

from datetime import datetime

import redis
from rq import Queue

PERSIST_QUEUE = "persist"
"""RQ queue of the drain jobs that persist webhook deliveries."""

SUBMIT_QUEUE = "submit"
"""RQ queue of the jobs that submit caption tasks to Runware."""

MAINTENANCE_QUEUE = "maintenance"
"""RQ queue of the background jobs (reconciliation, retention), in bounded slices, away from foreground work."""

DELIVERY_STREAM = "captions:deliveries"
"""Redis stream of accepted webhook bodies; an entry is removed once it is in the store."""

DELIVERY_GROUP = "persist"
"""Consumer group of the drain jobs on the delivery stream."""

DRAIN_FLAG = "captions:drain:wanted"
"""Set while a drain job is queued or running; whoever sets it enqueues one."""

DRAIN_FLAG_TTL = 30
"""Seconds the flag outlives a drain job that died without clearing it."""

DRAIN_JOB = "workers.persist.drain"
DRAIN_JOB_TIMEOUT = 600
"""Seconds RQ lets one drain job run (it hands over well before, see workers.persist)."""


class ReplicasBehind(redis.RedisError):
    """Fewer replicas than REDIS_MIN_REPLICAS_ACK confirmed an entry in time: it may be on the primary alone."""


def drain_flag(slot: int = 0) -> str:
    """The flag of drain `slot`: 0 is the drain every delivery wants; 1, 2, … join it under a backlog."""
    return DRAIN_FLAG if slot == 0 else f"{DRAIN_FLAG}:{slot}"


def enqueue_drain(conn: redis.Redis, slot: int = 0) -> None:
    """Enqueue a drain job for `slot` (the caller holds that slot's flag)."""
    Queue(PERSIST_QUEUE, connection=conn).enqueue(
        DRAIN_JOB, kwargs={"slot": slot} if slot else None,
        job_timeout=DRAIN_JOB_TIMEOUT, result_ttl=0, failure_ttl=7 * 86400,
    )


def want_drain(conn: redis.Redis) -> bool:
    """Make sure a drain job is queued or running; True when this call enqueued one."""
    if conn.set(DRAIN_FLAG, 1, nx=True, ex=DRAIN_FLAG_TTL):
        enqueue_drain(conn)
        return True
    return False


def delivery_fields(body: bytes, remote_addr: str | None, received_at: datetime,
                    webhook_id: str | None = None, labels: bytes | None = None) -> dict[str, bytes | float | str]:
    """The stream entry of an accepted webhook body: the body as received, when, from where.

    `webhook_id` (the sender's Standard Webhooks message id, constant across its
    retries) is kept as `wid` when given, for deduplication; `labels` (the URL's
    labels as a JSON object) as `labels`.
    """
    fields = {"body": body, "at": received_at.timestamp(), "ip": remote_addr or ""}
    if webhook_id:
        fields["wid"] = webhook_id
    if labels:
        fields["labels"] = labels
    return fields


def add_deliveries(conn: redis.Redis, entries: list[dict], replicas: int = 0,
                   replica_timeout_ms: int = 0) -> list[str | redis.RedisError]:
    """XADD each entry to the stream, then set the "drain wanted" flag, in one round trip.

    With `appendfsync always` Redis replies once the whole round trip is in its
    append-only file: one fsync for every entry. With `replicas`, the round trip
    ends with `WAIT replicas replica_timeout_ms`, and entries fewer replicas
    confirmed get ReplicasBehind. Returns, per entry, its id or the error Redis
    gave for it. Raises redis.RedisError when Redis does not answer, or refuses
    the flag; then no entry may be answered 2xx.
    """
    # No MULTI needed: a drain clears the flag and then reads once more, so an entry
    # added on either side of that clear is seen by it or by the drain this call enqueues.
    pipe = conn.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(DELIVERY_STREAM, fields)
    pipe.set(DRAIN_FLAG, 1, nx=True, ex=DRAIN_FLAG_TTL)
    if replicas:
        pipe.wait(replicas, replica_timeout_ms)
    results = pipe.execute(raise_on_error=False)
    acked = results.pop() if replicas else None
    *replies, flagged = results
    if isinstance(flagged, redis.RedisError):
        raise flagged
    if flagged:
        enqueue_drain(conn)
    if replicas and (isinstance(acked, redis.RedisError) or acked < replicas):
        behind = ReplicasBehind(f"{acked} of {replicas} replicas confirmed within {replica_timeout_ms} ms")
        replies = [r if isinstance(r, redis.RedisError) else behind for r in replies]
    return [r if isinstance(r, redis.RedisError) else r.decode() for r in replies]


def queue_delivery(conn: redis.Redis, body: bytes, remote_addr: str | None, received_at: datetime,
                   webhook_id: str | None = None) -> str:
    """Add an accepted webhook body to the stream; returns its entry id once Redis has it.

    Raises redis.RedisError when Redis cannot take it (the caller answers 503). The
    intake shares the round trip among the requests a web process serves at once
    (receiver/group_commit.py).
    """
    [reply] = add_deliveries(conn, [delivery_fields(body, remote_addr, received_at, webhook_id)])
    if isinstance(reply, redis.RedisError):
        raise reply
    return reply
