"""The task types: validate each task of a request, run it, and say what to answer.

- `imageCaption` (`inputImage`, or `inputImages` for several) and `caption`
  (`model` + `inputs.image`): a caption from the image's pixels. Without
  `webhookURL`, `deliveryMethod` "sync" (the default) answers with the result;
  "async" answers with an acknowledgement and the result is fetched with
  getResponse (over WebSocket it is also pushed). With `webhookURL` the answer
  is always an acknowledgement and the result is POSTed to the URL (and
  getResponse has it).
- `imageUpload` (`image`): keeps the image and answers its `imageUUID` and `imageURL`.
- `getResponse` (`taskUUID`): the state of any task accepted before.

Each task stands alone: one task's error never stops the others. `run` serves
a REST request (it waits for sync captions); `start` and `finish_later` serve
the WebSocket, which answers each sync caption when it is done.
"""

from __future__ import annotations

import dataclasses
import io
import re
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from urllib.parse import urlsplit

from . import captioner
from . import images
from .delivery import WebhookSender
from .dice import Dice
from .errors import ApiError
from .errors import invalid
from .images import DecodedImage
from .records import Records
from .records import TaskRecord
from .scheduler import Scheduler
from .settings import Settings

CAPTION_TYPES = ("imageCaption", "caption")
TASK_TYPES = CAPTION_TYPES + ("imageUpload", "getResponse")
AIR_RE = re.compile(r"^[A-Za-z0-9_.-]+:[0-9]+@[A-Za-z0-9_.-]+$")
UPLOAD_MAX_SIDE = 2048  # Runware stores uploads at most this long on the longer side
CAPTION_CACHE_SIZE = 4096  # captions remembered by image sha256
PROCESSING_WORKERS = 4  # threads finishing async and webhook tasks
MAX_INPUT_IMAGES = 8  # images in one imageCaption's inputImages

Outcome = dict | ApiError  # a data item or an error item
Then = Callable[[Outcome], None]  # told a task's outcome once it is finished
Waiting = tuple[int, TaskRecord, list[DecodedImage]]  # a sync caption still to make, at its index in the request


class TaskRunner:
    def __init__(self, settings: Settings, dice: Dice, records: Records, sender: WebhookSender) -> None:
        self.settings, self.dice, self.records, self.sender = settings, dice, records, sender
        self.processor = Scheduler(PROCESSING_WORKERS, "tasks")
        self._captions: dict[str, str] = {}
        self._captions_lock = threading.Lock()

    def run(self, tasks: list[dict], base_url: str) -> tuple[list[dict], list[ApiError]]:
        """Handle the tasks of one REST request (authentication removed): the `data` items and the errors."""
        outcomes, waiting = self.start(tasks, base_url)
        if waiting:
            time.sleep(self.settings.processing_ms / 1000)
            for i, record, images_ in waiting:
                outcomes[i] = self.finish(record, images_)
        return split(outcomes)

    def start(self, tasks: list[dict], base_url: str,
              then_async: Then | None = None) -> tuple[list[Outcome | None], list[Waiting]]:
        """Validate and start each task: the outcomes known at once (None where a sync caption is waiting),
        and the sync captions still to make. `then_async` is told each async caption's outcome."""
        outcomes: list[Outcome | None] = [None] * len(tasks)
        waiting: list[Waiting] = []
        for i, task in enumerate(tasks):
            task_type = task.get("taskType") if isinstance(task.get("taskType"), str) else None
            task_uuid = task.get("taskUUID") if isinstance(task.get("taskUUID"), str) else None
            try:
                outcome = self._start(task, base_url, then_async)
            except ApiError as exc:
                outcome = exc.for_task(task_type, task_uuid)
            if isinstance(outcome, tuple):
                waiting.append((i, *outcome))
            else:
                outcomes[i] = outcome
        return outcomes, waiting

    def finish_later(self, record: TaskRecord, images_: list[DecodedImage], then: Then | None = None) -> None:
        """Finish the task after `processing_ms`, on a processing thread; then tell `then` its outcome."""
        self.processor.call_later(self.settings.processing_ms / 1000, self._finish_then, record, images_, then)

    def _finish_then(self, record: TaskRecord, images_: list[DecodedImage], then: Then | None) -> None:
        outcome = self.finish(record, images_)
        if then is not None:
            then(outcome)

    def _start(self, task: dict, base_url: str, then_async: Then | None):
        """A data item, an ApiError, or (record, images) for a sync caption still to be made."""
        task_type = task.get("taskType")
        if task_type is None:
            raise invalid("missingTaskType", "The parameter taskType is required.", "taskType")
        if task_type == "authentication":
            raise invalid("invalidTaskType", "The authentication task must be the first element.", "taskType")
        if task_type not in TASK_TYPES:
            raise invalid("invalidTaskType", f"Unknown taskType {task_type!r}; this emulator knows "
                          f"{', '.join(TASK_TYPES)}.", "taskType")
        task_uuid = task.get("taskUUID")
        if task_uuid is None:
            raise invalid("missingTaskUUID", "The parameter taskUUID is required.", "taskUUID")
        if not images.is_uuid(task_uuid):
            raise invalid("invalidTaskUUID", "The parameter taskUUID must be a UUID v4 string.", "taskUUID")
        if task_type == "getResponse":
            return self._get_response(task_uuid)
        if task_type == "imageUpload":
            return self._upload(task, task_uuid, base_url)
        return self._caption(task, task_type, task_uuid, then_async)

    def _claim(self, record: TaskRecord, images_: list[DecodedImage] = ()) -> None:
        if not self.records.claim(record, images_):
            raise invalid("conflictTaskUUID", f"A task with taskUUID {record.task_uuid} exists already; "
                          "use a new UUID for each task.", "taskUUID")

    def _caption(self, task: dict, task_type: str, task_uuid: str, then_async: Then | None):
        include_cost = task.get("includeCost", False)
        if not isinstance(include_cost, bool):
            raise invalid("invalidIncludeCost", "The parameter includeCost must be a boolean.", "includeCost")
        method = task.get("deliveryMethod", "sync")
        if method not in ("sync", "async"):
            raise invalid("invalidDeliveryMethod", 'The parameter deliveryMethod must be "sync" or "async".',
                          "deliveryMethod")
        webhook_url = task.get("webhookURL")
        if webhook_url is not None and not _is_http_url(webhook_url):
            raise invalid("invalidWebhookURL", "The parameter webhookURL must be an http(s) URL.", "webhookURL")
        model = task.get("model")
        if model is None and task_type == "caption":
            raise invalid("missingModel", "The parameter model is required (an AIR ID such as runware:150@2).",
                          "model")
        if model is not None and not (isinstance(model, str) and AIR_RE.match(model)):
            raise invalid("invalidModel", "The parameter model must be an AIR ID such as runware:150@2.", "model")
        if task.get("prompt") is not None and not isinstance(task.get("prompt"), str):
            raise invalid("invalidPrompt", "The parameter prompt must be a string.", "prompt")
        images_ = self._input_images(task, task_type)
        delivery = "webhook" if webhook_url else method
        summary = images_[0].summary() if len(images_) == 1 else [image.summary() for image in images_]
        record = TaskRecord(task_uuid, task_type, delivery, include_cost, model, webhook_url, summary)
        self._claim(record, images_)
        if delivery == "sync":
            return record, images_
        self.finish_later(record, images_, then_async if delivery == "async" else None)
        return {"taskType": task_type, "taskUUID": task_uuid}

    def _input_images(self, task: dict, task_type: str) -> list[DecodedImage]:
        """The images of a caption task: `inputs.image` (caption), `inputImage` or `inputImages` (imageCaption)."""
        if task_type == "caption":
            inputs = task.get("inputs")
            if inputs is not None and not isinstance(inputs, dict):
                raise invalid("invalidInputs", "The parameter inputs must be an object.", "inputs")
            return [images.load((inputs or {}).get("image"), "inputs.image", self.settings, self.records.image)]
        several = task.get("inputImages")
        if several is None:
            return [images.load(task.get("inputImage"), "inputImage", self.settings, self.records.image)]
        if task.get("inputImage") is not None:
            raise invalid("invalidInputImages", "Give inputImage or inputImages, not both.", "inputImages")
        if not isinstance(several, list) or not 1 <= len(several) <= MAX_INPUT_IMAGES:
            raise invalid("invalidInputImages", f"The parameter inputImages must be a list of 1 to "
                          f"{MAX_INPUT_IMAGES} images.", "inputImages")
        return [images.load(value, f"inputImages[{n}]", self.settings, self.records.image)
                for n, value in enumerate(several)]

    def finish(self, record: TaskRecord, images_: list[DecodedImage]) -> Outcome:
        """Make the caption (or the injected error), record it, and send the webhook if one is wanted.

        Several images get one text, "image 1: ...; image 2: ...", and the sum of their costs."""
        item, error = None, None
        if self.dice.chance(self.settings.faults.task_error_rate, "task-error", record.task_uuid):
            error = ApiError("timeoutProvider", "The provider did not answer in time (injected task error).",
                             status=500, task_type=record.task_type, task_uuid=record.task_uuid, outcome=True)
        else:
            texts = [self._describe(image) for image in images_]
            text = texts[0] if len(texts) == 1 else "; ".join(f"image {n}: {t}" for n, t in enumerate(texts, 1))
            item = {"taskType": record.task_type, "taskUUID": record.task_uuid, "text": text}
            if record.include_cost:
                item["cost"] = round(sum(captioner.cost(image.width, image.height) for image in images_), 6)
        self.records.finish(record, item, error)
        if record.webhook_url:
            self.sender.send(record, item, error)
        return item if error is None else error

    def resume(self) -> None:
        """After a restart: finish the tasks it cut off, and send again the webhooks it left pending."""
        for record, saved in self.records.unfinished():
            try:
                images_ = [images.decode(data, source, "inputImage", self.settings) for source, data in saved]
            except ApiError as exc:  # the limits were lowered since: the task fails as it would have
                self.records.finish(record, None, exc.for_task(record.task_type, record.task_uuid))
                continue
            self.finish_later(record, images_)
        for record in self.records.webhooks_pending():
            self.sender.send(record, record.result, record.error)

    def _describe(self, image: DecodedImage) -> str:
        key = image.sha256
        with self._captions_lock:
            text = self._captions.get(key)
        if text is None:
            text = captioner.describe(image.pixels.copy())
            with self._captions_lock:
                if len(self._captions) >= CAPTION_CACHE_SIZE:
                    self._captions.clear()
                self._captions[key] = text
        return text

    def _upload(self, task: dict, task_uuid: str, base_url: str) -> dict:
        image = images.load(task.get("image"), "image", self.settings, self.records.image,
                            formats=images.UPLOAD_FORMATS, missing_code="missingImage")
        image = _fit(image, self.settings)
        image_uuid = str(uuidlib.uuid4())
        item = {"taskType": "imageUpload", "taskUUID": task_uuid, "imageUUID": image_uuid,
                "imageURL": f"{base_url.rstrip('/')}/_emulator/images/{image_uuid}"}
        record = TaskRecord(task_uuid, "imageUpload", "sync", image=image.summary())
        self._claim(record)
        self.records.add_image(image_uuid, image)
        self.records.finish(record, item, None)
        return item

    def _get_response(self, task_uuid: str) -> dict:
        record = self.records.task(task_uuid)
        if record is None:
            raise ApiError("taskNotFound", f"No task with taskUUID {task_uuid} is known.", status=404,
                           parameter="taskUUID", task_type="getResponse", task_uuid=task_uuid)
        if record.status == "processing":
            return {"taskType": record.task_type, "taskUUID": task_uuid, "status": "processing"}
        if record.error is not None:
            e = record.error
            raise ApiError(e.code, e.message, status=200, parameter=e.parameter, task_type=e.task_type,
                           task_uuid=e.task_uuid, outcome=True)
        return {**record.result, "status": "success"}

    def pending(self) -> int:
        return self.processor.pending()

    def close(self) -> int:
        return self.processor.stop()


def split(outcomes: list[Outcome | None]) -> tuple[list[dict], list[ApiError]]:
    """The data items and the errors among some outcomes, each in order."""
    return [o for o in outcomes if isinstance(o, dict)], [o for o in outcomes if isinstance(o, ApiError)]


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _fit(image: DecodedImage, settings: Settings) -> DecodedImage:
    """The image as kept by an upload: at most UPLOAD_MAX_SIDE pixels on its longer side."""
    image = dataclasses.replace(image, source="upload")
    if max(image.width, image.height) <= UPLOAD_MAX_SIDE:
        return image
    pixels = image.pixels.copy()
    pixels.thumbnail((UPLOAD_MAX_SIDE, UPLOAD_MAX_SIDE))
    fmt = "JPEG" if image.format == "JPEG" else "PNG"
    if fmt == "JPEG" and pixels.mode not in ("RGB", "L"):
        pixels = pixels.convert("RGB")
    buffer = io.BytesIO()
    pixels.save(buffer, fmt)
    return images.decode(buffer.getvalue(), "upload", "image", settings, images.UPLOAD_FORMATS)
