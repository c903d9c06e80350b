"""The emulator's captions, image inputs (data URI, base64, URL, upload) and the cost formula."""

from __future__ import annotations

import io
import uuid

import pytest
import requests
from PIL import Image

from emulator.captioner import cost as caption_cost
from tests.emulating import SAMPLE_NAMES
from tests.emulating import b64
from tests.emulating import caption_task
from tests.emulating import data_uri
from tests.emulating import encoded
from tests.emulating import sample_bytes
from tests.helpers import new_uuid
from tests.support import free_port

pytest_plugins = ["tests.emulator_fixtures"]  # the emulator and receiver fixtures
pytestmark = pytest.mark.timeout(60)


def test_sync_caption_and_cost_formula(emu):
    with_cost = caption_task(b64(sample_bytes()), includeCost=True)
    without = caption_task(b64(sample_bytes()))
    data = emu.post([with_cost, without]).json()["data"]
    assert data[0]["cost"] == round(0.0019 + 0.0001 * 320 * 200 / 1e6, 6) == caption_cost(320, 200)
    assert set(data[0]) == {"taskType", "taskUUID", "text", "cost"}
    assert "cost" not in data[1]
    assert data[0]["text"] == data[1]["text"]
    assert data[0]["text"].startswith("a landscape image, 320×200, a smooth gradient from orange")
    assert caption_cost(4000, 3000) == 0.0031


@pytest.mark.parametrize("name", SAMPLE_NAMES)
@pytest.mark.parametrize("form", ["data-uri", "base64"])
def test_png_jpg_and_webp_are_captioned(emu, name, form):
    data = sample_bytes(name)
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
    image = data_uri(data, "application/octet-stream") if form == "data-uri" else b64(data)
    resp = emu.post([caption_task(image)])
    assert resp.status_code == 200, resp.text
    text = resp.json()["data"][0]["text"]
    orientation = "square" if width == height else "landscape" if width > height else "portrait"
    assert text.startswith(f"a {orientation} image, {width}×{height}, ")


def test_captions_depend_on_the_image_only(start_emulator):
    first, second = start_emulator(), start_emulator(seed=99)
    texts = {}
    for name in SAMPLE_NAMES:
        data = sample_bytes(name)
        a = first.post([caption_task(b64(data))]).json()["data"][0]["text"]
        b = first.post([caption_task(data_uri(data))]).json()["data"][0]["text"]
        c = second.post([caption_task(b64(data))]).json()["data"][0]["text"]
        assert a == b == c
        texts[name] = a
    assert len(set(texts.values())) == len(SAMPLE_NAMES), texts
    assert "horizontal stripes" in texts["pastel-stripes.webp"]
    assert "small bright spots on a dark background" in texts["night-sky.jpg"]
    assert "greyscale" in texts["checkerboard.webp"]
    assert "green" in texts["forest-portrait.jpg"]
    assert not any(word in " ".join(texts.values()) for word in ("neural", "model", "AI "))


def test_gif_garbage_truncated_and_oversized_images_are_rejected(start_emulator):
    emu = start_emulator(max_image_bytes=3000)
    png = sample_bytes("shapes-on-white.png")
    cases = {
        "gif": caption_task(b64(encoded("GIF"))),
        "bmp": caption_task(data_uri(encoded("BMP", size=(10, 10)), "image/png")),
        "garbage": caption_task(b64(b"hello, this is not an image at all")),
        "not-base64": caption_task("%%% not base64 %%%"),
        "truncated": caption_task(b64(png[: len(png) // 2])),
        "too-large": caption_task(b64(sample_bytes("forest-portrait.jpg"))),
        "not-a-string": caption_task(42),
    }
    resp = emu.post(list(cases.values()))
    assert resp.status_code == 400
    errors = {e["taskUUID"]: e for e in resp.json()["errors"]}
    got = {name: errors[task["taskUUID"]] for name, task in cases.items()}
    assert got["gif"]["code"] == "unsupportedImageFormat" and "GIF" in got["gif"]["message"]
    assert "PNG, JPG, WEBP" in got["gif"]["message"]
    assert got["bmp"]["code"] == "unsupportedImageFormat"
    assert got["garbage"]["code"] == "invalidInputImage"
    assert got["not-base64"]["code"] == "invalidInputImage"
    assert got["truncated"]["code"] == "invalidInputImage" and "corrupt" in got["truncated"]["message"]
    assert got["too-large"]["code"] == "imageTooLarge"
    assert got["not-a-string"]["code"] == "invalidInputImage"
    assert all(e["parameter"] == "inputImage" for e in errors.values())


def test_image_by_url(emu, receiver):
    receiver.files["/img/night.jpg"] = (sample_bytes("night-sky.jpg"), "image/jpeg")
    ok = caption_task(receiver.base + "/img/night.jpg")
    missing = caption_task(receiver.base + "/img/missing.jpg")
    refused = caption_task(f"http://127.0.0.1:{free_port()}/img.png")
    resp = emu.post([ok, missing, refused])
    assert resp.status_code == 200
    assert resp.json()["data"][0]["text"].startswith("a landscape image, 320×180")
    messages = {e["taskUUID"]: e["message"] for e in resp.json()["errors"]}
    assert "HTTP 404" in messages[missing["taskUUID"]]
    assert "ConnectionError" in messages[refused["taskUUID"]]


def test_caption_task_type_with_model_and_inputs(emu):
    image = b64(sample_bytes("checkerboard.webp"))
    ok = {"taskType": "caption", "taskUUID": new_uuid(), "model": "runware:150@2", "inputs": {"image": image},
          "includeCost": True}
    no_model = {"taskType": "caption", "taskUUID": new_uuid(), "inputs": {"image": image}}
    no_image = {"taskType": "caption", "taskUUID": new_uuid(), "model": "runware:150@2", "inputs": {}}
    bad_model = {"taskType": "caption", "taskUUID": new_uuid(), "model": "llava", "inputs": {"image": image}}
    resp = emu.post([ok, no_model, no_image, bad_model])
    (item,) = resp.json()["data"]
    assert item["taskType"] == "caption" and item["taskUUID"] == ok["taskUUID"]
    assert item["text"].startswith("a square image, 240×240") and item["cost"] == caption_cost(240, 240)
    codes = [(e["code"], e["parameter"]) for e in resp.json()["errors"]]
    assert codes == [("missingModel", "model"), ("missingInputImage", "inputs.image"), ("invalidModel", "model")]


def test_image_upload_then_caption_by_image_uuid(emu):
    data = sample_bytes("pastel-stripes.webp")
    upload = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": data_uri(data, "image/webp")}
    resp = emu.post([upload])
    assert resp.status_code == 200
    (item,) = resp.json()["data"]
    assert item["taskType"] == "imageUpload" and item["taskUUID"] == upload["taskUUID"]
    assert uuid.UUID(item["imageUUID"]).version == 4
    fetched = requests.get(item["imageURL"], timeout=5)
    assert fetched.content == data and fetched.headers["Content-Type"] == "image/webp"
    by_uuid = emu.post([caption_task(item["imageUUID"])]).json()["data"][0]["text"]
    inline = emu.post([caption_task(b64(data))]).json()["data"][0]["text"]
    assert by_uuid == inline
    by_url = emu.post([caption_task(item["imageURL"])]).json()["data"][0]["text"]
    assert by_url == inline
    resp = emu.post([caption_task(new_uuid())])
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["code"] == "invalidInputImage"
    assert "No uploaded image" in resp.json()["errors"][0]["message"]


def test_upload_accepts_gif_but_not_garbage(emu):
    gif = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": b64(encoded("GIF"))}
    junk = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": b64(b"junk junk junk")}
    missing = {"taskType": "imageUpload", "taskUUID": new_uuid()}
    resp = emu.post([gif, junk, missing])
    (item,) = resp.json()["data"]
    assert [e["code"] for e in resp.json()["errors"]] == ["invalidInputImage", "missingImage"]
    text = emu.post([caption_task(item["imageUUID"])]).json()["data"][0]["text"]
    assert text.startswith("a landscape image, 40×30, a single flat colour, mostly red")
