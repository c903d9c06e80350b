"""The shapes of the API's requests and answers, as pydantic models, for its OpenAPI document (receiver/openapi.py).

They describe what the routes answer; the routes build their JSON themselves and
parse their input with their own checks (receiver/params.py, receiver/submit.py,
workers/payloads.py). A model named in a route's `@operation(...)` becomes a
component of the document; a query model's fields become the route's query
parameters. Answers are closed (`extra="forbid"`), so a field added to an
answer and not here fails the suite's Schemathesis run.
"""

from __future__ import annotations

from typing import Annotated
from typing import Any
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field

Uuid = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"}, description="ISO 8601, with its UTC offset")]
Status = Literal["queued", "submitted", "error", "success"]
Count = Annotated[int, Field(ge=0)]


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors -------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """What went wrong; some errors add fields (`parameter`, `cause`, `label`, `items`, `tasks`, ...)."""

    model_config = ConfigDict(extra="allow")
    status: Annotated[int, Field(ge=400, le=599)]
    message: str
    parameter: str | None = Field(None, description="the query parameter at fault (400s of the read API)")
    cause: Literal["read_timeout", "read_budget", "database_unavailable"] | None = Field(
        None, description="why a reader's request was answered 503")


class Error(Closed):
    """Every error answer of the service."""

    error: ErrorDetail


# -- query parameters ---------------------------------------------------------------------------

StatusList = Annotated[str, Field(description="comma-separated statuses: queued, submitted, error, success")]
SourceList = Annotated[str, Field(description="comma-separated sources: submitted, external")]
Since = Annotated[Time, Field(description="ISO 8601 date or time, inclusive (no offset: UTC)")]
Until = Annotated[Time, Field(description="ISO 8601 date or time, exclusive, later than since")]


class TaskFilters(BaseModel):
    """The task list's filters. `label.K=V` (not listed: its name holds the key) keeps the tasks whose
    label K is V; several must all hold."""

    status: StatusList | None = None
    source: SourceList | None = None
    since: Since | None = None
    until: Until | None = None
    q: Annotated[str, Field(max_length=200, description="caption search: words, \"a phrase\", prefix*, or a "
                            "taskUUID (prefix of 8+ hex digits)")] | None = None


class TaskListQuery(TaskFilters):
    limit: Annotated[int, Field(ge=1, le=500, description="tasks per page (default 50)")] | None = None
    cursor: Annotated[str, Field(description="the nextCursor of the previous page")] | None = None


class StatsQuery(BaseModel):
    since: Since | None = None
    until: Until | None = None
    groupBy: Annotated[str, Field(pattern=r"^label\.[A-Za-z0-9_.-]{1,64}$",
                                  description="label.K: add `groups`, per value of label K")] | None = None


class SeriesQuery(BaseModel):
    bucket: Literal["hour", "day"] | None = Field(None, description="the bucket size (default hour)")
    since: Annotated[Time, Field(description="inclusive, a whole UTC hour (day: midnight); default: 48 hours "
                                 "(30 days) before until")] | None = None
    until: Annotated[Time, Field(description="exclusive, a whole UTC hour (day: midnight), later than since, at "
                                 "most 1000 buckets after it; default: the end of the bucket under way")] | None = None


class LabelsQuery(BaseModel):
    values: Annotated[int, Field(ge=1, le=100, description="values listed per key (default 10)")] | None = None


class DeadLetterQuery(BaseModel):
    state: Literal["pending", "replayed", "all"] | None = None
    since: Time | None = None
    until: Time | None = None
    after: Annotated[int, Field(ge=0, le=999_999_999, description="the next_after of the previous page")] | None = None
    limit: Annotated[int, Field(ge=1, le=1000, description="letters per page (default 100)")] | None = None


class WebhookQuery(BaseModel):
    """Besides the secret (`token` or `apiKey`, see the security schemes), every query parameter is a label
    of the delivery and its tasks (key 1 to 64 of A-Z a-z 0-9 _ . -)."""


# -- tasks --------------------------------------------------------------------------------------


class Task(Closed):
    taskUUID: Uuid
    status: Status
    source: Literal["submitted", "external"]
    taskType: str | None
    model: str | None
    text: str | None = Field(description="the caption: untrusted text")
    cost: float | None = Field(description="USD")
    errorCode: str | None
    errorMessage: str | None
    conflict: bool
    deliveryCount: Count
    firstDeliveryAt: Time | None
    lastDeliveryAt: Time | None
    submittedAt: Time | None
    createdAt: Time
    updatedAt: Time
    labels: dict[str, str]
    labelConflicts: list[str] = Field(description="keys a submission or delivery gave another value")
    thumbnail: bool = Field(description="a thumbnail of its image is kept: GET /api/tasks/{taskUUID}/thumbnail")


class DeliveredItem(BaseModel):
    """The item as parsed from the webhook body (cost an exact decimal string)."""

    model_config = ConfigDict(extra="allow")
    taskUUID: Uuid
    status: Status
    text: str | None = None
    cost: str | None = None


class EventDelivery(Closed):
    id: str
    remoteAddr: str | None
    outcome: Literal["stored", "partial", "rejected"] | None
    storedAt: Time | None
    item: DeliveredItem | None


class TaskEvent(Closed):
    at: Time
    kind: Literal["delivery", "submission", "poll"]
    status: Status | None
    detail: str | None
    changedResult: bool
    delivery: EventDelivery | None = Field(None, description="deliveries only")


class TaskWithHistory(Task):
    history: list[TaskEvent] = Field(description="deliveries, submission attempts and polls, oldest first")


class TaskPage(Closed):
    tasks: list[Task]
    limit: int
    nextCursor: str | None = Field(description="pass as cursor for the next page; null on the last")


# -- stats and labels ---------------------------------------------------------------------------

ByName = dict[str, Count]


class Money(Closed):
    usd: float = Field(description="rounded to 6 places")
    exact: str = Field(description="the exact decimal")


class DaySpend(Money):
    day: str
    tasks: Count
    successes: Count
    errors: Count


class Spend(Money):
    successes: Count
    byDay: list[DaySpend]


class TaskCounts(Closed):
    total: Count
    byStatus: ByName
    bySource: ByName
    conflicts: Count
    averageDeliveries: float | None


class GroupTasks(Closed):
    total: Count
    byStatus: ByName


class GroupSpend(Money):
    successes: Count
    errors: Count


class Group(Closed):
    value: str | None
    tasks: GroupTasks
    spend: GroupSpend
    successRate: float | None


class Groups(Closed):
    key: str
    values: list[Group]
    other: Group | None
    distinctValues: Count
    unlabeled: Group


class Window(Closed):
    since: Time | None
    until: Time | None


class Latency(Closed):
    boundsSeconds: list[float]
    submittedToResult: list[Count] = Field(description="one count per bound, and one for the slower rest")
    receivedToStored: list[Count]


class Oldest(Closed):
    taskUUID: Uuid
    submittedAt: Time | None
    ageSeconds: float | None


class Waiting(Closed):
    count: Count
    oldest: Oldest | None


class Deliveries(Closed):
    received: Count
    byOutcome: ByName


class DeadLetterCounts(Closed):
    total: Count
    pending: Count


class Replica(Closed):
    lagSeconds: float = Field(ge=0, description="how far the replica read (DATABASE_READ_URL) is behind its primary")


class Stats(Closed):
    window: Window
    generatedAt: Time
    tasks: TaskCounts
    spend: Spend
    tasksByModel: ByName
    deliveries: Deliveries
    latency: Latency
    deadLetters: DeadLetterCounts
    waiting: Waiting
    replica: Replica | None = Field(description="null when the figures are read from the primary itself")
    groups: Groups | None = Field(None, description="with groupBy only")


Seconds = Annotated[float, Field(description="the bound of the histogram bucket holding it; null when there is no "
                                 "latency or it lies past the last bound")]


class Percentiles(Closed):
    count: Count = Field(description="latencies counted")
    p50: Seconds | None
    p95: Seconds | None
    p99: Seconds | None
    histogram: list[Count] = Field(description="one count per bound of boundsSeconds, and one for the slower rest")


class SeriesLatency(Closed):
    submittedToResult: Percentiles = Field(description="tasks finished, this service's submissions")
    receivedToStored: Percentiles | None = Field(description="webhook deliveries; null per model")


class Finished(Closed):
    successes: Count
    errors: Count
    successRate: float | None = Field(description="successes over finished tasks, rounded to 6 places")


class Figures(Closed):
    tasks: GroupTasks = Field(description="tasks created")
    finished: Finished = Field(description="tasks whose result came")
    spend: Money
    meanCost: Money | None = Field(description="spend per success, rounded to 1e-10 USD")
    latency: SeriesLatency


class BucketFigures(Figures):
    start: Time


class ModelFigures(Figures):
    model: str = Field(description="'' for tasks that name none")


class StatsSeries(Closed):
    bucket: Literal["hour", "day"]
    window: Window
    boundsSeconds: list[float]
    buckets: list[BucketFigures] = Field(description="every bucket of the window, oldest first")
    total: Figures
    byModel: list[ModelFigures]


class LabelValue(Closed):
    value: str
    tasks: Count


class LabelKey(Closed):
    key: str
    tasks: Count
    distinctValues: Count
    values: list[LabelValue]


class Labels(Closed):
    labels: list[LabelKey]


# -- submission ---------------------------------------------------------------------------------

LabelsObject = Annotated[dict[str, str], Field(description="labels of each task, added to the webhookURL")]


class SubmissionOptions(Closed):
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+:[0-9]+@[A-Za-z0-9_.-]+$", max_length=128,
                                description="an AIR ID; Runware's default when absent")] | None = None
    includeCost: bool = True
    deliveryMethod: Literal["async", "sync"] = "async"


class Submission(SubmissionOptions):
    images: list[str] = Field(min_length=1, max_length=1000,
                              description="http(s) URLs, data URIs, base64 or UUIDs of images uploaded to Runware")
    labels: LabelsObject | None = None


class SubmissionForm(SubmissionOptions):
    """One or more image files under any field name, beside the options."""

    model_config = ConfigDict(extra="allow")
    labels: Annotated[str, Field(description="a JSON object of labels")] | None = None
    file: bytes = Field(json_schema_extra={"format": "binary"})


class SubmittedImage(Closed):
    index: Count
    input: str | None = Field(description="the URL, UUID or file name given; null for image bytes")
    taskUUID: Uuid | None = None
    status: Literal["queued"] | None = None
    error: str | None = Field(None, description="why the image was refused")


class Submitted(Closed):
    tasks: list[SubmittedImage]
    accepted: Count
    rejected: Count


# -- dead letters -------------------------------------------------------------------------------


class DeadLetter(Closed):
    id: int
    delivery_id: str | None
    task_uuid: str | None
    item: Any
    labels: dict[str, str] | None = Field(description="the labels of the delivery the item came with")
    reason: str
    attempts: int
    created_at: Time
    replayed_at: Time | None


class DeadLetterPage(Closed):
    dead_letters: list[DeadLetter]
    counts: dict[Literal["pending", "replayed"], Count]
    next_after: int | None


class Replay(Closed):
    """Exactly one of `ids`, `since`/`until`, `all`."""

    ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] | None = Field(None, min_length=1)
    since: Time | None = None
    until: Time | None = None
    all: Literal[True] | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 1000


class ReplayReport(Closed):
    replayed: Count
    replayed_ids: list[int]
    failed: list[dict[str, Any]]
    remaining: Count


# -- webhook ------------------------------------------------------------------------------------


class ResultItem(BaseModel):
    """A Runware task object: `imageCaption` (or `caption`) results carry `text` and `cost`, errors `code`
    and `message`; the others are kept as they come."""

    model_config = ConfigDict(extra="allow")
    taskUUID: Uuid
    taskType: str | None = None
    text: str | None = None
    cost: float | None = None


class ResultBody(BaseModel):
    """`{"data": [...]}`, `{"errors": [...]}`, both, or a bare task object."""

    model_config = ConfigDict(extra="allow")
    data: list[ResultItem] | None = None
    errors: list[dict[str, Any]] | None = None


class Queued(Closed):
    status: Literal["queued"]
    delivery: str = Field(description="the delivery's id (its Redis stream entry)")
    items: Annotated[int, Field(ge=1)]
    skipped: list[str] = Field(description="why items were left out")


# -- operations ---------------------------------------------------------------------------------


class Liveness(Closed):
    status: Literal["ok"]


class Readiness(Closed):
    status: Literal["ready", "unavailable"]
    checks: dict[Literal["redis", "database"], str]


class IntakeStatus(Closed):
    accepting: bool
    redis_answered: bool
    used_memory_bytes: int | None
    max_memory_bytes: int | None
    high_water_bytes: int | None
    low_water_bytes: int | None
    backlog: int | None
    max_backlog: int | None
    memory_growth_bytes_per_second: float | None
    backlog_growth_per_second: float | None
    seconds_to_full: float | None
    retry_after_seconds: int | None
    oldest_pending_seconds: float
