"""A task's whole history, oldest first: the webhook items delivered for it, its submission attempts and its polls.

Written with the results they carry (`store.results.record_events`, into `task_events`),
read here through `ix_task_events_task` (task, time): a task's history costs a range
of that index however large the log.

`changedResult` replays the merge rule of store/results.py over the history in
receipt order: a result changed the task's stored result if its final status
outranks every result received before it (between two of the same status the
first received wins, so a later one changes nothing). The last event with
`changedResult` therefore holds the stored result, however the drains batched
and ordered the writes; a later success that disagrees sets the task's
`conflict` instead. Kept as long as the delivery log
(`DELIVERY_RETENTION_DAYS`, workers/maintenance.py).
"""

from __future__ import annotations

import sqlalchemy as sa

from store.schema import FINAL_STATUSES
from store.schema import STATUSES
from store.schema import deliveries
from store.schema import task_events

ITEM_FIELDS = {"task_uuid": "taskUUID", "status": "status", "text": "text", "cost": "cost", "task_type": "taskType",
               "model": "model", "error_code": "errorCode", "error_message": "errorMessage"}
"""A delivery log item's keys (`store.results.Result.as_json`) by the names the API shows them under."""

RANK = {status: rank for rank, status in enumerate(STATUSES)}


def task_history(conn: sa.Connection, task_uuid: str) -> list[dict]:
    """The task's events in time order (ties in the order they were stored), as JSON-ready values.

    Each has `at`, `kind` (delivery | submission | poll), `status` (what the event
    said of the task; null when it told nothing new, e.g. a poll answered "processing"),
    `detail` (an error, or what became of the task) and `changedResult`. A delivery
    also has `delivery`: the
    log entry's id, `remoteAddr`, `outcome`, `storedAt`, and `item`, the item as
    parsed from the body (cost an exact decimal string).
    """
    stmt = (
        sa.select(task_events, deliveries.c.remote_addr, deliveries.c.outcome, deliveries.c.stored_at,
                  deliveries.c["items"])
        .select_from(task_events.outerjoin(deliveries, deliveries.c.id == task_events.c.delivery_id))
        .where(task_events.c.task_uuid == task_uuid)
        .order_by(task_events.c.at, task_events.c.id)
    )
    events, best = [], -1
    for row in conn.execute(stmt).mappings():
        changed = row["status"] in FINAL_STATUSES and RANK[row["status"]] > best
        best = max(best, RANK[row["status"]]) if changed else best
        events.append(_event_json(row, changed))
    return events


def _event_json(row: sa.RowMapping, changed: bool) -> dict:
    event = {"at": row["at"].isoformat(), "kind": row["kind"], "status": row["status"], "detail": row["detail"],
             "changedResult": changed}
    if row["kind"] == "delivery":
        items = row["items"] or []
        index = row["item_index"]
        item = items[index] if index is not None and index < len(items) else None
        event["delivery"] = {
            "id": row["delivery_id"],
            "remoteAddr": row["remote_addr"],
            "outcome": row["outcome"],
            "storedAt": row["stored_at"].isoformat() if row["stored_at"] else None,
            "item": {ITEM_FIELDS.get(key, key): value for key, value in item.items()} if item else None,
        }
    return event
