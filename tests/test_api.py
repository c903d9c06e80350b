"""The query API and the health checks."""

from __future__ import annotations

import pytest

from tests.helpers import new_uuid
from tests.helpers import post
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import run_worker
from workers.queues import PERSIST_QUEUE

READ = {"Authorization": "Bearer read-token"}


def test_stored_task_is_returned_as_json(client, config):
    task = new_uuid()
    post(client, wrapped(success(task, text="<b>two cats</b>", cost=0.0019, model="runware:150@2")))
    run_worker(config.redis_url, PERSIST_QUEUE)

    response = client.get(f"/api/tasks/{task.upper()}", headers=READ)
    assert response.status_code == 200
    body = response.json
    assert body["taskUUID"] == task
    assert body["status"] == "success"
    assert body["text"] == "<b>two cats</b>"
    assert body["cost"] == 0.0019
    assert body["model"] == "runware:150@2"
    assert body["source"] == "external"
    assert body["deliveryCount"] == 1
    assert body["firstDeliveryAt"].endswith("+00:00")
    assert response.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "read-token"},
                                     {"Authorization": "Bearer hook-new"}, {"Authorization": "Basic read-token"}])
def test_reading_needs_a_read_token(client, headers):
    response = client.get(f"/api/tasks/{new_uuid()}", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_unknown_task_is_404_and_bad_uuid_400(client):
    missing = new_uuid()
    response = client.get(f"/api/tasks/{missing}", headers=READ)
    assert response.status_code == 404
    assert missing in response.json["error"]["message"]
    assert client.get("/api/tasks/not-a-uuid", headers=READ).status_code == 400


def test_unknown_route_and_method_answer_json(client):
    assert client.get("/nope").json["error"]["status"] == 404
    assert client.get("/webhooks/runware").status_code == 405


def test_health_and_readiness(client, redis_server):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["checks"] == {"redis": "ok", "database": "ok"}

    redis_server.stop()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["checks"]["redis"].startswith("unavailable")
    assert ready.json["checks"]["database"] == "ok"
    assert client.get("/healthz").status_code == 200
