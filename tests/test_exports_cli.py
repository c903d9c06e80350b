"""`flask captions export`: CSV, NDJSON and caption sidecar files, with the list's filters, on both stores."""

from __future__ import annotations

import orjson
import pytest

from store.results import Result
from store.results import apply_results
from store.schema import utcnow
from tests.helpers import new_uuid
from tests.submitting import emulator  # noqa: F401  (fixture)
from tests.submitting import image_bytes
from tests.submitting import use_runware  # noqa: F401  (fixture)
from workers.submit import submit_queued

READ = {"Authorization": "Bearer read-token"}


@pytest.fixture
def stored(engine):
    """Successes and errors, some captions hostile to spreadsheets."""
    with engine.begin() as conn:
        apply_results(conn, [Result(new_uuid(), "success", utcnow(), text=f"=cmd {i}" if i % 5 == 0 else f"cat {i}")
                             for i in range(30)])
        apply_results(conn, [Result(new_uuid(), "error", utcnow(), error_code="timeoutProvider") for _ in range(7)])


def run(app, *args: str):
    return app.test_cli_runner().invoke(args=["captions", "export", *args])


def test_csv_and_ndjson_files_hold_what_the_api_exports(app, client, stored, tmp_path):
    for fmt in ("csv", "ndjson"):
        for query in ({}, {"status": "error"}, {"q": "cat", "status": "success"}):
            out = tmp_path / f"tasks.{fmt}"
            result = run(app, fmt, *(f"{k}={v}" for k, v in query.items()), "-o", str(out))
            assert result.exit_code == 0, result.output + result.stderr
            expected = client.get(f"/api/tasks.{fmt}", query_string=query, headers=READ).data
            assert out.read_bytes() == expected
            assert "Exporting tasks" in result.stderr
            assert f"{len(expected.splitlines()) - (fmt == 'csv')} tasks exported" in result.stderr
    defused = (tmp_path / "tasks.csv").read_text()
    assert "'=cmd" not in defused  # the last file held the q=cat export
    every = run(app, "csv")
    assert every.exit_code == 0 and "'=cmd 0" in every.stdout and "\n=cmd" not in every.stdout


def test_ndjson_to_standard_output(app, stored):
    result = run(app, "ndjson", "status=error")
    assert result.exit_code == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 7 and {t["errorCode"] for t in lines} == {"timeoutProvider"}


@pytest.mark.parametrize(("args", "problem"), [
    (["csv", "status=lost"], "status: 'lost' is not one of"),
    (["csv", "limit=5"], "limit: unknown parameter"),
    (["csv", "status"], "'status' is not NAME=VALUE"),
    (["csv", 'q="open'], "q: "),
    (["xml"], "'xml' is not one of"),
])
def test_bad_filters_are_refused_naming_the_problem(app, stored, args, problem, tmp_path):
    out = tmp_path / "out.csv"
    result = run(app, *args, "-o", str(out))
    assert result.exit_code == 2
    assert problem in result.stderr
    assert not out.exists()


def test_sidecars_sit_beside_the_images_captioned_from_a_folder(app, engine, tmp_path, emulator,  # noqa: F811
                                                                use_runware):  # noqa: F811
    use_runware(emulator(task_error_rate=0.0))
    album = tmp_path / "album"
    (album / "day2").mkdir(parents=True)
    (album / "beach.png").write_bytes(image_bytes("PNG", "blue"))
    (album / "day2" / "forest.jpg").write_bytes(image_bytes("JPEG", "green"))
    (album / "day2" / "sunset").write_bytes(image_bytes("WEBP", "orange"))  # no extension
    cli = app.test_cli_runner()
    submitted = cli.invoke(args=["captions", "submit", str(album), "https://img.example/cat.webp",
                                 "--delivery", "sync"])
    assert submitted.exit_code == 0, submitted.stderr
    submit_queued()
    (album / "day2" / "sunset.txt").write_text("my own caption\n")

    first = run(app, "sidecars")
    assert first.exit_code == 0, first.stderr
    beach = (album / "beach.txt").read_text()
    assert "blue" in beach and beach.endswith("\n")
    assert "green" in (album / "day2" / "forest.txt").read_text()
    assert (album / "day2" / "sunset.txt").read_text() == "my own caption\n"  # kept without --overwrite
    assert "2 caption files written, 1 kept" in first.stderr
    assert "1 without a caption or a local image file" in first.stderr  # the URL

    again = run(app, "sidecars", "--overwrite", "q=orange")
    assert again.exit_code == 0, again.stderr
    assert "orange" in (album / "day2" / "sunset.txt").read_text()
    assert "1 caption files written" in again.stderr

    # captioned again: the newest caption is the one written, and the older one is counted
    resubmitted = cli.invoke(args=["captions", "submit", str(album / "beach.png"), "--delivery", "sync"])
    assert resubmitted.exit_code == 0, resubmitted.stderr
    submit_queued()
    newest = run(app, "sidecars", "q=blue", "--overwrite")
    assert "1 caption files written" in newest.stderr
    assert "1 older captions of an image captioned again" in newest.stderr
    gone = tmp_path / "moved"
    album.rename(gone)
    moved = run(app, "sidecars")
    assert moved.exit_code == 0 and "3 whose image file is gone, 1 older" in moved.stderr
