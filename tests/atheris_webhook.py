"""Coverage-guided fuzzing of the webhook intake with atheris (libFuzzer), run by tests/test_fuzz.py.

`python tests/atheris_webhook.py [libFuzzer flags] [CORPUS_DIR]`, with the service's
settings in the environment (REDIS_URL and the tokens). Each input becomes a
webhook body sent through the Flask app (a real Redis behind it): half of them as
raw bytes, half as a JSON document built from the input's bytes, so that mutations
explore the items' fields and values and not only JSON syntax (which orjson, in C,
gives no coverage for). The parser and the receiver are instrumented, so libFuzzer
steers towards bodies that reach new branches. Every input must get an answer
below 500 that agrees with the parser: 202 with as many items as `payloads.parse`
finds, and anything else adds nothing to the stream. A broken rule raises, which
libFuzzer reports as a crash with the input that caused it.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC
from datetime import datetime
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flask  # noqa: F401  (libraries first: only the project's own modules are instrumented)
import redis
import sqlalchemy  # noqa: F401

with atheris.instrument_imports():
    from config import Config
    from receiver import create_app
    from workers import payloads
    from workers.queues import DELIVERY_STREAM

CONFIG = Config.from_env()
CLIENT = create_app(CONFIG, kind="intake").test_client()
STREAM = redis.Redis.from_url(CONFIG.redis_url)
URL = f"/webhooks/runware?token={CONFIG.webhook_tokens[0]}"


FIELDS = ["taskUUID", "taskType", "text", "cost", "model", "code", "message", "error", "status", "imageUUID",
          "data", "errors", ""]
"""Keys an item is built from: Runware's, the envelope's, and the empty key."""


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    """A JSON value of any type drawn from the input; containers nest a few levels at most."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(8)
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind == 4:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 64))
    if kind in (5, 6):
        return str(uuid.UUID(bytes=fdp.ConsumeBytes(16).ljust(16, b"\0")))
    if kind == 7:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return item(fdp, depth + 1)


def item(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> dict:
    """Mostly with a UUID taskUUID, so that validation goes on to the other fields, then fields
    named as Runware names them or anyhow."""
    fields: dict = {}
    if fdp.ConsumeIntInRange(0, 3):
        fields["taskUUID"] = str(uuid.UUID(bytes=fdp.ConsumeBytes(16).ljust(16, b"\0")))
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        key = fdp.PickValueInList(FIELDS) if fdp.ConsumeIntInRange(0, 3) else fdp.ConsumeUnicode(8)
        fields[key] = value(fdp, depth)
    return fields


def body_from(data: bytes) -> bytes:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        return fdp.ConsumeBytes(fdp.remaining_bytes())
    shape = fdp.ConsumeIntInRange(0, 3)
    if shape == 0:
        document = item(fdp)
    else:
        document = {key: [item(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))]
                    for key in (("data",), ("errors",), ("data", "errors"))[shape - 1]}
    return json.dumps(document).encode()


def expected_items(body: bytes) -> int:
    """How many items the parser finds usable in a body; 0 for a body it refuses."""
    try:
        results, _ = payloads.parse(body, datetime.now(UTC))
    except payloads.PayloadError:
        return 0
    return len(results)


def one_input(data: bytes) -> None:
    body = body_from(data)
    before = STREAM.xlen(DELIVERY_STREAM)
    response = CLIENT.post(URL, data=body, content_type="application/json")
    added = STREAM.xlen(DELIVERY_STREAM) - before
    if response.status_code >= 500:
        raise AssertionError(f"answered {response.status_code}: {response.get_data()[:300]!r}")
    items = expected_items(body)
    if response.status_code == 202:
        if (added, response.json["items"]) != (1, items) or items == 0:
            raise AssertionError(f"202 with {response.json['items']} items, {added} queued; the parser finds {items}")
    elif added or items:
        raise AssertionError(f"{response.status_code} for a body with {items} usable items, {added} queued")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
