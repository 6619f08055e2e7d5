"""Pydantic models of the job service: requests (validated), responses and errors.

Requests validate every input before it reaches SQL; responses are what the
service returns and what `--json` prints. Naive datetimes are taken as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from tracker.status import TERMINAL, JobPriority, JobStatus

# Ids and names are stored as text of at most 255 characters (see mapping.py).
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=255)]
MAX_LIMIT = 1000
# A search counts its matches exactly up to this many by default (see JobSearchRequest).
DEFAULT_COUNT_LIMIT = 10_000


class ServiceError(Exception):
    """A problem the caller can act on, described in one line."""


class InvalidRequest(ServiceError, ValueError):
    """An input failed validation."""


class JobNotFound(ServiceError, LookupError):
    """No such job (or it belongs to another user)."""


class JobNotCancellable(ServiceError):
    """The job is already terminal, so there is nothing to cancel."""


class RevokeFailed(ServiceError):
    """Celery's revoke could not be sent; the job was left unchanged."""


class WatchTimeout(ServiceError, TimeoutError):
    """The watched job did not become terminal in time."""


def validation_message(exc: ValidationError) -> str:
    """One line naming every invalid field and why."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "request"
        parts.append(f"{field}: {error['msg']}")
    return "invalid " + "; ".join(parts)


def as_utc(value: datetime | None) -> datetime | None:
    """A timezone-aware datetime (naive ones are UTC)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Request(BaseModel):
    """Base of validated inputs: unknown fields are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def build(cls, **values: Any) -> Self:
        """Validate `values`, raising InvalidRequest with a one-line reason."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise InvalidRequest(validation_message(exc)) from None


class UserScope(Request):
    """An optional user: with one, other users' jobs are invisible."""

    user_id: Identifier | None = None


class JobRef(UserScope):
    """A job id, optionally scoped to a user (another user's job is not found)."""

    job_id: Identifier


class CancelRequest(JobRef):
    """What to cancel and how."""

    terminate: bool = False


class WatchRequest(JobRef):
    """What to watch, and for how long at most (None: until the job is terminal)."""

    timeout: float | None = Field(default=None, gt=0)


class JobSearchRequest(Request):
    """Filters and paging of a job search; dates filter on start_date (inclusive).

    `count_limit`: the total is exact up to this many matches (at least up to the end of
    the requested page); beyond it the search reports that limit with `total_is_capped`.
    None counts every match, which reads every matching row (seconds over millions).
    """

    status: JobStatus | None = None
    document_type: Identifier | None = None
    priority: JobPriority | None = None
    user_id: Identifier | None = None
    task_name: Identifier | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None
    limit: int = Field(default=50, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0)
    count_limit: int | None = Field(default=DEFAULT_COUNT_LIMIT, ge=1)

    @property
    def total_cap(self) -> int | None:
        """Matches counted exactly: count_limit, or the end of the page when further."""
        if self.count_limit is None:
            return None
        return max(self.count_limit, self.offset + self.limit)

    @field_validator("date_from", "date_to")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        """Naive datetimes are UTC."""
        return as_utc(value)

    @model_validator(mode="after")
    def _ordered(self) -> JobSearchRequest:
        """date_from must not be after date_to."""
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date_from is after date_to")
        return self


class StatisticsRequest(Request):
    """Window and scope of the statistics."""

    user_id: Identifier | None = None
    days: int = Field(default=30, ge=1, le=3650)


class CleanupRequest(Request):
    """Which terminal jobs to delete, and in batches of what size."""

    days: int = Field(default=90, ge=0, le=36500)
    statuses: frozenset[JobStatus] = Field(default=TERMINAL, min_length=1)
    batch_size: int = Field(default=1000, ge=1, le=100_000)

    @field_validator("statuses")
    @classmethod
    def _terminal_only(cls, value: frozenset[JobStatus]) -> frozenset[JobStatus]:
        """Deleting an active job would lose a running task's record."""
        active = sorted(value - TERMINAL)
        if active:
            raise ValueError(f"only terminal jobs can be deleted, not {', '.join(active)}")
        return value


class JobResponse(BaseModel):
    """One job: every public column of `jobs`."""

    id: str
    task_name: str | None
    status: JobStatus
    priority: JobPriority
    percentage: int
    summary: str | None
    document_id: str | None
    document_name: str | None
    document_type: str | None
    user_id: str | None
    queue: str | None
    worker: str | None
    retries: int
    args: str | None
    kwargs: str | None
    result: str | None
    error_details: str | None
    metadata: dict[str, Any]
    estimated_duration: int | None
    parent_id: str | None
    root_id: str | None
    start_date: datetime
    started_at: datetime | None
    end_date: datetime | None
    duration_seconds: float | None
    created_at: datetime
    updated_at: datetime

    @property
    def terminal(self) -> bool:
        """True once the job is FINISHED, FAILED or CANCELLED."""
        return self.status in TERMINAL


class JobEventResponse(BaseModel):
    """One history row of `job_events`."""

    id: int
    job_id: str
    event_key: str
    event_type: str
    status: JobStatus | None
    percentage: int | None
    message: str | None
    hostname: str | None
    occurred_at: datetime
    received_at: datetime
    details: dict[str, Any]


class JobPage(BaseModel):
    """A page of jobs and the number of all matches.

    With `total_is_capped`, more than `total` jobs match (the count stopped there; see
    `JobSearchRequest.count_limit`).
    """

    total: int
    total_is_capped: bool = False
    items: list[JobResponse]


class JobDetail(BaseModel):
    """A job with its history timeline."""

    job: JobResponse
    history: list[JobEventResponse]


class DurationStats(BaseModel):
    """Count and percentiles of a duration, in seconds (None without samples)."""

    count: int
    p50_seconds: float | None
    p95_seconds: float | None


class FailureCount(BaseModel):
    """How often an exception type made jobs fail, with its latest message."""

    exception: str
    count: int
    example: str | None


class HourlyCount(BaseModel):
    """Jobs started in one hour."""

    hour: datetime
    jobs: int


class JobStatistics(BaseModel):
    """Job statistics over a window (the seed's fields first, then the dashboard data).

    `jobs_by_type` and `duration_by_type` group by document type, or by task name when
    the job has no document type. Durations are end_date - start_date; the average and
    the total cover every ended job, the per-type percentiles FINISHED jobs only.
    Success rate is FINISHED / (FINISHED + FAILED + CANCELLED), 0 when none ended.
    """

    total_jobs: int
    jobs_by_status: dict[str, int]
    jobs_by_type: dict[str, int]
    average_duration_seconds: float
    success_rate: float
    total_processing_time: int
    active_jobs: int
    window_days: int
    since: datetime
    duration_by_type: dict[str, DurationStats]
    queue_wait: DurationStats
    top_failures: list[FailureCount]
    jobs_per_hour: list[HourlyCount]


class JobProgressUpdate(BaseModel):
    """A job's state as `watch` sees it: the row once, then each notified change."""

    job_id: str
    status: JobStatus
    percentage: int = Field(ge=0, le=100)
    message: str = ""
    timestamp: datetime
    details: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        """True once the job is FINISHED, FAILED or CANCELLED."""
        return self.status in TERMINAL

    @classmethod
    def from_job(cls, job: JobResponse) -> JobProgressUpdate:
        """The update describing a job row."""
        return cls(job_id=job.id, status=job.status, percentage=job.percentage,
                   message=job.summary or "", timestamp=job.updated_at,
                   details={"task_name": job.task_name, "user_id": job.user_id})  # fmt: skip

    @classmethod
    def from_notification(cls, payload: dict[str, Any], received: datetime) -> JobProgressUpdate:
        """The update a `job_updates` notification payload describes."""
        return cls(job_id=payload["id"], status=payload["status"],
                   percentage=payload["percentage"], message=payload.get("summary") or "",
                   timestamp=received, details={"task_name": payload.get("task_name"),
                                                "user_id": payload.get("user_id")})  # fmt: skip
