"""The JSON API: list, inspect, retry and cancel tasks; metrics and statistics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from .._errors import (
    ConfigurationError,
    InvalidTaskStateError,
    QueueFullError,
    TaskflowError,
    TaskNotFoundError,
    UnknownTaskError,
)
from .._history import MAX_LIMIT, make_filter
from .._manager import TaskManager
from .._models import TaskFilter, TaskRecord, TaskStatus
from ._schemas import (
    ErrorOut,
    FunctionOut,
    MetricsOut,
    QueueDepthOut,
    RetryOut,
    StatsOut,
    TaskListOut,
    TaskOut,
)

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


def _utc(stamp: datetime | None) -> datetime | None:
    if stamp is not None and stamp.tzinfo is None:
        return stamp.replace(tzinfo=UTC)
    return stamp


def _parse_tags(values: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for value in values:
        key, sep, tag_value = value.partition(":")
        if not sep or not key:
            raise HTTPException(422, f"tag filter {value!r} must look like key:value")
        tags[key] = tag_value
    return tags


def _http_error(exc: TaskflowError) -> HTTPException:
    if isinstance(exc, TaskNotFoundError):
        return HTTPException(404, str(exc))
    if isinstance(exc, InvalidTaskStateError | UnknownTaskError):
        return HTTPException(409, str(exc))
    if isinstance(exc, QueueFullError):
        return HTTPException(429, str(exc))
    if isinstance(exc, ConfigurationError):
        return HTTPException(422, str(exc))
    return HTTPException(503, str(exc))


def build_router(manager: TaskManager, *, display_func_args: bool) -> APIRouter:
    """The API routes, relative to the admin path."""
    router = APIRouter(tags=["fastapi-taskflow"], responses={404: {"model": ErrorOut}})

    def out(record: TaskRecord) -> TaskOut:
        data = record.model_dump()
        if not display_func_args:
            data["args"] = data["kwargs"] = None
        return TaskOut.model_validate(data)

    @router.get("", response_model=TaskListOut, summary="List tasks, newest first")
    async def list_tasks(
        status: Annotated[
            list[TaskStatus] | None, Query(description="Any of these statuses")
        ] = None,
        func_name: Annotated[str | None, Query(max_length=255)] = None,
        queue: Annotated[str | None, Query(max_length=128)] = None,
        tag: Annotated[list[str] | None, Query(description="key:value, all must match")] = None,
        since: Annotated[datetime | None, Query(description="Created at or after")] = None,
        until: Annotated[datetime | None, Query(description="Created before")] = None,
        q: Annotated[
            str | None, Query(max_length=200, description="Text in id, function, error")
        ] = None,
        cursor: Annotated[str | None, Query(max_length=400)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    ) -> TaskListOut:
        try:
            filter = make_filter(
                status=status,
                func_name=func_name,
                queue=queue,
                tags=_parse_tags(tag or []),
                since=_utc(since),
                until=_utc(until),
                text=q,
            )
            page = await manager.history.query_filter(filter, limit=limit, cursor=cursor)
        except TaskflowError as exc:
            raise _http_error(exc) from exc
        return TaskListOut(items=[out(r) for r in page.items], next_cursor=page.next_cursor)

    @router.get("/metrics", response_model=MetricsOut, summary="Counts by status and queue depths")
    async def metrics() -> MetricsOut:
        by_status = {
            status.value: await manager.history.count_filter(TaskFilter(statuses=(status,)))
            for status in TaskStatus
        }
        done = by_status["success"] + by_status["failed"]
        return MetricsOut(
            total=sum(by_status.values()),
            by_status=by_status,
            success_rate=by_status["success"] / done if done else None,
            queues={k: QueueDepthOut(**v) for k, v in manager.queue_depths().items()},
            instance_id=manager.instance_id,
        )

    @router.get("/functions", response_model=list[FunctionOut], summary="Registered functions")
    async def functions() -> list[FunctionOut]:
        return [
            FunctionOut(
                name=c.name,
                is_async=c.is_async,
                retries=c.retry.retries,
                delay=c.retry.delay,
                backoff=c.retry.backoff,
                max_delay=c.retry.max_delay,
                timeout=c.timeout,
                persist=c.persist,
                requeue_on_interrupt=c.requeue_on_interrupt,
                eager=c.eager,
                priority=c.priority,
                queue=c.queue,
            )
            for c in manager.registered()
        ]

    @router.get("/stats", response_model=StatsOut, summary="Per-function statistics")
    async def stats(
        func_name: Annotated[str | None, Query(max_length=255)] = None,
        since: Annotated[datetime | None, Query()] = None,
    ) -> StatsOut:
        try:
            found = await manager.history.stats(func_name=func_name, since=_utc(since))
        except TaskflowError as exc:
            raise _http_error(exc) from exc
        return StatsOut(functions=found)

    @router.get("/{task_id}", response_model=TaskOut, summary="One task")
    async def get_task(task_id: TaskId) -> TaskOut:
        record = await manager.history.get(task_id)
        if record is None:
            raise HTTPException(404, f"no task with id {task_id!r}")
        return out(record)

    @router.post(
        "/{task_id}/retry",
        response_model=RetryOut,
        responses={409: {"model": ErrorOut}},
        summary="Run a failed, cancelled, interrupted or rejected task again",
    )
    async def retry(task_id: TaskId) -> RetryOut:
        try:
            new_id = await manager.retry(task_id)
        except TaskflowError as exc:
            raise _http_error(exc) from exc
        return RetryOut(task_id=new_id, retry_of=task_id)

    @router.post(
        "/{task_id}/cancel",
        response_model=TaskOut,
        responses={409: {"model": ErrorOut}},
        summary="Cancel a pending or running task",
    )
    async def cancel(task_id: TaskId) -> TaskOut:
        try:
            record = await manager.cancel(task_id)
        except TaskflowError as exc:
            raise _http_error(exc) from exc
        return out(record)

    return router
