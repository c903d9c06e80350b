"""Webhook traffic for the benchmarks: wrk with the project's scripts, and deliveries as the receiver queues them."""

from __future__ import annotations

import json
import random
import resource
import shutil
import subprocess
import time
import uuid

import redis

from bench.common import CAPTIONS
from bench.common import ROOT
from bench.common import WRK_DIR
from bench.common import BenchError


def wrk_version() -> str | None:
    if not shutil.which("wrk"):
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip() if out else "wrk"


def require_wrk() -> None:
    if not shutil.which("wrk"):
        raise BenchError("wrk is not on PATH: `make bench` installs Debian's package (apt-get install wrk)")


def run_wrk(url: str, seconds: float, threads: int, connections: int, *, seed: int,
            rate_per_thread: float | None = None) -> dict:
    """Run wrk with the webhook script (paced when a rate is given); returns its counts and latencies.

    `ok` is the number of answers with a status below 400 (wrk counts every status
    of 400 and above as an error); latencies are in milliseconds.
    """
    require_wrk()
    script = "paced.lua" if rate_per_thread else "webhook.lua"
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-s", str((WRK_DIR / script).relative_to(ROOT)), url, "--", str(seed)]
    if rate_per_thread:
        args.append(f"{rate_per_thread:.3f}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    raw = json.loads(line[len("WRK_JSON "):])
    seconds_run = raw["duration_us"] / 1e6
    errors = raw["errors"]
    latency = {k: v / 1000 for k, v in raw["latency_us"].items()}
    return {
        "seconds": round(seconds_run, 3),
        "threads": threads,
        "connections": connections,
        "requests": raw["requests"],
        "ok": raw["requests"] - errors["status"],
        "non_2xx": errors["status"],
        "socket_errors": {k: errors[k] for k in ("connect", "read", "write", "timeout")},
        "rps": round(raw["requests"] / seconds_run, 1) if seconds_run else 0.0,
        "latency_ms": {k: round(v, 3) for k, v in latency.items()},
        "client_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3),
    }


# --- deliveries ----------------------------------------------------------------------------------


def webhook_body(task_uuid: str, caption: str) -> bytes:
    """The body the wrk script sends, for the same task and caption."""
    item = f'"taskType":"imageCaption","taskUUID":"{task_uuid}","text":"{caption}","cost":0.0019'
    return ('{"data":[{' + item + '}]}').encode()


def make_deliveries(n: int, seed: int, start: float | None = None) -> list[dict[str, bytes | str]]:
    """`n` stream entries as the receiver writes them (fields body, at, ip), one fresh task each."""
    rng = random.Random(seed)
    start = time.time() if start is None else start
    entries = []
    for i in range(n):
        task = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        entries.append({"body": webhook_body(task, CAPTIONS[i % len(CAPTIONS)]), "at": start + i / 1000,
                        "ip": "127.0.0.1"})
    return entries


def prefill(client: redis.Redis, entries: list[dict], chunk: int = 1000) -> None:
    """XADD the entries to the delivery stream in pipelines of `chunk`."""
    from workers.queues import DELIVERY_STREAM

    for i in range(0, len(entries), chunk):
        pipe = client.pipeline(transaction=False)
        for fields in entries[i:i + chunk]:
            pipe.xadd(DELIVERY_STREAM, fields)
        pipe.execute()
