"""Readers at scale: stats, search and list pages at N tasks beside 10,000, and webhooks with dashboards polling.

`python -m bench.readers [--tasks N] [--stores sqlite,postgres] ...` (`make
bench-readers READERS_ARGS='...'`). For each store and each size (the small
store is the baseline), a store seeded through the store's own write path
(`bench.seed`, kept between runs) is served by the real stack over HTTP: a
private Redis and gunicorn with `deploy/gunicorn.conf.py`, `wsgi:app` for the
readers and, when `wsgi.py` offers it, `wsgi:intake` for the webhooks (else
`wsgi:app` serves both). Measured, through the public API only:

- each query of `queries`, RUNS times (bounded by a time budget): median and p95,
  for list filters the first page and the page reached by following
  `nextCursor` LATER_PAGE times; a query with labels (a label filter, a
  groupBy, the keys) beside the same query without them (BESIDE);
- webhook POST latency (p50, p99) from a fixed-rate sender through the intake,
  with no reader and with READERS dashboard readers polling stats, a search and
  a list page; the readers' answers are counted by status (200, 503, ...).

Writes bench/readers-results.json and bench/readers-results.md (`--out DIR` to
write elsewhere); the targets of issue 9 get a verdict (`bench.readers_report`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from pathlib import Path
from statistics import median
from urllib.parse import urlencode

from bench import readers_report
from bench import seed
from bench.common import BENCH
from bench.common import ROOT
from bench.common import BenchError
from bench.common import Context
from bench.common import Progress
from bench.common import percentile
from bench.readers_load import next_cursor
from bench.readers_load import request
from bench.readers_load import webhook_latency
from bench.readers_report import NO_PAGE
from bench.servers import Gunicorn
from bench.servers import RedisServer
from bench.stores import PostgresUnavailable
from config import Config

SMALL_TASKS = 10_000
"""The baseline store's size."""

RUNS = 5
"""Timed runs of each query (median and p95 over them)."""

QUERY_BUDGET_S = 90.0
"""Seconds one query's runs may take in all; at least one run is always made."""

LATER_PAGE = 3
"""`nextCursor` is followed this many times for a list's later page."""

RATE, LOAD_SECONDS, READERS = 200.0, 20.0, 20
"""The webhook sender's rate (req/s) and duration, and the dashboard readers polling in the second run."""


def queries(ended_at: datetime) -> list[tuple[str, str, str, dict]]:
    """(name, kind, path, parameters) of each measured query; windows end at the seeding's end."""
    since = (ended_at - timedelta(days=30)).isoformat()
    # The dashboard's charts: hours of the last 30 days, days of the last year, from a midnight.
    today = ended_at.replace(hour=0, minute=0, second=0, microsecond=0)
    days_30, days_365 = ((today - timedelta(days=n)).isoformat() for n in (29, 364))
    return [
        ("stats, last 30 days", "stats", "/api/stats", {"since": since}),
        ("stats, all time", "stats", "/api/stats", {}),
        ("search, rare word", "search", "/api/tasks", {"q": seed.RARE_WORD}),
        ("search, common word", "search", "/api/tasks", {"q": seed.COMMON_WORD}),
        ("search, word in no caption", "search", "/api/tasks", {"q": seed.ABSENT_WORD}),
        ("list status=error", "list", "/api/tasks", {"status": "error"}),
        ("list status=success", "list", "/api/tasks", {"status": "success"}),
        ("list source=external", "list", "/api/tasks", {"source": "external"}),
        ("list since=30 days ago", "list", "/api/tasks", {"since": since}),
        ("list status=success&source=submitted&since=30 days ago", "list", "/api/tasks",
         {"status": "success", "source": "submitted", "since": since}),
        ("list, no filter", "list", "/api/tasks", {}),
        ("list label.projectId=common", "list", "/api/tasks", {"label.projectId": seed.COMMON_PROJECT}),
        ("list label.projectId=rare", "list", "/api/tasks", {"label.projectId": seed.RARE_PROJECT}),
        ("list label.projectId=common&status=error", "list", "/api/tasks",
         {"label.projectId": seed.COMMON_PROJECT, "status": "error"}),
        ("stats groupBy=label.projectId, last 30 days", "stats", "/api/stats",
         {"since": since, "groupBy": "label.projectId"}),
        ("stats groupBy=label.projectId, all time", "stats", "/api/stats", {"groupBy": "label.projectId"}),
        ("stats groupBy=label.userId, last 30 days", "stats", "/api/stats",
         {"since": since, "groupBy": "label.userId"}),
        ("stats groupBy=label.userId, all time", "stats", "/api/stats", {"groupBy": "label.userId"}),
        ("labels", "stats", "/api/labels", {}),
        ("series by hour, last 30 days", "series", "/api/stats/series", {"bucket": "hour", "since": days_30}),
        ("series by day, last 365 days", "series", "/api/stats/series", {"bucket": "day", "since": days_365}),
    ]


BESIDE = {
    "list label.projectId=common": "list, no filter",
    "list label.projectId=rare": "list, no filter",
    "list label.projectId=common&status=error": "list status=error",
    "stats groupBy=label.projectId, last 30 days": "stats, last 30 days",
    "stats groupBy=label.projectId, all time": "stats, all time",
    "stats groupBy=label.userId, last 30 days": "stats, last 30 days",
    "stats groupBy=label.userId, all time": "stats, all time",
    "labels": "stats, all time",
}
"""Each query with labels and the same query without them, shown beside it in the report."""


def _url(path: str, params: dict) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def summary(seconds: list[float | None], statuses: list) -> dict:
    """Median and p95 in ms of the answered runs (200 only), with every run's status."""
    answered = [s for s, status in zip(seconds, statuses) if s is not None and status == 200]
    counts: dict[str, int] = {}
    for status in statuses:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return {"runs_ms": [None if s is None else round(s * 1000, 2) for s in seconds], "statuses": counts,
            "median_ms": round(median(answered) * 1000, 2) if answered else None,
            "p95_ms": round(percentile(answered, 95) * 1000, 2) if answered else None,
            "all_answered": len(answered) == len(statuses)}


def time_query(base: str, token: str, kind: str, path: str, params: dict, runs: int, budget: float) -> dict:
    """Time one query `runs` times (within `budget` seconds) after one untimed run; lists: the first page and a
    later one.

    The untimed run takes what only a first request pays (a worker's first connection to the store,
    its first statements, the store's pages read from disk), which timed the first query of a run and not
    the others.
    """
    first, first_status, later, later_status = [], [], [], []
    request(base, _url(path, params), token=token)
    started = time.monotonic()
    for _ in range(runs):
        status, took, data = request(base, _url(path, params), token=token)
        first.append(took)
        first_status.append(status)
        if kind == "list":
            status, took = NO_PAGE, None
            cursor = next_cursor(data) if first_status[-1] == 200 else None
            for _ in range(LATER_PAGE):
                if cursor is None:
                    status, took = NO_PAGE, None
                    break
                status, took, data = request(base, _url(path, {**params, "cursor": cursor}), token=token)
                cursor = next_cursor(data) if status == 200 else None
            later.append(took)
            later_status.append(status)
        if time.monotonic() - started > budget:
            break
    figures = {"path": _url(path, params), "kind": kind, "first": summary(first, first_status)}
    if kind == "list":
        figures["later"] = summary(later, later_status)
    return figures


def has_intake_app(env: dict[str, str]) -> bool:
    """True when wsgi.py offers the intake's own app (`wsgi:intake`); else `wsgi:app` serves webhooks too."""
    check = "import sys, wsgi; sys.exit(0 if hasattr(wsgi, 'intake') else 3)"
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    if done.returncode not in (0, 3):
        raise BenchError(f"wsgi.py does not import: {done.stderr.strip()[-2000:]}")
    return done.returncode == 0


def measure(ctx: Context, seeded: seed.Seeded, args: argparse.Namespace) -> dict:
    """Every figure for one seeded store, on a stack of its own."""
    label = f"{seeded.store}-{seeded.tasks}"
    scratch = ctx.scratch(label)
    redis = RedisServer(scratch).start()
    servers: list[Gunicorn] = []
    try:
        # The stack's api processes share a read budget of their own (receiver/read_budget.py), at the default size.
        env = {**ctx.service_env(redis.url, seeded.url), "READ_SLOTS_DIR": str(scratch / "read-slots")}
        readers = Gunicorn("wsgi:app", env, scratch / "readers.log").start()
        servers.append(readers)
        intake = readers
        if has_intake_app(env):
            intake = Gunicorn("wsgi:intake", {**env, "APP_KIND": "intake"}, scratch / "intake.log").start()
            servers.append(intake)
        layout = "wsgi:intake (webhooks) + wsgi:app (readers)" if intake is not readers else "wsgi:app (both)"
        token = ctx.tokens["READ_TOKENS"]
        figures: dict = {"seeding": seeded.as_json(), "layout": layout, "queries": {},
                         "read_concurrency": Config.from_env(env).read_concurrency}
        for name, kind, path, params in queries(seeded.ended_at):
            line = time_query(readers.url, token, kind, path, params, args.runs, args.query_budget)
            figures["queries"][name] = line
            if name in BESIDE:
                line["beside"] = BESIDE[name]
            later = f", later page {line['later']['median_ms']} ms" if "later" in line else ""
            ctx.progress(f"  {label} {name}: median {line['first']['median_ms']} ms "
                         f"(p95 {line['first']['p95_ms']}){later} {line['first']['statuses']}")
        paths = {kind: [_url(p, params) for _, k, p, params in queries(seeded.ended_at) if k == kind]
                 for kind in ("stats", "search", "list")}
        paths["stats"] = paths["stats"][:1]  # dashboards poll the last 30 days
        figures["webhooks"] = {}
        for count in (0, args.readers):
            line = webhook_latency(intake.url, ctx.webhook_token, args.rate, args.seconds, readers_url=readers.url,
                                   read_token=token, readers=count, paths=paths)
            figures["webhooks"][f"readers_{count}"] = line
            ctx.progress(f"  {label} webhooks with {count} readers: p50 {line['p50_ms']} ms, p99 {line['p99_ms']} "
                         f"ms, {line['rate']} req/s {line['statuses']}"
                         + (f"; readers' answers {line['reader_answers']['statuses']}" if count else ""))
        none, some = figures["webhooks"]["readers_0"]["p99_ms"], figures["webhooks"][f"readers_{args.readers}"]
        figures["webhooks"]["p99_ratio"] = round(some["p99_ms"] / none, 2) if none and some["p99_ms"] else None
        return figures
    finally:
        for server in reversed(servers):
            server.stop()
        redis.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.readers", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks in the large store (default 1,000,000)")
    parser.add_argument("--small", type=int, default=SMALL_TASKS, help="tasks in the baseline store (10,000)")
    parser.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--reseed", action="store_true", help="seed the stores anew even if kept ones match")
    parser.add_argument("--seed-at", metavar="REVISION",
                        help="seed at this migration revision, then upgrade to the head (default: seed at the head)")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"timed runs per query ({RUNS})")
    parser.add_argument("--query-budget", type=float, default=QUERY_BUDGET_S,
                        help=f"seconds one query's runs may take ({QUERY_BUDGET_S:g})")
    parser.add_argument("--rate", type=float, default=RATE, help=f"webhooks per second ({RATE:g})")
    parser.add_argument("--seconds", type=float, default=LOAD_SECONDS, help=f"webhook load duration ({LOAD_SECONDS:g})")
    parser.add_argument("--readers", type=int, default=READERS, help=f"dashboard readers polling ({READERS})")
    parser.add_argument("--cache", type=Path, default=seed.DEFAULT_CACHE, help="where seeded stores are kept")
    parser.add_argument("--out", type=Path, default=BENCH, help="folder for readers-results.json/.md (bench/)")
    args = parser.parse_args(argv)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not args.stores or set(args.stores) - {"sqlite", "postgres"}:
        parser.error("--stores takes sqlite, postgres or both")
    return args


def write(results: dict, out: Path, progress: Progress) -> None:
    """readers-results.json and readers-results.md in `out`, with the targets so far."""
    results["elapsed_s"] = round(progress.elapsed(), 1)
    results["targets"] = readers_report.targets(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "readers-results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "readers-results.md").write_text(readers_report.markdown(results))


def main(argv: list[str] | None = None) -> int:
    from bench.run import machine

    args = parse_args(argv)
    progress = Progress()
    workdir = Path(tempfile.mkdtemp(prefix="captions-readers-"))
    ctx = Context(sizes={}, workdir=workdir, progress=progress)
    sizes = sorted({args.small, args.tasks})
    results: dict = {
        "schema": "captions-bench-readers/1",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(workdir),
        "settings": {"tasks": args.tasks, "small": args.small, "stores": args.stores, "seed_at": args.seed_at,
                     "runs": args.runs, "query_budget_s": args.query_budget, "rate": args.rate,
                     "seconds": args.seconds, "readers": args.readers, "later_page": LATER_PAGE},
        "stores": {},
    }
    broken = False
    try:
        for store in args.stores:
            results["stores"][store] = lines = {}
            for n in sizes:
                progress(f"== {store}, {n:,} tasks")
                try:
                    seeded = seed.prepare(store, n, args.cache, args.reseed, progress, args.seed_at)
                    lines[str(n)] = {"status": "ok", **measure(ctx, seeded, args)}
                except PostgresUnavailable as exc:
                    lines[str(n)] = {"status": "skipped", "note": str(exc)}
                except Exception as exc:  # one broken line must not lose the others' figures
                    traceback.print_exc()
                    lines[str(n)] = {"status": "error", "note": f"{type(exc).__name__}: {exc}"}
                    broken = True
                progress(f"== {store}, {n:,} tasks: {lines[str(n)]['status']}")
                write(results, args.out, progress)  # a long run keeps the lines measured so far
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write(results, args.out, progress)
    print()
    print(readers_report.targets_table(results))
    progress(f"done: {args.out / 'readers-results.json'}, readers-results.md")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
