"""Logs: every process writes one JSON object per line to stderr (LOG_FORMAT=json, the default).

    {"time": "2026-11-24T16:02:11.532Z", "level": "info", "logger": "workers.persist",
     "message": "drain stored 1000 deliveries", "stored": 1000}

LOG_FORMAT=console (what `make run` sets in development) is for a person at a terminal:
short lines (`drain stored 1000 deliveries`, `WARNING database unavailable ...`, fields
after the message as `key=value`), no time (the supervisor stamps each line), and the
libraries' chatter (RQ's lines about each job, gunicorn's start-up and access lines)
kept off the terminal below WARNING. Every line, chatter included, also goes with its
time, process id and logger to var/log/service.log (SERVICE_LOG).

`configure()` installs the format on the root logger (RQ workers, the drain and the
app's own loggers inside gunicorn); deploy/gunicorn.conf.py also puts it on gunicorn's
error and access logs (`route`). Fields beyond time, level, logger and message come
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

from config import VAR_DIR

FORMATS = ("json", "console")
"""The values of LOG_FORMAT."""

CHATTY = ("rq", "gunicorn", "workers.reconcile")
"""Loggers (and their children) whose lines below WARNING the console format keeps off the terminal:
RQ's about each job, gunicorn's start-up and access lines, the reconcile job's summary every 30 s."""

SERVICE_LOG = VAR_DIR / "log" / "service.log"
"""Where the console format also writes every line (all processes append to it)."""

_fields: contextvars.ContextVar[dict] = contextvars.ContextVar("log_fields", default={})

_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
"""Attributes every LogRecord has; any other attribute came from `extra=` and becomes a field."""


def fields_of(record: logging.LogRecord) -> dict:
    """The fields bound around the record (`bind`), then its own from `extra=`."""
    own = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}
    return {**_fields.get(), **own}


def exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """The record's traceback, formatted once: a filter may have set (and scrubbed) exc_text already."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON: time (UTC), level, logger, message, then extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(fields_of(record))
        if exception_text(self, record):
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


class ConsoleFormatter(logging.Formatter):
    """Format a record as a short line: the level unless info, the message, then its fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else record.levelname + " "
        line = level + record.getMessage() + "".join(f" {key}={value}" for key, value in fields_of(record).items())
        return line + ("\n" + record.exc_text if exception_text(self, record) else "")


class FileFormatter(ConsoleFormatter):
    """The console line after the time, the process id and the logger (for the shared file)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        return f"{stamp} [{record.process}] {record.name}: {super().format(record)}"


def not_chatter(record: logging.LogRecord) -> bool:
    """A filter: False for a line below WARNING from one of the CHATTY libraries."""
    return record.levelno >= logging.WARNING or not any(f"{record.name}.".startswith(f"{name}.") for name in CHATTY)


def log_format() -> str:
    """LOG_FORMAT, checked: `json` (default) or `console`."""
    value = os.environ.get("LOG_FORMAT", "json").strip().lower() or "json"
    if value not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, not {value!r}")
    return value


def route(logger: logging.Logger) -> None:
    """Give `logger`'s handlers the LOG_FORMAT format; for `console`, keep chatter off them and add the file."""
    console = log_format() == "console"
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler) and h.baseFilename == str(SERVICE_LOG)]
    for handler in logger.handlers:
        if handler not in files:
            handler.setFormatter(ConsoleFormatter() if console else JsonFormatter())
            if console:
                handler.addFilter(not_chatter)
    if console and not files:
        SERVICE_LOG.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(SERVICE_LOG, encoding="utf-8")
        to_file.setFormatter(FileFormatter())
        logger.addHandler(to_file)


@contextlib.contextmanager
def bind(**fields) -> Iterator[None]:
    """Add `fields` to every line logged in this block (this thread or task only)."""
    token = _fields.set({**_fields.get(), **fields})
    try:
        yield
    finally:
        _fields.reset(token)


def configure(level: str | int | None = None, stream=None) -> None:
    """Send the root logger's output to `stream` (stderr) in LOG_FORMAT (`route`); level from LOG_LEVEL (info)."""
    level = level or os.environ.get("LOG_LEVEL", "info")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(logging.StreamHandler(stream or sys.stderr))
    route(root)
    root.setLevel(level.upper() if isinstance(level, str) else level)
