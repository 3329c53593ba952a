"""A task in flight: its record plus what is needed to run it."""

from __future__ import annotations

import asyncio
import contextvars
import enum
from typing import Any

from ._arguments import SCALARS, snapshot
from ._models import (
    PendingDocument,
    Seal,
    TaskRecord,
    TaskStatus,
    new_attempt,
    new_record,
    pending_document,
    stamp,
    unseal,
)
from ._registry import TaskConfig


class Stage(enum.Enum):
    HELD = "held"  # added during a request, waits for the response to be sent
    WAITING = "waiting"  # accepted by a queue, waits for a free slot
    STARTING = "starting"  # has its running slot, waits for the starter to call it
    RUNNING = "running"
    DONE = "done"


class Job:
    """One task's settings, arguments and record, and where it is in its run.

    A plain class, not a dataclass: it is built once per task on ``add_task``'s path, where
    setting only what it is given costs a third of a dataclass's eighteen-field
    ``__init__``; the other attributes start as the class's defaults below.

    A *light* job (:func:`light_job`: a task added with no options, in a queue without a
    size limit) has no :class:`TaskRecord` until one is asked for: while it waits and runs
    its state is these few attributes, and a task that succeeds without anyone having read
    its record is sealed (see :data:`~fastapi_taskflow._models.Seal`) without ever building
    one. A persisted one is written ahead as a document built from the same attributes
    (:func:`document_of`). Reading ``job.record`` builds it from that state; from then on
    the record is the truth.
    """

    # Where the job is, and how it is being run.
    stage: Stage = Stage.HELD
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    interrupted: bool = False
    in_thread: bool = False
    done: asyncio.Event | None = None
    durable: asyncio.Future[bool] | None = None  # write-ahead outcome, for persisted tasks
    # A request's persisted task, written ahead only when it is dispatched (its response
    # sent: FastAPI runs a request's background tasks only then).
    deferred: bool = False
    dispatched: bool = False  # handed to dispatch() (may still wait for durability)
    leased: bool = False  # held in the shared pending store under this instance's lease
    # Holds a running slot taken as its write-ahead was prepared (Dispatcher.reserve): it
    # starts the moment that write is durable, which recorded it as running (``marked``).
    reserved: bool = False
    marked: bool = False
    key: str | None = None  # the idempotency key
    # A light job's state: when it was added and started (time.time()), and its seal.
    _record: TaskRecord | None = None
    created: float = 0.0
    started: float | None = None
    sealed: Seal | None = None
    source: str = "request"
    instance_id: str | None = None

    def __init__(
        self,
        task_id: str,
        record: TaskRecord,
        config: TaskConfig,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: contextvars.Context | None,
    ) -> None:
        self.task_id = task_id  # the record's id (read often: kept here to skip a lookup)
        self._record = record
        self.config = config
        self.args = args
        self.kwargs = kwargs
        self.context = context
        self.queue: str = record.queue
        self.priority: int | None = record.priority
        self.key = record.idempotency_key

    @property
    def light(self) -> bool:
        """True while the job has no record (see the class docstring)."""
        return self._record is None

    @property
    def ended(self) -> bool:
        """Whether the job is in a terminal state (a light job's record is not built)."""
        record = self._record
        if record is None:
            return self.sealed is not None
        return record.status.is_terminal

    @property
    def record(self) -> TaskRecord:
        record = self._record
        if record is None:
            record = self._record = self._build_record()
        return record

    def _build_record(self) -> TaskRecord:
        if self.sealed is not None:
            return unseal(self.sealed)
        # The arguments as they are now (a light job's are snapshotted when first read).
        _, args, kwargs = snapshot(self.args, self.kwargs)
        record = new_record(
            self.task_id, self.config.name, args, kwargs, stamp(self.created), {}, None,
            self.source, self.priority, self.queue, self.instance_id,
        )  # fmt: skip
        if self.started is not None:  # running its first attempt
            start = stamp(self.started)
            fields = record.__dict__
            fields["status"] = TaskStatus.RUNNING
            fields["start_time"] = fields["updated_at"] = start
            fields["attempts"].append(new_attempt(1, start))
        return record


_new = object.__new__


def light_job(
    task_id: str,
    config: TaskConfig,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    context: contextvars.Context,
    created: float,
    queue: str,
    source: str,
    instance_id: str | None,
) -> Job:
    """A job with no record yet (see :class:`Job`), of the function's own priority."""
    job: Job = _new(Job)
    job.task_id = task_id
    job.config = config
    job.args = args
    job.kwargs = kwargs
    job.context = context
    job.created = created
    job.queue = queue
    job.priority = config.priority
    if source != "request":
        job.source = source
    if instance_id is not None:
        job.instance_id = instance_id
    return job


def document_of(job: Job, status: TaskStatus) -> PendingDocument:
    """A light job not started yet as the pending store takes it (see
    :class:`PendingDocument`): its arguments must be storable (persisted tasks' are
    checked when they are added)."""
    return pending_document(
        job.task_id, job.config.name, job.created, status, job.args, job.kwargs, job.source,
        job.priority, job.queue, job.instance_id,
    )  # fmt: skip


def seal_of(job: Job, ended: float) -> Seal | None:
    """The seal of a light job that succeeded; ``None`` unless its arguments are plain
    scalars (others are snapshotted for display: it keeps its record then)."""
    started = job.started
    assert started is not None  # (set when its first attempt began)
    args, kwargs = job.args, job.kwargs
    for value in args:
        if type(value) not in SCALARS:
            return None
    values = tuple(kwargs.values())
    for value in values:
        if type(value) not in SCALARS:
            return None
    return (
        job.task_id, job.config.name, job.created, started, ended, args, tuple(kwargs), values,
        job.queue, job.priority, job.instance_id, job.source,
    )  # fmt: skip
