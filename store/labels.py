"""Reading task labels at scale: groups by the values of a key (`GET /api/stats?groupBy=`), the keys.

Labels are written with the results they came with (`store.results.merge_labels`);
a task's labels and the label filter of the list are read with the task (store/queries.py).
Groups come from the aggregates `label_task_hours` and `label_result_hours`
and their day rollups `label_task_days` and `label_result_days`: the rollups
for a window's whole days, the hourly tables for its other whole hours and the
base rows for its partial hours, as store/stats.py does for the totals (with
`combined`), so they equal a scan exactly; over all time they come from
`label_totals`, one row per value. The values are summed and ranked in
the database, which returns only the first few, with how many values there are
and the sum of them all: a key with very many values costs no more in Python
than one with few.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from dataclasses import field
from decimal import Decimal

import sqlalchemy as sa

from store.queries import Window
from store.schema import STATUSES
from store.schema import label_result_hours
from store.schema import label_task_hours
from store.schema import label_totals
from store.schema import label_values
from store.schema import task_labels
from store.schema import tasks
from store.stats import COST_QUANTUM
from store.stats import COST_SCALE
from store.stats import combined
from store.stats import cost_units
from store.stats import final

TOP_GROUPS = 50
"""Values of a key a groupBy lists one by one; the rest are summed as `other`."""


# -- groups -------------------------------------------------------------------------------------------


@dataclass
class Group:
    """Tasks with one value of a key: created in the window by status, and finished in it (spend, exact)."""

    value: str | None
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    successes: int = 0
    errors: int = 0
    cost_units: int = 0

    @property
    def tasks(self) -> int:
        return sum(self.by_status.values())

    @property
    def spend(self) -> Decimal:
        return Decimal(self.cost_units).scaleb(-COST_SCALE).quantize(COST_QUANTUM)

    def add(self, other: Group, sign: int = 1) -> None:
        for status, count in other.by_status.items():
            self.by_status[status] = self.by_status.get(status, 0) + sign * count
        self.successes += sign * other.successes
        self.errors += sign * other.errors
        self.cost_units += sign * other.cost_units

    def subtract(self, other: Group) -> None:
        self.add(other, -1)


def units(amount: Decimal) -> int:
    """An amount of USD in whole units of 1e-10 USD (as the aggregates sum cost)."""
    return int(amount.scaleb(COST_SCALE))


def _rows(window: Window, hourly: sa.Table, time: sa.Column, facts: dict, key: str, dialect: str, *where,
          name: str) -> sa.Subquery:
    """Rows (value, status, measures) of `key` from the aggregate `hourly` and its day rollup for the window's
    whole days and hours, UNION ALL the base rows (`facts` per task and label, in the CTE `name`) of its partial
    hours. On SQLite the base rows' key is matched as an expression: without statistics SQLite would read every
    label of the key through `ix_task_labels_key_value`, not the partial hours' tasks through their time index."""
    label = task_labels.c
    labelled = sa.cast(label.key, sa.Text) if dialect == "sqlite" else label.key
    return combined(window, hourly, lambda a, _: [a.value, a.status, *(a[name] for name in facts)], time,
                    {"value": label.value, "status": tasks.c.status, **facts},
                    lambda c: [c.value, c.status, *(c[name] for name in facts)],
                    label.task_uuid == tasks.c.task_uuid, labelled == key, *where,
                    kept=lambda a: [a.key == key], name=name)


MEASURES = (*STATUSES, "successes", "errors", "cost_units")
"""A group's figures, one column each in the ranking query: tasks created by status, finished, the spend."""


@dataclass
class Grouping:
    """A key's values in a window: the first ones (ranked), the sum of the rest, how many, the sum of all."""

    values: list[Group]
    other: Group | None
    distinct: int
    total: Group


def _per_value(conn: sa.Connection, key: str, window: Window) -> sa.Subquery:
    """One row per value of `key` with tasks created or finished in `window`: its MEASURES, `tasks` and
    `finished`; over all time from `label_totals`, one row per value."""
    if window.since is None and window.until is None:
        v = label_totals.c
        created_tasks = sum((v[s] for s in STATUSES[1:]), v[STATUSES[0]])
        finished_tasks = v.successes + v.errors
        return (sa.select(v.value, *(v[m] for m in MEASURES), created_tasks.label("tasks"),
                          finished_tasks.label("finished"))
                .where(v.key == key, sa.or_(created_tasks > 0, finished_tasks > 0)).subquery("per_value"))
    dialect = conn.dialect.name
    t = tasks.c
    created = _rows(window, label_task_hours, t.created_at, {"tasks": sa.literal(1, sa.BigInteger)}, key, dialect,
                    name="created_edges").c
    finished = _rows(window, label_result_hours, t.result_at,
                     {"tasks": sa.literal(1, sa.BigInteger), "cost_units": cost_units(t.cost, dialect)},
                     key, dialect, final(t.status, dialect), t.result_at.is_not(None), name="finished_edges").c
    zero = sa.literal(0, sa.BigInteger)
    success = finished.status == "success"
    rows = sa.union_all(
        sa.select(created.value, *(sa.case((created.status == s, created.tasks), else_=zero).label(s)
                                   for s in STATUSES), zero.label("successes"), zero.label("errors"),
                  zero.label("cost_units")),
        sa.select(finished.value, *(zero.label(s) for s in STATUSES),
                  sa.case((success, finished.tasks), else_=zero), sa.case((success, zero), else_=finished.tasks),
                  sa.case((success, finished.cost_units), else_=zero)),
    ).subquery("facts")
    sums = {m: sa.cast(sa.func.sum(rows.c[m]), sa.BigInteger) for m in MEASURES}
    created_tasks = sum((sums[s] for s in STATUSES[1:]), sums[STATUSES[0]])
    finished_tasks = sums["successes"] + sums["errors"]
    return (sa.select(rows.c.value, *(sum_.label(m) for m, sum_ in sums.items()),
                      created_tasks.label("tasks"), finished_tasks.label("finished"))
            .group_by(rows.c.value).having(sa.or_(created_tasks > 0, finished_tasks > 0)).subquery("per_value"))


def _group(value: str | None, figures) -> Group:
    """A group from its MEASURES, in that order."""
    return Group(value, dict(zip(STATUSES, figures[:len(STATUSES)], strict=True)), *figures[len(STATUSES):])


def grouping(conn: sa.Connection, key: str, window: Window = Window(), limit: int = TOP_GROUPS) -> Grouping:
    """The values of `key` in `window`: tasks created in it by status, and those finished in it with their spend.

    Ranked largest first (tasks created, then tasks finished, then the value by code point) in the database,
    which returns the first `limit` values, each with how many values there are and the sum of them all.
    """
    per = _per_value(conn, key, window)
    value = per.c.value.collate("C") if conn.dialect.name == "postgresql" else per.c.value
    every = [sa.func.count().over(), *(sa.cast(sa.func.sum(per.c[m]).over(), sa.BigInteger) for m in MEASURES)]
    rows = conn.execute(sa.select(per.c.value, *(per.c[m] for m in MEASURES), *every)
                        .order_by(per.c.tasks.desc(), per.c.finished.desc(), value).limit(limit)).all()
    if not rows:
        return Grouping([], None, 0, Group(None))
    width = len(MEASURES)
    values = [_group(row[0], row[1:1 + width]) for row in rows]
    distinct, total = rows[0][1 + width], _group(None, rows[0][2 + width:])
    other = None
    if distinct > len(values):
        other = Group(None)
        other.add(total)
        for shown in values:
            other.subtract(shown)
    return Grouping(values, other, distinct, total)


# -- keys ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """A label key: tasks carrying it, how many values it has, and its most frequent values with their tasks."""

    key: str
    tasks: int
    distinct_values: int
    values: list[tuple[str, int]]


def keys(conn: sa.Connection, per_key: int) -> list[Key]:
    """Every key (most tasks first) with its `per_key` most frequent values, from `label_values`."""
    v = label_values.c
    rank = sa.func.row_number().over(partition_by=v.key, order_by=(v.tasks.desc(), v.value)).label("rank")
    ranked = sa.select(v.key, v.value, v.tasks, rank).where(v.tasks > 0).subquery("ranked")
    totals = (sa.select(v.key, sa.cast(sa.func.sum(v.tasks), sa.BigInteger), sa.func.count())
              .where(v.tasks > 0).group_by(v.key))
    values: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for key, value, count, _ in conn.execute(sa.select(ranked).where(ranked.c.rank <= per_key)
                                             .order_by(ranked.c.key, ranked.c.rank)):
        values[key].append((value, count))
    found = [Key(key, int(count), distinct, values[key]) for key, count, distinct in conn.execute(totals)]
    return sorted(found, key=lambda k: (-k.tasks, k.key))
