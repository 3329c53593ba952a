"""Response models of the JSON API (visible in OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .._models import FunctionStats, TaskRecord, TaskStatus

TASK_ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
ERROR_PREVIEW = 300


class TaskOut(TaskRecord):
    """A task as the API shows it; ``args``/``kwargs`` are null unless the admin was
    mounted with ``display_func_args=True``."""

    args: list[Any] | None = None  # type: ignore[assignment]
    kwargs: dict[str, Any] | None = None  # type: ignore[assignment]


class TaskListOut(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None = None


class QueueDepthOut(BaseModel):
    running: int
    waiting: int


class MetricsOut(BaseModel):
    total: int
    by_status: dict[str, int]
    success_rate: float | None
    queues: dict[str, QueueDepthOut]
    instance_id: str


class FunctionOut(BaseModel):
    name: str
    is_async: bool
    retries: int
    delay: float
    backoff: float
    max_delay: float | None
    timeout: float | None
    persist: bool
    requeue_on_interrupt: bool
    eager: bool
    priority: int | None
    queue: str | None


class StatsOut(BaseModel):
    functions: list[FunctionStats]


class RetryOut(BaseModel):
    task_id: str
    retry_of: str


class ErrorOut(BaseModel):
    detail: str


class TaskRowOut(BaseModel):
    """One row of the dashboard's task table, and the payload of a live ``task`` event:
    a task without its arguments, logs and stack trace (``error`` is cut to 300 characters)."""

    task_id: str
    func_name: str
    status: TaskStatus
    queue: str
    created_at: datetime
    start_time: datetime | None
    end_time: datetime | None
    duration: float | None
    attempts: int
    retries_used: int
    error: str | None
    retry_of: str | None
    updated_at: datetime

    @classmethod
    def of(cls, record: TaskRecord) -> TaskRowOut:
        error = record.error
        if error is not None and len(error) > ERROR_PREVIEW:
            error = error[: ERROR_PREVIEW - 1] + "\u2026"
        return cls.model_construct(
            task_id=record.task_id,
            func_name=record.func_name,
            status=record.status,
            queue=record.queue,
            created_at=record.created_at,
            start_time=record.start_time,
            end_time=record.end_time,
            duration=record.duration,
            attempts=len(record.attempts),
            retries_used=record.retries_used,
            error=error,
            retry_of=record.retry_of,
            updated_at=record.updated_at,
        )


class TaskRowsOut(BaseModel):
    items: list[TaskRowOut]
    next_cursor: str | None = None


TaskIdStr = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TASK_ID_PATTERN)]


class BulkRetryIn(BaseModel):
    """Task ids to run again (at most 500)."""

    model_config = ConfigDict(extra="forbid")

    task_ids: list[TaskIdStr] = Field(min_length=1, max_length=500)


class ReplayIn(BaseModel):
    """Run again the failed tasks created since ``since`` (naive times are taken as UTC)."""

    model_config = ConfigDict(extra="forbid")

    since: datetime
    until: datetime | None = None
    func_name: str | None = Field(default=None, min_length=1, max_length=255)
    queue: str | None = Field(default=None, min_length=1, max_length=128)
    limit: int = Field(default=500, ge=1, le=1000)


class BulkErrorOut(BaseModel):
    task_id: str
    detail: str


class BulkRetryOut(BaseModel):
    retried: list[RetryOut]
    errors: list[BulkErrorOut]


class SessionOut(BaseModel):
    """Who is signed in, what they may do, and the token for state-changing requests."""

    user: str | None
    role: str
    can_act: bool
    auth: str
    csrf_token: str
    display_func_args: bool
    login_path: str | None
    logout_path: str | None


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1000)
