"""fastapi-taskflow: retries, status tracking, durable history and a live dashboard for
FastAPI background tasks, inside the web process.

Everything public is importable from here; submodules starting with ``_`` are private.
"""

from __future__ import annotations

from ._background import ManagedBackgroundTasks
from ._context import TaskContext, get_task_context, task_log
from ._errors import (
    BackendError,
    ConfigurationError,
    DuplicateTaskError,
    InvalidTaskStateError,
    MissingDriverError,
    NotStartedError,
    QueueFullError,
    SchemaOutdatedError,
    TaskflowError,
    TaskNotFoundError,
    UnknownTaskError,
    UnstorableArgumentError,
    UnsupportedOperationError,
)
from ._executor import TaskTimeoutError
from ._history import TaskHistory
from ._manager import TaskManager
from ._models import (
    Attempt,
    FunctionStats,
    LogEntry,
    QueueConfig,
    TaskFilter,
    TaskPage,
    TaskRecord,
    TaskStatus,
)
from ._registry import TaskConfig
from ._retry import RetryPolicy
from ._schema import migrate
from .web import TaskAdmin

__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "BackendError",
    "ConfigurationError",
    "DuplicateTaskError",
    "FunctionStats",
    "InvalidTaskStateError",
    "LogEntry",
    "ManagedBackgroundTasks",
    "MissingDriverError",
    "NotStartedError",
    "QueueConfig",
    "QueueFullError",
    "RetryPolicy",
    "SchemaOutdatedError",
    "TaskAdmin",
    "TaskConfig",
    "TaskContext",
    "TaskFilter",
    "TaskHistory",
    "TaskManager",
    "TaskNotFoundError",
    "TaskPage",
    "TaskRecord",
    "TaskStatus",
    "TaskTimeoutError",
    "TaskflowError",
    "UnknownTaskError",
    "UnstorableArgumentError",
    "UnsupportedOperationError",
    "__version__",
    "get_task_context",
    "migrate",
    "task_log",
]
