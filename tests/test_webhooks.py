"""The webhook contract (design §3), row by row, against a real Redis and real RQ workers."""

from __future__ import annotations

import orjson
import pytest
import redis
import sqlalchemy as sa

from store.schema import tasks
from tests.helpers import failure
from tests.helpers import new_uuid
from tests.helpers import post
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import run_worker
from workers.queues import DELIVERY_STREAM
from workers.queues import PERSIST_QUEUE


def stream_length(config) -> int:
    return redis.Redis.from_url(config.redis_url).xlen(DELIVERY_STREAM)


def stored(engine, task_uuid: str):
    with engine.connect() as conn:
        return conn.execute(sa.select(tasks).where(tasks.c.task_uuid == task_uuid)).mappings().first()


@pytest.mark.parametrize("token", ["hook-old", "hook-new"])
def test_valid_delivery_is_queued_then_stored(client, config, engine, token):
    task = new_uuid()
    response = post(client, wrapped(success(task)), token=token)
    assert response.status_code == 202
    assert response.json["items"] == 1
    assert stream_length(config) == 1

    run_worker(config.redis_url, PERSIST_QUEUE)

    row = stored(engine, task)
    assert row["status"] == "success"
    assert row["text"] == "a red square on white"
    assert float(row["cost"]) == pytest.approx(0.0019)
    assert row["source"] == "external"
    assert row["delivery_count"] == 1
    assert stream_length(config) == 0


@pytest.mark.parametrize("token", [None, "", "hook-ne", "hook-new-", "HOOK-NEW", "read-token"])
def test_missing_or_wrong_token_is_401_and_nothing_queued(client, config, token):
    response = post(client, wrapped(success(new_uuid())), token=token)
    assert response.status_code == 401
    assert response.json["error"]["message"] == "missing or invalid token"
    assert stream_length(config) == 0


def test_not_json_is_400_naming_the_problem(client, config):
    response = post(client, b'{"data": [')
    assert response.status_code == 400
    assert "not valid JSON" in response.json["error"]["message"]
    assert stream_length(config) == 0


@pytest.mark.parametrize("body", [b"NaN", b'{"taskUUID": 1e999}', b"\xff\xfe", b"[" * 5000 + b"]" * 5000])
def test_json_that_is_not_strict_json_is_400(client, config, body):
    assert post(client, body).status_code == 400
    assert stream_length(config) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_wrong_content_type_is_415(client, config, content_type):
    response = post(client, wrapped(success(new_uuid())), content_type=content_type)
    assert response.status_code == 415
    assert "application/json" in response.json["error"]["message"]
    assert stream_length(config) == 0


def test_body_over_the_limit_is_413(client, config):
    big = wrapped(success(new_uuid(), text="x" * (config.max_body_bytes + 1)))
    response = post(client, big)
    assert response.status_code == 413
    assert response.json["error"]["status"] == 413
    assert stream_length(config) == 0


@pytest.mark.parametrize(
    "doc",
    [
        {"data": []},
        {"data": [{"taskType": "imageCaption", "text": "no uuid"}]},
        {"data": [{"taskUUID": "not-a-uuid", "text": "x"}]},
        {"data": [{"taskUUID": 42, "text": "x"}]},
        {"taskType": "imageCaption", "text": "bare, no uuid"},
        {"data": "nope"},
        ["a", "list"],
        "a string",
    ],
)
def test_json_without_usable_item_is_422_naming_the_field(client, config, doc):
    response = post(client, orjson.dumps(doc))
    assert response.status_code == 422
    assert "taskUUID" in response.json["error"]["message"] or "must be" in response.json["error"]["message"]
    assert stream_length(config) == 0


def test_every_accepted_shape_is_stored(client, config, engine):
    ok, bad, both_ok, both_bad, bare, newer = (new_uuid() for _ in range(6))
    bodies = [
        wrapped(success(ok)),
        wrapped(errors=(failure(bad),)),
        wrapped(success(both_ok), errors=(failure(both_bad, code="invalidInput"),)),
        orjson.dumps(success(bare, text="bare object")),
        orjson.dumps({"data": [{"taskType": "caption", "taskUUID": newer.upper(), "text": "newer task type"}]}),
    ]
    for body in bodies:
        assert post(client, body).status_code == 202
    run_worker(config.redis_url, PERSIST_QUEUE)

    assert stored(engine, ok)["status"] == "success"
    assert stored(engine, bad)["error_code"] == "timeoutProvider"
    assert stored(engine, both_ok)["status"] == "success"
    assert stored(engine, both_bad)["error_code"] == "invalidInput"
    assert stored(engine, bare)["text"] == "bare object"
    assert stored(engine, newer)["task_type"] == "caption"


def test_partly_usable_body_stores_the_usable_items(client, config, engine):
    good = new_uuid()
    body = wrapped(success(good), {"taskUUID": "nope"}, success(new_uuid(), text=42))
    response = post(client, body)
    assert response.status_code == 202
    assert response.json["items"] == 1
    assert response.json["skipped"] == ["item 1: taskUUID: missing or not a UUID", "item 2: text: must be a string"]
    run_worker(config.redis_url, PERSIST_QUEUE)
    assert stored(engine, good)["status"] == "success"
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(tasks)) == 1


def test_redis_down_is_503_with_retry_after_then_recovers(client, config, engine, redis_server):
    task = new_uuid()
    redis_server.stop()
    response = post(client, wrapped(success(task)))
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert "retry" in response.json["error"]["message"]

    redis_server.start()
    assert stream_length(config) == 0
    response = post(client, wrapped(success(task)))
    assert response.status_code == 202
    run_worker(config.redis_url, PERSIST_QUEUE)
    row = stored(engine, task)
    assert row["status"] == "success" and row["delivery_count"] == 1


def test_a_task_repeated_in_one_body_counts_once(client, config, engine):
    task = new_uuid()
    body = wrapped(success(task, text="first"), success(task, text="second"), errors=(failure(task),))
    response = post(client, body)
    assert response.status_code == 202
    assert response.json["items"] == 1
    assert response.json["skipped"] == ["item 1: repeats the taskUUID of an earlier item with another result; "
                                         "the first is kept"]
    run_worker(config.redis_url, PERSIST_QUEUE)
    row = stored(engine, task)
    assert (row["text"], row["delivery_count"]) == ("first", 1)


def test_reasons_for_skipped_items_are_bounded(client):
    body = orjson.dumps({"data": [success(new_uuid()), *({"taskUUID": "x"} for _ in range(5000))]})
    skipped = post(client, body).json["skipped"]
    assert len(skipped) == 101
    assert skipped[-1] == "and 4900 more items skipped"
