"""Every error the library raises derives from :class:`TaskflowError`.

Messages name what was wrong and what to do about it.
"""

from __future__ import annotations


class TaskflowError(Exception):
    """Base class of every fastapi-taskflow error."""


class ConfigurationError(TaskflowError, ValueError):
    """A TaskManager, task or backend was configured with a value that cannot work."""


class DuplicateTaskError(ConfigurationError):
    """Two different functions were registered under one task name."""


class MissingDriverError(ConfigurationError, ImportError):
    """A backend needs an optional dependency that is not installed."""


class NotStartedError(TaskflowError, RuntimeError):
    """The TaskManager was used before ``startup()`` (or after ``shutdown()``)."""


class UnstorableArgumentError(TaskflowError, TypeError):
    """A persisted task was given an argument that cannot be stored as JSON."""


class QueueFullError(TaskflowError):
    """A queue reached its ``max_size``; the task was rejected and recorded as such."""

    def __init__(self, message: str, *, task_id: str, queue: str) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.queue = queue


class TaskNotFoundError(TaskflowError, LookupError):
    """No task with the given id is known to this manager or its backend."""


class InvalidTaskStateError(TaskflowError):
    """The task is not in a state that allows the requested action."""


class UnsupportedOperationError(TaskflowError, NotImplementedError):
    """The configured backend lacks an optional capability the call needs."""


class UnknownTaskError(TaskflowError, LookupError):
    """A task name is not registered with this manager."""


class BackendError(TaskflowError):
    """The storage backend failed; the original driver error is chained."""


class SchemaOutdatedError(BackendError):
    """The database schema is behind the library and ``auto_migrate`` is off."""
