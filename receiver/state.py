"""The app's shared clients, reached from views: its settings, Redis client and database engine."""

from __future__ import annotations

import redis
import sqlalchemy as sa
from flask import current_app

from config import Config
from store.db import engine_for


def settings() -> Config:
    return current_app.config["SERVICE"]


def redis_client() -> redis.Redis:
    return current_app.extensions["redis"]


def engine() -> sa.Engine:
    return engine_for(settings().database_url)
