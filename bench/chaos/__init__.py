"""The chaos run (`make chaos`): the whole stack under load and faults while processes are killed at random.

Everything is private to the run, in a scratch folder:

- redis-server with `deploy/redis.conf` (append-only file, fsync always), killed with SIGKILL and
  started again on the same data and port;
- the store: a fresh PostgreSQL database, dropped at the end (SQLite when no server answers, or
  with `--database sqlite`);
- the intake's and the api's gunicorn with `deploy/gunicorn.conf.py`; their workers are killed and
  their masters replace them;
- persist, submit and maintenance workers (`python -m workers persist|submit|maintenance`) and the cron process
  (`python -m workers cron`: reconcile, the drain sweep, retention), each started again a moment
  after it dies, as systemd's `Restart=always` would;
- the Runware emulator with its faults on: duplicate and reordered webhooks, failed webhook
  attempts, 429 and 503 answers, task errors, dropped webhooks.

Load, for `--duration` seconds: a submitter posts images to `POST /api/captions` in batches, and
a sender posts webhook results for tasks this service never submitted (source external); both
retry until they get a 2xx, as a client and Runware do. Meanwhile a killer picks, every
`--kill-every` seconds on average, one of: a persist work horse (mid-job) or a whole persist
worker, a submit worker, a gunicorn worker, the cron process, or Redis (down 0.5 to 5 s).

Then the killer stops, everything is brought up, and the run waits for the stack to settle: the
stream drained, the emulator idle, every task final. The ledger accounts for:

- every task submitted (answered 202), and every task stored as submitted although its 202 was
  lost (the request was cut after the commit): stored exactly once with the emulator's caption and
  cost, or failed with a reason (Runware's error code, or `timeout` from reconciliation);
- every acknowledged delivery: each webhook attempt the emulator saw answered 2xx, and each 2xx
  the sender got, is in the delivery log, and each task counts each of its logged deliveries once.

`lost`: an acknowledged task or delivery missing from the store, or a task never settled.
`doubled`: a task counting a delivery twice, more deliveries logged than ever reached the
service, or a stored result that differs from the emulator's (a cost added up twice, say).
The exit status is 1 if either is not zero.

    python -m bench.chaos                 # about 3 minutes of chaos, then the settling
    python -m bench.chaos --quick         # 30 s, lighter load
    python -m bench.chaos --duration 600 --seed 7 --keep
    python -m bench.chaos --scenario outage   # the store out until Redis is full, then back (outage.py)

Modules: `stack` (the processes and their supervisor), `load` (the clients and the
killer), `ledger` (the accounting), `outage` (the outage-until-full scenario), and
`__main__` (the runs).
"""
from bench.chaos.ledger import Ledger
from bench.chaos.ledger import balance

__all__ = ["Ledger", "balance"]
