"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: Redis and the database answer)."""

from __future__ import annotations

import redis
import sqlalchemy as sa
from flask import Blueprint
from flask import jsonify

from receiver.state import engine
from receiver.state import redis_client

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    checks = {}
    try:
        redis_client().ping()
        checks["redis"] = "ok"
    except redis.RedisError as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    try:
        with engine().connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except sa.exc.SQLAlchemyError as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "unavailable", checks=checks), 200 if ready else 503
