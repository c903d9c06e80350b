"""Thumbnails: made when an image given as bytes is queued, served with the read token and a long cache header,
never the original, and purged after THUMBNAIL_RETENTION_DAYS."""

from __future__ import annotations

import io
from datetime import timedelta

import orjson
import sqlalchemy as sa
from PIL import Image

from receiver.thumbnails import CACHE_CONTROL
from store import thumbnails
from store.schema import thumbnails as kept
from store.schema import utcnow
from tests.helpers import new_uuid
from tests.submitting import data_uri
from tests.submitting import image_bytes
from tests.support import ROOT
from workers import maintenance

SUBMIT = {"Authorization": "Bearer submit-token"}
READ = {"Authorization": "Bearer read-token"}


def submit(client, images: list[str]) -> list[str]:
    answer = client.post("/api/captions", data=orjson.dumps({"images": images}), content_type="application/json",
                         headers=SUBMIT)
    assert answer.status_code == 202, answer.get_json()
    return [t["taskUUID"] for t in answer.get_json()["tasks"]]


def test_an_image_given_as_bytes_gets_a_small_webp_served_with_the_read_token(client):
    large = data_uri("PNG", "teal", (2000, 1000))
    photo, small, url = submit(client, [large, data_uri("JPEG", "navy", (40, 30)), "https://example.com/cat.png"])

    answer = client.get(f"/api/tasks/{photo}/thumbnail", headers=READ)
    assert answer.status_code == 200 and answer.mimetype == "image/webp"
    assert answer.headers["Cache-Control"] == CACHE_CONTROL == "private, max-age=31536000, immutable"
    with Image.open(io.BytesIO(answer.data)) as image:
        assert (image.format, image.size) == ("WEBP", (thumbnails.MAX_SIDE, thumbnails.MAX_SIDE // 2))
        centre = image.convert("RGB").getpixel((80, 40))
        assert max(abs(a - b) for a, b in zip(centre, (0, 128, 128), strict=True)) < 8, centre
    with Image.open(io.BytesIO(client.get(f"/api/tasks/{small}/thumbnail", headers=READ).data)) as image:
        assert image.size == (40, 30), "a small image is not enlarged"

    # A URL's image is not fetched: no thumbnail. The list and the task say which have one.
    assert client.get(f"/api/tasks/{url}/thumbnail", headers=READ).status_code == 404
    listed = {t["taskUUID"]: t["thumbnail"] for t in client.get("/api/tasks", headers=READ).get_json()["tasks"]}
    assert listed == {photo: True, small: True, url: False}
    assert client.get(f"/api/tasks/{url}", headers=READ).get_json()["thumbnail"] is False


def test_only_the_read_token_reads_a_thumbnail_and_a_bad_uuid_is_named(client):
    (task,) = submit(client, [data_uri()])
    assert client.get(f"/api/tasks/{task}/thumbnail").status_code == 401
    assert client.get(f"/api/tasks/{task}/thumbnail", headers=SUBMIT).status_code == 401
    assert client.get("/api/tasks/nope/thumbnail", headers=READ).get_json()["error"]["message"] == (
        "taskUUID must be a UUID")
    assert client.get(f"/api/tasks/{new_uuid()}/thumbnail", headers=READ).status_code == 404


def test_the_original_upload_is_never_served_back(client):
    """Whatever route a read token reaches, the bytes of the upload do not come back (the thumbnail is made anew)."""
    original = image_bytes("PNG", "orange", (120, 90))
    answer = client.post("/api/captions", data={"file": (io.BytesIO(original), "a.png")}, headers=SUBMIT,
                         content_type="multipart/form-data")
    task = answer.get_json()["tasks"][0]["taskUUID"]
    served = client.get(f"/api/tasks/{task}/thumbnail", headers=READ).data
    assert served[:4] == b"RIFF" and served[8:12] == b"WEBP" and served != original
    shown = client.get(f"/api/tasks/{task}", headers=READ).get_data() + client.get("/api/tasks.ndjson",
                                                                                 headers=READ).get_data()
    assert b"base64" not in shown and b"input" not in shown


def test_thumbnails_older_than_their_retention_are_purged_and_the_rest_kept(client, engine):
    old, recent = submit(client, [data_uri("PNG", "red"), data_uri("PNG", "blue")])
    with engine.begin() as conn:
        conn.execute(kept.update().where(kept.c.task_uuid == old)
                     .values(created_at=utcnow() - timedelta(days=40)))
    deleted = maintenance.purge(engine, utcnow() - timedelta(days=30), thumbnails_before=utcnow() - timedelta(days=30))
    assert deleted["thumbnails"] == 1 and deleted["finished"]
    with engine.connect() as conn:
        assert set(conn.scalars(sa.select(kept.c.task_uuid))) == {recent}
    assert client.get(f"/api/tasks/{old}/thumbnail", headers=READ).status_code == 404


def test_the_samples_thumbnails_are_small():
    """The README's bytes per task: each sample image's thumbnail, and their mean."""
    sizes = [len(thumbnails.make(path.read_bytes())[0]) for path in sorted((ROOT / "samples").glob("*.*"))
             if path.suffix in (".png", ".jpg", ".webp")]
    assert len(sizes) == 6 and max(sizes) < 4096 and sum(sizes) / len(sizes) < 2048, sizes
