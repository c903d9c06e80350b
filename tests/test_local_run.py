"""`make run` stops cleanly whatever it is doing, and its console reads like a product.

The real thing: `make run` in a pseudo-terminal (so that Ctrl-C is the terminal's,
sent to its foreground process group), with the test's Redis and a fresh SQLite
store; every process it starts inherits a marker in its environment, which is how
the test finds them all, wherever they were re-parented.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue

import logs
from tests.conftest import TOKENS
from tests.support import ROOT
from tests.support import free_port

sys.path.insert(0, str(ROOT / "deploy"))
import launch  # noqa: E402

BANNER_END = "Your images:"
STOP_BOUND_S = launch.STOP_WARM_S + launch.STOP_COLD_S + 10
"""The warm and the cold shutdown's time, and ten seconds for the rest."""

SERVICE_PROCESSES = ("intake", "api", "persist", "submit", "maintenance", "cron")
"""The processes that log through logs.py (the emulator and nginx have formats of their own)."""


def run_env(redis_url: str, tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "LOG_", "MAKE", "MFLAGS"))}
    # A port of its own for the emulator: two launchers at once (the tests' two processes) could both find
    # 8010 free, and the second's emulator then failed to listen on every restart.
    env.update(REDIS_URL=redis_url, DATABASE_URL=f"sqlite:///{tmp_path / 'captions.db'}", PORT=str(free_port()),
               EMULATOR_PORT=str(free_port()),
               PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"), WEB_CONCURRENCY="2", RUN_MARKER=uuid.uuid4().hex,
               **TOKENS, **extra)
    return env


def marked(marker: str) -> list[str]:
    """The live processes (not zombies) whose environment holds `marker`: `pid command` each."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"RUN_MARKER={marker}".encode() in environ and state != "Z":
            found.append(f"{entry.name} {command[:120]}")
    return found


def kill_marked(marker: str) -> None:
    for line in marked(marker):
        os.kill(int(line.split()[0]), signal.SIGKILL)


class Terminal:
    """A command in a pseudo-terminal, its output gathered as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir(ROOT)
            os.execvpe(argv[0], argv, env)
        self.output, self.code = b"", None

    def read_until(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output:
            assert time.monotonic() < deadline, f"no {text!r} after {timeout}s:\n{self.text()[-3000:]}"
            self.pump(0.2)
        return self.text()

    def pump(self, seconds: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], seconds)
        if ready:
            try:
                self.output += os.read(self.fd, 65536)
            except OSError:  # the command has exited and the terminal closed
                time.sleep(seconds)

    def wait(self, timeout: float) -> int | None:
        """The command's exit status, once it has exited within `timeout` seconds (None if it has not)."""
        deadline = time.monotonic() + timeout
        while self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                break
            self.pump(0.1)
        return self.code

    def text(self) -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.output.decode(errors="replace")).replace("\r\n", "\n")


def payloads(console: str, names: tuple[str, ...]) -> list[str]:
    """What the processes `names` (and `persist2`, ...) printed, without the supervisor's `HH:MM:SS name | ` prefix."""
    pattern = re.compile(r"^\d\d:\d\d:\d\d (\S+)\s*\| (.*)$")
    return [m[2] for m in map(pattern.match, console.splitlines()) if m and m[1].rstrip("0123456789") in names]


@pytest.mark.timeout(240)
def test_ctrl_c_stops_every_process_of_make_run_even_with_a_job_in_hand(redis_url, tmp_path):
    env = run_env(redis_url, tmp_path)
    terminal = Terminal(["make", "run"], env)
    try:
        console = terminal.read_until(BANNER_END, timeout=150)
        terminal.pump(1.0)
        job = Queue("submit", connection=Redis.from_url(redis_url)).enqueue("time.sleep", 600, job_timeout=900)
        deadline = time.monotonic() + 30
        while job.get_status(refresh=True) != "started":
            assert time.monotonic() < deadline, "the submit worker never started the long job"
            time.sleep(0.1)
        before = marked(env["RUN_MARKER"])
        assert len(before) > 10, before

        # The console: captions, then the banner last; short lines, not JSON.
        console = terminal.text()
        tail = console[console.index(BANNER_END):]
        assert console.index("6 tasks: 6 captioned") < console.index("Ready at"), console
        assert tail.count("\n") <= 3 and tail.rstrip().endswith("=" * 78), f"something came after the banner:\n{tail}"
        lines = payloads(console, SERVICE_PROCESSES)
        assert "drain stored 6 deliveries stored=6" in lines, console
        assert not [line for line in lines if line.startswith("{")], "a JSON line in development"
        assert not [line for line in lines if "Booting worker" in line or "Job OK" in line], "library chatter"
        assert '"POST /v1 HTTP/1.1"' not in console, "the emulator's line per request"
        service_log = (ROOT / "var" / "log" / "service.log").read_text()
        assert "Booting worker" in service_log and "time.sleep(600)" in service_log, "the chatter is in the file"

        started = time.monotonic()
        os.write(terminal.fd, b"\x03")
        code = terminal.wait(STOP_BOUND_S)
        took = time.monotonic() - started
        left = marked(env["RUN_MARKER"])
    finally:
        if terminal.wait(0) is None:
            os.kill(terminal.pid, signal.SIGKILL)
            terminal.wait(10)
        kill_marked(env["RUN_MARKER"])
    console = terminal.text()
    assert code == 0, f"make run ended with {code} after Ctrl-C:\n{console[-3000:]}"
    assert "Error 130" not in console and "Interrupt" not in console
    assert left == [], f"left running {took:.1f}s after Ctrl-C: {left}"
    assert took > launch.STOP_WARM_S, "the warm shutdown waits for the job in hand"
    assert "stopping them cold" in console and "cold shut down" in console, console[-3000:]


@pytest.mark.timeout(240)
def test_production_logs_json_and_a_killed_launcher_leaves_nothing_behind(redis_url, tmp_path):
    env = run_env(redis_url, tmp_path, APP_ENV="production")

    def console() -> str:
        return (tmp_path / "console.txt").read_text(errors="replace")

    with open(tmp_path / "console.txt", "wb") as out:
        launcher = subprocess.Popen([sys.executable, "deploy/launch.py"], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 150
        while not {BANNER_END, "drain stored 6"} <= set(re.findall(f"{BANNER_END}|drain stored 6", console())):
            assert launcher.poll() is None and time.monotonic() < deadline, console()[-3000:]
            time.sleep(0.2)
        assert len(marked(env["RUN_MARKER"])) > 10
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 10
        while (left := marked(env["RUN_MARKER"])) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        kill_marked(env["RUN_MARKER"])
    assert left == [], f"the launcher's processes outlived it by 10s: {left}"
    lines = payloads(console(), SERVICE_PROCESSES)
    docs = [json.loads(line) for line in lines]  # every line of the service's processes is one JSON object
    assert {"rq.worker", "gunicorn.error", "gunicorn.access"} <= {doc["logger"] for doc in docs}
    assert any(doc["message"] == "drain stored 6 deliveries" for doc in docs)


def test_the_console_format_is_one_short_line_and_keeps_library_chatter_in_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("LOG_FORMAT", "console")
    monkeypatch.setattr(logs, "SERVICE_LOG", tmp_path / "service.log")
    stream = io.StringIO()
    logger = logging.getLogger("tests.local_run.console")
    logger.handlers, logger.propagate = [logging.StreamHandler(stream)], False
    logger.setLevel(logging.INFO)
    logs.route(logger)
    logs.route(logger)  # gunicorn sets its loggers up again on reload: still one file handler, one filter
    with logs.bind(task_uuid="t-1"):
        logging.getLogger("tests.local_run.console").info("stored %d", 3, extra={"stored": 3})
    logger.warning("slow")
    for name in ("rq.worker", "gunicorn.access", "workers.reconcile"):  # the record's name decides
        logger.handle(logger.makeRecord(name, logging.INFO, __file__, 1, f"{name} chatter", None, None))
    logger.handle(logger.makeRecord("rq.worker", logging.WARNING, __file__, 1, "cold shut down", None, None))
    assert stream.getvalue().splitlines() == ["stored 3 task_uuid=t-1 stored=3", "WARNING slow",
                                              "WARNING cold shut down"]
    written = (tmp_path / "service.log").read_text().splitlines()
    assert len(written) == 6 and all(f"[{os.getpid()}]" in line for line in written)
    assert "rq.worker: rq.worker chatter" in written[2] and "workers.reconcile chatter" in written[4]


def test_a_log_format_that_is_not_one_is_named(monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="LOG_FORMAT must be one of json, console, not 'xml'"):
        logs.configure()
