"""Runware's WebSocket API, at `/v1` on the same port as REST (`ws://host:port/v1`), as the official SDKs speak it.

Each message in is a JSON array of tasks; each message out is one
`{"data": [...]}` or `{"errors": [...]}` object (sessions.frames). In order:

1. `{"taskType": "ping", "ping": true}` anywhere in an array, before authentication too,
   is answered `{"data": [{"taskType": "ping", "pong": true}]}`. Protocol pings are
   answered by the library, which also pings every PING_INTERVAL_S.
2. `{"taskType": "authentication", "apiKey": ...}` first in an array is answered
   `{"data": [{"taskType": "authentication", "connectionSessionUUID": ...}]}`; sending that
   UUID back (`connectionSessionUUID`) resumes the session (sessions.py). A wrong key
   is answered `invalidApiKey` with `taskType: "authentication"`; the connection stays open.
3. Tasks before authentication get `missingApiKey`, one error per task.
4. Capacity faults, drawn per message as per REST request, answer an error per task.
5. Every other task runs as over REST (tasks.py): the answers known at once come in one
   reply; each sync caption's result comes in a reply of its own when it is made; an
   async caption is acknowledged and its result pushed when made (after the webhook
   delay faults; the drop fault withholds it, and getResponse still has it).

The disconnect fault closes the connection (1012, service restart) right after a
caption task is accepted, before anything is answered; the task goes on, and
getResponse has its result.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import TYPE_CHECKING

import orjson
from flask import Blueprint
from flask import current_app
from flask import request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from simple_websocket import Server

from .errors import ApiError
from .sessions import Session
from .sessions import frames
from .tasks import CAPTION_TYPES

if TYPE_CHECKING:
    from .app import Emulator

log = logging.getLogger(__name__)
PING_INTERVAL_S = 20
RECEIVE_BYTES = 64 * 1024
SERVICE_RESTART = 1012
CLOSE_HANDSHAKE_S = 2.0
"""How long a client has to answer the server's close before the socket is shut."""
PONG = {"taskType": "ping", "pong": True}

sock = Sock()
ws_bp = Blueprint("emulator_websocket", __name__)


def server_options(max_message_bytes: int) -> dict:
    """simple-websocket's options (flask-sock's SOCK_SERVER_OPTIONS)."""
    return {"ping_interval": PING_INTERVAL_S, "max_message_size": max_message_bytes, "receive_bytes": RECEIVE_BYTES}


@sock.route("/v1", bp=ws_bp)
def websocket_endpoint(ws: Server) -> None:
    Connection(current_app.extensions["emulator"], ws, request.host_url).serve()


class Connection:
    """One client's WebSocket: reads its messages and answers them (see the module docstring)."""

    def __init__(self, emu: Emulator, ws: Server, base_url: str) -> None:
        self.emu, self.ws, self.base_url = emu, ws, base_url
        self.session: Session | None = None
        self._lock = threading.Lock()

    def serve(self) -> None:
        self.emu.sessions.connected(self)
        try:
            while True:
                message = self.ws.receive()
                if message is not None:
                    self.handle(message)
        except ConnectionClosed:
            pass  # the client went away, or the server closed the connection
        finally:
            self.emu.sessions.disconnected(self)
            if self.session is not None:
                self.session.detach(self)

    def send(self, frame: bytes) -> bool:
        with self._lock:
            try:
                self.ws.send(frame.decode())
            except (ConnectionClosed, OSError):
                return False
            return True

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake, and end it here: the client's answering close ends the library's reader
        thread, which shuts the socket. Left to the request's thread, the HTTP server would read that answer as
        the next request and wait on it, with the connection open."""
        with self._lock:
            try:
                self.ws.close(code, reason)
            except (ConnectionClosed, OSError):
                return  # closed already
        self.ws.thread.join(CLOSE_HANDSHAKE_S)
        if self.ws.thread.is_alive():  # no answer: shut the socket, which wakes the reader thread
            with contextlib.suppress(OSError):
                self.ws.sock.shutdown(socket.SHUT_RDWR)

    def reply(self, *outcomes: dict | ApiError) -> None:
        """Answer on this connection only (pongs, authentication, messages that hold no task)."""
        for frame in frames(list(outcomes)):
            self.send(frame)

    def handle(self, message: str | bytes) -> None:
        try:
            tasks = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            return self.reply(ApiError("invalidPayload", f"The message is not valid JSON ({exc})."))
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
            return self.reply(ApiError("invalidPayload", "A message must be a non-empty JSON array of task objects."))
        if any(t.get("taskType") == "ping" for t in tasks):
            self.reply(PONG)
            tasks = [t for t in tasks if t.get("taskType") != "ping"]
        if tasks and tasks[0].get("taskType") == "authentication":
            self.authenticate(tasks.pop(0))
        if not tasks:
            return None
        if self.session is None:
            return self.reply(*(_for_each(tasks, "missingApiKey", "Authenticate first: send "
                                          '[{"taskType": "authentication", "apiKey": "<key>"}].', 401)))
        fault = self.emu.capacity_fault()
        if fault is not None:
            return self.session.answer(*_for_each(tasks, fault.code, fault.message, fault.status))
        return self.run(tasks, self.session)

    def authenticate(self, task: dict) -> None:
        if not self.emu.settings.key_matches(task.get("apiKey")):
            return self.reply(ApiError("invalidApiKey", "The apiKey of the authentication task is not valid.",
                                       status=401, parameter="apiKey", task_type="authentication"))
        session = self.emu.sessions.open(task.get("connectionSessionUUID"))
        if self.session is not None and self.session is not session:
            self.session.detach(self)
        self.session = session
        self.reply({"taskType": "authentication", "connectionSessionUUID": session.uuid})
        session.attach(self)
        return None

    def run(self, tasks: list[dict], session: Session) -> None:
        runner = self.emu.runner
        outcomes, waiting = runner.start(tasks, self.base_url, then_async=lambda outcome: self.push(session, outcome))
        accepted = sum(1 for task, outcome in zip(tasks, outcomes, strict=True)
                       if task.get("taskType") in CAPTION_TYPES and not isinstance(outcome, ApiError))
        if any([self.emu.disconnect_fault() for _ in range(accepted)]):  # one draw per accepted task
            log.info("closing a WebSocket connection mid-task (disconnect fault)")
            self.close(SERVICE_RESTART, "the server is restarting (injected fault)")
        session.answer(*(o for o in outcomes if o is not None))
        for _, record, images in waiting:
            runner.finish_later(record, images, session.answer)

    def push(self, session: Session, outcome: dict | ApiError) -> None:
        """Send an async caption's result, unless the drop fault withholds it; after the delay faults."""
        faults, dice = self.emu.settings.faults, self.emu.dice
        task_uuid = outcome.get("taskUUID") if isinstance(outcome, dict) else outcome.task_uuid
        if dice.chance(faults.drop_rate, "drop", task_uuid):
            log.info("result of task %s not pushed (drop fault)", task_uuid)
            return
        delay_ms = faults.delay_ms + dice.unit("jitter", task_uuid, 0) * faults.jitter_ms
        self.emu.sessions.pusher.call_later(delay_ms / 1000, session.answer, outcome)


def _for_each(tasks: list[dict], code: str, message: str, status: int) -> list[ApiError]:
    """The same error for each task, naming it (the SDKs route errors by taskUUID)."""
    return [ApiError(code, message, status=status, task_type=_text(t.get("taskType")),
                     task_uuid=_text(t.get("taskUUID"))) for t in tasks]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
