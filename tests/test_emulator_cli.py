"""The emulator's settings (flags and environment) and its command line."""

from __future__ import annotations

import signal

import pytest
import requests

from emulator import Faults
from emulator import Settings
from emulator import serve_in_thread
from emulator.settings import parse_args
from tests.emulating import BASE
from tests.emulating import EmulatorProcess
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


def test_only_the_command_line_keeps_state_by_default():
    assert Settings().state_dir == "" and parse_args([], {}).state_dir == ""
    assert parse_args([], {}, command_line=True).state_dir == "var/emulator"
    assert parse_args(["--state-dir", ""], {}, command_line=True).state_dir == ""
    assert parse_args([], {"EMULATOR_STATE_DIR": "/tmp/x"}, command_line=True).state_dir == "/tmp/x"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_command_line_server_stops_cleanly_on_signals(signum, tmp_path):
    process = EmulatorProcess("--seed", "5", "--state-dir", str(tmp_path))
    try:
        assert requests.get(process.emu.url + "/healthz", timeout=5).json()["seed"] == 5
        resp = process.emu.post([caption_task(b64(sample_bytes()))])
        assert resp.status_code == 200
    finally:
        assert process.stop(signum) == 0


def test_a_taken_port_is_an_os_error(emu):
    port = int(emu.url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match="in use"):
        serve_in_thread(BASE.replace(port=port))
