"""Running one task: attempts, the retry policy, timeouts and the task's context."""

from __future__ import annotations

import asyncio
import contextvars
import traceback
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from datetime import datetime
from time import time as _time
from typing import Any

from starlette.concurrency import run_in_threadpool

from ._context import append_log, reset_task_context, set_task_context
from ._errors import TaskflowError
from ._job import Job, Stage
from ._models import TaskStatus, new_attempt, utcnow

_NO_KWARGS: dict[str, Any] = {}  # (read only: arguments are passed as **kwargs, copied)


class TaskTimeoutError(TaskflowError, TimeoutError):
    """An attempt ran longer than its task's ``timeout``."""


@dataclass(slots=True)
class _Begun:
    """A first attempt that :meth:`Executor.start` began and did not finish: the function
    suspended (``inner``, on ``yielded``) or raised (``error``)."""

    token: contextvars.Token[Any]
    inner: Coroutine[Any, Any, Any] | None = None
    yielded: Any = None
    error: BaseException | None = None


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
        on_light_success: Callable[[Job, float], bool] | None = None,
    ) -> None:
        self._sync_slots = sync_slots
        # Takes a light job that succeeded, and when it ended: True if it recorded it.
        self._on_light_success = on_light_success or (lambda job, ended: False)
        self._on_change = on_change
        self._on_terminal = on_terminal
        self._before_start = before_start

    def abandoned(self, job: Job) -> None:
        """End a job whose asyncio task was cancelled before it could run."""
        if job.cancel_reason is not None:
            self.finish(job, TaskStatus.CANCELLED, job.cancel_reason)
        else:
            self.finish(job, TaskStatus.INTERRUPTED, "interrupted: the application shut down")

    def start(self, job: Job) -> Coroutine[Any, Any, None] | None:
        """Begin running ``job`` in the current context (the job's own), without a coroutine
        of the executor's if it can: returns ``None`` when that ended the job, else the rest
        of its run, a coroutine to drive to its end.

        An async function without a timeout, on a job that need not wait for its running
        mark in the shared pending store (it has no row there, or was written ahead as
        running), is called here and run up to its first suspension. One that returns
        without suspending (a short task's usual case) is recorded as succeeded at once: a
        light job that nobody looked at is handed to ``on_light_success`` (which seals it)
        without ever building its record. One that suspends or raises goes on in
        :meth:`run`, its attempt recorded as begun here.
        """
        config = job.config
        if config.timeout is not None or not config.is_async or (job.leased and not job.marked):
            return self.run(job)  # (a leased job not marked running yet is marked first)
        light = job.light
        start: datetime | None = None  # (a light job keeps its start in job.started)
        if light:
            job.started = _time()
            number = 1
        else:
            record = job.record
            fields = record.__dict__
            number = record.retries_used + 1
            start = utcnow()
            fields["status"] = TaskStatus.RUNNING  # (what the function sees of itself)
            if record.start_time is None:
                fields["start_time"] = start
        token = set_task_context(job, number)
        try:
            inner = config.func(*job.args, **job.kwargs)
            yielded = inner.send(None)
        except StopIteration:
            reset_task_context(token)
            if light:
                self._light_succeeded(job)
                return None
            self._record_begun(job, number, start)
            self.finish(job, TaskStatus.SUCCESS)  # (also ends the attempt)
            return None
        except BaseException as exc:  # (run() treats it as if raised there)
            self._record_begun(job, number, start)
            return self.run(job, _Begun(token, error=exc))
        if not (light and job.light):  # (a light job nobody has read goes on without one)
            self._record_begun(job, number, start)
        return self.run(job, _Begun(token, inner, yielded))

    def _light_succeeded(self, job: Job) -> None:
        """Record a light job's first attempt as succeeded: sealed if nobody read its record
        meanwhile and ``on_light_success`` takes it, else the usual way."""
        if job.light and self._on_light_success(job, _time()):
            return
        self._record_begun(job, 1, None)
        self.finish(job, TaskStatus.SUCCESS)

    async def _light_attempt(self, job: Job, begun: _Begun | None) -> _Begun | None:
        """A light job's first attempt, run without its record (or, with ``begun``, the rest
        of one that :meth:`start` began and that suspended): ``None`` when it succeeded (and
        is recorded), else how it failed, its record now built (running, the attempt begun)
        for :meth:`run` to go on with."""
        if begun is None:
            job.started = _time()
            token = set_task_context(job, 1)
        else:
            token = begun.token
        try:
            if begun is None:
                await job.config.func(*job.args, **job.kwargs)
            else:
                assert begun.inner is not None
                await _resume(begun.inner, begun.yielded)
        except BaseException as exc:
            self._record_begun(job, 1, None)
            return _Begun(token, error=exc)
        reset_task_context(token)
        self._light_succeeded(job)
        return None

    @staticmethod
    def _record_begun(job: Job, number: int, start: datetime | None) -> None:
        """Show the attempt that :meth:`start` began as running. A light job's record is
        built here unless it was read already; either way it shows the attempt from
        ``job.started``. (``start`` is given for the other jobs only.)"""
        record = job.record
        if start is not None:
            record.attempts.append(new_attempt(number, start))
            record.__dict__["updated_at"] = start

    async def run(self, job: Job, begun: _Begun | None = None) -> None:
        """Run ``job`` to a terminal state. Cancellation ends it as cancelled/interrupted.

        With ``begun``, its first attempt was begun by :meth:`start`: this goes on with it.
        A light job's first attempt (an async function without a timeout) runs without its
        record, which is built only if the attempt fails or someone reads it.
        """
        config = job.config
        if (
            job.light
            and config.is_async
            and config.timeout is None
            and (job.marked or not job.leased)  # (else marked running first, below)
        ):
            begun = await self._light_attempt(job, begun)
            if begun is None:
                return
        record = job.record
        # Hot path: the record's fields are written through its __dict__ (a pydantic model's
        # __setattr__ costs about a microsecond per field and validates nothing here).
        fields = record.__dict__
        try:
            while True:
                if begun is None:
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
                    token = set_task_context(job, number)
                else:  # begun by start(), which recorded the attempt
                    number = record.retries_used + 1
                    attempt = record.attempts[-1]
                    self._on_change(job)
                    token = begun.token
                try:
                    if begun is not None:
                        first, begun = begun, None
                        if first.error is not None:
                            raise first.error
                        assert first.inner is not None
                        await _resume(first.inner, first.yielded)
                        error = None
                    elif config.timeout is None and config.is_async:  # the common case
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


@types.coroutine
def _resume(inner: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, None]:
    """Await ``inner``, a coroutine already started and now suspended on ``yielded``: what
    it waits for passes up to the current task, what the task sends or throws goes down."""
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:
            try:
                yielded = inner.throw(exc)
            except StopIteration:
                return
        else:
            try:
                yielded = inner.send(sent)
            except StopIteration:
                return
