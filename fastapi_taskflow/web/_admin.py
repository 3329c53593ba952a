"""TaskAdmin: mounts the JSON API and the dashboard, guards them, and ties the manager to
the app's lifespan."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from fastapi import Depends, FastAPI

from .._background import guard
from .._errors import ConfigurationError
from .._manager import TaskManager
from ._api import build_router
from ._auth import AuthSpec, auth_config
from ._events import EventHub, build_events_router
from ._export import build_export_router
from ._login import build_login_router
from ._pages import build_pages_router, load_assets
from ._ratelimit import LoginLimiter
from ._security import CookiePolicy, Security

logger = logging.getLogger("fastapi_taskflow")


class TaskAdmin:
    """Mount fastapi-taskflow's admin (JSON API and live dashboard) on ``app`` under ``path``
    and run the task manager with the app.

    The manager starts with the app and shuts down with it, also when the app was built with
    its own ``lifespan=``. With ``auto_install=True`` routes that take a plain
    ``BackgroundTasks`` get managed ones; routes annotated ``ManagedBackgroundTasks`` always
    do. ``display_func_args=True`` shows task arguments in the API and the dashboard.

    The dashboard is at ``{path}/dashboard``. Protect the admin with ``auth=``:

    - ``("user", "password")`` or a list of ``(user, password)`` / ``(user, password,
      "read")`` tuples: a login page and signed session cookies; ``"read"`` users can look
      but not retry, cancel or replay;
    - an object with ``async authenticate(username, password) -> Principal | None``;
    - a FastAPI dependency of your app: it returns the user (a :class:`Principal`, an object
      with a ``role`` of ``"admin"``/``"read"``, or any other truthy value for an admin), or
      ``None``/raises when nobody is signed in.

    ``api_keys={"key": "admin" | "read"}`` lets scripts call the JSON API with
    ``Authorization: Bearer <key>`` (or ``X-API-Key``). ``secret_key`` signs the session
    cookies (set it so sessions survive restarts and work across instances);
    ``secure_cookies`` forces the cookies' Secure flag (default: when served over https).
    Failed sign-ins are limited to ``login_attempts`` per client within ``login_window_s``.
    Live event streams end after ``stream_max_age_s`` (browsers reconnect on their own), so
    they never hold up a server's graceful shut-down for longer.
    """

    def __init__(
        self,
        app: FastAPI,
        task_manager: TaskManager,
        *,
        path: str = "/tasks",
        display_func_args: bool = False,
        auto_install: bool = False,
        auth: AuthSpec = None,
        api_keys: Mapping[str, str] | None = None,
        secret_key: str | bytes | None = None,
        secure_cookies: bool | None = None,
        same_site: Literal["lax", "strict"] = "lax",
        session_max_age_s: int = 8 * 3600,
        login_attempts: int = 5,
        login_window_s: float = 300.0,
        stream_max_age_s: float = 300.0,
    ) -> None:
        if not path.startswith("/") or path.endswith("/") or len(path) < 2:
            raise ConfigurationError(f"path must start with '/' and not end with one, got {path!r}")
        if same_site not in ("lax", "strict"):
            raise ConfigurationError(f"same_site must be 'lax' or 'strict', got {same_site!r}")
        for label, number in (
            ("session_max_age_s", session_max_age_s),
            ("login_attempts", login_attempts),
            ("login_window_s", login_window_s),
            ("stream_max_age_s", stream_max_age_s),
        ):
            if number <= 0:
                raise ConfigurationError(f"{label} must be positive, got {number}")
        self.app = app
        # Ends the tasks of a request that fails at once (added now: an app's middleware is
        # fixed once it starts, and the routes are bound at start-up).
        guard(app)
        self.task_manager = task_manager
        self.path = path
        self.display_func_args = display_func_args
        self.auto_install = auto_install
        self.auth = auth_config(auth, api_keys)
        self.security = Security(
            self.auth,
            secret_key=_secret(secret_key),
            cookies=CookiePolicy(
                secure=secure_cookies, same_site=same_site, max_age_s=session_max_age_s
            ),
            path=path,
        )
        self.events = EventHub(task_manager.store)
        self._secret_given = secret_key is not None
        self._mount(
            LoginLimiter(max_failures=login_attempts, window_s=login_window_s),
            stream_max_age_s,
        )
        self._wrap_lifespan()

    def _mount(self, limiter: LoginLimiter, stream_max_age_s: float) -> None:
        security, manager, path = self.security, self.task_manager, self.path
        reader = [Depends(security.reader())]
        tags: list[str | Any] = ["fastapi-taskflow"]
        show_args = self.display_func_args
        events = build_events_router(self.events, keepalive_s=15.0, max_age_s=stream_max_age_s)
        api = build_router(manager, display_func_args=show_args, actor=security.actor())
        routers = [  # order matters: "/{task_id}" in the API router comes last
            (build_login_router(security, limiter, display_func_args=show_args), []),
            (build_pages_router(security, load_assets()), []),
            (events, reader),
            (build_export_router(manager, display_func_args=show_args), reader),
            (api, reader),
        ]
        for router, dependencies in routers:
            self.app.include_router(router, prefix=path, tags=tags, dependencies=dependencies)

    def _warn_if_open(self) -> None:
        if not self.auth.enabled:
            logger.warning(
                "fastapi-taskflow: the task admin at %s (dashboard and API: retry, cancel, "
                "task arguments and errors) is open to anyone who can reach this app. Protect "
                'it with TaskAdmin(..., auth=("user", "a long password")), your own FastAPI '
                "dependency (auth=get_current_user) or api_keys=; see docs/authentication.md.",
                self.path,
            )
        elif self.auth.login is not None and not self._secret_given:
            logger.info(
                "fastapi-taskflow: no secret_key given; admin sessions end when the process "
                "restarts and are not shared between instances. Pass TaskAdmin(secret_key=...) "
                "to keep them."
            )

    def _wrap_lifespan(self) -> None:
        router = self.app.router
        inner = router.lifespan_context
        manager = self.task_manager
        admin = self

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            admin._warn_if_open()
            await manager.startup()
            try:
                manager.install(admin.app, plain_background_tasks=admin.auto_install)
                async with inner(app) as state:
                    yield state
            finally:
                await admin.events.close()
                await manager.shutdown()

        router.lifespan_context = lifespan


def _secret(secret_key: str | bytes | None) -> bytes:
    if secret_key is None:
        return secrets.token_bytes(32)
    key = secret_key.encode() if isinstance(secret_key, str) else secret_key
    if len(key) < 16:
        raise ConfigurationError(
            "secret_key must be at least 16 bytes; generate one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return key
