"""The benchmark suite in one go: `python -m bench.run [--quick | --smoke] [--only intake,drain,...]`.

Runs each figure beside its baseline on this machine, in one run, and writes
`results.json`, `results.md` and `results.png` (by default into bench/ for a
full run, into bench/out/quick/ or bench/out/smoke/ otherwise). See bench/README.md.

Exit status: 0 when every phase ran and its figures are valid (whatever the
targets say; `--strict` also fails on a missed target), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC
from datetime import datetime
from pathlib import Path

from bench import report
from bench.common import BENCH
from bench.common import ROOT
from bench.common import Context
from bench.common import Progress
from bench.traffic import wrk_version

PHASES = ("intake", "drain", "endtoend", "submit", "memory")
ALIASES = {"e2e": "endtoend", "submission": "submit", "mem": "memory"}

SIZES = {
    "full": {
        "intake_seconds": 15, "intake_warmup": 3, "wrk_threads": 2, "wrk_connections": 32, "aof_off_lines": True,
        "intake_rounds": 3,
        "drain_deliveries": 100_000, "drain_timeout": 300, "per_job_deliveries": 2_000, "per_job_seconds": 25,
        "e2e_seconds": 60, "e2e_warmup": 3, "e2e_fractions": [0.5, 0.9], "e2e_calibrate_seconds": 5,
        "e2e_drain_wait": 60, "memory_deliveries": 10_000, "memory_load_seconds": 5,
        "memory_drain_deliveries": 20_000, "submit_timeout": 150, "web_workers": None,
    },
    "quick": {
        "intake_seconds": 5, "intake_warmup": 1, "wrk_threads": 2, "wrk_connections": 32, "aof_off_lines": True,
        "drain_deliveries": 5_000, "drain_timeout": 120, "per_job_deliveries": 300, "per_job_seconds": 8,
        "e2e_seconds": 5, "e2e_warmup": 1, "e2e_fractions": [0.5, 0.9], "e2e_calibrate_seconds": 3,
        "e2e_drain_wait": 30, "memory_deliveries": 10_000, "memory_load_seconds": 2,
        "memory_drain_deliveries": 5_000, "submit_timeout": 120, "web_workers": None,
    },
    "smoke": {
        "intake_seconds": 1, "intake_warmup": 0, "wrk_threads": 1, "wrk_connections": 4, "aof_off_lines": False,
        "drain_deliveries": 300, "drain_timeout": 60, "per_job_deliveries": 10, "per_job_seconds": 5,
        "e2e_seconds": 1, "e2e_warmup": 0, "e2e_fractions": [0.5, 0.9], "e2e_calibrate_seconds": 1,
        "e2e_drain_wait": 20, "memory_deliveries": 500, "memory_load_seconds": 1,
        "memory_drain_deliveries": 300, "submit_timeout": 60, "web_workers": 2,
    },
}
"""Sizes per mode. `full` must finish in under 10 minutes on 2 cores: about 6 minutes without the
submission figure, which gets at most `submit_timeout` seconds."""

BUDGET_S = 600
"""A full run longer than this is reported (the issue asks for under 10 minutes)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes; noisy figures)")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, to check the harness (seconds)")
    parser.add_argument("--only", help=f"comma-separated phases among {', '.join(PHASES)} (default: all)")
    parser.add_argument("--out", type=Path, help="folder for results.json/.md/.png")
    parser.add_argument("--web-workers", type=int, help="gunicorn workers (WEB_CONCURRENCY) for service and "
                        "baseline alike (default: deploy/gunicorn.conf.py's own, 2 x cores + 1)")
    parser.add_argument("--deliveries", type=int, help="deliveries queued for the drain figure")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, databases)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed too")
    args = parser.parse_args(argv)
    phases = PHASES
    if args.only:
        asked = [ALIASES.get(p.strip(), p.strip()) for p in args.only.split(",") if p.strip()]
        unknown = [p for p in asked if p not in PHASES]
        if unknown:
            parser.error(f"unknown phase(s) {', '.join(unknown)}; choose among {', '.join(PHASES)}")
        phases = tuple(p for p in PHASES if p in asked)
    args.phases = phases
    args.mode = "quick" if args.quick else "smoke" if args.smoke else "full"
    return args


def _command(*args: str) -> str | None:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 and (out.stdout or out.stderr) \
        else None


def _filesystem(path: Path) -> str | None:
    """The filesystem type holding `path` (an fsync on tmpfs costs nothing; on a disk it does)."""
    best, kind = "", None
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        return None
    return kind


def _version(banner: str | None, marker: str) -> str | None:
    """The version number from a tool's banner (`Redis server v=7.0.15 …`, `wrk debian/4.1.0-3 …`)."""
    if not banner or marker not in banner:
        return banner
    return banner.split(marker, 1)[1].split()[0]


def machine(workdir: Path) -> dict:
    """What the figures were measured on."""
    cpu = None
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = _command("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = _command("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no")
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "redis": _version(_command("redis-server", "--version"), "v="),
        "wrk": _version(wrk_version(), "debian/"),
        "scratch_filesystem": _filesystem(workdir),
        "commit": (commit + ("+changes" if dirty else "")) if commit else None,
    }


def _submit(ctx: Context, mode: str) -> dict:
    """Submission figure: the hook for bench/submit.py (its own engineer's), run as a child process.

    Contract: `python -m bench.submit --out FILE [--quick | --smoke]` writes a JSON object to FILE;
    its `batched` and `unbatched` entries, when present, carry `tasks_per_s`.
    """
    if not (BENCH / "submit.py").exists():
        return {"status": "skipped",
                "note": "bench/submit.py is not in the tree yet (hook: python -m bench.submit --out FILE [--quick])"}
    out = ctx.workdir / "submit.json"
    args = [sys.executable, "-m", "bench.submit", "--out", str(out)] + ([f"--{mode}"] if mode != "full" else [])
    ctx.progress("submit: " + " ".join(["python", *args[1:]]))
    done = subprocess.run(args, cwd=ROOT, timeout=ctx.sizes["submit_timeout"])
    if done.returncode != 0 or not out.exists():
        return {"status": "error", "note": f"bench/submit.py exited {done.returncode}"
                + ("" if out.exists() else " without writing its results")}
    figures = json.loads(out.read_text())
    result = {"status": "ok", "figures": figures}
    for key in ("batched", "unbatched"):
        if isinstance(figures.get(key), dict) and "tasks_per_s" in figures[key]:
            result[f"{key}_tasks_per_s"] = figures[key]["tasks_per_s"]
    if result.get("batched_tasks_per_s") and result.get("unbatched_tasks_per_s"):
        result["ratio"] = round(result["batched_tasks_per_s"] / result["unbatched_tasks_per_s"], 2)
    return result


def run_phase(name: str, ctx: Context, results: dict, mode: str) -> dict:
    if name == "intake":
        from bench import intake

        return intake.run(ctx)
    if name == "drain":
        from bench import drain

        return drain.run(ctx)
    if name == "endtoend":
        from bench import endtoend

        return endtoend.run(ctx, results)
    if name == "memory":
        from bench import memory

        return memory.run(ctx, results)
    return _submit(ctx, mode)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = dict(SIZES[args.mode])
    if args.web_workers:
        sizes["web_workers"] = args.web_workers
    if args.deliveries:
        sizes["drain_deliveries"] = args.deliveries
    out = args.out or (BENCH if args.mode == "full" else BENCH / "out" / args.mode)
    workdir = Path(tempfile.mkdtemp(prefix="captions-bench-"))
    progress = Progress()
    ctx = Context(sizes=sizes, workdir=workdir, progress=progress)
    results: dict = {
        "schema": "captions-bench/1",
        "mode": args.mode,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(workdir),
        "sizes": sizes,
        "phases": {},
    }
    progress(f"benchmark ({args.mode}): phases {', '.join(args.phases)}; results to {_shown(out)}")
    if args.mode != "full":
        progress("small sizes: the figures are noisy and not the ones to quote")
    try:
        for name in args.phases:
            started = time.monotonic()
            progress(f"== {name}")
            try:
                phase = run_phase(name, ctx, results, args.mode)
            except Exception as exc:  # one broken phase must not lose the others' figures
                traceback.print_exc()
                phase = {"status": "error", "note": f"{type(exc).__name__}: {exc}"}
            phase["elapsed_s"] = round(time.monotonic() - started, 1)
            results["phases"][name] = phase
            progress(f"== {name}: {phase['status']} in {phase['elapsed_s']}s"
                     + (f" ({phase['note']})" if phase.get("note") else ""))
            write(results, out)
    finally:
        if args.keep:
            progress(f"scratch folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = round(progress.elapsed(), 1)
    results["targets"] = report.targets(results)
    write(results, out)
    report.write_markdown(results, out / "results.md")
    report.write_chart(results, out / "results.png")
    print()
    print(report.targets_table(results))
    progress(f"done: {_shown(out / 'results.json')}, results.md, results.png")
    if args.mode == "full" and results["elapsed_s"] > BUDGET_S:
        progress(f"over budget: the run took {results['elapsed_s']:.0f}s, more than {BUDGET_S}s")
    broken = [n for n, p in results["phases"].items() if p["status"] in ("error", "failed")]
    missed = [t["name"] for t in results["targets"] if t["pass"] is False]
    if broken:
        progress(f"phases with errors or invalid figures: {', '.join(broken)}")
    return 1 if broken or (args.strict and missed) else 0


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
