"""The app's shared clients, reached from views: its settings, Redis client and database engines."""

from __future__ import annotations

import redis
import sqlalchemy as sa
from flask import current_app

from config import Config
from store.db import engine_for
from store.db import reader_engine_for


def settings() -> Config:
    return current_app.config["SERVICE"]


def redis_client() -> redis.Redis:
    return current_app.extensions["redis"]


def engine() -> sa.Engine:
    """The readers' engine: a request's database work is cancelled past READ_TIMEOUT_MS (store/db.py)."""
    config = settings()
    return reader_engine_for(config.database_url, config.read_timeout_ms)


def writer_engine() -> sa.Engine:
    """The write path's engine, for the api's writes (queued submissions, dead-letter replays).

    Not bounded by READ_TIMEOUT_MS: a write is not cancelled half-way, and on SQLite it waits
    for the drains' write lock as long as the workers do (store/db.py).
    """
    return engine_for(settings().database_url)
