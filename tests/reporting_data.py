"""A small store with hand-checkable numbers, shared by the stats, views and dashboard tests.

Three UTC days, 1 to 3 March 2026. The expected figures in the tests are worked
out by hand from the rows below; the comments say which row counts where.

| task | status    | source    | created (UTC)  | result (UTC)            | cost         | deliveries |
| A    | success   | external  | 03-01 10:00    | 03-01 10:00             | 0.0019       | 1 |
| B    | success   | submitted | 03-01 23:00    | 03-01 23:59:59.999999   | 0.1          | 2 |
| C    | success   | submitted | 03-02 00:00    | 03-02 00:00 (conflict)  | 0.2          | 4 |
| D    | error     | external  | 03-02 12:00    | 03-02 12:00             | -            | 1 |
| E    | success   | external  | 03-02 13:00    | 03-02 13:00             | none given   | 1 |
| F    | submitted | submitted | 03-02 07:59    | (submitted 03-02 08:00) | -            | 0 |
| G    | submitted | submitted | 03-03 09:00    | (submitted 03-03 09:00) | -            | 0 |
| H    | queued    | submitted | 03-03 10:00    | -                       | -            | 0 |
| I    | success   | external  | 03-03 01:30+02:00 = 03-02 23:30 UTC     | 1.2345678901 | 1 |
"""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from decimal import Decimal

import sqlalchemy as sa

from store.schema import dead_letters
from store.schema import deliveries
from store.schema import tasks

PLUS_TWO = timezone(timedelta(hours=2))


def at(day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0, tz=UTC) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, micro, tzinfo=tz)


UUID = {name: f"{n:08x}-0000-4000-8000-{n:012x}" for n, name in enumerate("ABCDEFGHI", start=1)}
"""Task UUIDs by row name; they sort A < B < … < I."""

XSS_TEXT = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> & "quotes"'
"""Caption of task A: markup that must show up as text."""


def _task(name: str, status: str, source: str, created: datetime, result: datetime | None = None,
          cost: str | None = None, count: int = 0, submitted: datetime | None = None, **extra) -> dict:
    row = {
        "task_uuid": UUID[name], "status": status, "source": source, "task_type": "imageCaption",
        "model": None, "text": None, "cost": Decimal(cost) if cost is not None else None,
        "error_code": None, "error_message": None, "conflict": False,
        "result_at": result, "delivery_count": count,
        "first_delivery_at": result if count else None, "last_delivery_at": result if count else None,
        "submitted_at": submitted, "created_at": created, "updated_at": result or submitted or created,
    }
    row.update(extra)
    return row


TASKS = [
    _task("A", "success", "external", at(1, 10), at(1, 10), "0.0019", 1, text=XSS_TEXT),
    _task("B", "success", "submitted", at(1, 23), at(1, 23, 59, 59, 999999), "0.1", 2, submitted=at(1, 23),
          text="a lighthouse at dusk"),
    _task("C", "success", "submitted", at(2), at(2), "0.2", 4, submitted=at(1, 23, 30), conflict=True,
          text="two cats on a sofa"),
    _task("D", "error", "external", at(2, 12), at(2, 12), None, 1, error_code="timeoutProvider",
          error_message="the provider timed out"),
    _task("E", "success", "external", at(2, 13), at(2, 13), None, 1, text="100% cotton shirt"),
    _task("F", "submitted", "submitted", at(2, 7, 59), submitted=at(2, 8)),
    _task("G", "submitted", "submitted", at(3, 9), submitted=at(3, 9)),
    _task("H", "queued", "submitted", at(3, 10)),
    _task("I", "success", "external", at(3, 1, 30, tz=PLUS_TWO), at(3, 1, 30, tz=PLUS_TWO), "1.2345678901", 1,
          text="1000 cotton shirts"),
]

DELIVERIES = [
    ("d1", at(1, 10), "stored", 1, "10.0.0.7"),
    ("d2", at(1, 23, 59), "partial", 2, "10.0.0.7"),
    ("d3", at(2), "rejected", 0, "10.0.0.8"),
    ("d4", at(3, 5), "stored", 3, "10.0.0.9"),
]

DEAD_LETTERS = [
    (at(1, 11), at(2, 9)),   # replayed
    (at(2, 11), None),
    (at(3, 11), None),
]


def load(engine: sa.Engine) -> None:
    """Write the rows above into an empty store."""
    with engine.begin() as conn:
        conn.execute(tasks.insert(), TASKS)
        conn.execute(deliveries.insert(), [
            {"id": id_, "received_at": when, "remote_addr": addr, "size": 100 + n, "outcome": outcome,
             "items": [{"task_uuid": UUID["A"], "status": "success"}] * n,
             "detail": "item 2: taskUUID must be a UUID" if outcome != "stored" else None, "stored_at": when}
            for id_, when, outcome, n, addr in DELIVERIES
        ])
        conn.execute(dead_letters.insert(), [
            {"delivery_id": "d2", "task_uuid": None, "item": {"taskUUID": "nope"}, "reason": "bad",
             "created_at": created, "replayed_at": replayed}
            for created, replayed in DEAD_LETTERS
        ])
