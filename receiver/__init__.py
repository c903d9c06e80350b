"""The Flask app: webhook intake, query API and health checks."""

from __future__ import annotations

from flask import Flask

from config import Config
from receiver.errors import register_error_handlers
from workers.queues import connect


def create_app(config: Config | None = None) -> Flask:
    """Build the app from `config`, or from the environment when none is given."""
    config = config or Config.from_env()
    app = Flask(__name__)
    app.config.update(SERVICE=config, MAX_CONTENT_LENGTH=config.max_body_bytes, JSON_SORT_KEYS=False)
    app.extensions["redis"] = connect(config.redis_url)
    register_blueprints(app)
    register_error_handlers(app)
    register_commands(app)
    return app


def register_blueprints(app: Flask) -> None:
    """Mount each surface of the service."""
    from receiver import admin
    from receiver import api
    from receiver import dashboard
    from receiver import health
    from receiver import metrics
    from receiver import submit
    from receiver import webhooks

    for module in (webhooks, api, submit, admin, health, metrics, dashboard):
        app.register_blueprint(module.bp)


def register_commands(app: Flask) -> None:
    """Add the operators' command groups to `flask --app wsgi ...`."""
    from receiver import admin
    from receiver import cli

    app.cli.add_command(admin.cli)
    app.cli.add_command(cli.cli)
