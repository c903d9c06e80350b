"""The emulator tests' fixtures, loaded with `pytest_plugins = ["tests.emulator_fixtures"]`.

- `start_emulator(**changes)`: an emulator in a thread with the test settings (`BASE`) changed; stopped after the test.
- `emu`: one with the test settings.
- `receiver_factory(**kwargs)` and `receiver`: real webhook receivers, closed after the test.
- `ws_client(emu)`: a WebSocket client of an emulator, closed after the test.
"""

from __future__ import annotations

import pytest

from emulator import serve_in_thread
from tests.emulating import BASE
from tests.emulating import Emu
from tests.emulating import Receiver
from tests.emulating import WsClient


@pytest.fixture
def start_emulator():
    stops = []

    def start(**changes) -> Emu:
        url, stop = serve_in_thread(BASE.replace(**changes))
        stops.append(stop)
        return Emu(url)

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def emu(start_emulator) -> Emu:
    return start_emulator()


@pytest.fixture
def receiver_factory():
    receivers = []

    def make(**kwargs) -> Receiver:
        receivers.append(Receiver(**kwargs))
        return receivers[-1]

    yield make
    for r in receivers:
        r.close()


@pytest.fixture
def receiver(receiver_factory) -> Receiver:
    return receiver_factory()



@pytest.fixture
def ws_client():
    clients = []

    def make(emu: Emu) -> WsClient:
        clients.append(WsClient(emu))
        return clients[-1]

    yield make
    for client in clients:
        client.close()
