"""The emulator's HTTP face: `POST /v1` (the Runware REST contract) and the `/_emulator` views.

The WebSocket API shares the path `/v1` (websocket.py) and everything behind it.

`POST /v1`, in order:
1. An `Authorization` header, when present, must be `Bearer <api key>` (else 401).
2. The body must be a non-empty JSON array of objects (else 400 invalidPayload).
3. Without a valid header, the first element must be `{"taskType":"authentication","apiKey":...}`
   with the right key (else 401 invalidApiKey).
4. Injected capacity faults answer 429 rateLimitExceeded or 503 serviceUnavailable; nothing is recorded.
5. Every other element is a task, handled on its own (see tasks.py); the answer holds `data`
   and/or `errors`, and its status follows errors.response_status.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading

import orjson
from flask import Blueprint
from flask import Flask
from flask import Response
from flask import current_app
from flask import request
from werkzeug.exceptions import HTTPException

from . import images
from .delivery import WebhookSender
from .dice import Dice
from .errors import ApiError
from .errors import response_status
from .records import Records
from .sessions import Sessions
from .settings import Settings
from .state import StateFile
from .tasks import TaskRunner
from .websocket import server_options
from .websocket import sock
from .websocket import ws_bp

log = logging.getLogger(__name__)
bp = Blueprint("emulator", __name__)


class Emulator:
    """The running parts behind the app: records, dice, task runner, webhook sender and WebSocket sessions.

    With a state directory the records of earlier runs are loaded, and the tasks
    and webhooks those runs left unfinished are resumed.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dice = Dice(settings.seed)
        state = StateFile(settings.state_dir) if settings.state_dir else None
        self.records = Records(settings.max_records, state, self._decode_upload)
        self.sender = WebhookSender(settings, self.dice, self.records)
        self.runner = TaskRunner(settings, self.dice, self.records, self.sender)
        self.sessions = Sessions()
        self._requests = itertools.count(1)
        self._accepted = itertools.count(1)
        self._lock = threading.Lock()
        self.runner.resume()

    def _decode_upload(self, data: bytes) -> images.DecodedImage:
        return images.decode(data, "upload", "image", self.settings, images.UPLOAD_FORMATS)

    def capacity_fault(self) -> ApiError | None:
        """The injected 429 or 503 for the next request (REST) or message (WebSocket), if one is drawn."""
        with self._lock:
            n = next(self._requests)
        faults = self.settings.faults
        if self.dice.chance(faults.rate_limit_rate, "rate-limit", n):
            return ApiError("rateLimitExceeded", "The queue is full; retry with exponential backoff "
                            "(injected fault).", status=429)
        if self.dice.chance(faults.unavailable_rate, "unavailable", n):
            return ApiError("serviceUnavailable", "Temporary capacity limit; retry later (injected fault).",
                            status=503)
        return None

    def disconnect_fault(self) -> bool:
        """Whether the WebSocket connection that accepted the next caption task is to be closed (drawn in order)."""
        with self._lock:
            n = next(self._accepted)
        return self.dice.chance(self.settings.faults.disconnect_rate, "disconnect", n)

    def close(self) -> None:
        """Stop the background threads; scheduled tasks, webhooks and pushes not yet started are discarded."""
        pushes, tasks, deliveries = self.sessions.close(), self.runner.close(), self.sender.close()
        self.records.close()
        if tasks or deliveries or pushes:
            log.info("emulator stopped with %d tasks, %d webhook calls and %d pushes still scheduled",
                     tasks, deliveries, pushes)


def json_response(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def error_response(code: str, message: str, status: int) -> Response:
    return json_response({"errors": [ApiError(code, message, status=status).item()]}, status)


def emulator() -> Emulator:
    return current_app.extensions["emulator"]


@bp.post("/v1")
def tasks_endpoint() -> Response:
    emu = emulator()
    authenticated = False
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not emu.settings.key_matches(key.strip()):
            return error_response("invalidApiKey", "The API key in the Authorization header is not valid.", 401)
        authenticated = True
    try:
        tasks = orjson.loads(request.get_data())
    except orjson.JSONDecodeError as exc:
        return error_response("invalidPayload", f"The body is not valid JSON ({exc}).", 400)
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
        return error_response("invalidPayload", "The body must be a non-empty JSON array of task objects.", 400)
    if tasks[0].get("taskType") == "authentication":
        if not emu.settings.key_matches(tasks[0].get("apiKey")):
            return error_response("invalidApiKey", "The apiKey of the authentication task is not valid.", 401)
        authenticated, tasks = True, tasks[1:]
    if not authenticated:
        return error_response("invalidApiKey", "No API key: send the header Authorization: Bearer <key>, "
                              "or an authentication task as the first element.", 401)
    if not tasks:
        return error_response("invalidPayload", "The body holds no task besides authentication.", 400)
    fault = emu.capacity_fault()
    if fault is not None:
        return json_response({"errors": [fault.item()]}, fault.status)
    data, errors = emu.runner.run(tasks, request.host_url)
    body: dict = {}
    if data:
        body["data"] = data
    if errors:
        body["errors"] = [e.item() for e in errors]
    return json_response(body, response_status(data, errors))


@bp.get("/healthz")
def healthz() -> Response:
    emu = emulator()
    return json_response({"status": "ok", "seed": emu.dice.seed, "pendingTasks": emu.runner.pending(),
                          "pendingDeliveries": emu.sender.pending() + emu.sessions.pusher.pending()})


@bp.get("/_emulator/tasks")
def tasks_view() -> Response:
    return json_response({"tasks": emulator().records.tasks(request.args.get("taskUUID"))})


@bp.get("/_emulator/attempts")
def attempts_view() -> Response:
    return json_response({"attempts": emulator().records.attempts(request.args.get("taskUUID"))})


@bp.get("/_emulator/settings")
def settings_view() -> Response:
    settings = dataclasses.asdict(emulator().settings)
    settings["api_key"] = "REDACTED"
    settings["seed"] = emulator().dice.seed
    return json_response(settings)


@bp.get("/_emulator/images/<image_uuid>")
def image_view(image_uuid: str) -> Response:
    image = emulator().records.image(image_uuid.lower())
    if image is None:
        return error_response("imageNotFound", f"No uploaded image has the UUID {image_uuid}.", 404)
    return Response(image.data, mimetype=image.media_type)


def handle_http_error(exc: HTTPException) -> Response:
    code = {404: "notFound", 405: "methodNotAllowed", 413: "payloadTooLarge"}.get(exc.code or 500, "badRequest")
    return error_response(code, exc.description or exc.name, exc.code or 500)


def handle_unexpected(exc: Exception) -> Response:
    log.exception("unexpected error")
    return error_response("internalError", f"The emulator failed: {type(exc).__name__}.", 500)


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask app for these settings; `app.extensions["emulator"].close()` stops its threads."""
    settings = settings or Settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["SOCK_SERVER_OPTIONS"] = server_options(settings.max_request_bytes)
    app.extensions["emulator"] = Emulator(settings)
    app.register_blueprint(bp)
    app.register_blueprint(ws_bp)
    sock.init_app(app)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected)
    return app
