"""``task_manager.history``: one typed async view over live tasks and stored history."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from . import _cursor
from ._errors import ConfigurationError
from ._models import (
    LIVE_STATUSES,
    FunctionStats,
    TaskFilter,
    TaskPage,
    TaskRecord,
    TaskStatus,
)
from .backends.base import HistoryRepository, SnapshotBackend

MAX_LIMIT = 1000


def page_of(
    records: Iterable[TaskRecord], filter: TaskFilter, limit: int, cursor: str | None
) -> TaskPage:
    """Filter, order newest first and cut one page out of ``records`` (in memory)."""
    after = _cursor.decode(cursor) if cursor else None
    matching = [
        r for r in records if filter.matches(r) and (after is None or _cursor.sort_key(r) < after)
    ]
    matching.sort(key=_cursor.sort_key, reverse=True)
    items = matching[:limit]
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


def stats_of(records: Iterable[TaskRecord]) -> list[FunctionStats]:
    """Per-function aggregates computed in memory."""
    groups: dict[str, list[TaskRecord]] = {}
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


class RecordsRepository:
    """A repository over records held in memory (the default, and tests)."""

    def __init__(self, records: Callable[[], Iterable[TaskRecord]]) -> None:
        self._records = records

    async def get(self, task_id: str) -> TaskRecord | None:
        return next((r for r in self._records() if r.task_id == task_id), None)

    async def query(
        self, filter: TaskFilter, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        return page_of(self._records(), filter, limit, cursor)

    async def count(self, filter: TaskFilter) -> int:
        return sum(1 for r in self._records() if filter.matches(r))

    async def stats(self, filter: TaskFilter) -> list[FunctionStats]:
        return stats_of(r for r in self._records() if filter.matches(r))


class LoadingRepository:
    """For a backend with only the six required methods: reads ``load()`` per query.

    Correct but linear in the size of history; implement ``history()`` on the backend
    for large histories.
    """

    def __init__(self, backend: SnapshotBackend) -> None:
        self._backend = backend

    async def _inner(self) -> RecordsRepository:
        records = await self._backend.load()
        return RecordsRepository(lambda: records)

    async def get(self, task_id: str) -> TaskRecord | None:
        return await (await self._inner()).get(task_id)

    async def query(
        self, filter: TaskFilter, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        return await (await self._inner()).query(filter, limit=limit, cursor=cursor)

    async def count(self, filter: TaskFilter) -> int:
        return await (await self._inner()).count(filter)

    async def stats(self, filter: TaskFilter) -> list[FunctionStats]:
        return await (await self._inner()).stats(filter)


def make_filter(
    *,
    status: str | TaskStatus | Sequence[str | TaskStatus] | None = None,
    func_name: str | None = None,
    queue: str | None = None,
    tags: dict[str, str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    text: str | None = None,
) -> TaskFilter:
    """Build a :class:`TaskFilter`, naming a bad status or naive datetime clearly."""
    raw = [status] if isinstance(status, str | TaskStatus) else list(status or [])
    statuses = []
    for value in raw:
        try:
            statuses.append(TaskStatus(value))
        except ValueError:
            allowed = ", ".join(s.value for s in TaskStatus)
            raise ConfigurationError(
                f"unknown task status {value!r}; use one of: {allowed}"
            ) from None
    for label, stamp in (("since", since), ("until", until)):
        if stamp is not None and stamp.tzinfo is None:
            raise ConfigurationError(
                f"{label} must be timezone-aware (for example datetime.now(UTC)), got {stamp}"
            )
    return TaskFilter(
        statuses=tuple(statuses),
        func_name=func_name,
        queue=queue,
        tags=dict(tags or {}),
        since=since,
        until=until,
        text=text or None,
    )


class TaskHistory:
    """Typed async access to every task: live ones in memory and saved history.

    Results are newest first; pass a page's ``next_cursor`` as ``cursor`` for the next one.
    With a backend, records not yet flushed are merged in, so a task is visible the moment
    it exists.
    """

    def __init__(
        self,
        live: Callable[[], Iterable[TaskRecord]],
        stored: HistoryRepository | None,
        unsaved: Callable[[], set[str]],
        lookup: Callable[[str], TaskRecord | None],
    ) -> None:
        self._live = RecordsRepository(live)
        self._lookup = lookup
        self._live_records = live
        self._stored = stored
        self._unsaved = unsaved

    def attach(self, stored: HistoryRepository) -> None:
        """Read saved history from ``stored`` too (done at start-up, once the backend is
        open)."""
        self._stored = stored

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record with ``task_id``, or ``None``."""
        record = self._lookup(task_id)
        if record is None and self._stored is not None:
            record = await self._stored.get(task_id)
        return record

    async def query(
        self,
        *,
        status: str | TaskStatus | Sequence[str | TaskStatus] | None = None,
        func_name: str | None = None,
        queue: str | None = None,
        tags: dict[str, str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        text: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """Records matching every given filter, newest first, at most ``limit``."""
        filter = make_filter(
            status=status,
            func_name=func_name,
            queue=queue,
            tags=tags,
            since=since,
            until=until,
            text=text,
        )
        return await self.query_filter(filter, limit=limit, cursor=cursor)

    async def query_filter(
        self, filter: TaskFilter, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        """Like :meth:`query`, with a prepared :class:`TaskFilter`."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ConfigurationError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        live = await self._live.query(filter, limit=limit, cursor=cursor)
        if self._stored is None or (filter.statuses and set(filter.statuses) <= LIVE_STATUSES):
            return live
        stored = await self._stored.query(filter, limit=limit, cursor=cursor)
        merged = {r.task_id: r for r in stored.items}
        merged.update((r.task_id, r) for r in live.items)
        ordered = sorted(merged.values(), key=_cursor.sort_key, reverse=True)
        items = ordered[:limit]
        more = (
            len(ordered) > limit or live.next_cursor is not None or stored.next_cursor is not None
        )
        return TaskPage(
            items=items, next_cursor=_cursor.encode(items[-1]) if more and items else None
        )

    async def count(self, **filters: object) -> int:
        """How many records match (same keyword filters as :meth:`query`)."""
        return await self.count_filter(make_filter(**filters))  # type: ignore[arg-type]

    async def count_filter(self, filter: TaskFilter) -> int:
        if self._stored is None:
            return await self._live.count(filter)
        unsaved = self._unsaved()
        extra = sum(
            1
            for r in self._live_records()
            if filter.matches(r) and (r.status in LIVE_STATUSES or r.task_id in unsaved)
        )
        return await self._stored.count(filter) + extra

    async def stats(self, **filters: object) -> list[FunctionStats]:
        """Per-function counts, success rate and duration percentiles (saved history when a
        backend is configured, memory otherwise)."""
        filter = make_filter(**filters)  # type: ignore[arg-type]
        if self._stored is None:
            return await self._live.stats(filter)
        return await self._stored.stats(filter)
