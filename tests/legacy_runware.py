"""The older official SDK (PyPI `runware`) in a virtual environment of its own, made on first use and kept.

`runware` and `runware-sdk` both install the package `runware`, so they cannot
share the project's environment. The environment lives under
var/venvs/runware-legacy and is made again whenever
tests/requirements-runware-legacy.txt changes (its text is kept beside it as
the stamp). A lock keeps two test runs from making it at once.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "tests" / "requirements-runware-legacy.txt"
CLIENT = ROOT / "tests" / "legacy_runware_client.py"
VENV = ROOT / "var" / "venvs" / "runware-legacy"
STAMP = VENV / ".installed"
INSTALL_TIMEOUT_S = 300


def legacy_python() -> Path:
    """The environment's Python, after making the environment if it is missing or out of date."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    wanted = REQUIREMENTS.read_text()
    with open(VENV.parent / "runware-legacy.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (STAMP.exists() and STAMP.read_text() == wanted):
            shutil.rmtree(VENV, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=INSTALL_TIMEOUT_S)
            subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
                           check=True, timeout=INSTALL_TIMEOUT_S)
            STAMP.write_text(wanted)
    return VENV / "bin" / "python"


def run_legacy(python: Path, ws_url: str, key: str, jobs: list[dict], timeout: float = 60) -> dict:
    """Run imageCaption jobs with the older SDK (see legacy_runware_client.py); its printed answer."""
    run = subprocess.run([str(python), str(CLIENT), ws_url, key, json.dumps(jobs)], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
