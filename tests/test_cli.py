"""`flask captions submit`: files, folders, URLs; checked by content; `--wait` prints results and a summary."""

from __future__ import annotations

import re
import threading

import pytest
import redis
from rq import Queue

from tests.submitting import emulator  # noqa: F401  (fixture)
from tests.submitting import image_bytes
from tests.submitting import rows
from tests.submitting import use_runware  # noqa: F401  (fixture)
from workers.queues import SUBMIT_QUEUE
from workers.submit import submit_queued


@pytest.fixture
def album(tmp_path):
    """A folder of images, some of them not what their names say, one nested, one hidden."""
    (tmp_path / "trip" / "day2").mkdir(parents=True)
    (tmp_path / "trip" / "beach.png").write_bytes(image_bytes("PNG", "blue"))
    (tmp_path / "trip" / "forest.jpg").write_bytes(image_bytes("JPEG", "green"))
    (tmp_path / "trip" / "day2" / "sunset").write_bytes(image_bytes("WEBP", "orange"))  # no extension
    (tmp_path / "trip" / "notes.png").write_text("remember the sunscreen")
    (tmp_path / "trip" / "anim.webp").write_bytes(image_bytes("GIF", "red"))
    (tmp_path / "trip" / ".hidden.png").write_bytes(image_bytes("PNG"))
    return tmp_path / "trip"


def test_submit_queues_every_image_in_a_folder_and_names_the_bad_ones(app, engine, redis_url, album):
    result = app.test_cli_runner().invoke(args=["captions", "submit", str(album), "https://img.example/cat.webp",
                                                str(album / "missing.png")])
    assert result.exit_code == 1, result.output
    assert "Queuing images" in result.output
    assert f"{album / 'notes.png'}: not an image" in result.output
    assert f"{album / 'anim.webp'}: unsupported format GIF" in result.output
    assert f"{album / 'missing.png'}: no such file or folder" in result.output
    assert "4 tasks queued, 3 inputs refused" in result.output
    listed = dict(line.split("\t") for line in result.output.splitlines() if "\t" in line)
    assert sorted(listed.values()) == sorted([str(album / "beach.png"), str(album / "forest.jpg"),
                                              str(album / "day2" / "sunset"), "https://img.example/cat.webp"])
    stored = rows(engine)
    assert set(stored) == set(listed)
    assert {r.status for r in stored.values()} == {"queued"}
    media = {r.input_name: re.match(r"data:([^;]+);", r.input_ref or "") for r in stored.values()}
    assert media[str(album / "day2" / "sunset")].group(1) == "image/webp"
    assert Queue(SUBMIT_QUEUE, connection=redis.Redis.from_url(redis_url)).count == 1


def test_wait_prints_each_caption_and_cost_then_a_summary(app, engine, album, emulator, use_runware):  # noqa: F811
    use_runware(emulator(task_error_rate=0.0))
    (album / "notes.png").unlink()
    (album / "anim.webp").unlink()
    done = threading.Event()

    def submit_worker():
        while not done.is_set():
            submit_queued()
            done.wait(0.05)

    thread = threading.Thread(target=submit_worker)
    thread.start()
    try:
        result = app.test_cli_runner().invoke(args=["captions", "submit", str(album), "--delivery", "sync",
                                                    "--wait", "--interval", "0.05", "--timeout", "30"])
    finally:
        done.set()
        thread.join(10)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    beach = next(line for line in lines if line.startswith(f"{album / 'beach.png'}: "))
    assert "blue" in beach and beach.endswith("  ($0.0019)")
    summary = lines[-1]
    assert re.fullmatch(r"3 tasks: 3 captioned, 0 failed; total cost \$0\.0057; \d+\.\ds", summary), summary
    assert {r.status for r in rows(engine).values()} == {"success"}


def test_wait_reports_failures_and_unfinished_tasks(app, engine, album, emulator, use_runware):  # noqa: F811
    use_runware(emulator(task_error_rate=1.0))
    submit_queued()
    result = app.test_cli_runner().invoke(args=["captions", "submit", str(album / "beach.png"), "--delivery",
                                                "sync", "--no-cost", "--wait", "--interval", "0.05",
                                                "--timeout", "0.3"])
    assert result.exit_code == 1
    assert "1 tasks: 0 captioned, 0 failed, 1 unfinished after 0.3s; total cost $0" in result.output
    submit_queued()
    [row] = rows(engine).values()
    assert (row.status, row.error_code, row.include_cost) == ("error", "timeoutProvider", False)


def test_a_bad_model_is_refused_before_anything_is_stored(app, engine, album):
    result = app.test_cli_runner().invoke(args=["captions", "submit", str(album), "--model", "llava"])
    assert result.exit_code == 2 and "model must be an AIR ID" in result.output
    assert rows(engine) == {}
