"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: what this process needs answers).

The intake needs Redis only; the readers need Redis and the database.
"""

from __future__ import annotations

import redis
import sqlalchemy as sa
from flask import Blueprint
from flask import current_app
from flask import jsonify

from receiver.openapi import operation
from receiver.state import engine
from receiver.state import redis_client
from store.db import ReadTimeout

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@operation(summary="Liveness: the process answers", tags=["operations"], responses={200: "Liveness"})
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
@operation(summary="Readiness: Redis (and, for the readers, the database) answer", tags=["operations"],
           responses={200: "Readiness", 503: "Readiness"})
def readyz():
    checks = {"redis": redis_check()}
    if current_app.config["APP_KIND"] != "intake":
        checks["database"] = database_check()
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "unavailable", checks=checks), 200 if ready else 503


def redis_check() -> str:
    try:
        redis_client().ping()
    except redis.RedisError as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


def database_check() -> str:
    try:
        with engine().connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except (sa.exc.SQLAlchemyError, ReadTimeout) as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"
