"""Query-string parameters of the read API: parsed strictly, every problem named.

A bad parameter raises `ParamError`, which the API answers with a 400 whose body
names the parameter (`{"error": {"status": 400, "message": "limit: …", "parameter": "limit"}}`).
An empty value (`?status=`) means the parameter was not given, so HTML forms and
dashboards can send every field. Unknown parameters are refused, so a typo
(`?stauts=error`) does not silently return everything.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from datetime import UTC
from datetime import datetime

import orjson
from werkzeug.datastructures import MultiDict

from store import search
from workers.payloads import UUID_RE

MAX_QUERY_CHARS = 200
"""Longest accepted search text (`q`)."""


class ParamError(ValueError):
    """A query parameter is unusable; `parameter` names it, `message` says why."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = f"{parameter}: {message}"


class Params:
    """The query string of one request, read one named parameter at a time."""

    def __init__(self, args: MultiDict, allowed: Iterable[str]):
        unknown = sorted(set(args) - set(allowed))
        if unknown:
            raise ParamError(unknown[0], f"unknown parameter (allowed: {', '.join(allowed)})")
        self.args = args

    def text(self, name: str) -> str | None:
        """The parameter's value, or None when absent or empty; given twice is an error."""
        values = self.args.getlist(name)
        if len(values) > 1:
            raise ParamError(name, "given more than once")
        value = values[0].strip() if values else ""
        return value or None

    def choices(self, name: str, allowed: Iterable[str]) -> tuple[str, ...]:
        """A comma-separated subset of `allowed` (empty tuple: no filter)."""
        value = self.text(name)
        if value is None:
            return ()
        allowed = tuple(allowed)
        chosen = tuple(dict.fromkeys(v.strip().lower() for v in value.split(",") if v.strip()))
        bad = [v for v in chosen if v not in allowed]
        if bad:
            raise ParamError(name, f"{bad[0]!r} is not one of {', '.join(allowed)}")
        return chosen

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.text(name)
        if value is None:
            return default
        if not (value.isascii() and value.isdigit() and len(value) <= 9 and low <= int(value) <= high):
            raise ParamError(name, f"must be an integer from {low} to {high}")
        return int(value)

    def time(self, name: str) -> datetime | None:
        """An ISO 8601 date or time. A date means midnight UTC; a time without offset is UTC."""
        value = self.text(name)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
        except (ValueError, OverflowError):
            hint = " (write '+' as %2B in a URL, or use Z)" if " " in value else ""
            raise ParamError(name, f"{value!r} is not an ISO 8601 date or time{hint}") from None

    def time_range(self) -> tuple[datetime | None, datetime | None]:
        """`since` (inclusive) and `until` (exclusive); until must come after since."""
        since, until = self.time("since"), self.time("until")
        if since and until and until <= since:
            raise ParamError("until", "must be later than since")
        return since, until

    def search(self, name: str) -> search.Query | None:
        """A caption search in the syntax of `store.search`; a malformed one says what is wrong."""
        value = self.text(name)
        if value is None:
            return None
        if len(value) > MAX_QUERY_CHARS:
            raise ParamError(name, f"longer than {MAX_QUERY_CHARS} characters")
        try:
            return search.parse(value)
        except search.SearchError as exc:
            raise ParamError(name, str(exc)) from None

    def cursor(self, name: str) -> tuple[datetime, str] | None:
        value = self.text(name)
        return None if value is None else decode_cursor(value, name)


def encode_cursor(updated_at: datetime, task_uuid: str) -> str:
    """An opaque page cursor: the sort key of the last row shown, base64url-encoded."""
    raw = orjson.dumps([updated_at.astimezone(UTC).isoformat(), task_uuid])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str, name: str = "cursor") -> tuple[datetime, str]:
    """The sort key inside a cursor made by `encode_cursor`; anything else is a ParamError."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        when, task_uuid = orjson.loads(raw)
        updated_at = datetime.fromisoformat(when)
        if updated_at.tzinfo is None or not UUID_RE.match(task_uuid):
            raise ValueError
        return updated_at.astimezone(UTC), task_uuid.lower()
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError, OverflowError):
        raise ParamError(name, "not a cursor returned by this API") from None
