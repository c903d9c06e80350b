"""Reading Runware result bodies: webhooks, sync answers and `getResponse` polls.

Accepted shapes: `{"data": [...]}`, `{"errors": [...]}` (both together too) and a
bare task object. Items are matched on `taskUUID`, never on `taskType`
(`imageCaption` and the newer `caption` both occur). Strings are untrusted: NUL
characters, which PostgreSQL cannot store, are replaced.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from decimal import Decimal

import orjson

from store.results import Result
from store.schema import STATUSES

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
MAX_COST_USD = 1_000_000
"""A cost above this is taken for garbage, not a price."""

MAX_REASONS = 100
"""Reasons for skipped items listed per body: 500,000 bad items must not make a 20 MB answer or log row."""

RANK = {status: rank for rank, status in enumerate(STATUSES)}


class PayloadError(ValueError):
    """The body as a whole is unusable; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class InvalidItem(ValueError):
    """One item is unusable; its message names the field."""


def decode(raw: bytes) -> object:
    """Parse JSON strictly: no NaN or Infinity, valid UTF-8, bounded nesting."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(400, f"body is not valid JSON: {exc}") from None


def items(doc: object) -> list[tuple[object, bool]]:
    """The items of a body as (item, is_error) pairs."""
    if not isinstance(doc, dict):
        raise PayloadError(422, "body must be a JSON object: {\"data\": [...]}, {\"errors\": [...]} or a task object")
    if "data" not in doc and "errors" not in doc:
        return [(doc, False)]
    found: list[tuple[object, bool]] = []
    for key, is_error in (("data", False), ("errors", True)):
        value = doc.get(key)
        if value is None:
            continue
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise PayloadError(422, f"'{key}' must be an array of task objects")
        found.extend((item, is_error) for item in value)
    return found


def _text(value: object, name: str, limit: int | None = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidItem(f"{name}: must be a string")
    value = value.replace("\x00", "\ufffd")
    return value[:limit] if limit else value


def _cost(value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidItem("cost: must be a number")
    if not math.isfinite(value) or not 0 <= value <= MAX_COST_USD:
        raise InvalidItem(f"cost: must be between 0 and {MAX_COST_USD}")
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def task_uuid(item: object) -> str:
    """The item's taskUUID, lower-cased; InvalidItem when it has none."""
    if not isinstance(item, dict):
        raise InvalidItem("item: must be an object")
    value = item.get("taskUUID")
    if not isinstance(value, str) or not UUID_RE.match(value):
        raise InvalidItem("taskUUID: missing or not a UUID")
    return value.lower()


def to_result(item: object, is_error: bool, received_at: datetime) -> Result:
    """Normalise one item; raises InvalidItem naming the bad field."""
    uuid = task_uuid(item)
    common = {
        "task_uuid": uuid,
        "received_at": received_at,
        "task_type": _text(item.get("taskType"), "taskType", 64),
        "model": _text(item.get("model"), "model", 128),
    }
    nested = item.get("error")
    if is_error or item.get("status") == "error" or isinstance(nested, dict):
        source = nested if isinstance(nested, dict) else item
        return Result(
            status="error",
            error_code=_text(source.get("code"), "code", 128) or "error",
            error_message=_text(source.get("message"), "message", 10_000),
            **common,
        )
    text = item.get("text")
    if text is None and item.get("structuredData") is not None:
        text = orjson.dumps(item["structuredData"]).decode()
    cost = _cost(item.get("cost"))
    if text is None or item.get("status") in ("processing", "pending"):
        return Result(status="submitted", **common)
    return Result(status="success", text=_text(text, "text"), cost=cost, **common)


def parse(raw: bytes, received_at: datetime) -> tuple[list[Result], list[str]]:
    """The results of a body, one per taskUUID, and why items were skipped. Raises PayloadError.

    An item repeating an earlier item's taskUUID counts once, as the store's merge
    would settle it (the higher status wins; the first among equals). Reasons
    are listed up to MAX_REASONS, then counted, so a huge bad body costs little.
    """
    results: list[Result] = []
    where: dict[str, int] = {}
    skipped: list[str] = []
    unlisted = 0

    def skip(reason: str) -> None:
        nonlocal unlisted
        if len(skipped) < MAX_REASONS:
            skipped.append(reason)
        else:
            unlisted += 1

    for n, (item, is_error) in enumerate(items(decode(raw))):
        try:
            result = to_result(item, is_error, received_at)
        except InvalidItem as exc:
            skip(f"item {n}: {exc}")
            continue
        earlier = where.get(result.task_uuid)
        if earlier is None:
            where[result.task_uuid] = len(results)
            results.append(result)
        elif RANK[result.status] > RANK[results[earlier].status]:
            results[earlier] = result
        elif result != results[earlier] and result.status == results[earlier].status == "success":
            skip(f"item {n}: repeats the taskUUID of an earlier item with another result; the first is kept")
    if unlisted:
        skipped.append(f"and {unlisted} more items skipped")
    return results, skipped
