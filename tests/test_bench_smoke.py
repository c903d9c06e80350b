"""The benchmark harness, run once with tiny sizes: it must produce well-formed results (speeds are not judged)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC
from datetime import datetime

import pytest
from PIL import Image

from bench.readers import queries as readers_queries
from tests.support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NEEDS_WRK = ("intake", "endtoend", "memory")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not on PATH")
    out = tmp_path_factory.mktemp("bench")
    phases = ["intake", "drain", "endtoend", "memory"]  # submission is bench/submit.py's own figure
    if not shutil.which("wrk"):
        phases = [p for p in phases if p not in NEEDS_WRK]
    run = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--only", ",".join(phases), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text()), run.stdout


def test_every_phase_asked_for_reports_a_status(results):
    _, data, stdout = results
    assert data["schema"] == "captions-bench/1" and data["mode"] == "smoke"
    assert data["machine"]["cores"] >= 1
    for name, phase in data["phases"].items():
        assert phase["status"] in ("ok", "skipped"), (name, phase)
        assert phase["elapsed_s"] >= 0
        assert f"== {name}" in stdout, "progress names each phase"


def test_drain_lines_are_measured_and_accounted(results):
    _, data, _ = results
    drain = data["phases"]["drain"]
    lines = [drain["sqlite"]] + ([drain["postgres"]] if drain["postgres"]["status"] != "skipped" else [])
    for line in lines:
        assert line["raw"]["per_s"] > 0 and line["raw"]["accounted"]
        assert line["raw"]["rows"] == "delivery log + tasks" and line["raw_tasks"]["rows"] == "tasks alone"
        assert line["raw_tasks"]["per_s"] > 0 and line["raw_tasks"]["accounted"]
        assert line["drain"]["per_s"] > 0 and line["drain"]["accounted"]
        assert line["drain"]["stored"] == data["sizes"]["drain_deliveries"]
        assert line["per_job"]["done"] > 0 and line["per_job"]["per_s"] > 0
        assert line["ratio_raw"] > 0 and line["ratio_raw_tasks"] > 0 and line["ratio_per_job"] > 0
    if drain["postgres"]["status"] == "skipped":
        assert "PostgreSQL" in drain["postgres"]["note"]


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not on PATH")
def test_intake_and_end_to_end_are_measured_and_accounted(results):
    _, data, _ = results
    intake = data["phases"]["intake"]
    assert intake["bare"]["rps"] > 0 and intake["service"]["rps"] > 0 and intake["ratio"] > 0
    assert intake["service"]["non_2xx"] == 0 and intake["service"]["accounted"]
    levels = data["phases"]["endtoend"]["levels"]
    assert [lv["fraction"] for lv in levels] == [0.5, 0.9]
    for lv in levels:
        assert lv["accounted"] and lv["stored"] > 0
        assert 0 <= lv["p50_ms"] <= lv["p99_ms"]
        assert lv["backlog_end"] >= 0


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not on PATH")
def test_memory_and_targets(results):
    _, data, _ = results
    memory = data["phases"]["memory"]
    assert memory["redis"]["bytes_per_delivery"] > 0 and memory["redis"]["body_bytes_mean"] > 200
    assert memory["rq"]["parent_rss_mib"] > 0
    assert all(m > 0 for m in memory["gunicorn"]["worker_rss_mib"])
    names = [t["name"] for t in data["targets"]]
    assert len(names) == 10, names
    for target in data["targets"]:
        assert target["pass"] in (True, False, None)
        assert target["op"] in (">=", "<=", "<")


def test_markdown_and_chart_are_written(results):
    out, data, _ = results
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# Benchmark results")
    assert "## Targets" in markdown and "## Drain" in markdown
    with Image.open(out / "results.png") as chart:
        assert chart.format == "PNG" and chart.size[0] >= 1000
    assert tempfile.gettempdir() not in json.dumps(data), "results name no path of the machine they ran on"


def test_readers_benchmark_measures_every_query_and_the_webhooks_with_readers(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not on PATH")
    out, cache = tmp_path / "out", tmp_path / "stores"
    args = ["--tasks", "1000", "--small", "300", "--stores", "sqlite", "--runs", "2", "--rate", "40",
            "--seconds", "1", "--readers", "3", "--cache", str(cache), "--out", str(out)]
    run = subprocess.run([sys.executable, "-m", "bench.readers", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=280)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    data = json.loads((out / "readers-results.json").read_text())
    assert data["schema"] == "captions-bench-readers/1"
    lines = data["stores"]["sqlite"]
    assert set(lines) == {"300", "1000"}
    for n, line in lines.items():
        assert line["status"] == "ok", line
        assert line["seeding"]["tasks"] == int(n) and line["seeding"]["deliveries"] > 1.5 * int(n)
        assert set(line["queries"]) == {name for name, *_ in readers_queries(datetime.now(UTC))}
        for name, query in line["queries"].items():
            assert query["first"]["statuses"] == {"200": 2} and query["first"]["median_ms"] > 0, name
        assert line["queries"]["list status=success"]["later"]["statuses"] == {"200": 2}
        quiet, busy = line["webhooks"]["readers_0"], line["webhooks"]["readers_3"]
        assert quiet["statuses"] == {"202": 40} and busy["statuses"] == {"202": 40}
        assert 0 < quiet["p50_ms"] <= quiet["p99_ms"] and line["webhooks"]["p99_ratio"] > 0
        assert sum(busy["reader_answers"]["statuses"].values()) > 0 and "reader_answers" not in quiet
    pages = sum(2 if "later" in query else 1 for query in lines["1000"]["queries"].values())
    assert {t["tasks"] for t in data["targets"]} == {1000} and len(data["targets"]) == pages + 1  # + the p99 ratio
    assert all(t["pass"] in (True, False, None) for t in data["targets"])
    assert len(list(cache.glob("readers_sqlite_1000_*.json"))) == 1, "the seeded store is kept for the next run"
    markdown = (out / "readers-results.md").read_text()
    assert markdown.startswith("# Readers at scale") and "## Targets" in markdown
    assert tempfile.gettempdir() not in json.dumps(data), "results name no path of the machine they ran on"


def test_seeding_benchmark_reports_each_run_and_keeps_earlier_ones(tmp_path):
    out = tmp_path / "seeding"
    for _ in range(2):
        run = subprocess.run([sys.executable, "-m", "bench.seeding", "--tasks", "300", "--stores", "sqlite",
                              "--commit", "abc1234", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert [(r["commit"], r["store"], r["tasks"]) for r in runs] == [("abc1234", "sqlite", 300)] * 2
    assert all(r["deliveries"] > 1.5 * 300 and r["tasks_per_s"] > 0 for r in runs)
    assert out.with_suffix(".md").read_text().count("| abc1234 | sqlite | 300 |") == 2
