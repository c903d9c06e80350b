"""Both official Python SDKs, unmodified, against the emulator over WebSocket.

runware-sdk (the newer) is pinned in requirements-test.txt and runs in this
process; runware (the older) installs the same package name, so it runs in a
virtual environment of its own (tests/legacy_runware.py).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from runware import Runware
from runware import RunwareError

from emulator.dice import Dice
from tests.emulating import KEY
from tests.emulating import SAMPLES
from tests.emulating import data_uri
from tests.emulating import sample_bytes
from tests.legacy_runware import legacy_python
from tests.legacy_runware import run_legacy

pytest_plugins = ["tests.emulator_fixtures"]  # the emulator and receiver fixtures
pytestmark = pytest.mark.timeout(120)

PNG = SAMPLES / "sunset-gradient.png"
SUNSET = "a landscape image, 320×200, a smooth gradient from orange at the top to dark blue at the bottom"
SUNSET_COST = 0.001906
# A seed whose first accepted caption task closes its connection and whose second does not, at rate 0.5.
DISCONNECT_ONCE = next(s for s in range(100) if Dice(s).chance(0.5, "disconnect", 1)
                       and not Dice(s).chance(0.5, "disconnect", 2))


def ws_url(emu) -> str:
    return emu.url.replace("http://", "ws://") + "/v1"


def with_sdk(emu, work, key: str = KEY):
    """Run `await work(client)` with a runware-sdk client of the emulator; the result and the SDK's log entries."""
    entries = []

    async def main():
        async with Runware(api_key=key, ws_base_url=ws_url(emu), http_base_url=emu.url + "/v1",
                           retry_delay=100, debug=True, log_sink=entries.append) as client:
            return await work(client)

    return asyncio.run(main()), entries


def sent(entries, task_type: str) -> list[dict]:
    """The tasks of a type the SDK sent, from its log."""
    tasks = [t for e in entries if e.category == "send" for t in json.loads(e.message)]
    return [t for t in tasks if t.get("taskType") == task_type]


@pytest.fixture(scope="module")
def legacy():
    return legacy_python()


def test_runware_sdk_captions_a_png_over_websocket(emu):
    image = data_uri(sample_bytes())

    async def work(client):
        sync = await client.run({"taskType": "imageCaption", "inputImage": image, "includeCost": True,
                                 "deliveryMethod": "sync"})
        polled = await client.run({"taskType": "imageCaption", "inputImage": image, "includeCost": True})
        caption = await client.run({"taskType": "caption", "model": "runware:150@2", "inputs": {"image": image}})
        (upload,) = await client.image_upload({"image": image})
        by_uuid = await client.run({"taskType": "imageCaption", "inputImage": upload["imageUUID"]})
        again = await client.get_response({"taskUUID": polled[0]["taskUUID"]})
        return sync, polled, caption, by_uuid, again

    (sync, polled, caption, by_uuid, again), entries = with_sdk(emu, work)
    for (item,) in (sync, polled, caption, by_uuid):
        assert item["text"].startswith(SUNSET)
    assert sync[0]["cost"] == polled[0]["cost"] == SUNSET_COST
    assert caption[0]["taskType"] == "caption" and "cost" not in caption[0]
    assert again[0]["text"] == polled[0]["text"] and again[0]["status"] == "success"
    assert {t["taskUUID"] for t in emu.tasks()} >= {sync[0]["taskUUID"], polled[0]["taskUUID"]}


def test_runware_sdk_over_rest_too(emu):
    async def main():
        async with Runware(api_key=KEY, transport="rest", http_base_url=emu.url + "/v1") as client:
            image = data_uri(sample_bytes())
            sync = await client.run({"taskType": "imageCaption", "inputImage": image, "deliveryMethod": "sync"})
            polled = await client.run({"taskType": "imageCaption", "inputImage": image, "includeCost": True})
            return sync, polled

    (sync,), (polled,) = asyncio.run(main())
    assert sync["text"] == polled["text"] and polled["text"].startswith(SUNSET) and polled["cost"] == SUNSET_COST


def test_runware_sdk_fails_cleanly_on_a_bad_key_and_a_non_image(emu):
    async def caption(client):
        return await client.run({"taskType": "imageCaption", "inputImage": "aGVsbG8gd29ybGQ=",
                                 "deliveryMethod": "sync"})

    with pytest.raises(RunwareError, match="apiKey of the authentication task is not valid"):
        with_sdk(emu, caption, key="wrong-key")
    with pytest.raises(RunwareError, match="not an image") as raised:
        with_sdk(emu, caption)
    assert raised.value.parameter == "inputImage" and not raised.value.retryable


def test_runware_sdk_recovers_a_dropped_result_by_polling(start_emulator):
    emu = start_emulator(drop_rate=1.0)

    async def work(client):
        return await client.run({"taskType": "imageCaption", "inputImage": data_uri(sample_bytes()),
                                 "includeCost": True})

    (item,), entries = with_sdk(emu, work)
    assert item["text"].startswith(SUNSET) and item["cost"] == SUNSET_COST and item["status"] == "success"
    assert [t["taskUUID"] for t in sent(entries, "getResponse")][-1] == item["taskUUID"]


def test_runware_sdk_survives_a_disconnect_mid_task(start_emulator):
    emu = start_emulator(disconnect_rate=1.0)

    async def work(client):
        return await client.run({"taskType": "imageCaption", "inputImage": data_uri(sample_bytes())})

    (item,), entries = with_sdk(emu, work)
    assert item["text"].startswith(SUNSET)
    assert any(e.category == "connection" and "Reconnected" in e.message for e in entries)
    assert [t["taskUUID"] for t in sent(entries, "imageCaption")] == [item["taskUUID"]] * 2  # sent again
    assert len(emu.tasks()) == 1


def test_legacy_sdk_captions_png_files_and_a_data_uri(emu, legacy):
    webp = SAMPLES / "checkerboard.webp"
    answer = run_legacy(legacy, ws_url(emu), KEY, [{"inputImage": str(PNG), "includeCost": True},
                                                  {"inputImage": data_uri(sample_bytes())},
                                                  {"inputImages": [str(webp), str(PNG)]}])
    by_file, by_uri, pair = answer["results"]
    assert by_file["text"].startswith(SUNSET) and by_file["cost"] == SUNSET_COST
    assert by_uri["text"] == by_file["text"] and by_uri["cost"] is None
    assert pair["text"].startswith("image 1: a square image, 240×240")
    assert pair["text"].endswith(f"; image 2: {by_file['text']}")
    records = {t["taskUUID"]: t for t in emu.tasks()}
    assert records[by_file["taskUUID"]]["image"]["source"] == "upload"  # the file went up by imageUpload
    assert [t["taskType"] for t in records.values()].count("imageUpload") == 3


def test_legacy_sdk_fails_cleanly_on_a_bad_key_and_a_non_image(emu, legacy, tmp_path):
    (refused,) = run_legacy(legacy, ws_url(emu), "wrong-key", [{"inputImage": str(PNG)}])["results"]
    assert refused["error"] == "ConnectionError" and "apiKey of the authentication task is not valid" in \
        refused["message"]
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image at all")
    (rejected,) = run_legacy(legacy, ws_url(emu), KEY, [{"inputImage": str(text_file)}])["results"]
    assert rejected["error"] == "RunwareAPIError" and "invalidInputImage" in rejected["message"]


def test_legacy_sdk_survives_a_disconnect_mid_task(start_emulator, legacy):
    emu = start_emulator(seed=DISCONNECT_ONCE, disconnect_rate=0.5)
    answer = run_legacy(legacy, ws_url(emu), KEY, [{"inputImage": data_uri(sample_bytes())}])
    (result,) = answer["results"]
    assert result["text"].startswith(SUNSET)
    assert len(answer["reconnects"]) == 1
    captions = [t for t in emu.tasks() if t["taskType"] == "imageCaption"]
    assert len(captions) == 2 and captions[1]["taskUUID"] == result["taskUUID"]  # cut off, then sent anew
