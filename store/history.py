"""A task's whole history, oldest first: the webhook items delivered for it, its submission attempts and its polls.

Written with the results they carry (`store.results.record_events`, into `task_events`),
read here through `ix_task_events_task` (task, time): a task's history costs a range
of that index however large the log. Kept as long as the delivery log
(`DELIVERY_RETENTION_DAYS`, workers/maintenance.py).
"""

from __future__ import annotations

import sqlalchemy as sa

from store.schema import deliveries
from store.schema import task_events

ITEM_FIELDS = {"task_uuid": "taskUUID", "status": "status", "text": "text", "cost": "cost", "task_type": "taskType",
               "model": "model", "error_code": "errorCode", "error_message": "errorMessage"}
"""A delivery log item's keys (`store.results.Result.as_json`) by the names the API shows them under."""


def task_history(conn: sa.Connection, task_uuid: str) -> list[dict]:
    """The task's events in time order (ties in the order they were stored), as JSON-ready values.

    Each has `at`, `kind` (delivery | submission | poll), `status` (what the event
    said of the task; null when it told nothing new, e.g. a poll answered "processing"),
    `detail` (an error, or what became of the task) and `changedResult` (its result
    became the stored one when it was applied). A delivery also has `delivery`: the
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
    return [_event_json(row) for row in conn.execute(stmt).mappings()]


def _event_json(row: sa.RowMapping) -> dict:
    event = {"at": row["at"].isoformat(), "kind": row["kind"], "status": row["status"], "detail": row["detail"],
             "changedResult": bool(row["changed"])}
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
