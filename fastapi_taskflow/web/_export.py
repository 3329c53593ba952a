"""CSV export of the task history, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from .._errors import TaskflowError
from .._manager import TaskManager
from .._models import TaskFilter, TaskRecord, utcnow
from ._api import Filter, http_error

# A spreadsheet treats a cell starting with one of these as a formula (OWASP "CSV
# injection"); the full-width forms are included because some spreadsheets fold them.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_PAGE = 1000

COLUMNS = [
    "task_id",
    "func_name",
    "status",
    "queue",
    "created_at",
    "start_time",
    "end_time",
    "duration_s",
    "attempts",
    "retries_used",
    "error",
    "tags",
    "source",
    "retry_of",
]


def safe_cell(value: Any) -> str:
    """``value`` as CSV text that no spreadsheet will evaluate as a formula."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text.startswith(_FORMULA_STARTS):
        return "'" + text
    return text


def _row(record: TaskRecord, with_args: bool) -> list[str]:
    values: list[Any] = [
        record.task_id,
        record.func_name,
        record.status.value,
        record.queue,
        record.created_at,
        record.start_time,
        record.end_time,
        record.duration,
        len(record.attempts),
        record.retries_used,
        record.error,
        record.tags or None,
        record.source,
        record.retry_of,
    ]
    if with_args:
        values += [record.args or None, record.kwargs or None]
    return [safe_cell(v) for v in values]


async def csv_lines(
    manager: TaskManager, filter: TaskFilter, limit: int, with_args: bool
) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS + (["args", "kwargs"] if with_args else []))
    sent, cursor = 0, None
    while sent < limit:
        page = await manager.history.query_filter(
            filter, limit=min(_PAGE, limit - sent), cursor=cursor
        )
        for record in page.items:
            writer.writerow(_row(record, with_args))
        sent += len(page.items)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        cursor = page.next_cursor
        if cursor is None:
            break


def build_export_router(manager: TaskManager, *, display_func_args: bool) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/export.csv",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}}}},
        summary="The matching tasks as CSV (cells that look like formulas are quoted)",
    )
    async def export_csv(
        filter: Filter, limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000
    ) -> StreamingResponse:
        lines = csv_lines(manager, filter, limit, display_func_args)
        try:
            first = await anext(lines)  # a bad filter fails here, before the 200 is sent
        except TaskflowError as exc:
            raise http_error(exc) from exc

        async def body() -> AsyncIterator[str]:
            yield first
            async for chunk in lines:
                yield chunk

        name = f"tasks-{utcnow():%Y%m%dT%H%M%SZ}.csv"
        return StreamingResponse(
            body(),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "Cache-Control": "no-store",
            },
        )

    return router
