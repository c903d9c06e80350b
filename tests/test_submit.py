"""Submitting: POST /api/captions stores queued tasks; the submit job sends them in batches and settles each."""

from __future__ import annotations

import base64
import io
import random
import threading
import uuid
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
import redis
import sqlalchemy as sa
from PIL import Image
from rq import Queue
from rq.registry import ScheduledJobRegistry

from config import Config
from config import ConfigError
from store import submissions
from store.results import Result
from store.results import apply_results
from store.schema import utcnow
from tests.helpers import new_uuid
from tests.submitting import EMULATOR_KEY
from tests.submitting import Counting
from tests.submitting import data_uri
from tests.submitting import emulator  # noqa: F401  (fixture)
from tests.submitting import image_bytes
from tests.submitting import queue
from tests.submitting import replace
from tests.submitting import rows
from tests.submitting import run_scheduling_worker
from tests.submitting import use_runware  # noqa: F401  (fixture)
from tests.support import free_port
from tests.support import wait_for
from workers import submit as submit_job
from workers.queues import SUBMIT_QUEUE
from workers.runware import RetryableError
from workers.runware import RunwareAnswer
from workers.runware import RunwareClient
from workers.runware import RunwareError
from workers.submit import SUBMIT_FLAG
from workers.submit import Submitter
from workers.submit import settle
from workers.submit import submit_queued

AUTH = {"Authorization": "Bearer submit-token"}


def post_json(client, body: dict, headers: dict | None = None):
    return client.post("/api/captions", data=orjson.dumps(body), content_type="application/json",
                       headers=AUTH if headers is None else headers)


def submitter(engine, config, session=None) -> Submitter:
    return Submitter(engine, RunwareClient(config.runware_api_url, config.runware_api_key, session=session), config)


# --- POST /api/captions ---------------------------------------------------------------------------------------


def test_one_queued_task_per_image_stored_before_anything_is_sent(client, engine, redis_url):
    jpeg = base64.b64encode(image_bytes("JPEG")).decode()
    image_uuid = str(uuid.uuid4()).upper()
    response = post_json(client, {"images": [data_uri("PNG"), jpeg, "https://images.example/a.webp", image_uuid]})
    assert response.status_code == 202
    body = response.get_json()
    assert (body["accepted"], body["rejected"]) == (4, 0)
    uuids = [t["taskUUID"] for t in body["tasks"]]
    assert all(uuid.UUID(u).version == 4 for u in uuids) and len(set(uuids)) == 4
    stored = rows(engine, uuids)
    assert {r.status for r in stored.values()} == {"queued"}
    assert {r.source for r in stored.values()} == {"submitted"}
    first, second, url, by_uuid = (stored[u] for u in uuids)
    assert first.input_ref.startswith("data:image/png;base64,") and first.input_name is None
    assert second.input_ref.startswith("data:image/jpeg;base64,"), "raw base64 is sent as a data URI"
    assert url.input_ref == url.input_name == "https://images.example/a.webp"
    assert by_uuid.input_ref == image_uuid.lower()
    assert all(r.include_cost and r.delivery_method == "async" and r.model is None for r in stored.values())
    conn = redis.Redis.from_url(redis_url)
    assert Queue(SUBMIT_QUEUE, connection=conn).count == 1 and conn.exists(SUBMIT_FLAG)
    post_json(client, {"images": [data_uri("PNG")]})
    assert Queue(SUBMIT_QUEUE, connection=conn).count == 1, "one job is enough while one is queued"


def test_each_bad_image_gets_its_own_error_and_the_good_ones_go_on(app, engine):
    app.config["SERVICE"] = replace(app.config["SERVICE"], max_image_bytes=2000)
    gif = base64.b64encode(image_bytes("GIF")).decode()
    truncated = base64.b64encode(image_bytes("PNG", size=(40, 40))[:60]).decode()
    jpeg_as_png = "data:image/png;base64," + base64.b64encode(image_bytes("JPEG")).decode()
    noisy = io.BytesIO()
    Image.frombytes("RGB", (60, 60), random.Random(1).randbytes(60 * 60 * 3)).save(noisy, "PNG")
    big = base64.b64encode(noisy.getvalue()).decode()
    noise = "data:image/png;base64," + base64.b64encode(bytes(range(256)) * 4).decode()
    images = [data_uri("WEBP"), gif, "hello there!", jpeg_as_png, truncated, big, noise, "ftp://x/y.png", 42]
    response = post_json(app.test_client(), {"images": images, "includeCost": False, "model": "runware:150@2"})
    assert response.status_code == 202
    outcome = response.get_json()["tasks"]
    assert [t["index"] for t in outcome] == list(range(len(images)))
    accepted = [t for t in outcome if "taskUUID" in t]
    assert [t["index"] for t in accepted] == [0, 3]
    errors = {t["index"]: t["error"] for t in outcome if "error" in t}
    assert errors[1] == "unsupported format GIF: use PNG, JPG or WEBP"
    assert errors[2].startswith("neither an http(s) URL")
    assert errors[4].startswith(("corrupt PNG", "not an image"))
    assert errors[5].startswith("too large")
    assert errors[6].startswith("not an image")
    assert errors[7].startswith("neither") and errors[8].startswith("must be a non-empty string")
    stored = rows(engine, [t["taskUUID"] for t in accepted])
    assert stored[accepted[1]["taskUUID"]].input_ref.startswith("data:image/jpeg;"), "the format is told by content"
    assert all(r.include_cost is False and r.model == "runware:150@2" for r in stored.values())


def test_a_header_pillow_cannot_parse_is_not_an_image_not_a_500(client):
    """Pillow's plugins raise their own errors on a bad header (here a PPM's); that is a bad image, not a crash."""
    bad_ppm = base64.b64encode(b"P6\n\xc76 16\n255\n" + bytes(64)).decode()
    response = post_json(client, {"images": [bad_ppm, data_uri("PNG")]})
    assert response.status_code == 202
    bad, good = response.get_json()["tasks"]
    assert bad["error"].startswith("not an image") and "taskUUID" in good


def test_multipart_files_are_checked_by_content_not_by_name(client, engine):
    files = {
        "images": [(io.BytesIO(image_bytes("WEBP")), "holiday.png"), (io.BytesIO(b"just some notes"), "notes.png")],
        "deliveryMethod": "sync",
        "includeCost": "false",
    }
    response = client.post("/api/captions", data=files, headers=AUTH, content_type="multipart/form-data")
    assert response.status_code == 202
    outcome = response.get_json()["tasks"]
    assert outcome[0]["input"] == "holiday.png" and "taskUUID" in outcome[0]
    assert outcome[1] == {"index": 1, "input": "notes.png",
                          "error": "not an image: the content is not a readable PNG, JPG or WEBP"}
    task = rows(engine, [outcome[0]["taskUUID"]])[outcome[0]["taskUUID"]]
    assert task.input_ref.startswith("data:image/webp;base64,") and task.input_name == "holiday.png"
    assert (task.delivery_method, task.include_cost) == ("sync", False)


def test_refusals_name_the_problem(app, client, engine):
    good = {"images": [data_uri()]}
    assert post_json(client, good, headers={}).status_code == 401
    assert post_json(client, good, headers={"Authorization": "Bearer read-token"}).status_code == 401
    assert client.post("/api/captions", data="x", content_type="text/plain", headers=AUTH).status_code == 415
    for body, message in [
        ({"images": []}, "images must be a non-empty array"),
        ({"pictures": [data_uri()]}, "images must be a non-empty array"),
        ({**good, "deliveryMethod": "push"}, "deliveryMethod must be async or sync"),
        ({**good, "includeCost": "maybe"}, "includeCost must be true or false"),
        ({**good, "model": "llava"}, "model must be an AIR ID"),
    ]:
        response = post_json(client, body)
        assert response.status_code == 400 and response.get_json()["error"]["message"].startswith(message)
    none_good = post_json(client, {"images": ["nope", "data:image/png;base64,AAAA"]})
    assert none_good.status_code == 422 and none_good.get_json()["error"]["rejected"] == 2
    app.config["SERVICE"] = replace(app.config["SERVICE"], max_submit_body_bytes=1000)
    assert post_json(client, {"images": [data_uri(size=(300, 300))]}).status_code == 413
    assert rows(engine) == {}


def test_a_task_reads_back_with_the_submit_token(client):
    task_uuid = post_json(client, {"images": [data_uri()]}).get_json()["tasks"][0]["taskUUID"]
    response = client.get(f"/api/captions/{task_uuid}", headers=AUTH)
    assert response.status_code == 200 and response.get_json()["status"] == "queued"
    assert client.get(f"/api/captions/{task_uuid}").status_code == 401
    assert client.get(f"/api/captions/{new_uuid()}", headers=AUTH).status_code == 404


# --- the submit job ---------------------------------------------------------------------------------------------


def test_async_tasks_are_sent_with_the_webhook_and_become_submitted(engine, emulator, use_runware):  # noqa: F811
    config = use_runware(emulator(drop_rate=1.0), RECONCILE_AFTER_SECONDS=90)
    uuids = queue(engine, 3)
    session = Counting()
    before = utcnow()
    submitter(engine, config, session).run(batch_size=10)
    [sent] = session.sent
    assert sorted(t["taskUUID"] for t in sent) == sorted(uuids)
    assert all(t["webhookURL"] == f"{config.public_url}/webhooks/runware?token=hook-old" for t in sent)
    assert all(t["includeCost"] is True and t["deliveryMethod"] == "async" for t in sent)
    for row in rows(engine, uuids).values():
        assert row.status == "submitted" and row.submit_attempts == 1 and row.input_ref
        assert before <= row.submitted_at <= utcnow()
        assert row.next_poll_at - row.submitted_at == timedelta(seconds=90)


def test_sync_results_are_stored_through_the_same_merge_path(engine, emulator, use_runware):  # noqa: F811
    config = use_runware(emulator())
    uuids = queue(engine, 2, delivery="sync")
    session = Counting()
    submitter(engine, config, session).run(batch_size=10)
    assert "webhookURL" not in session.sent[0][0]
    for row in rows(engine, uuids).values():
        assert row.status == "success" and row.text and row.cost > 0
        assert row.delivery_count == 0 and row.input_ref is None and row.next_poll_at is None


def test_tasks_go_in_batches_of_the_configured_size(engine, emulator, use_runware):  # noqa: F811
    config = use_runware(emulator(drop_rate=1.0), SUBMIT_BATCH_SIZE=4)
    uuids = queue(engine, 10)
    session = Counting()
    submitter(engine, config, session).run(batch_size=config.submit_batch_size)
    assert [len(batch) for batch in session.sent] == [4, 4, 2]
    assert [t["taskUUID"] for batch in session.sent for t in batch] == sorted(uuids), "stored together: by UUID"
    assert {r.status for r in rows(engine).values()} == {"submitted"}


def test_a_task_runware_refuses_fails_with_its_code_and_the_others_go_on(engine, emulator,  # noqa: F811
                                                                         use_runware):  # noqa: F811
    config = use_runware(emulator(drop_rate=1.0))
    dead_url = f"http://127.0.0.1:{free_port()}/gone.png"
    good, bad = queue(engine, 2, inputs=[data_uri(), dead_url])
    submitter(engine, config).run(batch_size=10)
    stored = rows(engine)
    assert stored[good].status == "submitted"
    assert (stored[bad].status, stored[bad].error_code) == ("error", "invalidInputImage")
    assert "fetch" in stored[bad].error_message and stored[bad].input_ref is None


def test_a_batch_refused_as_a_whole_fails_every_task_with_runwares_code(engine, emulator,  # noqa: F811
                                                                        use_runware):  # noqa: F811
    config = use_runware(emulator(), key="wrong-key")
    queue(engine, 3)
    submit_queued()
    for row in rows(engine).values():
        assert (row.status, row.error_code, row.input_ref) == ("error", "invalidApiKey", None)
        assert "API key" in row.error_message
    assert config.runware_api_key == "wrong-key"


def test_a_failed_sync_task_is_that_tasks_error_not_a_retry(engine, emulator, use_runware):  # noqa: F811
    use_runware(emulator(task_error_rate=1.0))
    [task] = queue(engine, 1, delivery="sync")
    submit_queued()
    row = rows(engine)[task]
    assert (row.status, row.error_code, row.submit_attempts) == ("error", "timeoutProvider", 1)


def test_a_task_runware_has_already_counts_as_submitted(engine, emulator, use_runware):  # noqa: F811
    config = use_runware(emulator(drop_rate=1.0))
    [task] = queue(engine, 1)
    ref = rows(engine)[task].input_ref
    RunwareClient(config.runware_api_url, EMULATOR_KEY).run(
        [{"taskType": "imageCaption", "taskUUID": task, "inputImage": ref, "deliveryMethod": "async"}])
    submit_queued()  # as if a worker had died after sending: conflictTaskUUID
    row = rows(engine)[task]
    assert row.status == "submitted" and row.submitted_at is not None


def test_transient_failures_hand_the_batch_back_and_raise_for_rqs_retry(engine, emulator,  # noqa: F811
                                                                        use_runware):  # noqa: F811
    use_runware(emulator(rate_limit_rate=1.0), SUBMIT_MAX_ATTEMPTS=3)
    uuids = queue(engine, 3)
    for attempt in (1, 2):
        with pytest.raises(RetryableError) as caught:
            submit_queued()
        assert caught.value.status == 429
        for row in rows(engine).values():
            assert (row.status, row.submit_attempts, row.next_poll_at) == ("queued", attempt, None)
    submit_queued()  # the third attempt is the last one: the tasks fail, nothing is left to retry
    for row in rows(engine, uuids).values():
        assert (row.status, row.error_code) == ("error", "rateLimitExceeded")
        assert row.error_message.startswith("gave up after 3 attempts")


def test_rq_retries_the_job_with_backoff_once_runware_is_back(engine, redis_url, emulator,  # noqa: F811
                                                              use_runware, monkeypatch):  # noqa: F811
    use_runware(emulator(unavailable_rate=1.0))
    monkeypatch.setattr(submit_job, "JOB_RETRIES", 2)
    monkeypatch.setattr(submit_job, "RETRY_BASE_S", 1.0)
    uuids = queue(engine, 2)
    conn = redis.Redis.from_url(redis_url)
    assert submit_job.want_submit(conn)
    run_scheduling_worker(redis_url, SUBMIT_QUEUE)
    registry = ScheduledJobRegistry(SUBMIT_QUEUE, connection=conn)
    assert registry.count == 1, "the failed job waits for its retry"
    assert {r.status for r in rows(engine, uuids).values()} == {"queued"}
    use_runware(emulator(drop_rate=1.0))

    def retried() -> bool:
        run_scheduling_worker(redis_url, SUBMIT_QUEUE)
        return {r.status for r in rows(engine, uuids).values()} == {"submitted"}

    wait_for(retried, timeout=15, interval=0.5, what="the retried job to submit the tasks")


def test_two_submitters_never_send_the_same_task(engine, emulator, use_runware):  # noqa: F811
    config = use_runware(emulator(drop_rate=1.0))
    uuids = queue(engine, 40)
    sessions = [Counting(), Counting()]
    threads = [threading.Thread(target=submitter(engine, config, s).run, args=(3,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    sent = [t["taskUUID"] for s in sessions for batch in s.sent for t in batch]
    assert sorted(sent) == sorted(uuids), "each task sent exactly once"
    assert {r.status for r in rows(engine).values()} == {"submitted"}


def test_claims_skip_tasks_another_transaction_holds(engine):
    uuids = queue(engine, 6)
    with engine.begin() as conn:
        first = submissions.claim_queued(conn, 4, 300)
    with engine.begin() as conn:
        second = submissions.claim_queued(conn, 4, 300)
        assert submissions.claim_queued(conn, 4, 300) == []
    assert sorted(c.task_uuid for c in first + second) == sorted(uuids)
    with engine.begin() as conn:
        submissions.release(conn, [second[0].task_uuid])
        assert [c.task_uuid for c in submissions.claim_queued(conn, 4, 300)] == [second[0].task_uuid]
    later = utcnow() + timedelta(seconds=301)
    with engine.begin() as conn:
        assert len(submissions.claim_queued(conn, 10, 300, now=later)) == 6, "a lapsed claim is taken again"


@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_claims_skip_locked_rows(engine):
    uuids = queue(engine, 6)
    with engine.connect() as holder:
        holder.begin()
        held = submissions.claim_queued(holder, 4, 300)
        with engine.begin() as other:
            taken = submissions.claim_queued(other, 10, 300)
        holder.rollback()
    assert sorted(c.task_uuid for c in held + taken) == sorted(uuids), "the open claim's rows were skipped"


def test_a_webhook_stored_before_the_answer_is_never_lowered(engine):
    [task] = queue(engine, 1)
    with engine.begin() as conn:
        submissions.claim_queued(conn, 1, 300)
    now = utcnow()
    with engine.begin() as conn:  # the webhook's drain gets there first
        apply_results(conn, [Result(task, "success", now, text="a cat", cost=Decimal("0.002"))])
    outcome = settle([task], RunwareAnswer([{"taskType": "imageCaption", "taskUUID": task}]), None, now)
    with engine.begin() as conn:
        apply_results(conn, outcome.results, delivered=False)
        submissions.mark_submitted(conn, outcome.taken, now + timedelta(seconds=60))
        submissions.clear_inputs(conn, [task])
    row = rows(engine)[task]
    assert (row.status, row.text, row.delivery_count) == ("success", "a cat", 1)
    assert row.submitted_at is not None and row.next_poll_at is None and row.input_ref is None


def test_settle_sends_again_the_tasks_a_scoped_refusal_did_not_name():
    a, b, c = new_uuid(), new_uuid(), new_uuid()
    now = utcnow()
    refusal = RunwareError("invalidInputImage", "bad", 400, RunwareAnswer(
        errors=[{"code": "invalidInputImage", "message": "bad", "taskUUID": a}], status=400))
    outcome = settle([a, b, c], refusal.answer, refusal, now)
    assert [(r.task_uuid, r.status, r.error_code) for r in outcome.results] == [(a, "error", "invalidInputImage")]
    assert outcome.again == [b, c] and outcome.taken == []
    wide = RunwareError("insufficientCredits", "top up", 402, RunwareAnswer(
        errors=[{"code": "insufficientCredits", "message": "top up"}], status=402))
    outcome = settle([a, b], wide.answer, wide, now)
    assert {(r.status, r.error_code, r.error_message) for r in outcome.results} == {("error", "insufficientCredits",
                                                                                      "top up")}
    busy = RetryableError("rateLimitExceeded", "later", 429, RunwareAnswer(
        errors=[{"code": "rateLimitExceeded", "message": "later", "taskUUID": a}], status=429))
    outcome = settle([a, b], busy.answer, busy, now)
    assert outcome.results == [] and outcome.again == [a, b], "a transient refusal is never a task's outcome"


def test_a_job_that_runs_long_hands_over_to_a_successor(engine, redis_url, emulator, use_runware):  # noqa: F811
    use_runware(emulator(drop_rate=1.0), SUBMIT_BATCH_SIZE=2)
    queue(engine, 5)
    counts = submit_queued(hand_over_after=0)
    assert counts["sent"] == 2
    conn = redis.Redis.from_url(redis_url)
    assert Queue(SUBMIT_QUEUE, connection=conn).count == 1
    with engine.connect() as conn_db:
        assert conn_db.scalar(sa.text("SELECT count(*) FROM tasks WHERE status = 'queued'")) == 3


def test_the_submission_benchmark_runs_and_every_task_is_submitted():
    from bench.submit import run

    figures = run(20, 5)
    assert figures["unbatched"]["status"] == figures["batched"]["status"] == "ok"
    assert (figures["unbatched"]["requests"], figures["batched"]["requests"]) == (20, 4)
    assert figures["batched"]["tasks_per_s"] > 0


def test_tasks_are_accepted_while_redis_is_down_and_reconcile_restarts_them(client, engine, redis_server):
    redis_server.stop()
    response = post_json(client, {"images": [data_uri()]})
    assert response.status_code == 202, "the tasks are safe in the store; reconcile enqueues their submit job"
    assert {r.status for r in rows(engine).values()} == {"queued"}


@pytest.mark.parametrize(("name", "value", "message"), [
    ("SUBMIT_BATCH_SIZE", "ten", "SUBMIT_BATCH_SIZE must be an integer, not 'ten'"),
    ("RESULT_DEADLINE_SECONDS", "0", "RESULT_DEADLINE_SECONDS must be at least 1, not 0"),
])
def test_submission_settings_are_checked(config, monkeypatch, name, value, message):
    assert (config.submit_batch_size, config.reconcile_after_seconds, config.result_deadline_seconds,
            config.max_image_bytes) == (10, 60, 900, 10 * 1024 * 1024)
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        Config.from_env()
