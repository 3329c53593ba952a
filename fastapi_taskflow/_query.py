"""Answering history queries over records held in memory (filter, order, page, aggregate)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

from . import _cursor
from ._models import (
    FunctionStats,
    SealedRecord,
    TaskFilter,
    TaskPage,
    TaskRecord,
    TaskStatus,
    full_record,
)


def page_of(
    records: Iterable[TaskRecord | SealedRecord],
    filter: TaskFilter,
    limit: int,
    cursor: str | None,
) -> TaskPage:
    """Filter, order newest first and cut one page out of ``records`` (in memory)."""
    after = _cursor.decode(cursor) if cursor else None
    matching = [
        r for r in records if filter.matches(r) and (after is None or _cursor.sort_key(r) < after)
    ]
    matching.sort(key=_cursor.sort_key, reverse=True)
    items = [full_record(r) for r in matching[:limit]]
    more = len(matching) > limit
    return TaskPage(items=items, next_cursor=_cursor.encode(items[-1]) if more and items else None)


def _percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    position = fraction * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def stats_of(records: Iterable[TaskRecord | SealedRecord]) -> list[FunctionStats]:
    """Per-function aggregates computed in memory."""
    groups: dict[str, list[TaskRecord | SealedRecord]] = {}
    for record in records:
        groups.setdefault(record.func_name, []).append(record)
    result = []
    for name, group in sorted(groups.items()):
        success = sum(r.status is TaskStatus.SUCCESS for r in group)
        failed = sum(r.status is TaskStatus.FAILED for r in group)
        durations = sorted(r.duration for r in group if r.duration is not None)
        finished = success + failed
        result.append(
            FunctionStats(
                func_name=name,
                total=len(group),
                success=success,
                failed=failed,
                success_rate=success / finished if finished else None,
                duration_p50=_percentile(durations, 0.50),
                duration_p95=_percentile(durations, 0.95),
                duration_p99=_percentile(durations, 0.99),
                duration_avg=statistics.fmean(durations) if durations else None,
            )
        )
    return result
