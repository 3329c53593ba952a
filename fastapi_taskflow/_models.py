"""Value objects: task statuses, records and configuration."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import time as _time
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json as _to_json

from ._arguments import SCALARS
from ._errors import ConfigurationError

M = TypeVar("M", bound=BaseModel)

# Longest tag key and value that every backend stores (and MySQL can index).
TAG_KEY_LENGTH = 128
TAG_VALUE_LENGTH = 255
_SET_FIELDS = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE = BaseModel.__dict__["__pydantic_private__"].__set__
_ALL_FIELDS: dict[type[BaseModel], set[str]] = {}


def adopt(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of ``cls`` whose fields are ``values`` (trusted, naming every field), taken
    as they are: no validation and no copy (``model_construct`` without its per-field work).

    Every instance built here has all its fields set, so they share one fields-set object
    (pydantic only ever ``add``s names that are already in it) instead of a set each.
    """
    fields_set = _ALL_FIELDS.get(cls)
    if fields_set is None:
        fields_set = _ALL_FIELDS[cls] = set(cls.model_fields)
    model = object.__new__(cls)  # (what BaseModel's __new__ is, without its look-up)
    object.__setattr__(model, "__dict__", values)
    _SET_FIELDS(model, fields_set)
    _SET_EXTRA(model, None)
    _SET_PRIVATE(model, None)
    return model


def shared_template(cls: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as a dict whose copies make compact instance dicts for :func:`adopt`.

    Set attribute by attribute on a bare instance, the dict shares its keys with every
    instance of ``cls`` (CPython's key-sharing instance dicts), and so do its copies: about
    a third of the memory of an ordinary dict of the same fields (a task record's: 290
    instead of 830 bytes), for a copy just as fast.
    """
    template = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(template, name, value)
    return template.__dict__


_TIME_HEX = 12  # a task id: the time it was made in milliseconds (48 bits, in hex) ...
_RANDOM_HEX = 20  # ... then 80 random bits: 32 hex digits in all
_ids_buffer = ""
_ids_at = 0
_prefix_ms = -1
_prefix = ""


def new_task_id() -> str:
    """A new task id: 32 hex digits, the first 12 the time in milliseconds since the epoch
    and the other 20 random (80 bits from ``os.urandom``), like a UUIDv7 without its
    version digits.

    Ids made later sort later, so a database inserts them next to each other in its
    indexes (a commit rewrites a few pages, not one page per task) and the newest are
    together. Random bits are drawn 256 ids at a time: each ``os.urandom`` call releases
    the GIL, and with another thread busy (SQLite's driver thread, a sync task) taking it
    back could wait for that thread.
    """
    global _ids_buffer, _ids_at, _prefix_ms, _prefix
    now = int(_time() * 1000)
    if now != _prefix_ms:
        _prefix_ms, _prefix = now, f"{now:012x}"
    at = _ids_at
    if at >= len(_ids_buffer):
        _ids_buffer, at = os.urandom(_RANDOM_HEX // 2 * 256).hex(), 0
    _ids_at = at + _RANDOM_HEX
    return _prefix + _ids_buffer[at : at + _RANDOM_HEX]


def _forget_ids() -> None:  # a forked child must not hand out its parent's next ids
    global _ids_buffer, _ids_at
    _ids_buffer, _ids_at = "", 0


os.register_at_fork(after_in_child=_forget_ids)


_now = datetime.now  # (bound once: three calls a task)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return _now(UTC)


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
        return self not in LIVE_STATUSES  # (a set: each TaskStatus.X look-up costs ~60 ns)


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


_ATTEMPT_DEFAULTS: dict[str, Any] = shared_template(
    Attempt, {"number": 0, "start_time": None, "end_time": None, "error": None}
)


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


_RECORD_DEFAULTS: dict[str, Any] = shared_template(
    TaskRecord,
    dict.fromkeys(TaskRecord.model_fields) | {"status": TaskStatus.PENDING, "retries_used": 0},
)


def new_record(
    task_id: str,
    func_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    now: datetime,
    tags: dict[str, str],
    idempotency_key: str | None,
    source: str,
    priority: int | None,
    queue: str,
    instance_id: str | None,
) -> TaskRecord:
    """A new pending record from trusted values (on add_task's path: no validation)."""
    values = _RECORD_DEFAULTS.copy()  # (a copy and a few stores: a third of a kwargs call)
    values["task_id"] = task_id
    values["func_name"] = func_name
    values["args"] = args
    values["kwargs"] = kwargs
    values["created_at"] = values["updated_at"] = now
    values["logs"] = []
    values["attempts"] = []
    values["tags"] = tags
    values["idempotency_key"] = idempotency_key
    values["source"] = source
    values["priority"] = priority
    values["queue"] = queue
    values["instance_id"] = instance_id
    return adopt(TaskRecord, values)


def new_attempt(number: int, start_time: datetime) -> Attempt:
    """A started attempt (trusted values)."""
    values = _ATTEMPT_DEFAULTS.copy()
    values["number"] = number
    values["start_time"] = start_time
    return adopt(Attempt, values)


# ----------------------------------------------------------------------- sealed records
#
# A task that succeeded on its first attempt without anyone looking at its record while it
# ran is kept in memory as a "seal": one tuple of plain values instead of a TaskRecord (and
# its dict, lists and Attempt). All of its items are atoms or tuples of atoms, so CPython's
# collector stops tracking it at its first pass: 10,000 completed records then cost the
# collector nothing, and evicting one frees a few objects instead of twenty. Times are
# ``time.time()`` floats, turned into datetimes only when the record is read.
#
# (task_id, func_name, created, started, ended, args, kwarg names, kwarg values, queue,
#  priority, instance_id, source)
Seal = tuple[
    str, str, float, float, float, tuple[Any, ...], tuple[str, ...], tuple[Any, ...], str,
    "int | None", "str | None", str,
]  # fmt: skip

_stamp = datetime.fromtimestamp


def stamp(seconds: float) -> datetime:
    """A ``time.time()`` value as a timezone-aware UTC datetime."""
    return _stamp(seconds, UTC)


def unseal(seal: Seal) -> TaskRecord:
    """The full record of a sealed task (a new object on every call)."""
    task_id, name, created, started, ended, args, names, values, queue, priority, iid, source = seal
    start, end = _stamp(started, UTC), _stamp(ended, UTC)
    record = new_record(
        task_id, name, list(args), dict(zip(names, values, strict=True)), _stamp(created, UTC),
        {}, None, source, priority, queue, iid,
    )  # fmt: skip
    fields = record.__dict__
    fields["status"] = TaskStatus.SUCCESS
    fields["start_time"] = start
    fields["end_time"] = fields["updated_at"] = end
    fields["duration"] = (end - start).total_seconds()
    attempt = new_attempt(1, start)
    attempt.__dict__["end_time"] = end
    fields["attempts"].append(attempt)
    return record


# A finished task as the flusher buffers it for history: a record, or a light task's seal.
Finished = TaskRecord | Seal


def finished_id(entry: Finished) -> str:
    return entry[0] if isinstance(entry, tuple) else entry.task_id


_quoted = json.encoder.encode_basestring  # a JSON string literal (non-ASCII kept as is)
quoted = _quoted


def _scalar(value: Any) -> str:
    """A JSON literal of a value a seal holds (str, int, bool or None: see seal_of)."""
    if type(value) is str:
        return _quoted(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(int(value))


def _array_json(values: tuple[Any, ...] | list[Any]) -> str:
    """A JSON array of scalars (see :func:`_scalar`)."""
    return f"[{','.join(map(_scalar, values))}]" if values else "[]"


def _object_json(names: tuple[str, ...], values: tuple[Any, ...]) -> str:
    """A JSON object of these names and scalar values (see :func:`_scalar`)."""
    if not names:
        return "{}"
    if len(names) == 1:
        return f"{{{_quoted(names[0])}:{_scalar(values[0])}}}"
    pairs = ",".join(map(":".join, zip(map(_quoted, names), map(_scalar, values), strict=True)))
    return f"{{{pairs}}}"


def seal_args_json(seal: Seal) -> tuple[str, str]:
    """A seal's ``args`` and ``kwargs`` as JSON text."""
    return _array_json(seal[5]), _object_json(seal[6], seal[7])


def attempts_json(start: str, end: str) -> str:
    """The ``attempts`` JSON of a sealed task, from its start and end in ISO format."""
    return f'[{{"number":1,"start_time":"{start}","end_time":"{end}","error":null}}]'


_SECOND_TEXT: dict[int, str] = {}  # "YYYY-MM-DDTHH:MM:SS" by whole second (a few kept)


def stamp_text(seconds: float) -> tuple[datetime, str]:
    """``stamp(seconds)`` and its ISO 8601 text (twice as fast as ``isoformat()``: the
    date and time of day are formatted once per second)."""
    moment = _stamp(seconds, UTC)
    micro = moment.microsecond
    whole = int(seconds)
    if micro < 500_000 and seconds - whole >= 0.5:  # rounded up into the next second
        whole += 1
    text = _SECOND_TEXT.get(whole)
    if text is None:
        if len(_SECOND_TEXT) >= 256:
            _SECOND_TEXT.clear()
        text = _SECOND_TEXT[whole] = _stamp(whole, UTC).isoformat()[:19]
    return moment, f"{text}.{micro:06d}+00:00"


def seal_document(seal: Seal) -> str:
    """The JSON object of a sealed task's record (what ``unseal(seal)`` dumps, up to the
    spelling of numbers and of the UTC offset), built without the record."""
    task_id, name, created, started, ended, _, _, _, queue, priority, instance_id, source = seal
    start, start_text = stamp_text(started)
    end, end_text = stamp_text(ended)
    args, kwargs = seal_args_json(seal)
    return (
        f'{{"task_id":{_quoted(task_id)},"func_name":{_quoted(name)},"status":"success",'
        f'"args":{args},"kwargs":{kwargs},'
        f'"created_at":"{stamp_text(created)[1]}",'
        f'"start_time":"{start_text}","end_time":"{end_text}",'
        f'"duration":{(end - start).total_seconds()!r},"retries_used":0,"error":null,'
        f'"stacktrace":null,"logs":[],"attempts":{attempts_json(start_text, end_text)},'
        f'"tags":{{}},"idempotency_key":null,"source":{_quoted(source)},'
        f'"priority":{_scalar(priority)},"queue":{_quoted(queue)},"retry_of":null,'
        f'"instance_id":{_scalar(instance_id)},"updated_at":"{end_text}"}}'
    )


def _values_json(values: tuple[Any, ...]) -> str:
    """A JSON array of storable values (see ``check_storable``)."""
    for value in values:
        if type(value) not in SCALARS:
            return _to_json(list(values)).decode()
    return _array_json(values)


def _kwargs_json(kwargs: Mapping[str, Any]) -> str:
    """A JSON object of storable keyword arguments (see ``check_storable``)."""
    if not kwargs:
        return "{}"
    values = tuple(kwargs.values())
    for value in values:
        if type(value) not in SCALARS:
            return _to_json(kwargs).decode()
    return _object_json(tuple(kwargs), values)


class PendingDocument:
    """A task as the pending store takes it at write-ahead, built from a light job's fields
    (see :func:`pending_document`) instead of from a :class:`TaskRecord`: the columns of its
    row, and its record as JSON text. It has no idempotency key and no tags."""

    __slots__ = ("created_at", "created_text", "document", "func_name", "status", "task_id")

    idempotency_key: str | None = None

    def __init__(
        self,
        task_id: str,
        func_name: str,
        created_at: datetime,
        created_text: str,
        status: TaskStatus,
        document: str,
    ) -> None:
        self.task_id = task_id
        self.func_name = func_name
        self.created_at = created_at
        self.created_text = created_text  # ISO 8601 (``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``)
        self.status = status
        self.document = document


_DOCUMENT_TAILS: dict[tuple[str, str, int | None, str, str | None], str] = {}


def pending_document(
    task_id: str,
    func_name: str,
    created: float,
    status: TaskStatus,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    source: str,
    priority: int | None,
    queue: str,
    instance_id: str | None,
) -> PendingDocument:
    """The :class:`PendingDocument` of a task not started yet (``status`` pending, or
    running for one that starts the moment its write-ahead is durable), added at
    ``created`` (``time.time()``) with these storable arguments.

    The document names only the fields that differ from a new record's defaults (a third
    of the bytes of a full one, for the database to write and log): reading it back
    (``TaskRecord.model_validate``) gives the same record. The part that depends on the
    function and instance alone is built once per function."""
    key = (func_name, source, priority, queue, instance_id)
    tail = _DOCUMENT_TAILS.get(key)
    if tail is None:
        if len(_DOCUMENT_TAILS) >= 256:
            _DOCUMENT_TAILS.clear()
        tail = (
            f',"func_name":{_quoted(func_name)},"source":{_quoted(source)},"queue":{_quoted(queue)}'
        )
        if priority is not None:
            tail += f',"priority":{int(priority)}'
        if instance_id is not None:
            tail += f',"instance_id":{_quoted(instance_id)}'
        tail = _DOCUMENT_TAILS[key] = tail + "}"
    created_at, text = stamp_text(created)
    document = (
        f'{{"task_id":{_quoted(task_id)},"status":"{status.value}",'
        f'"created_at":"{text}","updated_at":"{text}"'
    )
    if args:
        document += f',"args":{_values_json(args)}'
    if kwargs:
        document += f',"kwargs":{_kwargs_json(kwargs)}'
    return PendingDocument(task_id, func_name, created_at, text, status, document + tail)


# What the pending store is given for one accepted task.
Accepted = TaskRecord | PendingDocument


_NO_TAGS: Mapping[str, str] = MappingProxyType({})


class SealedRecord:
    """What a history query reads of a sealed record (to filter, order and aggregate),
    without building it; :meth:`record` builds it."""

    __slots__ = ("_seal", "created_at", "func_name", "queue", "task_id")

    status = TaskStatus.SUCCESS
    error: str | None = None
    tags = _NO_TAGS

    def __init__(self, seal: Seal) -> None:
        self._seal = seal
        self.task_id = seal[0]
        self.func_name = seal[1]
        self.created_at = _stamp(seal[2], UTC)
        self.queue = seal[8]

    @property
    def duration(self) -> float | None:
        seal = self._seal  # (as the full record computes it, from the rounded datetimes)
        return (_stamp(seal[4], UTC) - _stamp(seal[3], UTC)).total_seconds()

    def record(self) -> TaskRecord:
        return unseal(self._seal)


def full_record(record: TaskRecord | SealedRecord) -> TaskRecord:
    return record.record() if isinstance(record, SealedRecord) else record


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

    def matches(self, record: TaskRecord | SealedRecord) -> bool:
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
