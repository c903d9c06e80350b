"""`GET /api/intake` (read token): the intake's gate, the backlog and Redis memory against its bound.

What the dashboard's intake panel shows, from receiver/backpressure.py's view
in this process: whether webhooks are accepted, Redis's `used_memory` beside its
`maxmemory` and the intake's high- and low-water marks, the deliveries waiting
in Redis and the age of the oldest, how fast memory and the backlog grow (from
this process's samples of the last half minute: the first call has no rate yet),
the time until the high-water mark at that rate, and the Retry-After a refused
sender is given.
"""

from __future__ import annotations

import time

import redis
from flask import Blueprint
from flask import jsonify

from receiver import backpressure
from receiver.auth import require_bearer
from receiver.errors import error_response
from receiver.openapi import operation
from receiver.state import redis_client
from receiver.state import settings
from workers.queues import DELIVERY_STREAM

bp = Blueprint("intake_status", __name__)


@bp.get("/api/intake")
@operation(summary="The intake's gate, backlog and Redis memory", tags=["operations"], auth=("read",),
           responses={200: "IntakeStatus"}, errors=(503,))
@require_bearer("read_tokens")
def intake_status():
    status = backpressure.gate().status()
    if not status["redis_answered"]:
        return error_response(503, "Redis did not answer", headers={"Retry-After": str(settings().retry_after_seconds)})
    try:
        oldest = redis_client().xrange(DELIVERY_STREAM, count=1)
    except redis.RedisError:
        return error_response(503, "Redis did not answer", headers={"Retry-After": str(settings().retry_after_seconds)})
    age = time.time() - int(oldest[0][0].split(b"-")[0]) / 1000 if oldest else 0.0
    status["oldest_pending_seconds"] = round(max(0.0, age), 3)
    response = jsonify(status)
    response.headers["Cache-Control"] = "no-store"
    return response
