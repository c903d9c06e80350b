"""Stored state converges whatever the order, batching and number of deliveries (design §3)."""

from __future__ import annotations

import uuid
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from decimal import Decimal

import sqlalchemy as sa
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from store.results import Delivery
from store.results import Result
from store.results import apply_results
from store.results import save_deliveries
from store.schema import deliveries as log_table
from store.schema import tasks

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = ("ack", "error", "success", "other-success")

events = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(KINDS), st.integers(0, 10_000)),
    min_size=1,
    max_size=40,
    unique_by=lambda e: e[2],
)


def result(task: str, n: int, kind: str, at: datetime) -> Result:
    if kind == "ack":
        return Result(task, "submitted", at, task_type="imageCaption")
    if kind == "error":
        return Result(task, "error", at, error_code=f"code-{at.microsecond}", error_message="failed")
    text, cost = (f"caption {n}", Decimal("0.0019")) if kind == "success" else (f"other {n}", Decimal("0.0021"))
    return Result(task, "success", at, text=text, cost=cost, task_type="imageCaption")


def expected(task_events: list[tuple[str, datetime, Result]]) -> dict:
    """The state the merge rule promises, computed without the database."""
    by_time = sorted(task_events, key=lambda e: e[1])
    successes = [r for kind, _, r in by_time if r.status == "success"]
    errors = [r for kind, _, r in by_time if r.status == "error"]
    winner = (successes or errors or [None])[0]
    return {
        "status": winner.status if winner else "submitted",
        "text": winner.text if winner else None,
        "cost": winner.cost if winner else None,
        "error_code": winner.error_code if winner else None,
        "conflict": len({(r.text, r.cost) for r in successes}) > 1,
        "delivery_count": len(task_events),
        "first_delivery_at": by_time[0][1],
        "last_delivery_at": by_time[-1][1],
    }


def stored_state(engine, ids: list[str]) -> dict[str, dict]:
    columns = [tasks.c[name] for name in ("task_uuid", "status", "text", "cost", "error_code", "conflict",
                                          "delivery_count", "first_delivery_at", "last_delivery_at")]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*columns).where(tasks.c.task_uuid.in_(ids))).mappings().all()
    out = {}
    for row in rows:
        state = dict(row)
        state["cost"] = None if state["cost"] is None else Decimal(state["cost"]).normalize()
        out[state.pop("task_uuid")] = state
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events, data=st.data())
def test_any_interleaving_converges(engine, events, data):
    ids = [str(uuid.uuid4()) for _ in range(4)]
    run = uuid.uuid4().hex[:8]
    deliveries = []
    per_task: dict[str, list] = {task: [] for task in ids}
    for n, (task_index, kind, offset) in enumerate(events):
        at = T0 + timedelta(microseconds=offset * 997)
        task = ids[task_index]
        r = result(task, task_index, kind, at)
        per_task[task].append((kind, at, r))
        deliveries.append(Delivery(f"{run}-{offset}-{n}", at, "127.0.0.1", 100, [r]))
        if data.draw(st.booleans(), label="duplicated"):
            again = at + timedelta(seconds=1)
            dup = result(task, task_index, kind, again)
            per_task[task].append((kind, again, dup))
            deliveries.append(Delivery(f"{run}-{offset}-{n}-dup", again, "127.0.0.1", 100, [dup]))

    order = data.draw(st.permutations(deliveries), label="processing order")
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=5), label="batch cuts"))
    batches = [order[i:j] for i, j in zip([0, *cuts], [*cuts, len(order)]) if order[i:j]]
    replayed = data.draw(st.sampled_from(batches), label="batch replayed after a crash")
    for batch in [*batches, replayed]:
        with engine.begin() as conn:
            save_deliveries(conn, batch)

    state = stored_state(engine, ids)
    for task, task_events in per_task.items():
        if not task_events:
            assert task not in state
            continue
        want = expected(task_events)
        if want["cost"] is not None:
            want["cost"] = want["cost"].normalize()
        assert state[task] == want, task_events

    spend = sum((s["cost"] for s in state.values() if s["status"] == "success"), Decimal(0))
    distinct = sum(
        (expected(e)["cost"] for e in per_task.values() if e and expected(e)["status"] == "success"), Decimal(0)
    )
    assert spend == distinct


AWKWARD_TEXT = "tab\there, newline\nthere, backslash \\ and \\N, quote ' \" , émoji 🐈, 中文, carriage\rreturn"


def test_text_and_numbers_are_stored_exactly(engine):
    """The bulk write path (a COPY on PostgreSQL) keeps every character and digit as sent."""
    task, at = str(uuid.uuid4()), datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    item = Result(task, "success", at, text=AWKWARD_TEXT, cost=Decimal("0.0000123456"),
                  task_type="imageCaption", model="runware:150@2")
    with engine.begin() as conn:
        save_deliveries(conn, [Delivery(f"x-{task}", at, "10.1.2.3", 321, [item])])
    with engine.connect() as conn:
        row = conn.execute(sa.select(tasks).where(tasks.c.task_uuid == task)).mappings().one()
        logged = conn.execute(sa.select(log_table).where(log_table.c.id == f"x-{task}")).mappings().one()
    assert (row["text"], Decimal(row["cost"]), row["model"], row["result_at"]) == (
        AWKWARD_TEXT, Decimal("0.0000123456"), "runware:150@2", at)
    assert (logged["items"][0]["text"], logged["remote_addr"], logged["size"]) == (AWKWARD_TEXT, "10.1.2.3", 321)


def test_a_rolled_back_batch_does_not_break_the_next(engine):
    """A batch written then rolled back leaves nothing, and the same connection writes the next one."""
    at = datetime(2026, 3, 4, tzinfo=UTC)
    first, second = (Result(str(uuid.uuid4()), "success", at, text="x", cost=Decimal("0.002")) for _ in range(2))
    with engine.connect() as conn:
        with conn.begin() as tx:
            save_deliveries(conn, [Delivery(f"rb-{first.task_uuid}", at, None, 1, [first])])
            tx.rollback()
        with conn.begin():
            save_deliveries(conn, [Delivery(f"rb-{second.task_uuid}", at, None, 1, [second])])
        stored = set(conn.scalars(sa.select(tasks.c.task_uuid).where(
            tasks.c.task_uuid.in_([first.task_uuid, second.task_uuid]))))
    assert stored == {second.task_uuid}


def test_two_merges_in_one_transaction_each_store_their_own_rows(engine):
    """A transaction may merge twice (a reconcile stores found results, then timeouts): the second merge
    sees none of the first one's staged rows (on PostgreSQL they stay in the staging table until commit)."""
    at = datetime(2026, 3, 4, tzinfo=UTC)
    first, second = (Result(str(uuid.uuid4()), "success", at, text=f"t{n}", cost=Decimal("0.002"))
                     for n in range(2))
    with engine.begin() as conn:
        apply_results(conn, [first])
        apply_results(conn, [second])
    with engine.connect() as conn:
        rows = conn.execute(sa.select(tasks.c.task_uuid, tasks.c.text, tasks.c.delivery_count).where(
            tasks.c.task_uuid.in_([first.task_uuid, second.task_uuid]))).all()
    assert sorted(rows) == sorted([(first.task_uuid, "t0", 1), (second.task_uuid, "t1", 1)])
