"""The emulator's settings (flags and environment) and its command line."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import requests

from emulator import Faults
from emulator import Settings
from emulator import serve_in_thread
from emulator.settings import parse_args
from tests.emulating import BASE
from tests.emulating import KEY
from tests.emulating import ROOT
from tests.emulating import Emu
from tests.emulating import b64
from tests.emulating import caption_task
from tests.emulating import sample_bytes

pytest_plugins = ["tests.emulator_fixtures"]  # the emulator and receiver fixtures
pytestmark = pytest.mark.timeout(60)


def test_settings_from_flags_and_environment():
    env = {"EMULATOR_DUPLICATE_RATE": "0.25", "EMULATOR_DROP_RATE": "0.1", "EMULATOR_PORT": "9999",
           "EMULATOR_API_KEY": "from-env"}
    settings = parse_args(["--drop-rate", "0.5", "--envelope", "bare", "--seed", "3"], env)
    assert settings.faults == Faults(duplicate_rate=0.25, drop_rate=0.5, envelope="bare")
    assert (settings.port, settings.api_key, settings.seed) == (9999, "from-env", 3)
    assert Settings.from_env({}) == Settings()
    assert Settings().port == 8010 and Settings().api_key == "emulator-key"
    with pytest.raises(ValueError, match="drop_rate"):
        Settings.from_env({"EMULATOR_DROP_RATE": "2"})
    with pytest.raises(ValueError, match="EMULATOR_MAX_ATTEMPTS"):
        Settings.from_env({"EMULATOR_MAX_ATTEMPTS": "many"})
    with pytest.raises(SystemExit):
        parse_args(["--envelope", "sideways"], {})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_command_line_server_stops_cleanly_on_signals(signum):
    proc = subprocess.Popen([sys.executable, "-m", "emulator", "--port", "0", "--seed", "5", "--api-key", KEY],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("emulator listening on http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[3]
        assert requests.get(url + "/healthz", timeout=5).json()["seed"] == 5
        resp = Emu(url).post([caption_task(b64(sample_bytes()))])
        assert resp.status_code == 200
        proc.send_signal(signum)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_a_taken_port_is_an_os_error(emu):
    port = int(emu.url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match="in use"):
        serve_in_thread(BASE.replace(port=port))
