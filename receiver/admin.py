"""Dead letters: `GET /api/dead-letters`, `POST /api/dead-letters/replay`, and `flask deadletters ...`.

Who may do what:
- listing shows stored results, as the task API does: a read token (READ_TOKENS)
  or an admin token;
- replaying writes into the store (it changes task states and delivery counts),
  an operator's act: an admin token (ADMIN_TOKENS) only. Submit tokens are
  handed to every system that sends work, read tokens to every dashboard; neither
  should be able to rewrite results. ADMIN_TOKENS has no default: unset, replay
  over HTTP is refused to everyone, and operators use the CLI (which needs shell
  access and the database settings anyway).

Replay chooses pending letters by id (`{"ids": [1, 2]}`), by the time they were
dead-lettered (`{"since": "2026-01-01T00:00:00Z", "until": ...}`, either end
optional, `until` exclusive) or all (`{"all": true}`); at most `limit` (default
and maximum 1000) per call, the answer saying how many remain.
"""

from __future__ import annotations

import json
from datetime import UTC
from datetime import datetime

import click
from flask import Blueprint
from flask import jsonify
from flask import request
from flask.cli import AppGroup

from receiver.auth import bearer_token
from receiver.auth import token_matches
from receiver.errors import error_response
from receiver.openapi import operation
from receiver.params import ParamError
from receiver.params import Params
from receiver.state import engine
from receiver.state import settings
from receiver.state import writer_engine
from workers import maintenance

bp = Blueprint("admin", __name__, url_prefix="/api")
cli = AppGroup("deadletters", help="List and replay dead letters (items the database refused).")

STATES = ("pending", "replayed", "all")
MAX_ID = 2**31 - 1
"""The largest dead-letter id (the column is a 32-bit integer in PostgreSQL)."""


class BadRequest(ValueError):
    """A parameter is unusable; the message names it."""


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time (`Z` or an offset; none means UTC), or None when not given."""
    if value in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise BadRequest(f"{name}: not an ISO 8601 time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_replay(body: object) -> dict:
    """The selection of a replay request: exactly one of ids, a time range, or all."""
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object: {"ids": [...]}, {"since": ..., "until": ...} or {"all": true}')
    ids = body.get("ids")
    ranged = body.get("since") is not None or body.get("until") is not None
    everything = body.get("all") is True
    if sum((ids is not None, ranged, everything)) != 1:
        raise BadRequest("give exactly one of: ids, since/until, all")
    if ids is not None and (not isinstance(ids, list) or not ids or not all(
            isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= MAX_ID for i in ids)):
        raise BadRequest(f"ids: must be a non-empty array of dead-letter ids (integers from 1 to {MAX_ID})")
    limit = body.get("limit", maintenance.REPLAY_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= maintenance.REPLAY_LIMIT:
        raise BadRequest(f"limit: must be an integer from 1 to {maintenance.REPLAY_LIMIT}")
    return {"ids": ids, "since": parse_time(body.get("since"), "since"),
            "until": parse_time(body.get("until"), "until"), "limit": limit}


def _refused():
    return error_response(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


@bp.get("/dead-letters")
@operation(summary="Dead letters, in id order", tags=["dead letters"], auth=("read", "admin"),
           query="DeadLetterQuery", responses={200: "DeadLetterPage"}, errors=(400, 503))
def list_letters():
    config = settings()
    if not token_matches(bearer_token(), config.read_tokens + config.admin_tokens):
        return _refused()
    try:
        params = Params(request.args, ("state", "since", "until", "after", "limit"))
        state = params.text("state") or "pending"
        if state not in STATES:
            raise ParamError("state", f"one of {', '.join(STATES)}")
        since, until = params.time("since"), params.time("until")
        after = params.integer("after", 0, 0, 999_999_999)
        limit = params.integer("limit", 100, 1, 1000)
    except ParamError as exc:
        return error_response(400, exc.message, parameter=exc.parameter)
    with engine().connect() as conn:
        letters = maintenance.list_dead_letters(conn, state=state, since=since, until=until, after=after, limit=limit)
        counts = maintenance.count_dead_letters(conn)
    return jsonify(dead_letters=letters, counts=counts, next_after=letters[-1]["id"] if len(letters) == limit else None)


@bp.post("/dead-letters/replay")
@operation(summary="Store pending dead letters again", tags=["dead letters"], auth=("admin",),
           body={"application/json": "Replay"}, responses={200: "ReplayReport"}, errors=(400, 503))
def replay_letters():
    if not token_matches(bearer_token(), settings().admin_tokens):
        return _refused()
    try:
        selection = parse_replay(request.get_json(silent=True))
    except BadRequest as exc:
        return error_response(400, str(exc))
    report = maintenance.replay_dead_letters(writer_engine(), **selection)
    return jsonify(report.as_json())


# -- command line: flask --app wsgi deadletters ... -----------------------------------------------


def _cli_time(value: str | None, name: str) -> datetime | None:
    try:
        return parse_time(value, name)
    except BadRequest as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("list")
@click.option("--state", type=click.Choice(STATES), default="pending", show_default=True)
@click.option("--since", help="dead-lettered at or after this ISO 8601 time")
@click.option("--until", help="dead-lettered before this ISO 8601 time")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
def list_command(state, since, until, limit):
    """Print dead letters, one JSON object a line, oldest first."""
    with engine().connect() as conn:
        letters = maintenance.list_dead_letters(conn, state=state, since=_cli_time(since, "since"),
                                                until=_cli_time(until, "until"), limit=limit)
        counts = maintenance.count_dead_letters(conn)
    for letter in letters:
        click.echo(json.dumps(letter, sort_keys=True))
    click.echo(f"{len(letters)} shown; {counts['pending']} pending, {counts['replayed']} replayed", err=True)


@cli.command("replay")
@click.option("--id", "ids", type=int, multiple=True, help="a dead-letter id (repeatable)")
@click.option("--since", help="dead-lettered at or after this ISO 8601 time")
@click.option("--until", help="dead-lettered before this ISO 8601 time")
@click.option("--all", "everything", is_flag=True, help="every pending dead letter")
def replay_command(ids, since, until, everything):
    """Store the items of pending dead letters again; exits 1 if any is refused again."""
    chosen = sum((bool(ids), since is not None or until is not None, everything))
    if chosen != 1:
        raise click.UsageError("give exactly one of: --id, --since/--until, --all")
    failed = 0
    while True:
        report = maintenance.replay_dead_letters(writer_engine(), ids=list(ids) or None,
                                                 since=_cli_time(since, "since"), until=_cli_time(until, "until"))
        for letter in report.failed:
            click.echo(f"dead letter {letter['id']} refused again: {letter['reason']}", err=True)
        failed += len(report.failed)
        click.echo(f"replayed {len(report.replayed)}; {report.remaining} still pending in the selection")
        # Letters refused again stay pending: go on only while a round makes progress.
        if not report.replayed or report.remaining == 0:
            break
    raise SystemExit(1 if failed else 0)
