"""Turning :class:`TaskRecord` objects into table rows and back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic_core import to_jsonable_python

from ..._models import TaskRecord
from .tables import TAG_KEY_LENGTH, TAG_VALUE_LENGTH

Row = dict[str, Any]


def latest_by_id(records: Iterable[TaskRecord]) -> list[TaskRecord]:
    """One record per task id, the last one given winning (order otherwise kept)."""
    by_id = {record.task_id: record for record in records}
    return list(by_id.values())


def history_rows(records: list[TaskRecord]) -> list[Row]:
    """Rows for ``taskflow_history``; JSON columns get plain JSON-compatible values."""
    # One call converts every nested model, datetime or UUID of the batch to JSON values.
    documents = to_jsonable_python(
        [(r.args, r.kwargs, r.logs, r.attempts) for r in records], fallback=repr
    )
    return [
        {
            "task_id": r.task_id,
            "func_name": r.func_name,
            "status": r.status.value,
            "args": doc[0],
            "kwargs": doc[1],
            "created_at": r.created_at,
            "start_time": r.start_time,
            "end_time": r.end_time,
            "duration": r.duration,
            "retries_used": r.retries_used,
            "error": r.error,
            "stacktrace": r.stacktrace,
            "logs": doc[2],
            "attempts": doc[3],
            "tags": r.tags,
            "idempotency_key": r.idempotency_key,
            "source": r.source,
            "priority": r.priority,
            "queue": r.queue,
            "retry_of": r.retry_of,
            "instance_id": r.instance_id,
            "updated_at": r.updated_at,
        }
        for r, doc in zip(records, documents, strict=True)
    ]


def tag_rows(records: list[TaskRecord]) -> list[Row]:
    """Rows for ``taskflow_history_tags``.

    A tag longer than the indexed column (key 128, value 255 characters) stays in the
    record's ``tags`` but is not indexed, so a tag filter does not find it.
    """
    return [
        {"task_id": r.task_id, "key": key, "value": value}
        for r in records
        for key, value in r.tags.items()
        if len(key) <= TAG_KEY_LENGTH and len(value) <= TAG_VALUE_LENGTH
    ]


def pending_rows(records: list[TaskRecord]) -> list[Row]:
    """Rows for ``taskflow_pending``: the whole record as one JSON document."""
    return [
        {
            "task_id": r.task_id,
            "func_name": r.func_name,
            "created_at": r.created_at,
            "record": r.model_dump(mode="json", fallback=repr),
        }
        for r in records
    ]


def from_history_row(row: Mapping[Any, Any]) -> TaskRecord:
    """A record from a ``taskflow_history`` row (timestamps already aware UTC)."""
    return TaskRecord.model_validate(dict(row))


def from_pending_row(document: Any) -> TaskRecord:
    """A record from the ``record`` column of ``taskflow_pending``."""
    return TaskRecord.model_validate(document)
