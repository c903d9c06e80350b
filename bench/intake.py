"""Intake: webhook POSTs a second taken by the service, beside a bare Flask app on the same gunicorn.

Both servers run `deploy/gunicorn.conf.py` with the same environment (workers,
worker class, threads, access log, limits); wrk sends both the same bodies from
`bench/wrk/webhook.lua` (a fresh taskUUID per request) with the same threads
and connections, after a warm-up run. The service queues into a private Redis
started with `deploy/redis.conf` (AOF on, fsync always). After each service run
the stream must hold every delivery wrk saw acknowledged: no worker runs, so
nothing leaves it.

The lines run in rounds, bare and service interleaved (the order alternating
from round to round), so that both see the same load from the rest of the
machine; each figure is the median over the rounds, and every run keeps the
load average and the CPU the rest of the machine used meanwhile. A worker model
(`sync`, `gthread:THREADS`) is given to gunicorn on the command line, the same
for both servers. Besides the whole run (`python -m bench.run`), this module
compares models on its own:

    python -m bench.intake --models sync,gthread:8 --rounds 3 --out bench/intake-results
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import WEBHOOK_PATH
from bench.common import Context
from bench.common import Progress
from bench.procfs import CLOCK_TICKS
from bench.procfs import cpu_seconds
from bench.procfs import rss_kib
from bench.procfs import tree_cpu_seconds
from bench.servers import gunicorn
from bench.servers import redis_server
from bench.stores import sqlite_database
from bench.traffic import run_wrk

SIZES = {"intake_seconds": 15, "intake_warmup": 3, "wrk_threads": 2, "wrk_connections": 32, "web_workers": None,
         "intake_rounds": 3}
"""The standalone comparison's sizes (the whole run's are in bench/run.py)."""


APPS = {
    "bare": ("bench.bare_app:app", "bare Flask"),
    "service": ("wsgi:intake", "service"),
    "ungrouped": ("bench.ungrouped_app:app", "service, one round trip per request"),
}
"""The lines: the WSGI app each serves and its label. `ungrouped` is the service without group commit."""


def gunicorn_args(model: str | None) -> str:
    """gunicorn's command-line flags for a worker model; None: the deployed one.

    `sync`; `gthread:THREADS`, with the deployed keep-alive; `gthread:THREADS/close`, closing each
    connection after its answer, as behind the deployed nginx (which opens one per request).
    """
    if model is None:
        return ""
    model, _, close = model.partition("/")
    kind, _, threads = model.partition(":")
    keep_alive = " --keep-alive 0" if close == "close" else ""
    if kind == "sync" and not threads and not close:
        return "--worker-class sync --threads 1"
    if kind == "gthread" and threads.isdigit() and int(threads) > 0 and close in ("", "close"):
        return f"--worker-class gthread --threads {threads}{keep_alive}"
    raise ValueError(f"unknown worker model {model!r}: sync, gthread:THREADS or gthread:THREADS/close")


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every core, user and system), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def _commands(client) -> dict[str, dict]:
    """Redis's own count and CPU (µs) of the intake's two commands since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    return {name: {k: stats.get(f"cmdstat_{name}", {}).get(k, 0) for k in ("calls", "usec")}
            for name in ("xadd", "set")}


def _measure(ctx: Context, app: str, env: dict, label: str, log_name: str, redis=None) -> dict:
    """Warm up, then one timed wrk run against `app`; with `redis` (the server), its accounting and costs too."""
    from workers.queues import DELIVERY_STREAM

    sizes = ctx.sizes
    client = redis.client() if redis else None
    memory_empty = client.info("memory")["used_memory"] if client is not None else None
    with gunicorn(app, env, ctx.workdir / "intake" / log_name) as server:
        url = f"{server.url}{WEBHOOK_PATH}?token={ctx.webhook_token}"
        wrk_args = {"threads": sizes["wrk_threads"], "connections": sizes["wrk_connections"], "seed": ctx.seed}
        if sizes["intake_warmup"]:
            run_wrk(url, sizes["intake_warmup"], **wrk_args)
            time.sleep(0.5)  # the warm-up's last requests are still being answered
        if client is not None:
            before = client.xlen(DELIVERY_STREAM)
            client.config_resetstat()
        redis_pid = redis.process.pid if redis else None
        load_before = os.getloadavg()[0]
        web_cpu, redis_cpu, machine = tree_cpu_seconds(server.process.pid), cpu_seconds(redis_pid or 0), busy_seconds()
        figures = run_wrk(url, sizes["intake_seconds"], **wrk_args)
        web_cpu = tree_cpu_seconds(server.process.pid) - web_cpu
        redis_cpu = (cpu_seconds(redis_pid) if redis_pid else 0.0) - redis_cpu
        machine = busy_seconds() - machine
        figures["load_average"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
        # What the rest of the machine used meanwhile: busy time not spent by this server, Redis or wrk.
        others = machine - web_cpu - redis_cpu - figures["client_cpu_s"]
        figures["other_cpu_cores"] = round(max(others, 0.0) / figures["seconds"], 2)
        time.sleep(0.5)  # requests still in flight when wrk stopped finish now
        # Where the two cores went, per acknowledged delivery: a figure that other load on the machine
        # shifts far less than req/s.
        per_ack = 1000 / max(figures["ok"], 1)
        figures["cpu_ms_per_request"] = {
            "web": round(web_cpu * per_ack, 3),
            "redis": round(redis_cpu * per_ack, 3) if redis_pid else None,
            "wrk": round(figures["client_cpu_s"] * per_ack, 3),
        }
        workers = server.worker_pids()
        used = re.search(r"Using worker: (\w+)", server.output())
        figures["worker_class"] = used.group(1) if used else None
        figures["label"] = label
        figures["web_workers"] = len(workers)
        figures["worker_rss_kib"] = [rss_kib(pid) for pid in workers]
        figures["master_rss_kib"] = rss_kib(server.process.pid)
    if client is not None:
        queued = client.xlen(DELIVERY_STREAM) - before
        calls = _commands(client)
        # wrk stops with up to one request per connection in flight, and gives up on a request that
        # times out or whose socket fails: the server may have queued those without wrk counting them.
        in_flight = queued - figures["ok"]
        figures["queued"] = queued
        figures["accounted"] = 0 <= in_flight <= figures["connections"] + sum(figures["socket_errors"].values())
        figures["accounting"] = (f"{queued} queued for {figures['ok']} acknowledged "
                                 f"({in_flight} answered after wrk stopped counting)")
        figures["redis_calls"] = calls
        # Every round trip of the intake ends with one SET (the drain flag): XADDs per SET is the group's size.
        xadds, sets = calls["xadd"]["calls"], calls["set"]["calls"]
        figures["entries_per_round_trip"] = round(xadds / sets, 2) if sets else None
        sample = client.xrange(DELIVERY_STREAM, count=200)
        body = statistics.mean(len(fields[b"body"]) for _, fields in sample) if sample else None
        # Memory Redis gained from its start (empty) to now, over every entry the stream holds (warm-up included).
        held = client.xlen(DELIVERY_STREAM)
        figures["redis_bytes_per_delivery"] = (
            round((client.info("memory")["used_memory"] - memory_empty) / held) if held else None)
        figures["body_bytes"] = round(body) if body else None
        client.close()
    ctx.progress(f"intake: {label}: {figures['rps']:.0f} req/s, p50 {figures['latency_ms']['p50']:.1f} ms, "
                 f"p99 {figures['latency_ms']['p99']:.1f} ms, non-2xx {figures['non_2xx']}, "
                 f"web {figures['cpu_ms_per_request']['web']:.3f} ms/ack, load {figures['load_average']['after']}, "
                 f"others {figures['other_cpu_cores']} cores"
                 + (f", {figures['entries_per_round_trip']} per round trip" if client is not None else ""))
    return figures


def _env(ctx: Context, redis_url: str, database_url: str, model: str | None) -> dict:
    """Both servers' environment: the intake's gunicorn settings (APP_KIND), the model's flags, if any."""
    flags = gunicorn_args(model)
    return ctx.service_env(redis_url, database_url, APP_KIND="intake",
                           **({"GUNICORN_CMD_ARGS": flags} if flags else {}))


def _bare(ctx: Context, model: str | None, database_url: str) -> dict:
    env = _env(ctx, "redis://127.0.0.1:1/0", database_url, model)
    return _measure(ctx, APPS["bare"][0], env, f"bare Flask, {model or 'deployed'}", "gunicorn-bare.log")


def _service(ctx: Context, model: str | None, database_url: str, aof: bool = True, kind: str = "service") -> dict:
    app, label = APPS[kind]
    label = f"{label}, {model or 'deployed'}" + ("" if aof else ", Redis AOF off (extra)")
    with redis_server(ctx.scratch("intake/redis"), aof=aof) as server:
        figures = _measure(ctx, app, _env(ctx, server.url, database_url, model), label,
                           f"gunicorn-{kind}.log", redis=server)
    figures["redis_aof"] = aof
    problems = []
    if figures["non_2xx"]:
        problems.append(f"{figures['non_2xx']} answers were not 2xx")
    if not figures["accounted"]:
        problems.append("deliveries missing from the stream: " + figures["accounting"])
    figures["valid"] = not problems
    if problems:
        figures["problems"] = problems
    return figures


def _median(runs: list[dict], *path: str) -> float | None:
    values = []
    for run in runs:
        for key in path:
            run = run.get(key) if isinstance(run, dict) else None
        if run is not None:
            values.append(run)
    return round(statistics.median(values), 3) if values else None


def summary(runs: list[dict]) -> dict:
    """A line's medians over its rounds, in the shape of one run (what bench/report.py reads), with every run."""
    last = runs[-1]
    line = {
        "label": last["label"], "rounds": len(runs), "web_workers": last["web_workers"],
        "worker_class": last["worker_class"],
        "rps": _median(runs, "rps"),
        "latency_ms": {p: _median(runs, "latency_ms", p) for p in ("p50", "p99")},
        "cpu_ms_per_request": {k: _median(runs, "cpu_ms_per_request", k) for k in ("web", "redis", "wrk")},
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "socket_errors": {k: sum(r["socket_errors"][k] for r in runs) for k in last["socket_errors"]},
        "worker_rss_kib": last["worker_rss_kib"], "master_rss_kib": last["master_rss_kib"],
        "runs": runs,
    }
    if "accounted" in last:
        line["accounted"] = all(r["accounted"] for r in runs)
        line["accounting"] = "; ".join(r["accounting"] for r in runs)
        line["entries_per_round_trip"] = _median(runs, "entries_per_round_trip")
        line["redis_bytes_per_delivery"] = _median(runs, "redis_bytes_per_delivery")
        line["body_bytes"] = _median(runs, "body_bytes")
        problems = [p for r in runs for p in r.get("problems", [])]
        line["valid"] = not problems
        if problems:
            line["problems"] = problems
    return line


def kinds_for(model: str | None, ungrouped: bool) -> tuple[str, ...]:
    """The lines run for a model: the ungrouped service only where threads could share a round trip."""
    threaded = model is not None and model.startswith("gthread")
    return ("bare", "service", "ungrouped") if ungrouped and threaded else ("bare", "service")


def compare(ctx: Context, models: list[str | None], rounds: int, ungrouped: bool, database_url: str) -> dict:
    """Every model's lines, interleaved over `rounds` rounds (their order reversed every other round); medians."""
    runs: dict[tuple[str | None, str], list[dict]] = {
        (m, k): [] for m in models for k in kinds_for(m, ungrouped)}
    for round_no in range(rounds):
        for model in models:
            kinds = kinds_for(model, ungrouped)
            for kind in kinds if round_no % 2 == 0 else reversed(kinds):
                ctx.progress(f"intake: round {round_no + 1}/{rounds}, {kind}, {model or 'deployed'}")
                if kind == "bare":
                    figures = _bare(ctx, model, database_url)
                else:
                    figures = _service(ctx, model, database_url, kind=kind)
                figures["order"] = sum(len(r) for r in runs.values())
                runs[model, kind].append(figures)
    lines = []
    for model in models:
        bare = summary(runs[model, "bare"])
        for kind in kinds_for(model, ungrouped)[1:]:
            service = summary(runs[model, kind])
            ratios = [s["rps"] / b["rps"] for b, s in zip(runs[model, "bare"], runs[model, kind]) if b["rps"]]
            # Each round's two lines ran side by side under the same load: the ratio is the median of theirs.
            lines.append({"model": model or "deployed", "kind": kind, "bare": bare, "service": service,
                          "ratio": round(statistics.median(ratios), 3) if ratios else None,
                          "ratio_per_round": [round(r, 3) for r in ratios]})
    return {"settings": {k: ctx.sizes.get(k) for k in SIZES}, "lines": lines}


def run(ctx: Context) -> dict:
    """The intake figure of the whole run: bare Flask and the service under the deployed worker model,
    and the service with AOF off as an extra line."""
    database_url = sqlite_database(ctx.scratch("intake"))  # the service needs one; the webhook path never touches it
    result = compare(ctx, [None], ctx.sizes.get("intake_rounds", 1), False, database_url)
    line = result["lines"][0]
    result.update(bare=line["bare"], service=line["service"], ratio=line["ratio"])
    if ctx.sizes.get("aof_off_lines"):
        extra = result["service_aof_off"] = _service(ctx, None, database_url, aof=False)
        result["ratio_aof_off"] = round(extra["rps"] / line["bare"]["rps"], 3) if line["bare"]["rps"] else None
    problems = [p for key in ("service", "service_aof_off") for p in result.get(key, {}).get("problems", [])]
    result["status"] = "failed" if problems else "ok"
    if problems:
        result["note"] = "; ".join(problems)
    return result


def markdown(result: dict, machine: str) -> str:
    """The comparison as a Markdown table: medians per line, then every run with its conditions."""
    s = result["settings"]
    out = ["# Intake: the service beside bare Flask, per worker model\n",
           f"{machine}. wrk `-t{s['wrk_threads']} -c{s['wrk_connections']} -d{s['intake_seconds']}s` after a "
           f"{s['intake_warmup']}s warm-up, {result['lines'][0]['bare']['web_workers']} gunicorn workers for every "
           f"server, Redis with `deploy/redis.conf` (AOF, `appendfsync always`) over a Unix socket. "
           f"{s['intake_rounds']} rounds, bare and service interleaved; medians over the rounds. CPU is per "
           "acknowledged delivery (bare: per 200), from /proc/<pid>/stat of the gunicorn master and workers "
           "and of redis-server.\n",
           "| line | bare req/s | service req/s | service ÷ bare: median (each round) | p50 / p99 ms, bare | "
           "p50 / p99 ms, service | CPU ms/ack, web: bare, service | Redis CPU ms/ack | entries per round trip "
           "| Redis bytes per delivery (body) |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for line in result["lines"]:
        b, v = line["bare"], line["service"]
        per_round = ", ".join(f"{r:.2f}" for r in line["ratio_per_round"])
        out.append(f"| {v['label']} | {b['rps']:,.0f} | {v['rps']:,.0f} | {line['ratio']:.2f} ({per_round}) | "
                   f"{b['latency_ms']['p50']:.1f} / {b['latency_ms']['p99']:.1f} | "
                   f"{v['latency_ms']['p50']:.1f} / {v['latency_ms']['p99']:.1f} | "
                   f"{b['cpu_ms_per_request']['web']:.3f}, {v['cpu_ms_per_request']['web']:.3f} | "
                   f"{v['cpu_ms_per_request']['redis']:.3f} | {v['entries_per_round_trip']} | "
                   f"{v['redis_bytes_per_delivery']} ({v['body_bytes']}) |")
    out += ["", "Every run, in the order run (load: 1-minute load average before → after; others: cores the "
            "rest of the machine kept busy during the run):", "",
            "| run | req/s | p50 ms | p99 ms | non-2xx | CPU ms/ack: web, Redis | entries per round trip | load "
            "| others (cores) | accounting |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    every = {r["order"]: r for line in result["lines"] for key in ("bare", "service") for r in line[key]["runs"]}
    every = [every[order] for order in sorted(every)]
    for r in every:
        cpu = r["cpu_ms_per_request"]
        out.append(f"| {r['label']} | {r['rps']:,.0f} | {r['latency_ms']['p50']:.1f} | {r['latency_ms']['p99']:.1f} | "
                   f"{r['non_2xx']} | {cpu['web']:.3f}, {cpu['redis'] or '–'} | "
                   f"{r.get('entries_per_round_trip', '–')} | {r['load_average']['before']} → "
                   f"{r['load_average']['after']} | {r['other_cpu_cores']} | {r.get('accounting', '–')} |")
    if result.get("in_process_cpu_us"):
        out += ["", "In process, no HTTP (the apps called as WSGI apps one request at a time; CPU µs of the "
                "web process per request, median of 3 runs of 2,000; Redis's own CPU not counted):", "",
                "| what | µs |", "| --- | ---: |"]
        out += [f"| {name.replace('_', ' ')} | {us} |" for name, us in result["in_process_cpu_us"].items()]
    return "\n".join(out) + "\n"


def _cpu_us(call, n: int) -> float:
    """CPU microseconds of this process per `call()`, the median of three runs of `n` after a warm-up."""
    for _ in range(n // 4):
        call()
    runs = []
    for _ in range(3):
        started = time.process_time()
        for _ in range(n):
            call()
        runs.append((time.process_time() - started) / n * 1e6)
    return round(statistics.median(runs), 1)


def in_process(ctx: Context, n: int = 2000, group: int = 4) -> dict:
    """Where a request's CPU goes in the web process, without HTTP: the apps called as WSGI, and the Redis step.

    Run in a process of its own (`--in-process`): it builds the service's app here, on a private Redis
    with `deploy/redis.conf`. Redis's own CPU is not counted (another process).
    """
    import io

    from bench.common import CAPTIONS
    from bench.traffic import webhook_body
    from store.schema import utcnow
    from workers.queues import DELIVERY_STREAM
    from workers.queues import add_deliveries
    from workers.queues import delivery_fields

    bodies = [webhook_body(f"{i:08x}-0000-4000-8000-000000000000", CAPTIONS[i % len(CAPTIONS)]) for i in range(n)]
    turn = iter(range(10**9))

    def environ() -> dict:
        body = bodies[next(turn) % n]
        return {"REQUEST_METHOD": "POST", "PATH_INFO": WEBHOOK_PATH, "QUERY_STRING": f"token={ctx.webhook_token}",
                "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
                "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)),
                "CONTENT_TYPE": "application/json", "REMOTE_ADDR": "127.0.0.1"}

    def call(app, expected: str):
        def start_response(status, headers, exc_info=None):
            if not status.startswith(expected):
                raise RuntimeError(f"{status} from the app, not {expected}")
        return lambda: b"".join(app(environ(), start_response))

    with redis_server(ctx.scratch("intake/in-process")) as server:
        os.environ.update(ctx.service_env(server.url, sqlite_database(ctx.scratch("intake/in-process-db"))))
        import wsgi
        from bench.bare_app import app as bare

        conn = server.client()
        fields = delivery_fields(bodies[0], "127.0.0.1", utcnow())

        def xadd_alone():  # what the request would send with a drain always running: no flag
            pipe = conn.pipeline(transaction=False)
            pipe.xadd(DELIVERY_STREAM, fields)
            pipe.execute()

        figures = {
            "bare": _cpu_us(call(bare, "200"), n),
            "service": _cpu_us(call(wsgi.intake, "202"), n),
            "redis_step_alone": _cpu_us(lambda: add_deliveries(conn, [fields]), n),
            "redis_step_alone_without_the_drain_flag": _cpu_us(xadd_alone, n),
            f"redis_step_per_entry_in_groups_of_{group}": round(
                _cpu_us(lambda: add_deliveries(conn, [fields] * group), n // group) / group, 1),
        }
        conn.close()
    figures["service_besides_redis_and_flask"] = round(
        figures["service"] - figures["redis_step_alone"] - figures["bare"], 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sync,gthread:8", help="comma-separated: sync, gthread:THREADS")
    parser.add_argument("--rounds", type=int, default=SIZES["intake_rounds"])
    parser.add_argument("--seconds", type=int, default=SIZES["intake_seconds"])
    parser.add_argument("--ungrouped", action="store_true",
                        help="also the service with one Redis round trip per request, under threaded models")
    parser.add_argument("--web-workers", type=int, help="gunicorn workers (default: deploy/gunicorn.conf.py's)")
    parser.add_argument("--in-process", action="store_true",
                        help="also where a request's CPU goes in the web process (no HTTP), run first")
    parser.add_argument("--out", type=Path, default=Path("bench/intake-results"), help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    for model in models:
        gunicorn_args(model)  # refuse an unknown model before anything starts
    sizes = {**SIZES, "intake_rounds": args.rounds, "intake_seconds": args.seconds, "web_workers": args.web_workers}
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as scratch:
        ctx = Context(sizes, Path(scratch), Progress())
        breakdown = in_process(ctx) if args.in_process else None
        result = compare(ctx, models, args.rounds, args.ungrouped, sqlite_database(ctx.scratch("intake")))
    if breakdown:
        result["in_process_cpu_us"] = breakdown
    cores = os.cpu_count()
    machine = f"{cores} cores, load average {os.getloadavg()[0]:.2f} at the end"
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result, machine))
    print(markdown(result, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
