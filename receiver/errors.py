"""JSON error bodies for every error the service answers, so clients always get a reason."""

from __future__ import annotations

from flask import Flask
from flask import jsonify
from werkzeug.exceptions import HTTPException


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
