"""`POST /webhooks/runware?token=…`: check, validate, queue durably in Redis, then answer 2xx.

The secret may also come as `?apiKey=…`, `Authorization: Bearer …` or `X-API-Key`
(receiver/auth.py); none of them is kept with the delivery. Every other query
parameter is a label of the delivery and its tasks (receiver/labels.py): a URL
breaking the label rules is answered 422 naming the label, and nothing is queued.

Nothing slow happens here: the body is parsed once to validate it and added,
as received, to a Redis stream, in a round trip shared with the requests the
process serves at the same time (receiver/group_commit.py); a drain job persists
it later. 2xx means the delivery is in Redis (with REDIS_MIN_REPLICAS_ACK: on that
many replicas too). When Redis cannot take it, holds as much as it should
(receiver/backpressure.py), or too few replicas confirmed it in time, the answer
is 503 with Retry-After, so the sender retries.

With WEBHOOK_SIGNING_SECRETS set, a delivery also needs a valid Standard Webhooks
signature (receiver/signatures.py), checked after the URL token. Each request
counts one outcome in `captions_webhook_requests_total` (receiver/intake_metrics.py).

A refused request's unread body is read and dropped before the answer (up to
DISCARD_LIMIT_BYTES), so that a sender that writes its whole body before it reads
(Python's urllib, many simple senders) reads the 401 or 413 instead of a reset
connection; a sender that has not delivered its body by gunicorn's timeout is cut
off (receiver/body_deadline.py).
"""

from __future__ import annotations

import logging
import time

import orjson
import redis
from flask import Blueprint
from flask import Response
from flask import g
from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from receiver import backpressure
from receiver import body_deadline
from receiver import intake_metrics as metrics
from receiver import labels as url_labels
from receiver import signatures
from receiver.auth import webhook_secret_problem
from receiver.errors import error_response
from receiver.group_commit import group_commit
from receiver.openapi import operation
from receiver.state import settings
from store.schema import utcnow
from workers import payloads
from workers.queues import ReplicasBehind
from workers.queues import delivery_fields

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

DISCARD_LIMIT_BYTES = 16 * 1024 * 1024
"""The most of a refused body read and dropped before the answer (or MAX_BODY_BYTES, if larger);
a body announced above it is refused unread, and its sender may see the connection reset."""


def reject(outcome: str, status: int, message: str, **extra):
    """Count a rejected request by its outcome and answer with a JSON error."""
    metrics.webhook_outcome(outcome)
    return error_response(status, message, **extra)


@bp.before_request
def watch_the_body() -> None:
    """Give a request with a body until body_deadline.SECONDS to deliver it (under gunicorn)."""
    sock = request.environ.get("gunicorn.socket")
    if body_deadline.SECONDS and sock is not None and (request.content_length or request.headers.get(
            "Transfer-Encoding")):
        g.body_deadline = body_deadline.watchdog.watch(sock, body_deadline.SECONDS)


@bp.teardown_request
def body_done(_exc: BaseException | None = None) -> None:
    if "body_deadline" in g:
        body_deadline.watchdog.release(g.pop("body_deadline"))


@bp.after_request
def discard_unread_body(response: Response) -> Response:
    """Read and drop what is left of a refused request's body, unless it is announced above the bound."""
    limit = max(DISCARD_LIMIT_BYTES, settings().max_body_bytes)
    if response.status_code >= 400 and (request.content_length or 0) <= limit:
        stream = request.environ["wsgi.input"]
        while limit > 0 and (chunk := stream.read(min(limit, 65536))):
            limit -= len(chunk)
    body_done()
    return response


@bp.post("/webhooks/runware")
@operation(summary="Receive a Runware result (served by the intake)", tags=["webhook"], auth=("webhook",),
           query="WebhookQuery", body={"application/json": "ResultBody"}, responses={202: "Queued"},
           errors=(400, 413, 415, 422, 503))
def receive():
    config = settings()
    problem = webhook_secret_problem(config.webhook_tokens)
    if problem:
        return reject("unauthorized", 401, problem)
    if request.mimetype != "application/json":
        return reject("unsupported_media_type", 415, "Content-Type must be application/json")
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        return reject("too_large", 413, f"the body is over the limit of {config.max_body_bytes} bytes")
    body_done()
    if config.webhook_signing_keys:
        try:
            signatures.verify(config.webhook_signing_keys, request.headers, body,
                              config.webhook_signature_tolerance_seconds)
        except signatures.SignatureError as exc:
            return reject("bad_signature", 401, f"invalid signature: {exc}")
    try:
        labels = url_labels.from_query(request.args)
    except url_labels.LabelError as exc:
        return reject("unprocessable", 422, str(exc), label=exc.label)
    received_at = utcnow()
    try:
        results, skipped = payloads.parse(body, received_at)
    except payloads.PayloadError as exc:
        return reject("bad_json" if exc.status == 400 else "unprocessable", exc.status, exc.message)
    if not results:
        return reject("unprocessable", 422, "no usable item: every item needs a taskUUID that is a UUID",
                      items=skipped)
    gate = backpressure.gate()
    if not gate.accepting():
        return reject("backpressure", 503, "the queue is full while the store catches up; retry later",
                      headers={"Retry-After": str(gate.retry_after())})
    started = time.perf_counter()
    try:
        delivery = group_commit().add(delivery_fields(body, request.remote_addr, received_at,
                                                      signatures.webhook_id(request.headers),
                                                      orjson.dumps(labels) if labels else None))
    except redis.RedisError as exc:
        if isinstance(exc, redis.OutOfMemoryError):
            gate.refused()
        behind = isinstance(exc, ReplicasBehind)
        log.error("webhook not queued, %s: %s", "replicas behind" if behind else "Redis unavailable",
                  exc if behind else type(exc).__name__, extra={"task_uuids": [r.task_uuid for r in results[:100]]})
        return reject("replicas_behind" if behind else "redis_unavailable", 503,
                      "temporarily unable to queue the delivery; retry later",
                      headers={"Retry-After": str(gate.retry_after())})
    metrics.enqueued(time.perf_counter() - started)
    body = orjson.dumps({"status": "queued", "delivery": delivery, "items": len(results),
                         "skipped": skipped})
    return Response(body, status=202, mimetype="application/json")
