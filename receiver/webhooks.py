"""`POST /webhooks/runware?token=…`: check, validate, queue durably in Redis, then answer 2xx.

Nothing slow happens here: the body is parsed once to validate it and added,
as received, to a Redis stream; a drain job persists it later. 2xx means the
delivery is in Redis. When Redis cannot take it the answer is 503 with
Retry-After, so the sender retries.
"""

from __future__ import annotations

import logging

import orjson
import redis
from flask import Blueprint
from flask import Response
from flask import request

from receiver.auth import token_matches
from receiver.errors import error_response
from receiver.state import redis_client
from receiver.state import settings
from store.schema import utcnow
from workers import payloads
from workers.queues import queue_delivery

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


@bp.post("/webhooks/runware")
def receive():
    config = settings()
    if not token_matches(request.args.get("token"), config.webhook_tokens):
        return error_response(401, "missing or invalid token")
    if request.mimetype != "application/json":
        return error_response(415, "Content-Type must be application/json")
    body = request.get_data(cache=False)
    received_at = utcnow()
    try:
        results, skipped = payloads.parse(body, received_at)
    except payloads.PayloadError as exc:
        return error_response(exc.status, exc.message)
    if not results:
        return error_response(422, "no usable item: every item needs a taskUUID that is a UUID", items=skipped)
    try:
        delivery = queue_delivery(redis_client(), body, request.remote_addr, received_at)
    except redis.RedisError as exc:
        log.error("webhook not queued, Redis unavailable: %s", type(exc).__name__)
        return error_response(503, "temporarily unable to queue the delivery; retry later",
                              headers={"Retry-After": str(config.retry_after_seconds)})
    body = orjson.dumps({"status": "queued", "delivery": delivery, "items": len(results), "skipped": skipped})
    return Response(body, status=202, mimetype="application/json")
