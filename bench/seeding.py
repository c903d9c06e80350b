"""Seeding throughput: N tasks written through the write path (bench/seed.py) into a fresh store of each kind.

```sh
.venv/bin/python -m bench.seeding --tasks 20000 --stores sqlite,postgres --out bench/seeding-results
```

Each store is migrated to the head, empty, and seeded as the readers benchmark
seeds (submissions, then batches of 1,000 deliveries through
`store.results.save_deliveries`); reported: tasks and deliveries per second,
with the commit and the load average before and after. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from datetime import UTC
from datetime import datetime
from pathlib import Path

from bench import seed
from bench.common import ROOT
from bench.common import Progress
from bench.stores import postgres_database
from bench.stores import sqlite_database


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def measure(store: str, n: int, progress) -> dict:
    """Seed `n` tasks into a fresh store of kind `store`; its figures."""
    load_before = os.getloadavg()
    if store == "sqlite":
        with tempfile.TemporaryDirectory() as scratch:
            deliveries, seconds, _ = seed.write(sqlite_database(Path(scratch)), n, progress)
    else:
        with postgres_database("captions_seeding") as url:
            deliveries, seconds, _ = seed.write(url, n, progress)
    return {"store": store, "tasks": n, "deliveries": deliveries, "seconds": round(seconds, 2),
            "tasks_per_s": round(n / seconds), "deliveries_per_s": round(deliveries / seconds),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}


def report(runs: list[dict]) -> str:
    lines = ["# Seeding through the write path", "",
             "| commit | store | tasks | deliveries | seconds | tasks/s | deliveries/s | load before → after |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['commit']} | {r['store']} | {r['tasks']:,} | {r['deliveries']:,} | {r['seconds']:,} | "
              f"{r['tasks_per_s']:,} | {r['deliveries_per_s']:,} | {r['load_before'][0]} → {r['load_after'][0]} |"
              for r in runs]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.seeding", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--commit", default=None, help="the commit to record (default: this checkout's HEAD)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "seeding-results",
                        help="OUT.json and OUT.md; runs already in OUT.json are kept (another commit's)")
    args = parser.parse_args(argv)
    progress = Progress()
    path = args.out.with_suffix(".json")
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    for store in args.stores.split(","):
        progress(f"{store}: seeding {args.tasks:,} tasks")
        runs.append({"commit": args.commit or commit(), "at": datetime.now(UTC).isoformat(timespec="seconds"),
                     **measure(store, args.tasks, progress)})
        progress(f"{store}: {runs[-1]['tasks_per_s']:,} tasks/s")
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(runs))


if __name__ == "__main__":
    main()
