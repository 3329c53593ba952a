"""What a running task can see about itself: :func:`get_task_context` and :func:`task_log`."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._errors import TaskflowError
from ._models import LogEntry, TaskRecord, utcnow

if TYPE_CHECKING:
    from ._job import Job

_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})


@dataclass(frozen=True, kw_only=True)
class TaskContext:
    """Facts about the task that is running in the current context."""

    task_id: str
    func_name: str
    attempt: int
    queue: str
    tags: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    record: TaskRecord = field(repr=False, compare=False)


# The running task's job and attempt number; the TaskContext is built when asked for (and
# with it the record of a light job).
_current: contextvars.ContextVar[tuple[Job, int] | None] = contextvars.ContextVar(
    "fastapi_taskflow_task", default=None
)


def get_task_context() -> TaskContext | None:
    """The context of the task running here, or ``None`` outside a task."""
    current = _current.get()
    if current is None:
        return None
    job, attempt = current
    record = job.record
    return TaskContext(
        task_id=record.task_id,
        func_name=record.func_name,
        attempt=attempt,
        queue=record.queue,
        tags=record.tags,
        idempotency_key=record.idempotency_key,
        record=record,
    )


def set_task_context(job: Job, attempt: int) -> contextvars.Token[Any]:
    return _current.set((job, attempt))


def reset_task_context(token: contextvars.Token[Any]) -> None:
    _current.reset(token)


def append_log(record: TaskRecord, message: str, *, level: str, attempt: int, **extra: Any) -> None:
    record.logs.append(
        LogEntry(timestamp=utcnow(), level=level, message=message, attempt=attempt, extra=extra)
    )


def task_log(message: str, *, level: str = "info", **extra: Any) -> None:
    """Add a line to the current task's log (shown in the API and the dashboard).

    ``level`` is one of debug, info, warning, error, critical; keyword arguments are kept as
    structured fields. Outside a task this raises, so a misplaced call is noticed.
    """
    current = _current.get()
    if current is None:
        raise TaskflowError(
            "task_log() was called outside a task: call it from a function run by "
            "fastapi-taskflow, or check get_task_context() first"
        )
    level = level.lower()
    if level not in _LEVELS:
        raise ValueError(f"task_log level {level!r} is not one of {sorted(_LEVELS)}")
    job, attempt = current
    append_log(job.record, str(message), level=level, attempt=attempt, **extra)
