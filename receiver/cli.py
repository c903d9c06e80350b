"""`flask --app wsgi captions submit PATH_OR_URL…`: caption images from the command line.

Each argument is a file, a folder (searched recursively, hidden entries
skipped), an http(s) URL or the UUID of an image uploaded to Runware. Files are
checked by content like the API's images (PNG, JPG or WEBP, `MAX_IMAGE_BYTES`),
stored as queued tasks under a progress bar, and handed to the submit workers.
With `--wait` the command stays until every task has finished, printing each
caption and its cost as it lands, then a summary: tasks, failures, total cost,
elapsed time. It exits 1 if any input was refused or any task failed or was
still unfinished at `--timeout`.

`flask --app wsgi captions export FORMAT [NAME=VALUE]…` (receiver/exports.py) writes
the tasks the list's filters choose as CSV, NDJSON or caption sidecar files.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import click
from flask.cli import AppGroup

from receiver import images
from receiver import labels as label_rules
from receiver.exports import export_command
from receiver.state import engine
from receiver.state import settings
from receiver.submit import OptionError
from receiver.submit import check
from receiver.submit import parse_options
from receiver.submit import store_and_submit
from store import submissions
from store.schema import FINAL_STATUSES
from workers.payloads import UUID_RE

cli = AppGroup("captions", help="Caption images through Runware, and export what came back.")
cli.add_command(export_command)

QUEUE_CHUNK = 100
"""Tasks stored (and handed to the submit workers) per transaction."""

READ_CHUNK = 500
"""Tasks read back per query while waiting."""


def expand(sources: tuple[str, ...]) -> tuple[list[tuple[str, object]], list[str]]:
    """(name, image) pairs to check, from files, folders, URLs and UUIDs; and the sources that are none of these."""
    found, missing = [], []
    for source in sources:
        if images.is_url(source) or UUID_RE.match(source):
            found.append((source, source))
            continue
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
            found.extend((str(p), p) for p in files)
        elif path.is_file():
            found.append((str(path), path))
        else:
            missing.append(source)
    return found, missing


def _convert(max_bytes: int):
    def convert(value: object) -> str:
        if isinstance(value, Path):
            return images.from_path(value, max_bytes)
        return images.from_reference(value, max_bytes)

    return convert


def usd(amount: Decimal) -> str:
    """An amount of USD without trailing zeros: $0.0019."""
    return f"${Decimal(amount).normalize():f}"


def _line(row) -> tuple[str, bool]:
    name = row.input_name or row.task_uuid
    if row.status == "success":
        cost = f"  ({usd(row.cost)})" if row.cost is not None else ""
        return f"{name}: {row.text}{cost}", True
    return f"{name}: FAILED {row.error_code}: {row.error_message or ''}".rstrip(), False


def wait_for_results(task_uuids: list[str], timeout: float, interval: float) -> tuple[int, int, Decimal, list[str]]:
    """Print each result as it lands; (successes, failures, total cost, unfinished taskUUIDs)."""
    pending, ok, failed, total = set(task_uuids), 0, 0, Decimal(0)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        landed = []
        with engine().connect() as conn:
            ordered = sorted(pending)
            for i in range(0, len(ordered), READ_CHUNK):
                chunk = ordered[i:i + READ_CHUNK]
                landed += [r for r in submissions.outcomes(conn, chunk) if r.status in FINAL_STATUSES]
        for row in sorted(landed, key=lambda r: r.input_name or ""):
            pending.discard(row.task_uuid)
            text, success = _line(row)
            click.echo(text, err=not success)
            if success:
                ok += 1
                total += row.cost or 0
            else:
                failed += 1
        if pending:
            time.sleep(interval)
    return ok, failed, total, sorted(pending)


@cli.command("submit")
@click.argument("sources", nargs=-1, required=True, metavar="PATH_OR_URL...")
@click.option("--model", help="AIR ID of the caption model (default: Runware's)")
@click.option("--cost/--no-cost", "include_cost", default=True, show_default=True, help="ask Runware for the cost")
@click.option("--delivery", type=click.Choice(["async", "sync"]), default="async", show_default=True,
              help="async: results come to the webhook; sync: in Runware's answer")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="a label of every task, added to its webhookURL (repeatable)")
@click.option("--wait", is_flag=True, help="wait for the results, print them, and summarise")
@click.option("--timeout", type=float, help="with --wait: stop waiting after this many seconds "
              "[default: RESULT_DEADLINE_SECONDS + 2 reconcile intervals]")
@click.option("--interval", type=float, default=0.5, show_default=True, help="with --wait: seconds between looks")
def submit(sources, model, include_cost, delivery, labels, wait, timeout, interval):
    """Caption the images at PATH_OR_URL… (files, folders, http(s) URLs, image UUIDs)."""
    config = settings()
    started = time.monotonic()
    try:
        labels = label_rules.checked(label_rules.from_assignment(text) for text in labels)
    except label_rules.LabelError as exc:
        raise click.BadParameter(str(exc), param_hint="--label") from None
    try:
        options = parse_options({"model": model, "includeCost": include_cost, "deliveryMethod": delivery,
                                 "labels": labels})
    except OptionError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None
    inputs, missing = expand(sources)
    problems = [f"{source}: no such file or folder, and not an http(s) URL or image UUID" for source in missing]
    convert, queued, batch = _convert(config.max_image_bytes), [], []
    with click.progressbar(inputs, label="Queuing images", file=sys.stderr, show_pos=True) as bar:
        for name, value in bar:
            [outcome], new = check([(name, value)], options, convert)
            if outcome.error:
                problems.append(f"{name}: {outcome.error}")
                continue
            queued.append((outcome.task_uuid, name))
            if isinstance(value, Path):  # kept for `captions export sidecars`
                new = [replace(task, input_path=str(value.resolve())) for task in new]
            batch += new
            if len(batch) >= QUEUE_CHUNK:
                store_and_submit(batch)
                batch = []
        if batch:
            store_and_submit(batch)
    for problem in problems:
        click.echo(problem, err=True)
    rejected = len(problems)
    click.echo(f"{len(queued)} tasks queued, {rejected} inputs refused", err=True)
    if not wait:
        for task_uuid, name in queued:
            click.echo(f"{task_uuid}\t{name}")
        raise SystemExit(1 if rejected else 0)
    timeout = timeout if timeout is not None else config.result_deadline_seconds + 2 * config.reconcile_interval_seconds
    ok, failed, total, unfinished = wait_for_results([u for u, _ in queued], timeout, interval)
    elapsed = time.monotonic() - started
    summary = (f"{len(queued)} tasks: {ok} captioned, {failed} failed"
               + (f", {len(unfinished)} unfinished after {timeout:g}s" if unfinished else "")
               + (f"; {rejected} inputs refused" if rejected else "")
               + f"; total cost {usd(total)}; {elapsed:.1f}s")
    click.echo(summary)
    raise SystemExit(1 if failed or unfinished or rejected else 0)
