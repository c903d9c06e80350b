"""The emulator keeps its records across restarts: a restarted `python -m emulator` resumes as Runware would."""

from __future__ import annotations

import time

import pytest

from emulator.state import RETENTION_DAYS
from emulator.state import StateFile
from tests.emulating import TOKEN
from tests.emulating import EmulatorProcess
from tests.emulating import b64
from tests.emulating import caption_task
from tests.emulating import data_uri
from tests.emulating import sample_bytes
from tests.helpers import new_uuid
from tests.support import wait_for

pytest_plugins = ["tests.emulator_fixtures"]  # the emulator and receiver fixtures
pytestmark = pytest.mark.timeout(60)


def test_a_restarted_emulator_knows_the_tasks_of_the_run_before(tmp_path, receiver_factory):
    receiver = receiver_factory(fail_first=1)  # the first webhook attempt fails; the retry waits seconds
    first = EmulatorProcess("--processing-ms", "600", "--backoff-base-ms", "8000", cwd=tmp_path)
    try:
        emu = first.emu
        done = caption_task(b64(sample_bytes()), includeCost=True)
        text = emu.post([done]).json()["data"][0]["text"]
        upload = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": data_uri(sample_bytes("night-sky.jpg"))}
        image_uuid = emu.post([upload]).json()["data"][0]["imageUUID"]
        hooked = caption_task(b64(sample_bytes()), webhookURL=receiver.url())
        emu.post([hooked])
        receiver.wait(1)  # attempt 1 failed; attempt 2 is seconds away when the emulator stops
        cut_off = caption_task(b64(sample_bytes("checkerboard.webp")), deliveryMethod="async")
        emu.post([cut_off])
        assert emu.get_response(cut_off["taskUUID"]).json()["data"][0]["status"] == "processing"
    finally:
        assert first.stop() == 0
    assert (tmp_path / "var" / "emulator" / "emulator.sqlite3").exists()  # the command line's default

    second = EmulatorProcess("--processing-ms", "10", cwd=tmp_path)
    try:
        emu = second.emu
        (polled,) = emu.get_response(done["taskUUID"]).json()["data"]
        assert polled == {**polled, "text": text, "status": "success", "cost": 0.001906}
        assert emu.post([done]).json()["errors"][0]["code"] == "conflictTaskUUID"
        by_uuid = emu.post([caption_task(image_uuid)]).json()["data"][0]["text"]
        assert by_uuid.startswith("a landscape image, 320×180")
        finished = wait_for(lambda: emu.get_response(cut_off["taskUUID"]).json()["data"][0]["status"] == "success"
                            and emu.get_response(cut_off["taskUUID"]).json()["data"][0], 5, what="the cut-off task")
        assert finished["text"].startswith("a square image, 240×240")
        receiver.wait(2)  # the pending webhook is sent again, and delivered
        (record,) = emu.wait_webhooks([hooked["taskUUID"]])
        assert record["webhook"] == "delivered"
        assert receiver.calls[1]["body"]["data"][0]["text"] == text
    finally:
        assert second.stop() == 0
    kept = b"".join(f.read_bytes() for f in (tmp_path / "var" / "emulator").iterdir())
    assert TOKEN.encode() not in kept  # the webhook is delivered: its URL is kept redacted


def test_records_older_than_the_retention_are_deleted_when_the_file_is_opened(tmp_path):
    state = StateFile(str(tmp_path))
    old, recent = new_uuid(), new_uuid()
    state.save_task(old, time.time() - (RETENTION_DAYS + 1) * 86400, {"taskUUID": old}, [("base64", b"png")])
    state.save_task(recent, time.time(), {"taskUUID": recent})
    state.close()
    reopened = StateFile(str(tmp_path))
    assert [t["taskUUID"] for t in reopened.tasks()] == [recent]
    assert reopened.pending_images(old) == []
    reopened.close()
