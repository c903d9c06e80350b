"""The app's shared clients, reached from views: its settings, Redis client and database engines."""

from __future__ import annotations

import redis
import sqlalchemy as sa
from flask import current_app

from config import Config
from receiver.read_budget import BudgetedEngine
from store.db import reader_engine_for
from store.db import write_engine


def settings() -> Config:
    return current_app.config["SERVICE"]


def redis_client() -> redis.Redis:
    return current_app.extensions["redis"]


def engine(primary: bool = False) -> sa.Engine | BudgetedEngine:
    """The readers' engine, on DATABASE_READ_URL's replica when set (`primary`: on DATABASE_URL all the same, for
    a submitter reading the tasks it has just queued): a request's database work is cancelled past
    READ_TIMEOUT_MS (store/db.py) and, in the api's processes, held under the host's read budget
    (receiver/read_budget.py)."""
    config = settings()
    url = config.database_url if primary else config.database_read_url or config.database_url
    readers = reader_engine_for(url, config.read_timeout_ms, config.database_pooling)
    budget = current_app.extensions.get("read_budget")
    return BudgetedEngine(readers, budget) if budget is not None else readers


def writer_engine() -> sa.Engine:
    """The write path's engine, for the api's writes (queued submissions, dead-letter replays).

    Not bounded by READ_TIMEOUT_MS: a write is not cancelled half-way, and on SQLite it waits
    for the drains' write lock as long as the workers do (store/db.py).
    """
    return write_engine(settings())
