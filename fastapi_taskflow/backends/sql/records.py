"""Turning :class:`TaskRecord` objects into table rows and back."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, timedelta
from typing import Any, TypeVar

from pydantic import Json, TypeAdapter
from pydantic_core import from_json

from ..._models import (
    Accepted,
    Finished,
    PendingDocument,
    Seal,
    TaskRecord,
    TaskStatus,
    attempts_json,
    finished_id,
    seal_args_json,
    seal_document,
    stamp,
    stamp_text,
)
from .bulk import JSON_BATCH, json_documents
from .tables import TAG_KEY_LENGTH, TAG_VALUE_LENGTH

_TIMESTAMPS = ("created_at", "start_time", "end_time", "updated_at")
_ZERO = timedelta(0)

Row = dict[str, Any]
F = TypeVar("F", bound=Finished)
BulkEncoder = Callable[[list[Any]], list[Any]]


def latest_by_id(records: Iterable[F]) -> list[F]:
    """One record per task id, the last one given winning (order otherwise kept)."""
    by_id = {finished_id(record): record for record in records}
    return list(by_id.values())


# pydantic-core serialises a whole column of a batch in one call (nested models,
# datetimes and UUIDs included); ``round_trip`` makes each ``Json`` value a JSON string.
_DOCUMENTS: TypeAdapter[list[Any]] = TypeAdapter(list[Json[Any]])


def _documents(values: list[Any]) -> list[str]:
    return _DOCUMENTS.dump_python(values, round_trip=True, fallback=repr)  # type: ignore[no-any-return]


_RECORDS: TypeAdapter[list[TaskRecord]] = TypeAdapter(list[TaskRecord])


# Bytes per JSON document at most (unless one record is larger): PostgreSQL takes up to
# 1 GB in one value, but memory on both sides grows with it.
MAX_JSON_BYTES = 64 * 1024 * 1024


def history_documents(records: Sequence[TaskRecord]) -> list[str]:
    """The records as JSON arrays of objects (at most ``JSON_BATCH`` records and, unless a
    record alone is larger, ``MAX_JSON_BYTES`` each), field names as keys: what
    ``json_populate_recordset`` makes history rows of (PostgreSQL)."""
    dump = functools.partial(_RECORDS.dump_json, fallback=repr)
    return [
        document.decode()
        for start in range(0, len(records), JSON_BATCH)
        for _, document in json_documents(
            list(records[start : start + JSON_BATCH]), dump, MAX_JSON_BYTES
        )
    ]


def history_values(records: Sequence[TaskRecord], stamps: BulkEncoder) -> list[tuple[Any, ...]]:
    """Driver-ready parameter tuples for ``taskflow_history``, in column order.

    ``stamps`` turns a list of aware datetimes into what the dialect's driver stores
    (:meth:`UTCDateTime.bulk_processor`). Work is done column by column over the batch,
    which keeps the per-row Python cost (and the garbage collector's) low.
    """
    columns = zip(
        records,
        _documents([r.args for r in records]),
        _documents([r.kwargs for r in records]),
        _documents([r.logs for r in records]),
        _documents([r.attempts for r in records]),
        _documents([r.tags for r in records]),
        stamps([r.created_at for r in records]),
        stamps([r.start_time for r in records]),
        stamps([r.end_time for r in records]),
        stamps([r.updated_at for r in records]),
        strict=True,
    )
    return [
        (
            r.task_id,
            r.func_name,
            r.status.value,
            args,
            kwargs,
            created_at,
            start_time,
            end_time,
            r.duration,
            r.retries_used,
            r.error,
            r.stacktrace,
            logs,
            attempts,
            tags,
            r.idempotency_key,
            r.source,
            r.priority,
            r.queue,
            r.retry_of,
            r.instance_id,
            updated_at,
        )
        for (
            r,
            args,
            kwargs,
            logs,
            attempts,
            tags,
            created_at,
            start_time,
            end_time,
            updated_at,
        ) in columns
    ]


def sealed_documents(seals: Sequence[Seal]) -> list[str]:
    """:func:`history_documents` for light tasks' seals, written as they are."""
    documents = [seal_document(seal) for seal in seals]
    return [
        document.decode()
        for start in range(0, len(documents), JSON_BATCH)
        for _, document in json_documents(
            documents[start : start + JSON_BATCH], _joined, MAX_JSON_BYTES
        )
    ]


def _joined(documents: list[str]) -> bytes:
    return f"[{','.join(documents)}]".encode()


def sealed_values(seals: Sequence[Seal], stamps: BulkEncoder) -> list[tuple[Any, ...]]:
    """:func:`history_values` for light tasks' seals, written as they are."""
    created = [stamp(seal[2]) for seal in seals]
    started = [stamp_text(seal[3]) for seal in seals]
    ended = [stamp_text(seal[4]) for seal in seals]
    columns = zip(
        seals,
        started,
        ended,
        stamps(created),
        stamps([moment for moment, _ in started]),
        stamps([moment for moment, _ in ended]),
        strict=True,
    )
    rows = []
    for seal, (start, start_text), (end, end_text), created_at, start_time, end_time in columns:
        task_id, func_name, _, _, _, _, _, _, queue, priority, instance_id, source = seal
        args, kwargs = seal_args_json(seal)
        attempts = attempts_json(start_text, end_text)
        duration = (end - start).total_seconds()
        rows.append(
            (task_id, func_name, "success", args, kwargs, created_at, start_time, end_time,
             duration, 0, None, None, "[]", attempts, "{}", None, source, priority, queue,
             None, instance_id, end_time)
        )  # fmt: skip
    return rows


HISTORY_COLUMNS = (
    "task_id",
    "func_name",
    "status",
    "args",
    "kwargs",
    "created_at",
    "start_time",
    "end_time",
    "duration",
    "retries_used",
    "error",
    "stacktrace",
    "logs",
    "attempts",
    "tags",
    "idempotency_key",
    "source",
    "priority",
    "queue",
    "retry_of",
    "instance_id",
    "updated_at",
)


def tag_values(records: Sequence[TaskRecord], stamps: BulkEncoder) -> list[tuple[Any, ...]]:
    """Parameter tuples ``(task_id, key, value, created_at)`` for ``taskflow_history_tags``.

    A tag longer than the indexed column (key 128, value 255 characters) stays in the
    record's ``tags`` but is not indexed, so a tag filter does not find it.
    """
    tagged = [
        (r.task_id, key, value, r.created_at)
        for r in records
        for key, value in r.tags.items()
        if len(key) <= TAG_KEY_LENGTH and len(value) <= TAG_VALUE_LENGTH
    ]
    created = stamps([row[3] for row in tagged])
    return [(*row[:3], stamp) for row, stamp in zip(tagged, created, strict=True)]


def pending_rows(records: Sequence[Accepted]) -> list[Row]:
    """Rows for ``taskflow_pending``: the whole record as one JSON document."""
    return [
        {
            "task_id": r.task_id,
            "func_name": r.func_name,
            "created_at": r.created_at,
            "record": from_json(r.document)
            if isinstance(r, PendingDocument)
            else r.model_dump(mode="json", fallback=repr),
            "status": r.status.value,
        }
        for r in records
    ]


def from_history_row(row: Mapping[Any, Any]) -> TaskRecord:
    """A record from a ``taskflow_history`` row (timestamps already aware UTC)."""
    return TaskRecord.model_validate(dict(row))


def from_pending_row(document: Any, status: str) -> TaskRecord:
    """A record from a ``taskflow_pending`` row, timestamps in UTC: its ``record`` document
    with the ``status`` column's value, which a running mark sets alone (the document
    keeps the state the task was accepted with)."""
    record = TaskRecord.model_validate(document)
    if status != record.status.value:
        record.__dict__["status"] = TaskStatus(status)
    shifted = {
        name: stamp.astimezone(UTC)
        for name in _TIMESTAMPS
        if (stamp := getattr(record, name)) is not None and stamp.utcoffset() != _ZERO
    }
    return record.model_copy(update=shifted) if shifted else record
