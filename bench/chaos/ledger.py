"""The chaos run's ledger: what the clients were told, against what the store and the emulator hold."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from dataclasses import field
from decimal import Decimal

import redis
import requests
import sqlalchemy as sa

from bench.chaos.stack import Stack


@dataclass
class Ledger:
    """What the clients were told: every 2xx, and every other answer that made them try again."""

    submitted: dict[str, int] = field(default_factory=dict)  # taskUUID -> batch number
    submit_requests: int = 0
    delivered: dict[str, str] = field(default_factory=dict)  # delivery id (from the 2xx) -> taskUUID
    expected: dict[str, dict] = field(default_factory=dict)  # external taskUUID -> the item sent
    attempts: Counter = field(default_factory=Counter)  # external taskUUID -> POSTs made
    refused: Counter = field(default_factory=Counter)  # answer (status or error) -> count
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refuse(self, what: str) -> None:
        with self.lock:
            self.refused[what] += 1


def read_store(url: str) -> tuple[dict[str, dict], Counter, set[str]]:
    """Tasks by uuid, the logged deliveries naming each task, and the ids of all logged deliveries."""
    from store.schema import deliveries
    from store.schema import tasks

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            stored = {r["task_uuid"]: dict(r) for r in conn.execute(sa.select(
                tasks.c.task_uuid, tasks.c.status, tasks.c.source, tasks.c.text, tasks.c.cost, tasks.c.error_code,
                tasks.c.error_message, tasks.c.delivery_count)).mappings()}
            logged: Counter = Counter()
            ids = set()
            for delivery_id, items in conn.execute(sa.select(deliveries.c.id, deliveries.c["items"])):
                ids.add(delivery_id)
                for task in {item["task_uuid"] for item in items}:
                    logged[task] += 1
    finally:
        engine.dispose()
    return stored, logged, ids


def settled(stack: Stack, ledger: Ledger) -> bool:
    try:
        health = requests.get(stack.emulator_url + "/healthz", timeout=5).json()
        if health["pendingTasks"] or health["pendingDeliveries"]:
            return False
        if redis.Redis.from_url(stack.redis.url).xlen("captions:deliveries"):
            return False
    except (requests.RequestException, redis.RedisError):
        return False
    stored, _, ids = read_store(stack.database_url)
    mine = [t for t, row in stored.items() if row["source"] == "submitted"]
    return (all(t in stored for t in ledger.submitted) and set(ledger.delivered) <= ids
            and all(stored[t]["status"] in ("success", "error") for t in mine))


def account(stack: Stack, ledger: Ledger) -> dict:
    """Compare what the clients and the emulator were told with what the store holds."""
    stored, logged, ids = read_store(stack.database_url)
    emulated = {t["taskUUID"]: t for t in requests.get(stack.emulator_url + "/_emulator/tasks", timeout=60)
                .json()["tasks"]}
    attempts = requests.get(stack.emulator_url + "/_emulator/attempts", timeout=60).json()["attempts"]
    return balance(ledger, stored, logged, ids, emulated, attempts)


def balance(ledger: Ledger, stored: dict[str, dict], logged: Counter, ids: set[str], emulated: dict[str, dict],
            attempts: list[dict]) -> dict:
    """The ledger's figures and problems, from the clients' ledger, the store and the emulator's records."""
    acked_by_us, reached_us = Counter(), Counter()
    for attempt in attempts:
        if attempt["outcome"] == "delivered":
            acked_by_us[attempt["taskUUID"]] += 1
        if attempt["outcome"] != "injected-failure":
            reached_us[attempt["taskUUID"]] += 1

    problems: list[dict] = []

    def problem(kind: str, task: str, detail: str) -> None:
        problems.append({"kind": kind, "taskUUID": task, "detail": detail})

    submitted = [t for t, row in stored.items() if row["source"] == "submitted"]
    unanswered = sorted(set(submitted) - set(ledger.submitted))
    succeeded, failed = 0, Counter()
    for task in set(ledger.submitted) | set(submitted):
        row = stored.get(task)
        if row is None:
            problem("lost", task, "submitted (202) but not in the store")
            continue
        if row["status"] not in ("success", "error"):
            problem("lost", task, f"never settled: still {row['status']}")
            continue
        if row["status"] == "error":
            if not row["error_code"]:
                problem("lost", task, "failed without a reason")
            failed[row["error_code"]] += 1
        else:
            succeeded += 1
            truth = emulated.get(task)
            if truth is None or truth["status"] != "success":
                problem("doubled", task, "stored a success the emulator never produced")
            elif row["text"] != truth["result"]["text"] or costs_differ(row["cost"], truth["result"].get("cost")):
                problem("doubled", task, f"stored {row['text']!r} {row['cost']}, emulator {truth['result']}")
        check_counts(task, row, logged, acked_by_us[task], reached_us[task], problem)

    external_ok = 0
    acked_external = Counter(ledger.delivered.values())
    for delivery_id, task in ledger.delivered.items():
        if delivery_id not in ids:
            problem("lost", task, f"delivery {delivery_id} acknowledged but not in the delivery log")
    for task, item in ledger.expected.items():
        row = stored.get(task)
        if not acked_external[task]:
            continue  # the run stopped before its 2xx (not acknowledged, nothing promised)
        if row is None:
            problem("lost", task, "external result acknowledged but not stored")
            continue
        wanted = ("error", item.get("code")) if "code" in item else ("success", item["text"])
        got = ("error", row["error_code"]) if row["status"] == "error" else (row["status"], row["text"])
        if got != wanted or ("cost" in item and costs_differ(row["cost"], item["cost"])):
            problem("doubled", task, f"stored {got} {row['cost']}, sent {item}")
        else:
            external_ok += 1
        check_counts(task, row, logged, acked_external[task], ledger.attempts[task], problem)

    kinds = Counter(p["kind"] for p in problems)
    return {
        "tasks_submitted": len(ledger.submitted),
        "tasks_stored_unanswered": len(unanswered),
        "submit_requests": ledger.submit_requests,
        "tasks_succeeded": succeeded,
        "tasks_failed_with_reason": dict(failed),
        "webhook_attempts_acknowledged": sum(acked_by_us.values()),
        "external_deliveries_acknowledged": len(ledger.delivered),
        "deliveries_acknowledged": sum(acked_by_us.values()) + len(ledger.delivered),
        "deliveries_logged": len(ids),
        "external_results_stored": external_ok,
        "emulator_webhooks": dict(Counter(t["webhook"] for t in emulated.values())),
        "refused_answers_seen": dict(ledger.refused),
        "lost": kinds["lost"],
        "doubled": kinds["doubled"],
        "problems": problems[:200],
    }


def costs_differ(stored, sent) -> bool:
    """True when the two costs differ (None equals None)."""
    if stored is None or sent is None:
        return stored is not sent
    return Decimal(str(stored)) != Decimal(str(sent))


def check_counts(task: str, row: dict, logged: Counter, acknowledged: int, reached: int, problem) -> None:
    """Each acknowledged delivery logged; no task counting a delivery twice; no more logged than were sent."""
    if logged[task] < acknowledged:
        problem("lost", task, f"{acknowledged} deliveries acknowledged, {logged[task]} in the delivery log")
    if row["delivery_count"] != logged[task]:
        problem("doubled", task, f"delivery_count {row['delivery_count']}, {logged[task]} deliveries logged")
    if logged[task] > reached:
        problem("doubled", task, f"{logged[task]} deliveries logged, only {reached} ever sent")


def print_table(result: dict) -> None:
    rows = [
        ("duration (s)", result["duration_s"]),
        ("tasks submitted (202)", result["tasks_submitted"]),
        ("tasks stored, 202 lost", result["tasks_stored_unanswered"]),
        ("tasks succeeded", result["tasks_succeeded"]),
        ("tasks failed, with reason", sum(result["tasks_failed_with_reason"].values())),
        ("  reasons", ", ".join(f"{k} {v}" for k, v in sorted(result["tasks_failed_with_reason"].items()))),
        ("deliveries acknowledged", result["deliveries_acknowledged"]),
        ("  emulator webhooks (2xx)", result["webhook_attempts_acknowledged"]),
        ("  external results (2xx)", result["external_deliveries_acknowledged"]),
        ("deliveries in the log", result["deliveries_logged"]),
        ("kills", sum(result["kills"].values())),
        *((f"  {kind}", n) for kind, n in sorted(result["kills"].items())),
        ("restarts by the supervisor", sum(result["restarts"].values())),
        ("refused answers (retried)", sum(result["refused_answers_seen"].values())),
        ("settled in (s)", result["settle_s"]),
        ("LOST", result["lost"]),
        ("DOUBLED", result["doubled"]),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n" + "=" * (width + 14))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("=" * (width + 14))
