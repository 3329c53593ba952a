"""Response models of the JSON API (visible in OpenAPI)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .._models import FunctionStats, TaskRecord


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
