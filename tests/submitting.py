"""What the submission tests share: sample images, the emulator as Runware, settings pointing at it."""

from __future__ import annotations

import base64
import dataclasses
import io

import orjson
import pytest
import redis
import requests
import sqlalchemy as sa
from PIL import Image
from rq import Queue
from rq import Worker

from config import Config
from emulator import Settings
from emulator import serve_in_thread
from store.schema import tasks
from store.submissions import NewTask
from store.submissions import queue_tasks
from tests.helpers import new_uuid

EMULATOR_KEY = "emulator-key"


def image_bytes(fmt: str = "PNG", colour: str = "red", size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def data_uri(fmt: str = "PNG", colour: str = "red", size: tuple[int, int] = (16, 12)) -> str:
    media = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
    return f"data:{media};base64," + base64.b64encode(image_bytes(fmt, colour, size)).decode()


@pytest.fixture
def emulator():
    """`emulator(**settings)` starts an emulator (fault settings may be given directly); returns its /v1 URL."""
    stops = []

    def start(**changes) -> str:
        url, stop = serve_in_thread(Settings(port=0, processing_ms=5).replace(**changes))
        stops.append(stop)
        return url + "/v1"

    yield start
    for stop in stops:
        stop()


class Counting(requests.Session):
    """A session that remembers the task arrays it sent, one list per request."""

    def __init__(self):
        super().__init__()
        self.sent: list[list[dict]] = []

    def post(self, url, data=None, **kwargs):
        self.sent.append(orjson.loads(data))
        return super().post(url, data=data, **kwargs)


@pytest.fixture
def use_runware(config, monkeypatch):
    """`use_runware(api_url, **settings)`: the service's Config (and environment) pointed at that Runware."""

    def point(api_url: str, key: str = EMULATOR_KEY, **env: object) -> Config:
        monkeypatch.setenv("RUNWARE_API_URL", api_url)
        monkeypatch.setenv("RUNWARE_API_KEY", key)
        for name, value in env.items():
            monkeypatch.setenv(name.upper(), str(value))
        return Config.from_env()

    return point


def queue(engine: sa.Engine, n: int, delivery: str = "async", include_cost: bool = True,
          inputs: list[str] | None = None) -> list[str]:
    """Store `n` queued tasks (distinct images unless `inputs` are given); returns their UUIDs."""
    colours = ["red", "green", "blue", "white", "black", "yellow", "purple", "orange"]
    refs = inputs or [data_uri("PNG", colours[i % len(colours)], (8 + i, 8 + i % 7)) for i in range(n)]
    new = [NewTask(new_uuid(), ref, f"image-{i}.png", None, include_cost, delivery) for i, ref in enumerate(refs)]
    with engine.begin() as conn:
        queue_tasks(conn, new)
    return [t.task_uuid for t in new]


def rows(engine: sa.Engine, uuids: list[str] | None = None) -> dict[str, sa.Row]:
    stmt = sa.select(tasks)
    if uuids is not None:
        stmt = stmt.where(tasks.c.task_uuid.in_(uuids))
    with engine.connect() as conn:
        found = {r.task_uuid: r for r in conn.execute(stmt)}
    # Checks that loop over the rows found must not pass by finding none.
    assert uuids is None or set(found) == set(uuids), f"tasks not stored: {sorted(set(uuids) - set(found))[:5]}"
    return found


def run_scheduling_worker(redis_url: str, queue_name: str) -> None:
    """A real forking RQ worker in burst mode that first enqueues due scheduled jobs (retries)."""
    conn = redis.Redis.from_url(redis_url)
    Worker([Queue(queue_name, connection=conn)], connection=conn).work(
        burst=True, with_scheduler=True, logging_level="WARNING")


def replace(config: Config, **changes) -> Config:
    return dataclasses.replace(config, **changes)
