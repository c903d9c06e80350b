"""Hostile input: generated requests at the webhook and every API route, through the Flask test client.

Every answer must be below 500, and a JSON error when it is not 2xx. A rejected
webhook body adds nothing to the stream; after the run, a real drain (a forking
RQ worker) empties the stream, stores a delivery per accepted body, and stores
no task that came only from a rejected one; no job is left queued or failed.

`test_generated_requests` sends FUZZ_REQUESTS requests (1,000 per database by
default, so about 2,000 a run, plus 300 hypothesis examples per database;
`make fuzz` sends 100,000, on SQLite) drawn from tests/fuzzing.py with the seed
FUZZ_SEED (random unless set; printed, with counts by kind and status, at the end).
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import sqlalchemy as sa
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from rq import Queue
from rq.registry import FailedJobRegistry
from rq.registry import StartedJobRegistry

from config import Config
from receiver import create_app
from receiver import signatures
from store.schema import dead_letters
from store.schema import deliveries
from store.schema import tasks
from tests.fuzzing import CONTENT_TYPES
from tests.fuzzing import JSON_TYPES
from tests.fuzzing import WEBHOOK
from tests.fuzzing import HostileRequests
from tests.fuzzing import Request
from tests.fuzzing import Tally
from tests.support import run_worker
from tests.support import with_intake
from workers.payloads import MAX_COST_USD
from workers.queues import DELIVERY_GROUP
from workers.queues import DELIVERY_STREAM
from workers.queues import PERSIST_QUEUE

FUZZ_REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "1000"))
ATHERIS_RUNS = int(os.environ.get("ATHERIS_RUNS", "20000"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED") or random.randrange(2**32))
ALL_TOKENS = {"WEBHOOK_TOKENS": ["hook-old", "hook-new"], "READ_TOKENS": ["read-token"],
              "SUBMIT_TOKENS": ["submit-token"], "ADMIN_TOKENS": ["admin-token"], "METRICS_TOKENS": ["metrics-token"]}
EXAMPLES = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture
def fuzz_app(config, monkeypatch):
    monkeypatch.setenv("ADMIN_TOKENS", "admin-token")
    monkeypatch.setenv("METRICS_TOKENS", "metrics-token")
    config = Config.from_env()
    intake = create_app(config, kind="intake")
    app = with_intake(create_app(config), intake)
    yield app
    for each in (app, intake):
        each.extensions["redis"].close()


def send(client, request: Request) -> tuple[int, bytes, str | None]:
    path = quote(request.path, safe="/%")
    response = client.open(path, method=request.method, data=request.body, content_type=request.content_type,
                           headers=request.headers, query_string=request.query)
    return response.status_code, response.get_data(), response.content_type


def drain_and_check(config: Config, engine: sa.Engine, tally: Tally) -> None:
    """Run the drain for real, then: the stream is empty, nothing stuck, nothing stored from a rejected body."""
    conn = redis.Redis.from_url(config.redis_url)
    assert conn.xlen(DELIVERY_STREAM) == tally.accepted
    run_worker(config.redis_url, PERSIST_QUEUE)
    assert conn.xlen(DELIVERY_STREAM) == 0, "the drain left deliveries in the stream"
    if tally.accepted:
        assert conn.xpending(DELIVERY_STREAM, DELIVERY_GROUP)["pending"] == 0
    queue = Queue(PERSIST_QUEUE, connection=conn)
    assert queue.count == 0
    assert FailedJobRegistry(queue=queue).count == 0, "a drain job failed"
    assert StartedJobRegistry(queue=queue).count == 0, "a drain job is stuck"
    with engine.connect() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(deliveries)) == tally.accepted
        assert db.scalar(sa.select(sa.func.count()).select_from(dead_letters)) == 0
        delivered = db.execute(sa.select(tasks.c.task_uuid, tasks.c.status, tasks.c.text, tasks.c.cost)
                               .where(tasks.c.delivery_count > 0)).all()
    stored = {row.task_uuid for row in delivered}
    assert not stored & tally.rejected_uuids - tally.accepted_uuids, "a task named only in a rejected body was stored"
    if tally.track_accepted:
        assert stored <= tally.accepted_uuids, f"from no accepted body: {sorted(stored - tally.accepted_uuids)[:5]}"
    for row in delivered:
        assert row.status in ("submitted", "error", "success")
        assert row.status != "success" or row.text is not None
        assert row.cost is None or 0 <= row.cost <= MAX_COST_USD


# -- hypothesis: bodies built from JSON strategies and raw bytes --------------------------------

uuids = st.uuids(version=4).map(str)
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=20)
items = st.fixed_dictionaries({}, optional={
    "taskUUID": uuids | uuids.map(str.upper) | values,
    "taskType": st.sampled_from(["imageCaption", "caption"]) | values,
    "text": st.text() | values,
    "cost": st.floats(min_value=0, max_value=2e6) | values,
    "status": st.sampled_from(["success", "error", "processing", "pending"]) | values,
    "error": st.fixed_dictionaries({"code": st.text(max_size=10), "message": st.text(max_size=20)}) | values,
    "code": st.text(max_size=10), "message": st.text(max_size=20), "structuredData": values, "extra": values,
})
documents = st.one_of(
    items,
    st.fixed_dictionaries({"data": st.lists(items, max_size=5) | items | values}),
    st.fixed_dictionaries({"errors": st.lists(items, max_size=3) | values}),
    st.fixed_dictionaries({"data": st.lists(items, max_size=3), "errors": st.lists(items, max_size=3)}),
    values,
)


def literal_json(doc) -> bytes:
    """Like json.dumps, but NaN and Infinity come out as literals (for floats drawn in `values`, none do)."""
    return json.dumps(doc).encode()


bodies = st.one_of(
    documents.map(literal_json),
    st.binary(max_size=2000),
    st.tuples(documents.map(literal_json), st.integers(min_value=0), st.sampled_from(
        [b"NaN", b"Infinity", b"-Infinity", b"\xff", b"\xc3\x28", b"\x00", b"[" * 2000, b'"taskUUID":1,', b",", b"}"]))
    .map(lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[2] + t[0][t[1] % (len(t[0]) + 1):]),
    st.integers(min_value=1, max_value=5000).map(lambda n: b"[" * n + b"]" * n),
)


def test_generated_webhook_bodies(fuzz_app, config, engine):
    client, tally = fuzz_app.test_client(), Tally()
    conn = redis.Redis.from_url(config.redis_url)

    @EXAMPLES
    @given(body=bodies, content_type=st.sampled_from(JSON_TYPES * 3 + CONTENT_TYPES),
           token=st.sampled_from(["hook-new", "hook-new", "hook-new", "hook-old", "read-token", ""]),
           oversize=st.integers(min_value=0, max_value=30))
    def post(body, content_type, token, oversize):
        if oversize == 0:
            body += b" " * config.max_body_bytes
        request = Request("generated", "POST", WEBHOOK, body, content_type, {}, [("token", token)])
        status, answer, answer_type = send(client, request)
        tally.record(request, status, answer, answer_type)
        assert not tally.problems, tally.problems
        assert conn.xlen(DELIVERY_STREAM) == tally.accepted

    post()
    drain_and_check(config, engine, tally)


header_values = st.text(alphabet=st.characters(max_codepoint=255, exclude_categories=["Cc"]), max_size=60)


@EXAMPLES
@given(msg_id=header_values, stamp=header_values | st.integers(min_value=-(2**40), max_value=2**40).map(str),
       signature=header_values | st.lists(st.tuples(st.sampled_from(["v1", "v1a", "v2", ""]), st.binary(max_size=40)),
                                          max_size=4).map(lambda sigs: " ".join(
                                              f"{v},{base64.b64encode(b).decode()}" for v, b in sigs)),
       body=st.binary(max_size=200))
def test_signature_checks_refuse_hostile_headers_without_raising_anything_else(msg_id, stamp, signature, body):
    headers = {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}
    with pytest.raises(signatures.SignatureError):
        signatures.verify((b"k" * 32,), headers, body)


# -- the volume run ------------------------------------------------------------------------------

def test_generated_requests(fuzz_app, config, engine):
    routes = [(rule.rule, set(rule.methods) - {"OPTIONS"}) for rule in fuzz_app.url_map.iter_rules()
              if rule.rule != WEBHOOK]
    generator = HostileRequests(FUZZ_SEED, ALL_TOKENS, config.max_body_bytes, routes)
    # Bodies of a long run hold millions of UUIDs; each is random, so a rejected body's are in no other.
    client, tally = fuzz_app.test_client(), Tally(track_accepted=FUZZ_REQUESTS <= 10_000)
    conn = redis.Redis.from_url(config.redis_url)
    started = time.monotonic()
    for _ in range(FUZZ_REQUESTS):
        request = generator.next()
        tally.record(request, *send(client, request))
        if request.is_webhook and conn.xlen(DELIVERY_STREAM) != tally.accepted:
            tally.problem(request, "the stream length does not match the deliveries accepted")
            break
    report = tally.report(time.monotonic() - started) + f"\n  seed: FUZZ_SEED={FUZZ_SEED}"
    print("\n" + report)
    assert not tally.problems, report + "\n" + "\n".join(tally.problems)
    assert len(tally.sent) >= 15, "every kind of request was sent"
    assert tally.accepted > 0, "some webhook bodies were accepted, so the drain below has work to check"
    drain_and_check(config, engine, tally)


@pytest.mark.timeout(600)  # ATHERIS_RUNS inputs take about a minute on a loaded machine
def test_coverage_guided_webhook_bodies(redis_url, sqlite_url, tmp_path):
    """atheris mutates webhook bodies towards new branches of the parser and the receiver
    (tests/atheris_webhook.py): no answer of 500 or more, and every answer agrees with the parser."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    task = "0a8e4d0e-34c4-4b57-9e0e-3c4e8e5c1c3a"
    seeds = [
        {"data": [{"taskType": "imageCaption", "taskUUID": task, "text": "a cat on a mat", "cost": 0.0019}]},
        {"errors": [{"code": "timeoutProvider", "message": "timed out", "taskUUID": task}]},
        {"taskType": "caption", "taskUUID": task, "text": "a dog", "cost": 0.002, "model": "runware:150@2"},
        {"data": [{"taskUUID": task, "text": "x"}, {"taskUUID": "nope"}], "errors": [{"taskUUID": task}]},
    ]
    for n, seed in enumerate(seeds):
        (corpus / f"seed-{n}").write_bytes(json.dumps(seed).encode())
    env = {**os.environ, "APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": sqlite_url,
           "WEBHOOK_TOKENS": "hook", "READ_TOKENS": "read", "SUBMIT_TOKENS": "submit"}
    script = Path(__file__).with_name("atheris_webhook.py")
    run = subprocess.run(
        [sys.executable, str(script), f"-runs={ATHERIS_RUNS}", f"-seed={FUZZ_SEED % (2**31 - 1) + 1}",
         "-max_len=8192", f"-artifact_prefix={tmp_path}/", str(corpus)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]  # a failing input is kept in tmp_path as crash-*
    assert f"Done {ATHERIS_RUNS} runs" in run.stderr
