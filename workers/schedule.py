"""Periodic jobs, for RQ's cron scheduler as the project runs it: `python -m workers cron`.

That process (workers/__main__.py, `workers.maintenance.run_cron`) outlives
Redis outages. Run one scheduler per Redis: two would enqueue every job twice,
harmless here but wasteful. It imports this module by its dotted name (its
`--schedule` default; from the current directory, which must be the repository
root), and registers the jobs below with RQ's default serializer (pickle), the
one the workers use.

- `workers.reconcile.reconcile` (submit queue, every `RECONCILE_INTERVAL_SECONDS`,
  default 30): polls overdue tasks, times out the late, restarts submission;
- `workers.maintenance.sweep` (persist queue, every `SWEEP_INTERVAL_S`): enqueues
  a drain for deliveries nobody is draining;
- `workers.maintenance.cleanup` (persist queue, hourly): delivery-log retention.
"""

from __future__ import annotations

from rq import cron

from config import Config
from workers.maintenance import SWEEP_INTERVAL_S
from workers.maintenance import cleanup
from workers.maintenance import sweep
from workers.queues import PERSIST_QUEUE
from workers.queues import SUBMIT_QUEUE
from workers.reconcile import RECONCILE_JOB_TIMEOUT
from workers.reconcile import reconcile

config = Config.from_env()

cron.register(reconcile, SUBMIT_QUEUE, interval=config.reconcile_interval_seconds,
              job_timeout=RECONCILE_JOB_TIMEOUT, result_ttl=600, failure_ttl=7 * 86400)
cron.register(sweep, PERSIST_QUEUE, interval=SWEEP_INTERVAL_S, job_timeout=60, result_ttl=60,
              failure_ttl=7 * 86400)
cron.register(cleanup, PERSIST_QUEUE, cron="17 * * * *", job_timeout=3600, result_ttl=3600,
              failure_ttl=7 * 86400)
