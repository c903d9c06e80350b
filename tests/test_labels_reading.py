"""Reading labels: the filter, groupBy and the keys equal a full scan of the base rows exactly.

Random writes go through the service's own write paths (submissions with
labels, webhook batches with labels, polls), in random order, plus changes in
plain SQL (a label's value, a task deleted), so the label aggregates' triggers
on both tables see inserts, upserts, updates and deletes. Then, for random
windows, `store.labels.grouping` is compared with the same figures computed
here, in Python, from every row; so are the keys, the label filter of the list
and the `spend_by_label` view.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from store import labels
from store import queries
from store.migrate import downgrade
from store.migrate import upgrade
from store.queries import Window
from store.queries import list_tasks
from store.results import Delivery
from store.results import Result
from store.results import apply_results
from store.results import save_deliveries
from store.schema import DAYS
from store.schema import FINAL_STATUSES
from store.schema import STATUSES
from store.schema import label_result_days
from store.schema import label_task_days
from store.schema import label_totals
from store.schema import task_labels
from store.schema import tasks
from store.submissions import NewTask
from store.submissions import queue_tasks
from tests.conftest import clear
from tests.helpers import new_uuid
from tests.test_aggregates import START
from tests.test_aggregates import inside
from tests.test_aggregates import moments
from tests.test_aggregates import results
from tests.test_aggregates import windows

READ = {"Authorization": "Bearer read-token"}
KEYS = ("projectId", "userId")
VALUES = ("p1", "p2", "p\u00e9 3")

label_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)

operations = st.one_of(
    st.tuples(st.just("webhooks"), st.lists(st.tuples(moments, st.lists(results, max_size=3), label_sets),
                                            min_size=1, max_size=4)),
    st.tuples(st.just("poll"), st.lists(results, min_size=1, max_size=3)),
    st.tuples(st.just("submit"), st.sets(st.integers(6, 9), min_size=1), label_sets),
    st.tuples(st.just("relabel"), st.integers(0, 9), st.sampled_from(VALUES)),
    st.tuples(st.just("delete"), st.integers(0, 9)),
)


def task_uuid(n: int) -> str:
    return str(uuid.UUID(int=n + 1))


def apply(engine: sa.Engine, operation: tuple, n: int) -> None:
    kind, *args = operation
    with engine.begin() as conn:
        if kind == "webhooks":
            batch = [Delivery(f"{n}-{i}", at, None, 100, items, [], given)
                     for i, (at, items, given) in enumerate(args[0])]
            save_deliveries(conn, batch)
        elif kind == "poll":
            apply_results(conn, args[0], delivered=False)
        elif kind == "submit":
            chosen = [task_uuid(t) for t in sorted(args[0])]
            known = set(conn.scalars(sa.select(tasks.c.task_uuid).where(tasks.c.task_uuid.in_(chosen))))
            queue_tasks(conn, [NewTask(t, "https://example.com/cat.png", labels=args[1]) for t in chosen
                               if t not in known])
        elif kind == "relabel":  # plain SQL: the triggers keep the aggregates, not the application
            conn.execute(task_labels.update().where(task_labels.c.task_uuid == task_uuid(args[0]))
                         .values(value=args[1]))
        elif kind == "delete":
            conn.execute(tasks.delete().where(tasks.c.task_uuid == task_uuid(args[0])))


def scan(engine: sa.Engine, key: str, window: Window) -> dict:
    """Per value of `key`: tasks created in the window by status, finished ones and the successes' cost."""
    with engine.connect() as conn:
        pairs = conn.execute(sa.select(tasks, task_labels.c.value)
                             .join(task_labels, task_labels.c.task_uuid == tasks.c.task_uuid)
                             .where(task_labels.c.key == key)).all()
    found: dict[str, list] = {}
    for t in pairs:
        figures = found.setdefault(t.value, [Counter(), 0, 0, Decimal(0)])
        if inside(t.created_at, window):
            figures[0][t.status] += 1
        if t.status in FINAL_STATUSES and inside(t.result_at, window):
            figures[1 if t.status == "success" else 2] += 1
            if t.status == "success":
                figures[3] += Decimal(t.cost or 0)
    return {v: (+c, ok, bad, spend) for v, (c, ok, bad, spend) in found.items() if c or ok or bad}


def figures(group: labels.Group) -> tuple:
    return +Counter(group.by_status), group.successes, group.errors, group.spend


def summed(found: list[tuple]) -> tuple:
    return (sum((f[0] for f in found), Counter()), sum(f[1] for f in found), sum(f[2] for f in found),
            sum((f[3] for f in found), Decimal(0)))


def assert_grouped(engine: sa.Engine, key: str, window: Window) -> None:
    """Every value, ranked as the API ranks them (tasks, then finished tasks, then the value), the first two
    with the rest summed as `other`, and the sum of all, as a scan finds them."""
    expected = scan(engine, key, window)
    ranked = sorted(expected, key=lambda v: (-sum(expected[v][0].values()), -expected[v][1] - expected[v][2], v))
    with engine.connect() as conn:
        every = labels.grouping(conn, key, window, limit=len(expected) + 1)
        first = labels.grouping(conn, key, window, limit=2)
    assert [(g.value, figures(g)) for g in every.values] == [(v, expected[v]) for v in ranked]
    assert [(g.value, figures(g)) for g in first.values] == [(v, expected[v]) for v in ranked[:2]]
    assert every.other is None and every.distinct == first.distinct == len(ranked)
    rest = [expected[v] for v in ranked[2:]]
    assert (figures(first.other) if first.other else None) == (summed(rest) if rest else None)
    assert figures(every.total) == figures(first.total) == summed(list(expected.values()))


def assert_rolled_up(engine: sa.Engine) -> None:
    """No label outlives its task, each day rollup holds the sums of its hourly table's rows of that day, and
    `label_totals` those of the day rollups' rows of each label."""
    with engine.connect() as conn:
        assert not conn.execute(sa.select(task_labels).where(~sa.exists().where(
            tasks.c.task_uuid == task_labels.c.task_uuid))).all()
        for hourly, daily in DAYS.items():
            if "key" not in hourly.c:
                continue
            measures = [c.name for c in hourly.c if not c.primary_key]
            sums: dict[tuple, Counter] = {}
            for row in conn.execute(sa.select(hourly)).mappings():
                day = row["hour"].astimezone(UTC).replace(hour=0)
                counter = sums.setdefault((row["key"], day, row["value"], row["status"]), Counter())
                counter.update({m: row[m] for m in measures})
            rolled = {(r["key"], r["day"], r["value"], r["status"]): +Counter({m: r[m] for m in measures})
                      for r in conn.execute(sa.select(daily)).mappings()}
            assert {k: v for k, v in rolled.items() if v} == {k: +v for k, v in sums.items() if +v}, daily.name
        totals: dict[tuple, Counter] = {}
        for row in conn.execute(sa.select(label_task_days)):
            totals.setdefault((row.key, row.value), Counter())[row.status] += row.tasks
        for row in conn.execute(sa.select(label_result_days)):
            success = row.status == "success"
            totals.setdefault((row.key, row.value), Counter()).update(
                {"successes" if success else "errors": row.tasks, "cost_units": row.cost_units if success else 0})
        kept = {(r["key"], r["value"]): +Counter({m: r[m] for m in labels.MEASURES})
                for r in conn.execute(sa.select(label_totals)).mappings()}
        assert {k: v for k, v in kept.items() if v} == {k: +v for k, v in totals.items() if +v}


def assert_exact(engine: sa.Engine, chosen: list[Window]) -> None:
    assert_rolled_up(engine)
    for key in KEYS:
        for window in chosen:
            assert_grouped(engine, key, window)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(task_labels.c.key, task_labels.c.value)).all()
        keys = labels.keys(conn, per_key=2)
        for key, value in set(rows):  # the filter: exactly the tasks carrying the label
            page, _ = list_tasks(conn, labels={key: value}, limit=500)
            expected = {u for u, in conn.execute(sa.select(tasks.c.task_uuid).join(
                task_labels, task_labels.c.task_uuid == tasks.c.task_uuid).where(
                task_labels.c.key == key, task_labels.c.value == value))}
            assert {t["taskUUID"] for t in page} == expected
            assert all(t["labels"][key] == value for t in page)
    counts = Counter(rows)
    assert {k.key: k.tasks for k in keys} == dict(Counter(key for key, _ in rows))
    for k in keys:
        ranked = sorted(((v, n) for (key, v), n in counts.items() if key == k.key), key=lambda vn: (-vn[1], vn[0]))
        assert k.values == ranked[:2] and k.distinct_values == len(ranked)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operations, min_size=1, max_size=12), chosen=windows)
def test_groups_from_aggregates_equal_a_full_scan(database_url, ops, chosen):
    clear(database_url)
    engine = sa.create_engine(database_url)
    try:
        for n, operation in enumerate(ops):
            apply(engine, operation, n)
        assert_exact(engine, [Window(), *chosen])
    finally:
        engine.dispose()


def seed(engine: sa.Engine, count: int = 53) -> dict[str, str]:
    """Tasks with `count` values of projectId, value n on n + 1 successes costing 0.001 each; two unlabeled."""
    made = {}
    at = START + timedelta(minutes=30)
    batch = []
    for n in range(count):
        value = f"proj_{n:02d}"
        for i in range(n + 1):
            task = new_uuid()
            made[task] = value
            batch.append(Delivery(f"d-{n}-{i}", at, None, 10,
                                  [Result(task, "success", at, text="x", cost=Decimal("0.001"))],
                                  [], {"projectId": value, "userId": f"u{i % 3}"}))
    batch.append(Delivery("d-none", at, None, 10, [Result(new_uuid(), "error", at, error_code="failed")]))
    batch.append(Delivery("d-none-2", at, None, 10, [Result(new_uuid(), "success", at, text="y",
                                                            cost=Decimal("0.5"))]))
    with engine.begin() as conn:
        save_deliveries(conn, batch)
    return made


def test_group_by_lists_the_50_largest_then_other_then_unlabeled(client, engine):
    seed(engine)
    stats = client.get("/api/stats?groupBy=label.projectId", headers=READ).json
    groups = stats["groups"]
    assert groups["key"] == "projectId" and groups["distinctValues"] == 53
    values = groups["values"]
    assert [g["value"] for g in values] == [f"proj_{n:02d}" for n in range(52, 2, -1)]
    assert values[0]["tasks"] == {"total": 53, "byStatus": {**dict.fromkeys(STATUSES, 0), "success": 53}}
    assert values[0]["spend"]["exact"] == "0.0530000000" and values[0]["successRate"] == 1
    other = groups["other"]
    assert other["value"] is None and other["tasks"]["total"] == 1 + 2 + 3
    assert other["spend"]["exact"] == "0.0060000000"
    unlabeled = groups["unlabeled"]
    assert unlabeled["tasks"]["byStatus"]["error"] == 1 and unlabeled["tasks"]["total"] == 2
    assert unlabeled["spend"]["exact"] == "0.5000000000" and unlabeled["successRate"] == 0.5
    total = sum(g["tasks"]["total"] for g in values) + other["tasks"]["total"] + unlabeled["tasks"]["total"]
    assert total == stats["tasks"]["total"]
    spent = sum(Decimal(g["spend"]["exact"]) for g in [*values, other, unlabeled])
    assert spent == Decimal(stats["spend"]["exact"])
    window = client.get(f"/api/stats?groupBy=label.userId&since={(START + timedelta(hours=1)).isoformat()}"
                        .replace("+", "%2B"), headers=READ).json["groups"]
    # Created now, inside the window; finished at START + 30 min, before it.
    assert sum(g["tasks"]["total"] for g in window["values"]) == 53 * 54 // 2 and window["other"] is None
    assert {(g["spend"]["successes"], g["spend"]["exact"], g["successRate"]) for g in window["values"]} == {
        (0, "0.0000000000", None)}


def test_label_filters_combine_with_every_other_filter_and_page_by_cursor(client, engine):
    made = seed(engine, 8)
    chosen = {t for t, v in made.items() if v == "proj_07"}
    seen, cursor = [], None
    while True:
        answer = client.get("/api/tasks?label.projectId=proj_07&limit=3&status=success"
                            + (f"&cursor={cursor}" if cursor else ""), headers=READ).json
        seen += [t["taskUUID"] for t in answer["tasks"]]
        cursor = answer["nextCursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(chosen) and len(seen) == 8
    both = client.get("/api/tasks?label.projectId=proj_07&label.userId=u1&limit=500", headers=READ).json["tasks"]
    assert len(both) == 3 and all(t["labels"]["userId"] == "u1" for t in both)
    assert client.get("/api/tasks?label.projectId=proj_07&status=error", headers=READ).json["tasks"] == []
    assert client.get("/api/tasks?label.projectId=nope", headers=READ).json["tasks"] == []


def test_bad_label_parameters_are_400_naming_them(client):
    cases = {
        "/api/tasks?label.bad%20key=v": "label.bad key",
        "/api/tasks?label.projectId=a&label.projectId=b": "label.projectId",
        "/api/tasks?label.token=x": "label.token",
        "/api/tasks?labels.projectId=x": "labels.projectId",
        "/api/stats?groupBy=projectId": "groupBy",
        "/api/stats?groupBy=label.": "groupBy",
        "/api/labels?values=0": "values",
    }
    for path, parameter in cases.items():
        response = client.get(path, headers=READ)
        assert response.status_code == 400, path
        assert response.json["error"]["parameter"] == parameter, (path, response.json)
    assert client.get("/api/labels").status_code == 401


def test_the_keys_list_their_most_frequent_values(client, engine):
    seed(engine, 4)
    answer = client.get("/api/labels?values=2", headers=READ).json["labels"]
    assert answer == [
        {"key": "projectId", "tasks": 10, "distinctValues": 4,
         "values": [{"value": "proj_03", "tasks": 4}, {"value": "proj_02", "tasks": 3}]},
        {"key": "userId", "tasks": 10, "distinctValues": 3,
         "values": [{"value": "u0", "tasks": 5}, {"value": "u1", "tasks": 3}]},
    ]


def test_the_views_carry_labels_and_spend_by_label_sums_exactly(engine):
    made = seed(engine, 3)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT key, value, day, tasks, successes, errors, spend FROM spend_by_label "
                                    "ORDER BY key, value")).all()
        labelled = {r.task_uuid: r.labels for r in conn.execute(sa.text("SELECT task_uuid, labels FROM task_results"))}
        logged = conn.execute(sa.text("SELECT labels FROM delivery_log WHERE id = 'd-2-0'")).scalar()
    day = START.date().isoformat()
    assert [(r.key, r.value, str(r.day), r.tasks, r.successes, r.errors, Decimal(str(r.spend))) for r in rows] == [
        ("projectId", f"proj_{n:02d}", day, n + 1, n + 1, 0, Decimal("0.001") * (n + 1)) for n in range(3)
    ] + [("userId", f"u{i}", day, 3 - i, 3 - i, 0, Decimal("0.001") * (3 - i)) for i in range(3)]

    def as_dict(value):
        return value if isinstance(value, dict) else json.loads(value)

    assert {t: as_dict(v)["projectId"] for t, v in labelled.items() if t in made} == made
    assert [as_dict(v) for t, v in labelled.items() if t not in made] == [{}, {}]
    assert as_dict(logged) == {"projectId": "proj_02", "userId": "u0"}


def test_whole_days_are_read_from_the_day_rollups(engine):
    seed(engine, 3)
    read: list[str] = []

    def log(conn, cursor, statement, *_):
        read.append(statement)

    midnight = START.replace(hour=0)
    sa.event.listen(engine, "before_cursor_execute", log)
    try:
        with engine.connect() as conn:
            for window in (Window(midnight, midnight + timedelta(days=2)), Window(START, START + timedelta(hours=3))):
                read.clear()
                by_value = {g.value: g.successes for g in labels.grouping(conn, "projectId", window).values}
                assert by_value == {"proj_00": 1, "proj_01": 2, "proj_02": 3}
                days = "label_task_days" in read[0] and "label_result_days" in read[0]
                assert days == (window.until - window.since >= timedelta(days=1)), window  # START may be a midnight
    finally:
        sa.event.remove(engine, "before_cursor_execute", log)


def test_the_migration_rolls_up_an_existing_stores_labels_and_drops_orphans(database_url):
    """A store labelled before revision 0010, one task deleted there (its labels left behind), upgraded."""
    engine = sa.create_engine(database_url)
    try:
        downgrade(database_url, "0009")
        try:
            made = seed(engine, 4)
            with engine.begin() as conn:
                conn.execute(tasks.delete().where(tasks.c.task_uuid == next(iter(made))))
                orphans = conn.scalar(sa.select(sa.func.count()).select_from(task_labels).where(~sa.exists().where(
                    tasks.c.task_uuid == task_labels.c.task_uuid)))
            assert orphans == 2
        finally:
            upgrade(database_url)
        midnight = START.replace(hour=0)
        assert_exact(engine, [Window(midnight, midnight + timedelta(days=2)), Window(START, None)])
        with engine.connect() as conn:
            assert {k.key: k.tasks for k in labels.keys(conn, per_key=1)} == {"projectId": 9, "userId": 9}
    finally:
        engine.dispose()


def test_the_migration_totals_an_existing_stores_labels(database_url):
    """A store labelled before revision 0015, its labels and results changed there, upgraded: all time is read from
    `label_totals`, which holds what the day rollups hold."""
    engine = sa.create_engine(database_url)
    try:
        downgrade(database_url, "0013")
        try:
            made = list(seed(engine, 4))
            with engine.begin() as conn:
                conn.execute(task_labels.update().where(task_labels.c.task_uuid == made[0]).values(value="p1"))
                conn.execute(tasks.update().where(tasks.c.task_uuid == made[1]).values(status="error", cost=None))
                conn.execute(tasks.delete().where(tasks.c.task_uuid == made[2]))
        finally:
            upgrade(database_url)
        assert_exact(engine, [Window()])
    finally:
        engine.dispose()


@pytest.mark.parametrize("first", [0, 10**9])
def test_the_label_filter_pages_alike_walking_the_list_or_looking_the_tasks_up(client, engine, monkeypatch, first):
    monkeypatch.setattr(queries, "LABEL_FIRST", first)
    made = seed(engine, 12)
    for value, status in (("proj_11", "success"), ("proj_03", None)):
        seen, cursor = [], None
        while True:
            answer = client.get(f"/api/tasks?label.projectId={value}&limit=5" + (f"&status={status}" if status else "")
                                + (f"&cursor={cursor}" if cursor else ""), headers=READ).json
            seen += [t["taskUUID"] for t in answer["tasks"]]
            cursor = answer["nextCursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(t for t, v in made.items() if v == value)


def sqlite_plan(tmp_path, read, chosen) -> tuple:
    """On a SQLite store of its own (3 values of projectId): what `read(conn)` returns, and SQLite's plan of the
    statement `chosen(statements)` picks among those it ran, as (statement, parameters)."""
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    upgrade(url)
    engine = sa.create_engine(url)
    seed(engine, 3)
    statements: list[tuple] = []

    def log(conn, cursor, statement, parameters, *_):
        statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", log)
    try:
        with engine.connect() as conn:
            answer = read(conn)
    finally:
        sa.event.remove(engine, "before_cursor_execute", log)
    statement, parameters = chosen(statements)
    with engine.connect() as conn:
        plan = " ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
    engine.dispose()
    return answer, plan


def test_a_rare_label_is_looked_up_by_task_not_walked_for(tmp_path):
    """SQLite's plan (PostgreSQL's follows its statistics: on a table this small any plan is cheap), on a store of
    its own: the choice weighs the label's tasks against the table's highest rowid, which other tests move."""
    (page, _), plan = sqlite_plan(
        tmp_path, lambda conn: list_tasks(conn, labels={"projectId": "proj_02"}, statuses=("success",),
                                          after=(START + timedelta(days=9), "f"), limit=2),
        # the page: the statement that reads the tasks' rows (before it, the label's size and tasks; after it,
        # what the rows carry: their labels and thumbnails)
        lambda read: next((s, p) for s, p in read if s.startswith("SELECT tasks.task_uuid,")))
    assert len(page) == 2
    assert "SEARCH tasks USING INDEX sqlite_autoindex_tasks_1 (task_uuid=?)" in plan, plan


def test_a_windows_partial_hours_are_read_by_task_time_not_by_key(tmp_path):
    """SQLite's plan, on a store of its own: the base rows of a window's partial hours are the tasks created (or
    finished) in those hours, found through their time index, not every label of the key."""
    window = Window(START + timedelta(minutes=10), START + timedelta(hours=5, minutes=10))
    grouping, plan = sqlite_plan(tmp_path, lambda conn: labels.grouping(conn, "projectId", window),
                                 lambda read: read[0] if len(read) == 1 else pytest.fail(f"{len(read)} statements"))
    assert grouping.distinct == 3
    assert "ix_tasks_created (created_at>? AND created_at<?)" in plan, plan
    assert "ix_tasks_result (result_at>? AND result_at<?)" in plan, plan
    assert "ix_task_labels_key_value" not in plan, plan
