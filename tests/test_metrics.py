"""`GET /metrics`: outcomes counted, gauges read at scrape time, and one view across gunicorn and RQ processes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import requests
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from receiver import intake_metrics
from receiver import metric_files
from receiver import metrics
from tests.conftest import TOKENS
from tests.helpers import new_uuid
from tests.helpers import post
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import ROOT
from tests.support import WebServers
from tests.support import run_worker
from workers.queues import PERSIST_QUEUE

READ = {"Authorization": "Bearer read-token"}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition, keyed by name and sorted labels (parsing also validates the format)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(client, headers=READ) -> dict:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return samples(response.get_data(as_text=True))


def outcome(name: str) -> float:
    return REGISTRY.get_sample_value("captions_webhook_requests_total", {"outcome": name}) or 0.0


@pytest.fixture(autouse=True)
def fresh_spend(monkeypatch):
    monkeypatch.setattr(metrics, "SPEND_CACHE_SECONDS", 0.0)


def test_metrics_need_a_read_or_metrics_token(client, app, monkeypatch):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer hook-new"}).status_code == 401
    assert client.get("/metrics", headers=READ).status_code == 200
    service = app.config["SERVICE"]
    monkeypatch.setitem(app.config, "SERVICE", dataclasses.replace(service, metrics_tokens=("scraper",)))
    assert client.get("/metrics", headers={"Authorization": "Bearer scraper"}).status_code == 200


def test_each_webhook_outcome_is_counted(client, config):
    before = {name: outcome(name) for name in intake_metrics.OUTCOMES}
    enqueue_count = REGISTRY.get_sample_value("captions_enqueue_seconds_count") or 0.0
    assert post(client, wrapped(success(new_uuid()))).status_code == 202
    assert post(client, wrapped(success(new_uuid())), token="nope").status_code == 401
    assert post(client, wrapped(success(new_uuid())), content_type="text/plain").status_code == 415
    assert post(client, b"x" * (config.max_body_bytes + 1)).status_code == 413
    assert post(client, b"{").status_code == 400
    assert post(client, b'{"data": []}').status_code == 422
    after = {name: outcome(name) for name in intake_metrics.OUTCOMES}
    delta = {name: after[name] - before[name] for name in intake_metrics.OUTCOMES}
    assert delta == {"accepted": 1, "unauthorized": 1, "bad_signature": 0, "unsupported_media_type": 1,
                     "too_large": 1, "bad_json": 1, "unprocessable": 1, "redis_unavailable": 0, "replicas_behind": 0,
                     "backpressure": 0}
    assert REGISTRY.get_sample_value("captions_enqueue_seconds_count") == enqueue_count + 1


def test_redis_down_is_counted_and_scraping_still_answers(client, redis_server):
    before = outcome("redis_unavailable")
    redis_server.stop()
    assert post(client, wrapped(success(new_uuid()))).status_code == 503
    assert outcome("redis_unavailable") == before + 1
    found = scrape(client)
    assert found[("captions_up", (("dependency", "redis"),))] == 0
    assert found[("captions_up", (("dependency", "database"),))] == 1
    redis_server.start()


def test_queue_gauges_and_spend_are_read_at_scrape_time(client, config):
    empty = scrape(client)
    assert empty[("captions_queue_depth", ())] == 0
    assert empty[("captions_oldest_pending_seconds", ())] == 0
    assert empty[("captions_spend_usd_total", ())] == 0

    task = new_uuid()
    for _ in range(2):  # the same success twice: its cost counts once
        assert post(client, wrapped(success(task, cost=0.25), success(new_uuid(), cost=0.5))).status_code == 202
    assert post(client, wrapped(success(new_uuid(), cost=None))).status_code == 202
    queued = scrape(client)
    assert queued[("captions_queue_depth", ())] == 3
    assert 0 <= queued[("captions_oldest_pending_seconds", ())] < 60
    assert queued[("captions_rq_queued_jobs", (("queue", "persist"),))] == 1
    assert queued[("captions_rq_queued_jobs", (("queue", "maintenance"),))] == 0

    run_worker(config.redis_url, PERSIST_QUEUE)
    drained = scrape(client)
    assert drained[("captions_queue_depth", ())] == 0
    assert drained[("captions_oldest_pending_seconds", ())] == 0
    assert drained[("captions_spend_usd_total", ())] == pytest.approx(1.25)


def test_one_view_across_gunicorn_workers_and_the_rq_worker(config, tmp_path):
    """Counters written by two gunicorn workers and a forked drain job all show up in one scrape."""
    env = {"APP_ENV": "development", "REDIS_URL": config.redis_url, "DATABASE_URL": config.database_url,
           **TOKENS, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    servers = WebServers(env, workers=2).start()
    try:
        url = f"{servers.intake.url}/webhooks/runware?token=hook-new"
        headers = {"Content-Type": "application/json"}
        with requests.Session() as session:  # sync workers close each connection: requests spread over both
            for n in range(20):
                body = wrapped(success(new_uuid()), {"taskUUID": "not-a-uuid"}) if n % 2 else b"{"
                session.post(url, data=body, headers=headers, timeout=5)
        subprocess.run([sys.executable, "-m", "workers", PERSIST_QUEUE, "--burst"], cwd=ROOT, timeout=60,
                       env={**os.environ, **env}, capture_output=True, check=True)
        found = samples(requests.get(f"{servers.api.url}/metrics", headers=READ, timeout=5).text)
    finally:
        servers.stop()
    pids = {p.stem.rsplit("_", 1)[-1] for p in tmp_path.glob("counter_*.db")}
    assert len(pids) >= 2, f"counters of the web workers and of the drain job: {pids}"
    assert found[("captions_webhook_requests_total", (("outcome", "accepted"),))] == 10
    assert found[("captions_webhook_requests_total", (("outcome", "bad_json"),))] == 10
    assert found[("captions_enqueue_seconds_count", ())] == 10
    assert found[("captions_persisted_deliveries_total", ())] == 10
    assert found[("captions_persisted_items_total", ())] == 10
    assert found[("captions_failed_items_total", (("reason", "invalid_item"),))] == 10
    assert found[("captions_receipt_to_stored_seconds_count", ())] == 10
    assert found[("captions_queue_depth", ())] == 0


COUNTING = """
import sys, time
from receiver import intake_metrics as metrics
from receiver import metric_files
metrics.enqueued(0.003)
metrics.enqueued(0.003)
metrics.webhook_outcome("bad_json")
print("counted", flush=True)
if sys.argv[1:] == ["stay"]:
    time.sleep(60)
"""


def test_files_of_exited_processes_are_merged_and_the_totals_kept(client, tmp_path, monkeypatch):
    """Work horses and recycled web workers leave a file each; a scrape merges them once they pile up."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(metric_files, "COMPACT_AFTER", 4)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def processes(n: int) -> None:
        for _ in range(n):
            subprocess.run([sys.executable, "-c", COUNTING], cwd=ROOT, env=env, check=True, timeout=60)

    def totals() -> tuple[float, float, float, float]:
        found = scrape(client)
        return (found[("captions_webhook_requests_total", (("outcome", "accepted"),))],
                found[("captions_webhook_requests_total", (("outcome", "bad_json"),))],
                found[("captions_enqueue_seconds_bucket", (("le", "0.005"),))],
                found[("captions_enqueue_seconds_count", ())])

    processes(2)  # 4 files: not yet more than COMPACT_AFTER
    assert totals() == (4, 2, 4, 4)
    assert len(list(tmp_path.glob("*_archive.db"))) == 0
    staying = subprocess.Popen([sys.executable, "-c", COUNTING, "stay"], cwd=ROOT, env=env, stdout=subprocess.PIPE)
    try:
        assert staying.stdout.readline() == b"counted\n"
        processes(1)
        assert totals() == (8, 4, 8, 8)  # 6 exited files merged, the live process's files kept
        assert sorted(p.name for p in tmp_path.glob("*.db")) == sorted(
            ["counter_archive.db", "histogram_archive.db", f"counter_{staying.pid}.db", f"histogram_{staying.pid}.db"])
        processes(3)
        assert totals() == (14, 7, 14, 14)  # merged again, into the same archives
    finally:
        staying.kill()
        staying.wait()
        staying.stdout.close()
    assert metric_files.compact(tmp_path) == 2, "the killed process's files, once it has exited"
    assert totals() == (14, 7, 14, 14)
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]
    assert metric_files.compact(tmp_path) == 0
