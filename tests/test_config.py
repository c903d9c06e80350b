"""Settings come from the environment; production refuses to start without its secrets."""

from __future__ import annotations

import pytest

from config import Config
from config import ConfigError

SECRETS = {"WEBHOOK_TOKENS": "a, b ,,c", "READ_TOKENS": "r", "SUBMIT_TOKENS": "s"}


def test_production_needs_every_secret_and_url():
    with pytest.raises(ConfigError) as err:
        Config.from_env({"APP_ENV": "production", "READ_TOKENS": "r"})
    message = str(err.value)
    for name in ("WEBHOOK_TOKENS", "SUBMIT_TOKENS", "REDIS_URL", "DATABASE_URL"):
        assert name in message
    assert "READ_TOKENS" not in message


def test_production_is_the_default():
    with pytest.raises(ConfigError, match="REDIS_URL"):
        Config.from_env(SECRETS)


def test_production_with_everything_set():
    env = {**SECRETS, "REDIS_URL": "redis://r:6379/1", "DATABASE_URL": "postgres://u@db/captions", "PORT": "9000"}
    config = Config.from_env(env)
    assert config.production
    assert config.webhook_tokens == ("a", "b", "c")
    assert config.database_url == "postgresql+psycopg://u@db/captions"
    assert config.port == 9000
    assert config.public_url == "http://127.0.0.1:9000"
    assert config.max_body_bytes == 1024 * 1024


def test_development_defaults_make_a_local_run_work():
    config = Config.from_env({"APP_ENV": "development", **SECRETS})
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.database_url.startswith("sqlite:///") and config.database_url.endswith("var/captions.db")
    assert (config.host, config.port) == ("127.0.0.1", 8000)


@pytest.mark.parametrize("database, setting, drains", [
    ("", "", 2),  # the SQLite default: its writes serialise, a second drain only overlaps parsing
    ("sqlite:////srv/captions.db", "", 2),
    ("postgres://u@db/captions", "", 3),
    ("postgresql+psycopg://u@db/captions", "", 3),
    ("postgres://u@db/captions", "1", 1),
    ("sqlite:////srv/captions.db", "4", 4),
])
def test_drains_at_once_follow_the_database_unless_set(database, setting, drains):
    env = {"APP_ENV": "development", **SECRETS, "DATABASE_URL": database, "PERSIST_CONCURRENCY": setting}
    assert Config.from_env(env).persist_concurrency == drains


@pytest.mark.parametrize("env, fragment", [
    ({"APP_ENV": "staging"}, "APP_ENV"),
    ({"APP_ENV": "development", **SECRETS, "PORT": "http"}, "PORT must be an integer, not 'http'"),
    ({"APP_ENV": "development", **SECRETS, "MAX_BODY_BYTES": "1MB"}, "MAX_BODY_BYTES must be an integer"),
    ({"APP_ENV": "development", **SECRETS, "PERSIST_STALE_AFTER_MS": "10"}, "at least 100, not 10"),
    ({"APP_ENV": "development", **SECRETS, "DATABASE_POOLING": "statement"},
     "DATABASE_POOLING must be one of session, transaction, not 'statement'"),
    ({"APP_ENV": "development", **SECRETS, "DATABASE_POOLING": "transaction"}, "is for PostgreSQL"),
    ({"APP_ENV": "development", **SECRETS, "DATABASE_READ_URL": "postgresql://reader@replica/captions"},
     "both must be PostgreSQL URLs"),
])
def test_bad_values_are_named(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Config.from_env(env)


def test_production_through_sentinel_needs_no_redis_url():
    env = {**SECRETS, "DATABASE_URL": "postgres://u@db/captions", "REDIS_SENTINEL_MASTER": "captions",
           "REDIS_SENTINELS": "10.0.0.1:26379, sentinel-b:26380,sentinel-c", "REDIS_MIN_REPLICAS_ACK": "1"}
    config = Config.from_env(env)
    assert config.redis_sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26380), ("sentinel-c", 26379))
    assert config.redis_sentinel_master == "captions"
    assert (config.redis_min_replicas_ack, config.redis_replica_ack_timeout_ms) == (1, 500)


@pytest.mark.parametrize("redis, fragment", [
    ({"REDIS_SENTINELS": "s1:26379"}, "REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together"),
    ({"REDIS_SENTINEL_MASTER": "captions"}, "REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together"),
    ({"REDIS_SENTINELS": "s1:port", "REDIS_SENTINEL_MASTER": "captions"}, "'s1:port' is not host:port"),
    ({"REDIS_SENTINELS": "s1:70000", "REDIS_SENTINEL_MASTER": "captions"}, "'s1:70000' is not host:port"),
    ({"REDIS_SENTINELS": "s1", "REDIS_SENTINEL_MASTER": "captions", "REDIS_URL": "redis://r"}, "not both"),
    ({"REDIS_MIN_REPLICAS_ACK": "-1"}, "REDIS_MIN_REPLICAS_ACK must be at least 0"),
    ({"REDIS_REPLICA_ACK_TIMEOUT_MS": "2000"}, "below 2000, the web processes' Redis socket timeout"),
])
def test_bad_redis_settings_are_named(redis, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Config.from_env({"APP_ENV": "development", **SECRETS, **redis})


def test_transaction_pooling_is_taken_for_postgresql():
    env = {"APP_ENV": "development", **SECRETS, "DATABASE_URL": "postgresql://app@pgbouncer:6432/captions",
           "DATABASE_POOLING": "transaction"}
    assert Config.from_env(env).database_pooling == "transaction"
    assert Config.from_env({**env, "DATABASE_POOLING": ""}).database_pooling == "session"
