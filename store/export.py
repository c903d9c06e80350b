"""Exports of the task list: every task its filters choose, in its order, as CSV or NDJSON, in constant memory.

An export is the list's own query (`store.queries.list_tasks`) walked chunk after
chunk by keyset (each chunk continues after the sort key of the last row before),
so it holds one chunk at a time whatever its length. Each chunk takes a connection
of its own: on the readers' engine READ_TIMEOUT_MS bounds each chunk's queries, not
the whole export. Like the list's pages, a task changed while the walk runs moves
to the top of the list's order, so it may be left out (it is never repeated).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import orjson
import sqlalchemy as sa

from store import queries
from store.schema import tasks

CHUNK = 1000
"""Tasks read per query (and per connection checkout)."""

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a CSV cell as a formula (OWASP, CSV injection)."""


def chunks(engine: sa.Engine, filters: dict, chunk: int | None = None) -> Iterator[list[dict]]:
    """The list's tasks under `filters` (keyword arguments of `list_tasks`), `chunk` (default CHUNK) at a time,
    as the API shows them. The last chunk may be empty."""
    after = None
    while True:
        with engine.connect() as conn:
            page, after = queries.list_tasks(conn, **filters, after=after, limit=chunk or CHUNK)
        yield page
        if after is None:
            return


def csv_cell(value: object) -> object:
    """A value as the CSV writer takes it: JSON for lists and objects, true/false, and a formula defused with a
    leading `'`; None (an empty cell), numbers and other text as they are."""
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_STARTS) else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return csv_cell(orjson.dumps(value).decode())
    return value


def csv_lines(pages: Iterator[list[dict]]) -> Iterator[bytes]:
    """UTF-8 CSV (RFC 4180, CRLF), a header of the tasks' field names, then a line per task; one piece per chunk.

    Text cells are defused inline (this loop runs for every cell of the export): see `csv_cell`.
    """
    out = io.StringIO()
    writer = csv.writer(out)
    columns = None
    for page in pages:
        if columns is None:
            columns = list(page[0]) if page else list(queries.PUBLIC_FIELDS)
            writer.writerow(columns)
        writer.writerows(
            [("'" + v if v.startswith(FORMULA_STARTS) else v) if v.__class__ is str
             else (v if v is None or v.__class__ in (int, float) else csv_cell(v))
             for v in map(task.get, columns)]
            for task in page)
        yield out.getvalue().encode()
        out.seek(0)
        out.truncate()


def ndjson_lines(pages: Iterator[list[dict]]) -> Iterator[bytes]:
    """Newline-delimited JSON: one task object per line, as `GET /api/tasks` shows it; one piece per chunk."""
    for page in pages:
        yield b"".join(orjson.dumps(task) + b"\n" for task in page)


FORMATS: dict[str, tuple[Callable[[Iterator[list[dict]]], Iterator[bytes]], str]] = {
    "csv": (csv_lines, "text/csv"),
    "ndjson": (ndjson_lines, "application/x-ndjson"),
}
"""Export format -> (encoder, media type; text is UTF-8)."""


def file_paths(conn: sa.Connection, task_uuids: list[str]) -> dict[str, str]:
    """The local image file behind each of `task_uuids` that `captions submit` read from disk."""
    if not task_uuids:
        return {}
    stmt = sa.select(tasks.c.task_uuid, tasks.c.input_path).where(
        tasks.c.task_uuid.in_(task_uuids), tasks.c.input_path.is_not(None))
    return {task_uuid: path for task_uuid, path in conn.execute(stmt)}


def sidecar_path(image: str) -> Path:
    """Where an image's caption file goes: beside it, same name, `.txt` (`photo.jpg` -> `photo.txt`)."""
    return Path(image).with_suffix(".txt")
