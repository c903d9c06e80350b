"""Writing, claiming and scheduling the tasks this service submits to Runware.

A submitted task's life in the `tasks` table:

1. `queue_tasks` stores it as `queued`, with the image to send in `input_ref`.
2. `claim_queued` takes due queued tasks for one Runware request. A claim is a
   lease: `next_poll_at` is pushed to the end of the lease and `submit_attempts`
   counted, so a second submit worker skips the task, and a worker that dies
   mid-request leaves it to be claimed again once the lease ends. `release`
   hands a task back at once (to be sent again later).
3. The answer's results go through `store.results.apply_results`, which moves
   the status up only; `mark_submitted` records the send time and when to poll.
4. `claim_polls` takes submitted tasks whose result is overdue, with the same
   lease, so two reconcile slices never poll the same task at once, and
   `schedule_polls` sets each one's next poll (backoff).
5. `clear_inputs` drops the image of tasks in a final state.

`next_poll_at` is thus "when a job should next look at this task": the end of a
claim for a queued task, the next getResponse for a submitted one.

Claims are safe with several workers: on PostgreSQL the candidate rows are
locked with `FOR UPDATE SKIP LOCKED`; SQLite has a single writer, and a claim is
one `UPDATE … RETURNING` statement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from datetime import datetime
from datetime import timedelta

import sqlalchemy as sa

from store import thumbnails
from store.results import Label
from store.results import insert_rows
from store.results import merge_labels
from store.schema import FINAL_STATUSES
from store.schema import task_labels
from store.schema import tasks
from store.schema import utcnow

CAPTION_TASK_TYPE = "imageCaption"


@dataclass(frozen=True)
class NewTask:
    """A task to store as queued."""

    task_uuid: str
    input_ref: str
    input_name: str | None = None
    model: str | None = None
    include_cost: bool = True
    delivery_method: str = "async"
    labels: dict[str, str] = field(default_factory=dict)
    input_path: str | None = None
    """The local file's absolute path, when the command line read one (for caption sidecars)."""


@dataclass(frozen=True)
class Claimed:
    """A queued task claimed for sending; `attempts` counts this claim."""

    task_uuid: str
    input_ref: str | None
    model: str | None
    include_cost: bool
    delivery_method: str
    attempts: int
    labels: dict[str, str] = field(default_factory=dict)


def queue_tasks(conn: sa.Connection, new: Iterable[NewTask]) -> int:
    """Store tasks as queued (source `submitted`), with their labels, given at the queue time, and the thumbnails of
    their images (store/thumbnails.py). Returns how many."""
    now = utcnow()
    new = list(new)
    rows = [
        {
            "task_uuid": t.task_uuid,
            "status": "queued",
            "source": "submitted",
            "task_type": CAPTION_TASK_TYPE,
            "model": t.model,
            "input_ref": t.input_ref,
            "input_name": t.input_name,
            "input_path": t.input_path,
            "include_cost": t.include_cost,
            "delivery_method": t.delivery_method,
            "created_at": now,
            "updated_at": now,
        }
        for t in new
    ]
    if rows:
        insert_rows(conn, tasks.insert(), rows)
        merge_labels(conn, (Label(t.task_uuid, key, value, now) for t in new for key, value in t.labels.items()))
        thumbnails.save(conn, ((t.task_uuid, t.input_ref) for t in new), now)
    return len(rows)


def _due(now: datetime) -> sa.ColumnElement:
    return sa.or_(tasks.c.next_poll_at.is_(None), tasks.c.next_poll_at <= now)


def _claim(conn: sa.Connection, where: sa.ColumnElement, order: sa.ColumnElement, limit: int,
           values: dict, returning: tuple) -> list[sa.Row]:
    """Lease up to `limit` rows matching `where`, first by `order` (then taskUUID): one UPDATE … RETURNING."""
    pick = sa.select(tasks.c.task_uuid).where(where).order_by(order, tasks.c.task_uuid).limit(limit)
    if conn.dialect.name == "postgresql":
        # Materialised, so the LIMIT applies once: as a plain IN subquery, PostgreSQL may
        # rescan it per row of a semi-join and lease far more than `limit` rows.
        picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
    else:
        picked = pick.cte("picked")
    stmt = (tasks.update().where(tasks.c.task_uuid.in_(sa.select(picked.c.task_uuid)), where)
            .values(**values).returning(*returning))
    return list(conn.execute(stmt))


def claim_queued(conn: sa.Connection, limit: int, lease_seconds: float, now: datetime | None = None) -> list[Claimed]:
    """Claim up to `limit` due queued tasks, oldest first (tasks stored together: by taskUUID), for `lease_seconds`."""
    now = now or utcnow()
    rows = _claim(
        conn,
        sa.and_(tasks.c.status == "queued", _due(now)),
        tasks.c.created_at,
        limit,
        {"submit_attempts": tasks.c.submit_attempts + 1, "next_poll_at": now + timedelta(seconds=lease_seconds),
         "updated_at": now},
        (tasks.c.task_uuid, tasks.c.input_ref, tasks.c.model, tasks.c.include_cost, tasks.c.delivery_method,
         tasks.c.submit_attempts, tasks.c.created_at),
    )
    rows.sort(key=lambda r: (r.created_at, r.task_uuid))
    return [Claimed(r.task_uuid, r.input_ref, r.model, r.include_cost is not False, r.delivery_method or "async",
                    r.submit_attempts) for r in rows]


def with_labels(conn: sa.Connection, claimed: list[Claimed]) -> list[Claimed]:
    """The claimed tasks with their labels, which go in the webhookURL they are sent with."""
    labels: dict[str, dict[str, str]] = {}
    if claimed:
        query = sa.select(task_labels.c.task_uuid, task_labels.c.key, task_labels.c.value).where(
            task_labels.c.task_uuid.in_([c.task_uuid for c in claimed])).order_by(task_labels.c.key)
        for task_uuid, key, value in conn.execute(query):
            labels.setdefault(task_uuid, {})[key] = value
    return [replace(c, labels=labels.get(c.task_uuid, {})) for c in claimed]


def release(conn: sa.Connection, task_uuids: Iterable[str]) -> None:
    """End the claim of tasks still queued, so that the next submit job sends them."""
    uuids = list(task_uuids)
    if uuids:
        conn.execute(tasks.update().where(tasks.c.task_uuid.in_(uuids), tasks.c.status == "queued")
                     .values(next_poll_at=None, updated_at=utcnow()))


def has_due_queued(conn: sa.Connection, now: datetime | None = None) -> bool:
    """True when some queued task is waiting to be sent (not under a claim)."""
    now = now or utcnow()
    stmt = sa.select(tasks.c.task_uuid).where(tasks.c.status == "queued", _due(now)).limit(1)
    return conn.execute(stmt).first() is not None


def mark_submitted(conn: sa.Connection, task_uuids: Iterable[str], poll_at: datetime,
                   now: datetime | None = None) -> None:
    """Record that Runware took the tasks: the send time (the first one kept) and when to poll if no result comes."""
    uuids = list(task_uuids)
    if not uuids:
        return
    now = now or utcnow()
    conn.execute(
        tasks.update()
        .where(tasks.c.task_uuid.in_(uuids))
        .values(
            submitted_at=sa.func.coalesce(tasks.c.submitted_at, now),
            next_poll_at=sa.case((tasks.c.status == "submitted", poll_at), else_=None),
            updated_at=now,
        )
    )


def claim_polls(conn: sa.Connection, limit: int, after_seconds: float, lease_seconds: float,
                now: datetime | None = None) -> list[tuple[str, int, datetime]]:
    """Claim up to `limit` tasks submitted over `after_seconds` ago and due a poll, the longest due first.

    Returns (taskUUID, poll attempts counting this one, submitted at) per task.
    """
    now = now or utcnow()
    rows = _claim(
        conn,
        sa.and_(tasks.c.status == "submitted", tasks.c.submitted_at <= now - timedelta(seconds=after_seconds),
                _due(now)),
        tasks.c.next_poll_at,
        limit,
        {"poll_attempts": tasks.c.poll_attempts + 1, "next_poll_at": now + timedelta(seconds=lease_seconds),
         "updated_at": now},
        (tasks.c.task_uuid, tasks.c.poll_attempts, tasks.c.submitted_at),
    )
    return [(r.task_uuid, r.poll_attempts, r.submitted_at) for r in rows]


def schedule_polls(conn: sa.Connection, when: dict[str, datetime]) -> None:
    """Set the next poll of each task still submitted."""
    if not when:
        return
    stmt = (
        tasks.update()
        .where(tasks.c.task_uuid == sa.bindparam("uuid"), tasks.c.status == "submitted")
        .values(next_poll_at=sa.bindparam("at"), updated_at=utcnow())
    )
    conn.execute(stmt, [{"uuid": uuid, "at": at} for uuid, at in when.items()])


def clear_inputs(conn: sa.Connection, task_uuids: Iterable[str] | None = None,
                 since: datetime | None = None) -> int:
    """Drop the stored image of finished tasks: of `task_uuids`, or of those updated `since`. Returns how many.

    The sweep by time reads only recently changed rows (index on `updated_at`),
    not every finished task ever stored.
    """
    where = [tasks.c.status.in_(FINAL_STATUSES), tasks.c.input_ref.is_not(None)]
    if task_uuids is not None:
        uuids = list(task_uuids)
        if not uuids:
            return 0
        where.append(tasks.c.task_uuid.in_(uuids))
    elif since is not None:
        where.append(tasks.c.updated_at >= since)
    else:
        raise ValueError("clear_inputs needs task_uuids or since")
    return conn.execute(tasks.update().where(*where).values(input_ref=None)).rowcount


def outcomes(conn: sa.Connection, task_uuids: Iterable[str]) -> list[sa.Row]:
    """Status, result and name of each of `task_uuids` (for the CLI and the submit API)."""
    uuids = list(task_uuids)
    if not uuids:
        return []
    stmt = sa.select(
        tasks.c.task_uuid, tasks.c.status, tasks.c.input_name, tasks.c.text, tasks.c.cost,
        tasks.c.error_code, tasks.c.error_message,
    ).where(tasks.c.task_uuid.in_(uuids))
    return list(conn.execute(stmt))
