"""A small client for Runware's REST API: one POST of a task array, its answer classified.

`RunwareClient.run(tasks)` sends one request (`Authorization: Bearer`, a JSON
array of tasks) and returns a `RunwareAnswer` (the `data` and `errors` items and
the HTTP status) for any 2xx answer, whose per-task errors the caller matches by
`taskUUID`. It never retries by itself. It raises:

- `RetryableError` for what is worth sending again: 429, 500, 502, 503, 504,
  timeouts, network errors and an unreadable 2xx answer (the tasks may have been
  accepted; sending the same taskUUIDs again is answered `conflictTaskUUID`);
- `RunwareError` for what is not: 400, 401, 402, 403 and any other status.

Both carry Runware's `code` and `message` (the first error item of the answer,
or `httpNNN` and the reason when the answer has none), the HTTP `status`, and
the `answer` with any per-task items. `backoff()` is the one place where retry
delays and their jitter are computed; the jobs that call the client use it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from dataclasses import field
from http import HTTPStatus

import orjson
import requests

from config import Config
from config import ConfigError

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
"""HTTP statuses Runware documents (or proxies send) for transient overload and outages."""

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for the TCP/TLS connection to Runware."""

DEFAULT_TIMEOUT = 120.0
"""Seconds to wait for an answer (a sync caption answer comes only once the captions are done)."""

CAPTION_TASK = "imageCaption"
POLL_TASK = "getResponse"
CONFLICT_CODE = "conflictTaskUUID"
"""Runware's answer to a taskUUID it already knows: the task was submitted before."""


def backoff(attempt: int, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (0 for the first): exponential, capped, jittered.

    "Equal jitter": half of `min(cap, base * 2**attempt)` is kept and the other half
    is random, so a crowd of retries spreads out yet none comes back at once.
    """
    ceiling = min(cap, base * 2 ** min(max(attempt, 0), 32))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


@dataclass(frozen=True)
class RunwareAnswer:
    """What Runware answered: result items, error items (each usually with its taskUUID), HTTP status."""

    data: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    status: int = 200

    def items(self) -> list[tuple[dict, bool]]:
        """The result items then the error items, as (item, is_error) pairs."""
        return [(i, False) for i in self.data] + [(i, True) for i in self.errors]


class RunwareError(Exception):
    """Runware refused the request; sending it again as it is will not help."""

    retryable = False

    def __init__(self, code: str, message: str, status: int | None = None, answer: RunwareAnswer | None = None):
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.message = message
        self.status = status
        self.answer = answer or RunwareAnswer(status=status or 0)

    @property
    def request_wide(self) -> bool:
        """True unless every error item names a task: the refusal is about the request (key, balance, …)."""
        errors = self.answer.errors
        return not errors or not all(isinstance(item.get("taskUUID"), str) for item in errors)


class RetryableError(RunwareError):
    """A transient failure (overload, outage, network): the same request may succeed later."""

    retryable = True


def caption_task(task_uuid: str, input_image: str, *, model: str | None = None, include_cost: bool = True,
                 delivery_method: str = "async", webhook_url: str | None = None) -> dict:
    """An `imageCaption` task object."""
    task = {"taskType": CAPTION_TASK, "taskUUID": task_uuid, "inputImage": input_image,
            "includeCost": include_cost, "deliveryMethod": delivery_method}
    if model:
        task["model"] = model
    if webhook_url:
        task["webhookURL"] = webhook_url
    return task


def poll_task(task_uuid: str) -> dict:
    """A `getResponse` task asking for the state of an earlier task."""
    return {"taskType": POLL_TASK, "taskUUID": task_uuid}


def _as_items(value: object) -> list[dict]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    if isinstance(value, str):
        return [{"message": value}]
    return []


def envelope(doc: object) -> tuple[list[dict], list[dict]]:
    """The (data, errors) items of an answer body, whatever its shape.

    `{"data": [...], "errors": [...]}` is the documented one; `{"error": {...}}`
    (older docs), a bare array and objects instead of arrays occur too.
    """
    if isinstance(doc, list):
        errors = [item for item in _as_items(doc) if "code" in item or "error" in item]
        return [item for item in _as_items(doc) if item not in errors], errors
    if not isinstance(doc, dict):
        return [], []
    return _as_items(doc.get("data")), _as_items(doc.get("errors")) + _as_items(doc.get("error"))


def _first_error(errors: list[dict], status: int) -> tuple[str, str]:
    for item in errors:
        nested = item.get("error") if isinstance(item.get("error"), dict) else item
        code, message = nested.get("code"), nested.get("message")
        if code or message:
            return str(code or f"http{status}"), str(message or "")
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "unexpected status"
    return f"http{status}", reason


class RunwareClient:
    """Sends task arrays to Runware's REST endpoint (or the emulator) with a Bearer key."""

    def __init__(self, api_url: str, api_key: str, session: requests.Session | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        if not api_url:
            raise ConfigError("RUNWARE_API_URL is not set (the local launcher points it at the emulator)")
        self.api_url = api_url
        self.api_key = api_key
        self.timeout = timeout
        self.session = session or requests.Session()

    @classmethod
    def from_config(cls, config: Config, session: requests.Session | None = None) -> RunwareClient:
        return cls(config.runware_api_url, config.runware_api_key, session=session)

    def run(self, tasks: list[dict]) -> RunwareAnswer:
        """POST `tasks` as one request; the 2xx answer, or RetryableError / RunwareError."""
        if not tasks:
            raise ValueError("no tasks to send")
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        try:
            response = self.session.post(self.api_url, data=orjson.dumps(tasks), headers=headers,
                                         timeout=(min(CONNECT_TIMEOUT, self.timeout), self.timeout))
        except requests.Timeout:
            raise RetryableError("timeout", f"no answer from Runware within {self.timeout:g}s") from None
        except requests.RequestException as exc:
            raise RetryableError("network", f"cannot reach Runware: {type(exc).__name__}") from None
        status = response.status_code
        try:
            doc = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            doc = None
        data, errors = envelope(doc)
        answer = RunwareAnswer(data, errors, status)
        if 200 <= status < 300:
            if doc is None:
                raise RetryableError("badAnswer", "Runware's answer is not JSON", status, answer)
            return answer
        code, message = _first_error(errors, status)
        error = RetryableError if status in RETRYABLE_STATUSES else RunwareError
        raise error(code, message, status, answer)
