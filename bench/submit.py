"""Submission throughput: caption tasks per second sent to the emulator, batched and unbatched.

    python -m bench.submit [--tasks N] [--batch-size 10] [--out FILE] [--quick | --smoke]

For each line, N queued tasks (small distinct PNGs, as data URIs) are stored in
a fresh SQLite file (the default store) and one `workers.submit.Submitter`
sends them to the emulator, run as its own process (`python -m emulator`,
webhooks dropped, so only submission is measured), one Runware request per
batch: batch size 1 ("unbatched") and `--batch-size` ("batched"). The clock
covers claiming, the HTTP round trips and settling every answer in the store.
Every task must end `submitted`, or the line fails. Prints a table and, with
`--out`, writes the figures as JSON (the contract of `bench/run.py`).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from PIL import Image

from bench.common import ROOT
from bench.common import free_port
from bench.common import wait_until
from bench.servers import stop_process
from bench.stores import sqlite_database
from config import Config
from store.schema import tasks
from store.submissions import NewTask
from store.submissions import queue_tasks
from workers.runware import RunwareClient
from workers.submit import Submitter

SIZES = {"full": 2000, "quick": 500, "smoke": 40}
"""Tasks per line in each mode."""

EMULATOR_KEY = "bench-key"


def images(n: int, seed: int) -> list[str]:
    """`n` distinct 32×32 PNG data URIs (a few hundred bytes each)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3))).save(buffer, "PNG")
        out.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return out


def start_emulator(port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--port", str(port), "--api-key", EMULATOR_KEY, "--drop-rate", "1",
         "--processing-ms", "50", "--state-dir", ""],  # records in memory, apart from make run's
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )

    def answers() -> bool:
        import requests

        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(answers, 30, "the emulator to answer")
    return process


def line(engine: sa.Engine, config: Config, refs: list[str], batch_size: int) -> dict:
    """Queue the tasks, submit them all, and time it."""
    with engine.begin() as conn:
        conn.execute(tasks.delete())
        queue_tasks(conn, [NewTask(str(uuid.uuid4()), ref, None) for ref in refs])
    submitter = Submitter(engine, RunwareClient(config.runware_api_url, config.runware_api_key), config)
    started = time.perf_counter()
    submitter.run(batch_size)
    elapsed = time.perf_counter() - started
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(tasks.c.status, sa.func.count()).group_by(tasks.c.status)).all())
    ok = states == {"submitted": len(refs)}
    return {
        "status": "ok" if ok else "failed",
        "batch_size": batch_size,
        "tasks": len(refs),
        "requests": submitter.counts.requests,
        "elapsed_s": round(elapsed, 3),
        "tasks_per_s": round(len(refs) / elapsed, 1),
        "ms_per_request": round(1000 * elapsed / max(submitter.counts.requests, 1), 2),
        "states": states,
    }


def run(n: int, batch_size: int, seed: int = 1) -> dict:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    database = sqlite_database(workdir)
    config = Config(webhook_tokens=("bench-token",), public_url="http://127.0.0.1:9",
                    runware_api_url=f"http://127.0.0.1:{port}/v1", runware_api_key=EMULATOR_KEY,
                    database_url=database)
    engine = sa.create_engine(database)
    emulator = start_emulator(port)
    try:
        refs = images(n, seed)
        line(engine, config, refs[: min(50, n)], batch_size)  # warm up: connections, the emulator's caches
        unbatched = line(engine, config, refs, 1)
        batched = line(engine, config, refs, batch_size)
    finally:
        stop_process(emulator)
        engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "tasks": n,
        "database": "sqlite",
        "emulator": "python -m emulator (own process, webhooks dropped, processing 50 ms)",
        "unbatched": unbatched,
        "batched": batched,
        "ratio": round(batched["tasks_per_s"] / unbatched["tasks_per_s"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.submit", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, help="tasks per line (default: 2000, --quick 500, --smoke 40)")
    parser.add_argument("--batch-size", type=int, default=10, help="tasks per request of the batched line")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    n = args.tasks or SIZES["quick" if args.quick else "smoke" if args.smoke else "full"]
    figures = run(n, args.batch_size)
    for name in ("unbatched", "batched"):
        f = figures[name]
        print(f"{name:10} batch {f['batch_size']:3}: {f['tasks']} tasks in {f['requests']} requests, "
              f"{f['elapsed_s']:.2f}s, {f['tasks_per_s']:.1f} tasks/s ({f['ms_per_request']} ms/request) "
              f"[{f['status']}]")
    print(f"batched / unbatched: {figures['ratio']}x")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(figures[k]["status"] == "ok" for k in ("unbatched", "batched")) else 1


if __name__ == "__main__":
    sys.exit(main())
