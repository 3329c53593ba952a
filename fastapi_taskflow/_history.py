"""``task_manager.history``: one typed async view over live tasks and stored history."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from datetime import datetime

from . import _cursor
from ._errors import ConfigurationError
from ._models import (
    LIVE_STATUSES,
    FunctionStats,
    SealedRecord,
    TaskFilter,
    TaskPage,
    TaskRecord,
    TaskStatus,
    full_record,
)
from ._query import page_of, stats_of
from .backends.base import Coordinator, HistoryRepository, SnapshotBackend

MAX_LIMIT = 1000


class RecordsRepository:
    """A repository over records held in memory (the default, and tests)."""

    def __init__(self, records: Callable[[], Iterable[TaskRecord | SealedRecord]]) -> None:
        self._records = records

    async def get(self, task_id: str) -> TaskRecord | None:
        found = next((r for r in self._records() if r.task_id == task_id), None)
        return full_record(found) if found is not None else None

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
    it exists. A finished record that is saved is read back from the backend, never from
    memory, so a task deleted by another instance sharing the backend is gone here too.
    """

    def __init__(
        self,
        live: Callable[[], Iterable[TaskRecord | SealedRecord]],
        stored: HistoryRepository | None,
        unsaved: Callable[[], Container[str]],
        lookup: Callable[[str], TaskRecord | None],
    ) -> None:
        self._live = RecordsRepository(self._local)
        self._lookup = lookup
        self._shared: Coordinator | None = None
        self._live_records = live
        self._stored = stored
        self._unsaved = unsaved

    def attach(self, stored: HistoryRepository, shared: Coordinator | None = None) -> None:
        """Read saved history from ``stored`` too, and with ``shared`` the live tasks of
        every instance (done at start-up, once the backend is open)."""
        self._stored = stored
        self._shared = shared

    def _from_memory(self, record: TaskRecord | SealedRecord, unsaved: Container[str]) -> bool:
        """Whether a reader takes ``record`` from this process's memory: always without a
        backend; with one, while it is live or not yet saved (the unsaved ids are read
        before the backend is queried, so a record being written shows in one view or both,
        never in neither)."""
        return self._stored is None or record.status in LIVE_STATUSES or record.task_id in unsaved

    def _local(self) -> Iterable[TaskRecord | SealedRecord]:
        if self._stored is None:
            return self._live_records()
        unsaved = self._unsaved()
        return (r for r in self._live_records() if self._from_memory(r, unsaved))

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record with ``task_id``, or ``None``."""
        record = self._lookup(task_id)
        if record is not None and not self._from_memory(record, self._unsaved()):
            record = None
        if record is None and self._shared is not None:
            record = await self._shared.get_live(task_id)
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
        pages = [await self._live.query(filter, limit=limit, cursor=cursor)]
        wants_live = not filter.statuses or bool(set(filter.statuses) & LIVE_STATUSES)
        wants_done = not filter.statuses or not set(filter.statuses) <= LIVE_STATUSES
        if self._shared is not None and wants_live:
            pages.insert(0, await self._shared.live(filter, limit=limit, cursor=cursor))
        if self._stored is not None and wants_done:
            pages.insert(0, await self._stored.query(filter, limit=limit, cursor=cursor))
        if len(pages) == 1:
            return pages[0]
        merged: dict[str, TaskRecord] = {}
        for page in pages:  # later pages win: stored < shared live view < this process
            merged.update((r.task_id, r) for r in page.items)
        ordered = sorted(merged.values(), key=_cursor.sort_key, reverse=True)
        items = ordered[:limit]
        more = len(ordered) > limit or any(page.next_cursor for page in pages)
        next_cursor = _cursor.encode(items[-1]) if more and items else None
        return TaskPage(items=items, next_cursor=next_cursor)

    async def count(self, **filters: object) -> int:
        """How many records match (same keyword filters as :meth:`query`)."""
        return await self.count_filter(make_filter(**filters))  # type: ignore[arg-type]

    async def count_filter(self, filter: TaskFilter) -> int:
        if self._stored is None:
            return await self._live.count(filter)
        local = [r for r in self._local() if filter.matches(r)]
        extra = len(local)
        if self._shared is not None and not (
            filter.statuses and not set(filter.statuses) & LIVE_STATUSES
        ):
            # live tasks of other instances (the shared view holds ours too)
            mine = {r.task_id for r in local if r.status in LIVE_STATUSES}
            page = await self._shared.live(filter, limit=MAX_LIMIT)
            extra += sum(1 for r in page.items if r.task_id not in mine)
        return await self._stored.count(filter) + extra

    async def stats(self, **filters: object) -> list[FunctionStats]:
        """Per-function counts, success rate and duration percentiles (saved history when a
        backend is configured, memory otherwise)."""
        filter = make_filter(**filters)  # type: ignore[arg-type]
        if self._stored is None:
            return await self._live.stats(filter)
        return await self._stored.stats(filter)
