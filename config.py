"""Configuration, read from the environment in one place.

Every process (gunicorn workers, RQ workers, the CLI) builds a `Config` from
`os.environ`. In production (`APP_ENV=production`, the default) the secrets and
the connection URLs have no defaults, so a misconfigured deploy stops at start-up
with a message naming what is missing. In development (`APP_ENV=development`,
set by `make run` and the tests) the URLs default to a local Redis and a SQLite
file under `./var/`, and missing tokens are read from `var/secrets.env`, which
the local launcher writes.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VAR_DIR = ROOT / "var"
SECRETS_FILE = VAR_DIR / "secrets.env"
TOKEN_SETTINGS = ("WEBHOOK_TOKENS", "READ_TOKENS", "SUBMIT_TOKENS")
REDIS_TIMEOUT_S = 5.0
"""Socket timeout of the workers' Redis clients (workers/connection.py), all but the RQ workers' (whose
dequeue blocks for minutes)."""

WEB_REDIS_TIMEOUT_S = 2.0
"""Socket timeout of the web processes' Redis client: a webhook's round trip takes milliseconds, and a primary
whose host is lost (no answer, not a refusal) must cost a request a 503 within a sender's 10 s, retries and
the sentinels' question included, not a hang."""

SENTINEL_PORT = 26379
"""Port of a sentinel of REDIS_SENTINELS given without one."""


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def _tokens(value: str | None) -> tuple[str, ...]:
    """Split a comma-separated token list, dropping blanks."""
    return tuple(t.strip() for t in (value or "").split(",") if t.strip())


def signing_keys(value: str | None) -> tuple[bytes, ...]:
    """Decode comma-separated Standard Webhooks secrets (`whsec_` + base64 of at least 24 bytes)."""
    keys = []
    for n, secret in enumerate(_tokens(value), 1):
        encoded = secret.removeprefix("whsec_")
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"WEBHOOK_SIGNING_SECRETS: secret {n} is not whsec_ followed by base64") from None
        if len(key) < 24:
            raise ConfigError(f"WEBHOOK_SIGNING_SECRETS: secret {n} is shorter than 24 bytes")
        keys.append(key)
    return tuple(keys)


def sentinels(value: str | None) -> tuple[tuple[str, int], ...]:
    """Parse REDIS_SENTINELS: comma-separated host:port (port SENTINEL_PORT when left out)."""
    found = []
    for item in _tokens(value):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", str(SENTINEL_PORT))
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"REDIS_SENTINELS: {item!r} is not host:port")
        found.append((host.strip("[]"), int(port)))
    return tuple(found)


def _redis_settings(env: dict[str, str]) -> dict:
    """REDIS_URL, or REDIS_SENTINELS with REDIS_SENTINEL_MASTER (never both); ConfigError says what is wrong."""
    found, master = sentinels(env.get("REDIS_SENTINELS")), env.get("REDIS_SENTINEL_MASTER", "").strip()
    if bool(found) != bool(master):
        raise ConfigError("REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together: set both (Sentinel) or neither")
    if found and env.get("REDIS_URL", "").strip():
        raise ConfigError("set REDIS_URL (one Redis) or REDIS_SENTINELS and REDIS_SENTINEL_MASTER (Sentinel), not both")
    if found:
        return {"redis_sentinels": found, "redis_sentinel_master": master}
    return {"redis_url": env.get("REDIS_URL") or Config.redis_url}


def _read_env_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines (as written by the local launcher)."""
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def database_url(url: str) -> str:
    """Normalise a database URL to the drivers this project pins (psycopg 3 for PostgreSQL)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@dataclass(frozen=True)
class Config:
    """All settings of the service. Build it with `Config.from_env()`."""

    app_env: str = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis through Sentinel instead of REDIS_URL: the primary of this master name, as the sentinels say.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = ""
    # Replicas that must confirm a delivery (Redis WAIT) before the intake answers 2xx; 0: the primary's word.
    redis_min_replicas_ack: int = 0
    redis_replica_ack_timeout_ms: int = 500
    database_url: str = f"sqlite:///{VAR_DIR / 'captions.db'}"
    # `transaction`: PostgreSQL through a pooler in transaction pooling (PgBouncer); see store/db.py.
    database_pooling: str = "session"
    # A streaming replica of DATABASE_URL's PostgreSQL for the readers (query API, dashboard, metrics); "": none.
    database_read_url: str = ""
    webhook_tokens: tuple[str, ...] = ()
    read_tokens: tuple[str, ...] = ()
    submit_tokens: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    public_url: str = ""
    runware_api_url: str = ""
    runware_api_key: str = ""
    persist_batch_size: int = 1000
    retry_after_seconds: int = 5
    admin_tokens: tuple[str, ...] = ()
    delivery_retention_days: int = 30
    thumbnail_retention_days: int = 30
    persist_stale_after_ms: int = 15_000
    persist_concurrency: int = 2
    # Submission and reconciliation of the tasks this service sends.
    submit_batch_size: int = 10
    submit_max_attempts: int = 8
    reconcile_after_seconds: int = 60
    reconcile_interval_seconds: int = 30
    result_deadline_seconds: int = 900
    max_image_bytes: int = 10 * 1024 * 1024
    max_submit_body_bytes: int = 64 * 1024 * 1024
    # The readers' database budget per request (store/db.py): past it a read is cancelled and answered 503.
    read_timeout_ms: int = 5000
    # The host's budget of readers' requests in the database at once (receiver/read_budget.py); 0: no bound.
    read_concurrency: int = field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2))
    read_queue_ms: int = 2000
    read_slots_dir: str = field(
        default_factory=lambda: str(Path(tempfile.gettempdir()) / f"captions-read-slots-{os.getuid()}"))
    # Standard Webhooks signatures (receiver/signatures.py): required when keys are set.
    webhook_signing_keys: tuple[bytes, ...] = field(default=(), repr=False)
    webhook_signature_tolerance_seconds: int = 300
    # Bearer tokens for GET /metrics besides READ_TOKENS (for a Prometheus scraper).
    metrics_tokens: tuple[str, ...] = field(default=(), repr=False)
    # Backpressure (receiver/backpressure.py): webhooks get 503 above the high-water mark.
    intake_high_water_percent: int = 80
    intake_low_water_percent: int = 60
    intake_max_backlog: int = 0
    intake_check_interval_ms: int = 250

    @property
    def production(self) -> bool:
        return self.app_env == "production"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        """Read the settings; raise ConfigError naming every missing or bad one."""
        env = dict(os.environ if environ is None else environ)
        app_env = env.get("APP_ENV", "production")
        if app_env not in ("production", "development"):
            raise ConfigError(f"APP_ENV must be 'production' or 'development', not {app_env!r}")
        production = app_env == "production"
        if not production:
            for key, value in _read_env_file(SECRETS_FILE).items():
                env.setdefault(key, value)

        redis_required = [] if env.get("REDIS_SENTINELS", "").strip() else ["REDIS_URL"]
        required = [*TOKEN_SETTINGS, *redis_required, "DATABASE_URL"] if production else list(TOKEN_SETTINGS)
        missing = [key for key in required if not env.get(key, "").strip()]
        if missing:
            hint = "set them in the environment" if production else "run `make run` once, or set them"
            raise ConfigError(f"missing settings: {', '.join(missing)} ({hint})")

        numbers = _integers(env)
        high, low = numbers.get("intake_high_water_percent", 80), numbers.get("intake_low_water_percent", 60)
        if not low < high <= 100:
            raise ConfigError(f"INTAKE_LOW_WATER_PERCENT ({low}) must be below INTAKE_HIGH_WATER_PERCENT ({high}), "
                              "itself at most 100")
        if numbers.get("redis_replica_ack_timeout_ms", cls.redis_replica_ack_timeout_ms) >= WEB_REDIS_TIMEOUT_S * 1000:
            raise ConfigError(f"REDIS_REPLICA_ACK_TIMEOUT_MS must be below {WEB_REDIS_TIMEOUT_S * 1000:.0f}, "
                              "the web processes' Redis socket timeout")
        host = env.get("HOST", cls.host)
        db_url = database_url(env.get("DATABASE_URL") or cls.database_url)
        pooling = env.get("DATABASE_POOLING", "").strip() or cls.database_pooling
        if pooling not in POOLING_MODES:
            raise ConfigError(f"DATABASE_POOLING must be one of {', '.join(POOLING_MODES)}, not {pooling!r}")
        if pooling != cls.database_pooling and not db_url.startswith("postgresql"):
            raise ConfigError(f"DATABASE_POOLING={pooling} is for PostgreSQL; DATABASE_URL is not a PostgreSQL URL")
        read_url = database_url(env.get("DATABASE_READ_URL", "").strip())
        if read_url and not (read_url.startswith("postgresql") and db_url.startswith("postgresql")):
            raise ConfigError("DATABASE_READ_URL is a PostgreSQL replica of DATABASE_URL's PostgreSQL; "
                              "both must be PostgreSQL URLs")
        numbers.setdefault("persist_concurrency", default_persist_concurrency(db_url))
        return cls(
            app_env=app_env,
            host=host,
            **_redis_settings(env),
            database_url=db_url,
            database_pooling=pooling,
            database_read_url=read_url,
            webhook_tokens=_tokens(env.get("WEBHOOK_TOKENS")),
            read_tokens=_tokens(env.get("READ_TOKENS")),
            submit_tokens=_tokens(env.get("SUBMIT_TOKENS")),
            public_url=(env.get("PUBLIC_URL") or f"http://{host}:{numbers.get('port', cls.port)}").rstrip("/"),
            runware_api_url=env.get("RUNWARE_API_URL", ""),
            runware_api_key=env.get("RUNWARE_API_KEY", ""),
            admin_tokens=_tokens(env.get("ADMIN_TOKENS")),
            webhook_signing_keys=signing_keys(env.get("WEBHOOK_SIGNING_SECRETS")),
            metrics_tokens=_tokens(env.get("METRICS_TOKENS")),
            **({"read_slots_dir": env["READ_SLOTS_DIR"]} if env.get("READ_SLOTS_DIR", "").strip() else {}),
            **numbers,
        )


POOLING_MODES = ("session", "transaction")
"""DATABASE_POOLING: each connection the service's own session, or one server connection per transaction."""


def default_persist_concurrency(url: str) -> int:
    """Drains at once: SQLite serialises writes (a second drain only overlaps parsing);
    PostgreSQL writes in parallel, and a third drain still paid (bench/README.md)."""
    return 3 if url.startswith("postgresql") else 2


INTEGER_SETTINGS = {
    "PORT": (1, "the service's port (the local nginx's under make run; a gunicorn's without --bind)"),
    "MAX_BODY_BYTES": (1, "largest webhook body"),
    "PERSIST_BATCH_SIZE": (1, "deliveries a drain writes per transaction"),
    "PERSIST_CONCURRENCY": (1, "drains that may run at once under a backlog, run as many persist workers "
                               "(default 2 on SQLite, 3 on PostgreSQL)"),
    "PERSIST_STALE_AFTER_MS": (100, "a delivery pending this long with a silent drain is claimed by another"),
    "DELIVERY_RETENTION_DAYS": (1, "days the delivery log is kept"),
    "THUMBNAIL_RETENTION_DAYS": (1, "days the thumbnail of a submitted image is kept"),
    "WEBHOOK_SIGNATURE_TOLERANCE_SECONDS": (1, "how far a signed webhook's timestamp may be from now"),
    "SUBMIT_BATCH_SIZE": (1, "tasks per Runware request"),
    "SUBMIT_MAX_ATTEMPTS": (1, "times a task is sent before a transient failure becomes final"),
    "RECONCILE_AFTER_SECONDS": (1, "a submitted task without a result is polled with getResponse after this long"),
    "RECONCILE_INTERVAL_SECONDS": (1, "how often the reconcile job runs (`python -m workers cron`)"),
    "RESULT_DEADLINE_SECONDS": (1, "a submitted task still without a result is failed (code timeout) after this long"),
    "MAX_IMAGE_BYTES": (1, "largest image accepted for captioning, decoded"),
    "MAX_SUBMIT_BODY_BYTES": (1, "largest POST /api/captions body (JSON or multipart)"),
    "INTAKE_HIGH_WATER_PERCENT": (1, "webhooks get 503 once Redis uses this share of its maxmemory"),
    "INTAKE_LOW_WATER_PERCENT": (1, "and are accepted again once it is back under this share"),
    "INTAKE_MAX_BACKLOG": (0, "webhooks get 503 once this many deliveries wait in Redis (0: no limit by count)"),
    "INTAKE_CHECK_INTERVAL_MS": (10, "how often each web process looks at Redis memory and the backlog"),
    "READ_TIMEOUT_MS": (1, "how long a reader's request may spend in the database before its query is cancelled "
                           "and it is answered 503 (well below gunicorn's 30 s worker timeout)"),
    "READ_CONCURRENCY": (0, "readers' requests in the database at once on this host, all api processes together "
                            "(0: no bound; default half the cores, at least 1)"),
    "REDIS_MIN_REPLICAS_ACK": (0, "replicas that must confirm a delivery before it is answered 2xx, else 503 "
                                  "(0: off)"),
    "REDIS_REPLICA_ACK_TIMEOUT_MS": (1, "how long the intake waits for those confirmations"),
    "READ_QUEUE_MS": (0, "how long a reader's request waits for one of those before it is answered 503"),
}
"""Integer settings: the smallest value each accepts, and what it means. The field is the name in lower case."""


def _integers(env: dict[str, str]) -> dict[str, int]:
    """The INTEGER_SETTINGS that are set, as fields; ConfigError names a bad one."""
    values = {}
    for key, (minimum, _) in INTEGER_SETTINGS.items():
        raw = env.get(key, "").strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{key} must be an integer, not {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{key} must be at least {minimum}, not {value}")
        values[key.lower()] = value
    return values
