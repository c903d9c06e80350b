"""The reporting views of migration 0002: the numbers of `/api/stats`, and docs/sql.md column for column."""

from __future__ import annotations

import re
import uuid
from datetime import date
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from store.migrate import downgrade
from store.migrate import upgrade
from store.schema import metadata
from store.schema import tasks
from tests import reporting_data as data
from tests.reporting_data import UUID
from tests.reporting_data import at
from tests.support import ROOT
from tests.test_stats import stats

DOC = ROOT / "docs" / "sql.md"
VIEWS = ("task_results", "daily_spend", "delivery_log", "spend_by_label")
TEN_PLACES = Decimal("1e-10")


def rows(engine: sa.Engine, sql: str) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).all()


def exact(value) -> str:
    """A view's spend (numeric on PostgreSQL, REAL on SQLite) as the API's exact string."""
    return format(Decimal(str(value)).quantize(TEN_PLACES), "f")


def test_daily_spend_has_the_rows_of_stats_by_day(client, store):
    view = rows(store, "SELECT day, tasks, successes, errors, spend FROM daily_spend ORDER BY day")
    api = stats(client)["spend"]["byDay"]
    assert [(str(r.day), r.tasks, r.successes, r.errors, exact(r.spend)) for r in view] == [
        (d["day"], d["tasks"], d["successes"], d["errors"], d["exact"]) for d in api
    ]
    assert len(view) == 2
    # Day by day, the one-day window of the API says the same.
    for r in view:
        day = date.fromisoformat(str(r.day))
        one_day = stats(client, since=day.isoformat(), until=(day + timedelta(days=1)).isoformat())
        assert one_day["spend"]["exact"] == exact(r.spend)
        assert one_day["spend"]["byDay"][0]["tasks"] == r.tasks


def test_task_results_add_up_to_the_stats(client, store):
    body = stats(client)
    by_status = dict(rows(store, "SELECT status, count(*) FROM task_results GROUP BY status"))
    by_source = dict(rows(store, "SELECT source, count(*) FROM task_results GROUP BY source"))
    assert by_status == {k: v for k, v in body["tasks"]["byStatus"].items() if v}
    assert by_source == {k: v for k, v in body["tasks"]["bySource"].items() if v}
    [(spend, successes)] = rows(store, "SELECT sum(cost), count(*) FROM task_results WHERE status = 'success'")
    assert exact(spend) == body["spend"]["exact"] and successes == body["spend"]["successes"]
    [(conflicts,)] = rows(store, "SELECT count(*) FROM task_results WHERE conflict")
    assert conflicts == body["tasks"]["conflicts"]
    [(average,)] = rows(store, "SELECT avg(delivery_count) FROM task_results WHERE delivery_count > 0")
    assert round(float(average), 6) == body["tasks"]["averageDeliveries"]
    waiting = rows(store, "SELECT task_uuid FROM task_results WHERE status = 'submitted' ORDER BY submitted_at")
    assert len(waiting) == body["waiting"]["count"]
    assert waiting[0].task_uuid == body["waiting"]["oldest"]["taskUUID"]
    [(total,)] = rows(store, "SELECT sum(spend) FROM daily_spend")
    assert exact(total) == body["spend"]["exact"]


def test_task_results_columns(store):
    found = {r.task_uuid: r for r in rows(store, "SELECT * FROM task_results")}
    assert len(found) == len(data.TASKS)
    b, c, i, a, f = (found[UUID[n]] for n in "BCIAF")
    assert float(b.latency_seconds) == 3600.0            # 23:00 to 23:59:59.999999, to the millisecond
    assert float(c.latency_seconds) == 1800.0
    assert a.latency_seconds is None and f.latency_seconds is None
    assert str(i.result_day) == "2026-03-02"             # 01:30+02:00 on 3 March is 2 March in UTC
    assert str(b.result_day) == "2026-03-01"
    assert f.result_day is None
    assert bool(a.is_final) and not bool(f.is_final)
    assert a.text == data.XSS_TEXT
    assert bool(c.conflict)


def test_delivery_log_leaves_out_address_and_body(client, store):
    found = rows(store, "SELECT * FROM delivery_log ORDER BY received_at")
    assert list(found[0]._fields) == ["id", "received_at", "stored_at", "size", "outcome", "item_count", "detail",
                                     "labels"]
    assert [(r.id, r.item_count, r.outcome) for r in found] == [
        ("d1", 1, "stored"), ("d2", 2, "partial"), ("d3", 0, "rejected"), ("d4", 3, "stored")]
    by_outcome = dict(rows(store, "SELECT outcome, count(*) FROM delivery_log GROUP BY outcome"))
    assert by_outcome == {k: v for k, v in stats(client)["deliveries"]["byOutcome"].items() if v}


def test_daily_spend_is_exact(client, engine):
    """1000 × 0.1 + 1e-10 USD: exact numeric on PostgreSQL, the closest REAL on SQLite."""
    rows_ = [
        {"task_uuid": str(uuid.UUID(int=n)), "status": "success", "source": "external",
         "cost": Decimal("0.0000000001") if n == 1000 else Decimal("0.1"), "result_at": at(1, 12),
         "created_at": at(1, 12), "updated_at": at(1, 12), "delivery_count": 1, "conflict": False}
        for n in range(1001)
    ]
    with engine.begin() as conn:
        conn.execute(tasks.insert(), rows_)
    [(spend,)] = rows(engine, "SELECT spend FROM daily_spend")
    if engine.dialect.name == "postgresql":
        assert spend == Decimal("100.0000000001")
    else:
        assert spend == float("100.0000000001")
    assert stats(client)["spend"]["exact"] == "100.0000000001"


def test_migration_down_and_up_again(database_url, engine):
    inspector = sa.inspect(engine)
    assert set(VIEWS) <= set(inspector.get_view_names())
    try:
        downgrade(database_url, "0001")
        inspector = sa.inspect(engine)
        assert not set(VIEWS) & set(inspector.get_view_names())
        assert "ix_tasks_updated" not in {i["name"] for i in inspector.get_indexes("tasks")}
    finally:
        upgrade(database_url)
    inspector = sa.inspect(engine)
    assert set(VIEWS) <= set(inspector.get_view_names())
    assert "ix_tasks_updated" in {i["name"] for i in inspector.get_indexes("tasks")}


# --- docs/sql.md ------------------------------------------------------------------------------


def documented_columns() -> dict[str, list[str]]:
    """Column names of each "### `name`" section's table in docs/sql.md."""
    sections = re.split(r"^### `(\w+)`$", DOC.read_text(), flags=re.MULTILINE)
    return {
        name: re.findall(r"^\| `(\w+)` \|", body.split("\n## ")[0], flags=re.MULTILINE)
        for name, body in zip(sections[1::2], sections[2::2])
    }


def test_docs_describe_every_view_and_table_column(engine):
    documented = documented_columns()
    actual = {name: [c.name for c in table.columns] for name, table in metadata.tables.items()}
    actual["alembic_version"] = ["version_num"]
    with engine.connect() as conn:
        for view in VIEWS:
            nothing = sa.select(sa.literal_column("*")).select_from(sa.table(view)).where(sa.false())
            actual[view] = list(conn.execute(nothing).keys())
    for name, columns in actual.items():
        assert documented.get(name) == columns, f"docs/sql.md: update the columns of {name}"
    assert set(documented) == set(actual)


@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_docs_example_queries_run_on_postgresql(store):
    examples = re.findall(r"^```sql\n(.*?)^```", DOC.read_text(), flags=re.MULTILINE | re.DOTALL)
    assert len(examples) >= 5
    with store.connect() as conn:
        for sql in examples:
            conn.execute(sa.text(sql)).all()
