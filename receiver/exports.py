"""`GET /api/tasks.csv` and `GET /api/tasks.ndjson`: the task list as a download, read token required.

The parameters are the list's filters (`status`, `source`, `since`, `until`, `q`,
`label.K`: see receiver/api.py), parsed by the same code, and the rows are the list's, in its order,
with the fields it shows (store/export.py). The answer is streamed: the service holds
one chunk of `store.export.CHUNK` tasks at a time, whatever the export's length.

Time limits suit a long stream. READ_TIMEOUT_MS bounds each chunk's queries (one
connection checkout per chunk), not the response; after each chunk the worker tells
gunicorn it is alive (`keep_alive`, set by deploy/gunicorn.conf.py), so its worker
timeout only stops an export whose single chunk stalls; nginx's proxy_read_timeout
counts between two reads, not over the whole answer. The first chunk is read before
the answer starts, so a bad parameter is a 400 and a store too slow or down a 503,
as for the list; a failure later cuts the stream short (no final chunk of the
chunked encoding: clients report a truncated transfer), never a silent partial file.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import click
from flask import Blueprint
from flask import Response
from flask import request
from flask.cli import with_appcontext
from werkzeug.datastructures import MultiDict

from receiver import api
from receiver.auth import require_bearer
from receiver.openapi import operation
from receiver.params import ParamError
from receiver.state import engine
from store import export
from store.schema import utcnow

bp = Blueprint("exports", __name__, url_prefix="/api")
bp.after_request(api.never_cache)
bp.errorhandler(ParamError)(api.bad_parameter)

def keep_alive() -> None:
    """Called after each chunk; gunicorn's workers replace it with their heartbeat (deploy/gunicorn.conf.py)."""


def _beating(pages: Iterator[export.Chunk]) -> Iterator[export.Chunk]:
    for page in pages:
        yield page
        keep_alive()


@bp.get("/tasks.<any(csv, ndjson):fmt>")
@operation(summary="The task list as a CSV or NDJSON download", tags=["tasks"], auth=("read",),
           query="TaskFilters", responses={200: {"text/csv": None, "application/x-ndjson": None}},
           errors=(400, 404, 503))
@require_bearer("read_tokens")
def export_tasks(fmt: str):
    """Every task the filters choose, newest first, as a CSV or NDJSON attachment."""
    filters, _ = api.list_filters(request.args)
    columns, encode, media_type = export.FORMATS[fmt]
    pages = export.chunks(engine(), filters, columns)
    first = next(pages)  # here, so that its errors are answered like the list's
    name = f"tasks-{utcnow():%Y%m%dT%H%M%SZ}.{fmt}"
    return Response(encode(_beating(itertools.chain([first], pages))), mimetype=media_type,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


# -- `flask --app wsgi captions export` ---------------------------------------------------------


@click.command("export")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["csv", "ndjson", "sidecars"]))
@click.argument("filters", nargs=-1, metavar="[NAME=VALUE]...")
@click.option("-o", "--output", type=click.File("wb", atomic=True), default="-", show_default=True,
              help="csv, ndjson: the file to write (written whole or not at all; '-': standard output)")
@click.option("--overwrite", is_flag=True, help="sidecars: replace caption files that exist already")
@with_appcontext
def export_command(fmt, filters, output, overwrite):
    """Export the tasks the list's filters choose, newest first, as CSV, NDJSON, or caption sidecar files.

    Filters are the API's (`GET /api/tasks`): status=error, source=submitted,
    since=2026-06-01, until=…, q="red car", label.projectId=p1. `sidecars` writes each caption
    beside the image file `captions submit` read it from (photo.jpg ->
    photo.txt), the layout image-training tools read.
    """
    args = MultiDict()
    for pair in filters:
        name, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="filters")
        args.add(name, value)
    try:
        selection, _ = api.list_filters(args)
    except ParamError as exc:
        raise click.BadParameter(exc.message, param_hint="filters") from None
    with click.progressbar(itertools.repeat(None), label="Exporting tasks", file=sys.stderr, show_pos=True) as bar:
        if fmt == "sidecars":
            written = write_sidecars(_counting(export.chunks(engine(), selection), bar), overwrite)
            click.echo(", ".join(f"{n} {what}" for what, n in written.items()), err=True)
        else:
            columns, encode, _ = export.FORMATS[fmt]
            for piece in encode(_counting(export.chunks(engine(), selection, columns), bar)):
                output.write(piece)
    click.echo(f"{bar.pos} tasks exported", err=True)


def _counting(pages: Iterator[export.Chunk], bar) -> Iterator[export.Chunk]:
    for page in pages:
        yield page
        bar.update(len(page.rows))


def write_sidecars(pages: Iterator[export.Chunk], overwrite: bool) -> dict[str, int]:
    """Write `photo.txt` beside `photo.jpg` for each captioned task read from a local file; counts of each outcome."""
    counts = {"caption files written": 0, "kept (they exist; --overwrite replaces them)": 0,
              "without a caption or a local image file": 0, "whose image file is gone": 0,
              "older captions of an image captioned again": 0}
    written, kept, skipped, gone, older = counts
    done: set[Path] = set()  # the list is newest first: the newest caption of an image wins
    for chunk in pages:
        captioned = {t.taskUUID: t.text for t in chunk.rows if t.status == "success" and t.text is not None}
        with engine().connect() as conn:
            paths = export.file_paths(conn, list(captioned))
        counts[skipped] += len(chunk.rows) - len(paths)
        for task_uuid in (t.taskUUID for t in chunk.rows if t.taskUUID in paths):
            sidecar = export.sidecar_path(paths[task_uuid])
            if sidecar in done:
                counts[older] += 1
                continue
            done.add(sidecar)
            if not Path(paths[task_uuid]).is_file():
                counts[gone] += 1
            elif sidecar.exists() and not overwrite:
                counts[kept] += 1
            else:
                sidecar.write_text(captioned[task_uuid] + "\n", encoding="utf-8")
                counts[written] += 1
    return counts
