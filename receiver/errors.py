"""JSON error bodies for every error the service answers, so clients always get a reason."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Flask
from flask import current_app
from flask import jsonify
from flask import request
from werkzeug.exceptions import HTTPException

from receiver.read_budget import ReadBudgetExhausted
from store.db import ReadTimeout

log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError,
                        sa.exc.TimeoutError)
"""What a reader sees while the database is down, unreachable, locked or out of pooled connections."""


def error_response(status: int, message: str, headers: dict | None = None, **extra):
    """A JSON error: `{"error": {"status": …, "message": …, …}}`."""
    response = jsonify(error={"status": status, "message": message, **extra})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Flask) -> None:
    """Answer HTTP errors (404, 405, 413, …) as JSON instead of HTML pages."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error_response(exc.code or 500, exc.description or exc.name)


def register_database_error_handlers(app: Flask) -> None:
    """Answer a cancelled read and a database outage with 503 and Retry-After, naming the cause (the readers)."""

    def retry_later(cause: str, message: str):
        retry_after = str(current_app.config["SERVICE"].retry_after_seconds)
        return error_response(503, message, headers={"Retry-After": retry_after}, cause=cause)

    @app.errorhandler(ReadTimeout)
    def read_timeout(exc: ReadTimeout):
        log.warning("read cancelled after %d ms: %s %s", exc.timeout_ms, request.method, request.path)
        return retry_later("read_timeout", f"{exc}; retry later, or ask for a narrower window")

    @app.errorhandler(ReadBudgetExhausted)
    def read_budget_exhausted(exc: ReadBudgetExhausted):
        log.warning("read refused, %s: %s %s", exc, request.method, request.path)
        return retry_later("read_budget", f"{exc}; retry later")

    def database_unavailable(exc: sa.exc.SQLAlchemyError):
        log.error("database unavailable: %s on %s %s", type(exc).__name__, request.method, request.path)
        return retry_later("database_unavailable", "the database is unavailable; retry later")

    for kind in DATABASE_UNAVAILABLE:
        app.register_error_handler(kind, database_unavailable)
