"""``ManagedBackgroundTasks``: FastAPI's ``BackgroundTasks`` with ids, retries and tracking.

FastAPI creates one ``BackgroundTasks`` per request and runs it after the response is sent.
Binding turns that very object into a ``ManagedBackgroundTasks`` (same object, so FastAPI
still runs it), whose ``add_task`` records the task and returns its id. When the response
has been sent, its tasks are handed to the manager's queues and the request ends at once:
they run concurrently, not one after another inside the request.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from fastapi import BackgroundTasks, FastAPI
from fastapi import routing as fastapi_routing
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_parameterless_sub_dependant
from fastapi.params import Depends
from starlette.background import BackgroundTasks as StarletteBackgroundTasks
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import NotStartedError
from ._job import Job, Stage

if TYPE_CHECKING:
    from ._manager import TaskManager

_UNSENT = "cancelled: the request ended without sending its response"
_OWN_BACKGROUND = (
    "cancelled: the response was sent without the request's background tasks (the route "
    "returned a response that carries a background task of its own)"
)

# The managed background tasks bound during the current request, for RequestTasksGuard.
_bound_here: contextvars.ContextVar[list[ManagedBackgroundTasks] | None] = contextvars.ContextVar(
    "fastapi_taskflow_bound", default=None
)


def request_failed(exc: BaseException) -> str:
    return f"cancelled: the request failed before its response was sent ({type(exc).__name__})"


def _answered(status: int) -> str:
    if status == 0:  # nothing was sent at all
        return _UNSENT
    if status >= 400:
        return f"cancelled: the request failed before its response was sent (it answered {status})"
    return _OWN_BACKGROUND


def _discard_all(manager: TaskManager, held: list[Job], reason: str) -> None:
    for job in held:
        if job.stage is Stage.HELD:
            manager.discard(job, reason)


class ManagedBackgroundTasks(BackgroundTasks):
    """A request's background tasks, run and tracked by a :class:`TaskManager`.

    Get one with a ``ManagedBackgroundTasks`` annotation or plain ``BackgroundTasks`` (after
    ``TaskAdmin(app, task_manager, auto_install=True)`` or ``task_manager.install(app)``), or
    with ``Depends(task_manager.get_tasks)``.
    """

    _manager: TaskManager | None
    _held: list[Job]

    def __init__(self, manager: TaskManager | None = None) -> None:
        super().__init__()
        self._manager = manager
        self._held = []
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def add_task(  # type: ignore[override]
        self,
        func: Callable[..., Any],
        *args: Any,
        idempotency_key: str | None = None,
        tags: dict[str, str] | None = None,
        eager: bool | None = None,
        priority: int | None = None,
        queue: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Add a task; it starts once the response is sent (at once with ``eager=True``).

        Returns the task id. With an ``idempotency_key`` that matches a pending, running or
        succeeded task, nothing new is added and that task's id is returned.
        """
        manager = self._manager
        if manager is None:
            raise NotStartedError(
                "this ManagedBackgroundTasks is not bound to a TaskManager: mount "
                "TaskAdmin(app, task_manager) or call task_manager.install(app), or take it "
                "from Depends(task_manager.get_tasks)"
            )
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # A sync endpoint runs in a worker thread: do the bookkeeping on the event loop
            # (the manager's state is not thread-safe), with this request's context.
            context = contextvars.copy_context()

            async def on_loop() -> str:
                return self._add(
                    manager, func, args, kwargs, idempotency_key=idempotency_key, tags=tags,
                    eager=eager, priority=priority, queue=queue, context=context,
                )  # fmt: skip

            return asyncio.run_coroutine_threadsafe(on_loop(), manager.loop).result()
        if idempotency_key is None and tags is None and priority is None and queue is None:
            job = manager._add_light(func, args, kwargs, "request", held=True)  # (the usual case)
            if job is not None:
                if eager if eager is not None else job.config.eager:
                    manager.dispatch(job)
                else:
                    self._held.append(job)
                return job.task_id
        return self._add(
            manager, func, args, kwargs, idempotency_key=idempotency_key, tags=tags,
            eager=eager, priority=priority, queue=queue, context=None,
        )  # fmt: skip

    def _add(
        self,
        manager: TaskManager,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        idempotency_key: str | None,
        tags: dict[str, str] | None,
        eager: bool | None,
        priority: int | None,
        queue: str | None,
        context: contextvars.Context | None,
    ) -> str:
        if idempotency_key is not None:
            existing = manager.duplicate_of(idempotency_key, func)
            if existing is not None:
                return existing.task_id
        job = manager.create(
            func,
            args,
            kwargs,
            idempotency_key=idempotency_key,
            tags=tags,
            priority=priority,
            queue=queue,
            context=context,
            held=True,
        )
        if eager if eager is not None else job.config.eager:
            manager.dispatch(job)
        else:
            self._held.append(job)
        return job.task_id

    def discard(self, reason: str) -> None:
        """Cancel every task still held for this request (the request failed)."""
        if self._manager is not None:
            _discard_all(self._manager, self._held, reason)
        self._held.clear()

    async def __call__(self) -> None:
        """Run after the response is sent: hand the held tasks over and return at once."""
        held = list(self._held)
        self._held.clear()  # in place: the finalizer watches this very list
        if self._manager is not None:
            for job in held:
                self._manager.dispatch(job)
        if self.tasks:  # plain Starlette tasks added before the object was bound
            await super().__call__()


def bind(
    background_tasks: StarletteBackgroundTasks, manager: TaskManager
) -> ManagedBackgroundTasks:
    """Make the request's ``BackgroundTasks`` object a managed one (in place)."""
    if (
        isinstance(background_tasks, ManagedBackgroundTasks)
        and background_tasks._manager is manager
    ):
        return background_tasks
    if type(background_tasks) not in (BackgroundTasks, ManagedBackgroundTasks) and not isinstance(
        background_tasks, ManagedBackgroundTasks
    ):
        raise TypeError(
            f"cannot manage {type(background_tasks).__name__}: only FastAPI's BackgroundTasks"
        )
    background_tasks.__class__ = ManagedBackgroundTasks
    managed: ManagedBackgroundTasks = background_tasks  # type: ignore[assignment]
    managed._manager = manager
    managed._held = []
    # If the object is dropped without being run (the response never went out), its tasks
    # must not stay pending forever.
    managed._finalizer = weakref.finalize(managed, _discard_all, manager, managed._held, _UNSENT)
    bound = _bound_here.get()
    if bound is not None:
        bound.append(managed)
    return managed


class RequestTasksGuard:
    """ASGI middleware that ends, at once, the tasks a request added but never handed over.

    A request hands its tasks over when its response has been sent. If the route raised
    instead, or answered with an error response (an ``HTTPException``, a validation error)
    or with a response that carries a background task of its own, the tasks it added are
    recorded as cancelled, with the reason, and never run. (Without this middleware a
    dependency with ``yield`` on each route does the same, at a higher cost per request.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bound: list[ManagedBackgroundTasks] = []
        status = 0

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = _bound_here.set(bound)
        try:
            await self.app(scope, receive, watched)
        except BaseException as exc:
            for managed in bound:
                managed.discard(request_failed(exc))
            raise
        finally:
            _bound_here.reset(token)
        for managed in bound:
            if managed._held:  # (empty once the response has handed them over)
                managed.discard(_answered(status))


def guard(app: Any) -> bool:
    """Add :class:`RequestTasksGuard` to ``app`` unless it has it; False if that is too
    late (the app has started: its middleware is fixed)."""
    middleware = getattr(app, "user_middleware", None)
    if middleware is None:
        return False
    if any(getattr(entry, "cls", None) is RequestTasksGuard for entry in middleware):
        return True
    try:
        app.add_middleware(RequestTasksGuard)
    except RuntimeError:  # "Cannot add middleware after an application has started"
        return False
    return True


def _background_param(dependant: Dependant) -> type[Any] | None:
    """The annotation of the dependant's own BackgroundTasks parameter, if it has one."""
    if not dependant.background_tasks_param_name or dependant.call is None:
        return None
    try:
        parameters = inspect.signature(dependant.call, eval_str=True).parameters
        parameter = parameters[dependant.background_tasks_param_name]
    except (KeyError, TypeError, ValueError, NameError):
        return BackgroundTasks
    annotation = parameter.annotation
    return annotation if isinstance(annotation, type) else BackgroundTasks


def _wants_binding(dependant: Dependant, plain_too: bool) -> bool:
    kinds = []
    stack = [dependant]
    while stack:
        current = stack.pop()
        kind = _background_param(current)
        if kind is not None:
            kinds.append(kind)
        stack.extend(current.dependencies)
    return any(issubclass(kind, ManagedBackgroundTasks) or plain_too for kind in kinds)


def install(app: FastAPI, manager: TaskManager, *, plain_background_tasks: bool) -> int:
    """Bind the background tasks of every route that asks for them; returns how many.

    Routes that declare a ``ManagedBackgroundTasks`` parameter are always bound; routes with
    a plain ``BackgroundTasks`` parameter only when ``plain_background_tasks`` is true.
    """

    async def bind_guarded(background_tasks: BackgroundTasks) -> None:
        bind(background_tasks, manager)  # (RequestTasksGuard handles a failed request)

    async def bind_request_tasks(background_tasks: BackgroundTasks) -> AsyncIterator[None]:
        managed = bind(background_tasks, manager)
        try:
            yield
        except BaseException as exc:
            managed.discard(request_failed(exc))
            raise

    binder = bind_guarded if guard(app) else bind_request_tasks
    bound = 0
    for dependant, path in _route_dependants(app):
        if id(dependant) in manager._bound_routes:
            continue
        if not _wants_binding(dependant, plain_background_tasks):
            continue
        binding = Depends(binder)
        dependant.dependencies.insert(
            0, get_parameterless_sub_dependant(depends=binding, path=path)
        )
        manager._bound_routes.add(id(dependant))
        bound += 1
    return bound


def _route_dependants(app: FastAPI) -> list[tuple[Dependant, str]]:
    """The dependant of every HTTP route, including routes of included routers (which newer
    FastAPI versions keep as separate route contexts)."""
    found: list[tuple[Dependant, str]] = []
    iter_contexts = getattr(fastapi_routing, "iter_route_contexts", None)
    routes: Iterable[Any] = (
        iter_contexts(app.router.routes) if iter_contexts is not None else app.router.routes
    )
    for route in routes:
        dependant = getattr(route, "dependant", None)
        if isinstance(dependant, Dependant) and getattr(route, "methods", None):
            found.append((dependant, str(getattr(route, "path_format", "") or "")))
    return found
