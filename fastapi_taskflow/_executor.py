"""Running one task: attempts, the retry policy, timeouts and the task's context."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from ._context import append_log, reset_task_context, set_task_context
from ._errors import TaskflowError
from ._job import Job, Stage
from ._models import TaskStatus, new_attempt, utcnow

_NO_KWARGS: dict[str, Any] = {}  # (read only: arguments are passed as **kwargs, copied)


class TaskTimeoutError(TaskflowError, TimeoutError):
    """An attempt ran longer than its task's ``timeout``."""


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Executor:
    """Applies a task's settings to one job. Knows nothing of queues, HTTP or storage."""

    def __init__(
        self,
        *,
        sync_slots: asyncio.Semaphore,
        on_change: Callable[[Job], None],
        on_terminal: Callable[[Job], None],
        before_start: Callable[[Job], Awaitable[None]] | None = None,
    ) -> None:
        self._sync_slots = sync_slots
        self._on_change = on_change
        self._on_terminal = on_terminal
        self._before_start = before_start

    def abandoned(self, job: Job) -> None:
        """End a job whose asyncio task was cancelled before it could run."""
        if job.cancel_reason is not None:
            self.finish(job, TaskStatus.CANCELLED, job.cancel_reason)
        else:
            self.finish(job, TaskStatus.INTERRUPTED, "interrupted: the application shut down")

    async def run(self, job: Job) -> None:
        """Run ``job`` to a terminal state. Cancellation ends it as cancelled/interrupted."""
        record, config = job.record, job.config
        # Hot path: the record's fields are written through its __dict__ (a pydantic model's
        # __setattr__ costs about a microsecond per field and validates nothing here).
        fields = record.__dict__
        try:
            while True:
                number = record.retries_used + 1
                now = utcnow()
                fields["status"] = TaskStatus.RUNNING
                if record.start_time is None:
                    fields["start_time"] = now
                attempt = new_attempt(number, now)
                record.attempts.append(attempt)
                fields["updated_at"] = now
                self._on_change(job)
                if number == 1 and job.leased and self._before_start is not None:
                    await self._before_start(job)
                token = set_task_context(record, number)
                try:
                    if config.timeout is None and config.is_async:  # the common case, inline
                        await config.func(*job.args, **job.kwargs)
                        error = None
                    else:
                        error = await self._attempt(job, number)
                except Exception as exc:
                    error = exc
                finally:
                    reset_task_context(token)
                if error is None:
                    self.finish(job, TaskStatus.SUCCESS)  # (also ends the attempt)
                    return
                attempt.__dict__["end_time"] = utcnow()
                attempt.__dict__["error"] = describe(error)
                wait = config.retry.next_delay(error, number)
                if wait is None:
                    self.finish(job, TaskStatus.FAILED, describe(error), error)
                    return
                fields["retries_used"] = number
                append_log(
                    record,
                    f"attempt {number} failed: {describe(error)}; retrying in {wait:.3g}s",
                    level="warning",
                    attempt=number,
                )
                self._on_change(job)
                await asyncio.sleep(wait)
        except asyncio.CancelledError:
            self.abandoned(job)
            if job.cancel_reason is None and not job.interrupted:
                raise
        finally:
            if job.stage is not Stage.DONE:  # a BaseException such as SystemExit escaped
                self.finish(job, TaskStatus.FAILED, "the task raised a BaseException")

    async def _attempt(self, job: Job, number: int) -> Exception | None:
        """One call of a sync task function, or of one with a timeout; returns the exception
        it failed with, if any."""
        config = job.config
        try:
            if config.timeout is None:
                await self._call_sync(job)
                return None
            async with asyncio.timeout(config.timeout) as scope:
                if config.is_async:
                    await config.func(*job.args, **job.kwargs)
                else:
                    await self._call_sync(job)
            return None
        except TimeoutError as exc:
            if config.timeout is not None and scope.expired():
                return TaskTimeoutError(f"attempt {number} exceeded the {config.timeout}s timeout")
            return exc
        except Exception as exc:
            return exc

    async def _call_sync(self, job: Job) -> None:
        async with self._sync_slots:
            job.in_thread = True
            try:
                await run_in_threadpool(job.config.func, *job.args, **job.kwargs)
            finally:
                job.in_thread = False

    def finish(
        self,
        job: Job,
        status: TaskStatus,
        error: str | None = None,
        exc: BaseException | None = None,
    ) -> None:
        """Put ``job`` in a terminal state and tell the observers."""
        record = job.record
        fields = record.__dict__
        now = utcnow()
        fields["status"] = status
        fields["end_time"] = now
        fields["updated_at"] = now
        attempts = record.attempts
        if attempts and attempts[-1].end_time is None:
            attempts[-1].__dict__["end_time"] = now
        start = record.start_time
        if start is not None:
            fields["duration"] = (now - start).total_seconds()
        if error is not None:
            fields["error"] = error
        if exc is not None:
            fields["stacktrace"] = "".join(traceback.format_exception(exc))
        if status is not TaskStatus.SUCCESS and error is not None:
            attempt = attempts[-1].number if attempts else 0
            append_log(record, error, level="error", attempt=attempt)
        job.stage = Stage.DONE
        job.context = None  # do not keep the request's context variables alive
        if status is TaskStatus.SUCCESS:
            # Kept only to retry a task, which a success never is: the record keeps its own
            # copy for display and history (a completed job stays in memory up to max_records).
            job.args, job.kwargs = (), _NO_KWARGS
        self._on_terminal(job)
