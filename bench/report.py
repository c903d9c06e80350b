"""results.json → the targets, a markdown report (results.md) and a chart (results.png, drawn with Pillow).

`python -m bench.report [bench/results.json]` draws them again from a results file.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

OPS = {">=": lambda m, t: m >= t, "<=": lambda m, t: m <= t, "<": lambda m, t: m < t}
SHOWN_OP = {">=": "≥", "<=": "≤", "<": "<"}


def _get(tree: dict, *path, default=None):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    return tree


def _target(name: str, measured, op: str, goal: float, unit: str, note: str | None = None) -> dict:
    return {
        "name": name,
        "measured": measured,
        "op": op,
        "target": goal,
        "unit": unit,
        "pass": None if measured is None else OPS[op](measured, goal),
        **({"note": note} if note else {}),
    }


def _why_missing(results: dict, phase: str, line: str | None = None) -> str | None:
    entry = _get(results, "phases", phase)
    if entry is None:
        return f"{phase} not run"
    if line and _get(entry, line, "status") == "skipped":
        return _get(entry, line, "note")
    if entry.get("status") in ("error", "skipped"):
        return f"{phase}: {entry.get('note', entry['status'])}"
    return None


def targets(results: dict) -> list[dict]:
    """Issue 5's targets, each a ratio or a bound from this run's figures."""
    phases = results.get("phases", {})
    found = [_target("intake ÷ bare Flask (req/s)", _get(phases, "intake", "ratio"), ">=", 0.85, "x",
                     _why_missing(results, "intake"))]
    for db, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        why = _why_missing(results, "drain", db)
        found.append(_target(f"drain ÷ raw bulk write of the same rows, {label}",
                             _get(phases, "drain", db, "ratio_raw"), ">=", 0.5, "x", why))
        found.append(_target(f"drain ÷ raw upsert of the task rows alone (stricter), {label}",
                             _get(phases, "drain", db, "ratio_raw_tasks"), ">=", 0.5, "x", why))
        found.append(_target(f"drain ÷ one job per delivery, {label}", _get(phases, "drain", db, "ratio_per_job"),
                             ">=", 20, "x", why))
    high = next((lv for lv in _get(phases, "endtoend", "levels", default=[]) if lv["fraction"] == 0.9), None)
    why = _why_missing(results, "endtoend") or (None if high else "no 90% level")
    e2e = [_target("backlog at the end of the 90% load (seconds of traffic)", _get(high, "backlog_end_s"), "<", 1.0,
                   "s", why),
           _target("p99 receipt-to-stored at 90% load", _get(high, "p99_ms"), "<=", 100, "ms", why)]
    if high and not high.get("rate_reached", True):
        for t in e2e:  # a load the service could not take is not a pass, whatever the latency
            t["pass"] = False if t["pass"] is not None else None
            t["note"] = f"90% load not reached: {high['achieved_rps']:,.0f} of {high['target_rps']:,.0f} req/s"
    found += e2e
    found.append(_target("Redis bytes per queued delivery ÷ body size",
                         _get(phases, "memory", "redis", "ratio_to_body"), "<=", 1.5, "x",
                         _why_missing(results, "memory")))
    return found


# --- markdown ------------------------------------------------------------------------------------


def _num(value, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and digits == 0 and abs(value) < 10:
        digits = 2
    text = f"{value:,.{digits}f}" if isinstance(value, (int, float)) else str(value)
    return text + unit


def _verdict(target: dict) -> str:
    return {True: "✅ met", False: "❌ missed", None: "– not measured"}[target["pass"]]


def targets_table(results: dict) -> str:
    lines = ["| target | measured | goal | verdict |", "| --- | ---: | ---: | --- |"]
    for t in results.get("targets") or targets(results):
        digits = 0 if t["unit"] == "ms" else 2
        measured = _num(t["measured"], digits, t["unit"]) if t["measured"] is not None else "–"
        verdict = _verdict(t) + (f" ({t['note']})" if t.get("note") else "")
        lines.append(f"| {t['name']} | {measured} | {SHOWN_OP[t['op']]} {t['target']:g}{t['unit']} | {verdict} |")
    return "\n".join(lines)


def _intake_md(p: dict) -> list[str]:
    s = p.get("settings", {})
    workers = _get(p, "service", "web_workers")
    out = [f"wrk `-t{s.get('wrk_threads')} -c{s.get('wrk_connections')} -d{s.get('intake_seconds')}s --latency` "
           f"after a {s.get('intake_warmup')}s warm-up, same `deploy/gunicorn.conf.py` "
           f"({workers} {_get(p, 'service', 'worker_class') or 'sync'} workers) for both servers, "
           f"medians of {_get(p, 'service', 'rounds') or 1} interleaved rounds; a fresh taskUUID per request.", "",
           "| server | req/s | p50 ms | p99 ms | non-2xx | socket errors | ÷ bare | CPU ms/request: web, Redis, wrk |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    bare = _get(p, "bare", "rps")
    for key in ("bare", "service", "service_aof_off"):
        line = p.get(key)
        if not line:
            continue
        errors = sum(line["socket_errors"].values())
        ratio = line["rps"] / bare if bare else None
        cpu = line.get("cpu_ms_per_request", {})
        cpu_text = ", ".join(_num(cpu.get(k), 2) for k in ("web", "redis", "wrk"))
        out.append(f"| {line['label']} | {_num(line['rps'])} | {_num(line['latency_ms']['p50'], 1)} | "
                   f"{_num(line['latency_ms']['p99'], 1)} | {line['non_2xx']} | {errors} | {_num(ratio, 2)} | "
                   f"{cpu_text} |")
    for key in ("service", "service_aof_off"):
        if p.get(key, {}).get("accounting"):
            state = "✅" if p[key]["accounted"] else "❌"
            out.append(f"\nAccounting, {p[key]['label']}: {state} {p[key]['accounting']}.")
    return out


def _drain_md(p: dict) -> list[str]:
    s = p.get("settings", {})
    out = [f"{_num(s.get('drain_deliveries'))} queued deliveries per line; one job per delivery: "
           f"{_num(s.get('per_job_deliveries'))} jobs, time-boxed at {s.get('per_job_seconds')}s.", "",
           "Raw: the rows the drain writes (a delivery-log row and a task row per delivery), prepared beforehand, "
           "one `executemany` per table and a commit per 1,000; the stricter line upserts the task rows alone.", "",
           "| database | raw, same rows /s | raw, task rows alone /s | drain /s | one job per delivery /s "
           "| drain ÷ raw | drain ÷ raw task rows | drain ÷ per job |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, label in (("sqlite", "SQLite (WAL)"), ("postgres", "PostgreSQL")):
        line = p.get(key)
        if not line:
            continue
        if line.get("status") == "skipped":
            out.append(f"| {label} | skipped: {line.get('note')} | | | | | | |")
            continue
        per_job = line["per_job"]
        capped = f" ({per_job['done']} of {per_job['jobs']} in the time box)" if per_job.get("capped") else ""
        out.append(f"| {label} | {_num(line['raw']['per_s'])} | {_num(line['raw_tasks']['per_s'])} | "
                   f"{_num(line['drain']['per_s'])} | {_num(per_job['per_s'], 1)}{capped} | "
                   f"{_num(line['ratio_raw'], 2)} | {_num(line['ratio_raw_tasks'], 2)} | "
                   f"{_num(line['ratio_per_job'], 1)}x |")
    extra = p.get("sqlite_aof_off")
    if extra:
        out.append(f"| SQLite, Redis AOF off (extra) | | | {_num(extra['per_s'])} | | "
                   f"{_num(extra['ratio_raw'], 2)} | | |")
    for key in ("sqlite", "postgres"):
        drained = _get(p, key, "drain")
        if drained:
            out.append(f"\nDrain accounting, {key}: {'✅' if drained['accounted'] else '❌'} {drained['stored']} "
                       f"deliveries and {drained['tasks']} tasks stored, {drained['stream_left']} left in the stream, "
                       f"{drained['failed_jobs']} failed jobs; drains at once (PERSIST_CONCURRENCY, as many "
                       f"persist workers): {drained.get('drains', '?')}; timed from {drained['timed_from']}.")
    return out


def _e2e_md(p: dict) -> list[str]:
    s = p.get("settings", {})
    out = [f"Paced wrk load for {s.get('seconds')}s per level, one persist worker, SQLite; 100% = "
           f"{_num(p.get('max_rps'))} req/s ({p.get('max_rps_source')}).", "",
           "| load | target req/s | achieved req/s | receipt→stored p50 ms | p99 ms | max ms | backlog at end | "
           "(s of traffic) | largest backlog | accounted |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    short = [lv for lv in p.get("levels", []) if not lv.get("rate_reached", True)]
    for lv in p.get("levels", []):
        reached = "" if lv.get("rate_reached", True) else " ⚠️"
        out.append(f"| {lv['fraction']:.0%} | {_num(lv['target_rps'])} | {_num(lv['achieved_rps'])}{reached} | "
                   f"{_num(lv['p50_ms'], 1)} | {_num(lv['p99_ms'], 1)} | {_num(lv['max_ms'], 1)} | "
                   f"{lv['backlog_end']} | {_num(lv['backlog_end_s'], 3)} | {lv['backlog_max']} | "
                   f"{'✅' if lv['accounted'] else '❌'} {lv['accounting']} |")
    if short:
        out += ["", "⚠️ Target rate not reached: the service answered too slowly for wrk's connections to keep "
                "the pace, so that level ran below the load asked for (HTTP p50 "
                + ", ".join(f"{lv['http_latency_ms']['p50']:.0f} ms at {lv['fraction']:.0%}" for lv in short)
                + ")."]
    return out


def _submit_md(p: dict) -> list[str]:
    if p.get("status") != "ok":
        return [f"{p.get('status')}: {p.get('note')}"]
    out = ["| batched tasks/s | unbatched tasks/s | batched ÷ unbatched |", "| ---: | ---: | ---: |",
           f"| {_num(p.get('batched_tasks_per_s'))} | {_num(p.get('unbatched_tasks_per_s'))} | "
           f"{_num(p.get('ratio'), 2)} |", "", "Figures as bench/submit.py reported them:", "", "```json",
           json.dumps(p.get("figures"), indent=2), "```"]
    return out


def _memory_md(p: dict) -> list[str]:
    web, rq, red = p.get("gunicorn", {}), p.get("rq", {}), p.get("redis", {})
    workers = ", ".join(_num(m, 1) for m in web.get("worker_rss_mib", []))
    return [
        "| what | figure |", "| --- | --- |",
        f"| gunicorn worker RSS, MiB (each, after {web.get('after')}) | {workers} |",
        f"| gunicorn master RSS, MiB | {_num(web.get('master_rss_mib'), 1)} |",
        f"| RQ persist worker RSS, MiB ({rq.get('while')}) | {_num(rq.get('parent_rss_mib'), 1)} |",
        f"| RQ work horse RSS, MiB (same) | {_num(rq.get('horse_rss_mib'), 1)} |",
        f"| Redis bytes per queued delivery ({_num(red.get('deliveries'))} queued) | "
        f"{_num(red.get('bytes_per_delivery'))} B "
        f"(stream key alone: {_num(red.get('stream_key_bytes_per_delivery'))} B) |",
        f"| mean body size | {_num(red.get('body_bytes_mean'))} B |",
        f"| Redis bytes ÷ body size | {_num(red.get('ratio_to_body'), 2)} |",
    ]


SECTIONS = (
    ("intake", "Intake: webhook POSTs per second, service beside bare Flask", _intake_md),
    ("drain", "Drain: deliveries persisted per second", _drain_md),
    ("endtoend", "End to end: steady load with the workers running", _e2e_md),
    ("submit", "Submission: tasks per second sent to the emulator", _submit_md),
    ("memory", "Memory", _memory_md),
)


def markdown(results: dict) -> str:
    m = results.get("machine", {})
    out = ["# Benchmark results", "",
           f"Mode **{results.get('mode')}**, started {results.get('started_at')}, took "
           f"{_num(results.get('elapsed_s'), 0)} s. Machine: {m.get('cores')} cores ({m.get('cpu')}), "
           f"load average at start {m.get('load_average_at_start')}, Python {m.get('python')}, "
           f"Redis {m.get('redis')}, wrk {m.get('wrk')}; scratch on {m.get('scratch_filesystem')}; "
           f"commit {m.get('commit')}."]
    if results.get("mode") != "full":
        out += ["", "> Small sizes: these figures are noisy; quote only a full run (`make bench`)."]
    out += ["", "## Targets (ratios from this run)", "", targets_table(results)]
    for key, title, render in SECTIONS:
        phase = _get(results, "phases", key)
        if phase is None:
            continue
        out += ["", f"## {title}", ""]
        if phase.get("status") in ("error", "skipped"):
            out.append(f"{phase['status']}: {phase.get('note')}")
            continue
        if phase.get("status") == "failed":
            out += [f"**Figure invalid:** {phase.get('note')}", ""]
        out += render(phase)
    out += ["", "## Phases", "", "| phase | status | seconds | note |", "| --- | --- | ---: | --- |"]
    for name, phase in results.get("phases", {}).items():
        out.append(f"| {name} | {phase['status']} | {_num(phase.get('elapsed_s'), 1)} | {phase.get('note', '')} |")
    return "\n".join(out) + "\n"


def write_markdown(results: dict, path: Path) -> None:
    path.write_text(markdown(results))


# --- chart ---------------------------------------------------------------------------------------

WIDTH, HEIGHT = 1600, 1120
GREEN, RED, GREY, BLUE, TEAL, AMBER = "#2e7d32", "#c62828", "#9e9e9e", "#1565c0", "#00838f", "#ef6c00"
INK, FAINT = "#212121", "#e0e0e0"


def _font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    """DejaVu when the system has it, else Pillow's own font (scalable where Pillow has FreeType)."""
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # a Pillow without FreeType
        return ImageFont.load_default()


def _bars(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, bars: list[tuple],
          log: bool = False, reference: float | None = None, reference_label: str = "") -> None:
    """Horizontal bars in `box`: each (label, value or None, colour, text shown after the bar)."""
    x0, y0, x1, y1 = box
    title_font, label_font, value_font = _font(24, bold=True), _font(18), _font(17)
    draw.text((x0, y0), title, fill=INK, font=title_font)
    if not bars:
        draw.text((x0, y0 + 50), "not measured in this run", fill=GREY, font=label_font)
        return
    label_w = max(draw.textlength(b[0], font=label_font) for b in bars) + 16
    left, right = x0 + label_w, x1 - 200
    top = y0 + 44
    row = min(54, (y1 - top - (26 if reference else 0)) / len(bars))
    values = [b[1] for b in bars if b[1] is not None and b[1] > 0]
    if reference:
        values.append(reference)
    high = max(values, default=1) * (1.08 if not log else 1.5)
    low = min(values, default=1) / 2 if log else 0

    def x_of(v: float) -> float:
        if log:
            span = math.log10(high) - math.log10(low)
            return left + (math.log10(max(v, low)) - math.log10(low)) / span * (right - left)
        return left + v / high * (right - left)

    draw.line([(left, top - 4), (left, top + row * len(bars))], fill=INK, width=1)
    if reference:  # under the bars and their figures, which stay readable across it
        rx = x_of(reference)
        bottom = top + row * len(bars)
        for yy in range(int(top - 4), int(bottom), 10):
            draw.line([(rx, yy), (rx, min(yy + 5, bottom))], fill=INK, width=2)
        draw.text((rx, bottom + 4), reference_label, fill=INK, font=value_font, anchor="ma")
    for i, (label, value, colour, text) in enumerate(bars):
        y = top + i * row
        bar_h = row * 0.62
        draw.text((x0, y + bar_h / 2), label, fill=INK, font=label_font, anchor="lm")
        if value is None:
            draw.text((left + 8, y + bar_h / 2), text or "not measured", fill=GREY, font=value_font, anchor="lm")
            continue
        end = max(x_of(value), left + 2)
        draw.rectangle([left, y, end, y + bar_h], fill=colour)
        box = draw.textbbox((end + 8, y + bar_h / 2), text, font=value_font, anchor="lm")
        draw.rectangle([box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2], fill="white")
        draw.text((end + 8, y + bar_h / 2), text, fill=INK, font=value_font, anchor="lm")


def _target_bars(results: dict) -> list[tuple]:
    """Each target as measured ÷ goal (goal ÷ measured for an upper bound): 1 or more passes."""
    bars = []
    for t in results.get("targets") or targets(results):
        m = t["measured"]
        goal = f"{SHOWN_OP[t['op']]} {t['target']:g}{t['unit']}"
        if m is None:
            bars.append((_short(t["name"]), None, GREY, f"not measured (goal {goal})"))
            continue
        score = m / t["target"] if t["op"] == ">=" else (t["target"] / m if m else 10.0)
        shown = f"{m:,.0f}{t['unit']}" if t["unit"] == "ms" else f"{m:,.2f}{t['unit']}"
        why = f" · {t['note']}" if t.get("note") else ""
        bars.append((_short(t["name"]), min(score, 3.0), GREEN if t["pass"] else RED, f"{shown} (goal {goal}){why}"))
    return bars


def _short(name: str) -> str:
    return (name.replace("one job per delivery", "1 job/delivery")
            .replace("raw bulk write of the same rows", "raw, same rows")
            .replace("raw upsert of the task rows alone (stricter)", "raw task rows")
            .replace(" (seconds of traffic)", ", s").replace("backlog at the end of the 90% load", "90% load: backlog")
            .replace("p99 receipt-to-stored at 90% load", "90% load: p99 receipt→stored")
            .replace("Redis bytes per queued delivery ÷ body size", "Redis bytes ÷ body")
            .replace(" (req/s)", ""))


def write_chart(results: dict, path: Path) -> None:
    """A one-page chart: targets, intake, drain (log scale), end-to-end latency."""
    phases = results.get("phases", {})
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    mode = results.get("mode")
    heading = f"Caption webhook service: benchmark ({mode}{', noisy small sizes' if mode != 'full' else ''})"
    draw.text((40, 24), heading, fill=INK, font=_font(30, bold=True))
    m = results.get("machine", {})
    draw.text((40, 66), f"{results.get('started_at')} · {m.get('cores')} cores · commit {m.get('commit')}",
              fill="#616161", font=_font(18))
    draw.line([(40, 100), (WIDTH - 40, 100)], fill=FAINT, width=2)

    _bars(draw, (40, 120, WIDTH - 40, 520), "Targets: measured ÷ goal, right of the dashed line = met (bars stop at 3)",
          _target_bars(results), reference=1.0, reference_label="goal")

    intake = phases.get("intake", {})
    intake_bars = []
    for key, colour in (("bare", GREY), ("service", BLUE), ("service_aof_off", TEAL)):
        line = intake.get(key)
        if line:
            label = {"bare": "bare Flask", "service": "service", "service_aof_off": "service, AOF off"}[key]
            intake_bars.append((label, line["rps"], colour,
                                f"{line['rps']:,.0f}/s · p99 {line['latency_ms']['p99']:.0f} ms"))
    _bars(draw, (40, 560, 780, 800), "Intake, requests/s", intake_bars)

    drain = phases.get("drain", {})
    drain_bars = []
    for key, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        line = drain.get(key)
        if not line or line.get("status") == "skipped" or "raw" not in line:
            continue
        drain_bars += [(f"{label} raw, same rows", line["raw"]["per_s"], GREY, f"{line['raw']['per_s']:,.0f}/s"),
                       (f"{label} raw, tasks alone", line["raw_tasks"]["per_s"], GREY,
                        f"{line['raw_tasks']['per_s']:,.0f}/s"),
                       (f"{label} drain", line["drain"]["per_s"], BLUE, f"{line['drain']['per_s']:,.0f}/s"),
                       (f"{label} 1 job/delivery", line["per_job"]["per_s"], AMBER,
                        f"{line['per_job']['per_s']:,.1f}/s")]
    _bars(draw, (820, 560, WIDTH - 40, 800), "Drain, deliveries/s (log scale)", drain_bars, log=True)

    e2e_bars = []
    for lv in phases.get("endtoend", {}).get("levels", []):
        for key, colour in (("p50_ms", TEAL), ("p99_ms", BLUE)):
            if lv.get(key) is not None:
                e2e_bars.append((f"{lv['fraction']:.0%} load {key[:3]}", lv[key], colour,
                                 f"{lv[key]:,.1f} ms · backlog {lv['backlog_end']} · {lv['achieved_rps']:,.0f} req/s"))
    _bars(draw, (40, 840, 780, HEIGHT - 30), "End to end, receipt→stored", e2e_bars, reference=100,
          reference_label="100 ms")

    red = phases.get("memory", {}).get("redis")
    memory_bars = []
    if red:
        memory_bars += [("body", red["body_bytes_mean"], GREY, f"{red['body_bytes_mean']:,.0f} B"),
                        ("Redis per delivery", red["bytes_per_delivery"], BLUE, f"{red['bytes_per_delivery']:,.0f} B")]
    _bars(draw, (820, 840, WIDTH - 40, HEIGHT - 30), "Redis bytes per queued delivery", memory_bars,
          reference=red["body_bytes_mean"] * 1.5 if red else None, reference_label="1.5x body")
    image.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    source = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results.json"
    results = json.loads(source.read_text())
    results["targets"] = targets(results)
    write_markdown(results, source.with_name("results.md"))
    write_chart(results, source.with_name("results.png"))
    print(targets_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
