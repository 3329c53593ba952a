"""History queries served from the Redis indexes, and the index walk they share with the
live view of the coordinator."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ... import _cursor
from ..._errors import ConfigurationError
from ..._models import FunctionStats, TaskFilter, TaskPage, TaskRecord, TaskStatus
from ..._query import stats_of
from ._common import MAX_SCAN_BATCH, micros, text
from ._common import score as cast_score

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from .backend import RedisBackend

__all__ = ["RedisHistoryRepository", "Scan", "Stream", "scan"]


@dataclass
class Stream:
    """Walks one index set newest first, from an upper bound down to ``lower``.

    ``offset`` counts the entries already taken at score ``upper``, so a batch that ends
    in the middle of a run of equal scores resumes exactly where it stopped.
    """

    key: str
    lower: str
    upper: int | None  # None: no upper bound yet, or the exclusive ``until`` below
    upper_exclusive: int | None
    after: tuple[int, str] | None  # keyset position to continue after (from a cursor)
    offset: int = 0
    done: bool = False
    buffer: deque[tuple[int, str]] = field(default_factory=deque)

    def request(self, pipe: Pipeline, size: int) -> None:
        if self.upper is not None:
            top = str(self.upper)
        elif self.upper_exclusive is not None:
            top = f"({self.upper_exclusive}"
        else:
            top = "+inf"
        pipe.zrange(
            self.key,
            top,
            self.lower,
            desc=True,
            byscore=True,
            withscores=True,
            offset=self.offset,
            num=size,
            score_cast_func=cast_score,
        )

    def absorb(self, rows: list[tuple[bytes | str, int]], size: int) -> None:
        self.done = len(rows) < size
        if not rows:
            return
        after = self.after
        for member, score in rows:
            task_id = text(member)
            if after is None or (score, task_id) < after:
                self.buffer.append((score, task_id))
        last = rows[-1][1]
        if last == self.upper:
            self.offset += len(rows)
        else:
            self.upper = last
            self.offset = sum(1 for _, score in rows if score == last)


class Scan:
    """Task ids of the union of some index sets, newest first, in batches.

    Each set is walked by its own :class:`Stream`; a batch holds only entries newer than
    every entry not fetched yet, so merging the streams keeps the global order.
    """

    def __init__(self, client: Redis, streams: list[Stream]) -> None:
        self._client = client
        self._streams = streams

    async def next(self, size: int) -> list[str]:
        streams = self._streams
        # Refill until every live stream holds something: one whose batch was all skipped
        # (ties at the cursor's microsecond) could still hold the newest entry.
        while hungry := [s for s in streams if not s.buffer and not s.done]:
            async with self._client.pipeline(transaction=False) as pipe:
                for stream in hungry:
                    stream.request(pipe, size)
                replies = await pipe.execute()
            for stream, rows in zip(hungry, replies, strict=True):
                stream.absorb(rows, size)
        # Entries at or above this key are newer than anything still unfetched.
        frontier = max((s.buffer[-1] for s in streams if not s.done), default=None)
        taken: list[tuple[int, str]] = []
        for stream in streams:
            buffer = stream.buffer
            while buffer and (frontier is None or buffer[0] >= frontier):
                taken.append(buffer.popleft())
        taken.sort(reverse=True)
        return [task_id for _, task_id in taken]


def scan(
    client: Redis,
    keys: list[str],
    lower: str,
    upper_exclusive: int | None,
    after: tuple[int, str] | None,
) -> Scan:
    """Walk the union of the sorted sets ``keys`` newest first: scores from ``lower``
    (inclusive, a ZRANGE bound) up to ``upper_exclusive``, after the keyset ``after``."""
    start: int | None = None
    if after is not None and (upper_exclusive is None or after[0] < upper_exclusive):
        start = after[0]
    streams = [
        Stream(key, lower, upper=start, upper_exclusive=upper_exclusive, after=after)
        for key in keys
    ]
    return Scan(client, streams)


@dataclass(frozen=True)
class _Plan:
    """How to serve a filter: walk ``source`` (a union of sets), check ``others`` by
    membership (each a union too), and the score window for ``since``/``until``/TTL."""

    source: list[str]
    others: list[list[str]]
    lower: str
    upper_exclusive: int | None
    exact: bool  # the walk alone answers the filter: no membership or text checks


class RedisHistoryRepository:
    """History queries served from the Redis indexes of a :class:`RedisBackend`.

    A query walks the smallest index set that the filter implies (per status and function
    when both are given), keeps the ids that are members of the other implied sets, then
    fetches the records in batches and applies the full filter until a page is full.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend

    async def get(self, task_id: str) -> TaskRecord | None:
        """The history record with this id, or ``None``."""
        backend = self._backend
        (record,) = await backend._fetch([task_id])
        if record is None or backend.history_ttl_s is None:
            return record
        return record if micros(record.created_at) >= backend._cutoff() else None

    async def query(
        self, filter: TaskFilter, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        """Records matching ``filter``, newest first; ``cursor`` continues a previous page."""
        if limit < 1:
            raise ConfigurationError(f"query limit must be at least 1, got {limit}")
        after = None
        if cursor is not None:
            created_at, task_id = _cursor.decode(cursor)
            after = (micros(created_at), task_id)
        plan = await self._plan(filter)
        scan = self._scan(plan, after)
        found: list[TaskRecord] = []
        size = limit + 1
        while len(found) <= limit:
            ids = await scan.next(size)
            if not ids:
                break
            ids = await self._narrow(ids, plan.others)
            records = await self._backend._fetch(ids)
            found.extend(r for r in records if r is not None and filter.matches(r))
            if not plan.exact:
                size = min(size * 4, MAX_SCAN_BATCH)
        items = found[:limit]
        next_cursor = _cursor.encode(items[-1]) if len(found) > limit else None
        return TaskPage(items=items, next_cursor=next_cursor)

    async def count(self, filter: TaskFilter) -> int:
        """How many records match: ZCOUNT when one index answers, otherwise a scan."""
        plan = await self._plan(filter)
        if plan.exact:
            return sum(await self._zcounts(plan.source, plan))
        total = 0
        async for batch in self._matching_ids(plan):
            if filter.text:
                records = await self._backend._fetch(batch)
                total += sum(1 for r in records if r is not None and filter.matches(r))
            else:
                total += len(batch)
        return total

    async def stats(self, filter: TaskFilter) -> list[FunctionStats]:
        """Per-function totals, success rate and duration percentiles over the matches,
        computed exactly as for in-memory history (:func:`fastapi_taskflow._query.stats_of`).
        """
        matching: list[TaskRecord] = []
        async for batch in self._matching_ids(await self._plan(filter)):
            records = await self._backend._fetch(batch)
            matching += (r for r in records if r is not None and filter.matches(r))
        return stats_of(matching)

    # ------------------------------------------------------------------ planning

    async def _plan(self, filter: TaskFilter) -> _Plan:
        keys = self._backend._keys
        groups: list[list[str]] = []
        statuses = [TaskStatus(s).value for s in dict.fromkeys(filter.statuses)]
        if statuses and filter.func_name is not None:
            groups.append([keys.status_func(s, filter.func_name) for s in statuses])
        elif statuses:
            groups.append([keys.status(s) for s in statuses])
        elif filter.func_name is not None:
            groups.append([keys.func(filter.func_name)])
        if filter.queue is not None:
            groups.append([keys.queue(filter.queue)])
        groups.extend([keys.tag(k, v)] for k, v in filter.tags.items())
        if not groups:
            groups.append([keys.all])
        plan = _Plan(
            source=groups[0],
            others=groups[1:],
            lower=self._backend._lower(filter.since),
            upper_exclusive=None if filter.until is None else micros(filter.until),
            exact=len(groups) == 1 and not filter.text,
        )
        if len(groups) == 1:
            return plan
        counts = await self._zcounts([k for group in groups for k in group], plan)
        sizes: list[int] = []
        for group in groups:
            sizes.append(sum(counts[: len(group)]))
            counts = counts[len(group) :]
        best = sizes.index(min(sizes))
        others = groups[:best] + groups[best + 1 :]
        return _Plan(groups[best], others, plan.lower, plan.upper_exclusive, exact=False)

    async def _zcounts(self, keys: list[str], plan: _Plan) -> list[int]:
        upper = "+inf" if plan.upper_exclusive is None else f"({plan.upper_exclusive}"
        with self._backend._errors("count history"):
            async with self._backend._require().pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zcount(key, plan.lower, upper)
                return [int(n) for n in await pipe.execute()]

    def _scan(self, plan: _Plan, after: tuple[int, str] | None) -> Scan:
        return scan(self._backend._require(), plan.source, plan.lower, plan.upper_exclusive, after)

    async def _matching_ids(self, plan: _Plan) -> AsyncIterator[list[str]]:
        """Async iterator of id batches from the source that pass the membership checks."""
        scan = self._scan(plan, None)
        while ids := await scan.next(MAX_SCAN_BATCH):
            narrowed = await self._narrow(ids, plan.others)
            if narrowed:
                yield narrowed

    async def _narrow(self, ids: list[str], groups: list[list[str]]) -> list[str]:
        """Keep the ids that belong to at least one set of every group."""
        if not groups or not ids:
            return ids
        with self._backend._errors("query history"):
            async with self._backend._require().pipeline(transaction=False) as pipe:
                for group in groups:
                    for key in group:
                        pipe.zmscore(key, ids)
                replies: list[list[float | None]] = await pipe.execute()
        keep = [True] * len(ids)
        for group in groups:
            member = [False] * len(ids)
            for scores in replies[: len(group)]:
                member = [m or s is not None for m, s in zip(member, scores, strict=True)]
            replies = replies[len(group) :]
            keep = [k and m for k, m in zip(keep, member, strict=True)]
        return [i for i, k in zip(ids, keep, strict=True) if k]
