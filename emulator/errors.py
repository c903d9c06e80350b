"""Runware's error items and the HTTP status a response carries.

An error item has the documented fields `code`, `message`, `parameter`,
`taskType`, `taskUUID` and `documentation` (null where they do not apply);
items that report a task's outcome (getResponse, webhooks, failed sync tasks)
also carry `status: "error"`.

A response's HTTP status: 200 when it holds at least one `data` item,
otherwise the lowest status among its error items (400 invalid input,
401 bad API key, 404 unknown task, 429/503 injected capacity faults,
500 a failed sync task, 200 a failure reported by getResponse).
"""

from __future__ import annotations

DOCS = "https://runware.ai/docs/platform/errors"
TASK_DOCS = {
    "imageCaption": "https://runware.ai/docs/en/utilities/image-to-text",
    "caption": "https://runware.ai/docs/en/utilities/image-to-text",
    "imageUpload": "https://runware.ai/docs/en/utilities/image-upload",
    "getResponse": "https://runware.ai/docs/platform/task-polling",
}


class ApiError(Exception):
    """One error item, plus the HTTP status it calls for when nothing in the response succeeded."""

    def __init__(self, code: str, message: str, *, status: int = 400, parameter: str | None = None,
                 task_type: str | None = None, task_uuid: str | None = None, outcome: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.parameter = parameter
        self.task_type = task_type
        self.task_uuid = task_uuid
        self.outcome = outcome

    def for_task(self, task_type: str | None, task_uuid: str | None) -> ApiError:
        """Fill in the task it belongs to (where not set already) and return self."""
        self.task_type = self.task_type or task_type
        self.task_uuid = self.task_uuid or task_uuid
        return self

    def saved(self) -> dict:
        """The constructor's arguments, for `ApiError(**saved)`."""
        return {"code": self.code, "message": self.message, "status": self.status, "parameter": self.parameter,
                "task_type": self.task_type, "task_uuid": self.task_uuid, "outcome": self.outcome}

    def item(self) -> dict:
        """The JSON error item."""
        item = {
            "code": self.code,
            "message": self.message,
            "parameter": self.parameter,
            "taskType": self.task_type,
            "taskUUID": self.task_uuid,
            "documentation": TASK_DOCS.get(self.task_type or "", DOCS),
        }
        if self.outcome:
            item["status"] = "error"
        return item


def invalid(code: str, message: str, parameter: str | None = None) -> ApiError:
    """A 400 validation error about one parameter."""
    return ApiError(code, message, status=400, parameter=parameter)


def response_status(data: list, errors: list[ApiError]) -> int:
    """The HTTP status of a response holding these items (see the module docstring)."""
    if data or not errors:
        return 200
    return min(e.status for e in errors)
