"""The JSON API: list, inspect, retry, cancel and delete tasks; metrics and statistics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Response

from .._errors import (
    ConfigurationError,
    InvalidTaskStateError,
    QueueFullError,
    TaskflowError,
    TaskNotFoundError,
    UnknownTaskError,
    UnsupportedOperationError,
)
from .._history import MAX_LIMIT, make_filter
from .._manager import TaskManager
from .._models import TaskFilter, TaskRecord, TaskStatus
from ._schemas import (
    TASK_ID_PATTERN,
    BulkErrorOut,
    BulkRetryIn,
    BulkRetryOut,
    ErrorOut,
    FunctionOut,
    MetricsOut,
    QueueDepthOut,
    ReplayIn,
    RetryOut,
    StatsOut,
    TaskListOut,
    TaskOut,
    TaskRowOut,
    TaskRowsOut,
)

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=TASK_ID_PATTERN)]
Guard = Callable[..., Awaitable[Any]]


def utc(stamp: datetime | None) -> datetime | None:
    """Naive datetimes from query strings are taken as UTC."""
    if stamp is not None and stamp.tzinfo is None:
        return stamp.replace(tzinfo=UTC)
    return stamp


def _parse_tags(values: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    if len(values) > 20:
        raise HTTPException(422, "at most 20 tag filters")
    for value in values:
        if len(value) > 300:
            raise HTTPException(422, "a tag filter is at most 300 characters")
        key, sep, tag_value = value.partition(":")
        if not sep or not key:
            raise HTTPException(422, f"tag filter {value!r} must look like key:value")
        tags[key] = tag_value
    return tags


def http_error(exc: TaskflowError) -> HTTPException:
    if isinstance(exc, TaskNotFoundError):
        return HTTPException(404, str(exc))
    if isinstance(exc, InvalidTaskStateError | UnknownTaskError):
        return HTTPException(409, str(exc))
    if isinstance(exc, QueueFullError):
        return HTTPException(429, str(exc))
    if isinstance(exc, ConfigurationError):
        return HTTPException(422, str(exc))
    if isinstance(exc, UnsupportedOperationError):
        return HTTPException(501, str(exc))
    return HTTPException(503, str(exc))


async def task_filter(
    status: Annotated[list[TaskStatus] | None, Query(description="Any of these statuses")] = None,
    func_name: Annotated[str | None, Query(max_length=255)] = None,
    queue: Annotated[str | None, Query(max_length=128)] = None,
    tag: Annotated[list[str] | None, Query(description="key:value, all must match")] = None,
    since: Annotated[datetime | None, Query(description="Created at or after")] = None,
    until: Annotated[datetime | None, Query(description="Created before")] = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Text in id, function, error")
    ] = None,
) -> TaskFilter:
    """The filters shared by the list, the table rows and the CSV export."""
    try:
        return make_filter(
            status=status,
            func_name=func_name or None,
            queue=queue or None,
            tags=_parse_tags(tag or []),
            since=utc(since),
            until=utc(until),
            text=q,
        )
    except ConfigurationError as exc:
        raise HTTPException(422, str(exc)) from exc


Filter = Annotated[TaskFilter, Depends(task_filter)]
Cursor = Annotated[str | None, Query(max_length=400)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def build_router(manager: TaskManager, *, display_func_args: bool, actor: Guard) -> APIRouter:
    """The API routes, relative to the admin path. ``actor`` guards state-changing ones."""
    router = APIRouter(responses={404: {"model": ErrorOut}})
    acting: list[Any] = [Depends(actor)]

    def out(record: TaskRecord) -> TaskOut:
        data = record.model_dump()
        if not display_func_args:
            data["args"] = data["kwargs"] = None
        return TaskOut.model_validate(data)

    async def page(filter: TaskFilter, limit: int, cursor: str | None) -> Any:
        try:
            return await manager.history.query_filter(filter, limit=limit, cursor=cursor)
        except TaskflowError as exc:
            raise http_error(exc) from exc

    @router.get("", response_model=TaskListOut, summary="List tasks, newest first")
    async def list_tasks(filter: Filter, cursor: Cursor = None, limit: Limit = 50) -> TaskListOut:
        found = await page(filter, limit, cursor)
        return TaskListOut(items=[out(r) for r in found.items], next_cursor=found.next_cursor)

    @router.get(
        "/rows",
        response_model=TaskRowsOut,
        summary="List tasks as table rows (no arguments, logs or stack traces)",
    )
    async def list_rows(filter: Filter, cursor: Cursor = None, limit: Limit = 50) -> TaskRowsOut:
        found = await page(filter, limit, cursor)
        return TaskRowsOut(
            items=[TaskRowOut.of(r) for r in found.items], next_cursor=found.next_cursor
        )

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
            found = await manager.history.stats(func_name=func_name, since=utc(since))
        except TaskflowError as exc:
            raise http_error(exc) from exc
        return StatsOut(functions=found)

    async def retry_all(task_ids: list[str]) -> BulkRetryOut:
        result = BulkRetryOut(retried=[], errors=[])
        for task_id in dict.fromkeys(task_ids):
            try:
                new_id = await manager.retry(task_id)
            except TaskflowError as exc:
                result.errors.append(BulkErrorOut(task_id=task_id, detail=str(exc)))
            else:
                result.retried.append(RetryOut(task_id=new_id, retry_of=task_id))
        return result

    @router.post(
        "/retry",
        response_model=BulkRetryOut,
        dependencies=acting,
        summary="Run several tasks again; each one that cannot be retried is listed in errors",
    )
    async def retry_many(body: Annotated[BulkRetryIn, Body()]) -> BulkRetryOut:
        return await retry_all(body.task_ids)

    @router.post(
        "/replay",
        response_model=BulkRetryOut,
        dependencies=acting,
        summary="Run again the failed tasks created since a time (at most `limit`)",
    )
    async def replay(body: Annotated[ReplayIn, Body()]) -> BulkRetryOut:
        try:
            filter = make_filter(
                status=TaskStatus.FAILED,
                func_name=body.func_name,
                queue=body.queue,
                since=utc(body.since),
                until=utc(body.until),
            )
        except ConfigurationError as exc:
            raise HTTPException(422, str(exc)) from exc
        task_ids: list[str] = []
        cursor = None
        while len(task_ids) < body.limit:
            found = await page(filter, min(MAX_LIMIT, body.limit - len(task_ids)), cursor)
            task_ids += [r.task_id for r in found.items]
            cursor = found.next_cursor
            if cursor is None:
                break
        return await retry_all(task_ids)

    @router.get("/{task_id}", response_model=TaskOut, summary="One task")
    async def get_task(task_id: TaskId) -> TaskOut:
        record = await manager.history.get(task_id)
        if record is None:
            raise HTTPException(404, f"no task with id {task_id!r}")
        return out(record)

    @router.post(
        "/{task_id}/retry",
        response_model=RetryOut,
        dependencies=acting,
        responses={409: {"model": ErrorOut}},
        summary="Run a failed, cancelled, interrupted or rejected task again",
    )
    async def retry(task_id: TaskId) -> RetryOut:
        try:
            new_id = await manager.retry(task_id)
        except TaskflowError as exc:
            raise http_error(exc) from exc
        return RetryOut(task_id=new_id, retry_of=task_id)

    @router.post(
        "/{task_id}/cancel",
        response_model=TaskOut,
        dependencies=acting,
        responses={409: {"model": ErrorOut}},
        summary="Cancel a pending or running task",
    )
    async def cancel(task_id: TaskId) -> TaskOut:
        try:
            record = await manager.cancel(task_id)
        except TaskflowError as exc:
            raise http_error(exc) from exc
        return out(record)

    @router.delete(
        "/{task_id}",
        status_code=204,
        response_class=Response,
        dependencies=acting,
        responses={409: {"model": ErrorOut}, 501: {"model": ErrorOut}},
        summary="Delete a finished task from memory and history (cancel a live one first)",
    )
    async def delete_task(task_id: TaskId) -> Response:
        try:
            await manager.delete(task_id)
        except TaskflowError as exc:
            raise http_error(exc) from exc
        return Response(status_code=204)

    return router
