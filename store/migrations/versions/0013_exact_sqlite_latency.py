"""exact SQLite latencies: the latency histograms' triggers parse whole seconds without rounding

SQLite's `strftime('%s', t)`, which revision 0004's triggers used for the whole
seconds of a time, rounds `t` to the millisecond first: a time at .9995 s or
later gave the next second, and with its microseconds added again a latency
came out up to a second too long (about one time in 2,000), enough to move it
into the next histogram bucket. The seconds are now taken from the time's first
19 characters, which carry no fraction. The triggers of `result_hours` and
`delivery_hours` are made anew with that definition, and both aggregates (and,
through their triggers, their day rollups) rebuilt from the rows. PostgreSQL's
interval arithmetic was exact: nothing changes there.

Revision ID: 0013
Revises: 0012
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def _aggregates_0004():
    """A private instance of revision 0004's definitions and trigger builders (frozen)."""
    spec = importlib.util.spec_from_file_location('aggregates_0013', Path(__file__).with_name('0004_aggregates.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exact_micros_between(start, end, dialect: str):
    """Whole microseconds from `start` to `end` (SQLite text times): seconds from the text before the fraction."""
    def micros(t):
        seconds = sa.func.unixepoch(sa.func.substr(t, 1, 19)) * sa.literal(1_000_000, sa.BigInteger)
        return seconds + sa.cast(sa.func.substr(t, 21, 6), sa.BigInteger)
    return micros(end) - micros(start)


LATENCY_AGGREGATES = {'result_hours': ('result_days', 'tasks'), 'delivery_hours': ('delivery_days', 'deliveries')}
"""The aggregates with a latency histogram: (their day rollup, their base table)."""


def rebuild(aggregates) -> None:
    """Make the latency aggregates' SQLite triggers from `aggregates` (0004's module) and refill the aggregates."""
    for name, (days, table) in LATENCY_AGGREGATES.items():
        for event in ('insert', 'update', 'delete'):
            op.execute(f'DROP TRIGGER {name}_{event}')
        for statement in aggregates.sqlite_triggers(name):
            op.execute(statement)
        # The hourly rows' delete triggers take them out of the day rollup, which is then empty.
        op.execute(f'DELETE FROM {name}')
        op.execute(f'DELETE FROM {days}')
        rows = aggregates.signed(aggregates.base(table), 1).subquery('rows')
        op.execute(aggregates.sql(aggregates.upsert(name, rows, 'sqlite'), 'sqlite'))


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        aggregates = _aggregates_0004()
        aggregates.micros_between = exact_micros_between
        rebuild(aggregates)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        rebuild(_aggregates_0004())
