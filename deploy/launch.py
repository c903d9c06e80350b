"""Run the whole service locally: `make run` (or `python deploy/launch.py`).

1. Development settings: APP_ENV=development unless set; the webhook, read and
   submit tokens are generated once into var/secrets.env (mode 0600) and reused.
2. Redis: unless REDIS_URL or REDIS_SENTINELS is set, a private redis-server (deploy/redis.conf,
   append-only file under var/redis/) on a free loopback port.
3. Runware: unless RUNWARE_API_KEY is set, the local emulator stands in for it.
4. Migrations: `python -m store upgrade`.
5. The processes of deploy/Procfile (intake, api, persist, submit, maintenance,
   cron), the emulator and a private nginx, under one supervisor that prefixes
   each output line with its process.
6. Once both gunicorns answer /readyz: the samples are captioned, then `banner(env)` says how to use the stack.

One URL for everything (HOST:PORT, default 127.0.0.1:8000): the private nginx
(deploy/nginx.local.conf, rendered into var/nginx/) sends /webhooks/ to the
intake's gunicorn and the rest to the api's, each on a free loopback port, as
production's nginx does. Where nginx cannot be found, the launcher says so, the
api takes HOST:PORT, the intake a port of its own, and both URLs are printed.

In development the processes log short lines (LOG_FORMAT=console, logs.py), the
libraries' chatter going to var/log/service.log only; the samples are captioned
once the stack is ready, and the banner (URLs, tokens, next steps) comes last.

Stopping. Ctrl-C or SIGTERM asks every process to stop (SIGTERM to its group: RQ's
warm shutdown, gunicorn's graceful one); whatever still runs after STOP_WARM_S gets
SIGTERM again (RQ's cold shutdown: the job in hand is killed), and after STOP_COLD_S
more, every process left in its session gets SIGKILL; then the private redis-server
stops. Each Ctrl-C after the first takes the next step at once. Ctrl-C ends with exit
status 0, SIGTERM with 143. Every process the launcher starts leads a session of its
own, and a guard process (`Guard`) kills those sessions if the launcher itself dies
without stopping them (SIGKILL, a crash). The launcher takes the terminal's
foreground in a process group of its own, so Ctrl-C reaches it and not `make`.

`python deploy/launch.py migrate` does steps 1 and 4 only (`make migrate`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import queue
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from honcho.environ import parse_procfile
from honcho.manager import SIGNALS
from honcho.manager import Manager
from rq import Queue

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import logs  # noqa: E402  (the project's log formats, as its processes will use them)
from config import Config  # noqa: E402  (the project's settings, as its processes will read them)
from workers.connection import connect  # noqa: E402
from workers.queues import PERSIST_QUEUE  # noqa: E402

DEPLOY = ROOT / "deploy"
VAR = ROOT / "var"
SECRETS_FILE = VAR / "secrets.env"
TOKEN_KEYS = ("WEBHOOK_TOKENS", "READ_TOKENS", "SUBMIT_TOKENS")
EMULATOR_PORT = 8010
"""The emulator's port when it is free (EMULATOR_PORT in the environment says another), else any free one."""
READY_TIMEOUT = 60.0
NGINX_TEMPLATE = DEPLOY / "nginx.local.conf"
NGINX_DIR = VAR / "nginx"
NGINX_PATH = "/usr/sbin:/usr/local/sbin:/usr/local/nginx/sbin"
"""Where nginx is looked for besides PATH (Debian installs it in /usr/sbin, which a user's PATH may lack)."""

LOCAL_REDIS_MAXMEMORY = "256mb"
"""The private Redis's bound under `make run` (production's is in deploy/redis.conf)."""

RESTART_DELAYS = (1, 2, 5, 10, 30)
"""Seconds before a process that exited is started again, for its first, second, ... restart (then the last)."""

STEADY_AFTER_S = 60.0
"""A process that ran this long before it exited is started again after the shortest delay."""

STOP_WARM_S = 10.0
"""After Ctrl-C or SIGTERM, how long the processes have to finish what they do (RQ's warm shutdown)."""

STOP_COLD_S = 5.0
"""Then, after a second SIGTERM (RQ's cold shutdown), how long before SIGKILL to what is left of their sessions."""

REDIS_STOP_S = 10.0
"""How long the private redis-server has to write its data and exit before it is killed."""

DRAINED_MAX_S = 15.0
"""Before the banner, how long to wait at most for the last drain job to end (it prints a line as it does)."""

SETTLE_S, SETTLE_MAX_S = 0.5, 3.0
"""Then, how long the processes must have printed nothing (waiting at most SETTLE_MAX_S)."""

PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when its parent dies (Linux)."""


def ensure_secrets(path: Path = SECRETS_FILE) -> dict[str, str]:
    """Return the development tokens, generating any missing ones into `path` (mode 0600)."""
    values = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.lstrip().startswith("#"):
                values[key.strip()] = value.strip()
    missing = [key for key in TOKEN_KEYS if not values.get(key)]
    if missing:
        values.update({key: secrets.token_urlsafe(32) for key in missing})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("# Local development tokens, written by deploy/launch.py. Keep private.\n")
            out.writelines(f"{key}={value}\n" for key, value in values.items())
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return values


def tokens(env: dict[str, str]) -> dict[str, str]:
    """The first token of each kind in effect: the environment's, else var/secrets.env's."""
    stored = ensure_secrets() if env.get("APP_ENV") == "development" else {}
    return {key: (env.get(key) or stored.get(key, "")).split(",")[0].strip() for key in TOKEN_KEYS}


def base_env() -> dict[str, str]:
    """The environment for every child process, with development defaults filled in."""
    env = dict(os.environ)
    env.setdefault("APP_ENV", "development")
    env.setdefault("HOST", "127.0.0.1")
    env.setdefault("PORT", "8000")
    env["PYTHONUNBUFFERED"] = "1"
    if env["APP_ENV"] == "development":
        env.setdefault("LOG_FORMAT", "console")
    # The Procfile says `python`, `gunicorn`, `rq`: take them from this interpreter's environment.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if env["APP_ENV"] == "development":
        ensure_secrets()
    return env


def reset_metrics_dir(env: dict[str, str]) -> None:
    """One Prometheus multiprocess directory for every process (var/metrics unless set), emptied at start."""
    path = Path(env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR / "metrics")))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def free_port(preferred: int = 0) -> int:
    """`preferred` if it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (each held until all are found)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def find_nginx() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path=NGINX_PATH)


def render_nginx(listen: str, intake: str | list[str], api: str | list[str], directory: Path = NGINX_DIR) -> Path:
    """Write deploy/nginx.local.conf with these addresses (host:port; the intake's and the api's may be several,
    balanced by nginx) into `directory`; return the file."""
    text = NGINX_TEMPLATE.read_text().replace("@LISTEN@", listen)
    for placeholder, addresses in (("@INTAKE@", intake), ("@API@", api)):
        servers = [addresses] if isinstance(addresses, str) else addresses
        text = text.replace(f"server {placeholder};", "\n        ".join(f"server {a};" for a in servers))
    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    path = directory / "nginx.conf"
    path.write_text(text)
    return path


def nginx_argv(nginx: str, conf: Path) -> list[str]:
    """nginx in the foreground with `conf`, its relative paths under the file's folder."""
    return [nginx, "-p", f"{conf.parent}/", "-c", conf.name, "-e", "stderr", "-g", "daemon off;"]


def plan_web(env: dict[str, str]) -> list[str] | None:
    """Where the intake and the api listen (INTAKE_BIND, API_BIND), and the nginx command in front, if any.

    Without nginx the api takes HOST:PORT and PUBLIC_URL (the webhook URL given to
    Runware) defaults to the intake's own address.
    """
    host, port = env["HOST"], env["PORT"]
    nginx = find_nginx()
    if nginx is None:
        env["API_BIND"], env["INTAKE_BIND"] = f"{host}:{port}", f"{host}:{free_port()}"
        env.setdefault("PUBLIC_URL", webhook_base(env))
        print("launch: nginx is not installed (Debian/Ubuntu: `sudo apt-get install nginx`), so there is no\n"
              f"launch: single URL: webhooks go to {webhook_base(env)}, everything else to {local_url(env)}",
              flush=True)
        return None
    env["INTAKE_BIND"], env["API_BIND"] = (f"127.0.0.1:{p}" for p in free_ports(2))
    return nginx_argv(nginx, render_nginx(f"{host}:{port}", env["INTAKE_BIND"], env["API_BIND"]))


def fronted(env: dict[str, str]) -> bool:
    """True when the local nginx answers at HOST:PORT (without it, the api does)."""
    return env["API_BIND"] != f"{env['HOST']}:{env['PORT']}"


def start_redis(env: dict[str, str]) -> subprocess.Popen:
    """Start a private redis-server with deploy/redis.conf on a free port; set REDIS_URL."""
    if not shutil.which("redis-server"):
        sys.exit(
            "redis-server is not installed, and REDIS_URL is not set.\n"
            "Install it (Debian/Ubuntu: `sudo apt-get install redis-server`; macOS: `brew install redis`)\n"
            "or point REDIS_URL at a Redis server you run."
        )
    data = VAR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf, log, pidfile = DEPLOY / "redis.conf", data / "redis.log", data / "redis.pid"
    stop_stale_redis(pidfile)
    cmd = ["redis-server", str(conf), "--port", str(port), "--bind", "127.0.0.1", "--maxmemory", LOCAL_REDIS_MAXMEMORY]
    cmd += ["--dir", str(data), "--logfile", str(log), "--pidfile", str(pidfile)]
    # The service talks to it over a Unix socket: a round trip costs less CPU than over TCP.
    sock = data / "redis.sock"
    cmd += ["--unixsocket", str(sock), "--unixsocketperm", "700"]
    # A session of its own: the terminal's Ctrl-C goes to us, and Redis is stopped
    # last, after the workers have finished their jobs.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not redis_answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            sys.exit(f"redis-server did not start; see {log}")
        time.sleep(0.05)
    env["REDIS_URL"] = f"unix://{sock}?db=0"
    print(f"launch: private redis-server on {sock.relative_to(ROOT)} and 127.0.0.1:{port}"
          f" (data in {data.relative_to(ROOT)}/)", flush=True)
    return proc


def stop_stale_redis(pidfile: Path) -> None:
    """Stop a private redis-server left running by an earlier launcher that was killed.

    Two servers must never share the append-only file in var/redis/.
    """
    try:
        pid = int(pidfile.read_text().strip())
        alive = b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if alive:
        print(f"launch: stopping the private redis-server left from an earlier run (pid {pid})", flush=True)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def redis_answers(port: int) -> bool:
    """True when a Redis on 127.0.0.1:`port` answers PING (not while it is still loading)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def stop(proc: subprocess.Popen | None, timeout: float = REDIS_STOP_S) -> None:
    """Stop a child process: SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def processes(env: dict[str, str]) -> dict[str, str]:
    """The commands to supervise: deploy/Procfile's, the local nginx, and the emulator unless Runware is configured."""
    procs = dict(parse_procfile((DEPLOY / "Procfile").read_text()).processes)
    nginx = plan_web(env)
    if nginx:
        procs["nginx"] = shlex.join(nginx)
    if not (ROOT / "workers" / "schedule.py").exists() and not (ROOT / "workers" / "schedule").is_dir():
        print("launch: workers/schedule.py not found; running without the cron process", flush=True)
        procs.pop("cron", None)
    for n in range(2, Config.from_env(env).persist_concurrency + 1):
        procs[f"persist{n}"] = procs["persist"]  # one worker per drain that may run at once
    if not env.get("RUNWARE_API_KEY"):
        port = free_port(int(env.get("EMULATOR_PORT") or EMULATOR_PORT))
        env["RUNWARE_API_URL"] = f"http://127.0.0.1:{port}/v1"
        env["RUNWARE_API_KEY"] = "emulator-key"
        procs["emulator"] = f"python -m emulator --port {port}"
    return procs


def migrate(env: dict[str, str]) -> None:
    """Apply the database migrations (`python -m store upgrade`); exit if they fail."""
    result = subprocess.run([sys.executable, "-m", "store", "upgrade"], cwd=ROOT, env=env)
    if result.returncode:
        sys.exit(f"launch: migrations failed (exit {result.returncode})")


def wait_ready(env: dict[str, str], stopping: threading.Event) -> bool:
    """Poll each gunicorn's /readyz, and the front's, until all answer 200 (True), or until timeout or shutdown."""
    urls = [f"{reachable(env['INTAKE_BIND'])}/readyz", f"{reachable(env['API_BIND'])}/readyz"]
    if fronted(env):
        urls.append(f"{local_url(env)}/readyz")
    deadline = time.monotonic() + READY_TIMEOUT
    while urls and not stopping.is_set() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urls[0], timeout=2) as response:
                if response.status == 200:
                    urls.pop(0)
                    continue
        except OSError:
            pass
        stopping.wait(0.25)
    return not urls


def reachable(address: str) -> str:
    """The URL at which this machine reaches a server listening on `address` (host:port)."""
    host, _, port = address.rpartition(":")
    return f"http://{host if host not in ('0.0.0.0', '::', '') else '127.0.0.1'}:{port}"


def local_url(env: dict[str, str]) -> str:
    """The base URL at which this machine reaches the service: the local nginx, or without it the api."""
    return reachable(f"{env['HOST']}:{env['PORT']}")


def webhook_base(env: dict[str, str]) -> str:
    """The base URL of the webhook intake: the one URL when nginx fronts both, else the intake's own."""
    return local_url(env) if fronted(env) else reachable(env["INTAKE_BIND"])


def caption_samples(env: dict[str, str], stopping: threading.Event, guard: Guard) -> bool:
    """Caption the images in samples/ through the running stack, printing each caption and cost as it lands.

    The command leads a session of its own, so that the stop of the stack ends it too;
    True when it ran to its end.
    """
    print("Captioning the sample images (samples/) through the service:\n", flush=True)
    images = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "samples").iterdir()
                    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "captions", "submit", *images, "--wait"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    guard.watch(proc.pid)
    while proc.poll() is None:
        if stopping.wait(0.1):
            kill_session(proc.pid, signal.SIGTERM)
            proc.wait()
    return not stopping.is_set()


def wait_drained(env: dict[str, str], stopping: threading.Event) -> None:
    """Until no drain job is queued or running, at most DRAINED_MAX_S: a drain ends (and says what it stored)
    only after it has waited a while for more deliveries, well after the samples' captions are in the store."""
    drains = Queue(PERSIST_QUEUE, connection=connect(Config.from_env(env)))
    deadline = time.monotonic() + DRAINED_MAX_S
    try:
        while (drains.count or drains.started_job_registry.count) and time.monotonic() < deadline:
            if stopping.wait(0.1):
                return
    finally:
        drains.connection.close()


def banner(env: dict[str, str]) -> None:
    """URLs, tokens, a curl line to post a result and one to read it back, and what to do next.

    The one place where tokens are printed.
    """
    base, tok, task = local_url(env), tokens(env), str(uuid.uuid4())
    body = json.dumps({"data": [{"taskType": "imageCaption", "taskUUID": task, "text": "a caption", "cost": 0.0019}]})
    webhook = f"{webhook_base(env)}/webhooks/runware?token={tok['WEBHOOK_TOKENS']}"
    post = ["curl", "-sS", "-X", "POST", webhook, "-H", "Content-Type: application/json", "-d", body]

    def read(path: str) -> str:
        return shlex.join(["curl", "-sS", "-H", f"Authorization: Bearer {tok['READ_TOKENS']}", base + path])

    lines = [
        f"Ready at {base}   (Ctrl-C stops everything)" if fronted(env) else
        f"Ready: webhooks at {webhook_base(env)}, everything else at {base} (no nginx; Ctrl-C stops everything)",
        "",
        f"Dashboard:     {base}/dashboard   (sign in with the read token)",
        f"Webhook URL:   {webhook}",
        f"Read token:    {tok['READ_TOKENS']}",
        f"Submit token:  {tok['SUBMIT_TOKENS']}",
        f"Runware API:   {env.get('RUNWARE_API_URL') or '(not set)'}",
    ]
    if env.get("LOG_FORMAT") == "console":
        lines.append(f"Logs:          {logs.SERVICE_LOG.relative_to(ROOT)} (every process's lines, RQ's and gunicorn's"
                     " included)")
    lines += [
        "",
        "Send a sample result, then read it back:",
        "",
        "  " + shlex.join(post),
        "",
        "  " + read(f"/api/tasks/{task}"),
        "",
        f"Task list:     {read('/api/tasks')}",
        f"Totals:        {read('/api/stats')}",
        "Your images:   .venv/bin/flask --app wsgi captions submit PATH_OR_URL... --wait",
    ]
    rule = "=" * 78
    print("\n".join(["", rule, *lines, rule, ""]), flush=True)


def session_members(sid: int) -> list[int]:
    """The processes of session `sid` (Linux: from /proc; elsewhere its leader's process group is all we can find)."""
    if not Path("/proc/self/stat").exists():
        return [sid]
    members = []
    for entry in Path("/proc").iterdir():
        try:
            # After the command's closing parenthesis: state, ppid, pgrp, session, ...
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def kill_session(sid: int, sig: int) -> list[int]:
    """Send `sig` to every process of session `sid`; return the pids it went to."""
    members = session_members(sid)
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    if not Path("/proc/self/stat").exists():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, sig)
    return members


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Guard:
    """A process of its own that ends the stack if the launcher dies without stopping it (SIGKILL, a crash).

    The launcher tells it the session of each process it starts (`watch`); once the
    launcher is gone (its parent changes) or has closed the pipe (`close`, at the end
    of a clean stop), it SIGKILLs whatever is left in those sessions and exits.
    """

    def __init__(self):
        read, self._pipe = os.pipe()
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._pipe)
            os.setsid()  # not in the launcher's process group: a kill of the group leaves the guard standing
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._serve(read, parent)
            os._exit(0)
        os.close(read)

    @staticmethod
    def _serve(read: int, parent: int) -> None:
        sessions, pending = set(), b""
        while os.getppid() == parent:
            ready, _, _ = select.select([read], [], [], 0.2)
            if ready:
                data = os.read(read, 4096)
                if not data:
                    break
                *lines, pending = (pending + data).split(b"\n")
                sessions.update(int(line) for line in lines)
        for _ in range(10):  # until no process is left (one may fork while we kill)
            if not [pid for sid in sessions for pid in kill_session(sid, signal.SIGKILL)]:
                return
            time.sleep(0.1)

    def watch(self, pid: int) -> None:
        """End the session that `pid` leads if the launcher dies."""
        os.write(self._pipe, b"%d\n" % pid)

    def close(self) -> None:
        """The stack is stopped: let the guard make sure of it, and wait for it."""
        os.close(self._pipe)
        os.waitpid(self.pid, 0)


class Supervisor(Manager):
    """honcho's Manager, which runs `after_ready` once the web process is ready, and restarts what exits.

    honcho ends the whole stack as soon as one process exits, so one worker that
    dies would take the web server and every other worker down with it. Here a
    process that exits while the stack runs is reported with its exit status and
    started again after a backoff (RESTART_DELAYS); the others go on. Ctrl-C or
    SIGTERM stops everything in bounded steps (the module's docstring).
    """

    def __init__(self, env: dict[str, str], guard: Guard | None = None):
        super().__init__()
        self.env = env
        self.guard = guard or Guard()
        self.stopping = threading.Event()
        self.restarts: dict[str, int] = {}
        self.started_at: dict[str, float] = {}
        self.due: dict[str, float] = {}
        self.stop_step = 0
        self.stop_started = self.step_at = self.last_line_at = 0.0

    def _start(self):
        for name in self._processes:
            self._run(name)
        # The readiness thread starts after the process runners are forked.
        threading.Thread(target=self._when_ready, daemon=True).start()

    def _run(self, name: str) -> None:
        """Fork the runner of process `name`: it starts the command in a session of its own and relays its output."""
        def runner():
            die_with_parent()
            proc["obj"].run(self.events, True)

        proc = self._processes[name]
        proc["process"] = multiprocessing.Process(name=name, target=runner)
        proc["process"].start()

    def _when_ready(self):
        if not wait_ready(self.env, self.stopping):
            if not self.stopping.is_set():
                print(f"launch: {local_url(self.env)}/readyz did not answer 200 within {READY_TIMEOUT:.0f}s",
                      flush=True)
            return
        if caption_samples(self.env, self.stopping, self.guard):
            wait_drained(self.env, self.stopping)  # the drain's last line first, then the banner
            deadline = time.monotonic() + SETTLE_MAX_S
            while time.monotonic() - self.last_line_at < SETTLE_S and time.monotonic() < deadline:
                time.sleep(0.05)
            banner(self.env)

    def loop(self):
        """honcho's loop, except that a process that exits is started again, and a stop goes in steps."""
        def on_signal(signum, frame):
            if self.stop_step == 0:
                self._system_print(f"{SIGNALS[signum]['name']} received\n")
                self.returncode = 0 if signum == signal.SIGINT else SIGNALS[signum]["rc"]
            self.terminate()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self._start()
        while not (self._terminating and self._all_stopped()):
            try:
                self._handle(self.events.get(timeout=0.1))
            except queue.Empty:
                pass
            if not self._terminating:
                self._restart_due()
            elif time.monotonic() >= self.step_at:
                if self.stop_step == 3:  # killed, but a runner has not reported it: do not wait for ever
                    self._system_print(f"gave up waiting for {', '.join(self._running())}\n")
                    break
                self.terminate()
        self._system_print(f"stopped in {time.monotonic() - self.stop_started:.1f}s\n")

    def _handle(self, msg) -> None:
        proc = self._processes.get(msg.name)
        if msg.type == "line":
            self._printer.write(msg)
            self.last_line_at = time.monotonic()
        elif msg.type == "start":
            proc["pid"] = msg.data["pid"]
            self.guard.watch(proc["pid"])
            self.started_at[msg.name] = time.monotonic()
            self._system_print(f"{msg.name} started (pid={proc['pid']})\n")
            if self._terminating:  # started again just as the stack was asked to stop
                kill_session(proc["pid"], signal.SIGKILL if self.stop_step >= 3 else signal.SIGTERM)
        elif msg.type == "stop":
            proc["returncode"] = msg.data["returncode"]
            if self._terminating:
                self._system_print(f"{msg.name} stopped (rc={proc['returncode']})\n")
                return
            if time.monotonic() - self.started_at.get(msg.name, 0.0) > STEADY_AFTER_S:
                self.restarts[msg.name] = 0
            count = self.restarts.get(msg.name, 0)
            delay = RESTART_DELAYS[min(count, len(RESTART_DELAYS) - 1)]
            self.restarts[msg.name] = count + 1
            self.due[msg.name] = time.monotonic() + delay
            self._system_print(f"{msg.name} EXITED (rc={proc['returncode']}); the others go on; "
                               f"starting it again in {delay}s (restart {count + 1})\n")

    def _restart_due(self) -> None:
        now = time.monotonic()
        for name in [name for name, at in self.due.items() if at <= now]:
            del self.due[name]
            proc = self._processes[name]
            proc.pop("returncode", None)
            proc["pid"] = None
            self._run(name)

    def _running(self) -> dict[str, int]:
        """name -> pid of each process still running (one started again but not yet running has no pid yet)."""
        return {name: proc["pid"] for name, proc in self._processes.items()
                if "returncode" not in proc and proc.get("pid") is not None}

    def terminate(self):
        """Take the next step of the stop: SIGTERM (warm), SIGTERM again (cold), SIGKILL of the sessions."""
        now, running = time.monotonic(), self._running()
        names = ", ".join(running) or "nothing"
        if self.stop_step == 0:
            self.stopping.set()
            self._terminating, self.stop_started = True, now
            self.due.clear()
            self._system_print("stopping everything (Ctrl-C again to stop at once)\n")
            self.step_at = now + STOP_WARM_S
        elif self.stop_step == 1:
            self._system_print(f"still running after {now - self.stop_started:.0f}s: {names}; "
                               "stopping them cold (RQ: the jobs in hand are killed)\n")
            self.step_at = now + STOP_COLD_S
        else:
            self._system_print(f"still running after {now - self.stop_started:.0f}s: {names}; killing them\n")
            self.step_at = now + STOP_COLD_S
        self.stop_step += 1
        for pid in running.values():
            if self.stop_step < 3:
                self._procmgr.terminate(pid)
            else:
                kill_session(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    """Start the stack (no argument) or only apply the migrations (`migrate`)."""
    os.chdir(ROOT)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    env = base_env()
    if argv[1:] == ["migrate"]:
        migrate(env)
        return 0
    if argv[1:]:
        sys.exit(f"usage: {argv[0]} [migrate]")
    redis = guard = None
    with foreground():
        try:
            guard = Guard()
            if not env.get("REDIS_URL") and not env.get("REDIS_SENTINELS"):
                redis = start_redis(env)
                guard.watch(redis.pid)
            migrate(env)
            reset_metrics_dir(env)
            rotate_service_log(env)
            supervisor = Supervisor(env, guard)
            for name, cmd in processes(env).items():
                supervisor.add_process(name, cmd, env=env, cwd=str(ROOT))
            supervisor.loop()
            return supervisor.returncode or 0
        except KeyboardInterrupt:
            print("launch: interrupted", flush=True)
            return 0
        finally:
            if redis is not None:
                print("launch: stopping redis-server", flush=True)
                stop(redis)
            if guard is not None:
                guard.close()


@contextlib.contextmanager
def foreground():
    """Run in a process group of our own, in the terminal's foreground if our group had it.

    The terminal's Ctrl-C then reaches the launcher (and what it runs in its group)
    and not `make`, which would otherwise stop with "Interrupt" or "Error 130"
    whatever the launcher does; the group that had the terminal gets it back at the end.
    """
    fd = sys.stdin.fileno() if sys.stdin and sys.stdin.isatty() else None
    before = os.tcgetpgrp(fd) if fd is not None else None
    if before != os.getpgrp() or os.getpid() == os.getpgrp():
        yield
        return
    os.setpgid(0, 0)
    # A background group may not set the foreground; and Ctrl-Z would stop us but not `make`, which
    # the shell waits for: the terminal would hang, so it is ignored.
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTTOU, signal.SIGTSTP)}
    try:
        os.tcsetpgrp(fd, os.getpgrp())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, before)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def rotate_service_log(env: dict[str, str]) -> None:
    """Keep the previous run's var/log/service.log as service.log.1; this run's starts empty."""
    if env.get("LOG_FORMAT") == "console" and logs.SERVICE_LOG.exists():
        logs.SERVICE_LOG.replace(logs.SERVICE_LOG.with_name(logs.SERVICE_LOG.name + ".1"))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
