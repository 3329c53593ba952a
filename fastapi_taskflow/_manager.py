"""TaskManager: configuration, the task registry and the lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import itertools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from time import time as _time
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from starlette.background import BackgroundTasks

from ._arguments import all_json, check_storable, snapshot
from ._context import append_log
from ._dispatch import Dispatcher
from ._errors import (
    ConfigurationError,
    InvalidTaskStateError,
    NotStartedError,
    QueueFullError,
    TaskNotFoundError,
    UnknownTaskError,
    UnsupportedOperationError,
)
from ._executor import _NO_KWARGS, Executor
from ._flusher import Flusher, WriteAhead
from ._history import LoadingRepository, TaskHistory
from ._job import Job, Stage, light_job, seal_of
from ._leases import LeaseKeeper
from ._models import (
    TAG_KEY_LENGTH,
    TAG_VALUE_LENGTH,
    QueueConfig,
    TaskRecord,
    TaskStatus,
    new_record,
    new_task_id,
    utcnow,
)
from ._registry import DEFAULT_QUEUE, Registry, TaskConfig, is_async_callable
from ._retry import RetryPolicy
from ._store import TaskStore
from .backends.base import Coordinator, SnapshotBackend

if TYPE_CHECKING:
    from ._background import ManagedBackgroundTasks

logger = logging.getLogger("fastapi_taskflow")

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

_HOLDS_KEY = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCESS})
_RETRYABLE = frozenset(
    {TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.INTERRUPTED, TaskStatus.REJECTED}
)


_KEY_NAMESPACE = uuid.UUID("6f1d2c8e-57a4-4c1b-9a51-2b7f3f0c9e11")
_NOT_STARTED = "interrupted: the application shut down before it started"


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def backend_from_url(url: str, *, auto_migrate: bool) -> SnapshotBackend:
    """The built-in backend for a database URL (SQL by scheme, or Redis)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        from .backends.redis import RedisBackend

        return RedisBackend(url)
    from .backends.sql import SqlBackend

    return SqlBackend(url, auto_migrate=auto_migrate)


class TaskManager:
    """Runs background tasks with retries, timeouts, status tracking and optional storage.

    Nothing starts in the constructor: call ``await startup()`` (``TaskAdmin`` does it in the
    app's lifespan), or use ``async with task_manager:`` or ``FastAPI(lifespan=
    task_manager.lifespan)``.

    Storage: choose at most one of ``snapshot_db`` (a SQLite file path), ``database_url``
    (``sqlite://``, ``postgresql://``, ``mysql://``, ``mariadb://``, ``redis://`` or an explicit
    async driver URL) and ``snapshot_backend`` (any :class:`SnapshotBackend`). Without one,
    everything lives in memory and is gone when the process exits.
    """

    def __init__(
        self,
        *,
        snapshot_db: str | os.PathLike[str] | None = None,
        snapshot_backend: SnapshotBackend | None = None,
        database_url: str | None = None,
        snapshot_interval: float = 60.0,
        requeue_pending: bool = False,
        auto_migrate: bool = True,
        max_concurrent_tasks: int = 100,
        max_sync_threads: int = 20,
        max_records: int = 10_000,
        max_size: int | None = None,
        queues: Sequence[QueueConfig] = (),
        retry_replaces_original: bool = True,
        shutdown_grace: float = 10.0,
        instance_id: str | None = None,
        lease_s: float = 30.0,
        idempotency_ttl_s: float = 86_400.0,
        durability_timeout: float = 5.0,
    ) -> None:
        chosen = [
            n
            for n, v in (
                ("snapshot_db", snapshot_db),
                ("snapshot_backend", snapshot_backend),
                ("database_url", database_url),
            )
            if v is not None
        ]
        if len(chosen) > 1:
            raise ConfigurationError(
                f"pass only one of snapshot_db, snapshot_backend and database_url (got "
                f"{', '.join(chosen)})"
            )
        for label, number in (
            ("max_concurrent_tasks", max_concurrent_tasks),
            ("max_sync_threads", max_sync_threads),
            ("max_records", max_records),
        ):
            if number < 1:
                raise ConfigurationError(f"{label} must be at least 1, got {number}")
        if snapshot_interval <= 0:
            raise ConfigurationError(
                f"snapshot_interval must be > 0 seconds, got {snapshot_interval}"
            )
        for label, seconds in (
            ("lease_s", lease_s),
            ("idempotency_ttl_s", idempotency_ttl_s),
            ("durability_timeout", durability_timeout),
        ):
            if seconds <= 0:
                raise ConfigurationError(f"{label} must be > 0 seconds, got {seconds}")
        if shutdown_grace < 0:
            raise ConfigurationError(f"shutdown_grace must be >= 0 seconds, got {shutdown_grace}")
        if snapshot_db is not None:
            from .backends.sql import SqliteBackend

            snapshot_backend = SqliteBackend(os.fspath(snapshot_db), auto_migrate=auto_migrate)
        elif database_url is not None:
            snapshot_backend = backend_from_url(database_url, auto_migrate=auto_migrate)
        self.backend: SnapshotBackend | None = snapshot_backend
        self.snapshot_interval = snapshot_interval
        self.requeue_pending = requeue_pending
        self.auto_migrate = auto_migrate
        self.max_concurrent_tasks = max_concurrent_tasks
        self.max_sync_threads = max_sync_threads
        self.retry_replaces_original = retry_replaces_original
        self.shutdown_grace = shutdown_grace
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self.lease_s = lease_s
        self.idempotency_ttl_s = idempotency_ttl_s
        self.durability_timeout = durability_timeout
        self._coordinator: Coordinator | None = None
        self._leases: LeaseKeeper | None = None
        self._changed: dict[str, TaskRecord] = {}
        self._queues = {
            DEFAULT_QUEUE: QueueConfig(
                name=DEFAULT_QUEUE, max_concurrency=max_concurrent_tasks, max_size=max_size
            )
        }
        for queue in queues:
            if queue.name in self._queues and queue.name != DEFAULT_QUEUE:
                raise ConfigurationError(f"queue {queue.name!r} is configured twice")
            self._queues[queue.name] = queue
        self.registry = Registry()
        self.store = TaskStore(max_records)
        self._state = _State.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bound_routes: set[int] = set()  # dependants given managed background tasks
        self._dispatcher: Dispatcher | None = None
        self._executor: Executor | None = None
        self._flusher: Flusher | None = None
        self._orphans: list[TaskRecord] = []
        self.history = TaskHistory(
            live=lambda: itertools.chain(self.store.records(), self._orphans),
            stored=None,
            unsaved=lambda: self._flusher.unsaved() if self._flusher else frozenset(),
            lookup=self._lookup,
        )

    def _lookup(self, task_id: str) -> TaskRecord | None:
        record = self.store.record(task_id)
        if record is not None:
            return record
        return next((r for r in self._orphans if r.task_id == task_id), None)

    # ------------------------------------------------------------------ registration

    @overload
    def task(self, func: F, /) -> F: ...

    @overload
    def task(
        self,
        *,
        retries: int = 0,
        delay: float = 0.0,
        backoff: float = 1.0,
        max_delay: float | None = None,
        jitter: float = 0.0,
        retry_on: Sequence[type[BaseException]] = (Exception,),
        timeout: float | None = None,
        name: str | None = None,
        eager: bool = False,
        priority: int | None = None,
        queue: str | None = None,
        persist: bool = False,
        requeue_on_interrupt: bool = False,
    ) -> Callable[[F], F]: ...

    def task(  # type: ignore[misc]  # mypy misreads the keyword-only overload
        self,
        func: F | None = None,
        /,
        *,
        retries: int = 0,
        delay: float = 0.0,
        backoff: float = 1.0,
        max_delay: float | None = None,
        jitter: float = 0.0,
        retry_on: Sequence[type[BaseException]] = (Exception,),
        timeout: float | None = None,
        name: str | None = None,
        eager: bool = False,
        priority: int | None = None,
        queue: str | None = None,
        persist: bool = False,
        requeue_on_interrupt: bool = False,
    ) -> F | Callable[[F], F]:
        """Register a task function with its settings; returns the function unchanged.

        ``retries`` extra attempts wait ``delay * backoff ** n`` seconds (capped by
        ``max_delay``, spread by ``jitter``), only for exceptions in ``retry_on``.
        ``timeout`` (seconds) cancels an async attempt that runs too long and counts it as
        failed. ``persist=True`` stores the task's arguments so it survives a restart;
        ``requeue_on_interrupt=True`` re-runs it if it was running when the process stopped.
        """
        policy = RetryPolicy(
            retries=retries,
            delay=delay,
            backoff=backoff,
            max_delay=max_delay,
            jitter=jitter,
            retry_on=tuple(retry_on),
        )
        if queue is not None and queue not in self._queues:
            raise ConfigurationError(self._unknown_queue(queue))

        def register(fn: F) -> F:
            from ._registry import default_name

            self.registry.register(
                TaskConfig(
                    name=name or default_name(fn),
                    func=fn,
                    retry=policy,
                    timeout=timeout,
                    persist=persist,
                    requeue_on_interrupt=requeue_on_interrupt,
                    eager=eager,
                    priority=priority,
                    queue=queue,
                    is_async=is_async_callable(fn),
                )
            )
            return fn

        return register(func) if func is not None else register

    def _unknown_queue(self, queue: str) -> str:
        return (
            f"queue {queue!r} is not configured; known queues: {sorted(self._queues)}. "
            f"Add it with TaskManager(queues=[QueueConfig(name={queue!r})])"
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the manager runs on (set by ``startup()``)."""
        if self._loop is None:
            raise NotStartedError("the TaskManager has not been started")
        return self._loop

    @property
    def started(self) -> bool:
        """True between ``startup()`` and ``shutdown()``."""
        return self._state is _State.RUNNING

    async def startup(self) -> None:
        """Open the backend, requeue unfinished work and start accepting tasks."""
        if self._state is _State.RUNNING:
            return
        if self._state is not _State.NEW:
            raise NotStartedError("this TaskManager was shut down; create a new one to restart")
        self._loop = asyncio.get_running_loop()
        self._executor = Executor(
            sync_slots=asyncio.Semaphore(self.max_sync_threads),
            on_change=self._on_change,
            on_terminal=self._on_terminal,
            before_start=self._before_start,
            on_light_success=self._light_success,
        )
        self._dispatcher = Dispatcher(
            self._queues, self.max_concurrent_tasks, self._executor.run, self._executor.abandoned,
            begin=self._executor.start, needs_mark=self._needs_mark, mark=self._mark_running,
        )  # fmt: skip
        backend = self.backend
        if backend is not None:
            await backend.open()
            self._coordinator = coordinator = backend.coordinator()
            self.history.attach(backend.history() or LoadingRepository(backend), coordinator)
            write_ahead = None
            if coordinator is not None:
                write_ahead = WriteAhead(
                    coordinator=coordinator, owner=self.instance_id, lease_s=self.lease_s,
                    key_ttl_s=self.idempotency_ttl_s,
                )  # fmt: skip
            # Coordinators that store each accepted record's status let a task that can start
            # at once be written ahead as running, sparing it a separate running mark.
            claims = getattr(coordinator, "accepts_running", False) is True
            self._flusher = Flusher(
                backend, interval=self.snapshot_interval, write_ahead=write_ahead,
                claim=self._claim if claims else None,
            )  # fmt: skip
        self._state = _State.RUNNING
        if backend is not None:
            assert self._flusher is not None
            if self._coordinator is None:
                await self._requeue(await backend.load_pending())
                await backend.clear_pending()
            self._flusher.start()
            if self._coordinator is not None:
                from ._recovery import Recovery

                self._leases = LeaseKeeper(
                    Recovery(self), self._coordinator, owner=self.instance_id,
                    lease_s=self.lease_s, interval=self.lease_s / 3,
                )  # fmt: skip
                await self._leases.beat(reclaim_own=True)
                self._leases.start()

    async def shutdown(self) -> None:
        """Stop accepting tasks, let running ones finish within ``shutdown_grace`` seconds,
        mark the rest interrupted, save what must survive and close the backend."""
        if self._state is not _State.RUNNING:
            self._state = _State.STOPPED
            return
        self._state = _State.STOPPING
        dispatcher = self._dispatcher
        assert dispatcher is not None and self._executor is not None
        not_started = dispatcher.take_waiting()
        not_started += [job for job in self.store if job.stage is Stage.HELD]
        if not await dispatcher.wait_running(self.shutdown_grace):
            for job in list(dispatcher.running.values()):
                job.interrupted = True
                if job.task is not None:
                    job.task.cancel()
                elif job.stage is Stage.STARTING:
                    self._executor.abandoned(job)
            await dispatcher.wait_running(5.0)
        to_requeue: list[TaskRecord] = list(self._orphans)
        for job in not_started:
            if job.deferred:  # held by a request cut short: kept as pending, as the others
                self._write_ahead(job)
        for job in not_started:
            if self._persists(job.config):
                if job.durable is None or not job.durable.done() or job.durable.result():
                    to_requeue.append(job.record.model_copy())
            else:
                self._executor.finish(
                    job,
                    TaskStatus.INTERRUPTED,
                    _NOT_STARTED,
                )
        for job in self.store:
            requeue = job.config.requeue_on_interrupt and self._persists(job.config)
            if requeue and job.record.status is TaskStatus.INTERRUPTED:
                to_requeue.append(job.record.model_copy(update={"status": TaskStatus.PENDING}))
        try:
            if self._leases is not None:
                await self._leases.stop()
            if self.backend is not None:
                assert self._flusher is not None
                await self._flusher.stop()
                if self._coordinator is not None:
                    await self._coordinator.release(self.instance_id, to_requeue)
                else:
                    await self.backend.save_pending(to_requeue)
        finally:
            self._state = _State.STOPPED
            if self.backend is not None:
                await self.backend.close()

    async def __aenter__(self) -> TaskManager:
        await self.startup()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """A lifespan for ``FastAPI(lifespan=task_manager.lifespan)``."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def flush(self) -> int:
        """Write every completed record not yet saved to the backend now."""
        return await self._flusher.flush() if self._flusher is not None else 0

    # ------------------------------------------------------------------ submitting

    def _persists(self, config: TaskConfig) -> bool:
        return self.backend is not None and (config.persist or self.requeue_pending)

    def create(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        tags: dict[str, str] | None = None,
        priority: int | None = None,
        queue: str | None = None,
        source: str = "request",
        task_id: str | None = None,
        created_at: Any = None,
        write_ahead: bool = True,
        context: contextvars.Context | None = None,
        held: bool = False,
    ) -> Job:
        """Accept a task: validate it, record it as pending and reserve its queue slot.

        Returns the job, which is not started yet (see :meth:`dispatch`). When the
        idempotency key matches a live or succeeded task, that task's job is returned.
        ``held``: a request's task, held until its response is sent, is written ahead only
        when it is dispatched (together with its running mark if it has a slot then).
        """
        if idempotency_key is not None:
            existing = self.duplicate_of(idempotency_key, func)
            if existing is not None:
                return existing
        elif (
            not tags
            and priority is None
            and queue is None
            and task_id is None
            and created_at is None
            and context is None
        ):
            light = self._add_light(func, args, kwargs, source, held=held)
            if light is not None:
                return light
        job = self._prepare(
            func, args, kwargs, idempotency_key=idempotency_key, tags=tags, priority=priority,
            queue=queue, source=source, task_id=task_id, created_at=created_at, context=context,
        )  # fmt: skip
        record, queue_name = job.record, job.record.queue
        assert self._dispatcher is not None
        if not self._dispatcher.admit(job):
            key = record.idempotency_key
            if key is not None and job.task_id == uuid.uuid5(_KEY_NAMESPACE, key).hex:
                # Its id is derived from the key and may belong to a task that exists (in
                # another instance's memory, or in history): the rejection gets its own.
                job.task_id = record.__dict__["task_id"] = new_task_id()
            self.store.add(job)
            assert self._executor is not None
            limit = self._queues[queue_name].max_size
            message = f"queue {queue_name!r} is full ({limit} tasks waiting); task rejected"
            self._executor.finish(job, TaskStatus.REJECTED, message)
            raise QueueFullError(
                f"{message}. Raise max_size for the queue or add tasks more slowly.",
                task_id=record.task_id,
                queue=queue_name,
            )
        self.store.add(job)
        if self._coordinator is not None and write_ahead and self._persists(job.config):
            self._write_ahead(job, later=held)
        return job

    def _add_light(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        source: str,
        *,
        held: bool = False,
    ) -> Job | None:
        """:meth:`create` for a task added with no options, as a light job (see :class:`Job`);
        ``None`` where one does not fit (a queue with a size limit, a manager that is not
        running) and :meth:`create` does the rest. A persisted task's arguments are checked
        here, and in a shared deployment it is queued for write-ahead (``held``: when it is
        dispatched) as :meth:`create` does."""
        if self._state is not _State.RUNNING:
            return None
        config = self.registry.for_callable(func)
        persisted = self._persists(config)
        if persisted:
            check_storable(config.name, args, kwargs)  # (stored exactly: refused now if not)
        assert self._dispatcher is not None
        queue = config.queue or DEFAULT_QUEUE
        if not self._dispatcher.admit_unbounded(queue):
            return None
        job = light_job(
            new_task_id(), config, args, kwargs, contextvars.copy_context(), _time(), queue,
            source, self.instance_id,
        )  # fmt: skip
        self.store.add_light(job)
        if persisted and self._coordinator is not None:
            self._write_ahead(job, later=held)
        return job

    def _light_success(self, job: Job, ended: float) -> bool:
        """Record a light job that succeeded (see :class:`Job`) as a seal: kept in the store,
        and with a backend buffered for history as it is. False (the executor then records
        it the usual way) if a listener waits for its record or its arguments are not plain
        values."""
        if self.store.has_subscribers:
            return False
        durable = job.durable
        if durable is not None and not (durable.done() and durable.result()):
            return False  # (started before its write-ahead was settled: see _on_terminal)
        seal = seal_of(job, ended)
        if seal is None:
            return False
        # Only a task written ahead (or adopted) can have a row in the pending store.
        may_pend = job.leased or durable is not None
        job.leased = False
        job.sealed = seal
        job.stage = Stage.DONE
        job.context = None
        job.args, job.kwargs = (), _NO_KWARGS
        assert self._dispatcher is not None
        self._dispatcher.finished(job)
        self.store.seal(job, seal)
        if self._flusher is not None:
            self._flusher.add_sealed(seal, pending=may_pend)
        if job.done is not None:
            job.done.set()
        if self._leases is not None and self._leases.backlog:
            self._leases.poke()
        return True

    def _prepare(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        idempotency_key: str | None,
        tags: dict[str, str] | None,
        priority: int | None,
        queue: str | None,
        source: str,
        task_id: str | None,
        created_at: Any,
        context: contextvars.Context | None,
    ) -> Job:
        """Validate a task and build its job and pending record (nothing is stored)."""
        if self._state is not _State.RUNNING:
            raise NotStartedError(
                "the TaskManager is not running: start it with TaskAdmin(app, task_manager), "
                "FastAPI(lifespan=task_manager.lifespan), 'async with task_manager:' or "
                "'await task_manager.startup()'"
            )
        config = self.registry.for_callable(func)
        queue_name = queue or config.queue or DEFAULT_QUEUE
        if queue_name not in self._queues:
            raise ConfigurationError(self._unknown_queue(queue_name))
        if tags:
            tags = _checked_tags(tags)
        persisted = exact = self._persists(config)
        shared = persisted and self._coordinator is not None
        if shared and idempotency_key is not None and task_id is None:
            # One id per key on every instance: the shared pending store's unique task id
            # then decides atomically which instance's task exists.
            task_id = uuid.uuid5(_KEY_NAMESPACE, idempotency_key).hex
        if exact:
            check_storable(config.name, args, kwargs)
            stored_args, stored_kwargs = list(args), dict(kwargs)
        else:
            exact, stored_args, stored_kwargs = snapshot(args, kwargs)
        now = utcnow()
        record = new_record(
            task_id or new_task_id(),
            config.name,
            stored_args,
            stored_kwargs,
            now,
            tags or {},
            idempotency_key,
            source,
            priority if priority is not None else config.priority,
            queue_name,
            self.instance_id,
        )
        if created_at is not None:
            record.__dict__["created_at"] = created_at
        return Job(
            record.task_id,
            record,
            config,
            args,
            kwargs,
            context if context is not None else contextvars.copy_context(),
        )

    def duplicate_of(
        self, idempotency_key: str | None, func: Callable[..., Any] | None = None
    ) -> Job | None:
        """The pending, running or succeeded task known here that holds this key (for a
        new task of ``func``)."""
        if idempotency_key is None:
            return None
        existing = self.store.by_idempotency_key(idempotency_key)
        if existing is None or existing.record.status not in _HOLDS_KEY:
            return None
        flusher = self._flusher
        if (
            flusher is None
            or not existing.record.status.is_terminal
            or existing.task_id in flusher.unsaved()
        ):
            return existing  # no backend, a live task, or a record only this memory holds
        # A succeeded record that is saved may since have been deleted through another
        # instance sharing the backend; this memory copy would then hold a key that is free.
        # This check is synchronous and on add_task's hot path, so it cannot ask the backend;
        # where the backend decides the key anyway, let it. A persisted task in a shared
        # deployment gets its id from the key, so the new task has this very id and the
        # pending store's accept (in the write-ahead the task waits for before it starts)
        # settles it atomically: skipped while history holds the id as succeeded (within
        # idempotency_ttl_s; the caller gets this id back, nothing runs, and the new job is
        # dropped from memory), added and run once the task is deleted. Otherwise this
        # memory answers: the key of a task that is not persisted is held by this instance's
        # memory alone (no backend sees it), and a failing backend cannot decide in time.
        # (Only when the new task is persisted too: it then gets the same id.)
        if (
            flusher.healthy
            and self._coordinator is not None
            and self._persists(existing.config)
            and func is not None
            and self._persists(self.registry.for_callable(func))
            and existing.task_id == uuid.uuid5(_KEY_NAMESPACE, idempotency_key).hex
        ):
            return None
        return existing

    def dispatch(self, job: Job) -> None:
        """Let an accepted job start (now, or when its queue has room).

        A persisted task in a shared deployment starts once its write-ahead record is
        durable (or after ``durability_timeout`` if the backend is unreachable).
        """
        if job.stage is not Stage.HELD or job.dispatched:
            return
        job.dispatched = True
        if job.deferred:  # a request's task, whose response is sent: written ahead now
            self._write_ahead(job)
        durable, flusher = job.durable, self._flusher
        if (
            durable is not None
            and not durable.done()
            and flusher is not None
            and flusher.healthy
            # One gate per write-ahead batch (not a timer and a callback per task).
            and flusher.hold(job, self._after_durable, timeout_s=self.durability_timeout)
        ):
            return
        self._after_durable(job)

    def _write_ahead(self, job: Job, *, later: bool = False) -> None:
        """Queue ``job``'s write-ahead; ``later``: when it is dispatched (a request's task,
        see ``create(held=True)``), which calls this again."""
        job.deferred = later
        if not later:
            assert self._flusher is not None
            job.durable = self._flusher.accept(job)

    def _claim(self, job: Job) -> bool:
        """Whether ``job``, whose write-ahead is being prepared, takes a running slot now to
        start the moment that write is durable (then written ahead as running). Only a job
        already dispatched, that would not have to wait for its turn, does."""
        if job.stage is not Stage.HELD or not job.dispatched or self._state is not _State.RUNNING:
            return False
        assert self._dispatcher is not None
        if not self._dispatcher.reserve(job):
            return False
        job.marked = True
        return True

    def _after_durable(self, job: Job) -> None:
        if job.stage is not Stage.HELD:
            return
        durable = job.durable
        if durable is not None and durable.done() and not durable.exception():
            if not durable.result():  # another instance holds a task with this id
                assert self._dispatcher is not None
                self._dispatcher.release(job)
                job.stage = Stage.DONE
                if self.store.get(job.task_id) is job:
                    self.store.remove(job.task_id)
                return
            job.leased = True
        elif durable is not None and self._flusher is not None and self._flusher.healthy:
            logger.warning(
                "fastapi-taskflow: task %s starts before its write-ahead record is saved "
                "(the backend is slow); a crash now would lose it",
                job.task_id,
            )
        if self._state is not _State.RUNNING:
            if self._state is _State.STOPPING and self._persists(job.config):
                # Held when the shutdown began, which saves it as pending (to run after a
                # restart, or on another instance); recorded as interrupted here, its
                # history record would take it out of the pending store.
                return
            assert self._executor is not None
            self._executor.finish(
                job,
                TaskStatus.INTERRUPTED,
                _NOT_STARTED,
            )
            return
        assert self._dispatcher is not None
        self._dispatcher.submit(job)

    def discard(self, job: Job, reason: str) -> None:
        """End a held job that will never be dispatched (its request failed)."""
        if job.stage is not Stage.HELD or job.dispatched or job.ended:
            return
        if self._dispatcher is not None:
            self._dispatcher.release(job)
        if job.deferred and job.key is not None:
            # Never written ahead, and its id comes from its idempotency key: it may be
            # another task's (in history, or pending on another instance), which its record
            # would overwrite. It is dropped without a record.
            job.deferred = False
            job.stage = Stage.DONE
            self._refused(job)
            return
        job.deferred = False  # (its cancelled record has no row in the pending store)
        assert self._executor is not None
        self._executor.finish(job, TaskStatus.CANCELLED, reason)

    async def enqueue(
        self,
        func: Callable[..., Any],
        /,
        *args: Any,
        idempotency_key: str | None = None,
        tags: dict[str, str] | None = None,
        priority: int | None = None,
        queue: str | None = None,
        connection: Any = None,
        **kwargs: Any,
    ) -> str:
        """Add a task from outside a request (startup code, another task, a script).

        Starts it as soon as its queue has room and returns its id. A persisted task in a
        shared deployment is durable when this returns.

        With ``connection=`` (an SQLAlchemy ``AsyncConnection`` or ``AsyncSession`` on the
        same database as the SQL backend), the task is written in the caller's open
        transaction: it exists if and only if the caller commits, and is started after the
        commit, by this instance or another. The function must be registered.
        """
        if connection is not None:
            from ._transactional import enqueue_in_transaction

            return await enqueue_in_transaction(
                self, func, args, kwargs, connection, idempotency_key=idempotency_key,
                tags=tags, priority=priority, queue=queue,
            )  # fmt: skip
        job = self.create(
            func,
            args,
            kwargs,
            idempotency_key=idempotency_key,
            tags=tags,
            priority=priority,
            queue=queue,
            source="enqueue",
        )
        # Dispatched first: it starts the moment its write-ahead is durable, when this returns.
        self.dispatch(job)
        flusher = self._flusher
        durable = job.durable
        if durable is not None and not durable.done() and flusher is not None and flusher.healthy:
            await flusher.durable(job, timeout_s=self.durability_timeout)
        return job.task_id

    async def get_tasks(
        self, background_tasks: BackgroundTasks
    ) -> AsyncIterator[ManagedBackgroundTasks]:
        """FastAPI dependency: ``tasks: ManagedBackgroundTasks = Depends(task_manager.get_tasks)``.

        Gives the request's background tasks object, managed by this manager. Tasks added
        in a request that then fails are cancelled instead of left pending.
        """
        from ._background import bind, request_failed

        managed = bind(background_tasks, self)
        try:
            yield managed
        except BaseException as exc:
            managed.discard(request_failed(exc))
            raise

    def install(self, app: Any, *, plain_background_tasks: bool = False) -> int:
        """Make the app's routes receive managed background tasks; returns how many.

        Routes with a ``ManagedBackgroundTasks`` parameter are bound; with
        ``plain_background_tasks=True`` so are routes with plain ``BackgroundTasks``. Call it
        after the routes are added (``TaskAdmin`` calls it at start-up). Before the app has
        started it also adds a small middleware that cancels the tasks of a request that
        fails; later, each bound route gets a dependency with ``yield`` that does it instead.
        """
        from ._background import install

        return install(app, self, plain_background_tasks=plain_background_tasks)

    # ------------------------------------------------------------------ actions

    async def _before_start(self, job: Job) -> None:
        """In a shared deployment, a persisted task is marked running in the pending store
        before its function is called, so that if this instance dies an adopting instance
        knows the task may have run (and re-runs it only with requeue_on_interrupt)."""
        flusher = self._flusher
        if not job.leased or job.marked or flusher is None or not flusher.healthy:
            return  # (marked: written ahead as running already)
        # (The task stays in _changed: a mark may carry the status alone, and the heartbeat
        # publishes the start time and attempts of a task still running then.)
        gate = flusher.started(job)  # shared by the tasks starting in this cycle
        if not await gate.wait(self.durability_timeout):
            logger.debug(
                "fastapi-taskflow: %s starts before its running state is saved", job.task_id
            )

    def _needs_mark(self, job: Job) -> bool:
        """Whether the starter has ``job`` marked running in the pending store before it
        calls it (see :meth:`_mark_running`)."""
        flusher = self._flusher
        return job.leased and not job.marked and flusher is not None and flusher.healthy

    async def _mark_running(self, jobs: list[Job]) -> None:
        """:meth:`_before_start` for a batch of jobs the starter is about to call: one wait
        for their marks (written together), after which they start without a task each."""
        flusher = self._flusher
        assert flusher is not None
        gates = {id(gate): gate for gate in map(flusher.started, jobs)}  # (usually one)
        for job in jobs:
            job.marked = True
        for gate in gates.values():
            if not await gate.wait(self.durability_timeout):
                logger.debug(
                    "fastapi-taskflow: %d tasks start before their running state is saved",
                    len(jobs),
                )

    def _on_change(self, job: Job) -> None:
        self.store.changed(job.record)
        if job.leased:
            self._changed[job.task_id] = job.record

    def _on_terminal(self, job: Job) -> None:
        if self._dispatcher is not None:
            self._dispatcher.finished(job)
        self.store.completed(job)
        self._changed.pop(job.task_id, None)
        released = (
            self._state is _State.STOPPING
            and job.leased
            and job.config.requeue_on_interrupt
            and job.record.status is TaskStatus.INTERRUPTED
        )
        # Only a task written ahead or adopted can have a row in the pending store.
        may_pend = job.leased or job.durable is not None
        job.leased = False
        if self._flusher is not None and not released:
            durable = job.durable
            if durable is None or (durable.done() and durable.result()):
                self._flusher.add(job.record, pending=may_pend)
            elif not durable.done():  # ended before its write-ahead was settled
                durable.add_done_callback(lambda _: self._record_if_accepted(job))
            else:
                self._refused(job)
        if job.done is not None:
            job.done.set()
        if self._leases is not None and self._leases.backlog:
            self._leases.poke()

    def _record_if_accepted(self, job: Job) -> None:
        """Record a task that ended (cancelled with its request, say) before the pending
        store settled whether it was added; if it was not, its id belongs to another task
        (the same idempotency key, on another instance or already in history) and nothing
        of it is written: its record would overwrite that task's."""
        durable = job.durable
        assert durable is not None
        if durable.result() and self._flusher is not None:
            self._flusher.add(job.record, pending=True)
        else:
            self._refused(job)

    def _refused(self, job: Job) -> None:
        if self.store.get(job.task_id) is job:
            self.store.remove(job.task_id)

    async def _requeue(self, records: list[TaskRecord]) -> None:
        for record in records:
            config = self.registry.get(record.func_name)
            if config is None:
                logger.warning(
                    "fastapi-taskflow: pending task %s needs function %r, which is not "
                    "registered; it stays pending. Register the function (or its name=) "
                    "before start-up to run it.",
                    record.task_id,
                    record.func_name,
                )
                self._orphans.append(record)
                continue
            job = self.create(
                config.func,
                tuple(record.args),
                dict(record.kwargs),
                idempotency_key=record.idempotency_key,
                tags=record.tags,
                priority=record.priority,
                queue=record.queue if record.queue in self._queues else None,
                source="requeue",
                task_id=record.task_id,
                created_at=record.created_at,
            )
            job.record.logs = list(record.logs)
            job.record.attempts = list(record.attempts)
            job.record.retries_used = 0
            self.dispatch(job)

    async def cancel(self, task_id: str, reason: str = "cancelled on request") -> TaskRecord:
        """Cancel a task: a pending one never runs; a running async one is cancelled.

        In a shared deployment a task held by another instance is cancelled by that instance
        at its next heartbeat; the returned record then still shows its current status.
        """
        job = await self._visible_job(task_id)  # not a copy of a task deleted elsewhere
        if job is None and self._coordinator is not None:
            shared = await self._coordinator.get_live(task_id)
            if shared is not None:
                from ._recovery import Recovery

                job = await Recovery(self).take(task_id)
                if job is None:
                    await self._coordinator.request_cancel(task_id)
                    return shared
        if job is None:
            if await self.history.get(task_id) is not None:
                raise InvalidTaskStateError(f"task {task_id} has already finished")
            raise TaskNotFoundError(f"no task with id {task_id!r}")
        assert self._executor is not None and self._dispatcher is not None
        if job.stage in (Stage.HELD, Stage.WAITING):
            self._dispatcher.release(job)
            self._executor.finish(job, TaskStatus.CANCELLED, reason)
        elif job.stage is Stage.STARTING:  # its slot is taken, its function not yet called
            self._executor.finish(job, TaskStatus.CANCELLED, reason)
        elif job.stage is Stage.RUNNING:
            if job.in_thread:
                raise InvalidTaskStateError(
                    f"task {task_id} is a sync function running in a thread and cannot be "
                    f"interrupted; make it async to allow cancelling it while it runs"
                )
            job.cancel_reason = reason
            if job.task is not None:
                job.task.cancel()
                await asyncio.wait({job.task})
        else:
            raise InvalidTaskStateError(
                f"task {task_id} is already {job.record.status.value}; only pending or running "
                f"tasks can be cancelled"
            )
        return job.record

    async def retry(self, task_id: str) -> str:
        """Run a failed, cancelled, interrupted or rejected task again; returns its id.

        With ``retry_replaces_original=True`` the same record is reset and re-run; otherwise
        a new task is created with ``retry_of`` pointing at the original.
        """
        job = await self._visible_job(task_id)
        record = job.record if job is not None else await self.history.get(task_id)
        if record is None:
            raise TaskNotFoundError(f"no task with id {task_id!r}")
        if record.status not in _RETRYABLE:
            raise InvalidTaskStateError(
                f"task {task_id} is {record.status.value}; only failed, cancelled, interrupted "
                f"or rejected tasks can be retried"
            )
        if job is not None:
            func, args, kwargs = job.config.func, job.args, job.kwargs
        else:
            config = self.registry.get(record.func_name)
            if config is None:
                raise UnknownTaskError(
                    f"task {task_id} ran function {record.func_name!r}, which is not registered "
                    f"in this process; register it to retry the task"
                )
            if not all_json(tuple(record.args), record.kwargs) or _has_repr(record):
                raise InvalidTaskStateError(
                    f"the arguments of task {task_id} were not stored exactly, so it cannot be "
                    f"retried from history; mark the function persist=True to keep them"
                )
            func, args, kwargs = config.func, tuple(record.args), dict(record.kwargs)
        if self.retry_replaces_original:
            if job is not None:
                self.store.remove(task_id)
            new = self.create(
                func,
                tuple(args),
                dict(kwargs),
                tags=record.tags,
                priority=record.priority,
                queue=record.queue,
                source="retry",
                task_id=task_id,
                created_at=record.created_at,
            )
            new.record.logs = list(record.logs)
            new.record.attempts = list(record.attempts)
        else:
            new = self.create(
                func,
                tuple(args),
                dict(kwargs),
                tags=record.tags,
                priority=record.priority,
                queue=record.queue,
                source="retry",
            )
            new.record.retry_of = task_id
        append_log(new.record, f"retry of task {task_id} requested", level="info", attempt=0)
        self.dispatch(new)
        return new.task_id

    async def delete(self, task_id: str) -> None:
        """Delete a finished task: from memory, the unsaved buffer and the backend's history.

        Only a task in a terminal state (success, failed, cancelled, interrupted, rejected)
        can be deleted; cancel a pending or running one first. Its idempotency key is
        released. With a shared backend the deletion holds for every instance: they read
        saved history from the backend, so none shows the task or writes it back.

        Raises :class:`TaskNotFoundError` for an unknown id, :class:`InvalidTaskStateError`
        for a live task and :class:`UnsupportedOperationError` when the backend cannot
        delete (nothing is removed then).
        """
        job = await self._visible_job(task_id)
        record = job.record if job is not None else await self.history.get(task_id)
        if record is None:
            raise TaskNotFoundError(f"no task with id {task_id!r}")
        _check_deletable(record)
        backend, flusher = self.backend, self._flusher
        if backend is not None and flusher is not None:
            if type(backend).delete is SnapshotBackend.delete:
                raise UnsupportedOperationError(_cannot_delete(backend, task_id))
            async with flusher.withdrawn(task_id) as unsaved:
                job = self.store.get(task_id)
                if job is not None:  # it may have been retried in the meantime
                    _check_deletable(job.record)
                removed = await backend.delete([task_id])
                kept = not removed and unsaved is None
                if kept and await self.history.get(task_id) is not None:
                    raise UnsupportedOperationError(_cannot_delete(backend, task_id))
        if job is None or self.store.get(task_id) is job:
            self.store.remove(task_id)

    async def _visible_job(self, task_id: str) -> Job | None:
        """The local job of ``task_id``, unless it is a finished, saved record that is gone
        from the backend's history (deleted by another instance): that copy is dropped."""
        job = self.store.get(task_id)
        if job is None or self._flusher is None or not job.record.status.is_terminal:
            return job
        if task_id in self._flusher.unsaved() or await self.history.get(task_id) is not None:
            return job
        if self.store.get(task_id) is job:
            self.store.remove(task_id)
        return None

    async def wait(self, task_id: str) -> TaskRecord:
        """Wait until the task reaches a terminal state and return its record.

        Bound it with ``asyncio.timeout(...)`` if needed.
        """
        if self._flusher is None:  # (with no backend, nothing else can have deleted it)
            sealed = self.store.sealed_record(task_id)
            if sealed is not None:  # finished (read without making it a job again)
                return sealed
        job = await self._visible_job(task_id)  # not a copy of a task deleted elsewhere
        if job is None:
            record = await self.history.get(task_id)
            if record is None:
                raise TaskNotFoundError(f"no task with id {task_id!r}")
            return record
        if job.stage is not Stage.DONE:
            if job.done is None:
                job.done = asyncio.Event()
            await job.done.wait()
        return job.record

    def registered(self) -> list[TaskConfig]:
        """The registered task functions and their settings, by name."""
        return self.registry.all()

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Running and waiting counts per queue."""
        return self._dispatcher.queue_depths() if self._dispatcher is not None else {}


def _checked_tags(tags: dict[str, str]) -> dict[str, str]:
    """A copy of ``tags``, refused with a clear error if a key or value would not be stored."""
    if not isinstance(tags, dict):
        raise ConfigurationError(f"tags must be a dict of str to str, got {type(tags).__name__}")
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigurationError(f"tags must map str to str, got {key!r}: {value!r}")
        if not key or len(key) > TAG_KEY_LENGTH:
            raise ConfigurationError(
                f"tag key {key[:40]!r} must be 1 to {TAG_KEY_LENGTH} characters long "
                f"(got {len(key)})"
            )
        if len(value) > TAG_VALUE_LENGTH:
            raise ConfigurationError(
                f"the value of tag {key!r} is {len(value)} characters long; the limit is "
                f"{TAG_VALUE_LENGTH}. Store long data in the task's arguments instead"
            )
    return dict(tags)


def _check_deletable(record: TaskRecord) -> None:
    if not record.status.is_terminal:
        raise InvalidTaskStateError(
            f"task {record.task_id} is {record.status.value}; only finished tasks can be "
            f"deleted. Cancel it first (task_manager.cancel or POST /tasks/{{id}}/cancel)"
        )


def _cannot_delete(backend: SnapshotBackend, task_id: str) -> str:
    return (
        f"{type(backend).__name__} cannot delete task {task_id} from history: implement "
        f"`async def delete(self, task_ids: Sequence[str]) -> int` on the backend (remove "
        f"those records, return how many were removed). Nothing was deleted"
    )


def _has_repr(record: TaskRecord) -> bool:
    values = [*record.args, *record.kwargs.values()]
    return any(isinstance(v, dict) and "__repr__" in v for v in values)
