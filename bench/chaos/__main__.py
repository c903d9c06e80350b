"""`python -m bench.chaos`: the kill run (the default) or the outage-until-full scenario (`--scenario outage`)."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC
from datetime import datetime
from pathlib import Path

from bench.chaos import outage
from bench.chaos.ledger import Ledger
from bench.chaos.ledger import account
from bench.chaos.ledger import print_table
from bench.chaos.ledger import settled
from bench.chaos.load import killer
from bench.chaos.load import sample_images
from bench.chaos.load import sender
from bench.chaos.load import submitter
from bench.chaos.stack import EMULATOR_FAULTS
from bench.chaos.stack import SERVICE_SETTINGS
from bench.chaos.stack import Stack
from bench.common import ROOT
from bench.common import BenchError
from bench.common import Progress
from bench.common import wait_until
from bench.stores import PostgresUnavailable
from bench.stores import postgres_database
from bench.stores import sqlite_database


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load and kills (default 180)")
    parser.add_argument("--quick", action="store_true", help="30 s, lighter load (a check of the setup)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every random choice (default: random)")
    parser.add_argument("--database", choices=("auto", "postgres", "sqlite"), default="auto")
    parser.add_argument("--task-rate", type=float, default=15.0, help="tasks submitted per second")
    parser.add_argument("--webhook-rate", type=float, default=10.0, help="external webhook results per second")
    parser.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between two kills")
    parser.add_argument("--web-workers", type=int, default=3)
    parser.add_argument("--persist-workers", type=int, default=None,
                        help="default: PERSIST_CONCURRENCY for the store (2 on SQLite, 3 on PostgreSQL)")
    parser.add_argument("--submit-workers", type=int, default=2)
    parser.add_argument("--settle", type=float, default=420.0, help="longest wait for the stack to settle")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "chaos", help="folder of the ledgers")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, Redis data)")
    parser.add_argument("--scenario", choices=("kills", "outage"), default="kills",
                        help="kills: processes killed at random under load (the default); outage: the store out "
                             "until Redis is full, then back (bench/chaos/outage.py)")
    scenario = parser.add_argument_group("the outage scenario")
    scenario.add_argument("--redis-maxmemory", default="8mb", help="Redis's bound (default 8mb)")
    scenario.add_argument("--senders", type=int, default=16, help="webhook senders posting at full speed")
    scenario.add_argument("--hold", type=float, default=20.0, help="seconds the outage lasts once Redis is full")
    scenario.add_argument("--after", type=float, default=10.0, help="seconds of load once the backlog is stored")
    scenario.add_argument("--max-wait", type=float, default=5.0, help="longest Retry-After a sender honours")
    scenario.add_argument("--fill-timeout", type=float, default=900.0, help="longest wait for Redis to fill")
    scenario.add_argument("--drain-timeout", type=float, default=300.0, help="longest wait for the drain")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.task_rate, args.webhook_rate = 30.0, 10.0, 8.0
    if args.seed is None:
        args.seed = random.randrange(1, 2**31)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scenario == "outage":
        return run_outage(args)
    progress = Progress()
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="captions-chaos-"))
    progress(f"chaos run: {args.duration:.0f}s, seed {args.seed}, scratch {workdir}")
    ledger, kills, events = Ledger(), Counter(), []
    with ExitStack() as cleanup:
        database_url = choose_database(args, workdir, cleanup, progress)
        stack = Stack(args, workdir, database_url, progress)
        cleanup.callback(stack.stop)
        stack.start()
        images = sample_images(40, args.seed)
        stop_load, stop_kills = threading.Event(), threading.Event()
        threads = [
            *(threading.Thread(target=submitter, daemon=True, args=(
                stack, ledger, stop_load, args.task_rate, 2, 10, images, random.Random(rng.random())))
              for _ in range(2)),
            *(threading.Thread(target=sender, daemon=True, args=(
                stack, ledger, stop_load, args.webhook_rate, 2, random.Random(rng.random())))
              for _ in range(2)),
        ]
        chaos = threading.Thread(target=killer, daemon=True,
                                 args=(stack, stop_kills, args.kill_every, random.Random(rng.random()), kills, events))
        for thread in threads:
            thread.start()
        chaos.start()
        started = time.monotonic()
        while time.monotonic() - started < args.duration:
            time.sleep(min(15.0, args.duration - (time.monotonic() - started)))
            progress(f"{len(ledger.submitted)} tasks submitted, {len(ledger.delivered)} external deliveries "
                     f"acknowledged, {sum(kills.values())} kills ({dict(kills)})")
        stop_kills.set()
        chaos.join(timeout=30)
        stack.ensure_up()
        progress("kills stopped, every process up; finishing the clients' retries")
        stop_load.set()
        for thread in threads:
            thread.join(timeout=120)
        settle_start = time.monotonic()
        try:
            wait_until(lambda: settled(stack, ledger), args.settle, "the stack to settle", interval=2.0)
            progress(f"settled in {time.monotonic() - settle_start:.0f}s")
        except BenchError as exc:
            progress(f"did not settle: {exc}")
        result = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "seed": args.seed, "duration_s": round(args.duration), "database": database_url.split(":")[0],
            "settle_s": round(time.monotonic() - settle_start),
            **account(stack, ledger),
            "kills": dict(kills), "restarts": dict(stack.restarts), "kill_log": events,
            "settings": {"emulator_faults": EMULATOR_FAULTS, "service": SERVICE_SETTINGS,
                         "task_rate": args.task_rate, "webhook_rate": args.webhook_rate,
                         "kill_every": args.kill_every, "web_workers": args.web_workers,
                         "persist_workers": args.persist_workers, "submit_workers": args.submit_workers},
        }
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"ledger-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{args.seed}.json"
        path.write_text(json.dumps(result, indent=2))
        print_table(result)
        progress(f"ledger written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        for item in result["problems"][:20]:
            print(f"  {item['kind']}: {item['taskUUID']}: {item['detail']}")
        failed = result["lost"] or result["doubled"]
    if failed or args.keep:
        progress(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def run_outage(args) -> int:
    """The outage-until-full scenario, on PostgreSQL (the outage is PostgreSQL refusing connections)."""
    progress = Progress()
    workdir = Path(tempfile.mkdtemp(prefix="captions-outage-"))
    progress(f"outage scenario: Redis bounded at {args.redis_maxmemory}, scratch {workdir}")
    with ExitStack() as cleanup:
        database_url = cleanup.enter_context(postgres_database("captions_outage"))
        result = outage.run(args, workdir, database_url, progress, cleanup)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"outage-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2))
    outage.print_ledger(result)
    progress(f"ledger written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if result["failed"] or args.keep:
        progress(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if result["failed"] else 0


def choose_database(args, workdir: Path, cleanup: ExitStack, progress: Progress) -> str:
    if args.database in ("auto", "postgres"):
        try:
            url = cleanup.enter_context(postgres_database("captions_chaos"))
            progress("store: a fresh PostgreSQL database")
            return url
        except PostgresUnavailable as exc:
            if args.database == "postgres":
                raise
            progress(f"{exc}; using SQLite")
    return sqlite_database(workdir)


if __name__ == "__main__":
    sys.exit(main())
