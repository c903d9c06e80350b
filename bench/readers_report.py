"""The readers benchmark's targets (issue 9) and its Markdown report, from the results dictionary.

Targets, judged on the median at the largest size measured for each store:
stats (and the charts' series) < 50 ms, search < 100 ms, list pages (first and later) < 20 ms, and the
webhook p99 with readers polling within 1.5x the p99 with none. The issue sets
them at TARGET_TASKS; a verdict at a smaller size says so.
"""

from __future__ import annotations

BOUNDS_MS = {"stats": 50.0, "search": 100.0, "list": 20.0, "series": 50.0}
"""Upper bound of the median, in ms, per kind of query (the charts' series are held to the stats' bound)."""

P99_RATIO = 1.5
"""Webhook p99 with readers polling, at most this many times the p99 with none."""

RATE_SHORTFALL = 0.95
"""A webhook run that sent under this share of its rate did not load the intake as asked (flagged)."""

TARGET_TASKS = 10_000_000
"""The store size the issue's targets are set at."""


NO_PAGE = "no page"
"""The status of a later page the list does not have (fewer rows than pages x limit)."""


def _verdict(passed: bool | None, tasks: int) -> str:
    word = {True: "met", False: "missed", None: "n/a"}[passed]
    return word if tasks >= TARGET_TASKS or passed is None else f"{word} (at {tasks:,}; target at {TARGET_TASKS:,})"


def _large(lines: dict) -> tuple[int, dict] | None:
    measured = [(int(n), line) for n, line in lines.items() if line.get("status") == "ok"]
    return max(measured, key=lambda pair: pair[0]) if measured else None


def targets(results: dict) -> list[dict]:
    """Each target with the measured value, the bound and `pass`, per store, at its largest size."""
    found = []
    for store, lines in results["stores"].items():
        large = _large(lines)
        if large is None:
            continue
        tasks, line = large
        for name, query in line["queries"].items():
            pages = [("first", query["first"])] + ([("later", query["later"])] if "later" in query else [])
            for page, figures in pages:
                value, bound = figures["median_ms"], BOUNDS_MS[query["kind"]]
                passed = value is not None and figures["all_answered"] and value < bound
                if set(figures["statuses"]) == {NO_PAGE}:
                    passed = None  # the list has fewer pages than that at this size
                found.append({"store": store, "tasks": tasks, "name": f"{name}" + (f", {page} page" if "later"
                              in query else ""), "value": value, "op": "<", "bound": bound, "unit": "ms",
                              "pass": passed, "verdict": _verdict(passed, tasks)})
        ratio = line["webhooks"]["p99_ratio"]
        passed = None if ratio is None else ratio <= P99_RATIO
        verdict = _verdict(passed, tasks)
        if any(short_of_rate(hook) for key, hook in line["webhooks"].items() if key.startswith("readers_")):
            verdict += "; the sender fell short of its rate"
        found.append({"store": store, "tasks": tasks, "name": "webhook p99 with readers / without", "value": ratio,
                      "op": "<=", "bound": P99_RATIO, "unit": "x", "pass": passed, "verdict": verdict})
    return found


def short_of_rate(hook: dict) -> bool:
    """True when a webhook run sent under RATE_SHORTFALL of its target rate."""
    return hook["rate"] < RATE_SHORTFALL * hook["target_rate"]


def targets_table(results: dict) -> str:
    rows = ["| store | tasks | target | measured | bound | verdict |", "| --- | ---: | --- | ---: | ---: | --- |"]
    for t in results["targets"]:
        rows.append(f"| {t['store']} | {t['tasks']:,} | {t['name']} | {_number(t['value'])} {t['unit']} | "
                    f"{t['op']} {t['bound']:g} {t['unit']} | {t['verdict']} |")
    return "\n".join(rows)


def _number(value: float | None) -> str:
    return "no answer" if value is None else f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


def _cell(figures: dict | None) -> str:
    """`median / p95` in ms, with the statuses when not every run answered 200."""
    if figures is None:
        return "–"
    if set(figures["statuses"]) == {NO_PAGE}:
        return "fewer pages"
    text = f"{_number(figures['median_ms'])} / {_number(figures['p95_ms'])}"
    if not figures["all_answered"]:
        text += " (" + ", ".join(f"{status}: {n}" for status, n in figures["statuses"].items()) + ")"
    return text


def _query_table(store: str, lines: dict, verdicts: dict) -> list[str]:
    measured = sorted((int(n), line) for n, line in lines.items() if line.get("status") == "ok")
    heads = " | ".join(f"{n:,} tasks: median / p95 ms" for n, _ in measured)
    rows = [f"### {store}", "", f"| query | {heads} | target | verdict |",
            "| --- | " + "---: | " * len(measured) + "--- | --- |"]
    names = list(measured[-1][1]["queries"])
    for name in names:
        kind = measured[-1][1]["queries"][name]["kind"]
        pages = ["first", "later"] if kind == "list" else ["first"]
        for page in pages:
            shown = f"{name}, {page} page" if kind == "list" else name
            cells = " | ".join(_cell(line["queries"].get(name, {}).get(page)) for _, line in measured)
            rows.append(f"| {shown} | {cells} | < {BOUNDS_MS[kind]:g} ms | {verdicts.get((store, shown), '–')} |")
    for n, line in lines.items():
        if line.get("status") != "ok":
            rows.append(f"| {int(n):,} tasks: {line['status']} | {line.get('note', '')} |")
    return rows + [""]


def _label_rows(results: dict) -> list[str]:
    """Each query with labels beside the same query without them, at every size: medians and their ratio."""
    rows = ["| store | tasks | query with labels | median ms | the same without | median ms | ratio |",
            "| --- | ---: | --- | ---: | --- | ---: | ---: |"]
    for store, lines in results["stores"].items():
        for n, line in sorted(lines.items(), key=lambda pair: int(pair[0])):
            if line.get("status") != "ok":
                continue
            for name, query in line["queries"].items():
                if "beside" not in query:
                    continue
                for page in ("first", "later") if query["kind"] == "list" else ("first",):
                    other = line["queries"][query["beside"]][page]
                    mine, theirs = query[page]["median_ms"], other["median_ms"]
                    ratio = f"{mine / theirs:.2f}" if mine is not None and theirs else "–"
                    shown = f", {page} page" if query["kind"] == "list" else ""
                    rows.append(f"| {store} | {int(n):,} | {name}{shown} | {_cell(query[page])} | "
                                f"{query['beside']}{shown} | {_cell(other)} | {ratio} |")
    return rows


def _webhook_rows(results: dict) -> list[str]:
    rows = ["| store | tasks | server layout | readers | sent (req/s) | p50 ms | p99 ms | max ms | webhook answers "
            "| readers' answers | p99 ratio |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    for store, lines in results["stores"].items():
        for n, line in sorted(lines.items(), key=lambda pair: int(pair[0])):
            if line.get("status") != "ok":
                continue
            for key, hook in line["webhooks"].items():
                if not key.startswith("readers_"):
                    continue
                answers = hook.get("reader_answers", {}).get("statuses")
                shown = ", ".join(f"{s}: {c:,}" for s, c in sorted(answers.items())) if answers else "–"
                sent = f"{hook['sent']:,} ({hook['rate']:g}{' *' if short_of_rate(hook) else ''})"
                webhook_answers = ", ".join(f"{s}: {c:,}" for s, c in sorted(hook["statuses"].items()))
                ratio = line["webhooks"]["p99_ratio"] if key != "readers_0" else ""
                layout = line["layout"] + (f", READ_CONCURRENCY {line['read_concurrency']}"
                                           if "read_concurrency" in line else "")
                rows.append(f"| {store} | {int(n):,} | {layout} | {key.split('_')[1]} | {sent} | "
                            f"{_number(hook['p50_ms'])} | {_number(hook['p99_ms'])} | {_number(hook['max_ms'])} | "
                            f"{webhook_answers} | {shown} | {ratio} |")
    return rows


def _seeding_rows(results: dict) -> list[str]:
    rows = ["| store | tasks | deliveries | seeded in | deliveries/s | tasks/s | seeded at revision, then upgraded in "
            "| this run |", "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for store, lines in results["stores"].items():
        for n, line in sorted(lines.items(), key=lambda pair: int(pair[0])):
            if line.get("status") == "ok":
                s = line["seeding"]
                seconds = "–" if s["seed_seconds"] is None else f"{s['seed_seconds']:,.0f} s"
                rows.append(f"| {store} | {s['tasks']:,} | {s['deliveries']:,} | {seconds} | "
                            f"{s['deliveries_per_s'] or 0:,} | {s['tasks_per_s'] or 0:,} | {_upgrade(s)} | "
                            f"{'reused' if s['reused'] else 'seeded'} |")
    return rows


def _upgrade(seeding: dict) -> str:
    revision = seeding.get("seeded_at_revision")
    return f"{revision}, then {seeding['upgrade_seconds']:,.0f} s" if revision else "head"


def markdown(results: dict) -> str:
    """The report: seeding, queries (query x store x size, with verdicts), webhooks, targets."""
    settings, machine = results["settings"], results["machine"]
    verdicts = {(t["store"], t["name"]): t["verdict"] for t in results["targets"]}
    lines = [
        "# Readers at scale: benchmark results", "",
        f"Run {results['started_at']} on {machine['cores']} cores ({machine.get('cpu')}), commit "
        f"{machine.get('commit')}, load average at start {machine['load_average_at_start']}; "
        f"{results['elapsed_s']:,.0f} s in all. `python -m bench.readers` (bench/README.md).", "",
        f"Each query {settings['runs']} times after one untimed run (at most {settings['query_budget_s']:g} s per "
        f"query), over HTTP through gunicorn; median / p95 of the runs answered 200. List pages: the first, and the "
        f"page reached by following `nextCursor` {settings['later_page']} times. Verdicts on the median at the "
        f"largest size.", "",
        "## Seeding (through store.results.save_deliveries)", "", *_seeding_rows(results), "",
        "## Queries", "",
    ]
    for store, store_lines in results["stores"].items():
        if any(line.get("status") == "ok" for line in store_lines.values()):
            lines += _query_table(store, store_lines, verdicts)
        else:
            lines += [f"### {store}", "", "; ".join(line.get("note", "") for line in store_lines.values()), ""]
    lines += ["## Labels beside the same queries without them", "",
              "Median / p95 ms of each query with a label filter, a groupBy or the keys, and of the same query "
              "without labels; ratio of the medians.", "", *_label_rows(results), ""]
    lines += [
        "## Webhooks with dashboards polling", "",
        f"A fixed-rate sender, {settings['rate']:g} req/s for {settings['seconds']:g} s through the intake; "
        f"then the same with {settings['readers']} readers looping over stats (30 days), a search and a list page.",
        "", *_webhook_rows(results), "",
        f"\\* sent under {RATE_SHORTFALL:.0%} of the rate asked: every connection of the sender was waiting for an "
        "answer, so the intake was not loaded as asked and its latencies are understated.", "",
        "## Targets", "", targets_table(results), "",
    ]
    return "\n".join(lines)
