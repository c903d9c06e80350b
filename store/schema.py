"""Tables of the result store (SQLAlchemy Core), shared by receiver, workers and migrations.

Statuses rank queued < submitted < error < success: a task's stored state only
moves up that ladder, whatever order deliveries arrive in (see `store.results`).
"""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

import sqlalchemy as sa
import sqlalchemy.dialects.postgresql  # noqa: F401  (registers to_tsvector's PostgreSQL types)

STATUSES = ("queued", "submitted", "error", "success")
"""Task statuses, lowest rank first."""

FINAL_STATUSES = ("error", "success")
SOURCES = ("submitted", "external")
"""`submitted`: this service sent the task; `external`: a result for a task someone else sent."""


class UTCDateTime(sa.TypeDecorator):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


metadata = sa.MetaData()

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("task_uuid", sa.String(36), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("task_type", sa.String(64)),
    sa.Column("model", sa.String(128)),
    sa.Column("text", sa.Text),
    sa.Column("cost", sa.Numeric(20, 10), comment="USD, as reported by Runware"),
    sa.Column("error_code", sa.String(128)),
    sa.Column("error_message", sa.Text),
    sa.Column("conflict", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="a later success disagreed with the stored one"),
    sa.Column("result_at", UTCDateTime, comment="receipt time of the delivery that set the result"),
    sa.Column("delivery_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("first_delivery_at", UTCDateTime),
    sa.Column("last_delivery_at", UTCDateTime),
    # Submission (tasks this service sends to Runware).
    sa.Column("input_ref", sa.Text, comment="image to send: URL, data URI, base64 or image UUID"),
    sa.Column("input_name", sa.String(512), comment="file name or URL the caller gave"),
    sa.Column("input_path", sa.Text, comment="local file `captions submit` read, absolute (caption sidecars)"),
    sa.Column("include_cost", sa.Boolean),
    sa.Column("delivery_method", sa.String(8)),
    sa.Column("submitted_at", UTCDateTime),
    sa.Column("submit_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("poll_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_poll_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_tasks_status_created", "status", "created_at"),
    sa.Index("ix_tasks_status_next_poll", "status", "next_poll_at", "task_uuid"),  # claims (store/submissions.py)
    sa.Index("ix_tasks_updated", "updated_at", "task_uuid"),
    sa.Index("ix_tasks_created", "created_at"),  # the edges of a stats window (store/stats.py)
    sa.Index("ix_tasks_result", "result_at"),
)

TEXT_SEARCH_CONFIG = sa.literal_column("'simple'")
"""PostgreSQL text search configuration of captions: lower-cased words, no stemming, no stop words (as FTS5)."""

CAPTION_VECTOR = sa.func.to_tsvector(TEXT_SEARCH_CONFIG, sa.func.coalesce(tasks.c.text, sa.literal_column("''")))
"""The words of a caption on PostgreSQL, as `ix_tasks_text_search` indexes them (queries must use it as is)."""

tasks.append_constraint(
    sa.Index("ix_tasks_text_search", CAPTION_VECTOR, postgresql_using="gin").ddl_if(dialect="postgresql")
)
sa.Index("ix_tasks_status_updated", tasks.c.status, tasks.c.updated_at, tasks.c.task_uuid)  # the list by status
sa.Index("ix_tasks_waiting", tasks.c.submitted_at, tasks.c.task_uuid,  # the oldest waiting (store/stats.py)
         sqlite_where=tasks.c.status == sa.literal_column("'submitted'"),
         postgresql_where=tasks.c.status == sa.literal_column("'submitted'"))

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True, comment="Redis stream entry id, unique per accepted POST"),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("remote_addr", sa.String(64)),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False, comment="stored | partial | rejected"),
    sa.Column("items", sa.JSON, nullable=False, comment="the parsed items, as stored"),
    sa.Column("detail", sa.Text, comment="why items were skipped"),
    sa.Column("stored_at", UTCDateTime, nullable=False),
    sa.Column("labels", sa.JSON, comment="the labels of the webhook URL (its query parameters but the secret)"),
    sa.Index("ix_deliveries_received", "received_at"),
)

task_labels = sa.Table(
    "task_labels",
    metadata,
    sa.Column("task_uuid", sa.String(36), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
    sa.Column("labeled_at", UTCDateTime, nullable=False,
              comment="when the winning value came: queue time of a submission, receipt time of a delivery"),
    sa.Column("conflict", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="a submission or delivery gave this key another value"),
    sa.Index("ix_task_labels_key_value", "key", "value", "task_uuid"),
)
"""Labels of a task (store/labels.py), written after its task row in the same transaction (revision 0008)."""

EVENT_KINDS = ("delivery", "submission", "poll")
"""What a task event records: a webhook item, a Runware answer to this service's request, a getResponse answer."""

task_events = sa.Table(
    "task_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("task_uuid", sa.String(36), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False, comment="when the delivery or answer was received"),
    sa.Column("kind", sa.String(16), nullable=False, comment="delivery | submission | poll"),
    sa.Column("status", sa.String(16), comment="the task's status by this event; none when it told nothing new"),
    sa.Column("detail", sa.Text, comment="error code and message, or what became of the task"),
    sa.Column("delivery_id", sa.String(40), comment="the delivery log's row (deliveries only)"),
    sa.Column("item_index", sa.Integer, comment="the item's place in that delivery's items"),
    sa.Index("ix_task_events_task", "task_uuid", "at"),
    sa.Index("ix_task_events_at", "at"),  # retention (workers/maintenance.py)
)
"""A task's history, one row per delivery item, submission attempt and poll; kept as long as the delivery log."""

thumbnails = sa.Table(
    "thumbnails",
    metadata,
    sa.Column("task_uuid", sa.String(36), primary_key=True),
    sa.Column("image", sa.LargeBinary, nullable=False, comment="WEBP"),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_thumbnails_created", "created_at"),  # retention (workers/maintenance.py)
)
"""A small WEBP of the image of a task this service queued (store/thumbnails.py, revision 0012)."""

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(40)),
    sa.Column("task_uuid", sa.String(36)),
    sa.Column("item", sa.JSON, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("replayed_at", UTCDateTime),
    sa.Column("labels", sa.JSON, comment="the labels of the delivery the item came with (revision 0010)"),
    sa.Index("ix_dead_letters_created", "created_at"),
)

# -- Aggregates, kept by database triggers (migration 0004): see store/stats.py and docs/sql.md. --------

LATENCY_BOUNDS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
"""Upper bounds (seconds, inclusive) of the latency histograms' buckets; one more bucket holds the rest."""

NO_LATENCY = -1
"""`latency_bucket` of a finished task that has no submission time (an external task): no latency."""

task_hours = sa.Table(
    "task_hours",
    metadata,
    sa.Column("hour", UTCDateTime, primary_key=True, comment="hour of tasks.created_at, UTC"),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("source", sa.String(16), primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True, comment="'' when the task names none"),
    sa.Column("tasks", sa.BigInteger, nullable=False),
    sa.Column("conflicts", sa.BigInteger, nullable=False),
    sa.Column("delivered_tasks", sa.BigInteger, nullable=False, comment="tasks with delivery_count > 0"),
    sa.Column("deliveries", sa.BigInteger, nullable=False, comment="sum of delivery_count"),
)

result_hours = sa.Table(
    "result_hours",
    metadata,
    sa.Column("hour", UTCDateTime, primary_key=True, comment="hour of tasks.result_at, UTC"),
    sa.Column("status", sa.String(16), primary_key=True, comment="a final status"),
    sa.Column("model", sa.String(128), primary_key=True, comment="'' when the task names none"),
    sa.Column("latency_bucket", sa.SmallInteger, primary_key=True,
              comment="submitted_at -> result_at, index into LATENCY_BOUNDS; NO_LATENCY without submitted_at"),
    sa.Column("tasks", sa.BigInteger, nullable=False),
    sa.Column("cost_units", sa.BigInteger, nullable=False, comment="sum of cost in units of 1e-10 USD"),
)

delivery_hours = sa.Table(
    "delivery_hours",
    metadata,
    sa.Column("hour", UTCDateTime, primary_key=True, comment="hour of deliveries.received_at, UTC"),
    sa.Column("outcome", sa.String(16), primary_key=True),
    sa.Column("latency_bucket", sa.SmallInteger, primary_key=True,
              comment="received_at -> stored_at, index into LATENCY_BOUNDS"),
    sa.Column("deliveries", sa.BigInteger, nullable=False),
)



def _days(hours: sa.Table, name: str) -> sa.Table:
    """The day rollup of an hourly aggregate (migrations 0007, 0010): the same keys and measures per UTC day."""
    day = sa.Column("day", UTCDateTime, primary_key=True, comment=f"the UTC day (midnight) of {hours.name}.hour")
    return sa.Table(name, metadata, *(day if column.name == "hour" else column._copy() for column in hours.c))


task_days = _days(task_hours, "task_days")
result_days = _days(result_hours, "result_days")
delivery_days = _days(delivery_hours, "delivery_days")

label_task_hours = sa.Table(
    "label_task_hours",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("hour", UTCDateTime, primary_key=True, comment="hour of tasks.created_at, UTC"),
    sa.Column("value", sa.String(256), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("tasks", sa.BigInteger, nullable=False),
)

label_result_hours = sa.Table(
    "label_result_hours",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("hour", UTCDateTime, primary_key=True, comment="hour of tasks.result_at, UTC"),
    sa.Column("value", sa.String(256), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True, comment="a final status"),
    sa.Column("tasks", sa.BigInteger, nullable=False),
    sa.Column("cost_units", sa.BigInteger, nullable=False, comment="sum of cost in units of 1e-10 USD"),
)

label_values = sa.Table(
    "label_values",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), primary_key=True),
    sa.Column("tasks", sa.BigInteger, nullable=False, comment="tasks carrying this label"),
)

label_task_days = _days(label_task_hours, "label_task_days")
label_result_days = _days(label_result_hours, "label_result_days")

label_totals = sa.Table(
    "label_totals",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), primary_key=True),
    *(sa.Column(status, sa.BigInteger, nullable=False, server_default="0", comment=f"tasks {status}")
      for status in STATUSES),
    sa.Column("successes", sa.BigInteger, nullable=False, server_default="0", comment="tasks finished a success"),
    sa.Column("errors", sa.BigInteger, nullable=False, server_default="0", comment="tasks finished an error"),
    sa.Column("cost_units", sa.BigInteger, nullable=False, server_default="0",
              comment="the successes' cost in units of 1e-10 USD"),
)
"""Per label, all time: the sums of `label_task_days` by status and of `label_result_days` (revision 0015)."""

DAYS = {task_hours: task_days, result_hours: result_days, delivery_hours: delivery_days,
        label_task_hours: label_task_days, label_result_hours: label_result_days}
"""Each hourly aggregate and its day rollup, kept by triggers on the hourly table."""

AGGREGATES = (task_hours, result_hours, delivery_hours, task_days, result_days, delivery_days,
              label_task_hours, label_result_hours, label_task_days, label_result_days, label_values, label_totals)
"""The aggregate tables: emptied after the base tables (hours before days before totals), never written by
application code."""
