"""Task settings and the registry that maps task names to functions."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ._errors import ConfigurationError, DuplicateTaskError
from ._retry import RetryPolicy

DEFAULT_QUEUE = "default"
_DEFAULTS_KEPT = 256


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """The settings of one task function, as given to ``@task_manager.task``."""

    name: str
    func: Callable[..., Any]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    persist: bool = False
    requeue_on_interrupt: bool = False
    eager: bool = False
    priority: int | None = None
    queue: str | None = None
    is_async: bool = False

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigurationError(
                f"task {self.name!r}: timeout must be a positive number of seconds, "
                f"got {self.timeout}"
            )


def default_name(func: Callable[..., Any]) -> str:
    """The registry name of a function: its module-qualified name."""
    module = getattr(func, "__module__", None) or "<unknown>"
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{qualname}"


def is_async_callable(func: Callable[..., Any]) -> bool:
    while hasattr(func, "func") and not inspect.isfunction(func):  # functools.partial
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    if a is b:
        return True
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return (
        code_a is not None
        and code_b is not None
        and (code_a.co_filename, code_a.co_firstlineno)
        == (code_b.co_filename, code_b.co_firstlineno)
    )


class Registry:
    """Task functions by name, and their settings."""

    def __init__(self) -> None:
        self._by_name: dict[str, TaskConfig] = {}
        self._by_func: dict[Callable[..., Any], TaskConfig] = {}
        # Default settings of unregistered callables seen lately (bounded: bound methods
        # and closures can be new objects on every call).
        self._defaults: dict[Callable[..., Any], TaskConfig] = {}

    def register(self, config: TaskConfig) -> TaskConfig:
        existing = self._by_name.get(config.name)
        if existing is not None and not _same_function(existing.func, config.func):
            raise DuplicateTaskError(
                f"task name {config.name!r} is already registered for "
                f"{default_name(existing.func)}; pass a different name= to "
                f"@task_manager.task for {default_name(config.func)}"
            )
        self._by_name[config.name] = config
        self._by_func[config.func] = config
        self._defaults.clear()
        return config

    def for_callable(self, func: Callable[..., Any]) -> TaskConfig:
        """The registered settings of ``func``, or defaults for an unregistered callable."""
        try:
            config = self._by_func.get(func) or self._defaults.get(func)
            hashable = True
        except TypeError:  # unhashable callable
            config, hashable = None, False
        if config is not None:
            return config
        if not callable(func):
            raise TypeError(f"add_task needs a callable, got {type(func).__name__}")
        config = TaskConfig(name=default_name(func), func=func, is_async=is_async_callable(func))
        if hashable:
            if len(self._defaults) >= _DEFAULTS_KEPT:
                self._defaults.clear()
            self._defaults[func] = config
        return config

    def get(self, name: str) -> TaskConfig | None:
        return self._by_name.get(name)

    def all(self) -> list[TaskConfig]:
        return sorted(self._by_name.values(), key=lambda c: c.name)

    @staticmethod
    def with_overrides(config: TaskConfig, **changes: Any) -> TaskConfig:
        return replace(config, **{k: v for k, v in changes.items() if v is not None})
