"""How far behind its primary the store a reader reads is (DATABASE_READ_URL: a PostgreSQL streaming replica)."""

from __future__ import annotations

import sqlalchemy as sa

LAG = sa.text(
    "SELECT pg_is_in_recovery(), CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END"
)
"""Whether the server replays a primary's WAL and, if it does, the seconds since the last transaction it replayed
while it has received more (0 when it has replayed all it received: an idle primary makes no lag)."""


def replica_lag(conn: sa.Connection) -> float | None:
    """Seconds the store read through `conn` lags its primary; None when it is no replica (a primary, SQLite)."""
    if conn.dialect.name != "postgresql":
        return None
    recovering, lag = conn.execute(LAG).one()
    return max(0.0, float(lag or 0)) if recovering else None
