"""`GET /api/tasks.csv` and `GET /api/tasks.ndjson`, on both stores.

An export holds exactly the list's tasks (`GET /api/tasks`, every page) with each
filter, in its order, across many chunks; CSV cells that a spreadsheet would run
as formulas are defused; the read token is required and bad filters are 400s;
READ_TIMEOUT_MS bounds each chunk, not the stream; and through a real gunicorn
the worker's memory stays flat while it streams tens of thousands of tasks.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
import sys
import time
import tracemalloc
import uuid
from datetime import UTC
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import requests
import sqlalchemy as sa

from receiver import create_app
from store import export
from store.db import SQLITE_CACHE_MIB
from store.results import Result
from store.results import apply_results
from store.schema import utcnow
from store.submissions import NewTask
from store.submissions import queue_tasks
from tests.conftest import TOKENS
from tests.support import ROOT
from tests.support import Gunicorn
from tests.support import with_intake

READ = {"Authorization": "Bearer read-token"}

HOSTILE = {
    "=HYPERLINK(\"http://evil.example\",\"click\")": "'=HYPERLINK(\"http://evil.example\",\"click\")",
    "+1+cmd|' /C calc'!A0": "'+1+cmd|' /C calc'!A0",
    "-2+3": "'-2+3",
    "@SUM(A1:A9)": "'@SUM(A1:A9)",
    "\t=tabbed": "'\t=tabbed",
    "\r=returned": "'\r=returned",
    'a "quoted", comma\nand a new line': 'a "quoted", comma\nand a new line',
    "a plain caption = fine": "a plain caption = fine",
}
"""Caption -> the CSV cell it must become (a leading ' defuses a formula; the rest is kept as is)."""


def ordered_uuids(n: int, start: int) -> list[str]:
    return [str(uuid.UUID(int=start + i)) for i in range(n)]


@pytest.fixture
def waves(engine):
    """Tasks written in three waves (so updated_at tells them apart) of every status and source.

    Returns the two instants between the waves. Many tasks of a wave share one
    updated_at, so the walk's keyset must break ties by taskUUID.
    """
    queued = ordered_uuids(120, 1)
    with engine.begin() as conn:
        queue_tasks(conn, [NewTask(u, "https://img.example/x.png", f"x{i}.png",
                                   labels={"projectId": f"p{i % 3}", "userId": "=u1"} if i % 4 else {})
                           for i, u in enumerate(queued)])
    first = utcnow()
    time.sleep(0.01)
    external = ordered_uuids(150, 1000)
    with engine.begin() as conn:
        apply_results(conn, [Result(u, "success", utcnow(), text=("a red car" if i % 3 else "a blue boat") + f" {i}",
                                    cost=Decimal("0.0019"), model="runware:150@2", task_type="imageCaption")
                             for i, u in enumerate(external)])
        apply_results(conn, [Result(u, "success", utcnow(), text=text, cost=Decimal("0.25"))
                             for u, text in zip(ordered_uuids(len(HOSTILE), 5000), HOSTILE, strict=True)])
    second = utcnow()
    time.sleep(0.01)
    with engine.begin() as conn:
        apply_results(conn, [Result(u, "error", utcnow(), error_code="=cmd", error_message="-bad image")
                             for u in queued[:40]], delivered=False)
        apply_results(conn, [Result(u, "submitted", utcnow()) for u in queued[40:70]], delivered=False)
    return first, second


def listed(client, query: dict) -> list[dict]:
    """Every task of `GET /api/tasks` with `query`, page after page."""
    tasks, cursor = [], None
    while True:
        response = client.get("/api/tasks", query_string={**query, "limit": 37, "cursor": cursor or ""},
                              headers=READ)
        assert response.status_code == 200, response.json
        tasks += response.json["tasks"]
        cursor = response.json["nextCursor"]
        if cursor is None:
            return tasks


def exported(client, fmt: str, query: dict) -> bytes:
    response = client.get(f"/api/tasks.{fmt}", query_string=query, headers=READ)
    assert response.status_code == 200, response.data[:500]
    return response.data


def csv_rows(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


FILTERS = [
    {},
    {"status": "error"},
    {"status": "success,queued"},
    {"source": "external"},
    {"source": "submitted", "status": "submitted"},
    {"q": "red"},
    {"q": '"blue boat"', "source": "external"},
    {"q": "00000000-0000-0000-0000-0000000003"},
    {"label.projectId": "p1"},
    {"label.projectId": "p2", "status": "error"},
    {"label.projectId": "p0", "label.userId": "=u1", "since": "2026-01-01"},
]


@pytest.mark.parametrize("query", FILTERS, ids=[str(f) or "all" for f in FILTERS])
def test_each_export_holds_exactly_the_list_under_the_same_filter(client, waves, query, monkeypatch):
    monkeypatch.setattr(export, "CHUNK", 23)  # many chunks, and chunk edges inside runs of equal updated_at
    tasks = listed(client, query)
    assert tasks, "a filter that matches nothing proves nothing"

    lines = exported(client, "ndjson", query).splitlines()
    assert list(map(same_json, lines)) == list(map(same_json, tasks))

    rows = csv_rows(exported(client, "csv", query))
    header, body = rows[0], rows[1:]
    assert sorted(header) == sorted(tasks[0])  # every field the list shows, in the store's order
    assert body == [[cell(task[name]) for name in header] for task in tasks]


def same_json(task: bytes | dict) -> bytes:
    """A task's JSON with its keys sorted, to compare exactly (`false` is not `0`, nor `1.0` `1`)."""
    return orjson.dumps(orjson.loads(task) if isinstance(task, bytes) else task, option=orjson.OPT_SORT_KEYS)


def cell(value) -> str:
    """What a CSV cell must hold for a value of the list's JSON."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    else:
        text = str(value)
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def test_time_windows_export_what_the_list_holds(client, waves, monkeypatch):
    monkeypatch.setattr(export, "CHUNK", 50)
    first, second = waves
    for query in ({"since": first.isoformat()}, {"until": second.isoformat()},
                  {"since": first.isoformat(), "until": second.isoformat(), "status": "success"}):
        tasks = listed(client, query)
        assert tasks
        assert [orjson.loads(line) for line in exported(client, "ndjson", query).splitlines()] == tasks


def test_an_export_of_nothing_is_a_header_or_an_empty_body(client, waves):
    query = {"q": "submarine"}
    header = list(orjson.loads(exported(client, "ndjson", {}).splitlines()[0]))
    assert csv_rows(exported(client, "csv", query)) == [header]  # the same columns as an export of tasks
    assert exported(client, "ndjson", query) == b""


def test_times_are_written_as_the_list_shows_them(client, engine):
    """The database writes an export's times; the list's are Python's isoformat, which drops a zero fraction."""
    at = {str(uuid.UUID(int=9000 + i)): datetime(2026, 6, 1, 12, 30, 5, micro, tzinfo=UTC)
          for i, micro in enumerate((0, 1, 250000, 999999))}
    with engine.begin() as conn:
        for task_uuid, received_at in at.items():
            apply_results(conn, [Result(task_uuid, "success", received_at, text="a cat")])
    tasks = listed(client, {})
    assert {t["taskUUID"]: t["firstDeliveryAt"] for t in tasks} == {u: t.isoformat() for u, t in at.items()}
    assert list(map(same_json, exported(client, "ndjson", {}).splitlines())) == list(map(same_json, tasks))
    rows = csv_rows(exported(client, "csv", {}))
    assert [row[rows[0].index("firstDeliveryAt")] for row in rows[1:]] == [t["firstDeliveryAt"] for t in tasks]


def test_csv_cells_that_would_run_as_formulas_are_defused(client, waves):
    rows = csv_rows(exported(client, "csv", {"source": "external"}))
    header = rows[0]
    texts = [row[header.index("text")] for row in rows[1:]]
    for caption, defused in HOSTILE.items():
        assert defused in texts, caption
    errors = csv_rows(exported(client, "csv", {"status": "error"}))
    codes = {row[errors[0].index("errorCode")] for row in errors[1:]}
    messages = {row[errors[0].index("errorMessage")] for row in errors[1:]}
    assert codes == {"'=cmd"} and messages == {"'-bad image"}
    # NDJSON is data, not a spreadsheet: the captions are exactly as stored.
    stored = {orjson.loads(line)["text"] for line in exported(client, "ndjson", {"source": "external"}).splitlines()}
    assert set(HOSTILE) <= stored


def test_exports_need_the_read_token_and_say_what_is_wrong(client, waves):
    for fmt in ("csv", "ndjson"):
        for headers in ({}, {"Authorization": "Bearer submit-token"}, {"Authorization": "Bearer nope"}):
            assert client.get(f"/api/tasks.{fmt}", headers=headers).status_code == 401
        bad = client.get(f"/api/tasks.{fmt}", query_string={"status": "lost"}, headers=READ)
        assert bad.status_code == 400 and bad.json["error"]["parameter"] == "status"
        for name in ("limit", "cursor", "stauts"):
            unknown = client.get(f"/api/tasks.{fmt}", query_string={name: "1"}, headers=READ)
            assert unknown.status_code == 400 and unknown.json["error"]["parameter"] == name
        bad_q = client.get(f"/api/tasks.{fmt}", query_string={"q": '"open'}, headers=READ)
        assert bad_q.status_code == 400 and bad_q.json["error"]["parameter"] == "q"
    assert client.get("/api/tasks.xml", headers=READ).status_code == 404

    csv_answer = client.get("/api/tasks.csv", headers=READ)
    assert csv_answer.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert csv_answer.headers["Content-Disposition"].startswith('attachment; filename="tasks-')
    assert csv_answer.headers["Cache-Control"] == "no-store"
    ndjson_answer = client.get("/api/tasks.ndjson", headers=READ)
    assert ndjson_answer.headers["Content-Type"] == "application/x-ndjson"
    assert ndjson_answer.headers["Content-Disposition"].endswith('.ndjson"')


def test_read_timeout_bounds_each_chunk_not_the_stream(config, waves, monkeypatch):
    """A stream read slowly lasts several READ_TIMEOUT_MS; each chunk's queries are well within it."""
    monkeypatch.setattr(export, "CHUNK", 20)
    app = create_app(dataclasses.replace(config, read_timeout_ms=250))
    client = with_intake(app, create_app(config, kind="intake")).test_client()
    tasks = listed(client, {})
    started = time.monotonic()
    response = client.get("/api/tasks.ndjson", headers=READ, buffered=False)
    lines = []
    for piece in response.response:
        lines += piece.splitlines()
        time.sleep(0.06)  # a slow reader: the whole stream takes several times the timeout
    assert time.monotonic() - started > 0.5
    assert [orjson.loads(line) for line in lines] == tasks


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_an_export_holds_about_one_chunk_at_a_time(engine, fmt):
    """In process, at its peak an export holds a chunk's rows and lines: a few KiB a task of a chunk, whatever
    the export's length (orjson's answer keeps a buffer of some KiB: a chunk does not keep those)."""
    n = 3 * export.CHUNK
    with engine.begin() as conn:
        apply_results(conn, [Result(str(uuid.UUID(int=i + 1)), "success", utcnow(), text=f"a caption, number {i}",
                                    cost=Decimal("0.0019")) for i in range(n)])
    columns, encode, _ = export.FORMATS[fmt]

    def lines() -> int:
        return sum(piece.count(b"\n") for piece in encode(export.chunks(engine, {}, columns)))

    lines()  # statements compiled, connection opened
    tracemalloc.start()
    try:
        assert lines() == n + (fmt == "csv")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < export.CHUNK * 5 * 1024, f"{peak / export.CHUNK:.0f} bytes a task of a chunk"


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def test_a_long_export_streams_through_gunicorn_in_flat_memory(config, engine):
    """40,000 tasks (a CSV of 14 MB) exported through a real gunicorn worker: its peak memory grows a little.

    A generous bound (holding the export would take some 100 MiB): 16 MiB, and on SQLite what the
    connection's page cache (a bound of its own, filled by any large read) may take of the file. The exact
    figures (1,000,000 tasks, rows per second) are bench/exports.py's.
    """
    n = 40_000
    for start in range(0, n, 5000):
        with engine.begin() as conn:
            apply_results(conn, [Result(str(uuid.UUID(int=start + i + 1)), "success", utcnow(),
                                        text=f"a long enough caption of a picture, number {start + i}, " * 3,
                                        cost=Decimal("0.0019"), model="runware:150@2") for i in range(5000)])
    env = {"APP_ENV": "development", "REDIS_URL": config.redis_url, "DATABASE_URL": config.database_url, **TOKENS}
    server = Gunicorn(env, workers=1).start()
    try:
        [worker] = server.worker_pids()
        url = f"{server.url}/api/tasks.csv"
        warm = requests.get(url, params={"since": utcnow().isoformat()}, headers=READ, timeout=30)
        assert warm.status_code == 200 and warm.text.count("\n") == 1
        before = peak_rss_kib(worker)
        size = lines = 0
        with requests.get(url, headers=READ, stream=True, timeout=60) as response:
            assert response.status_code == 200
            assert response.headers["Transfer-Encoding"] == "chunked"
            for piece in response.iter_content(chunk_size=1 << 16):
                size += len(piece)
                lines += piece.count(b"\n")
        grown_mib = (peak_rss_kib(worker) - before) / 1024
    finally:
        server.stop()
    assert lines == n + 1
    assert size > 10 * 1024 * 1024
    bound = 16 + page_cache_mib(config.database_url)
    assert grown_mib < bound, f"the worker's peak grew by {grown_mib:.1f} MiB for a {size / 2**20:.1f} MiB export"


def page_cache_mib(url: str) -> float:
    """SQLite: what the connection's page cache may take while the export reads the whole file (0 elsewhere)."""
    if not url.startswith("sqlite"):
        return 0
    path = Path(sa.engine.make_url(url).database)
    size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    return min(size / 2**20, SQLITE_CACHE_MIB)


def test_the_exports_benchmark_measures_each_format(tmp_path):
    """bench/exports.py at a tiny size: every export counted whole, its speed and memory reported."""
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "bench.exports", "--tasks", "3000", "--stores", "sqlite",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    data = json.loads((out / "exports-results.json").read_text())
    assert data["schema"] == "captions-bench-exports/1"
    line = data["stores"]["sqlite"]
    assert line["status"] == "ok" and line["tasks"] == 3000
    assert [e["format"] for e in line["exports"]] == ["csv", "ndjson", "csv", "ndjson"]
    for export_run in line["exports"]:
        assert export_run["rows"] == 3000 and export_run["rows_per_s"] > 0 and export_run["bytes"] > 3000 * 100
        assert export_run["peak_mib"] >= export_run["rss_before_mib"] > 0
    assert (out / "exports-results.md").read_text().startswith("# Exports at scale")
