"""TaskAdmin: mounts the JSON API and ties the manager to the app's lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from .._errors import ConfigurationError
from .._manager import TaskManager
from ._api import build_router


class TaskAdmin:
    """Mount fastapi-taskflow's admin API on ``app`` under ``path`` and manage the lifecycle.

    The task manager starts with the app and shuts down with it, also when the app was built
    with its own ``lifespan=``. With ``auto_install=True`` routes that take a plain
    ``BackgroundTasks`` get managed ones; routes annotated ``ManagedBackgroundTasks`` always
    do. ``display_func_args=True`` shows task arguments in the API.
    """

    def __init__(
        self,
        app: FastAPI,
        task_manager: TaskManager,
        *,
        path: str = "/tasks",
        display_func_args: bool = False,
        auto_install: bool = False,
    ) -> None:
        if not path.startswith("/") or path.endswith("/") or len(path) < 2:
            raise ConfigurationError(f"path must start with '/' and not end with one, got {path!r}")
        self.app = app
        self.task_manager = task_manager
        self.path = path
        self.display_func_args = display_func_args
        self.auto_install = auto_install
        app.include_router(
            build_router(task_manager, display_func_args=display_func_args), prefix=path
        )
        self._wrap_lifespan()

    def _wrap_lifespan(self) -> None:
        router = self.app.router
        inner = router.lifespan_context
        manager = self.task_manager
        admin = self

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            await manager.startup()
            try:
                manager.install(admin.app, plain_background_tasks=admin.auto_install)
                async with inner(app) as state:
                    yield state
            finally:
                await manager.shutdown()

        router.lifespan_context = lifespan
