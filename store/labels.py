"""Reading task labels at scale: groups by the values of a key (`GET /api/stats?groupBy=`), the keys.

Labels are written with the results they came with (`store.results.merge_labels`);
a task's labels and the label filter of the list are read with the task (store/queries.py).
Groups come from the aggregates `label_task_hours` and `label_result_hours`
and their day rollups `label_task_days` and `label_result_days`: the rollups
for a window's whole days, the hourly tables for its other whole hours and the
base rows for its partial hours, as store/stats.py does for the totals (with
`combined`), so they equal a scan exactly.
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


def _rows(window: Window, hourly: sa.Table, time: sa.Column, facts: dict, key: str, *where) -> sa.Subquery:
    """Rows (value, status, measures) of `key` from the aggregate `hourly` and its day rollup for the window's
    whole days and hours, UNION ALL the base rows (`facts` per task and label) of its partial hours."""
    label = task_labels.c
    return combined(window, hourly, lambda a, _: [a.value, a.status, *(a[name] for name in facts)], time,
                    {"value": label.value, "status": tasks.c.status, **facts},
                    lambda c: [c.value, c.status, *(c[name] for name in facts)],
                    label.task_uuid == tasks.c.task_uuid, label.key == key, *where,
                    kept=lambda a: [a.key == key])


def groups(conn: sa.Connection, key: str, window: Window = Window()) -> list[Group]:
    """Every value of `key`: tasks created in `window` by status, and those finished in it with their spend.

    Largest first (tasks created, then tasks finished, then the value).
    """
    dialect = conn.dialect.name
    t = tasks.c
    found: dict[str, Group] = {}
    created = _rows(window, label_task_hours, t.created_at, {"tasks": sa.literal(1, sa.BigInteger)}, key)
    query = sa.select(created.c.value, created.c.status, sa.cast(sa.func.sum(created.c.tasks), sa.BigInteger))
    for value, status, count in conn.execute(query.group_by(created.c.value, created.c.status)):
        if count:
            group = found.setdefault(value, Group(value))
            group.by_status[status] += count
    finished = _rows(window, label_result_hours, t.result_at,
                     {"tasks": sa.literal(1, sa.BigInteger), "cost_units": cost_units(t.cost, dialect)},
                     key, final(t.status, dialect), t.result_at.is_not(None))
    c = finished.c
    query = sa.select(c.value, c.status, *(sa.cast(sa.func.sum(x), sa.BigInteger) for x in (c.tasks, c.cost_units)))
    for value, status, count, units in conn.execute(query.group_by(c.value, c.status)):
        if count:
            group = found.setdefault(value, Group(value))
            if status == "success":
                group.successes += count
                group.cost_units += units
            else:
                group.errors += count
    return sorted(found.values(), key=lambda g: (-g.tasks, -(g.successes + g.errors), g.value))


def top(all_groups: list[Group], limit: int = TOP_GROUPS) -> tuple[list[Group], Group | None]:
    """The first `limit` groups and the sum of the rest as `other` (None when there is no rest)."""
    if len(all_groups) <= limit:
        return all_groups, None
    other = Group(None)
    for group in all_groups[limit:]:
        other.add(group)
    return all_groups[:limit], other


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
