"""Value objects: task statuses, records and configuration."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ._errors import ConfigurationError

M = TypeVar("M", bound=BaseModel)

# Longest tag key and value that every backend stores (and MySQL can index).
TAG_KEY_LENGTH = 128
TAG_VALUE_LENGTH = 255
_ALL_FIELDS: dict[type[BaseModel], set[str]] = {}


def construct_all(cls: type[M], **values: Any) -> M:
    """``cls.model_construct(**values)`` for trusted values that name every field.

    Every instance built here has all its fields set, so they share one fields-set object
    (pydantic only ever ``add``s names that are already in it) instead of a 2 KB set each, and
    the per-field alias and default lookups of ``model_construct`` are skipped.
    """
    fields_set = _ALL_FIELDS.get(cls)
    if fields_set is None:
        fields_set = _ALL_FIELDS[cls] = set(cls.model_fields)
    if len(values) != len(fields_set):  # (a misspelt name fails at the first read)
        raise TypeError(f"construct_all({cls.__name__}) needs exactly {sorted(fields_set)}")
    model = cls.__new__(cls)
    setattr_ = object.__setattr__
    setattr_(model, "__dict__", values)
    setattr_(model, "__pydantic_fields_set__", fields_set)
    setattr_(model, "__pydantic_extra__", None)
    setattr_(model, "__pydantic_private__", None)
    return model


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class TaskStatus(enum.StrEnum):
    """Where a task is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def is_terminal(self) -> bool:
        """True once the task will not change again on its own."""
        return self not in (TaskStatus.PENDING, TaskStatus.RUNNING)


LIVE_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING})
TERMINAL_STATUSES = frozenset(s for s in TaskStatus if s.is_terminal)


class LogEntry(BaseModel):
    """One line written by :func:`task_log` (or by the executor) for a task."""

    model_config = ConfigDict(extra="ignore")

    timestamp: datetime
    level: str = "info"
    message: str
    attempt: int = 1
    extra: dict[str, Any] = Field(default_factory=dict)


class Attempt(BaseModel):
    """One run of a task function: when it started and ended, and how."""

    model_config = ConfigDict(extra="ignore")

    number: int
    start_time: datetime
    end_time: datetime | None = None
    error: str | None = None


class TaskRecord(BaseModel):
    """Everything known about one task. Timestamps are timezone-aware UTC."""

    model_config = ConfigDict(extra="ignore")

    task_id: str
    func_name: str
    status: TaskStatus = TaskStatus.PENDING
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration: float | None = None
    retries_used: int = 0
    error: str | None = None
    stacktrace: str | None = None
    logs: list[LogEntry] = Field(default_factory=list)
    attempts: list[Attempt] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = None
    source: str = "request"
    priority: int | None = None
    queue: str = "default"
    retry_of: str | None = None
    instance_id: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class TaskPage(BaseModel):
    """One page of a history query, newest first.

    Iterating a page yields its records; pass ``next_cursor`` back as ``cursor`` to get the
    next (older) page. ``next_cursor`` is ``None`` on the last page.
    """

    items: list[TaskRecord]
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[TaskRecord]:  # type: ignore[override]
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> TaskRecord:
        return self.items[index]


class FunctionStats(BaseModel):
    """Aggregates for one task function over the matching history."""

    func_name: str
    total: int
    success: int
    failed: int
    success_rate: float | None
    duration_p50: float | None
    duration_p95: float | None
    duration_p99: float | None
    duration_avg: float | None


@dataclass(frozen=True, kw_only=True)
class QueueConfig:
    """A named queue: how many of its tasks run at once and how many may wait.

    ``max_concurrency`` caps the tasks of this queue running at the same time; ``max_size``
    caps the tasks waiting to start (``None`` is unbounded). A task added to a full queue is
    recorded as ``rejected`` and :class:`QueueFullError` is raised.
    """

    name: str
    max_concurrency: int = 10
    max_size: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("QueueConfig.name must be a non-empty string")
        if self.max_concurrency < 1:
            raise ConfigurationError(
                f"QueueConfig(name={self.name!r}).max_concurrency must be at least 1, "
                f"got {self.max_concurrency}"
            )
        if self.max_size is not None and self.max_size < 0:
            raise ConfigurationError(
                f"QueueConfig(name={self.name!r}).max_size must be >= 0 or None, "
                f"got {self.max_size}"
            )


@dataclass(frozen=True, kw_only=True)
class TaskFilter:
    """What a history query or count matches. Empty fields match everything."""

    statuses: tuple[TaskStatus, ...] = ()
    func_name: str | None = None
    queue: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None

    def matches(self, record: TaskRecord) -> bool:
        """Whether ``record`` passes this filter (used by in-memory stores)."""
        if self.statuses and record.status not in self.statuses:
            return False
        if self.func_name is not None and record.func_name != self.func_name:
            return False
        if self.queue is not None and record.queue != self.queue:
            return False
        if self.since is not None and record.created_at < self.since:
            return False
        if self.until is not None and record.created_at >= self.until:
            return False
        for key, value in self.tags.items():
            if record.tags.get(key) != value:
                return False
        if self.text:
            needle = self.text.lower()
            haystack = (record.task_id, record.func_name, record.error or "")
            if not any(needle in part.lower() for part in haystack):
                return False
        return True
