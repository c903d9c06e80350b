"""Reading the store for the API and dashboards."""

from __future__ import annotations

import sqlalchemy as sa

from store.schema import tasks

PUBLIC_FIELDS = {
    "taskUUID": tasks.c.task_uuid,
    "status": tasks.c.status,
    "source": tasks.c.source,
    "taskType": tasks.c.task_type,
    "model": tasks.c.model,
    "text": tasks.c.text,
    "cost": tasks.c.cost,
    "errorCode": tasks.c.error_code,
    "errorMessage": tasks.c.error_message,
    "conflict": tasks.c.conflict,
    "deliveryCount": tasks.c.delivery_count,
    "firstDeliveryAt": tasks.c.first_delivery_at,
    "lastDeliveryAt": tasks.c.last_delivery_at,
    "submittedAt": tasks.c.submitted_at,
    "createdAt": tasks.c.created_at,
    "updatedAt": tasks.c.updated_at,
}
"""What the API shows of a task, by the name it shows it under."""


def task_json(row: sa.Row) -> dict:
    """A task row as JSON-ready values (ISO times, cost as a number of USD)."""
    record = dict(zip(PUBLIC_FIELDS, row))
    for name, value in record.items():
        if hasattr(value, "isoformat"):
            record[name] = value.isoformat()
    if record["cost"] is not None:
        record["cost"] = float(record["cost"])
    return record


def get_task(conn: sa.Connection, task_uuid: str) -> dict | None:
    row = conn.execute(sa.select(*PUBLIC_FIELDS.values()).where(tasks.c.task_uuid == task_uuid)).first()
    return task_json(row) if row else None
