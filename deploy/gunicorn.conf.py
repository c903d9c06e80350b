"""gunicorn settings for both kinds of web process: `APP_KIND=intake|api gunicorn -c deploy/gunicorn.conf.py`.

APP_KIND picks the app (`wsgi:intake`, webhook receipt; `wsgi:app`, the readers;
an app named on the command line wins) and the process name. The two run as separate
gunicorns so that no reader can occupy the workers that answer webhooks; nginx
sends /webhooks/ to the intake and the rest to the api (deploy/nginx.conf).

Read from the environment: APP_KIND (default api), HOST and PORT (default
127.0.0.1:8000; the Procfile and the systemd units pass --bind instead),
WEB_CONCURRENCY (worker processes, default 2 * cores + 1), WEB_THREADS (threads per
intake worker, default 8), LOG_LEVEL (default info),
API_NICE (the api workers' CPU niceness, default 10).

Bounded reads: the api's workers are sync, one request each, and at most
READ_CONCURRENCY of them hold a database connection at once on the host
(receiver/read_budget.py, however many api gunicorns there are); each request's
database work is cancelled after READ_TIMEOUT_MS (config.py, default 5 s; at
most twice that on PostgreSQL, see store/db.py) and answered 503 with
Retry-After, well before the 30 s worker timeout below could kill it unanswered.

Webhook senders put their token in the query string (`/webhooks/runware?token=...`
or `?apiKey=...`) or in a header, so no log line written by gunicorn may contain a query string:

- the access log format below uses the path alone (`%(U)s`), never the request
  line (`%(r)s`, which gunicorn's default format uses) or the query (`%(q)s`);
- gunicorn's error log quotes the raw request line or URI when a request is
  malformed or the app raises ("Invalid HTTP request line: 'GET /x?token=...'",
  "Error handling request POST /x?token=..."), so `RedactingLogger` strips query
  strings, `token=` and `apiKey=` values (any case) and the values of the headers
  that may carry the secret (`Authorization`, `X-API-Key`, a `Bearer ...`) from
  every error and access log record, tracebacks included. The access log names
  no header but X-Forwarded-For.

Every line is one JSON object, or a short line with LOG_FORMAT=console (logs.py):
gunicorn's error and access logs, and the app's own loggers, which propagate to the
root logger configured here.

Metrics: PROMETHEUS_MULTIPROC_DIR is where every process keeps its Prometheus
counters for `/metrics` to add up (receiver/metrics.py). Give the web and worker
processes of a host the same directory, emptied before they start; when it is
not set, gunicorn uses a private temporary one (removed at exit), and `/metrics`
then shows the web workers' counters only.
"""

import logging
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from gunicorn.glogging import Logger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import logs  # noqa: E402  (the project's log formats)

KINDS = {"intake": "wsgi:intake", "api": "wsgi:app"}
"""APP_KIND -> the app it serves."""

kind = os.environ.get("APP_KIND", "api")
if kind not in KINDS:
    raise SystemExit(f"APP_KIND must be one of {', '.join(KINDS)}, not {kind!r}")
wsgi_app = KINDS[kind]

# Where and how many. The intake's workers are threaded (`gthread`, WEB_THREADS threads
# each): the webhooks a worker serves at once share one Redis round trip, so one fsync
# (receiver/group_commit.py), and a worker waiting for Redis reads and checks other
# webhooks meanwhile. The api's are `sync` workers, one request at a time, which bounds
# the reads running at once. Both rely on the buffering proxy in front
# (deploy/nginx.conf) to absorb slow clients: a trickling client holds a sync worker
# until `timeout` below, and an intake thread until it has sent its request.
bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY") or 2 * multiprocessing.cpu_count() + 1)
worker_class = "gthread" if kind == "intake" else "sync"
threads = int(os.environ.get("WEB_THREADS") or 8) if kind == "intake" else 1
proc_name = f"captions-{kind}"

# Readers yield the CPU to webhook receipt: on a host both share, a busy api worker
# at niceness 10 gets about a tenth of the time of a busy intake worker (API_NICE,
# default 10; 0 turns it off). Their work inside PostgreSQL is not affected.
api_nice = int(os.environ.get("API_NICE", "10"))

# Time limits. A webhook request only validates and queues, and a reader's
# database work is cancelled after READ_TIMEOUT_MS, so 30 s is generous for both.
# (A threaded worker is killed at `timeout` only when its main loop stalls, not for
# one slow request.)
timeout = 30
graceful_timeout = 30
keepalive = 2

# Recycle workers now and then to contain slow leaks; the jitter keeps them from
# restarting all at once.
max_requests = 5000
max_requests_jitter = 500

# Import the app once, in the master: a worker (first, or recycled by
# max_requests) starts by forking instead of importing everything again, and
# the workers share those pages. Clients (Redis, SQLAlchemy) connect lazily, in
# each worker. Reload code with a new master (USR2), not HUP.
preload_app = True

# Request size limits (the body limit is MAX_BODY_BYTES, enforced by the app and by nginx).
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190

# Worker heartbeat files in memory, not on a possibly slow or full disk (containers).
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# gunicorn's control socket (for `gunicornc`) defaults to one path per user,
# shared by every gunicorn that user runs (the test suite starts several): off
# unless GUNICORN_CONTROL_SOCKET names a path of its own.
if os.environ.get("GUNICORN_CONTROL_SOCKET"):
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]
else:
    control_socket_disable = True

# Logs go to stdout/stderr for the process manager (systemd journal, docker, honcho).
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# Remote address, time, method, PATH ONLY (no query string: it carries the token),
# status, response bytes, duration in ms, and the proxy's X-Forwarded-For.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms fwd=%({x-forwarded-for}i)s'

_QUERY = re.compile(r"(?<=\S)\?[^\s'\"]+")
_TOKEN = re.compile(r"((?:token|apikey)=)[^&\s'\"]+", re.IGNORECASE)
_SECRET_HEADER = re.compile(r"((?:authorization|x-api-key)['\"]?(?:\s*[:=,]\s*|\s+)['\"]?)[^'\"\r\n]+",
                            re.IGNORECASE)
_BEARER = re.compile(r"(bearer\s+)[^\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """Remove query strings, `token=` and `apiKey=` values and the secret headers' values from a log message."""
    text = _TOKEN.sub(r"\1[redacted]", _QUERY.sub("?[redacted]", text))
    return _BEARER.sub(r"\1[redacted]", _SECRET_HEADER.sub(r"\1[redacted]", text))


class RedactQueryStrings(logging.Filter):
    """Rewrite each record so that neither its message nor its traceback holds a query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class RedactingLogger(Logger):
    """gunicorn's logger with `RedactQueryStrings` on both the error and the access log."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            if not any(isinstance(f, RedactQueryStrings) for f in log.filters):
                log.addFilter(RedactQueryStrings())
            logs.route(log)


logger_class = RedactingLogger
logs.configure(loglevel)

# Prometheus multiprocess mode (see the module docstring). Set before the app is
# imported, which happens in the workers, after this file has run in the master.
_private_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _private_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="captions-metrics-")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def on_starting(server):
    if _private_metrics_dir:
        server.log.warning("PROMETHEUS_MULTIPROC_DIR is not set: /metrics shows the web workers' counters only")


def post_fork(server, worker):
    if kind == "intake":
        from receiver import body_deadline

        body_deadline.SECONDS = server.cfg.timeout  # a thread is not cut off at `timeout`: its body is
    if kind == "api" and api_nice:
        os.nice(api_nice)
    if kind == "api":
        from receiver import exports

        exports.keep_alive = worker.notify  # a long export is alive while chunks flow (receiver/exports.py)


def worker_exit(server, worker):
    """The worker's last step, after its requests: close its database connections, flush its logs, and end
    without the interpreter's teardown, which takes a second or more of a niced worker's CPU at every stop
    and restart. The exit status stays the one gunicorn chose (its boot and app-load errors stop the master)."""
    from store.db import dispose_engines

    status = sys.exc_info()[1]
    code = status.code if isinstance(status, SystemExit) else 1
    dispose_engines()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


def child_exit(server, worker):
    """A worker is gone: drop its live gauges from the aggregate (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _private_metrics_dir:
        shutil.rmtree(_private_metrics_dir, ignore_errors=True)
