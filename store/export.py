"""Exports of the task list: every task its filters choose, in its order, as CSV or NDJSON, in constant memory.

An export is the list's own query (`store.queries.list_rows`) walked chunk after
chunk by keyset (each chunk continues after the sort key of the last row before),
so it holds one chunk at a time whatever its length. Each chunk takes a connection
of its own: on the readers' engine READ_TIMEOUT_MS bounds each chunk's queries, not
the whole export. Like the list's pages, a task changed while the walk runs moves
to the top of the list's order, so it may be left out (it is never repeated).

A chunk is one query of the columns its format needs: the database writes the times
as the list's ISO text (`iso_time`) and, for CSV, each cell as the CSV shows it
(formulas defused, true/false); its tasks' labels are one more query. A row becomes
a line in one step, with no object of the API's built for it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from store import queries
from store.schema import tasks
from store.schema import thumbnails

CHUNK = 1000
"""Tasks read per query (and per connection checkout)."""

FIELDS = (*queries.PUBLIC_FIELDS, "labels", "labelConflicts", "thumbnail")
"""An exported task's fields, in order: the list's (`GET /api/tasks`, store.queries.with_labels)."""

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a CSV cell as a formula (OWASP, CSV injection)."""


class iso_time(FunctionElement):  # noqa: N801 (an SQL function, named like one)
    """A time column as the text `datetime.isoformat()` gives of its value as the list reads it, written by the
    database: `2026-06-01T12:00:00.250000+00:00`, without the fraction when it is zero.

    SQLite holds SQLAlchemy's text `2026-06-01 12:00:00.250000` (UTC, every writer binds through
    UTCDateTime); PostgreSQL's `to_char` writes the time and the offset in the session's time zone,
    as psycopg reads it.
    """

    type = sa.String()
    inherit_cache = True


@compiles(iso_time, "sqlite")
def _iso_time_sqlite(element, compiler, **kw) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"replace(replace({column}, '.000000', ''), ' ', 'T') || '+00:00'"


@compiles(iso_time, "postgresql")
def _iso_time_postgresql(element, compiler, **kw) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"""replace(to_char({column}, 'YYYY-MM-DD"T"HH24:MI:SS.USTZH:TZM'), '.000000', '')"""


class Usd(sa.TypeDecorator):
    """A cost as the list shows it: the stored Numeric, as a float (`queries.task_json`)."""

    impl = sa.Numeric(20, 10)
    cache_ok = True

    def process_result_value(self, value, dialect):
        return None if value is None else float(value)


def defused(column: sa.ColumnElement) -> sa.ColumnElement:
    """CSV: text with a leading `'` when a spreadsheet would read it as a formula."""
    return sa.case((sa.func.substr(column, 1, 1).in_(FORMULA_STARTS), sa.literal("'") + column), else_=column)


def true_false(condition: sa.ColumnElement) -> sa.ColumnElement:
    """CSV: a boolean as `true` or `false`."""
    return sa.case((condition, "true"), else_="false")


THUMBNAIL = sa.exists().where(thumbnails.c.task_uuid == tasks.c.task_uuid)
"""Whether the task has a thumbnail (`store.thumbnails.kept`)."""


def _value(name: str, column: sa.ColumnElement) -> sa.ColumnElement:
    if name in queries.TIME_FIELDS:
        return iso_time(column).label(name)
    return (sa.type_coerce(column, Usd()) if name == "cost" else column).label(name)


def _cell(name: str, column: sa.ColumnElement) -> sa.ColumnElement:
    if isinstance(column.type, sa.Boolean):
        return true_false(column).label(name)
    return defused(column).label(name) if isinstance(column.type, sa.String) else _value(name, column)


SORT_KEY = [tasks.c.updated_at, tasks.c.task_uuid]
"""The list's sort key, which the keyset continues after: it ends what a chunk reads."""

VALUES = [*(_value(name, column) for name, column in queries.PUBLIC_FIELDS.items()), THUMBNAIL, *SORT_KEY]
"""What a chunk reads for NDJSON and sidecars: the list's values (times as text), whether the task has a
thumbnail, and the sort key."""

CSV_CELLS = [*(_cell(name, column) for name, column in queries.PUBLIC_FIELDS.items()), true_false(THUMBNAIL),
             *SORT_KEY]
"""What a chunk reads for CSV: VALUES as its cells. Times, numbers and JSON never start a formula."""

SHOWN = len(queries.PUBLIC_FIELDS)
"""Where a row's thumbnail is; the list's fields come before it, labels and their conflicts go between."""

NO_LABELS: tuple[dict[str, str], list[str]] = ({}, [])
NO_LABEL_CELLS = ("{}", "[]")


class Chunk(NamedTuple):
    """Rows of the list, read as VALUES or CSV_CELLS, and the labels of their tasks (`queries.labels_of`)."""

    rows: list[sa.Row]
    labels: dict[str, tuple[dict[str, str], list[str]]]


def chunks(engine: sa.Engine, filters: dict, columns: list[sa.ColumnElement] = VALUES,
           chunk: int | None = None) -> Iterator[Chunk]:
    """The list's tasks under `filters` (keyword arguments of `list_rows`), `chunk` (default CHUNK) at a time,
    read as `columns`. The last chunk may be empty."""
    after = None
    while True:
        with engine.connect() as conn:
            rows, after = queries.list_rows(conn, columns, **filters, after=after, limit=chunk or CHUNK)
            labels = queries.labels_of(conn, [row[-1] for row in rows])
        yield Chunk(rows, labels)
        if after is None:
            return


def json_text(value: dict | list) -> str:
    return orjson.dumps(value).decode()


def csv_lines(pages: Iterator[Chunk]) -> Iterator[bytes]:
    """UTF-8 CSV (RFC 4180, CRLF) of chunks read as CSV_CELLS: a header of FIELDS, then a line per task; one
    piece per chunk. Labels and their conflicts are JSON; None is an empty cell."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(FIELDS)
    for page in pages:
        cells = {task: (json_text(labels), json_text(conflicts)) for task, (labels, conflicts) in page.labels.items()}
        writer.writerows((*row[:SHOWN], *cells.get(row[-1], NO_LABEL_CELLS), row[SHOWN]) for row in page.rows)
        yield out.getvalue().encode()
        out.seek(0)
        out.truncate()


def ndjson_lines(pages: Iterator[Chunk]) -> Iterator[bytes]:
    """Newline-delimited JSON of chunks read as VALUES: one task object per line, as `GET /api/tasks` shows it;
    one piece per chunk."""
    out = io.BytesIO()  # written a line at a time: orjson's answer holds a buffer of some KiB
    for page in pages:
        for row in page.rows:
            out.write(orjson.dumps(dict(zip(FIELDS, (*row[:SHOWN], *page.labels.get(row[-1], NO_LABELS), row[SHOWN]))),
                                   option=orjson.OPT_APPEND_NEWLINE))
        yield out.getvalue()
        out.seek(0)
        out.truncate()


FORMATS: dict[str, tuple[list[sa.ColumnElement], Callable[[Iterator[Chunk]], Iterator[bytes]], str]] = {
    "csv": (CSV_CELLS, csv_lines, "text/csv"),
    "ndjson": (VALUES, ndjson_lines, "application/x-ndjson"),
}
"""Export format -> (what its chunks read, encoder, media type; text is UTF-8)."""


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
