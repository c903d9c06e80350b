"""Structured logs: every process writes one JSON object per line to stderr.

    {"time": "2026-11-24T16:02:11.532Z", "level": "info", "logger": "workers.persist",
     "message": "drain stored 1000 deliveries", "stored": 1000}

`configure()` installs the JSON formatter on the root logger (RQ workers, the drain and
the app's own loggers inside gunicorn); deploy/gunicorn.conf.py also puts it on
gunicorn's error and access logs. Fields beyond time, level, logger and message come
from `extra={...}` and from `bind(...)`, which adds fields to every line logged in
its block (for instance `task_uuid` around the work on one task):

    with logs.bind(task_uuid=task):
        log.info("submitted")          # carries "task_uuid"

A line about one task carries `task_uuid`; about one webhook delivery, `delivery_id`.
Never put a token or a signing secret in a message or a field.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator

_fields: contextvars.ContextVar[dict] = contextvars.ContextVar("log_fields", default={})

_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
"""Attributes every LogRecord has; any other attribute came from `extra=` and becomes a field."""


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON: time (UTC), level, logger, message, then extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(_fields.get())
        doc.update((k, v) for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_"))
        # A filter may have set (and scrubbed) exc_text already: use it rather than format the exception again.
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


@contextlib.contextmanager
def bind(**fields) -> Iterator[None]:
    """Add `fields` to every line logged in this block (this thread or task only)."""
    token = _fields.set({**_fields.get(), **fields})
    try:
        yield
    finally:
        _fields.reset(token)


def configure(level: str | int | None = None, stream=None) -> None:
    """Send the root logger's output, as JSON lines, to `stream` (stderr); level from LOG_LEVEL (info)."""
    level = level or os.environ.get("LOG_LEVEL", "info")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
