"""Labels: the webhook URL's tracking parameters and a submission's labels, stored, converged, filtered, grouped.

Runware's documentation of `webhookURL` shows tracking parameters beside the
secret (`?projectId=proj_789&userId=12345`); every query parameter but the
secret is a label of the delivery and of its tasks.
"""

from __future__ import annotations

import random
import time
from urllib.parse import parse_qsl
from urllib.parse import urlsplit

import orjson
import pytest
import redis
import requests
import sqlalchemy as sa

from store.schema import dead_letters
from store.schema import deliveries
from store.schema import label_result_days
from store.schema import label_result_hours
from store.schema import label_task_days
from store.schema import label_task_hours
from store.schema import label_values
from store.schema import task_labels
from store.schema import tasks
from tests.helpers import WEBHOOK
from tests.helpers import new_uuid
from tests.helpers import success
from tests.helpers import wrapped
from tests.submitting import data_uri
from tests.submitting import emulator  # noqa: F401  (fixture)
from tests.submitting import use_runware  # noqa: F401  (fixture)
from tests.support import Gunicorn
from tests.support import WebServers
from tests.support import run_worker
from tests.test_deadletters import Refusal
from workers import maintenance
from workers.queues import DELIVERY_STREAM
from workers.queues import PERSIST_QUEUE
from workers.queues import SUBMIT_QUEUE

READ = {"Authorization": "Bearer read-token"}
SUBMIT = {"Authorization": "Bearer submit-token"}
TOKENS = {"WEBHOOK_TOKENS": "hook-old,hook-new", "READ_TOKENS": "read-token", "SUBMIT_TOKENS": "submit-token"}


def hook(client, query: str, *items: dict):
    return client.post(f"{WEBHOOK}?token=hook-new{query}", data=wrapped(*items), content_type="application/json")


def stream(redis_url: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in redis.Redis.from_url(redis_url).xrange(DELIVERY_STREAM)]


def stored_labels(engine, task_uuid: str) -> dict[str, tuple[str, bool]]:
    with engine.connect() as conn:
        found = conn.execute(sa.select(task_labels.c.key, task_labels.c.value, task_labels.c.conflict)
                             .where(task_labels.c.task_uuid == task_uuid)).all()
    return {key: (value, bool(conflict)) for key, value, conflict in found}


# -- the URL's labels ---------------------------------------------------------------------------------


BAD_URLS = [
    ("&projectId=a&projectId=b", "projectId", "given more than once"),
    ("&" + "k" * 65 + "=v", "k" * 65, "a key is 1 to 64"),
    ("&pro%20ject=v", "pro ject", "a key is 1 to 64"),
    ("&proj%C3%A9t=v", "projét", "a key is 1 to 64"),
    ("&userId=" + "x" * 257, "userId", "longer than 256"),
    ("&userId=a%0Ab", "userId", "not printable"),
    ("&userId=a%00b", "userId", "not printable"),
    ("&userId=", "userId", "the value is empty"),
    ("".join(f"&k{n}=v" for n in range(17)), "k16", "more than 16 labels"),
]


@pytest.mark.parametrize("query, label, problem", BAD_URLS)
def test_a_url_breaking_a_label_rule_is_422_naming_it_and_nothing_is_queued(client, config, query, label, problem):
    response = hook(client, query, success(new_uuid()))
    assert response.status_code == 422, response.json
    error = response.json["error"]
    assert error["label"] == label and problem in error["message"], error
    assert "hook-new" not in response.get_data(as_text=True)
    assert stream(config.redis_url) == []


def test_the_limits_themselves_are_accepted(client, config, engine):
    task = new_uuid()
    labels = {f"k{n}": "v" * 256 for n in range(15)} | {"A-z_0.9" + "x" * 57: "caf\u00e9 & \u2603 ok"}
    query = "&" + "&".join(f"{k}={requests.utils.quote(v)}" for k, v in labels.items())
    assert hook(client, query, success(task)).status_code == 202
    run_worker(config.redis_url, PERSIST_QUEUE)
    assert {k: v for k, (v, _) in stored_labels(engine, task).items()} == labels


def test_url_labels_reach_the_delivery_and_its_tasks_never_the_secret(client, config, engine):
    one, two = new_uuid(), new_uuid()
    response = client.post(f"{WEBHOOK}?projectId=proj_789&apiKey=hook-old&userId=12345",
                           data=wrapped(success(one), success(two)), content_type="application/json")
    assert response.status_code == 202, response.json
    [fields] = stream(config.redis_url)
    assert orjson.loads(fields[b"labels"]) == {"projectId": "proj_789", "userId": "12345"}
    assert not any(b"hook-old" in value for value in fields.values())
    run_worker(config.redis_url, PERSIST_QUEUE)
    for task in (one, two):
        assert stored_labels(engine, task) == {"projectId": ("proj_789", False), "userId": ("12345", False)}
        answer = client.get(f"/api/tasks/{task}", headers=READ).json
        assert answer["labels"] == {"projectId": "proj_789", "userId": "12345"} and answer["labelConflicts"] == []
    with engine.connect() as conn:
        log = conn.execute(sa.select(deliveries)).one()
        every_row = repr(conn.execute(sa.select(task_labels)).all()) + repr(log)
    assert log.labels == {"projectId": "proj_789", "userId": "12345"}
    assert "hook-old" not in every_row


def test_a_delivery_without_labels_logs_none_and_removes_none(client, config, engine):
    task = new_uuid()
    assert hook(client, "&projectId=p1", success(task)).status_code == 202
    assert hook(client, "", success(task)).status_code == 202
    run_worker(config.redis_url, PERSIST_QUEUE)
    assert stored_labels(engine, task) == {"projectId": ("p1", False)}
    with engine.connect() as conn:
        assert sorted(conn.scalars(sa.select(deliveries.c.labels)), key=repr) == [None, {"projectId": "p1"}]


@pytest.mark.parametrize("order", range(4))
def test_labels_converge_whatever_the_order_and_count_of_deliveries(client, config, engine, order):
    """Shuffled, duplicated deliveries, one drain at the end or one per delivery: the first given value wins."""
    task, other = new_uuid(), new_uuid()
    shuffled = random.Random(order)
    sent = [("p1", "u1"), ("p2", "u1"), ("p1", "u1"), ("p3", None)]
    shuffled.shuffle(sent)
    sent += shuffled.sample(sent, 2)  # duplicates
    for n, (project, user) in enumerate(sent):
        query = f"&projectId={project}" + (f"&userId={user}" if user else "")
        items = [success(task)] if n % 2 else [success(task), success(other)]
        assert hook(client, query, *items).status_code == 202
        if order % 2:  # a drain per delivery
            run_worker(config.redis_url, PERSIST_QUEUE)
        time.sleep(0.002)  # distinct receipt times, so the order of receipt is the order sent
    run_worker(config.redis_url, PERSIST_QUEUE)
    projects = {p for p, _ in sent}
    assert stored_labels(engine, task) == {"projectId": (sent[0][0], len(projects) > 1), "userId": ("u1", False)}
    to_other = [p for n, (p, _) in enumerate(sent) if n % 2 == 0]
    assert stored_labels(engine, other)["projectId"] == (to_other[0], len(set(to_other)) > 1)
    answer = client.get(f"/api/tasks/{task}", headers=READ).json
    assert answer["labelConflicts"] == (["projectId"] if len(projects) > 1 else [])
    assert answer["conflict"] is False, "a label's disagreement is not a result's"


@pytest.mark.slow
def test_real_gunicorn_takes_the_documented_tracking_url_and_refuses_a_bad_one(redis_url, sqlite_url, tmp_path):
    env = {"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": sqlite_url, **TOKENS,
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    server = Gunicorn(env, workers=1, kind="intake").start()
    try:
        body, headers = wrapped(success(new_uuid())), {"Content-Type": "application/json"}
        ok = requests.post(f"{server.url}{WEBHOOK}?token=hook-old&projectId=proj_789&userId=12345", data=body,
                           headers=headers, timeout=10)
        assert ok.status_code == 202, ok.text
        bad = requests.post(f"{server.url}{WEBHOOK}?projectId=a&projectId=b", data=body,
                            headers={**headers, "X-API-Key": "hook-old"}, timeout=10)
        assert bad.status_code == 422 and bad.json()["error"]["label"] == "projectId"
        assert [orjson.loads(f[b"labels"]) for f in stream(redis_url)] == [{"projectId": "proj_789",
                                                                             "userId": "12345"}]
    finally:
        server.stop()
    assert "hook-old" not in server.output()


# -- submission labels --------------------------------------------------------------------------------


@pytest.mark.parametrize("body, message", [
    ({"modle": "runware:150@2"}, "unknown field 'modle'"),
    ({"labels": {"a": "1"}, "lables": {}, "x": 1}, "unknown fields 'lables', 'x'"),
    ({"labels": ["projectId"]}, "labels: label 'labels': must be an object"),
    ({"labels": {"projectId": 7}}, "label 'projectId': the value must be a string"),
    ({"labels": {"bad key": "v"}}, "label 'bad key': a key is 1 to 64"),
    ({"labels": {"token": "v"}}, "label 'token': names the webhook secret"),
    ({"labels": {f"k{n}": "v" for n in range(17)}}, "more than 16 labels"),
])
def test_a_bad_submission_is_400_naming_the_problem_and_queues_nothing(client, engine, body, message):
    response = client.post("/api/captions", json={"images": [data_uri()], **body}, headers=SUBMIT)
    assert response.status_code == 400, response.json
    assert message in response.json["error"]["message"]
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(task_labels)) == 0
    assert client.get("/api/tasks", headers=READ).json["tasks"] == []


def test_multipart_takes_labels_as_json_and_refuses_unknown_fields(client, engine):
    import io

    from tests.submitting import image_bytes

    def send(**form):
        data = {"file": (io.BytesIO(image_bytes()), "a.png"), **form}
        return client.post("/api/captions", data=data, headers=SUBMIT, content_type="multipart/form-data")

    assert send(labels="{nope").status_code == 400
    assert "unknown field 'colour'" in send(colour="red").json["error"]["message"]
    answer = send(labels='{"projectId": "proj_789"}')
    assert answer.status_code == 202
    [task] = answer.json["tasks"]
    assert stored_labels(engine, task["taskUUID"]) == {"projectId": ("proj_789", False)}


@pytest.mark.slow
def test_submitted_labels_go_in_the_webhook_url_and_come_back_with_the_result(config, engine, emulator,  # noqa: F811
                                                                             use_runware, redis_url):  # noqa: F811
    runware = emulator()
    server = WebServers({"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": config.database_url,
                         **TOKENS})
    use_runware(runware, PUBLIC_URL=server.intake.url)
    server.start()
    try:
        labels = {"projectId": "proj_789", "userId": "12345", "team": "a&b=c d"}
        sent = requests.post(f"{server.api.url}/api/captions", json={"images": [data_uri()], "labels": labels},
                             headers=SUBMIT, timeout=10)
        assert sent.status_code == 202, sent.text
        task = sent.json()["tasks"][0]["taskUUID"]
        assert stored_labels(engine, task) == {k: (v, False) for k, v in labels.items()}, "stored when queued"
        run_worker(redis_url, SUBMIT_QUEUE)
        deadline = time.monotonic() + 20
        while True:
            run_worker(redis_url, PERSIST_QUEUE)
            answer = requests.get(f"{server.api.url}/api/tasks/{task}", headers=READ, timeout=10).json()
            if answer["status"] == "success":
                break
            assert time.monotonic() < deadline, answer
            time.sleep(0.2)
        records = requests.get(runware.removesuffix("/v1") + "/_emulator/tasks", timeout=10).json()["tasks"]
        [record] = [r for r in records if r["taskUUID"] == task]
        query = dict(parse_qsl(urlsplit(record["webhookURL"]).query))
        assert {k: query[k] for k in labels} == labels, record["webhookURL"]
        assert answer["labels"] == labels and answer["labelConflicts"] == []
        with engine.connect() as conn:
            assert conn.scalar(sa.select(deliveries.c.labels)) == labels, "the webhook came back with them"
    finally:
        server.stop()


def test_the_cli_takes_labels(app, engine, tmp_path):
    from tests.submitting import image_bytes

    (tmp_path / "a.png").write_bytes(image_bytes())
    runner = app.test_cli_runner()
    refused = runner.invoke(args=["captions", "submit", str(tmp_path), "--label", "projectId"])
    assert refused.exit_code == 2 and "write it as key=value" in refused.output
    done = runner.invoke(args=["captions", "submit", str(tmp_path), "--label", "projectId=proj_789",
                               "--label", "userId=12345"])
    assert done.exit_code == 0, done.output
    task = done.output.split()[-2]
    assert stored_labels(engine, task) == {"projectId": ("proj_789", False), "userId": ("12345", False)}


def test_a_replayed_dead_letter_comes_back_with_its_labels(client, config, engine):
    refusal = Refusal(engine)
    refusal.on()
    try:
        task = new_uuid()
        assert hook(client, "&projectId=proj_789&userId=12345", success(task, text="poison")).status_code == 202
        run_worker(config.redis_url, PERSIST_QUEUE)
        with engine.connect() as conn:
            [letter] = conn.execute(sa.select(dead_letters)).mappings().all()
        assert letter["labels"] == {"projectId": "proj_789", "userId": "12345"} and stored_labels(engine, task) == {}
    finally:
        refusal.off()
    assert maintenance.replay_dead_letters(engine).replayed == [letter["id"]]
    assert stored_labels(engine, task) == {"projectId": ("proj_789", False), "userId": ("12345", False)}
    with engine.connect() as conn:
        counted = dict(conn.execute(sa.select(label_values.c.value, label_values.c.tasks)).all())
    assert counted == {"proj_789": 1, "12345": 1}


def test_a_deleted_task_takes_its_labels_with_it(client, config, engine):
    kept, deleted = new_uuid(), new_uuid()
    hook(client, "&projectId=proj_789&userId=12345", success(kept), success(deleted))
    run_worker(config.redis_url, PERSIST_QUEUE)
    with engine.begin() as conn:
        conn.execute(tasks.delete().where(tasks.c.task_uuid == deleted))
    with engine.connect() as conn:
        assert set(conn.scalars(sa.select(task_labels.c.task_uuid))) == {kept}
        assert set(conn.execute(sa.select(label_values.c.key, label_values.c.tasks)).all()) == {
            ("projectId", 1), ("userId", 1)}
        for table in (label_task_hours, label_task_days, label_result_hours, label_result_days):
            assert conn.scalar(sa.select(sa.func.sum(table.c.tasks))) == 2, table.name  # one task, two labels
