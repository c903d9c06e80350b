"""The Flask apps, one per process kind, from one factory.

- `intake`: webhook receipt (token, parse, queue in Redis) and its health
  checks. Nothing the readers need is imported into its processes, and no
  reader can occupy them.
- `api`: the readers: query API, dashboard, submission API, dead letters,
  /metrics, health checks and the operators' CLI commands. Their database work
  is bounded by READ_TIMEOUT_MS (store/db.py).

deploy/nginx.conf sends /webhooks/ to the intake's gunicorn and the rest to the api's.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from config import WEB_REDIS_TIMEOUT_S
from config import Config
from receiver.errors import register_database_error_handlers
from receiver.errors import register_error_handlers
from receiver.read_budget import ReadBudget
from workers.connection import connect

KINDS = ("intake", "api")
"""Process kinds, each with its own app and gunicorn (deploy/gunicorn.conf.py, APP_KIND)."""


def create_app(config: Config | None = None, kind: str = "api") -> Flask:
    """Build the `kind` app from `config`, or from the environment when none is given."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    config = config or Config.from_env()
    app = Flask(__name__)
    app.config.update(SERVICE=config, APP_KIND=kind, MAX_CONTENT_LENGTH=config.max_body_bytes,
                      JSON_SORT_KEYS=False)
    app.extensions["redis"] = connect(config, timeout=WEB_REDIS_TIMEOUT_S)
    register_error_handlers(app)
    if kind == "intake":
        register_intake(app)
    else:
        if config.read_concurrency:
            app.extensions["read_budget"] = ReadBudget(Path(config.read_slots_dir), config.read_concurrency,
                                                       config.read_queue_ms)
        register_readers(app)
        register_database_error_handlers(app)
        register_commands(app)
    return app


def register_intake(app: Flask) -> None:
    """Mount webhook receipt and the health checks."""
    from receiver import health
    from receiver import webhooks

    for module in (webhooks, health):
        app.register_blueprint(module.bp)


def register_readers(app: Flask) -> None:
    """Mount each surface of the readers' app."""
    from receiver import admin
    from receiver import api
    from receiver import dashboard
    from receiver import exports
    from receiver import health
    from receiver import intake_status
    from receiver import metrics
    from receiver import openapi
    from receiver import series
    from receiver import submit
    from receiver import thumbnails

    for module in (api, series, thumbnails, exports, submit, admin, health, metrics, dashboard, intake_status, openapi):
        app.register_blueprint(module.bp)


def register_commands(app: Flask) -> None:
    """Add the operators' command groups to `flask --app wsgi ...`."""
    from receiver import admin
    from receiver import cli

    app.cli.add_command(admin.cli)
    app.cli.add_command(cli.cli)
