"""`POST /api/captions`: accept images for captioning, store them as queued tasks, answer at once.

Submit token required (`Authorization: Bearer …`, from SUBMIT_TOKENS). Two body kinds:

- JSON: `{"images": [...], "model": "runware:150@2", "includeCost": true, "deliveryMethod": "async"}`,
  each image an http(s) URL, a data URI, raw base64 or the UUID of an image uploaded to Runware;
- multipart/form-data: one or more files (any field name), the options as form fields.

Options: `model` (an AIR ID, Runware's default when absent), `includeCost`
(default true), `deliveryMethod` `async` (default: the result comes to our
webhook) or `sync` (the result comes in Runware's answer), `labels` (an object
of labels, receiver/labels.py; a multipart body gives it as JSON text): stored
on each task and added to the webhookURL sent to Runware. Any other field is
refused with a 400 naming it. Each image is checked
(`receiver.images`); every good one becomes a task with a new UUID v4, stored as
queued before anything is sent, and a submit job is enqueued. The answer (202)
lists, in the order given, each image's `taskUUID` or the problem that kept it
out; 422 when no image was good. `GET /api/captions/<taskUUID>` reads a task back.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from dataclasses import field

import orjson
import redis
from flask import Blueprint
from flask import jsonify
from flask import request

from receiver import images
from receiver import labels as label_rules
from receiver.api import task_response
from receiver.auth import require_bearer
from receiver.errors import error_response
from receiver.openapi import operation
from receiver.state import redis_client
from receiver.state import settings
from receiver.state import writer_engine
from store import submissions
from store.submissions import NewTask
from workers.payloads import UUID_RE
from workers.submit import want_submit

log = logging.getLogger(__name__)
bp = Blueprint("submit", __name__, url_prefix="/api")

MAX_IMAGES_PER_REQUEST = 1000
DELIVERY_METHODS = ("async", "sync")
OPTIONS = ("model", "includeCost", "deliveryMethod", "labels")
"""The fields a submission may give beside its images."""

MODEL_RE = re.compile(r"^[A-Za-z0-9_.-]+:[0-9]+@[A-Za-z0-9_.-]+$")
"""An AIR ID, such as runware:150@2."""


class OptionError(ValueError):
    """A request option is malformed; the message names it."""


@dataclass(frozen=True)
class Options:
    model: str | None = None
    include_cost: bool = True
    delivery_method: str = "async"
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Accepted:
    """One image of a submission: its task, or the problem that kept it out."""

    index: int
    name: str | None
    task_uuid: str | None = None
    error: str | None = None

    def as_json(self) -> dict:
        item = {"index": self.index, "input": self.name}
        if self.task_uuid:
            item.update(taskUUID=self.task_uuid, status="queued")
        else:
            item["error"] = self.error
        return item


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise OptionError(f"{name} must be true or false")


def parse_options(source: dict, fields: tuple[str, ...] = OPTIONS) -> Options:
    """The options of a request (JSON object or form fields); OptionError names a bad or unknown one."""
    unknown = sorted(set(source) - set(fields), key=str)  # a multipart part without a name is None
    if unknown:
        raise OptionError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"(allowed: {', '.join(fields)})")
    model = source.get("model")
    if model in (None, ""):
        model = None
    elif not isinstance(model, str) or len(model) > 128 or not MODEL_RE.match(model):
        raise OptionError("model must be an AIR ID such as runware:150@2")
    include_cost = _flag(source.get("includeCost", True), "includeCost")
    method = source.get("deliveryMethod") or "async"
    if method not in DELIVERY_METHODS:
        raise OptionError("deliveryMethod must be async or sync")
    labels = source.get("labels")
    if isinstance(labels, str):  # a multipart form field
        try:
            labels = orjson.loads(labels) if labels.strip() else None
        except orjson.JSONDecodeError:
            raise OptionError('labels must be a JSON object such as {"projectId": "proj_789"}') from None
    try:
        labels = label_rules.from_object(labels) if labels is not None else {}
    except label_rules.LabelError as exc:
        raise OptionError(f"labels: {exc}") from None
    return Options(model, include_cost, method, labels)


def _name(value: object) -> str | None:
    """What to remember of a JSON image: a URL or UUID as given; nothing for image bytes."""
    if isinstance(value, str) and (images.is_url(value.strip()) or UUID_RE.match(value.strip())):
        return value.strip()[:512]
    return None


def check(inputs: list[tuple[str | None, object]], options: Options, convert) -> tuple[list[Accepted], list[NewTask]]:
    """Check each (name, image) with `convert(image) -> input_ref`; the outcome of each and the tasks to store."""
    outcomes, new = [], []
    for index, (name, value) in enumerate(inputs):
        try:
            ref = convert(value)
        except images.ImageError as exc:
            outcomes.append(Accepted(index, name, error=str(exc)))
            continue
        task_uuid = str(uuid.uuid4())
        new.append(NewTask(task_uuid, ref, name, options.model, options.include_cost, options.delivery_method,
                           options.labels))
        outcomes.append(Accepted(index, name, task_uuid=task_uuid))
    return outcomes, new


def store_and_submit(new: list[NewTask]) -> bool:
    """Store tasks as queued (one transaction), then make sure a submit job runs. False if none was enqueued.

    The tasks are safe once stored: should Redis be down, the reconcile job
    enqueues a submit job for them later.
    """
    with writer_engine().begin() as conn:
        submissions.queue_tasks(conn, new)
    try:
        want_submit(redis_client())
        return True
    except redis.RedisError as exc:
        log.warning("%d tasks queued, but no submit job enqueued (Redis: %s); reconcile will", len(new),
                    type(exc).__name__)
        return False


def _json_inputs(limit: int) -> tuple[list[tuple[str | None, object]], Options]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise OptionError('body must be a JSON object: {"images": [...]}')
    raw = body.get("images")
    if not isinstance(raw, list) or not raw:
        raise OptionError("images must be a non-empty array of URLs, data URIs, base64 strings or image UUIDs")
    if len(raw) > limit:
        raise OptionError(f"images: at most {limit} per request, got {len(raw)}")
    return [(_name(v), v) for v in raw], parse_options({k: v for k, v in body.items() if k != "images"},
                                                       OPTIONS)


@bp.post("/captions")
@operation(summary="Submit images for captioning", tags=["submission"], auth=("submit",),
           body={"application/json": "Submission", "multipart/form-data": "SubmissionForm"},
           responses={202: "Submitted"}, errors=(400, 413, 415, 422, 503))
@require_bearer("submit_tokens")
def submit():
    config = settings()
    request.max_content_length = config.max_submit_body_bytes
    max_bytes = config.max_image_bytes
    try:
        if request.mimetype == "multipart/form-data":
            files = [f for key in request.files for f in request.files.getlist(key)]
            if not files:
                raise OptionError("no file in the multipart body")
            if len(files) > MAX_IMAGES_PER_REQUEST:
                raise OptionError(f"at most {MAX_IMAGES_PER_REQUEST} files per request, got {len(files)}")
            inputs = [(f.filename or None, f.stream) for f in files]
            options = parse_options(request.form.to_dict())
            outcomes, new = check(inputs, options, lambda stream: images.from_stream(stream, max_bytes))
        elif request.is_json:
            inputs, options = _json_inputs(MAX_IMAGES_PER_REQUEST)
            outcomes, new = check(inputs, options, lambda value: images.from_reference(value, max_bytes))
        else:
            return error_response(415, "Content-Type must be application/json or multipart/form-data")
    except OptionError as exc:
        return error_response(400, str(exc))
    body = {"tasks": [o.as_json() for o in outcomes], "accepted": len(new), "rejected": len(outcomes) - len(new)}
    if not new:
        return error_response(422, "no image was accepted", **body)
    store_and_submit(new)
    log.info("queued %d caption tasks (%d images rejected)", len(new), body["rejected"])
    return jsonify(body), 202


@bp.get("/captions/<task_uuid>")
@operation(summary="A submitted task, with its history", tags=["submission"], auth=("submit",),
           responses={200: "TaskWithHistory"}, errors=(400, 404, 503))
@require_bearer("submit_tokens")
def get_caption(task_uuid: str):
    """Read from the primary: a task submitted a moment ago is found even while a replica lags."""
    return task_response(task_uuid, primary=True)
