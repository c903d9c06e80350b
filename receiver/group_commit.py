"""Group commit: the webhooks a web process serves at once share one Redis round trip.

With `appendfsync always` every round trip to Redis costs an fsync before the
reply, and every round trip costs the web process a send, a wait and a receive.
A process that serves several requests at once (gunicorn's `gthread` workers:
deploy/gunicorn.conf.py) therefore queues them together: each request hands its
stream entry to the process's `GroupCommit`; the first request to find no round
trip under way becomes the leader and sends every entry waiting at that moment,
its own included, in one pipeline (`workers.queues.add_deliveries`); requests
arriving meanwhile wait for that round trip and form the next group.

No request waits for a group to fill: a lone request is sent at once, alone, so
it is not slowed, and a request waits at most for the round trip before its own.
Each request is answered from its own entry's reply: 2xx only once Redis has
confirmed that entry (and so written it to its append-only file), 503 when Redis
refused that entry or did not answer. With REDIS_MIN_REPLICAS_ACK the round
trip ends with Redis's WAIT, so a group's entries are confirmed once they reached
that many replicas, or refused (ReplicasBehind) when fewer confirmed in time.
Under a `sync` worker each group is one request, the round trip of
`workers.queues.queue_delivery`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis
from flask import current_app

from receiver.state import redis_client
from receiver.state import settings
from workers.queues import add_deliveries


@dataclass
class Pending:
    """One request's entry, and once its group's round trip is over, Redis's reply for it."""

    fields: dict
    reply: str | Exception | None = None


class GroupCommit:
    """One web process's queue of entries waiting for Redis, and the round trip under way."""

    def __init__(self, conn: redis.Redis, replicas: int = 0, replica_timeout_ms: int = 0):
        self.conn = conn
        self.replicas, self.replica_timeout_ms = replicas, replica_timeout_ms
        self.changed = threading.Condition()
        self.waiting: list[Pending] = []
        self.sending = False

    def add(self, fields: dict) -> str:
        """Add one entry to the stream with whichever others are waiting; its id once Redis has it.

        Raises redis.RedisError when Redis refused this entry or did not answer.
        """
        mine = Pending(fields)
        with self.changed:
            self.waiting.append(mine)
            while self.sending and mine.reply is None:
                self.changed.wait()
            if mine.reply is None:  # not sent yet, and no round trip under way: lead the next one
                group, self.waiting, self.sending = self.waiting, [], True
        if mine.reply is None:
            self._send(group)
        if isinstance(mine.reply, Exception):
            raise mine.reply
        return mine.reply

    def _send(self, group: list[Pending]) -> None:
        """One round trip for `group`; then every request waiting wakes, to its reply or to lead."""
        replies: list = []
        try:
            replies = add_deliveries(self.conn, [p.fields for p in group], self.replicas, self.replica_timeout_ms)
        except Exception as exc:  # each request of the group answers for it (503, or a 500 for a bug)
            replies = [exc] * len(group)
        finally:
            with self.changed:
                for pending, reply in zip(group, replies):
                    pending.reply = reply
                self.sending = False
                self.changed.notify_all()


def group_commit() -> GroupCommit:
    """This process's group commit, made on first use (after gunicorn's fork: one per worker)."""
    found = current_app.extensions.get("group_commit")
    if found is None:
        config = settings()
        found = current_app.extensions["group_commit"] = GroupCommit(
            redis_client(), config.redis_min_replicas_ack, config.redis_replica_ack_timeout_ms)
    return found
