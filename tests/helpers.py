"""Bodies and calls the tests share."""

from __future__ import annotations

import uuid

import orjson

WEBHOOK = "/webhooks/runware"


def new_uuid() -> str:
    return str(uuid.uuid4())


def success(task_uuid: str, text: str = "a red square on white", cost: float | None = 0.0019, **extra) -> dict:
    item = {"taskType": "imageCaption", "taskUUID": task_uuid, "text": text, **extra}
    if cost is not None:
        item["cost"] = cost
    return item


def failure(task_uuid: str, code: str = "timeoutProvider", message: str = "the provider timed out") -> dict:
    return {"taskType": "imageCaption", "taskUUID": task_uuid, "code": code, "message": message}


def wrapped(*items: dict, errors: tuple[dict, ...] = ()) -> bytes:
    body: dict = {}
    if items:
        body["data"] = list(items)
    if errors:
        body["errors"] = list(errors)
    return orjson.dumps(body)


def post(client, body: bytes | str, token: str | None = "hook-new", content_type: str = "application/json"):
    url = WEBHOOK if token is None else f"{WEBHOOK}?token={token}"
    return client.post(url, data=body, content_type=content_type)
