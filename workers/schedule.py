"""Periodic jobs, for RQ's cron scheduler as the project runs it: `python -m workers cron`.

That process (workers/__main__.py, `workers.maintenance.run_cron`) outlives
Redis outages. Run one scheduler per Redis: two would enqueue every job twice,
harmless here but wasteful. It imports this module by its dotted name (its
`--schedule` default; from the current directory, which must be the repository
root), and registers the jobs below with RQ's default serializer (pickle), the
one the workers use.

Background work runs on the maintenance queue, served by its own worker
(`python -m workers maintenance`), in bounded slices that enqueue the next
slice while work remains, so a backlog never holds up submission or the drains:

- `workers.reconcile.reconcile` (maintenance queue, every `RECONCILE_INTERVAL_SECONDS`,
  default 30): polls overdue tasks, times out the late, restarts submission;
- `workers.maintenance.cleanup` (maintenance queue, hourly): delivery-log retention;
- `workers.maintenance.sweep` (persist queue, every `SWEEP_INTERVAL_S`): enqueues
  a drain for deliveries nobody is draining. It stays there: it costs a few
  Redis commands, and a rescue must not wait behind a slice of background work.
"""

from __future__ import annotations

from rq import cron

from config import Config
from workers.maintenance import CLEANUP_JOB_OPTIONS
from workers.maintenance import SWEEP_INTERVAL_S
from workers.maintenance import cleanup
from workers.maintenance import sweep
from workers.queues import MAINTENANCE_QUEUE
from workers.queues import PERSIST_QUEUE
from workers.reconcile import RECONCILE_JOB_OPTIONS
from workers.reconcile import reconcile

config = Config.from_env()

cron.register(reconcile, MAINTENANCE_QUEUE, interval=config.reconcile_interval_seconds,
              **RECONCILE_JOB_OPTIONS)
cron.register(sweep, PERSIST_QUEUE, interval=SWEEP_INTERVAL_S, job_timeout=60, result_ttl=60,
              failure_ttl=7 * 86400)
cron.register(cleanup, MAINTENANCE_QUEUE, cron="17 * * * *", **CLEANUP_JOB_OPTIONS)
